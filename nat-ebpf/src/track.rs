//! TCP state of existing sessions: seen words, close detection, cooldowns,
//! collisions and reopening. Everything here past the first check runs only
//! for packets that change a session's state (SYN, FIN, RST, the first
//! answer), so the established path costs one comparison.
//!
//! Each direction's seen word is written only by the programs of that
//! direction, and only by compare-and-exchange ([`nat_common::seen_word`]):
//! packets of one direction on several CPUs cannot lose each other's bits,
//! and a reopen never touches the reverse entry, whose bits of the closed
//! connection simply stop counting once the forward entry is a generation
//! ahead.

use nat_common::{
    counters::Counter,
    flow::{FlowKey, PROTO_TCP, Session, seen},
    headers::tcp_flags::{ACK, FIN, RST, SYN},
    seen_word::{
        SharedWord, bits, current_rev_bits, ended, forward_add, forward_reopen, generation, pack,
        reverse_add, update,
    },
    tcp_state::{CloseKind, close_kind, cooldown_ms, rst_in_window, seen_bits},
};

use crate::{
    maps::{NAT_CONFIG, NAT_COOLDOWN, NAT_FWD, NAT_REV, count},
    shared::MapWord,
};

#[inline(always)]
fn seen_of(entry: *mut Session) -> MapWord {
    // SAFETY: `entry` is a live map value pointer from this program run.
    MapWord(unsafe { core::ptr::addr_of_mut!((*entry).seen) })
}

#[inline(always)]
fn stamp(entry: *mut Session, now: u64) {
    // The entry changed anyway: stamp the exact time, so a close is timed
    // from the close and not from the last coarse refresh.
    // SAFETY: `entry` is a live map value pointer from this program run.
    unsafe { (*entry).last_seen = now };
}

/// Egress packet of an existing session.
#[inline(always)]
pub fn egress(fwd_key: &FlowKey, fwd: *mut Session, flags: u8, now: u64) {
    nat_track_egress(fwd_key, fwd, flags as u64, now);
}

/// Ingress packet of an existing session, with its sequence number as
/// loaded; `false` for a reset outside the internal host's window, which
/// must be dropped (it has changed nothing).
#[inline(always)]
pub fn ingress(rev_key: &FlowKey, rev: *mut Session, flags: u8, seq: u32, now: u64) -> bool {
    nat_track_ingress(rev_key, rev, flags as u64 | ((seq as u64) << 32), now) == 0
}

/// Records the internal host's acknowledgment and window from an egress
/// segment that carries one, for checking resets from outside. Every ACK
/// that moves the number writes it, on the forward entry only; two CPUs'
/// writes may interleave, leaving a slightly older number, which the
/// check's slack covers.
#[inline(always)]
pub fn note_ack(fwd: *mut Session, flags: u8, ack: u32, window: u16) {
    if flags & ACK == 0 {
        return;
    }
    // SAFETY: live map value pointer.
    unsafe {
        if (*fwd).acked != ack {
            (*fwd).acked = ack;
            (*fwd).window = window;
        }
    }
}

// Global BPF functions: the verifier checks each once, on its own, instead
// of once for every path of every program that reaches it (the exchange
// loops would otherwise multiply nat_egress's paths past the verifier's
// limit). It hands them their pointer arguments as possibly null.

#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn nat_track_egress(
    fwd_key: *const FlowKey,
    fwd: *mut Session,
    flags: u64,
    now: u64,
) -> i32 {
    if fwd_key.is_null() || fwd.is_null() {
        return 0;
    }
    // A copy on this function's stack: Linux 6.1 takes no pointer argument
    // of a global function as a map key. Volatile, so that LLVM keeps it.
    // SAFETY: checked for null; the caller passes its stack key.
    let fwd_key = unsafe { core::ptr::read_volatile(fwd_key) };
    track_egress(&fwd_key, fwd, flags as u8, now);
    0
}

#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn nat_track_ingress(
    rev_key: *const FlowKey,
    rev: *mut Session,
    flags_seq: u64,
    now: u64,
) -> i32 {
    if rev_key.is_null() || rev.is_null() {
        return 0;
    }
    // SAFETY: checked for null; the caller passes its stack key. A copy,
    // as in nat_track_egress.
    let rev_key = unsafe { core::ptr::read_volatile(rev_key) };
    if track_ingress(
        &rev_key,
        rev,
        flags_seq as u8,
        (flags_seq >> 32) as u32,
        now,
    ) {
        0
    } else {
        1
    }
}

#[inline(always)]
fn track_egress(fwd_key: &FlowKey, fwd: *mut Session, flags: u8, now: u64) {
    let own_seen = seen_of(fwd);
    let before = own_seen.load();
    let packet = seen_bits(flags);
    let new_syn = flags & (SYN | ACK) == SYN;
    if packet & !bits(before) == 0 && !new_syn {
        return;
    }
    // SAFETY: live map value pointer.
    let (addr, port) = unsafe { ((*fwd).addr, (*fwd).port) };
    let rev_key = fwd_key.translated(addr, port);
    let rev_seen = NAT_REV.get_ptr_mut(rev_key).map(seen_of);
    let other = rev_seen.map_or(0, |r| current_rev_bits(before, r.load()));
    let epoch = generation(before);
    if new_syn {
        // The internal socket opens the same 5-tuple again (the SYN retry
        // after a collision): keep the mapping, start a new generation.
        // The key's cooldown entry stays: it does no harm while the key
        // is claimed, and it still protects the key if the reaper is
        // removing the old session at this very moment.
        if update(&own_seen, |w| forward_reopen(w, epoch, other)).is_some() {
            stamp(fwd, now);
            // Nothing of the new connection is acknowledged yet.
            // SAFETY: live map value pointer.
            unsafe { (*fwd).acked = 0 };
            count(Counter::Reopened);
        }
        return;
    }
    let other_fin = other & seen::FIN != 0;
    let Some((old, new)) = update(&own_seen, |w| forward_add(w, epoch, packet, other_fin)) else {
        return;
    };
    stamp(fwd, now);
    if bits(new) & !bits(old) & (seen::FIN | seen::RST) != 0 {
        // Read again after the exchange, a full barrier: of a FIN each way
        // recorded at once on two CPUs, at least one side sees both.
        let other = rev_seen.map_or(0, |r| current_rev_bits(new, r.load()));
        if let Some(kind) = close_kind(bits(new), other) {
            start_cooldown(&rev_key, kind, now);
        }
    }
}

#[inline(always)]
fn track_ingress(rev_key: &FlowKey, rev: *mut Session, flags: u8, seq: u32, now: u64) -> bool {
    let own_seen = seen_of(rev);
    let before = own_seen.load();
    // Answered, open, and nothing new: established traffic ends here with
    // the one lookup it came with. Everything else reads the forward entry,
    // whose generation says whether these bits are the current
    // connection's: a SYN-ACK or a reset may answer a reopen.
    // (A remote's own SYN, to a port forward, makes it answered too: the
    // internal host answers it, there is no SYN of ours to collide with.)
    if flags & (SYN | FIN | RST) == 0
        && bits(before) & (seen::SYN_ACK | seen::ODD_ANSWER | seen::SYN) != 0
        && !ended(bits(before), 0)
    {
        return true;
    }
    // SAFETY: live map value pointer.
    let (addr, port) = unsafe { ((*rev).addr, (*rev).port) };
    let fwd_key = FlowKey::new(PROTO_TCP, addr, port, rev_key.daddr, rev_key.dport);
    let fwd = NAT_FWD.get_ptr_mut(fwd_key);
    if flags & RST != 0
        && let Some(f) = fwd
    {
        // SAFETY: live map value pointer.
        let (acked, window) = unsafe { ((*f).acked, (*f).window) };
        if !rst_in_window(u32::from_be(seq), u32::from_be(acked), u16::from_be(window)) {
            return false;
        }
    }
    let fwd_seen = fwd.map(seen_of);
    // Without a forward entry (being reaped) the reverse keeps its own generation.
    let fwd_word = fwd_seen.map_or(pack(generation(before), 0), |f| f.load());
    let epoch = generation(fwd_word);
    let other = bits(fwd_word);
    let own = current_rev_bits(fwd_word, before);
    let mut packet = seen_bits(flags);
    // Until the remote answered with a SYN-ACK, any other answer may be a
    // remote that still holds the previous connection on this key (an
    // ACK of the old one: TIME_WAIT, PAWS); a reset is a plain refusal:
    // no listener, or a filter.
    let unanswered = own & (seen::SYN_ACK | seen::ODD_ANSWER) == 0 && flags & SYN == 0;
    if unanswered && other & seen::SYN != 0 && !ended(other, 0) {
        packet |= seen::ODD_ANSWER;
    }
    let other_fin = other & seen::FIN != 0;
    let Some((old, new)) = update(&own_seen, |w| reverse_add(w, epoch, packet, other_fin)) else {
        return true;
    };
    let added = bits(new) & !current_rev_bits(new, old);
    if added == 0 {
        return true;
    }
    // Counted by the one CPU whose exchange added the mark.
    if added & seen::ODD_ANSWER != 0 {
        count(if flags & RST != 0 {
            Counter::SynRefused
        } else {
            Counter::Collision
        });
    }
    stamp(rev, now);
    if added & (seen::FIN | seen::RST) != 0 {
        // Read again after the exchange, as on egress. A forward entry that
        // moved on has reopened: these bits are the old connection's.
        let fwd_now = fwd_seen.map_or(pack(epoch, 0), |f| f.load());
        if generation(fwd_now) == epoch
            && let Some(kind) = close_kind(bits(fwd_now), bits(new))
        {
            start_cooldown(rev_key, kind, now);
        }
    }
    true
}

/// Records when `rev_key` may be handed out again after a close of `kind`.
/// The cooldown runs from the close; the session itself lingers a little
/// longer for late segments and keeps the key claimed meanwhile.
#[inline(always)]
fn start_cooldown(rev_key: &FlowKey, kind: CloseKind, now: u64) {
    let Some(cfg) = NAT_CONFIG.get(0) else { return };
    let ms = cooldown_ms(kind, cfg);
    if ms == 0 {
        return;
    }
    if NAT_COOLDOWN
        .insert(rev_key, now + ms * 1_000_000, 0)
        .is_err()
    {
        count(Counter::CooldownFull);
    }
}
