//! A pid file per instance, naming the daemon that serves it: `nat load`
//! refuses to start a second one (or takes over with `--replace`), `nat
//! unload` stops it, `nat reload` signals it, and a daemon that finds
//! another pid there on exit knows it was replaced.
//!
//! A pid is reused once its process is gone, so the file also holds the
//! daemon's start time, and a process is only taken for the daemon when its
//! start time is the recorded one. It is signalled through a pidfd opened
//! before that check, so the signal cannot reach a process that took the
//! pid in between.

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use nix::sys::signal::Signal;

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
/// since boot, field 22 of /proc/PID/stat). Files of older versions hold
/// the pid alone; their daemon is told from a later process with its pid by
/// the file's modification time, which the daemon's start precedes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Record {
    pid: i32,
    start: Option<u64>,
    /// When the file was written, for a file without a start time.
    written: Option<SystemTime>,
}

impl Record {
    fn parse(text: &str, written: Option<SystemTime>) -> Option<Self> {
        let mut words = text.split_whitespace();
        let pid = words.next()?.parse().ok().filter(|p| *p > 0)?;
        let start = words
            .next()
            .and_then(|w| w.parse().ok())
            .filter(|s| *s != 0);
        Some(Self {
            pid,
            start,
            written,
        })
    }
}

fn record(netns: Option<&str>, iface: &str) -> Option<Record> {
    let p = path(netns, iface);
    let text = std::fs::read_to_string(&p).ok()?;
    let written = std::fs::metadata(&p).and_then(|m| m.modified()).ok();
    Record::parse(&text, written)
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

/// When a process started, on the wall clock: boot time plus its start time.
fn started_at(pid: i32) -> Option<SystemTime> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let boot: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
    let since_boot = Duration::from_millis(start_time(pid)? * 1000 / ticks.max(1));
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(boot) + since_boot)
}

/// How much later than its pid file's time a daemon of an old version may
/// seem to have started: boot time is whole seconds and moves with clock
/// adjustments.
const WRITTEN_SLACK: Duration = Duration::from_secs(5);

/// True while the file names this process.
pub fn is_mine(netns: Option<&str>, iface: &str) -> bool {
    named(netns, iface) == Some(std::process::id() as i32)
}

/// The running `nat load` the file names for this instance, if there is one.
pub fn live(netns: Option<&str>, iface: &str) -> Option<Daemon> {
    let record = record(netns, iface)?;
    let daemon = Daemon {
        record,
        iface: iface.to_owned(),
    };
    (record.pid != std::process::id() as i32 && daemon.runs()).then_some(daemon)
}

/// The daemon of an instance, as its pid file names it.
#[derive(Clone, Debug)]
pub struct Daemon {
    record: Record,
    iface: String,
}

impl Daemon {
    pub fn pid(&self) -> i32 {
        self.record.pid
    }

    /// Whether the process with the recorded pid is the daemon.
    fn runs(&self) -> bool {
        let pid = self.record.pid;
        match self.record.start {
            Some(start) => start_time(pid) == Some(start) && runs_load(pid),
            // A process started after the file was written is not the
            // daemon that wrote it.
            None => {
                serves(pid, &self.iface)
                    && match (self.record.written, started_at(pid)) {
                        (Some(written), Some(started)) => started <= written + WRITTEN_SLACK,
                        _ => false,
                    }
            }
        }
    }

    /// A pidfd of the daemon: opened first and checked after, so it refers
    /// to the daemon even if its pid is reused later. `None` when the
    /// daemon is gone.
    fn handle(&self) -> Option<OwnedFd> {
        let fd = pidfd_open(self.record.pid).ok()?;
        self.runs().then_some(fd)
    }

    /// Sends `signal` to the daemon; false when it is gone (nothing was sent).
    pub fn signal(&self, signal: Signal) -> Result<bool> {
        let Some(fd) = self.handle() else {
            return Ok(false);
        };
        match pidfd_send_signal(&fd, signal) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("cannot signal pid {}", self.record.pid)),
        }
    }

    /// SIGTERM to the daemon, then waits up to `timeout` for it to exit;
    /// false if it is still running. A daemon that is gone already counts
    /// as stopped; an exited one that its parent has not reaped yet too.
    pub fn stop(&self, timeout: Duration) -> bool {
        let Some(fd) = self.handle() else {
            return true;
        };
        if let Err(e) = pidfd_send_signal(&fd, Signal::SIGTERM)
            && e.raw_os_error() != Some(libc::ESRCH)
        {
            log::warn!("cannot signal pid {}: {e}", self.record.pid);
        }
        exited_within(&fd, timeout)
    }
}

/// Whether `pid` runs `nat load`.
fn runs_load(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"load"))
}

/// Whether `pid` is a `nat load` for `iface`, by its command line.
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

fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new
    // descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::other("descriptor out of range"))?;
    // SAFETY: a descriptor the kernel just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn pidfd_send_signal(fd: &OwnedFd, signal: Signal) -> std::io::Result<()> {
    // SAFETY: a valid pidfd, a signal number, no siginfo, no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            signal as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A pidfd turns readable when its process has exited.
fn exited_within(fd: &OwnedFd, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut poll = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd.
        match unsafe { libc::poll(&mut poll, 1, ms) } {
            n if n > 0 => return true,
            0 => return false,
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => return false,
        }
    }
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
        let at = started_at(me).expect("this process has a start on the wall clock");
        assert!(at <= SystemTime::now() + WRITTEN_SLACK);
    }

    #[test]
    fn records_of_both_versions_parse() {
        assert_eq!(
            Record::parse("42 1234\n", None),
            Some(Record {
                pid: 42,
                start: Some(1234),
                written: None
            })
        );
        assert_eq!(Record::parse("42\n", None).map(|r| r.start), Some(None));
        assert_eq!(Record::parse("42 0\n", None).map(|r| r.start), Some(None));
        assert_eq!(Record::parse("-1 5\n", None), None);
        assert_eq!(Record::parse("x\n", None), None);
    }

    /// A process that looks like the daemon (`nat load` for `iface` on its
    /// command line), started now.
    fn look_alike(iface: &str) -> std::process::Child {
        let child = std::process::Command::new("sh")
            .args(["-c", "sleep 30; :", "nat", "load", "--iface", iface])
            .spawn()
            .expect("sh runs");
        // The spawn returns while exec is still setting up the command line.
        let pid = child.id() as i32;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !runs_load(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        child
    }

    fn daemon(record: Record) -> Daemon {
        Daemon {
            record,
            iface: "eth9".to_owned(),
        }
    }

    #[test]
    fn a_process_that_took_the_pid_is_never_signalled() {
        let mut other = look_alike("eth9");
        let pid = other.id() as i32;
        let start = start_time(pid).expect("it runs");
        let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
        for record in [
            // Another start time: the daemon recorded had this pid before.
            Record {
                pid,
                start: Some(start + 1),
                written: None,
            },
            // An old version's file, written before this process started.
            Record {
                pid,
                start: None,
                written: Some(an_hour_ago),
            },
        ] {
            let d = daemon(record);
            assert!(!d.runs(), "{record:?}");
            assert!(!d.signal(Signal::SIGTERM).unwrap(), "{record:?}");
            assert!(d.stop(Duration::from_millis(100)), "{record:?}");
            assert!(other.try_wait().unwrap().is_none(), "{record:?} killed it");
        }
        // The same process, recorded as it is, is signalled and stops.
        let d = daemon(Record {
            pid,
            start: Some(start),
            written: None,
        });
        assert!(d.runs());
        assert!(d.stop(Duration::from_secs(5)));
        let _ = other.wait();
    }

    #[test]
    fn an_old_versions_file_still_names_its_daemon() {
        let mut running = look_alike("eth9");
        let pid = running.id() as i32;
        let d = daemon(Record {
            pid,
            start: None,
            written: Some(SystemTime::now()),
        });
        assert!(d.runs(), "written after it started");
        assert!(d.signal(Signal::SIGTERM).unwrap());
        let _ = running.wait();
        assert!(!d.runs(), "gone");
    }
}
