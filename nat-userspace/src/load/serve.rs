//! Phase 6 of `nat load`: the control plane's work while the datapath runs —
//! the reaper on a timer and the reject responder — until a stop signal.

use std::time::Duration;

use anyhow::{Context as _, Result};
use aya::Ebpf;
use log::{info, warn};
use nat_common::names::MAP_REJECTS;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::{
    reaper, reject,
    tables::{Tables, boot_ns},
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

/// Reaps every `reap_interval_ms` and answers refused SYNs until stopped.
pub async fn serve(ebpf: &mut Ebpf, reap_interval_ms: u64, mut stop: StopSignals) -> Result<()> {
    let _event_log = crate::event_log::spawn(ebpf)?;
    let mut tables = Tables::from_ebpf(ebpf)?;
    let _responder = reject::spawn(
        ebpf.take_map(MAP_REJECTS)
            .context("map NAT_REJECTS missing from the object")?,
    )?;
    let mut tick = tokio::time::interval(Duration::from_millis(reap_interval_ms));
    loop {
        tokio::select! {
            _ = stop.int.recv() => break,
            _ = stop.term.recv() => break,
            _ = tick.tick() => reap(&mut tables),
        }
    }
    Ok(())
}

fn reap(tables: &mut Tables) {
    match reaper::sweep(tables, boot_ns()) {
        Ok(s) if s.kept > 0 => warn!(
            "reaper: {} expired sessions kept: the cooldown map is full (raise --max-cooldowns)",
            s.kept
        ),
        Ok(s) if s.expired > 0 || s.cooled > 0 => info!(
            "reaper: {} of {} sessions expired, {} cooldowns ended",
            s.expired, s.scanned, s.cooled
        ),
        Ok(_) => {}
        Err(e) => warn!("reaper: {e:#}"),
    }
}
