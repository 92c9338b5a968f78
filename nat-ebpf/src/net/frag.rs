//! Fragments, in the net layer. Fragments after the first carry no
//! transport header: they follow the translation their first fragment
//! got, recorded here for 30 seconds (an LRU map: an entry lost under
//! pressure costs one datagram, never a session).

use nat_common::{
    csum::{apply, diff32},
    flow::{FRAG_TTL_NS, FragEntry, FragKey},
    headers::{ETH_HLEN, off},
};

use crate::base::{
    maps::NAT_FRAGS,
    outcome::DropReason,
    packet::{Ipv4Fields, now_ns, ptr_at, read},
};

#[inline(always)]
fn key(ip: &Ipv4Fields, dir: u8) -> FragKey {
    FragKey {
        saddr: ip.saddr,
        daddr: ip.daddr,
        id: ip.id,
        proto: ip.proto,
        dir,
    }
}

/// Records the address the first fragment of `ip`'s datagram was given.
#[inline(always)]
pub fn remember(ip: &Ipv4Fields, dir: u8, new_addr: u32) {
    let entry = FragEntry {
        addr: new_addr,
        _pad: 0,
        at: now_ns(),
    };
    let _ = NAT_FRAGS.insert(key(ip, dir), entry, 0);
}

/// Records the address a first fragment was just given, read back from
/// the packet (`source`: the source address was rewritten, else the
/// destination), for the callers that let a shared translator rewrite it.
#[inline(always)]
pub fn remember_written(data: usize, end: usize, ip: &Ipv4Fields, dir: u8, source: bool) {
    let at = ETH_HLEN + if source { off::IP_SADDR } else { off::IP_DADDR };
    if let Ok(addr) = read::<u32>(data, end, at) {
        remember(ip, dir, addr);
    }
}

/// The address a later fragment of `ip`'s datagram must get.
#[inline(always)]
pub fn lookup(ip: &Ipv4Fields, dir: u8) -> Option<u32> {
    // SAFETY: read-only copy of a map value.
    let entry = unsafe { NAT_FRAGS.get(key(ip, dir)) }.copied()?;
    (now_ns().wrapping_sub(entry.at) < FRAG_TTL_NS).then_some(entry.addr)
}

/// Rewrites the IPv4 source or destination at `l3` (no transport header to fix).
#[inline(always)]
pub fn rewrite_addr(
    data: usize,
    end: usize,
    l3: usize,
    source: bool,
    old: u32,
    new: u32,
) -> Result<(), DropReason> {
    let check = ptr_at::<u16>(data, end, l3 + off::IP_CHECK)?;
    let addr = ptr_at::<u32>(
        data,
        end,
        l3 + if source { off::IP_SADDR } else { off::IP_DADDR },
    )?;
    // SAFETY: both pointers were bounds-checked by ptr_at.
    unsafe {
        let c = core::ptr::read_unaligned(check);
        core::ptr::write_unaligned(check, apply(c, diff32(old, new)));
        core::ptr::write_unaligned(addr, new);
    }
    Ok(())
}
