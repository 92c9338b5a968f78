//! Per-host session counts, the host limit, and eviction under table pressure.
//!
//! Counting. An allocation reserves a slot in its host's count (and in the
//! total) before it probes, and gives it back when it creates no session;
//! the sweep gives a slot back when its delete of a forward entry succeeds.
//! Reservation, claim and give-back happen within one run of nat_egress,
//! and a BPF program always runs to its end (no signal, no daemon, no
//! partial run), so no state exists in which a pair is claimed and never
//! counted, or counted and never claimed: there is no crash between claim
//! and count to leak a slot. The daemon is not involved: a killed daemon
//! leaves counts and sessions as they were, and the sweep timer frees and
//! counts off in one run too. Every change is an atomic fetch-and-add on the
//! entry's word, so CPUs racing on one host lose no update; the check
//! against the limit uses the value that host's own add returned, so two
//! CPUs can never both take the last slot.
//!
//! An entry whose count drops to zero is deleted, so that the map holds
//! hosts with sessions only: the releasing CPU marks it dying first
//! ([`HOST_DYING`], by compare-and-exchange from 0), and an allocation that
//! meets a dying entry, or one the map has meanwhile reused for another host
//! (`addr` differs), takes its add back and makes a fresh entry. The count
//! is clamped at zero. What this cannot make exact is an allocation that
//! finds no entry it can use (the map full, or a fresh insert racing a
//! delete in flight): it goes ahead uncounted, so a count can fall short of
//! the truth, never exceed it, and a host is never refused below its limit.

use core::ptr::{addr_of_mut, read_volatile};

use nat_common::{
    counters::Counter,
    expiry::cooldown_until,
    flow::{FlowKey, PROTO_TCP},
    headers::tcp_flags,
    hosts::{HOST_DYING, HOST_OPENINGS, HostEntry, Opening, at_limit, evictable, under_pressure},
    seen_word::{bits, current_rev_bits},
    tcp_state::expiry_kind,
};

use crate::{
    expire::cool,
    maps::{NAT_CONFIG, NAT_FWD, NAT_HOSTS, NAT_LIVE, NAT_REV, count, session_capacity},
    packet::DropReason,
    shared::MapWord,
};

use aya_ebpf::bindings::BPF_NOEXIST;

const REFUSED: i64 = 0;
/// The host's entry holds the reservation.
const COUNTED: i64 = 1;
/// No entry could hold it; only the total does.
const UNCOUNTED: i64 = 2;
/// Or-ed into COUNTED or UNCOUNTED: the session table is nearly full.
const PRESSURE: i64 = 4;

const MINUS_ONE: u64 = u64::MAX;

/// A reservation for one new flow of `fwd.saddr`: `Err` when the host is at
/// its limit. Under table pressure it may first evict one of the host's
/// own idle unanswered openings.
#[inline(always)]
pub fn admit(fwd: &FlowKey, now: u64) -> Result<u32, DropReason> {
    let r = nat_host_admit(fwd.saddr as u64);
    if r == REFUSED {
        return Err(DropReason::HostLimit);
    }
    // Called from here, not from nat_host_admit: the BPF stack limit (512
    // bytes) is for the deepest chain of calls, and nat_egress's frame is large.
    if r & PRESSURE != 0 {
        nat_host_evict(fwd.saddr as u64, now);
    }
    Ok((r & !PRESSURE) as u32)
}

/// Ends the reservation `admitted`: kept when the flow got a new session
/// (`new`), whose opening, if a TCP SYN, becomes an eviction candidate;
/// given back otherwise.
#[inline(always)]
pub fn settle(fwd: &FlowKey, admitted: u32, new: bool, flags: u8) {
    let syn = fwd.proto == PROTO_TCP && flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN;
    let how = admitted as u64 | (new as u64) << 8 | (syn as u64) << 9;
    nat_host_settle(fwd, how);
}

/// A session of `saddr` was freed (the sweep's forward delete succeeded).
#[inline(always)]
pub fn released(saddr: u32) {
    nat_host_released(saddr as u64);
}

#[inline(always)]
fn sessions_of(e: *mut HostEntry) -> MapWord {
    // SAFETY: a live map value pointer from this program run.
    MapWord(unsafe { addr_of_mut!((*e).sessions) })
}

/// Adds one to the total and returns the total before.
#[inline(always)]
fn total_add() -> u64 {
    match NAT_LIVE.get_ptr_mut(0) {
        Some(t) => MapWord(t).fetch_add(1),
        None => 0,
    }
}

/// Takes one off `word`, never below zero (an add back undoes a take from 0).
#[inline(always)]
fn take_one(word: MapWord) -> u64 {
    let before = word.fetch_add(MINUS_ONE);
    if before == 0 {
        word.fetch_add(1);
    }
    before
}

#[inline(always)]
fn total_take() {
    if let Some(t) = NAT_LIVE.get_ptr_mut(0) {
        take_one(MapWord(t));
    }
}

/// Adds the reservation to `e` unless it is dying or no longer `saddr`'s;
/// `None` then, with the add taken back.
#[inline(always)]
fn reserve_in(e: *mut HostEntry, saddr: u32, limit: u32) -> Option<i64> {
    let word = sessions_of(e);
    let before = word.fetch_add(1);
    // SAFETY: live map value pointer; `addr` is written once, at insert.
    if before >= HOST_DYING || unsafe { read_volatile(&(*e).addr) } != saddr {
        word.fetch_add(MINUS_ONE);
        return None;
    }
    if at_limit(before, limit) {
        word.fetch_add(MINUS_ONE);
        return Some(REFUSED);
    }
    Some(COUNTED)
}

#[inline(always)]
fn reserve(saddr: u32, limit: u32) -> i64 {
    if let Some(e) = NAT_HOSTS.get_ptr_mut(saddr)
        && let Some(r) = reserve_in(e, saddr, limit)
    {
        return r;
    }
    let fresh = HostEntry {
        sessions: 1,
        next: 0,
        addr: saddr,
        openings: [0; HOST_OPENINGS],
    };
    if NAT_HOSTS.insert(saddr, fresh, BPF_NOEXIST as u64).is_ok() {
        return COUNTED;
    }
    // Another CPU's fresh entry, or a dying one not yet deleted.
    if let Some(e) = NAT_HOSTS.get_ptr_mut(saddr)
        && let Some(r) = reserve_in(e, saddr, limit)
    {
        return r;
    }
    UNCOUNTED
}

/// Gives one of `saddr`'s slots back; deletes its entry at zero.
#[inline(always)]
fn release_host(saddr: u32) {
    let Some(e) = NAT_HOSTS.get_ptr_mut(saddr) else {
        return;
    };
    // SAFETY: live map value pointer.
    if unsafe { read_volatile(&(*e).addr) } != saddr {
        return;
    }
    let word = sessions_of(e);
    let before = word.fetch_add(MINUS_ONE);
    if before == 0 || before >= HOST_DYING {
        word.fetch_add(1);
        return;
    }
    if before == 1
        && nat_common::seen_word::SharedWord::compare_exchange(&word, 0, HOST_DYING).is_ok()
    {
        let _ = NAT_HOSTS.remove(saddr);
    }
}

/// Returns REFUSED, or COUNTED or UNCOUNTED with PRESSURE when the table is
/// nearly full. A global function: the verifier checks it once, not once
/// per path of nat_egress that reaches it.
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn nat_host_admit(saddr: u64) -> i64 {
    let saddr = saddr as u32;
    let limit = NAT_CONFIG.get(0).map_or(0, |c| c.max_sessions_per_host);
    let r = reserve(saddr, limit);
    if r == REFUSED {
        return REFUSED;
    }
    if under_pressure(total_add(), session_capacity()) {
        return r | PRESSURE;
    }
    r
}

#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn nat_host_settle(fwd: *const FlowKey, how: u64) -> i64 {
    if fwd.is_null() {
        return 0;
    }
    // SAFETY: checked for null; the caller passes its stack key.
    let fwd = unsafe { *fwd };
    let admitted = (how & 0xff) as i64;
    if how & (1 << 8) == 0 {
        if admitted == COUNTED {
            release_host(fwd.saddr);
        }
        total_take();
        return 0;
    }
    if how & (1 << 9) == 0 || admitted != COUNTED {
        return 0;
    }
    let Some(e) = NAT_HOSTS.get_ptr_mut(fwd.saddr) else {
        return 0;
    };
    // Two CPUs may read the same cursor and fill one slot: one opening is
    // then not remembered, which costs an eviction candidate, nothing more.
    // SAFETY: live map value pointer.
    let next = unsafe { addr_of_mut!((*e).next) };
    // SAFETY: as above.
    let slot = unsafe { read_volatile(next) } as usize % HOST_OPENINGS;
    crate::shared::add(next, 1u32);
    let opening = Opening {
        daddr: fwd.daddr,
        sport: fwd.sport,
        dport: fwd.dport,
    };
    // SAFETY: live map value pointer; one aligned 8-byte store.
    if slot < HOST_OPENINGS {
        unsafe { MapWord(addr_of_mut!((*e).openings[slot])).store(opening.pack()) };
    }
    0
}

#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn nat_host_released(saddr: u64) -> i64 {
    release_host(saddr as u32);
    total_take();
    0
}

/// Evicts the oldest of `saddr`'s remembered openings that is still an
/// idle, unanswered SYN, if any: cooldown first, then the forward entry,
/// then the reverse one, as the sweep frees a session. Looks at
/// [`HOST_OPENINGS`] sessions at most and evicts one.
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
        if let Some(last) = candidate(saddr, word, now)
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
        let _ = nat_common::seen_word::SharedWord::compare_exchange(&slot, best_word, 0);
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

/// The session's last activity if it may be evicted.
#[inline(always)]
fn candidate(saddr: u32, word: u64, now: u64) -> Option<u64> {
    let (_, _, f_seen, r_seen, f_last, r_last, _) = session(saddr, word)?;
    let last = f_last.max(r_last);
    evictable(f_seen, r_seen, now, last).then_some(last)
}

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
    // Never free a key without cooling it, as the sweep.
    if let Some(until) = cooldown_until(expiry_kind(PROTO_TCP, f_seen, r_seen), cfg, now, last)
        && !cool(&rev_key, until)
    {
        return false;
    }
    let Some(fwd) = NAT_FWD.get_ptr(key) else {
        return false;
    };
    // An answer or a retransmission since the reads above: it stays.
    // SAFETY: a map value pointer from the lookup above; read-only copies.
    let moved = unsafe { read_volatile(&(*fwd).last_seen) } != f_last
        || (paired && unsafe { NAT_REV.get(rev_key) }.is_none_or(|r| r.last_seen != r_last));
    if moved {
        return false;
    }
    // With its mapping reference, if it is on one (mapping-tcp endpoint-independent).
    if crate::mapping::remove_forward(&key, fwd).is_none() {
        return false;
    }
    release_host(saddr);
    total_take();
    if paired {
        let _ = NAT_REV.remove(rev_key);
    }
    true
}
