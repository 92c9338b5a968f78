//! Expires idle sessions and ended cooldowns.
//!
//! For an expiring session the key is cooled first, then the forward entry
//! goes (egress can no longer pick the pair up), then the reverse entry,
//! which keeps the external port claimed (BPF_NOEXIST) until that moment: at
//! no point is the key both unclaimed and not cooling.

use anyhow::Result;
use nat_common::{
    config::{Config, TOUCH_GRANULARITY_NS},
    tcp_state::{CloseKind, cooldown_ms, expiry_kind, idle_timeout_ms},
};

use log::warn;

use crate::tables::{SessionView, Tables};

#[derive(Debug, Default, Clone, Copy)]
pub struct Sweep {
    pub scanned: usize,
    pub expired: usize,
    /// Cooldown entries removed because they ended.
    pub cooled: usize,
    /// Expired sessions kept because their cooldown could not be recorded.
    pub kept: usize,
}

pub fn sweep(tables: &mut Tables, now: u64) -> Result<Sweep> {
    let cfg: Config = tables.config()?;
    let mut report = Sweep::default();
    // A session whose forward entry was touched within the shortest timeout
    // cannot have expired whatever its state, so only the others need their
    // reverse entry: a routine sweep is one batched read of the forward map.
    let shortest = [
        cfg.timeout_tcp_established_ms,
        cfg.timeout_tcp_transitory_ms,
        cfg.timeout_tcp_closed_ms,
        cfg.timeout_udp_ms,
        cfg.timeout_icmp_ms,
    ]
    .into_iter()
    .min()
    .unwrap_or(0)
        * 1_000_000
        + TOUCH_GRANULARITY_NS;
    // Ended cooldowns go first: they make room for the ones expiring
    // sessions are about to record.
    let ended: Vec<_> = tables
        .cooldown_entries()?
        .into_iter()
        .filter(|(_, until)| *until <= now)
        .map(|(k, _)| k)
        .collect();
    for key in ended {
        // A close may have started a new cooldown on this key since the scan.
        if tables.cooling_until(&key).is_some_and(|until| until <= now) {
            let _ = tables.end_cooldown(&key);
            report.cooled += 1;
        }
    }
    let fwd = tables.forward_entries()?;
    report.scanned = fwd.len();
    for (key, f) in fwd {
        if now.saturating_sub(f.last_seen) <= shortest {
            continue;
        }
        // Read both entries now: a packet may have refreshed them since the scan.
        let Some((rev_key, s)) = tables.session(&key) else {
            continue;
        };
        if !expired(&s, now, &cfg) {
            continue;
        }
        let kind = expiry_kind(s.proto, s.fwd_seen, s.rev_seen);
        let ms = cooldown_ms(kind, &cfg);
        // A close the datapath saw already started its cooldown at the close.
        let closed = matches!(
            kind,
            CloseKind::ExternalFirst | CloseKind::InternalFirst | CloseKind::Reset
        );
        if ms > 0
            && !(closed && tables.cooling_until(&rev_key).is_some())
            && let Err(e) = tables.cool(rev_key, now + ms * 1_000_000)
        {
            // Never free a key without cooling it: keep the session (and its
            // port) until the map has room again.
            report.kept += 1;
            if report.kept == 1 {
                warn!(
                    "reaper: cannot record a cooldown ({e}); expired sessions kept until the cooldown map has room"
                );
            }
            continue;
        }
        let _ = tables.release_session(&key, &rev_key);
        report.expired += 1;
    }

    Ok(report)
}

/// `last_seen` trails the last packet by up to the touch granularity (the
/// datapath refreshes it at most that often), so a session counts as
/// expired only once it is older than its timeout plus that slack: late by
/// at most the slack and a sweep interval, never early.
fn expired(s: &SessionView, now: u64, cfg: &Config) -> bool {
    now.saturating_sub(s.last_seen)
        > idle_timeout_ms(s.state, cfg) * 1_000_000 + TOUCH_GRANULARITY_NS
}
