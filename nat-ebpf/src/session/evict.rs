//! Eviction under table pressure, in the session layer, above the host
//! counts and the free: when the session table is nearly full, a host's
//! new flow may first evict one of the host's own openings (a TCP session
//! whose internal side sent a SYN and nothing else, whose remote sent
//! nothing, idle long enough that an answer would have come). It is chosen
//! among the last openings the host's entry remembers
//! ([`HostEntry`](nat_common::hosts::HostEntry)), checked from the session
//! maps themselves, never from that hint, and freed as any session is
//! ([`free_session`]). The allocator asks for it (`flows::alloc`), between
//! the host's admission and the probe.

use core::ptr::{addr_of_mut, read_volatile};

use nat_common::{
    counters::Counter,
    flow::{FlowKey, PROTO_TCP, Session},
    hosts::{HOST_OPENINGS, Opening, evictable},
    seen_word::{SharedWord, bits, current_rev_bits},
    sweep::cooldown_until,
    tcp_state::expiry_kind,
};

use super::free::{Fate, free_session};
use crate::base::{
    maps::{NAT_CONFIG, NAT_FWD, NAT_HOSTS, NAT_REV, count},
    shared::MapWord,
};

/// Under table pressure, before a new flow of `saddr` is allocated: evicts
/// the least recently active of the host's remembered openings that is
/// still an idle, unanswered SYN, if any.
#[inline(always)]
pub fn make_room(saddr: u32, now: u64) {
    nat_host_evict(saddr as u64, now);
}

/// [`make_room`] as a global function, verified once. Looks at
/// [`HOST_OPENINGS`] sessions at most and evicts one, freed as the sweep
/// frees a session ([`free_session`]). Returns 1 when it evicted one.
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn nat_host_evict(saddr: u64, now: u64) -> i64 {
    let saddr = saddr as u32;
    let Some(e) = NAT_HOSTS.get_ptr_mut(saddr) else {
        return 0;
    };
    let mut best = HOST_OPENINGS;
    let mut best_last = u64::MAX;
    let mut best_word = 0;
    let mut i = 0;
    while i < HOST_OPENINGS {
        // SAFETY: live map value pointer; one aligned 8-byte load.
        let word = unsafe { read_volatile(&(*e).openings[i]) };
        if let Some(last) = evictable_since(saddr, word, now)
            && last < best_last
        {
            best = i;
            best_last = last;
            best_word = word;
        }
        i += 1;
    }
    if best >= HOST_OPENINGS {
        return 0;
    }
    if evict(saddr, best_word, now) {
        // Forget it, unless another opening took the slot meanwhile.
        // SAFETY: live map value pointer.
        let slot = MapWord(unsafe { addr_of_mut!((*e).openings[best]) });
        let _ = slot.compare_exchange(best_word, 0);
        count(Counter::Evicted);
        return 1;
    }
    0
}

/// The session `word` names, as (forward key, reverse key, forward and
/// reverse seen bits, last_seen of each), if it exists.
#[inline(always)]
fn session(saddr: u32, word: u64) -> Option<(FlowKey, FlowKey, u8, u8, u64, u64, bool)> {
    let o = Opening::unpack(word)?;
    let key = FlowKey::new(PROTO_TCP, saddr, o.sport, o.daddr, o.dport);
    // SAFETY: read-only copy of a map value.
    let f = unsafe { NAT_FWD.get(key) }?;
    let rev_key = key.translated(f.addr, f.port);
    // SAFETY: as above.
    let (r_seen, r_last, paired) = match unsafe { NAT_REV.get(rev_key) } {
        Some(r) if r.addr == saddr && r.port == o.sport => {
            (current_rev_bits(f.seen, r.seen), r.last_seen, true)
        }
        _ => (0, 0, false),
    };
    Some((
        key,
        rev_key,
        bits(f.seen),
        r_seen,
        f.last_seen,
        r_last,
        paired,
    ))
}

/// The last activity of the session `word` names, if it may be evicted.
#[inline(always)]
fn evictable_since(saddr: u32, word: u64, now: u64) -> Option<u64> {
    let (_, _, f_seen, r_seen, f_last, r_last, _) = session(saddr, word)?;
    let last = f_last.max(r_last);
    evictable(f_seen, r_seen, now, last).then_some(last)
}

/// Frees the session `word` names if it may still be evicted, judged
/// again from both entries as they are now.
#[inline(always)]
fn evict(saddr: u32, word: u64, now: u64) -> bool {
    let Some(cfg) = NAT_CONFIG.get(0) else {
        return false;
    };
    let Some((key, rev_key, f_seen, r_seen, f_last, r_last, paired)) = session(saddr, word) else {
        return false;
    };
    let last = f_last.max(r_last);
    if !evictable(f_seen, r_seen, now, last) {
        return false;
    }
    let Some(fwd) = NAT_FWD.get_ptr(key) else {
        return false;
    };
    // A paired session's reverse entry must still be there: the free reads
    // its `last_seen` again, as the forward entry's. A pointer set on every
    // path (null: unpaired), as the sweep's free pass builds it.
    let mut rev: *const Session = core::ptr::null();
    if paired {
        match NAT_REV.get_ptr(rev_key) {
            Some(r) => rev = r,
            None => return false,
        }
    }
    let rev = (!rev.is_null()).then_some(rev);
    let until = cooldown_until(expiry_kind(PROTO_TCP, f_seen, r_seen), cfg, now, last);
    free_session(&key, fwd, f_last, &rev_key, rev, r_last, until) == Fate::Freed
}
