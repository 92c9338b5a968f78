//! Phase 6 of `nat load`: the control plane's work while the datapath runs —
//! the kernel expiry sweep on a timer, the reject responder, the event log
//! and the compliance export — until a stop signal.
//!
//! The sweep runs on a thread of its own: expiring 1,000,000 sessions takes
//! over a second of BPF_PROG_TEST_RUN calls, and the runtime must answer
//! signals meanwhile. A stop is seen between two runs of the sweep program,
//! and ends the run in progress at its next entry (NAT_SWEEP_STOP), so the
//! daemon exits at once however large the table. A large table is swept less often
//! than every interval (nat_common::sweep::sweep_pause_ns), so the walk
//! costs a bounded share of a core.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::Ebpf;
use log::{info, warn};
use nat_common::{
    names::{MAP_NAT_EVENTS, MAP_REJECTS},
    sweep::sweep_pause_ns,
};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::daemon::fast_path::{SharedObject, lock};
use crate::{
    cli::ExportFlags,
    daemon::{
        export::{self, Export, Targets},
        ops::Ops,
        reject, sweep,
    },
    datapath::sweep::{DAEMON_BUDGET, DAEMON_SCAN, KernelSweep},
};

/// SIGINT and SIGTERM, installed before anything is created so a signal
/// during startup is handled by the serve loop.
pub struct StopSignals {
    int: Signal,
    term: Signal,
}

impl StopSignals {
    pub fn install() -> Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?,
        })
    }
}

/// Loads the sweep and runs it once, which arms its timer: from then on
/// sessions expire even if this process dies, so this comes before the
/// daemon says it is attached.
pub fn first_sweep(ebpf: &mut Ebpf, sweep_interval_ms: u64) -> Result<KernelSweep> {
    let sweeper = KernelSweep::load(ebpf, sweep_interval_ms, DAEMON_BUDGET, DAEMON_SCAN)?;
    sweep::sweep(&sweeper, ebpf, &AtomicBool::new(false))
        .context("the first expiry sweep failed")?;
    Ok(sweeper)
}

/// The event log and the reject responder, running on the runtime until it
/// shuts down, and the compliance export on its thread, which stops (after
/// sending what the ring buffer still holds) when this is dropped.
pub struct Workers {
    _event_log: tokio::task::JoinHandle<()>,
    _responder: tokio::task::JoinHandle<()>,
    export: Export,
}

impl Workers {
    /// What a reload re-targets the export with, and its counters.
    pub fn export(&self) -> export::Control {
        self.export.control()
    }
}

/// Starts the [`Workers`] while the load can still fail: a responder that
/// cannot open its raw socket (no CAP_NET_RAW) fails the load, which then
/// removes what it pinned, rather than a daemon that already said it runs.
pub fn start_workers(ebpf: &mut Ebpf, export: &ExportFlags) -> Result<Workers> {
    let targets = Targets::from_flags(export);
    info!("compliance events {}", targets.describe());
    Ok(Workers {
        _event_log: crate::daemon::event_log::spawn(ebpf)?,
        _responder: reject::spawn(
            ebpf.take_map(MAP_REJECTS)
                .context("map NAT_REJECTS missing from the object")?,
        )?,
        export: Export::start(
            ebpf.take_map(MAP_NAT_EVENTS)
                .context("map NAT_EVENTS missing from the object")?,
            targets,
        )?,
    })
}

/// Sweeps every `sweep_interval_ms` on the sweep thread until stopped, while
/// the [`Workers`] answer refused SYNs; hands the object back for the stop
/// phase.
pub async fn serve(
    ebpf: SharedObject,
    mut sweeper: KernelSweep,
    _workers: Workers,
    ops: &Ops,
    sweep_interval_ms: u64,
    mut stop: StopSignals,
) -> Result<SharedObject> {
    let mut stop_run = sweeper.stop_switch()?;
    let stopping = Arc::new(AtomicBool::new(false));
    let (took_tx, mut took) = tokio::sync::mpsc::unbounded_channel();
    let worker = {
        let stopping = Arc::clone(&stopping);
        let interval = Duration::from_millis(sweep_interval_ms);
        thread::Builder::new()
            .name("nat-sweep".into())
            .spawn(move || {
                // The first sweep ran before the daemon said it was attached.
                let mut next = Instant::now() + interval;
                loop {
                    while !stopping.load(Ordering::Relaxed) && Instant::now() < next {
                        thread::park_timeout(next.saturating_duration_since(Instant::now()));
                    }
                    if stopping.load(Ordering::Relaxed) {
                        return ebpf;
                    }
                    let started = Instant::now();
                    // A reload that moves the fast path waits for this sweep.
                    let swept = sweep::sweep(&sweeper, &lock(&ebpf), &stopping);
                    let scanned = swept.as_ref().map_or(0, |s| s.scanned);
                    report(swept);
                    let _ = took_tx.send(started.elapsed());
                    next = started + pause(interval, scanned);
                }
            })
            .context("cannot start the sweep thread")?
    };
    loop {
        tokio::select! {
            _ = stop.int.recv() => break,
            _ = stop.term.recv() => break,
            d = took.recv() => match d {
                Some(d) => ops.observe_sweep(d),
                // The sweep thread is gone (a panic): stop rather than serve
                // without sweeps; the timer takes over once this daemon exits.
                None => {
                    warn!("the sweep thread ended; stopping the control plane");
                    break;
                }
            },
        }
    }
    stopping.store(true, Ordering::Relaxed);
    if let Err(e) = stop_run.pull() {
        warn!("{e:#}; waiting for the sweep run in progress");
    }
    worker.thread().unpark();
    worker
        .join()
        .map_err(|_| anyhow::anyhow!("the sweep thread panicked"))
}

/// How long after a sweep that looked at `scanned` sessions the next starts.
fn pause(interval: Duration, scanned: u64) -> Duration {
    let ns = u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(sweep_pause_ns(ns, scanned))
}

fn report(swept: Result<sweep::Sweep>) {
    match swept {
        Ok(s) if s.kept > 0 => warn!(
            "sweep: {} expired sessions kept: the cooldown map is full (raise --max-cooldowns)",
            s.kept
        ),
        Ok(s) if s.expired > 0 || s.cooled > 0 || s.orphans > 0 => info!(
            "sweep: {} of {} sessions expired, {} cooldowns ended, {} orphaned reverse entries removed",
            s.expired, s.scanned, s.cooled, s.orphans
        ),
        Ok(_) => {}
        Err(e) => warn!("sweep: {e:#}"),
    }
}
