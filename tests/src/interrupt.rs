//! Cleanup when a program that builds a testbed (the demo, the bench) is
//! interrupted (Ctrl-C, SIGTERM, SIGHUP).
//!
//! Exiting on a signal skips destructors, so the namespaces and the NAT
//! process would outlive the task; a dedicated thread removes them and owns
//! the exit. Every other thread must then stay out of its way: a Ctrl-C also
//! kills the NAT, which makes the main thread fail and start unwinding (and
//! deleting namespaces) concurrently, or exit with a panic first.

use std::fs;
use std::io;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, getpid};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::command::describe;
use crate::{EXT_IFACE, Topology, unload_instance};

const SIGNALS: [i32; 3] = [SIGINT, SIGTERM, SIGHUP];
/// Gives the NAT time to exit (its datapath is then removed with `nat unload`).
const CHILD_EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Creating a topology takes well under a second.
const SETUP_WAIT: Duration = Duration::from_secs(5);

/// Set by the signal handler itself, so it is already true by the time any
/// thread can observe a consequence of the signal.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Held while namespaces are being created or a child process is being
/// started, so the cleanup cannot delete them halfway through and have the
/// rest appear afterwards, or miss a child that appears after it looked.
static NAMESPACE_SETUP: Mutex<()> = Mutex::new(());

#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    /// A termination signal arrived first, so nothing was started.
    #[error("interrupted")]
    Interrupted,
    #[error("cannot run {command}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot handle signal {signal}")]
    Signal {
        signal: i32,
        #[source]
        source: io::Error,
    },
    #[error("cannot handle termination signals")]
    Signals(#[source] io::Error),
    #[error("cannot spawn the signal thread")]
    Thread(#[source] io::Error),
}

/// Extra cleanup steps, run after the children are stopped and before the
/// namespaces go (e.g. restoring a global sysctl).
static HOOKS: Mutex<Vec<fn()>> = Mutex::new(Vec::new());

pub fn namespace_setup() -> MutexGuard<'static, ()> {
    NAMESPACE_SETUP
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Starts `cmd` unless a signal already arrived; the cleanup either sees the
/// child or has stopped everything before it could be started.
pub fn spawn(cmd: &mut Command) -> Result<Child, InterruptError> {
    let _setup = namespace_setup();
    if interrupted() {
        return Err(InterruptError::Interrupted);
    }
    cmd.spawn().map_err(|source| InterruptError::Spawn {
        command: describe(cmd),
        source,
    })
}

/// Runs `hook` during the cleanup after a signal (it must be idempotent and
/// must not block).
pub fn on_cleanup(hook: fn()) {
    HOOKS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(hook);
}

/// On a termination signal: stop our child processes (the NAT), run the
/// [`on_cleanup`] hooks, delete the namespaces of the topology tagged `tag`,
/// exit with 130. `task` names the task in the message.
pub fn install(task: &'static str, tag: &'static str) -> Result<(), InterruptError> {
    for signal in SIGNALS {
        signal_hook::flag::register(signal, &INTERRUPTED)
            .map_err(|source| InterruptError::Signal { signal, source })?;
    }
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if interrupted() {
            park_forever();
        }
        default_hook(info);
    }));
    let mut signals = Signals::new(SIGNALS).map_err(InterruptError::Signals)?;
    thread::Builder::new()
        .name("interrupt".to_owned())
        .spawn(move || {
            if signals.forever().next().is_some() {
                clean_up_and_exit(task, tag);
            }
        })
        .map_err(InterruptError::Thread)?;
    Ok(())
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// For the main thread once the run is over: after a signal, the cleanup
/// thread decides when and how the process exits.
pub fn defer_to_cleanup() {
    if interrupted() {
        park_forever();
    }
}

fn park_forever() -> ! {
    loop {
        thread::park();
    }
}

fn clean_up_and_exit(task: &str, tag: &str) -> ! {
    eprintln!("\n{task}: interrupted, cleaning up");
    let _setup = wait_for_namespace_setup();
    terminate_children(task);
    let hooks = HOOKS.lock().unwrap_or_else(PoisonError::into_inner).clone();
    for hook in hooks {
        hook();
    }
    for ns in Topology::namespace_names(tag) {
        // A stopped daemon leaves its datapath pinned.
        let _ = unload_instance(&ns, EXT_IFACE);
    }
    for ns in Topology::namespace_names(tag) {
        let _ = Command::new("ip")
            .args(["netns", "del", &ns])
            .stderr(Stdio::null())
            .status();
    }
    std::process::exit(130);
}

/// `None` if the lock stays held: then its holder panicked during setup and
/// is parked for good, so nothing more will be created.
fn wait_for_namespace_setup() -> Option<MutexGuard<'static, ()>> {
    let deadline = Instant::now() + SETUP_WAIT;
    loop {
        match NAMESPACE_SETUP.try_lock() {
            Ok(guard) => return Some(guard),
            Err(TryLockError::Poisoned(poisoned)) => return Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(TryLockError::WouldBlock) => return None,
        }
    }
}

/// Found through /proc, because this thread does not own the `Child` values.
fn terminate_children(task: &str) {
    let children = child_pids();
    for &pid in &children {
        let _ = kill(pid, Signal::SIGTERM);
    }
    let deadline = Instant::now() + CHILD_EXIT_TIMEOUT;
    let mut alive = children;
    while !alive.is_empty() && Instant::now() < deadline {
        // An error (ECHILD) means another thread reaped it first.
        alive.retain(|&pid| {
            matches!(
                waitpid(pid, Some(WaitPidFlag::WNOHANG)),
                Ok(WaitStatus::StillAlive)
            )
        });
        thread::sleep(Duration::from_millis(50));
    }
    for pid in alive {
        eprintln!("{task}: pid {pid} ignored SIGTERM; killing it");
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
