//! Expires idle sessions.
//!
//! The forward entry goes first: once it is gone egress can no longer pick
//! the pair up, and the reverse entry that still exists keeps its external
//! port claimed (BPF_NOEXIST) until it is deleted right after, so no new flow
//! can be handed a port whose old pair is half deleted.

use anyhow::Result;
use nat_common::{config::Config, tcp_state::idle_timeout_ms};

use crate::tables::{SessionView, Tables};

#[derive(Debug, Default, Clone, Copy)]
pub struct Sweep {
    pub scanned: usize,
    pub expired: usize,
}

pub fn sweep(tables: &mut Tables, now: u64) -> Result<Sweep> {
    let cfg: Config = tables.config()?;
    let mut report = Sweep::default();
    let candidates: Vec<SessionView> = tables
        .sessions()?
        .into_iter()
        .inspect(|_| report.scanned += 1)
        .filter(|s| expired(s, now, &cfg))
        .collect();
    for s in candidates {
        // Re-read right before deleting: a packet may have refreshed it since the scan.
        let Ok(fwd) = tables.fwd.get(&s.key, 0) else {
            continue;
        };
        let rev_key = s.key.translated(fwd.addr, fwd.port);
        let rev = tables.rev.get(&rev_key, 0).ok();
        let fresh = SessionView::new(&s.key, &fwd, rev.as_ref());
        if !expired(&fresh, now, &cfg) {
            continue;
        }
        let _ = tables.fwd.remove(&s.key);
        let _ = tables.rev.remove(&rev_key);
        report.expired += 1;
    }
    Ok(report)
}

fn expired(s: &SessionView, now: u64, cfg: &Config) -> bool {
    let idle_ms = now.saturating_sub(s.last_seen) / 1_000_000;
    idle_ms > idle_timeout_ms(s.state, cfg)
}
