//! The daemon and the operator: loading, stopping, restarting and unloading,
//! settings and config files, metrics, the systemd unit, the sweep, the
//! event log, permissions and the command line's errors, each test in
//! namespaces of its own.
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

mod alerts;
mod blocks;
mod cli_errors;
mod config;
mod daemonless;
mod defaults;
mod event_log;
mod export;
mod lifecycle;
mod metrics;
mod permissions;
mod restart;
mod settings;
mod sweep;
mod sweep_cooldown;
mod sweep_timing;
mod systemd;
