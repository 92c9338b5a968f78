//! The drop log, in the net layer (called by `verdict` alone): rare
//! datapath events for the operator's log, through aya-log: drops that
//! mean the NAT ran out of something (ports, cooled ports under `strict`) or
//! was handed something it could not parse or rewrite. Off unless the
//! `log-events` setting is on. This runs only on those drop paths, behind
//! one config read, so every other packet pays nothing for it. Each CPU
//! writes at most [`EVENTS_PER_SECOND`] records a second and then says how
//! many it held back ([`nat_common::event_rate`]), so a storm of such drops
//! from outside cannot flood the log; it never costs packets.

use aya_ebpf::EbpfContext;
use aya_log_ebpf::warn;
use nat_common::{
    event_rate::{Admit, EVENTS_PER_SECOND},
    headers::{ETH_HLEN, ETH_P_IP, off},
};

use crate::base::{
    maps::{NAT_CONFIG, NAT_EVENT_RATE},
    outcome::DropReason,
    packet::{ethertype, now_ns, read},
};

/// The records' target, which the operator's log filters name (`RUST_LOG`):
/// the datapath's crate, not this module's path (each record names its
/// module and file as well). Every record carries its target, copied in
/// byte by byte by instructions the verifier walks for each caller, so it
/// is kept short.
const TARGET: &str = "nat_ebpf";

/// Logs a dropped packet with its addresses when `reason` is one the
/// operator should hear about. A subprogram of its own: its log records'
/// locals stay out of the programs' own frames, which sit at the top of
/// the deepest call chains (512 bytes for a whole chain).
#[inline(never)]
pub fn dropped<C: EbpfContext>(ctx: &C, reason: DropReason, data: usize, end: usize) {
    let rare = matches!(
        reason,
        DropReason::AllocFail
            | DropReason::StrictCooling
            | DropReason::Malformed
            | DropReason::RewriteError
    );
    if !rare || NAT_CONFIG.get(0).is_none_or(|c| c.log_events == 0) {
        return;
    }
    let Some(rate) = NAT_EVENT_RATE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot of a live per-CPU map value.
    match unsafe { &mut *rate }.admit(now_ns()) {
        Admit::Suppress => return,
        Admit::Log { held_back: 0 } => {}
        Admit::Log { held_back } => warn!(
            ctx,
            target: TARGET,
            "nat: {} event records held back on this CPU in the last second (limit {} a second)",
            held_back,
            EVENTS_PER_SECOND
        ),
    }
    let (src, dst) = addresses(data, end);
    match reason {
        DropReason::AllocFail => warn!(
            ctx,
            target: TARGET,
            "nat: no free external port for {:i} -> {:i}: dropped (drop_alloc_failed)", src, dst
        ),
        DropReason::StrictCooling => warn!(
            ctx,
            target: TARGET,
            "nat: every free port toward {:i} is cooling, {:i} dropped (drop_strict_cooling)",
            dst,
            src
        ),
        DropReason::RewriteError => warn!(
            ctx,
            target: TARGET,
            "nat: the kernel refused to rewrite {:i} -> {:i}: dropped (drop_rewrite_error)",
            src,
            dst
        ),
        _ => warn!(
            ctx,
            target: TARGET,
            "nat: malformed packet {:i} -> {:i} dropped (drop_malformed)", src, dst
        ),
    }
}

/// The IPv4 source and destination in host order for the log, 0 where the
/// frame is not IPv4 or too short to hold them.
#[inline(always)]
fn addresses(data: usize, end: usize) -> (u32, u32) {
    if ethertype(data, end) != Some(ETH_P_IP) {
        return (0, 0);
    }
    let at = |o: usize| read::<u32>(data, end, ETH_HLEN + o).map_or(0, u32::from_be);
    (at(off::IP_SADDR), at(off::IP_DADDR))
}
