//! The shared logic as the host sees it: checksums, header checks, session
//! state, resets, the probe walk and deterministic NAT, with property tests
//! and the bolero fuzz targets.
//!
//! One binary with a module per area rather than a binary per file, so a
//! change to the crate links one test binary.

mod checksum;
mod deterministic;
mod fuzz;
mod headers;
mod probe;
mod rst;
mod tcp_state;
