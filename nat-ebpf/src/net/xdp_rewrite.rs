//! Endpoint rewriting for the XDP programs (ingress and the fast path), in
//! the net layer, the counterpart of [`super::tc_rewrite`]. XDP sees packet
//! bytes only, not `ip_summed`, so checksums are updated with plain RFC
//! 1624 arithmetic, which is right for frames that carry complete
//! checksums (from a wire).

use nat_common::{
    csum::{apply, apply_udp, endpoint_diff},
    flow::PROTO_UDP,
    headers::{ETH_HLEN, off},
};

use crate::base::{
    outcome::DropReason,
    packet::{Endpoint, L4Fields, Side, ptr_at},
};

/// Rewrites one endpoint of a TCP/UDP packet and its transport checksum.
/// Returns the IPv4 header checksum's difference, which the caller applies
/// alone ([`apply_ip_check`]) or, on the fast path, folded into the TTL
/// decrement's, so the header checksum is written once.
// The parameters of `tc_rewrite::rewrite_endpoint` plus the frame's bounds,
// which TC keeps in its context; always inlined, so a struct would only be
// taken apart again.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn rewrite_endpoint(
    data: usize,
    end: usize,
    l4: &L4Fields,
    proto: u8,
    side: Side,
    l4_at: usize,
    old: Endpoint,
    new: Endpoint,
) -> Result<u32, DropReason> {
    let (addr_off, port_off) = side.offsets(l4_at);
    let diff = endpoint_diff(old.addr, new.addr, old.port, new.port);
    let l4_check = ptr_at::<u16>(data, end, l4.check_off)?;
    let addr = ptr_at::<u32>(data, end, addr_off)?;
    let port = ptr_at::<u16>(data, end, port_off)?;
    // SAFETY: all three pointers were bounds-checked by ptr_at.
    unsafe {
        let c = core::ptr::read_unaligned(l4_check);
        // A zero UDP checksum means "none" and must stay zero.
        let c = if proto == PROTO_UDP {
            apply_udp(c, diff.l4)
        } else {
            apply(c, diff.l4)
        };
        core::ptr::write_unaligned(l4_check, c);
        core::ptr::write_unaligned(addr, new.addr);
        core::ptr::write_unaligned(port, new.port);
    }
    Ok(diff.l3)
}

/// Applies a difference to the IPv4 header checksum.
#[inline(always)]
pub fn apply_ip_check(data: usize, end: usize, diff: u32) -> Result<(), DropReason> {
    let check = ptr_at::<u16>(data, end, ETH_HLEN + off::IP_CHECK)?;
    // SAFETY: bounds-checked by ptr_at.
    unsafe {
        let c = core::ptr::read_unaligned(check);
        core::ptr::write_unaligned(check, apply(c, diff));
    }
    Ok(())
}
