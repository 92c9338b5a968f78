//! Static port forwards in the datapath, in the flows layer: who owns an
//! external endpoint, and the session pair a new flow from outside opens
//! toward it. (That the allocator never hands out a forwarded port is a
//! rule of every claim, in `session::claim`.)
//!
//! A forward's session is an ordinary pair: its forward entry is keyed by
//! the internal endpoint and the remote and maps to the forwarded external
//! address and port, its reverse entry is the reverse key of that, so
//! replies take the egress path (and the fast path), TCP tracking, the
//! cooldowns and the sweep treat it like any outbound session.

use aya_ebpf::bindings::BPF_NOEXIST;
use nat_common::{
    counters::Counter,
    flow::{FlowKey, HopCache, Session},
    mapping::SESSION_INBOUND,
    port_forward::ForwardKey,
    tcp_state::opens_flow,
};

use crate::{
    base::{
        maps::{NAT_FORWARD, NAT_FWD, NAT_REV, count},
        outcome::DropReason,
        packet::{Endpoint, now_ns},
    },
    net::nat_events,
};

/// What a failed BPF_NOEXIST insert returns when the key exists.
const EEXIST: i64 = 17;

const OPENED: i64 = 0;
/// Another CPU opened the same flow first; its pair is used.
const RACED: i64 = 1;
/// The internal host already has a session with this remote on that port.
const CONFLICT: i64 = 2;

/// The internal endpoint a port forward gives an external (protocol,
/// address, port), all in network byte order.
#[inline(always)]
pub fn forward_owner(proto: u8, addr: u32, port: u16) -> Option<Endpoint> {
    // SAFETY: read-only copy of a map value.
    unsafe { NAT_FORWARD.get(ForwardKey::new(proto, addr, port)) }.map(|t| Endpoint {
        addr: t.addr,
        port: t.port,
    })
}

/// A packet from outside that matched no session: when its destination is
/// a port forward and it may open a flow (a TCP SYN without ACK, any UDP
/// datagram), the session pair is opened and its reverse entry returned;
/// `None` leaves the packet to the stack as it came. `rev_key` is the
/// packet's reverse key (external endpoint, remote).
#[inline(always)]
pub fn open_from_outside(rev_key: &FlowKey, flags: u8) -> Result<Option<*mut Session>, DropReason> {
    // The flags first: the packets of the NAT host's own connections (no
    // SYN) never pay the forward lookup.
    if !opens_flow(rev_key.proto, flags) {
        return Ok(None);
    }
    let Some(to) = forward_owner(rev_key.proto, rev_key.saddr, rev_key.sport) else {
        return Ok(None);
    };
    open(rev_key, to, now_ns())?;
    Ok(NAT_REV.get_ptr_mut(rev_key))
}

/// Opens the pair for the flow whose reverse key is `rev_key` toward the
/// internal endpoint `to`; counts it.
#[inline(always)]
pub fn open(rev_key: &FlowKey, to: Endpoint, now: u64) -> Result<(), DropReason> {
    match nat_open_inbound(rev_key, to.addr as u64, to.port as u64, now) {
        OPENED => {
            count(Counter::ForwardOpened);
            nat_events::inbound_session(rev_key, to.addr, to.port);
            Ok(())
        }
        RACED => {
            count(Counter::InsertRace);
            Ok(())
        }
        CONFLICT => Err(DropReason::ForwardConflict),
        _ => Err(DropReason::SessionTableFull),
    }
}

/// [`open`]'s map work as a global function, verified once. Both entries
/// are written whole before they are inserted, and both inserts are
/// BPF_NOEXIST: of two CPUs opening the same flow, one creates the pair and
/// the other finds the winner's reverse entry (`RACED`), so neither sees a
/// half-written entry. The reverse entry goes first, as in the allocator's
/// claim, and is removed again when the forward key is taken.
#[unsafe(no_mangle)]
#[inline(never)]
// Keys and entries by reference: by value each would take a stack slot of
// its own, and this frame sits under the hairpin program's.
#[allow(clippy::needless_borrows_for_generic_args)]
extern "C" fn nat_open_inbound(
    rev_key: *const FlowKey,
    to_addr: u64,
    to_port: u64,
    now: u64,
) -> i64 {
    if rev_key.is_null() {
        return -1;
    }
    // SAFETY: checked for null; callers pass a key on their stack.
    let rev_key = unsafe { *rev_key };
    let (to_addr, to_port) = (to_addr as u32, to_port as u16);
    let fwd_key = FlowKey::new(
        rev_key.proto,
        to_addr,
        to_port,
        rev_key.daddr,
        rev_key.dport,
    );
    // The seen words start empty: the packet's own bits are recorded by
    // the tracking that follows, as for any packet of the session.
    let mut entry = Session {
        addr: to_addr,
        port: to_port,
        // Not allocated for the internal host: outside its count.
        mapping: SESSION_INBOUND,
        seen: 0,
        acked: 0,
        window: 0,
        live_until: 0,
        last_seen: now,
        hop: HopCache::default(),
        sent_end: 0,
        wscale: 0,
        _pad: [0; 3],
    };
    if let Err(err) = NAT_REV.insert(&rev_key, &entry, BPF_NOEXIST as u64) {
        return if err as i64 == -EEXIST {
            RACED
        } else {
            err as i64
        };
    }
    entry.addr = rev_key.saddr;
    entry.port = rev_key.sport;
    match NAT_FWD.insert(&fwd_key, &entry, BPF_NOEXIST as u64) {
        Ok(()) => OPENED,
        Err(err) => {
            let _ = NAT_REV.remove(&rev_key);
            if err as i64 == -EEXIST {
                CONFLICT
            } else {
                err as i64
            }
        }
    }
}
