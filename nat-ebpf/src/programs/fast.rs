//! The fast path, `nat_fast` (XDP) and `nat_fast_tc`, in the programs
//! layer: packets of existing sessions cross between the internal
//! interfaces and the external one without entering the stack. Whatever it
//! does not take (new flows, fragments, ICMP, TTL 1, unresolved neighbours,
//! packets over the MTU) goes to the stack unchanged, where TC egress
//! handles it as it would without the fast path; the fast path never
//! drops.
//!
//! It runs in the hook `--ingress` picks. In XDP it rewrites with plain
//! RFC 1624 arithmetic, so the internal interfaces must deliver complete
//! checksums (a wire does; a veth peer does only with its transmit checksum
//! offload off). In TC it uses the skb-aware helpers, so partial checksums
//! stay right, and the packet goes straight to the external interface's
//! egress. Each session direction caches its route lookup for a second.

use aya_ebpf::{
    bindings::__sk_buff,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use nat_common::{
    counters::Counter,
    flow::{FlowKey, PROTO_TCP, Session},
    forward::eligible,
    headers::{ETH_HLEN, check_ipv4},
};

use crate::{
    base::{
        maps::{NAT_FWD, ext_ifindex},
        outcome::{DropReason, decode, encode},
        packet::{
            Endpoint, Ether, HEADERS_MAX, Ipv4Fields, L4Fields, Side, ethernet, frame_ip_len,
            l4_fields, now_ns, touch,
        },
        skb::linear_headers,
    },
    flows::hairpin,
    net::{
        route::{
            frame_for_host, hop, next_hop, skb_for_host, skb_l3_len, tc_redirect_egress, tos_ttl,
            xdp_redirect,
        },
        tc_rewrite::rewrite_endpoint,
        verdict::{tc_action, xdp_verdict},
        xdp_rewrite,
    },
    session::track::{self, SynOptions},
};

/// A packet on an internal interface that belongs to a session and may take the fast path.
struct Outbound {
    ip: Ipv4Fields,
    l4: L4Fields,
    l4_at: usize,
    tos: u8,
    ttl: u8,
    /// The forward key; also what the route lookup is asked about, with the
    /// internal source, as the stack routes before SNAT.
    key: FlowKey,
    entry: *mut Session,
}

/// `None` leaves the packet to the stack untouched (malformed ones too:
/// TC egress counts and drops them there).
#[inline(always)]
fn outbound<C: SynOptions>(ctx: &C, data: usize, end: usize, avail: usize) -> Option<Outbound> {
    let Ok(Ether::Ipv4(ip)) = ethernet(data, end) else {
        return None;
    };
    let meta = check_ipv4(ip.ver_ihl, ip.tot_len, ip.frag, ip.proto, avail).ok()?;
    let (tos, ttl) = tos_ttl(data, end).ok()?;
    eligible(meta.fragment, ip.proto, ttl).ok()?;
    let l4_at = ETH_HLEN + meta.hdr_len;
    let mut l4 = l4_fields(data, end, l4_at, ip.proto, meta.l4_len(), true).ok()?;
    let key = FlowKey::new(ip.proto, ip.saddr, l4.sport, ip.daddr, l4.dport);
    let entry = NAT_FWD.get_ptr_mut(key)?;
    l4.wscale = ctx.syn_wscale(&l4, l4_at);
    Some(Outbound {
        ip,
        l4,
        l4_at,
        tos,
        ttl,
        key,
        entry,
    })
}

/// Tracks the session's TCP state and touches it, as `nat_egress` does;
/// returns the external endpoint, or the drop of a reset outside the
/// remote's window.
#[inline(always)]
fn track_session(c: &Outbound, now: u64) -> Result<Endpoint, DropReason> {
    let refresh = c.ip.proto != PROTO_TCP || track::from_inside(&c.key, c.entry, &c.l4, now)?;
    if refresh {
        touch(c.entry, now);
    }
    // SAFETY: live map value from the lookup in `outbound`.
    Ok(Endpoint::of(unsafe { &*c.entry }))
}

#[xdp]
pub fn nat_fast(ctx: XdpContext) -> u32 {
    xdp_verdict(&ctx, try_fast_xdp(&ctx))
}

/// Errors come only after the rewrite began: such a packet is dropped.
#[inline(always)]
fn try_fast_xdp(ctx: &XdpContext) -> Result<Counter, DropReason> {
    let (data, end) = (ctx.data(), ctx.data_end());
    let Some(c) = outbound(ctx, data, end, frame_ip_len(data, end)) else {
        return Ok(Counter::FastMiss);
    };
    let ingress = ctx.ingress_ifindex() as u32;
    if !frame_for_host(data, end, ingress) {
        return Ok(Counter::FastMiss);
    }
    let now = now_ns();
    let Some(next) = next_hop(ctx, c.entry, ingress, &c.key, c.tos, c.ip.tot_len, now) else {
        return Ok(Counter::FastRoute);
    };
    // Only flows leaving through the external interface are ours; the
    // redirect is set up before any rewrite, so a refusal leaves the packet
    // to the stack as it came.
    if next.ifindex != ext_ifindex() || !xdp_redirect(next.ifindex) {
        return Ok(Counter::FastRoute);
    }
    let to = track_session(&c, now)?;
    let old = Endpoint {
        addr: c.ip.saddr,
        port: c.l4.sport,
    };
    let l3_diff = xdp_rewrite::rewrite_endpoint(
        data,
        end,
        &c.l4,
        c.ip.proto,
        Side::Source,
        c.l4_at,
        old,
        to,
    )?;
    hop(data, end, &next, c.ttl, c.ip.proto, l3_diff)?;
    Ok(Counter::FastOut)
}

/// The internal interfaces' TC program: hairpinning for packets to the
/// NAT's own external addresses, the fast path for the rest. One program
/// rather than two on the hook: one run per packet, and one filter where
/// the kernel has no TCX links (a second netlink filter of the NAT's would
/// replace the first).
#[classifier]
pub fn nat_fast_tc(ctx: TcContext) -> i32 {
    tc_action(&ctx, try_internal_tc(&ctx))
}

#[inline(always)]
fn try_internal_tc(ctx: &TcContext) -> Result<Counter, DropReason> {
    let (data, end) = linear_headers(ctx, HEADERS_MAX);
    if hairpin::to_external(data, end)
        && let Some(done) = hairpin::outcome(hairpin::nat_hairpin_tc(ctx.skb.skb)).transpose()
    {
        return done;
    }
    decode(nat_fast_tc_path(ctx.skb.skb))
}

/// [`try_fast_tc`] as a global BPF function: its frame (the route lookup's
/// parameters among it) and the hairpin's are side by side under
/// `nat_fast_tc`, not one on the other (512 bytes for a whole call chain).
/// Returns [`encode`]'s code.
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn nat_fast_tc_path(skb: *mut __sk_buff) -> i64 {
    encode(try_fast_tc(&TcContext::new(skb)))
}

/// Translates with the skb-aware helpers of `nat_egress`, so partial
/// checksums stay right, and sends the packet to the external interface's
/// egress, where `nat_egress` passes it on at its first check.
#[inline(always)]
fn try_fast_tc(ctx: &TcContext) -> Result<Counter, DropReason> {
    let (data, end) = linear_headers(ctx, HEADERS_MAX);
    let len = ctx.len() as usize;
    let Some(c) = outbound(ctx, data, end, len.saturating_sub(ETH_HLEN)) else {
        return Ok(Counter::FastMiss);
    };
    if !skb_for_host(ctx) {
        return Ok(Counter::FastMiss);
    }
    let now = now_ns();
    // SAFETY: reads a field of the program's own context.
    let ingress = unsafe { (*ctx.skb.skb).ingress_ifindex };
    let l3_len = skb_l3_len(ctx, c.l4_at - ETH_HLEN, c.l4.hdr_len, c.ip.tot_len);
    let Some(next) = next_hop(ctx, c.entry, ingress, &c.key, c.tos, l3_len, now) else {
        return Ok(Counter::FastRoute);
    };
    // The external interface is always a fast-path device.
    if next.ifindex != ext_ifindex() || !tc_redirect_egress(next.ifindex) {
        return Ok(Counter::FastRoute);
    }
    let new = track_session(&c, now)?;
    let old = Endpoint {
        addr: c.ip.saddr,
        port: c.l4.sport,
    };
    rewrite_endpoint(ctx, &c.l4, c.ip.proto, Side::Source, c.l4_at, old, new)?;
    let (data, end) = (ctx.data(), ctx.data_end());
    hop(data, end, &next, c.ttl, c.ip.proto, 0)?;
    Ok(Counter::FastOut)
}
