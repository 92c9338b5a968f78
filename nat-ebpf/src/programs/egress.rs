//! TC egress on the external interface, `nat_egress`, in the programs
//! layer: source NAT. A packet of a session is tracked and translated; a
//! new flow from inside gets its session from the allocator; anything it
//! cannot translate from an internal source is dropped.

use aya_ebpf::{macros::classifier, programs::TcContext};
use nat_common::{
    counters::Counter,
    flow::{FRAG_OUT, FlowKey, PROTO_ICMP, PROTO_TCP, PROTO_UDP},
    headers::{ETH_HLEN, check_ipv4, off, tagged_ipv4_at},
    tcp_state::opens_flow,
};

use crate::{
    base::{
        maps::{NAT_FWD, fast_path, is_external, is_internal},
        outcome::DropReason,
        packet::{Endpoint, Ether, HEADERS_MAX, Side, ethernet, l4_fields, now_ns, read, touch},
        skb::linear_headers,
    },
    flows::{alloc::allocate, icmp},
    net::{frag, reject, tc_rewrite::rewrite_endpoint, verdict::tc_action},
    session::track,
};

#[classifier]
pub fn nat_egress(ctx: TcContext) -> i32 {
    tc_action(&ctx, try_egress(&ctx))
}

/// Packets from internal sources are translated or dropped; nothing from an
/// internal prefix ever leaves with its internal address.
#[inline(always)]
fn try_egress(ctx: &TcContext) -> Result<Counter, DropReason> {
    let len = ctx.len() as usize;
    let (data, end) = linear_headers(ctx, HEADERS_MAX);
    let ip = match ethernet(data, end)? {
        Ether::Ipv4(ip) => ip,
        Ether::Tagged(ethertype) => return tagged(data, end, ethertype),
        Ether::Other => return Ok(Counter::NotIpv4),
    };
    // Anything we cannot translate is dropped only when it comes from inside.
    let refuse = |drop: DropReason| {
        if is_internal(ip.saddr) {
            Err(drop)
        } else {
            Ok(Counter::NotOursOut)
        }
    };
    let meta = match check_ipv4(
        ip.ver_ihl,
        ip.tot_len,
        ip.frag,
        ip.proto,
        len.saturating_sub(ETH_HLEN),
    ) {
        Ok(meta) => meta,
        Err(e) => return refuse(e.into()),
    };
    if meta.later_fragment {
        if !is_internal(ip.saddr) {
            return Ok(Counter::NotOursOut);
        }
        // Arriving before its first fragment it cannot be translated, and
        // it must not leave with its internal source.
        let ext = frag::lookup(&ip, FRAG_OUT).ok_or(DropReason::FragUnknown)?;
        frag::rewrite_addr(data, end, ETH_HLEN, true, ip.saddr, ext)?;
        return Ok(Counter::XlateOut);
    }
    if ip.proto == PROTO_ICMP {
        let inside = is_internal(ip.saddr);
        if inside {
            icmp::open_echo(data, end, &ip, ETH_HLEN + meta.hdr_len)?;
        }
        return icmp::translate_out_tc(ctx, inside);
    }
    if ip.proto != PROTO_TCP && ip.proto != PROTO_UDP {
        return refuse(DropReason::Unsupported);
    }
    // What the TC fast path sends here is translated already. No session
    // has an external source, so nothing else is skipped by this (ICMP,
    // whose quotes may still need translating, was handled above).
    if fast_path() && is_external(ip.saddr) {
        return Ok(Counter::PassExternal);
    }
    let l4_at = ETH_HLEN + meta.hdr_len;
    let l4 = match l4_fields(data, end, l4_at, ip.proto, meta.l4_len(), !meta.fragment) {
        Ok(l4) => l4,
        Err(e) => return refuse(e),
    };

    let key = FlowKey::new(ip.proto, ip.saddr, l4.sport, ip.daddr, l4.dport);
    let now = now_ns();
    let session = match NAT_FWD.get_ptr_mut(key) {
        Some(entry) => {
            let refresh = ip.proto != PROTO_TCP || {
                track::from_inside_tc(ctx, &key, entry, l4.tcp_flags, l4_at)?
            };
            if refresh {
                touch(entry, now);
            }
            // SAFETY: live map value from the lookup above.
            Endpoint::of(unsafe { &*entry })
        }
        None => {
            if !is_internal(ip.saddr) {
                return Ok(Counter::NotOursOut);
            }
            if !opens_flow(ip.proto, l4.tcp_flags) {
                return Err(DropReason::NoSession);
            }
            match allocate(&key, l4.tcp_flags, now) {
                Ok(session) => {
                    if ip.proto == PROTO_TCP {
                        track::opened_tc(ctx, &key, l4_at);
                    }
                    session
                }
                Err(drop) => {
                    if ip.proto == PROTO_TCP {
                        reject::refuse(ctx, meta.hdr_len);
                    }
                    return Err(drop);
                }
            }
        }
    };
    let old = Endpoint {
        addr: ip.saddr,
        port: l4.sport,
    };
    let new = session;
    rewrite_endpoint(ctx, &l4, ip.proto, Side::Source, l4_at, old, new)?;
    if meta.fragment {
        frag::remember(&ip, FRAG_OUT, session.addr);
    }
    Ok(Counter::XlateOut)
}

/// A frame whose tag is in its bytes (802.1Q, 802.1ad, or both: QinQ) is
/// not translated: the NAT is on the untagged external interface, and a
/// tagged frame on it is a VLAN sub-interface's (one with `reorder_hdr
/// off`, or a raw socket's), whose replies belong to that VLAN, not to the
/// interface the NAT translates for. Its inner IPv4 source decides: an
/// internal one must not leave, so the frame is dropped; any other passes.
#[inline(always)]
fn tagged(data: usize, end: usize, ethertype: u16) -> Result<Counter, DropReason> {
    let Some(ip_at) = tagged_ipv4_at(ethertype, |at| {
        read::<u16>(data, end, at).ok().map(u16::from_be)
    }) else {
        return Ok(Counter::NotIpv4);
    };
    match read::<u32>(data, end, ip_at + off::IP_SADDR) {
        Ok(saddr) if is_internal(saddr) => Err(DropReason::TaggedInternal),
        Ok(_) => Ok(Counter::NotOursOut),
        // Cut before its source: no address in it to leak.
        Err(_) => Ok(Counter::NotIpv4),
    }
}
