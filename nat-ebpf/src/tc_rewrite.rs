//! Endpoint rewriting for the TC programs, through the kernel's checksum helpers.
//!
//! The helpers see the skb, so they also get CHECKSUM_PARTIAL packets right
//! (from the local stack, veth peers or GSO): for those only the
//! pseudo-header part of the transport checksum changes. The address
//! difference is computed once and applied to the IPv4 header and, as a
//! pseudo-header change, to TCP/UDP; the port change goes to TCP/UDP only.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use nat_common::{
    csum::diff32,
    flow::PROTO_UDP,
    headers::{ETH_HLEN, off},
};

use crate::packet::{Drop, L4Fields};

/// Which end of the packet is rewritten.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

/// An address and port in network byte order.
#[derive(Clone, Copy)]
pub struct Endpoint {
    pub addr: u32,
    pub port: u16,
}

#[inline(always)]
pub fn rewrite_endpoint(
    ctx: &TcContext,
    l4: &L4Fields,
    proto: u8,
    side: Side,
    l4_at: usize,
    old: Endpoint,
    new: Endpoint,
) -> Result<(), Drop> {
    let (addr_off, port_off) = match side {
        Side::Source => (ETH_HLEN + off::IP_SADDR, l4_at + off::L4_SPORT),
        Side::Destination => (ETH_HLEN + off::IP_DADDR, l4_at + off::L4_DPORT),
    };
    let addr_diff = diff32(old.addr, new.addr) as u64;
    // A zero UDP checksum means "none" and must stay zero.
    let zero_ok = if proto == PROTO_UDP {
        BPF_F_MARK_MANGLED_0 as u64
    } else {
        0
    };
    ctx.l3_csum_replace(ETH_HLEN + off::IP_CHECK, 0, addr_diff, 0)
        .map_err(|_| Drop::Rewrite)?;
    ctx.l4_csum_replace(
        l4.check_off,
        0,
        addr_diff,
        BPF_F_PSEUDO_HDR as u64 | zero_ok,
    )
    .map_err(|_| Drop::Rewrite)?;
    ctx.l4_csum_replace(l4.check_off, old.port as u64, new.port as u64, 2 | zero_ok)
        .map_err(|_| Drop::Rewrite)?;
    ctx.store(addr_off, &new.addr, 0)
        .map_err(|_| Drop::Rewrite)?;
    ctx.store(port_off, &new.port, 0)
        .map_err(|_| Drop::Rewrite)?;
    Ok(())
}
