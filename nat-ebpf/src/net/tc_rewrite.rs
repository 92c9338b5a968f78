//! Endpoint rewriting for the TC programs, in the net layer, through the
//! kernel's checksum helpers.
//!
//! The transport checksum goes through the kernel's helper, which sees the
//! skb and so also gets CHECKSUM_PARTIAL packets right (from the local
//! stack, veth peers or GSO): for those only the pseudo-header part changes.
//! The address difference is computed once and applied to TCP/UDP as a
//! pseudo-header change and to the IPv4 header checksum; the port change
//! goes to TCP/UDP only.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use nat_common::{
    csum::{apply, diff32},
    flow::PROTO_UDP,
    headers::{ETH_HLEN, off},
};

use crate::base::{
    outcome::DropReason,
    packet::{Endpoint, L4Fields, Side, pinned_ptr_at, ptr_at},
};

#[inline(always)]
pub fn rewrite_endpoint(
    ctx: &TcContext,
    l4: &L4Fields,
    proto: u8,
    side: Side,
    l4_at: usize,
    old: Endpoint,
    new: Endpoint,
) -> Result<(), DropReason> {
    let (addr_off, port_off) = side.offsets(l4_at);
    let addr_diff = diff32(old.addr, new.addr);
    // A zero UDP checksum means "none" and must stay zero.
    let zero_ok = if proto == PROTO_UDP {
        BPF_F_MARK_MANGLED_0 as u64
    } else {
        0
    };
    // Only the transport checksum needs the skb-aware helper.
    ctx.l4_csum_replace(
        l4.check_off,
        0,
        addr_diff as u64,
        BPF_F_PSEUDO_HDR as u64 | zero_ok,
    )
    .map_err(|_| DropReason::RewriteError)?;
    ctx.l4_csum_replace(l4.check_off, old.port as u64, new.port as u64, 2 | zero_ok)
        .map_err(|_| DropReason::RewriteError)?;
    // The IPv4 header checksum is never offloaded, and an address changed
    // together with its checksum leaves the packet's sum as it was (so a
    // CHECKSUM_COMPLETE value stays right): plain writes, no more helpers.
    let (data, end) = (ctx.data(), ctx.data_end());
    let check = ptr_at::<u16>(data, end, ETH_HLEN + off::IP_CHECK)?;
    let addr = ptr_at::<u32>(data, end, addr_off)?;
    let port = pinned_ptr_at::<u16>(data, end, port_off)?;
    // SAFETY: all three pointers were bounds-checked after the last helper call.
    unsafe {
        let c = core::ptr::read_unaligned(check);
        core::ptr::write_unaligned(check, apply(c, addr_diff));
        core::ptr::write_unaligned(addr, new.addr);
        core::ptr::write_unaligned(port, new.port);
    }
    Ok(())
}
