//! The library from outside: the real programs driven through
//! BPF_PROG_TEST_RUN as the daemon drives them (edge cases, the expiry
//! sweep's bounds and stamps; root), and the bolero fuzz target of the text
//! parsers.
//!
//! One binary with a module per area rather than a binary per file, so a
//! change to the crate links one test binary. Its tests share this process:
//! each loads its own object, and temporary files are named per call.

mod datapath_edges;
mod fuzz_text;
mod sessions;
mod sweep_bounds;
mod sweep_stamps;
