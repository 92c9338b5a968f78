//! Ingress on the external interface, `nat_ingress` (XDP) and
//! `nat_ingress_tc`, in the programs layer: translate replies back to the
//! internal host.
//!
//! XDP is the default: it runs before the stack allocates anything. It can
//! only see packet bytes, so it updates checksums with plain RFC 1624
//! arithmetic, which is right for frames from a wire. A packet that arrives
//! with CHECKSUM_PARTIAL (a veth or tap peer on the same host) holds only a
//! pseudo-header seed in its checksum field; for those external interfaces
//! the TC variant uses the skb-aware helpers instead.
//!
//! With the fast path on, a translated reply routed to an internal fast-path
//! interface is redirected there (see `programs::fast`) instead of being
//! handed to the stack.

use aya_ebpf::{
    EbpfContext,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use nat_common::{
    counters::Counter,
    flow::{FRAG_IN, FlowKey, PROTO_ICMP, PROTO_TCP, PROTO_UDP, Session},
    forward::eligible,
    headers::{ETH_HLEN, check_ipv4},
};

use crate::{
    base::{
        maps::{NAT_REV, ext_ifindex, fast_path},
        outcome::DropReason,
        packet::{
            Endpoint, Ether, HEADERS_MAX, ICMP_HEADERS_MAX, Ipv4Fields, L4Fields, Side, ethernet,
            frame_ip_len, l4_fields, now_ns, touch,
        },
        skb::linear_headers,
    },
    flows::{
        icmp::{self, Dir},
        mapping::{self, Miss},
        port_forward,
    },
    net::{
        frag,
        route::{
            frame_for_host, hop, next_hop, skb_for_host, skb_l3_len, tc_redirect, tos_ttl,
            xdp_redirect,
        },
        tc_rewrite::rewrite_endpoint,
        verdict::{tc_action, xdp_verdict},
        xdp_rewrite,
    },
    session::track::{self, SynOptions},
};

/// An inbound packet that belongs to a session.
struct Inbound {
    ip: Ipv4Fields,
    /// The first fragment of a fragmented datagram: its translation is recorded.
    first_fragment: bool,
    l4: L4Fields,
    l4_at: usize,
    /// The internal endpoint to deliver to.
    to: Endpoint,
    /// The reverse entry itself, for the fast path's route cache.
    entry: *mut Session,
    now: u64,
}

enum Class {
    Session(Inbound),
    /// ICMP: translated by [`icmp::translate`] from this transport offset;
    /// the flag marks a first fragment.
    Icmp(Ipv4Fields, usize, bool),
    /// A fragment after the first, and the internal address its datagram goes to.
    LaterFragment(Ipv4Fields, u32),
    Pass(Counter),
}

/// Only packets that match a session are translated; everything else goes to
/// the stack as it came, so the host's own traffic keeps working.
#[inline(always)]
fn classify<C: SynOptions>(
    ctx: &C,
    data: usize,
    end: usize,
    avail: usize,
) -> Result<Class, DropReason> {
    let Ether::Ipv4(ip) = ethernet(data, end)? else {
        return Ok(Class::Pass(Counter::NotIpv4));
    };
    let meta = check_ipv4(ip.ver_ihl, ip.tot_len, ip.frag, ip.proto, avail)?;
    let l4_at = ETH_HLEN + meta.hdr_len;
    if meta.later_fragment {
        return Ok(match frag::lookup(&ip, FRAG_IN) {
            Some(internal) => Class::LaterFragment(ip, internal),
            // Possibly the host's own; passed, and counted.
            None => Class::Pass(Counter::FragUnknown),
        });
    }
    if ip.proto == PROTO_ICMP {
        return Ok(Class::Icmp(ip, l4_at, meta.fragment));
    }
    if ip.proto != PROTO_TCP && ip.proto != PROTO_UDP {
        return Ok(Class::Pass(Counter::NotOursIn));
    }
    let mut l4 = l4_fields(data, end, l4_at, ip.proto, meta.l4_len(), !meta.fragment)?;

    // The reverse key is oriented like egress: (external, remote).
    let key = FlowKey::new(ip.proto, ip.daddr, l4.dport, ip.saddr, l4.sport);
    let entry = match NAT_REV.get_ptr_mut(key) {
        Some(entry) => entry,
        None => match port_forward::open_from_outside(&key, l4.tcp_flags)? {
            Some(entry) => entry,
            // To a port of an endpoint-independent mapping, filtering decides
            // (no mapping holds a forwarded port: the claim skips them).
            None => match mapping::inbound(&key)? {
                Miss::Opened(entry) => entry,
                Miss::Pass(counter) => return Ok(Class::Pass(counter)),
            },
        },
    };
    let now = now_ns();
    // A reset that is not exact neither refreshes, closes nor cools the
    // session: dropped outside the window, passed untouched inside it.
    let refresh = ip.proto != PROTO_TCP || {
        l4.wscale = ctx.syn_wscale(&l4, l4_at);
        track::from_outside(&key, entry, &l4, now)?
    };
    if refresh {
        touch(entry, now);
    }
    // SAFETY: live map value from the lookup above.
    let to = Endpoint::of(unsafe { &*entry });
    Ok(Class::Session(Inbound {
        ip,
        first_fragment: meta.fragment,
        l4,
        l4_at,
        to,
        entry,
        now,
    }))
}

#[xdp]
pub fn nat_ingress(ctx: XdpContext) -> u32 {
    xdp_verdict(&ctx, try_xdp(&ctx))
}

#[inline(always)]
fn try_xdp(ctx: &XdpContext) -> Result<Counter, DropReason> {
    let (data, end) = (ctx.data(), ctx.data_end());
    let pkt = match classify(ctx, data, end, frame_ip_len(data, end))? {
        Class::Session(pkt) => pkt,
        Class::Icmp(ip, l4_at, first_fragment) => {
            let done = icmp::translate(data, end, ETH_HLEN, &ip, l4_at, Dir::In, true)?;
            if first_fragment && done == Counter::XlateIn {
                frag::remember_written(ctx.data(), ctx.data_end(), &ip, FRAG_IN, false);
            }
            return Ok(done);
        }
        Class::LaterFragment(ip, internal) => {
            frag::rewrite_addr(data, end, ETH_HLEN, false, ip.daddr, internal)?;
            return Ok(Counter::XlateIn);
        }
        Class::Pass(counter) => return Ok(counter),
    };
    let old = Endpoint {
        addr: pkt.ip.daddr,
        port: pkt.l4.dport,
    };
    let l3_diff = xdp_rewrite::rewrite_endpoint(
        data,
        end,
        &pkt.l4,
        pkt.ip.proto,
        Side::Destination,
        pkt.l4_at,
        old,
        pkt.to,
    )?;
    xdp_rewrite::apply_ip_check(data, end, l3_diff)?;
    if pkt.first_fragment {
        frag::remember(&pkt.ip, FRAG_IN, pkt.to.addr);
        return Ok(Counter::XlateIn);
    }
    let ingress = ctx.ingress_ifindex() as u32;
    if fast_path()
        && frame_for_host(data, end, ingress)
        && forward_in(ctx, ingress, data, end, &pkt, pkt.ip.tot_len, false)?
    {
        return Ok(Counter::FastIn);
    }
    Ok(Counter::XlateIn)
}

/// The fast path for a translated reply: straight to the internal interface
/// it is routed to, when that interface runs the fast path too. Otherwise
/// the stack forwards it, as without the fast path. `tc` picks the hook;
/// `l3_len` is what must fit the route's MTU.
#[inline(always)]
fn forward_in<C: EbpfContext>(
    ctx: &C,
    ingress: u32,
    data: usize,
    end: usize,
    pkt: &Inbound,
    l3_len: u16,
    tc: bool,
) -> Result<bool, DropReason> {
    let (tos, ttl) = tos_ttl(data, end)?;
    if eligible(false, pkt.ip.proto, ttl).is_err() {
        return Ok(false);
    }
    // Routed as it will leave: toward the internal endpoint.
    let flow = FlowKey::new(
        pkt.ip.proto,
        pkt.ip.saddr,
        pkt.l4.sport,
        pkt.to.addr,
        pkt.to.port,
    );
    let Some(next) = next_hop(ctx, pkt.entry, ingress, &flow, tos, l3_len, pkt.now) else {
        return Ok(false);
    };
    if next.ifindex == ext_ifindex() {
        return Ok(false);
    }
    let redirected = if tc {
        tc_redirect(next.ifindex)
    } else {
        xdp_redirect(next.ifindex)
    };
    if !redirected {
        return Ok(false);
    }
    hop(data, end, &next, ttl, pkt.ip.proto, 0)?;
    Ok(true)
}

#[classifier]
pub fn nat_ingress_tc(ctx: TcContext) -> i32 {
    tc_action(&ctx, try_tc(&ctx))
}

#[inline(always)]
fn try_tc(ctx: &TcContext) -> Result<Counter, DropReason> {
    let (data, end) = linear_headers(ctx, HEADERS_MAX);
    let avail = (ctx.len() as usize).saturating_sub(ETH_HLEN);
    let pkt = match classify(ctx, data, end, avail)? {
        Class::Session(pkt) => pkt,
        Class::Icmp(ip, l4_at, first_fragment) => {
            let (data, end) = linear_headers(ctx, ICMP_HEADERS_MAX);
            let done = icmp::translate(data, end, ETH_HLEN, &ip, l4_at, Dir::In, true)?;
            if first_fragment && done == Counter::XlateIn {
                frag::remember_written(ctx.data(), ctx.data_end(), &ip, FRAG_IN, false);
            }
            return Ok(done);
        }
        Class::LaterFragment(ip, internal) => {
            frag::rewrite_addr(data, end, ETH_HLEN, false, ip.daddr, internal)?;
            return Ok(Counter::XlateIn);
        }
        Class::Pass(counter) => return Ok(counter),
    };
    let old = Endpoint {
        addr: pkt.ip.daddr,
        port: pkt.l4.dport,
    };
    let new = pkt.to;
    rewrite_endpoint(
        ctx,
        &pkt.l4,
        pkt.ip.proto,
        Side::Destination,
        pkt.l4_at,
        old,
        new,
    )?;
    if pkt.first_fragment {
        frag::remember(&pkt.ip, FRAG_IN, pkt.to.addr);
        return Ok(Counter::XlateIn);
    }
    if fast_path() && skb_for_host(ctx) {
        // The rewrite may have moved the packet: fresh pointers.
        let (data, end) = (ctx.data(), ctx.data_end());
        // SAFETY: reads a field of the program's own context.
        let ingress = unsafe { (*ctx.skb.skb).ingress_ifindex };
        let ip_hdr_len = pkt.l4_at - ETH_HLEN;
        let l3_len = skb_l3_len(ctx, ip_hdr_len, pkt.l4.hdr_len, pkt.ip.tot_len);
        if forward_in(ctx, ingress, data, end, &pkt, l3_len, true)? {
            return Ok(Counter::FastIn);
        }
    }
    Ok(Counter::XlateIn)
}
