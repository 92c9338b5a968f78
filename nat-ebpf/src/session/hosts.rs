//! Per-host session counts and the host limit, in the session layer.
//!
//! Counting. An allocation reserves a slot in its host's count (and in the
//! total) before it probes ([`admit`]), and gives it back when it creates
//! no session ([`settle`]); freeing a session gives a slot back when its
//! delete of the forward entry succeeds ([`released`], from
//! `super::free`). Reservation, claim and give-back happen within one run
//! of nat_egress, and a BPF program always runs to its end (no signal, no
//! daemon, no partial run), so no state exists in which a pair is claimed
//! and never counted, or counted and never claimed: there is no crash
//! between claim and count to leak a slot. The daemon is not involved: a
//! killed daemon leaves counts and sessions as they were, and the sweep
//! timer frees and counts off in one run too. Every change is an atomic
//! fetch-and-add on the entry's word, so CPUs racing on one host lose no
//! update; the check against the limit uses the value that host's own add
//! returned, so two CPUs can never both take the last slot.
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
//!
//! Each entry also remembers its host's last openings ([`settle`]), the
//! sessions eviction (`super::evict`) may choose from.

use core::ptr::{addr_of_mut, read_volatile};

use aya_ebpf::bindings::BPF_NOEXIST;
use nat_common::{
    flow::{FlowKey, PROTO_TCP},
    headers::tcp_flags,
    hosts::{HOST_DYING, HOST_OPENINGS, HostEntry, Opening, at_limit, under_pressure},
    seen_word::SharedWord,
};

use crate::base::{
    maps::{NAT_CONFIG, NAT_HOSTS, NAT_LIVE, session_capacity},
    outcome::DropReason,
    shared::{MapWord, add},
};

const REFUSED: i64 = 0;
/// The host's entry holds the reservation.
const COUNTED: i64 = 1;
/// No entry could hold it; only the total does.
const UNCOUNTED: i64 = 2;
/// Or-ed into COUNTED or UNCOUNTED: the session table is nearly full.
const PRESSURE: i64 = 4;

const MINUS_ONE: u64 = u64::MAX;

/// One new flow's slot in its host's count, from [`admit`] to [`settle`].
#[derive(Clone, Copy)]
pub struct Reservation {
    /// `COUNTED` or `UNCOUNTED`.
    held: u32,
    /// The session table is nearly full: room may be made first
    /// (`super::evict`).
    pub pressure: bool,
}

/// A reservation for one new flow of `fwd.saddr`: `Err` when the host is at
/// its limit.
#[inline(always)]
pub fn admit(fwd: &FlowKey) -> Result<Reservation, DropReason> {
    let r = nat_host_admit(fwd.saddr as u64);
    if r == REFUSED {
        return Err(DropReason::HostLimit);
    }
    Ok(Reservation {
        held: (r & !PRESSURE) as u32,
        pressure: r & PRESSURE != 0,
    })
}

/// Ends the reservation: kept when the flow got a new session (`new`),
/// whose opening, if a TCP SYN, is remembered for eviction to choose
/// from; given back otherwise.
#[inline(always)]
pub fn settle(fwd: &FlowKey, reservation: Reservation, new: bool, flags: u8) {
    let syn = fwd.proto == PROTO_TCP && flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN;
    let how = reservation.held as u64 | (new as u64) << 8 | (syn as u64) << 9;
    nat_host_settle(fwd, how);
}

/// A session of `saddr` was freed (its forward entry's delete succeeded).
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
    if before == 1 && word.compare_exchange(0, HOST_DYING).is_ok() {
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
    // then not remembered, which costs eviction one choice, nothing more.
    // SAFETY: live map value pointer.
    let next = unsafe { addr_of_mut!((*e).next) };
    // SAFETY: as above.
    let slot = unsafe { read_volatile(next) } as usize % HOST_OPENINGS;
    add(next, 1u32);
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
