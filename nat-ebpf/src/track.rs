//! TCP state of existing sessions: seen bits, close detection, cooldowns,
//! collisions and reopening. Everything here past the first check runs only
//! for packets that change a session's state (SYN, FIN, RST, the first
//! answer), so the established path costs one comparison.

use nat_common::{
    counters::Counter,
    flow::{FlowKey, PROTO_TCP, Session, seen},
    headers::tcp_flags::{ACK, RST, SYN},
    tcp_state::{CloseKind, close_kind, cooldown_ms, seen_bits},
};

use crate::maps::{NAT_CONFIG, NAT_COOLDOWN, NAT_FWD, NAT_REV, count};

/// Egress packet of an existing session.
#[inline(always)]
pub fn egress(fwd_key: &FlowKey, fwd: *mut Session, flags: u8, now: u64) {
    // SAFETY: `fwd` is a live map value pointer from this program run.
    let (own, to) = unsafe { ((*fwd).seen, *fwd) };
    let bits = seen_bits(flags);
    let new_syn = flags & (SYN | ACK) == SYN;
    if bits & !own == 0 && !new_syn {
        return;
    }
    let rev_key = fwd_key.translated(to.addr, to.port);
    let rev = NAT_REV.get_ptr_mut(&rev_key);
    // SAFETY: live map value pointer.
    let other = rev.map_or(0, |r| unsafe { (*r).seen });
    if new_syn {
        if (own | other) & (seen::FIN | seen::RST) != 0 {
            // The internal socket opens the same 5-tuple again (the SYN retry
            // after a collision): keep the mapping, start the state afresh.
            // The key's cooldown entry stays: it does no harm while the key
            // is claimed, and it still protects the key if the reaper is
            // removing the old session at this very moment.
            // SAFETY: live map value pointers.
            unsafe {
                (*fwd).seen = seen::SYN;
                (*fwd).last_seen = now;
                if let Some(r) = rev {
                    (*r).seen = 0;
                }
            }
            count(Counter::Reopened);
        }
        return;
    }
    update(fwd, own, bits, other, &rev_key, true, now);
}

/// Ingress packet of an existing session.
#[inline(always)]
pub fn ingress(rev_key: &FlowKey, rev: *mut Session, flags: u8, now: u64) {
    // SAFETY: `rev` is a live map value pointer from this program run.
    let (own, back) = unsafe { ((*rev).seen, *rev) };
    let mut bits = seen_bits(flags);
    // Until the remote answered with a SYN-ACK, any other answer may be a
    // remote that still holds the previous connection on this key.
    let unanswered = own & (seen::SYN_ACK | seen::ODD_ANSWER) == 0 && flags & SYN == 0;
    if bits & !own == 0 && !unanswered {
        return;
    }
    let fwd_key = FlowKey::new(
        PROTO_TCP,
        back.addr,
        back.port,
        rev_key.daddr,
        rev_key.dport,
    );
    // SAFETY: read-only lookup.
    let other = unsafe { NAT_FWD.get(&fwd_key) }.map_or(0, |f| f.seen);
    if unanswered && other & seen::SYN != 0 && other & (seen::FIN | seen::RST) == 0 {
        // A remote that still holds the previous connection on this key
        // answers the new SYN with an ACK of the old one (TIME_WAIT, PAWS);
        // a reset is a plain refusal: no listener, or a filter.
        count(if flags & RST != 0 {
            Counter::SynRefused
        } else {
            Counter::Collision
        });
        bits |= seen::ODD_ANSWER;
    }
    update(rev, own, bits, other, rev_key, false, now);
}

#[inline(always)]
fn update(
    entry: *mut Session,
    own: u8,
    bits: u8,
    other: u8,
    rev_key: &FlowKey,
    is_fwd: bool,
    now: u64,
) {
    let mut add = bits & !own;
    if add == 0 {
        return;
    }
    if add & seen::FIN != 0 && other & seen::FIN == 0 {
        add |= seen::FIN_FIRST;
    }
    let mine = own | add;
    // The entry is written anyway: stamp the exact time, so a close is timed
    // from the close and not from the last coarse refresh.
    // SAFETY: live map value pointer.
    unsafe {
        (*entry).seen = mine;
        (*entry).last_seen = now;
    }
    if add & (seen::FIN | seen::RST) != 0 {
        let (fwd_seen, rev_seen) = if is_fwd { (mine, other) } else { (other, mine) };
        if let Some(kind) = close_kind(fwd_seen, rev_seen) {
            start_cooldown(rev_key, kind, now);
        }
    }
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
