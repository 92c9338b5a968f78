//! Running code inside a named network namespace.
//!
//! A network namespace is a per-thread attribute, so entering one on a fresh
//! thread leaves the caller (usually a libtest thread) where it was. Sockets
//! keep the namespace they were created in, so a socket made in here can be
//! used from any thread afterwards.
//!
//! This deliberately does not go through `ip netns exec`, which also remounts
//! /sys and so hides the real bpffs from whatever runs under it.

use std::fs::File;
use std::thread::{self, JoinHandle};

use nix::sched::{CloneFlags, setns};

/// Runs `f` on a thread that has joined the namespace `ns` (as created by
/// `ip netns add`), and returns its result. Panics in `f` propagate.
pub fn run_in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    match spawn_in_ns(ns, f).join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Like [`run_in_ns`] without waiting: for servers and concurrent clients.
pub fn spawn_in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    thread::Builder::new()
        .name(format!("in-{ns}"))
        // Workers do blocking socket I/O with heap buffers; hundreds of them
        // run at once in the concurrency tests.
        .stack_size(256 * 1024)
        .spawn(move || {
            let file = File::open(&path)
                .unwrap_or_else(|e| panic!("cannot open network namespace {path}: {e}"));
            setns(&file, CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("cannot enter network namespace {path}: {e}"));
            f()
        })
        .unwrap_or_else(|e| panic!("cannot spawn a thread for namespace {ns}: {e}"))
}
