//! ICMP (RFC 5508), in the flows layer: echo identifiers are translated
//! like ports, their sessions allocated as any new flow's
//! (`super::alloc`); errors are matched by the packet they carry and
//! translated inside and out.
//!
//! ICMP has no pseudo-header and is never checksum-offloaded, so both the XDP
//! and the TC program rewrite it through direct packet access with the
//! host-tested arithmetic of `nat_common::csum`. The outer ICMP checksum
//! covers the embedded packet, so every word changed inside it (address,
//! port, embedded IP and transport checksums) goes into one difference.

use aya_ebpf::{bindings::__sk_buff, programs::TcContext};
use nat_common::{
    counters::Counter,
    csum::{add, apply, apply_udp, diff16, diff32},
    flow::{FRAG_OUT, FlowKey, PROTO_ICMP, PROTO_TCP, PROTO_UDP},
    headers::{ETH_HLEN, ICMP_HLEN, check_ipv4, icmp_type, off},
};

use super::alloc::allocate;
use crate::{
    base::{
        maps::{NAT_FWD, NAT_REV},
        outcome::{DropReason, decode, encode},
        packet::{
            Endpoint, ICMP_HEADERS_MAX, Ipv4Fields, ipv4_fields, now_ns, pinned_ptr_at as ptr_at,
            read, touch,
        },
        skb::linear_headers,
    },
    net::frag,
};

/// Which way the packet crosses the NAT.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// From outside: the destination is the external endpoint.
    In,
    /// From inside: the source is the internal endpoint.
    Out,
}

/// The IPv4 packet in a frame: accesses must lie inside the frame (what the
/// verifier checks) and inside the IPv4 total length, which is where the
/// ICMP message and the quote it carries end. Bytes past it are link-layer
/// padding or trailing garbage: neither parsed as a quote nor rewritten,
/// nor folded into the ICMP checksum, which does not cover them.
#[derive(Clone, Copy)]
struct Datagram {
    data: usize,
    end: usize,
    /// Offset from `data` of the first byte after the IPv4 packet.
    ip_end: usize,
}

impl Datagram {
    #[inline(always)]
    fn ptr<T>(&self, at: usize) -> Result<*mut T, DropReason> {
        if at + size_of::<T>() > self.ip_end {
            return Err(DropReason::Malformed);
        }
        ptr_at::<T>(self.data, self.end, at)
    }

    #[inline(always)]
    fn read<T: Copy>(&self, at: usize) -> Result<T, DropReason> {
        let p = self.ptr::<T>(at)?;
        // SAFETY: bounds-checked by ptr; packet fields are not aligned.
        Ok(unsafe { core::ptr::read_unaligned(p) })
    }

    #[inline(always)]
    fn write16(&self, at: usize, v: u16) -> Result<(), DropReason> {
        let p = self.ptr::<u16>(at)?;
        // SAFETY: bounds-checked by ptr.
        unsafe { core::ptr::write_unaligned(p, v) };
        Ok(())
    }

    #[inline(always)]
    fn write32(&self, at: usize, v: u32) -> Result<(), DropReason> {
        let p = self.ptr::<u32>(at)?;
        // SAFETY: bounds-checked by ptr.
        unsafe { core::ptr::write_unaligned(p, v) };
        Ok(())
    }
}

/// Gives an echo request from an internal host its session when it has
/// none yet, before [`translate`] runs: the translator (a global function
/// of nat_egress) then only looks sessions up, which keeps the allocator's
/// stack out of its call chain (the verifier allows 512 bytes per chain).
/// Anything else, and a header too short to read, is left to `translate`.
#[inline(always)]
pub fn open_echo(data: usize, end: usize, ip: &Ipv4Fields, l4: usize) -> Result<(), DropReason> {
    let (Ok(kind), Ok(id)) = (
        read::<u8>(data, end, l4 + off::ICMP_TYPE),
        read::<u16>(data, end, l4 + off::ICMP_ID),
    ) else {
        return Ok(());
    };
    if kind != icmp_type::ECHO_REQUEST {
        return Ok(());
    }
    let key = FlowKey::new(PROTO_ICMP, ip.saddr, id, ip.daddr, 0);
    if NAT_FWD.get_ptr(key).is_none() {
        allocate(&key, 0, now_ns())?;
    }
    Ok(())
}

/// Translates an ICMP packet whose IPv4 header starts at `l3` and whose ICMP
/// header starts at `l4`. `inside`: on egress, whether the source is an
/// internal host (errors from elsewhere, such as the NAT host's own about a
/// translated inbound packet, are translated too when they match, and passed
/// when they do not). Returns the counter of what happened.
#[inline(always)]
pub fn translate(
    data: usize,
    end: usize,
    l3: usize,
    ip: &Ipv4Fields,
    l4: usize,
    dir: Dir,
    inside: bool,
) -> Result<Counter, DropReason> {
    let now = now_ns();
    // check_ipv4 has held the total length to the frame's.
    let d = Datagram {
        data,
        end,
        ip_end: l3 + ip.tot_len as usize,
    };
    let kind = d.read::<u8>(l4 + off::ICMP_TYPE)?;
    let check_at = l4 + off::ICMP_CHECK;
    d.read::<[u8; ICMP_HLEN]>(l4)?;
    if icmp_type::is_error(kind) {
        return match error(d, l3, ip, l4, dir)? {
            Counter::IcmpUnmatched if dir == Dir::Out && !inside => Ok(Counter::NotOursOut),
            Counter::IcmpUnmatched if dir == Dir::Out => Err(DropReason::IcmpUnmatched),
            done => Ok(done),
        };
    }
    if dir == Dir::Out && !inside {
        return Ok(Counter::NotOursOut);
    }
    let id = d.read::<u16>(l4 + off::ICMP_ID)?;
    let (old_addr, to, addr_at) = match (dir, kind) {
        (Dir::Out, icmp_type::ECHO_REQUEST) => {
            let key = FlowKey::new(PROTO_ICMP, ip.saddr, id, ip.daddr, 0);
            let session = match NAT_FWD.get_ptr_mut(key) {
                Some(entry) => {
                    touch(entry, now);
                    // SAFETY: live map value.
                    Endpoint::of(unsafe { &*entry })
                }
                // open_echo made it, just before.
                None => return Err(DropReason::AllocFail),
            };
            (ip.saddr, session, l3 + off::IP_SADDR)
        }
        (Dir::In, icmp_type::ECHO_REPLY) => {
            let key = FlowKey::new(PROTO_ICMP, ip.daddr, id, ip.saddr, 0);
            let Some(entry) = NAT_REV.get_ptr_mut(key) else {
                return Ok(Counter::NotOursIn);
            };
            touch(entry, now);
            // SAFETY: live map value.
            (
                ip.daddr,
                Endpoint::of(unsafe { &*entry }),
                l3 + off::IP_DADDR,
            )
        }
        (Dir::In, _) => return Ok(Counter::NotOursIn),
        // Anything else from inside would leave with an internal source.
        (Dir::Out, _) => return Err(DropReason::Unsupported),
    };
    let ip_check = d.read::<u16>(l3 + off::IP_CHECK)?;
    let icmp_check = d.read::<u16>(check_at)?;
    d.write16(
        l3 + off::IP_CHECK,
        apply(ip_check, diff32(old_addr, to.addr)),
    )?;
    d.write16(check_at, apply(icmp_check, diff16(id, to.port)))?;
    d.write32(addr_at, to.addr)?;
    d.write16(l4 + off::ICMP_ID, to.port)?;
    Ok(if dir == Dir::In {
        Counter::XlateIn
    } else {
        Counter::XlateOut
    })
}

/// ICMP leaving through TC egress from the internal side (`inside`) or
/// from elsewhere (the host, a router inside), translated by
/// [`nat_icmp_egress`].
#[inline(always)]
pub fn translate_out_tc(ctx: &TcContext, inside: bool) -> Result<Counter, DropReason> {
    decode(nat_icmp_egress(ctx.skb.skb, inside as u64))
}

/// ICMP from the internal side (or from the host) as a global BPF function
/// of its own: the verifier checks the translator's many bounds checks once,
/// not once per path of nat_egress that reaches them (on Linux 6.1 the
/// inlined translator made nat_egress "too complex"). It parses the IPv4
/// header again from the context, which is all it takes: a global function
/// gets scalars and the context, never packet pointers. `inside`: the
/// source is internal. Returns [`encode`]'s code.
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn nat_icmp_egress(skb: *mut __sk_buff, inside: u64) -> i64 {
    let ctx = TcContext::new(skb);
    encode(translate_skb_out(&ctx, inside != 0))
}

#[inline(always)]
fn translate_skb_out(ctx: &TcContext, inside: bool) -> Result<Counter, DropReason> {
    let len = ctx.len() as usize;
    let (data, end) = linear_headers(ctx, ICMP_HEADERS_MAX);
    let ip = ipv4_fields(data, end, ETH_HLEN)?;
    let meta = check_ipv4(
        ip.ver_ihl,
        ip.tot_len,
        ip.frag,
        ip.proto,
        len.saturating_sub(ETH_HLEN),
    )?;
    let done = translate(
        data,
        end,
        ETH_HLEN,
        &ip,
        ETH_HLEN + meta.hdr_len,
        Dir::Out,
        inside,
    )?;
    if meta.fragment {
        frag::remember_written(ctx.data(), ctx.data_end(), &ip, FRAG_OUT, true);
    }
    Ok(done)
}

/// An ICMP error: the embedded packet is one the NAT translated the other way
/// (ingress: it left with the external endpoint as source; egress: it came in
/// with the external endpoint as destination, already translated to the
/// internal one), so the session is found from it and the same endpoint is
/// rewritten in the embedded packet and in the outer header.
#[inline(always)]
fn error(
    d: Datagram,
    l3: usize,
    ip: &Ipv4Fields,
    l4: usize,
    dir: Dir,
) -> Result<Counter, DropReason> {
    let inner = l4 + ICMP_HLEN;
    let iip = Ipv4Fields {
        ver_ihl: d.read::<u8>(inner)?,
        id: 0,
        proto: d.read::<u8>(inner + off::IP_PROTO)?,
        tot_len: u16::from_be(d.read::<u16>(inner + off::IP_TOT_LEN)?),
        frag: u16::from_be(d.read::<u16>(inner + off::IP_FRAG)?),
        saddr: d.read::<u32>(inner + off::IP_SADDR)?,
        daddr: d.read::<u32>(inner + off::IP_DADDR)?,
    };
    // The embedded datagram is cut short by design: only its header must be whole.
    let meta = check_ipv4(iip.ver_ihl, iip.tot_len, iip.frag, iip.proto, usize::MAX)?;
    if meta.later_fragment {
        // Quoted bytes after the IP header are payload, not ports.
        return Ok(Counter::IcmpUnmatched);
    }
    let il4 = inner + meta.hdr_len;
    // The quoted packet went the other way: from outside its source is ours.
    let port_field = if dir == Dir::In {
        off::L4_SPORT
    } else {
        off::L4_DPORT
    };
    let (port_at, check_at) = match iip.proto {
        PROTO_TCP => (port_field, off::TCP_CHECK),
        PROTO_UDP => (port_field, off::UDP_CHECK),
        PROTO_ICMP => (off::ICMP_ID, off::ICMP_CHECK),
        _ => return Ok(Counter::IcmpUnmatched),
    };
    let sport = d.read::<u16>(il4 + off::L4_SPORT)?;
    let dport = d.read::<u16>(il4 + off::L4_DPORT)?;
    let id = if iip.proto == PROTO_ICMP {
        // Only an echo request of ours has a mapping by its identifier:
        // any other quoted ICMP message is nobody's, whatever its bytes
        // at the identifier's offset (found by the fuzzer).
        if d.read::<u8>(il4 + off::ICMP_TYPE)? != icmp_type::ECHO_REQUEST {
            return Ok(Counter::IcmpUnmatched);
        }
        d.read::<u16>(il4 + off::ICMP_ID)?
    } else {
        0
    };

    // The session and the endpoint to put back.
    let (key_found, old_addr, old_port) = match (dir, iip.proto) {
        (Dir::In, PROTO_ICMP) => (
            NAT_REV.get_ptr(FlowKey::new(PROTO_ICMP, iip.saddr, id, iip.daddr, 0)),
            iip.saddr,
            id,
        ),
        (Dir::In, proto) => (
            NAT_REV.get_ptr(FlowKey::new(proto, iip.saddr, sport, iip.daddr, dport)),
            iip.saddr,
            sport,
        ),
        (Dir::Out, PROTO_ICMP) => return Ok(Counter::IcmpUnmatched),
        (Dir::Out, proto) => (
            NAT_FWD.get_ptr(FlowKey::new(proto, iip.daddr, dport, iip.saddr, sport)),
            iip.daddr,
            dport,
        ),
    };
    let Some(entry) = key_found else {
        return Ok(Counter::IcmpUnmatched);
    };
    // SAFETY: live map value.
    let to = Endpoint::of(unsafe { &*entry });
    if dir == Dir::In && ip.daddr != old_addr {
        // An error about our flow addressed elsewhere: not ours to rewrite.
        return Ok(Counter::IcmpUnmatched);
    }
    // Outbound, the error may come from the host itself or from a router on
    // the inside: either way it leaves from the session's external address.
    let outer_old = if dir == Dir::In { ip.daddr } else { ip.saddr };

    let addr_diff = diff32(old_addr, to.addr);
    let port_diff = diff16(old_port, to.port);
    let mut icmp_diff = add(addr_diff, port_diff);

    // Embedded IP header: address and its checksum.
    let icheck_old = d.read::<u16>(inner + off::IP_CHECK)?;
    let icheck_new = apply(icheck_old, addr_diff);
    icmp_diff = add(icmp_diff, diff16(icheck_old, icheck_new));
    d.write16(inner + off::IP_CHECK, icheck_new)?;
    let iaddr_at = inner
        + if dir == Dir::In {
            off::IP_SADDR
        } else {
            off::IP_DADDR
        };
    d.write32(iaddr_at, to.addr)?;
    d.write16(il4 + port_at, to.port)?;

    // Embedded transport checksum, when the quote (not the frame) reaches it.
    if let Ok(l4c) = d.ptr::<u16>(il4 + check_at) {
        // SAFETY: bounds-checked by Datagram::ptr.
        let old = unsafe { core::ptr::read_unaligned(l4c) };
        let new = match iip.proto {
            PROTO_TCP => apply(old, add(addr_diff, port_diff)),
            PROTO_UDP => apply_udp(old, add(addr_diff, port_diff)),
            _ => apply(old, port_diff),
        };
        icmp_diff = add(icmp_diff, diff16(old, new));
        // SAFETY: bounds-checked by Datagram::ptr.
        unsafe { core::ptr::write_unaligned(l4c, new) };
    }

    let icmp_check = d.read::<u16>(l4 + off::ICMP_CHECK)?;
    d.write16(l4 + off::ICMP_CHECK, apply(icmp_check, icmp_diff))?;
    let ip_check = d.read::<u16>(l3 + off::IP_CHECK)?;
    d.write16(
        l3 + off::IP_CHECK,
        apply(ip_check, diff32(outer_old, to.addr)),
    )?;
    let outer_at = l3
        + if dir == Dir::In {
            off::IP_DADDR
        } else {
            off::IP_SADDR
        };
    d.write32(outer_at, to.addr)?;
    Ok(if dir == Dir::In {
        Counter::XlateIn
    } else {
        Counter::XlateOut
    })
}
