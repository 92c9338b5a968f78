//! A pid file per instance, naming the daemon that serves it: `nat load`
//! refuses to start a second one (or takes over with `--replace`), `nat
//! unload` stops it, and a daemon that finds another pid there on exit
//! knows it was replaced.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

/// Root-only, like the pin directories.
const RUN_DIR: &str = "/run/nat";

fn path(netns: Option<&str>, iface: &str) -> PathBuf {
    let name = match netns {
        Some(ns) => format!("{ns}.{iface}.pid"),
        None => format!("{iface}.pid"),
    };
    PathBuf::from(RUN_DIR).join(name)
}

/// Names this process as the instance's daemon.
pub fn write(netns: Option<&str>, iface: &str) -> Result<()> {
    let p = path(netns, iface);
    crate::pins::create_private_dir(Path::new(RUN_DIR), Path::new(RUN_DIR))?;
    std::fs::write(&p, format!("{}\n", std::process::id()))
        .with_context(|| format!("cannot write {}", p.display()))
}

pub fn remove(netns: Option<&str>, iface: &str) {
    let _ = std::fs::remove_file(path(netns, iface));
}

/// The pid the file names, running or not.
pub fn named(netns: Option<&str>, iface: &str) -> Option<i32> {
    std::fs::read_to_string(path(netns, iface))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// True while the file names this process.
pub fn is_mine(netns: Option<&str>, iface: &str) -> bool {
    named(netns, iface) == Some(std::process::id() as i32)
}

/// The pid of a running `nat load` for this instance, if there is one.
pub fn live(netns: Option<&str>, iface: &str) -> Option<i32> {
    let pid = named(netns, iface)?;
    (pid != std::process::id() as i32 && serves(pid, iface)).then_some(pid)
}

/// Whether `pid` is a `nat load` for `iface` (a recycled pid belonging to
/// another program, or an exited one, is not ours to signal or wait for).
fn serves(pid: i32, iface: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let mut args = cmdline.split(|b| *b == 0);
    let names_iface =
        |a: &[u8]| a == iface.as_bytes() || a.strip_prefix(b"--iface=") == Some(iface.as_bytes());
    args.clone().any(|a| a == b"load") && args.any(names_iface)
}

/// SIGTERM to the daemon, then waits up to `timeout` for it to exit; false
/// if it is still running.
pub fn stop(pid: i32, iface: &str, timeout: Duration) -> bool {
    use nix::{sys::signal::Signal, unistd::Pid};
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
    let deadline = Instant::now() + timeout;
    while serves(pid, iface) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}
