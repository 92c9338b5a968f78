//! Expiry rules shared by the kernel sweep (nat-ebpf/src/expire.rs) and the
//! tools that read its results: when an idle session has expired, how long
//! its key cools, and the sweep's control and result records.

use crate::{
    config::{Config, TOUCH_GRANULARITY_NS},
    tcp_state::{CloseKind, cooldown_ms},
};

/// Work (deletions and cooldown writes) one sweep run does at most before it
/// stops and reports that more is left: bounds the time one run holds a CPU
/// (a run is one BPF program invocation, not preemptible).
pub const SWEEP_BUDGET: u32 = 65_536;

/// Entries one timer run looks at, at most: the timer runs in softirq
/// context, where a walk of a whole large table would hold up the CPU's
/// packet processing; a run that stops here resumes where it stopped.
pub const TIMER_SCAN_BUDGET: u32 = 65_536;

/// A reverse entry without its forward entry is an orphan only once it is
/// this old: the allocator inserts the reverse entry a moment before the
/// forward one, and a reply refreshes `last_seen` at most every
/// [`TOUCH_GRANULARITY_NS`], so two of those are past any creation.
pub const ORPHAN_GRACE_NS: u64 = 2 * TOUCH_GRANULARITY_NS;

/// When the daemon is gone, its sweeps stop and the timer takes over after
/// this many sweep intervals without one.
pub const TIMER_TAKEOVER_INTERVALS: u64 = 2;

/// The reverse map is walked for orphans on every this many sweeps (per
/// CPU). The kernel sweep frees both entries of a session in one program
/// run, which a killed daemon cannot interrupt, so orphans come only from
/// older pins or hand edits, and finding them costs a forward lookup per
/// quiet reverse entry.
pub const ORPHAN_WALK_EVERY: u64 = 32;

/// Where a sweep run starts and, returned by the run, where the next one
/// resumes, in the low two bits of a resume token (the entries of that
/// phase's map to pass over are in the bits above): a token of
/// [`phase::DONE`] when it walked everything.
pub mod phase {
    /// Returned: nothing left. Given: start a new sweep.
    pub const DONE: u8 = 0;
    pub const COOLDOWNS: u8 = 1;
    pub const SESSIONS: u8 = 2;
    pub const ORPHANS: u8 = 3;
}

/// After a run that stopped at its budget, the timer runs again this soon.
pub const TIMER_RESUME_NS: u64 = 1_000_000;

/// Index 0 of the sweep control map: written by `nat load`, read by the sweep.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepControl {
    /// How often the timer sweeps while no daemon does (`--reap-interval-ms`);
    /// 0: the timer is not armed.
    pub interval_ns: u64,
    /// [`SWEEP_BUDGET`] unless set (bench and tests may lower it).
    pub budget: u32,
    /// Entries one timer run looks at, at most ([`TIMER_SCAN_BUDGET`]; 0: no limit).
    pub timer_scan: u32,
}

/// Per-CPU running totals of the kernel sweep, indices into the sweep stats
/// map. Totals only grow; a reader takes differences.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SweepTotal {
    /// Sweeps started (a sweep is one or more runs).
    Sweeps,
    /// Sweep runs, from the daemon or the timer.
    Runs,
    /// Runs started by the timer (no daemon sweeping).
    TimerRuns,
    /// Forward entries looked at.
    Scanned,
    /// Sessions removed after their idle timeout.
    Expired,
    /// Cooldown entries removed because they ended.
    CooldownsEnded,
    /// Expired sessions and orphans kept because their cooldown could not be recorded.
    Kept,
    /// Reverse entries removed because their forward entry was gone.
    Orphans,
    /// Runs that stopped at their budget with work left.
    Truncated,
}

/// Size of the sweep stats map.
pub const SWEEP_TOTALS: u32 = 9;

/// A session whose last packet is older than this cannot have expired,
/// whatever its state: the sweep reads only the forward entry for those.
pub const fn shortest_idle_ns(cfg: &Config) -> u64 {
    let mut min = cfg.timeout_tcp_established_ms;
    let all = [
        cfg.timeout_tcp_transitory_ms,
        cfg.timeout_tcp_closed_ms,
        cfg.timeout_udp_ms,
        cfg.timeout_icmp_ms,
    ];
    let mut i = 0;
    while i < all.len() {
        if all[i] < min {
            min = all[i];
        }
        i += 1;
    }
    // Plain products: a saturating one needs a 128-bit multiply, which BPF
    // has not; timeouts are bounded by the settings parser far below overflow.
    (min * 1_000_000).saturating_add(TOUCH_GRANULARITY_NS)
}

/// `last_seen` trails the last packet by up to the touch granularity (the
/// datapath refreshes it at most that often), so a session counts as
/// expired only once it is older than its timeout plus that slack: late by
/// at most the slack and a sweep interval, never early.
#[inline(always)]
pub const fn expired(now: u64, last_seen: u64, timeout_ms: u64) -> bool {
    now.saturating_sub(last_seen) > (timeout_ms * 1_000_000).saturating_add(TOUCH_GRANULARITY_NS)
}

/// Until when the key of a session that ended `kind`, last seen at
/// `last_seen`, must cool if it is freed at `now`; `None` when it need not.
///
/// A close the datapath saw is timed from the close: the close stamps
/// `last_seen` with its exact time and later packets only move it later, so
/// `last_seen` + the cooldown ends no earlier than the cooldown the close
/// started. Of an idle session nothing is known, so its cooldown runs from
/// the moment the key is freed. A cooldown that has ended by `now` (a
/// session that lingered past its close for longer than the cooldown) is
/// `None` too: the key has cooled already.
#[inline(always)]
pub const fn cooldown_until(
    kind: CloseKind,
    cfg: &Config,
    now: u64,
    last_seen: u64,
) -> Option<u64> {
    let ms = cooldown_ms(kind, cfg);
    if ms == 0 {
        return None;
    }
    let from = match kind {
        CloseKind::ExternalFirst | CloseKind::InternalFirst | CloseKind::Reset => last_seen,
        CloseKind::Idle | CloseKind::Udp | CloseKind::Icmp => now,
    };
    let until = from.saturating_add(ms * 1_000_000);
    if until <= now { None } else { Some(until) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_early() {
        let timeout_ms = 1_000;
        let last = 10_000_000_000;
        let at = last + timeout_ms * 1_000_000 + TOUCH_GRANULARITY_NS;
        assert!(!expired(at, last, timeout_ms));
        assert!(expired(at + 1, last, timeout_ms));
        // A clock read before the stamp (another CPU) is not an expiry.
        assert!(!expired(last - 5, last, timeout_ms));
    }

    #[test]
    fn shortest_is_the_minimum_plus_slack() {
        let cfg = Config {
            timeout_icmp_ms: 7,
            ..Config::default()
        };
        assert_eq!(shortest_idle_ns(&cfg), 7_000_000 + TOUCH_GRANULARITY_NS);
        for t in 0..5 {
            assert!(!expired(shortest_idle_ns(&cfg) - 1 + t, 0, 7 + t));
        }
    }

    #[test]
    fn closes_cool_from_the_close_idles_from_now() {
        let cfg = Config::default();
        let (now, last) = (500_000_000_000, 495_000_000_000);
        assert_eq!(
            cooldown_until(CloseKind::Reset, &cfg, now, last),
            Some(last + cfg.cooldown_rst_ms * 1_000_000)
        );
        assert_eq!(
            cooldown_until(CloseKind::Idle, &cfg, now, last),
            Some(now + cfg.cooldown_ms * 1_000_000)
        );
        // A close longer ago than its cooldown: cooled already.
        assert_eq!(
            cooldown_until(
                CloseKind::Reset,
                &cfg,
                last + cfg.cooldown_rst_ms * 1_000_000,
                last
            ),
            None
        );
        // UDP cooldown is off by default.
        assert_eq!(cooldown_until(CloseKind::Udp, &cfg, now, last), None);
        let off = Config {
            cooldown_enabled: 0,
            ..cfg
        };
        assert_eq!(cooldown_until(CloseKind::Idle, &off, now, last), None);
    }

    #[test]
    fn totals_fit_the_map() {
        assert_eq!(SweepTotal::Truncated as u32 + 1, SWEEP_TOTALS);
    }
}
