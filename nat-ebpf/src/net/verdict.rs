//! The verdicts, in the net layer: each program's outcome becomes its
//! action here, counted, once per entry point (`programs`). Drops are also
//! offered to the drop log.

use aya_ebpf::programs::{TcContext, XdpContext};
use nat_common::counters::Counter;

use super::events::dropped;
use crate::base::{maps::count, outcome::DropReason};

/// A TC program's outcome as its return code, counted: the one place a
/// result becomes an action. A packet that is not dropped or redirected
/// goes on to the next program or filter on the hook (TC_ACT_UNSPEC, TCX's
/// "next"), so the operator's own ingress and egress filters still see it.
#[inline(always)]
pub fn tc_action(ctx: &TcContext, outcome: Result<Counter, DropReason>) -> i32 {
    use aya_ebpf::bindings::{TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC};
    match outcome {
        // The fast path and the hairpin set up the redirect before they returned these.
        Ok(c @ (Counter::FastIn | Counter::FastOut | Counter::Hairpin)) => {
            count(c);
            TC_ACT_REDIRECT
        }
        Ok(counter) => {
            count(counter);
            TC_ACT_UNSPEC
        }
        Err(drop) => {
            count(drop.counter());
            dropped(ctx, drop, ctx.data(), ctx.data_end());
            TC_ACT_SHOT
        }
    }
}

/// [`tc_action`] for a program that most packets only pass by (the hairpin
/// program on the internal interfaces): `Ok(None)` is a packet that is none
/// of its business, which goes on (TC_ACT_UNSPEC) uncounted, so that the
/// fast path's packets pay no counter write here. It is not a silent pass:
/// the packet is on its normal path, whose programs (the fast path, egress)
/// count it next.
#[inline(always)]
pub fn tc_action_or_next(ctx: &TcContext, outcome: Result<Option<Counter>, DropReason>) -> i32 {
    match outcome {
        Ok(None) => aya_ebpf::bindings::TC_ACT_UNSPEC,
        Ok(Some(counter)) => tc_action(ctx, Ok(counter)),
        Err(drop) => tc_action(ctx, Err(drop)),
    }
}

/// An XDP program's outcome as its action, counted: the fast path's
/// counters mean a redirect it set up, other outcomes pass, drops drop.
#[inline(always)]
pub fn xdp_verdict(ctx: &XdpContext, outcome: Result<Counter, DropReason>) -> u32 {
    use aya_ebpf::bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_REDIRECT};
    match outcome {
        Ok(c @ (Counter::FastIn | Counter::FastOut)) => {
            count(c);
            XDP_REDIRECT
        }
        Ok(counter) => {
            count(counter);
            XDP_PASS
        }
        Err(drop) => {
            count(drop.counter());
            dropped(ctx, drop, ctx.data(), ctx.data_end());
            XDP_DROP
        }
    }
}
