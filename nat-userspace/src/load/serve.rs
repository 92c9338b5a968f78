//! Phase 6 of `nat load`: the control plane's work while the datapath runs —
//! the kernel expiry sweep on a timer, the reject responder and the event
//! log — until a stop signal.

use std::time::Duration;

use anyhow::{Context as _, Result};
use aya::Ebpf;
use log::{info, warn};
use nat_common::names::MAP_REJECTS;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::{expiry::KernelSweep, ops::Ops, reaper, reject};

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
pub fn first_sweep(ebpf: &mut Ebpf, reap_interval_ms: u64) -> Result<KernelSweep> {
    let sweeper = KernelSweep::load(ebpf, reap_interval_ms, 0)?;
    reaper::sweep(&sweeper, ebpf).context("the first expiry sweep failed")?;
    Ok(sweeper)
}

/// Sweeps every `reap_interval_ms` and answers refused SYNs until stopped.
pub async fn serve(
    ebpf: &mut Ebpf,
    sweeper: &KernelSweep,
    ops: &Ops,
    reap_interval_ms: u64,
    mut stop: StopSignals,
) -> Result<()> {
    let _event_log = crate::event_log::spawn(ebpf)?;
    let _responder = reject::spawn(
        ebpf.take_map(MAP_REJECTS)
            .context("map NAT_REJECTS missing from the object")?,
    )?;
    let mut tick = tokio::time::interval(Duration::from_millis(reap_interval_ms));
    loop {
        tokio::select! {
            _ = stop.int.recv() => break,
            _ = stop.term.recv() => break,
            _ = tick.tick() => reap(sweeper, ebpf, ops),
        }
    }
    Ok(())
}

fn reap(sweeper: &KernelSweep, ebpf: &Ebpf, ops: &Ops) {
    let started = std::time::Instant::now();
    let swept = reaper::sweep(sweeper, ebpf);
    ops.observe_sweep(started.elapsed());
    match swept {
        Ok(s) if s.kept > 0 => warn!(
            "reaper: {} expired sessions kept: the cooldown map is full (raise --max-cooldowns)",
            s.kept
        ),
        Ok(s) if s.expired > 0 || s.cooled > 0 || s.orphans > 0 => info!(
            "reaper: {} of {} sessions expired, {} cooldowns ended, {} orphaned reverse entries removed",
            s.expired, s.scanned, s.cooled, s.orphans
        ),
        Ok(_) => {}
        Err(e) => warn!("reaper: {e:#}"),
    }
}
