//! The datapath through network namespaces: each test builds its own
//! client — nat — server topology (or a scale-out testbed), loads `nat` in
//! it and checks the traffic that crosses it.
//!
//! One binary with a module per area rather than a binary per file, so the
//! harness library is linked once. Its tests share this process, so the
//! topology tags (namespace names are `nat-<tag>-<pid>-…`) and temporary
//! paths of all modules are distinct: tests of different modules may run
//! at the same time.

#[path = "../shared/closing.rs"]
mod closing;
#[path = "../shared/common.rs"]
mod common;
#[path = "../shared/ops.rs"]
mod ops;

mod blind_resets;
mod cooldown;
mod fast_path;
mod fragments;
mod hostile;
mod icmp;
mod mapping;
mod pmtu_options;
mod pooling;
mod port_forward;
mod reject;
mod scale_out;
mod time_wait;
mod translation;
