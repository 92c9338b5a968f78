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

/// Names this process as the instance's daemon; until [`Claim::keep`], the
/// claim is undone when dropped (a load that fails after naming itself).
pub fn claim(netns: Option<&str>, iface: &str) -> Result<Claim> {
    let p = path(netns, iface);
    crate::pins::create_private_dir(Path::new(RUN_DIR), Path::new(RUN_DIR))?;
    let before = std::fs::read(&p).ok();
    let pid = std::process::id() as i32;
    let start = start_time(pid).unwrap_or(0);
    std::fs::write(&p, format!("{pid} {start}\n"))
        .with_context(|| format!("cannot write {}", p.display()))?;
    Ok(Claim {
        netns: netns.map(str::to_owned),
        iface: iface.to_owned(),
        before,
        kept: false,
    })
}

/// The pid file naming this process, see [`claim`].
pub struct Claim {
    netns: Option<String>,
    iface: String,
    /// What the file said before: a replaced daemon's pid, or nothing.
    before: Option<Vec<u8>>,
    kept: bool,
}

impl Claim {
    /// The load succeeded: the file names this daemon until it stops.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Claim {
    /// Puts back what the file said, unless another daemon claimed it since.
    fn drop(&mut self) {
        let netns = self.netns.as_deref();
        if self.kept || !is_mine(netns, &self.iface) {
            return;
        }
        let p = path(netns, &self.iface);
        let _ = match &self.before {
            Some(text) => std::fs::write(&p, text),
            None => std::fs::remove_file(&p),
        };
    }
}

pub fn remove(netns: Option<&str>, iface: &str) {
    let _ = std::fs::remove_file(path(netns, iface));
}

/// What the file says: the daemon's pid and its start time (clock ticks
/// since boot, field 22 of /proc/PID/stat), which tells the daemon from a
/// later process that got the same pid. Files of older versions hold the pid
/// alone.
struct Record {
    pid: i32,
    start: Option<u64>,
}

fn record(netns: Option<&str>, iface: &str) -> Option<Record> {
    let text = std::fs::read_to_string(path(netns, iface)).ok()?;
    let mut words = text.split_whitespace();
    let pid = words.next()?.parse().ok()?;
    let start = words
        .next()
        .and_then(|w| w.parse().ok())
        .filter(|s| *s != 0);
    Some(Record { pid, start })
}

/// The pid the file names, running or not.
pub fn named(netns: Option<&str>, iface: &str) -> Option<i32> {
    record(netns, iface).map(|r| r.pid)
}

/// A process's start time, from the field after its name in /proc/PID/stat
/// (the name is in parentheses and may hold spaces, so it is skipped up to
/// the last one).
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is the first after the name; start time is field 22.
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// True while the file names this process.
pub fn is_mine(netns: Option<&str>, iface: &str) -> bool {
    named(netns, iface) == Some(std::process::id() as i32)
}

/// The pid of a running `nat load` for this instance, if there is one.
pub fn live(netns: Option<&str>, iface: &str) -> Option<i32> {
    let r = record(netns, iface)?;
    let ours = match r.start {
        Some(start) => start_time(r.pid) == Some(start) && runs_load(r.pid),
        None => serves(r.pid, iface),
    };
    (r.pid != std::process::id() as i32 && ours).then_some(r.pid)
}

/// Whether `pid` runs `nat load`.
fn runs_load(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"load"))
}

/// Whether `pid` is a `nat load` for `iface` (a recycled pid belonging to
/// another program, or an exited one, is not ours to signal or wait for).
fn serves(pid: i32, iface: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let mut args = cmdline.split(|b| *b == 0);
    // The interface may come from a config file, which only the daemon
    // read: a `nat load --config` is taken at the pid file's word.
    let names_iface = |a: &[u8]| {
        a == iface.as_bytes()
            || a.strip_prefix(b"--iface=") == Some(iface.as_bytes())
            || a == b"--config"
            || a.starts_with(b"--config=")
    };
    args.clone().any(|a| a == b"load") && args.any(names_iface)
}

/// SIGTERM to the daemon, then waits up to `timeout` for it to exit; false
/// if it is still running. An exited daemon that its parent has not reaped
/// yet has no command line left, so it counts as gone.
pub fn stop(pid: i32, iface: &str, timeout: Duration) -> bool {
    use nix::{sys::signal::Signal, unistd::Pid};
    let start = start_time(pid);
    let alive = || match start {
        Some(s) => start_time(pid) == Some(s) && runs_load(pid),
        None => serves(pid, iface),
    };
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
    let deadline = Instant::now() + timeout;
    while alive() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_start_time_is_read_past_its_name() {
        let me = std::process::id() as i32;
        let start = start_time(me).expect("this process has a start time");
        assert!(start > 0);
        assert_eq!(start_time(me), Some(start), "stable for one process");
        assert_eq!(start_time(i32::MAX), None);
    }

    #[test]
    fn only_the_recorded_process_is_the_daemon() {
        // This test binary is not `nat load`, so even with its own start
        // time it is not taken for the daemon; a wrong start time never is.
        let me = std::process::id() as i32;
        assert!(!runs_load(me));
        let other = Record {
            pid: me,
            start: start_time(me).map(|s| s + 1),
        };
        assert_ne!(start_time(other.pid), other.start);
    }
}
