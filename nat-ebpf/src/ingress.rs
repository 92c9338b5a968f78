//! XDP ingress on the external interface: translate replies back to the internal host.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use nat_common::{
    counters::Counter,
    csum::{apply, apply_udp, endpoint_diff},
    flow::{FlowKey, PROTO_TCP, PROTO_UDP},
    headers::{ETH_HLEN, ETH_P_IP, check_ipv4, off},
};

use crate::{
    maps::{NAT_REV, count},
    packet::{Drop, ipv4_fields, l4_fields, now_ns, ptr_at, read, touch},
};

#[xdp]
pub fn nat_ingress(ctx: XdpContext) -> u32 {
    match try_ingress(&ctx) {
        Ok(counter) => {
            count(counter);
            xdp_action::XDP_PASS
        }
        Err(drop) => {
            count(drop.counter());
            xdp_action::XDP_DROP
        }
    }
}

/// Only packets that match a reverse entry are touched; everything else goes
/// to the stack as it came, so the host's own traffic keeps working.
#[inline(always)]
fn try_ingress(ctx: &XdpContext) -> Result<Counter, Drop> {
    let (data, end) = (ctx.data(), ctx.data_end());
    match read::<u16>(data, end, 12) {
        Ok(t) if u16::from_be(t) == ETH_P_IP => {}
        _ => return Ok(Counter::NotIpv4),
    }
    let ip = ipv4_fields(data, end, ETH_HLEN)?;
    let meta = check_ipv4(ip.ver_ihl, ip.tot_len, ip.frag, ip.proto, end - data - ETH_HLEN)?;
    if meta.fragment || (ip.proto != PROTO_TCP && ip.proto != PROTO_UDP) {
        return Ok(Counter::NotOursIn);
    }
    let l4_at = ETH_HLEN + meta.hdr_len;
    let l4 = l4_fields(data, end, l4_at, ip.proto, meta.l4_len())?;

    // The reverse key is oriented like egress: (external, remote).
    let key = FlowKey::new(ip.proto, ip.daddr, l4.dport, ip.saddr, l4.sport);
    let Some(entry) = NAT_REV.get_ptr_mut(&key) else {
        return Ok(Counter::NotOursIn);
    };
    touch(entry, l4.tcp_flags, now_ns());
    // SAFETY: live map value from the lookup above.
    let to = unsafe { *entry };

    let diff = endpoint_diff(ip.daddr, to.addr, l4.dport, to.port);
    let ip_check = ptr_at::<u16>(data, end, ETH_HLEN + off::IP_CHECK)?;
    let l4_check = ptr_at::<u16>(data, end, l4.check_off)?;
    let daddr = ptr_at::<u32>(data, end, ETH_HLEN + off::IP_DADDR)?;
    let dport = ptr_at::<u16>(data, end, l4_at + off::L4_DPORT)?;
    // SAFETY: all four pointers were bounds-checked by ptr_at.
    unsafe {
        let c = core::ptr::read_unaligned(ip_check);
        core::ptr::write_unaligned(ip_check, apply(c, diff.l3));
        let c = core::ptr::read_unaligned(l4_check);
        let c = if ip.proto == PROTO_UDP { apply_udp(c, diff.l4) } else { apply(c, diff.l4) };
        core::ptr::write_unaligned(l4_check, c);
        core::ptr::write_unaligned(daddr, to.addr);
        core::ptr::write_unaligned(dport, to.port);
    }
    Ok(Counter::XlateIn)
}
