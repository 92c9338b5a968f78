//! Cleanup when the demo is interrupted (Ctrl-C, SIGTERM, SIGHUP).
//!
//! Exiting from a signal skips destructors, so the namespaces and the NAT
//! process would outlive the demo; the handler removes them itself.

use std::fs;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nat_tests::Topology;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, getpid};

/// Give the NAT time to detach its programs and remove its pins.
const CHILD_EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Held while namespaces are being created, so the handler cannot delete
/// them halfway through creation and have the rest appear afterwards.
static NAMESPACE_SETUP: Mutex<()> = Mutex::new(());

pub fn namespace_setup() -> MutexGuard<'static, ()> {
    NAMESPACE_SETUP
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// On a termination signal: stop our child processes (the NAT), delete the
/// namespaces of the topology tagged `tag`, exit with 130.
pub fn install(tag: &'static str) -> Result<()> {
    ctrlc::set_handler(move || {
        eprintln!("\ndemo: interrupted, cleaning up");
        let _setup = namespace_setup();
        terminate_children();
        for ns in Topology::namespace_names(tag) {
            let _ = Command::new("ip")
                .args(["netns", "del", &ns])
                .stderr(Stdio::null())
                .status();
        }
        std::process::exit(130);
    })
    .context("cannot install the Ctrl-C handler")
}

/// Found through /proc, because the handler does not own the `Child` values.
fn terminate_children() {
    let children = child_pids();
    for &pid in &children {
        let _ = kill(pid, Signal::SIGTERM);
    }
    let deadline = Instant::now() + CHILD_EXIT_TIMEOUT;
    let mut alive = children;
    while !alive.is_empty() && Instant::now() < deadline {
        // ECHILD: the main thread reaped it first.
        alive.retain(|&pid| {
            matches!(
                waitpid(pid, Some(WaitPidFlag::WNOHANG)),
                Ok(WaitStatus::StillAlive)
            )
        });
        thread::sleep(Duration::from_millis(50));
    }
    for pid in alive {
        eprintln!("demo: pid {pid} ignored SIGTERM; killing it");
        let _ = kill(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
    }
}

fn child_pids() -> Vec<Pid> {
    let me = getpid().as_raw();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| parent_of(pid) == Some(me))
        .map(Pid::from_raw)
        .collect()
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in parentheses may contain spaces; fields resume after the last ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}
