//! Hairpinning (RFC 4787 REQ-9, RFC 5382 REQ-8) on the internal
//! interfaces, in the flows layer: an internal host that sends to an
//! external address and port owned by a port forward (or an
//! endpoint-independent mapping) reaches its internal host, which sees the
//! sender's external address and port as the source. The programs
//! `nat_hairpin` and `nat_fast_tc` run it through [`nat_hairpin_tc`].
//!
//! The stack would deliver a packet to the NAT's own external address
//! locally, so it is taken in TC ingress of the internal interface, before
//! routing, and does there what egress and then ingress would: the source
//! is translated by the sender's session (allocated like any outbound flow
//! toward the external destination), the destination by the receiver's
//! (opened through the forward as a packet from outside would open it),
//! and the packet goes back out an internal interface. Replies are the
//! mirror: the receiver's session translates their source, the sender's
//! their destination. Both are ordinary sessions, so TCP tracking, the
//! cooldowns and the sweep apply to them unchanged.

use aya_ebpf::{
    bindings::{__sk_buff, bpf_fib_lookup as FibParams},
    macros::map,
    maps::PerCpuArray,
    programs::TcContext,
};
use nat_common::{
    counters::Counter,
    flow::{FlowKey, NextHop, PROTO_TCP, PROTO_UDP},
    forward::eligible,
    headers::{ETH_HLEN, check_ipv4},
    tcp_state::opens_flow,
};

use super::{
    alloc::allocate,
    mapping::{self, Miss},
    port_forward::{forward_owner, open},
};
use crate::{
    base::{
        maps::{NAT_FWD, NAT_REV, ext_ifindex, is_external, is_internal},
        outcome::{DropReason, decode, encode},
        packet::{
            Endpoint, Ether, HEADERS_MAX, L4Fields, Side, ethernet, l4_fields, now_ns, read, touch,
        },
        skb::linear_headers,
    },
    net::{
        route::{hop, out_interface, skb_for_host, tc_redirect_neigh, tos_ttl},
        tc_rewrite::rewrite_endpoint,
    },
    session::track::{self, SynOptions},
};

/// The hairpin's packet and translation, per CPU ([`Plan`]); never pinned.
#[map(name = "NAT_HAIRPIN_PLAN")]
static NAT_HAIRPIN_PLAN: PerCpuArray<Plan> = PerCpuArray::with_max_entries(1, 0);

/// What the packet is, and, once [`nat_hairpin_source`] and
/// [`nat_hairpin_destination`] have run, where it goes.
#[repr(C)]
struct Plan {
    /// The packet's flow as egress keys it (sender, external destination).
    key: FlowKey,
    now: u64,
    /// The transport header, with a SYN's window scale option ([`SynOptions`]).
    l4: L4Fields,
    /// Out: the sender's external endpoint, the new source.
    src_addr: u32,
    /// Out: the receiving internal endpoint, the new destination.
    dst_addr: u32,
    src_port: u16,
    dst_port: u16,
    /// The route lookup's parameters: here rather than on the program's
    /// stack, which with the mapping's admission under it is full.
    fib: FibParams,
}

/// The global functions' answers: `GO` and `ALLOCATE` above every code of
/// [`encode`], which carries the rest (a pass counted in its counter, a drop).
const GO: i64 = 1 << 32;
/// The sender has no session yet: the program allocates one, as egress
/// does, on its own stack (the probe walk's callback needs what is left).
const ALLOCATE: i64 = GO + 1;
/// Not hairpin traffic: the packet goes on as the stack would take it.
const NOT_OURS: i64 = encode(Ok(Counter::NotHairpin));

#[inline(always)]
fn opening(p: &Plan) -> bool {
    opens_flow(p.key.proto, p.l4.tcp_flags)
}

/// The sender's side, as egress translates it: `GO` with the plan's source
/// set from its session, `ALLOCATE` when a new flow needs one, `NOT_OURS`
/// for a packet no forward or mapping claims (the NAT host's own services
/// on its external address), or [`encode`]'s code of another pass or a
/// drop. A global function, verified once.
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn nat_hairpin_source(plan: *mut Plan) -> i64 {
    if plan.is_null() {
        return NOT_OURS;
    }
    // SAFETY: checked for null; the caller passes its per-CPU plan.
    let p = unsafe { &mut *plan };
    let key = p.key;
    let Some(entry) = NAT_FWD.get_ptr_mut(key) else {
        return new_flow(p, &key);
    };
    let refresh = key.proto != PROTO_TCP || {
        match track::from_inside(&key, entry, &p.l4, p.now) {
            Ok(refresh) => refresh,
            Err(drop) => return encode(Err(drop)),
        }
    };
    if refresh {
        touch(entry, p.now);
    }
    // SAFETY: live map value from the lookup above.
    let src = Endpoint::of(unsafe { &*entry });
    p.src_addr = src.addr;
    p.src_port = src.port;
    GO
}

/// The sender's first packet toward (`key`'s) external destination: who
/// owns it decides. A port forward's new flow is allocated; one to another
/// internal endpoint's endpoint-independent UDP mapping (RFC 4787 REQ-9)
/// only when the mapping's filter admits it, asked first so that a packet
/// it refuses leaves no session behind (`pass_filtered`: the stack has it,
/// as one from outside).
#[inline(always)]
fn new_flow(p: &Plan, key: &FlowKey) -> i64 {
    if forward_owner(key.proto, key.daddr, key.dport).is_some() {
        return if opening(p) {
            ALLOCATE
        } else {
            encode(Err(DropReason::NoSession))
        };
    }
    if key.proto != PROTO_UDP {
        return NOT_OURS;
    }
    match mapping::hairpin_filter(key) {
        None => NOT_OURS,
        Some(false) => encode(Ok(Counter::Filtered)),
        Some(true) => ALLOCATE,
    }
}

/// The receiver's side, as ingress translates a packet from the plan's
/// source: its session found or opened through the owner of the external
/// destination, `GO` with the plan's destination set, else as above.
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn nat_hairpin_destination(plan: *mut Plan) -> i64 {
    if plan.is_null() {
        return NOT_OURS;
    }
    // SAFETY: checked for null; the caller passes its per-CPU plan.
    let p = unsafe { &mut *plan };
    match destination(p) {
        Ok(true) => GO,
        Ok(false) => NOT_OURS,
        Err(drop) => encode(Err(drop)),
    }
}

#[inline(always)]
fn destination(p: &mut Plan) -> Result<bool, DropReason> {
    let key = p.key;
    let rev_key = FlowKey::new(key.proto, key.daddr, key.dport, p.src_addr, p.src_port);
    let entry = match NAT_REV.get_ptr_mut(rev_key) {
        Some(entry) => entry,
        None => {
            if let Some(to) = forward_owner(key.proto, key.daddr, key.dport) {
                if !opening(p) {
                    return Err(DropReason::NoSession);
                }
                open(&rev_key, to, p.now)?;
                NAT_REV.get_ptr_mut(rev_key).ok_or(DropReason::NoSession)?
            } else {
                // An endpoint-independent mapping's port: its filter
                // decides, with the sender's external endpoint as the remote.
                match mapping::inbound(&rev_key)? {
                    Miss::Opened(entry) => entry,
                    Miss::Pass(_) => return Ok(false),
                }
            }
        }
    };
    let refresh = key.proto != PROTO_TCP || track::from_outside(&rev_key, entry, &p.l4, p.now)?;
    if refresh {
        touch(entry, p.now);
    }
    // SAFETY: live map value from a lookup above.
    let to = Endpoint::of(unsafe { &*entry });
    p.dst_addr = to.addr;
    p.dst_port = to.port;
    Ok(true)
}

/// [`nat_hairpin_tc`]'s code for a packet that is none of the hairpin's
/// business; every other code is [`encode`]'s.
const NOT_MINE: i64 = i64::MIN;

/// [`nat_hairpin_tc`]'s code undone: `Ok(None)` for a packet the hairpin
/// leaves to what runs next, uncounted.
#[inline(always)]
pub fn outcome(code: i64) -> Result<Option<Counter>, DropReason> {
    if code == NOT_MINE {
        Ok(None)
    } else {
        decode(code).map(Some)
    }
}

/// Whether the packet goes to one of the NAT's external addresses: only
/// then is it the hairpin's to judge ([`nat_hairpin_tc`]).
#[inline(always)]
pub fn to_external(data: usize, end: usize) -> bool {
    matches!(ethernet(data, end), Ok(Ether::Ipv4(ip)) if is_external(ip.daddr))
}

/// The hairpin as a global BPF function, shared by `nat_hairpin` and
/// `nat_fast_tc`: verified once, and its frame (with the allocation chain
/// under it) apart from the fast path's, so neither adds to the other's
/// stack chain (512 bytes). Returns [`NOT_MINE`] or [`encode`]'s code.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nat_hairpin_tc(skb: *mut __sk_buff) -> i64 {
    let ctx = TcContext::new(skb);
    match try_hairpin(&ctx) {
        Ok(None) => NOT_MINE,
        Ok(Some(counter)) => encode(Ok(counter)),
        Err(drop) => encode(Err(drop)),
    }
}

/// Everything that is not a hairpin leaves untouched. A packet that is not
/// from an internal address to an external one (nearly every packet, the
/// fast path's) costs two comparisons and is not counted here (`None`):
/// the fast path or egress counts it next. One to an external address the
/// hairpin leaves to the stack is counted, `pass_not_hairpin`.
#[inline(always)]
fn try_hairpin(ctx: &TcContext) -> Result<Option<Counter>, DropReason> {
    const PASS: Result<Option<Counter>, DropReason> = Ok(Some(Counter::NotHairpin));
    let (data, end) = linear_headers(ctx, HEADERS_MAX);
    let Ok(Ether::Ipv4(ip)) = ethernet(data, end) else {
        return Ok(None);
    };
    if !is_external(ip.daddr) || !is_internal(ip.saddr) || !skb_for_host(ctx) {
        return Ok(None);
    }
    let avail = (ctx.len() as usize).saturating_sub(ETH_HLEN);
    let Ok(meta) = check_ipv4(ip.ver_ihl, ip.tot_len, ip.frag, ip.proto, avail) else {
        return PASS;
    };
    let (tos, ttl) = tos_ttl(data, end)?;
    // Fragments, ICMP and TTL 1 are the stack's (which delivers them to
    // the NAT host itself).
    if eligible(meta.fragment, ip.proto, ttl).is_err() {
        return PASS;
    }
    let l4_at = ETH_HLEN + meta.hdr_len;
    let Ok(l4) = l4_fields(data, end, l4_at, ip.proto, meta.l4_len(), true) else {
        return PASS;
    };
    // In a per-CPU slot, not on the stack: the probe walk's callback under
    // an allocation needs all but what egress itself uses.
    let Some(slot) = NAT_HAIRPIN_PLAN.get_ptr_mut(0) else {
        return PASS;
    };
    // SAFETY: this CPU's own slot, used only for the length of this run;
    // no reference to it lives across the calls that write it. Written
    // field by field: a whole Plan built first would take its size of stack.
    unsafe {
        (*slot).key = FlowKey::new(ip.proto, ip.saddr, l4.sport, ip.daddr, l4.dport);
        (*slot).now = now_ns();
        (*slot).l4 = l4;
        (*slot).l4.wscale = ctx.syn_wscale(&l4, l4_at);
        (*slot).src_addr = 0;
        (*slot).dst_addr = 0;
        (*slot).src_port = 0;
        (*slot).dst_port = 0;
    }
    match nat_hairpin_source(slot) {
        GO => {}
        ALLOCATE => {
            // SAFETY: as above.
            let p = unsafe { &mut *slot };
            let src = allocate(&p.key, p.l4.tcp_flags, p.now)?;
            if p.key.proto == PROTO_TCP {
                track::opened_tc(ctx, &p.key, l4_at);
            }
            p.src_addr = src.addr;
            p.src_port = src.port;
        }
        other => return decode(other).map(Some),
    }
    match nat_hairpin_destination(slot) {
        GO => {}
        other => return decode(other).map(Some),
    }
    // SAFETY: as above; read only from here on.
    let plan = unsafe { &*slot };
    let new_src = Endpoint {
        addr: plan.src_addr,
        port: plan.src_port,
    };
    let new_dst = Endpoint {
        addr: plan.dst_addr,
        port: plan.dst_port,
    };
    // Routed as the stack routes before SNAT: from the internal sender.
    let toward = FlowKey::new(ip.proto, ip.saddr, l4.sport, new_dst.addr, new_dst.port);
    // SAFETY: reads a field of the program's own context.
    let ingress = unsafe { (*ctx.skb.skb).ingress_ifindex };
    // SAFETY: as above; this CPU's slot, nothing else holds a reference now.
    let fib = unsafe { &mut (*slot).fib };
    let out = match out_interface(ctx, fib, ingress, &toward, tos) {
        Some(out) if out != ext_ifindex() => out,
        _ => return Err(DropReason::HairpinUnrouted),
    };
    let old_src = Endpoint {
        addr: ip.saddr,
        port: l4.sport,
    };
    let old_dst = Endpoint {
        addr: ip.daddr,
        port: l4.dport,
    };
    rewrite_endpoint(ctx, &l4, ip.proto, Side::Source, l4_at, old_src, new_src)?;
    rewrite_endpoint(
        ctx,
        &l4,
        ip.proto,
        Side::Destination,
        l4_at,
        old_dst,
        new_dst,
    )?;
    // The rewrites may have moved the packet: fresh pointers. The link
    // addresses stay as they are for bpf_redirect_neigh to fill in.
    let (data, end) = (ctx.data(), ctx.data_end());
    let next = NextHop {
        ifindex: out,
        mtu: 0,
        macs: read::<[u8; 12]>(data, end, 0)?,
    };
    hop(data, end, &next, ttl, ip.proto, 0)?;
    if !tc_redirect_neigh(out) {
        return Err(DropReason::HairpinUnrouted);
    }
    Ok(Some(Counter::Hairpin))
}
