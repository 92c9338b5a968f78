//! Expiry rules shared by the kernel sweep (nat-ebpf/src/flows/sweep.rs) and the
//! tools that read its results: when an idle session has expired, how long
//! its key cools, and the sweep's control and result records.

use crate::{
    config::{Config, TOUCH_GRANULARITY_NS},
    flow::{PROTO_ICMP, PROTO_TCP},
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

/// Entries per second a sweep may walk, on average: a sweep of a table of
/// `n` entries starts no sooner than `n / SWEEP_SCAN_RATE` seconds after the
/// previous one ([`sweep_pause_ns`]), so the walk costs a bounded share of a
/// core however large the table grows (a walk costs 80-100 ns an entry, so
/// this is some 2-3% of one). Up to 250,000 entries the sweep interval
/// rules; at 1,000,000 sessions a sweep runs every 4 s, and sessions expire
/// up to that much later (never earlier).
pub const SWEEP_SCAN_RATE: u64 = 250_000;

/// How long after a sweep that looked at `scanned` entries the next one
/// starts: the sweep interval, or longer for a large table.
pub const fn sweep_pause_ns(interval_ns: u64, scanned: u64) -> u64 {
    const NS_PER_ENTRY: u64 = 1_000_000_000 / SWEEP_SCAN_RATE;
    // No saturating_mul: BPF has no 128-bit multiply.
    let paced = if scanned > u64::MAX / NS_PER_ENTRY {
        u64::MAX
    } else {
        scanned * NS_PER_ENTRY
    };
    if paced > interval_ns {
        paced
    } else {
        interval_ns
    }
}

/// After a run that stopped at its budget, the timer runs again this soon.
pub const TIMER_RESUME_NS: u64 = 1_000_000;

/// Index 0 of the sweep control map: written by `nat load`, read by the sweep.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepControl {
    /// How often the timer sweeps while no daemon does (`--sweep-interval-ms`);
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

/// Liveness stamps are kept in units of 2^30 ns (about 1.07 s), 16 bits
/// of them in the forward entry ([`crate::flow::Session::live_until`]):
/// they wrap after about 19.5 hours.
pub const LIVE_UNIT_SHIFT: u32 = 30;

/// A stamp proves a session live for at most this many units (about 17 s)
/// past the sweep run that wrote it; after a change of the timeouts the
/// sweep trusts no stamp for as long ([`epoch_trusts`]).
pub const LIVE_MAX_UNITS: u16 = 16;

const fn live_units(ns: u64) -> u64 {
    ns >> LIVE_UNIT_SHIFT
}

/// The shortest idle timeout any state of a `proto` session has: a packet
/// at `t`, whatever state it moves the session to, keeps it live until at
/// least `t` + this (its `last_seen` trails it by at most the touch
/// granularity, which [`expired`] adds back).
pub const fn live_window_ns(proto: u8, cfg: &Config) -> u64 {
    let ms = match proto {
        PROTO_TCP => {
            let mut m = cfg.timeout_tcp_established_ms;
            if cfg.timeout_tcp_transitory_ms < m {
                m = cfg.timeout_tcp_transitory_ms;
            }
            if cfg.timeout_tcp_closed_ms < m {
                m = cfg.timeout_tcp_closed_ms;
            }
            m
        }
        PROTO_ICMP => cfg.timeout_icmp_ms,
        _ => cfg.timeout_udp_ms,
    };
    ms * 1_000_000
}

/// The stamp a sweep run that started at `now` writes for a session it
/// read whole (both entries) and found live, and which expires at
/// `expires` unless a packet comes: `last_seen` + its state's timeout +
/// the touch slack. Until the stamp's time no sweep can find it expired:
/// without a packet it lives until `expires`; a packet after `now` keeps it
/// until `now` + [`live_window_ns`] at least. Rounded down to a unit and
/// capped at [`LIVE_MAX_UNITS`]; 0 (no stamp) when less than a unit is left.
pub const fn live_stamp(now: u64, expires: u64, window_ns: u64) -> u16 {
    let mut until = now.saturating_add(window_ns);
    if expires < until {
        until = expires;
    }
    let cap = now.saturating_add((LIVE_MAX_UNITS as u64) << LIVE_UNIT_SHIFT);
    if cap < until {
        until = cap;
    }
    if live_units(until) <= live_units(now) {
        return 0;
    }
    live_units(until) as u16
}

/// Whether `stamp` proves the session live at `now`: `now` lies before the
/// stamp's unit, at most [`LIVE_MAX_UNITS`] before it. A stamp is never
/// trusted more than that far ahead, so one that wrapped around (a session
/// no sweep stamped for 19.5 hours) is rejected unless it lands in that
/// window; the sweep clears stamps that have run out to keep that rare.
pub const fn live_at(stamp: u16, now: u64) -> bool {
    if stamp == 0 {
        return false;
    }
    let left = stamp.wrapping_sub(live_units(now) as u16);
    left != 0 && left <= LIVE_MAX_UNITS
}

/// A signature of the settings expiry depends on (the five timeouts),
/// never 0: stamps written under other timeouts prove nothing.
pub const fn expiry_sig(cfg: &Config) -> u16 {
    let all = [
        cfg.timeout_tcp_established_ms,
        cfg.timeout_tcp_transitory_ms,
        cfg.timeout_tcp_closed_ms,
        cfg.timeout_udp_ms,
        cfg.timeout_icmp_ms,
    ];
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < all.len() {
        h = (h ^ all[i]).wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    let s = (h ^ (h >> 16) ^ (h >> 32) ^ (h >> 48)) as u16;
    if s == 0 { 1 } else { s }
}

/// The sweep's record of the timeouts its stamps are written under, kept
/// in the pinned timer map (`config_seen`): the signature in the high
/// half, the unit at which a sweep first saw it in the low half.
pub const fn epoch_word(sig: u16, now: u64) -> u32 {
    ((sig as u32) << 16) | (live_units(now) as u16) as u32
}

/// The record a sweep writes when it finds none (`word` 0: no sweep has
/// run with this timer map, so no stamp exists): trusted at once.
pub const fn first_epoch_word(sig: u16, now: u64) -> u32 {
    let back = ((LIVE_MAX_UNITS as u64) + 1) << LIVE_UNIT_SHIFT;
    epoch_word(sig, now.saturating_sub(back))
}

/// Whether stamps may be trusted at `now` under the record `word` and the
/// current signature `sig`: the record is of these timeouts and they were
/// first seen more than [`LIVE_MAX_UNITS`] units ago, so every stamp
/// written under earlier timeouts has run out. (A record older than the
/// 19.5-hour wrap is distrusted for 17 s once in a while: only slower.)
pub const fn epoch_trusts(word: u32, sig: u16, now: u64) -> bool {
    (word >> 16) as u16 == sig
        && (live_units(now) as u16).wrapping_sub(word as u16) > LIVE_MAX_UNITS
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

    const UNIT: u64 = 1 << LIVE_UNIT_SHIFT;

    #[test]
    fn a_stamp_never_outlives_its_proof() {
        let cfg = Config::default();
        let now = 1_000 * UNIT + 12_345;
        for proto in [PROTO_TCP, crate::flow::PROTO_UDP, PROTO_ICMP] {
            let window = live_window_ns(proto, &cfg);
            for expires in [now, now + UNIT / 2, now + 3 * UNIT + 7, now + 10_000 * UNIT] {
                let stamp = live_stamp(now, expires, window);
                let limit = expires.min(now + window);
                // Every instant the stamp vouches for lies before the proof's end.
                for t in (now..now + 40 * UNIT).step_by((UNIT / 4) as usize) {
                    if live_at(stamp, t) {
                        assert!(
                            t < limit,
                            "{proto}: stamp {stamp} trusted at {t}, proof ends {limit}"
                        );
                    }
                }
            }
        }
        // Less than a unit left: no stamp.
        assert_eq!(live_stamp(now, now + UNIT / 2, u64::MAX), 0);
    }

    #[test]
    fn a_stamp_is_capped_and_used() {
        let now = 5_000 * UNIT;
        let stamp = live_stamp(now, u64::MAX, u64::MAX);
        assert!(live_at(stamp, now));
        assert!(live_at(stamp, now + (LIVE_MAX_UNITS as u64 - 1) * UNIT));
        assert!(!live_at(stamp, now + LIVE_MAX_UNITS as u64 * UNIT));
        assert!(!live_at(0, now));
        // Far in the past or the future (wrapped): not trusted.
        assert!(!live_at(stamp, now + 1_000 * UNIT));
        assert!(!live_at(stamp, now - 100 * UNIT));
    }

    #[test]
    fn tcp_window_is_the_shortest_tcp_timeout() {
        let cfg = Config::default();
        assert_eq!(
            live_window_ns(PROTO_TCP, &cfg),
            cfg.timeout_tcp_closed_ms * 1_000_000
        );
        assert_eq!(
            live_window_ns(crate::flow::PROTO_UDP, &cfg),
            cfg.timeout_udp_ms * 1_000_000
        );
        assert_eq!(
            live_window_ns(PROTO_ICMP, &cfg),
            cfg.timeout_icmp_ms * 1_000_000
        );
    }

    #[test]
    fn changed_timeouts_distrust_stamps_until_they_ran_out() {
        let cfg = Config::default();
        let sig = expiry_sig(&cfg);
        let lower = Config {
            timeout_tcp_established_ms: 1_000,
            ..cfg
        };
        let new_sig = expiry_sig(&lower);
        assert_ne!(sig, new_sig);
        assert_ne!(sig, 0);
        let now = 77 * UNIT;
        // First sweep with this timer map: trusted at once.
        let first = first_epoch_word(sig, now);
        assert!(epoch_trusts(first, sig, now));
        // The timeouts change: the record no longer matches.
        assert!(!epoch_trusts(first, new_sig, now));
        let changed = epoch_word(new_sig, now);
        // A stamp written just before the change, as far ahead as allowed.
        let old = live_stamp(now - 1, u64::MAX, u64::MAX);
        let mut t = now;
        while t < now + 40 * UNIT {
            assert!(
                !(epoch_trusts(changed, new_sig, t) && live_at(old, t)),
                "an old stamp is trusted at {t}"
            );
            t += UNIT / 8;
        }
        assert!(epoch_trusts(
            changed,
            new_sig,
            now + (LIVE_MAX_UNITS as u64 + 2) * UNIT
        ));
    }

    #[test]
    fn large_tables_sweep_less_often() {
        let second = 1_000_000_000;
        assert_eq!(sweep_pause_ns(second, 0), second);
        assert_eq!(sweep_pause_ns(second, 100_000), second);
        assert_eq!(sweep_pause_ns(second, 1_000_000), 4 * second);
        assert_eq!(sweep_pause_ns(60 * second, 1_000_000), 60 * second);
        assert_eq!(sweep_pause_ns(second, u64::MAX), u64::MAX);
    }

    #[test]
    fn totals_fit_the_map() {
        assert_eq!(SweepTotal::Truncated as u32 + 1, SWEEP_TOTALS);
    }
}
