//! Routing, in the net layer: the kernel's route and neighbour lookup
//! (`bpf_fib_lookup`), each session direction's cache of it, what the
//! stack would do to a forwarded frame (new link addresses, the TTL) and
//! the redirects. The fast path (`programs::fast`), ingress's forwarding
//! of replies (`programs::ingress`) and the hairpin (`flows::hairpin`)
//! route with these.

use aya_ebpf::{
    EbpfContext,
    bindings::{TC_ACT_REDIRECT, bpf_fib_lookup as FibParams},
    helpers::generated::{bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use nat_common::{
    csum::{add, apply},
    flow::{FlowKey, HopCache, NextHop, Session},
    forward::{AF_INET, ttl_decrement_diff},
    headers::{ETH_HLEN, off},
    seen_word::SharedWord,
};

use crate::base::{
    maps::{NAT_FAST_DEVS, NAT_IF_MACS},
    outcome::DropReason,
    packet::{ptr_at, read},
    shared::MapWord,
};

/// `skb->pkt_type` of a frame addressed to this host.
const PACKET_HOST: u32 = 0;

/// Offsets of the IPv4 fields only forwarding touches.
const IP_TOS: usize = 1;
const IP_TTL: usize = 8;

/// The kernel's route and neighbour lookup for a packet that arrived on
/// `ifindex`. `None` when only the stack can forward it: no neighbour entry
/// yet (the stack resolves it), larger than the next hop's MTU (the stack
/// fragments or answers), forwarding disabled, local, or unreachable.
/// `tot_len` 0 lets TC check the MTU against the skb, GSO included.
#[inline(always)]
fn lookup<C: EbpfContext>(
    ctx: &C,
    ifindex: u32,
    flow: &FlowKey,
    tos: u8,
    tot_len: u16,
) -> Option<NextHop> {
    // SAFETY: a plain C struct; all-zero is its neutral value.
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.l4_protocol = flow.proto;
    p.sport = flow.sport;
    p.dport = flow.dport;
    p.__bindgen_anon_1.tot_len = tot_len;
    p.ifindex = ifindex;
    p.__bindgen_anon_2.tos = tos;
    p.__bindgen_anon_3.ipv4_src = flow.saddr;
    p.__bindgen_anon_4.ipv4_dst = flow.daddr;
    // SAFETY: `p` is a valid bpf_fib_lookup of the size passed.
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), &mut p, size_of::<FibParams>() as i32, 0) };
    if rc != 0 {
        return None;
    }
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&p.dmac);
    macs[6..].copy_from_slice(&p.smac);
    Some(NextHop {
        ifindex: p.ifindex,
        // SAFETY: on success the kernel leaves the MTU in this union member.
        mtu: unsafe { p.__bindgen_anon_1.mtu_result },
        macs,
    })
}

/// Where a packet of `entry`'s direction goes: the session's cached lookup
/// while it is fresh and the packet fits its MTU, else a new lookup, which
/// refreshes the cache (one write per flow and [`ROUTE_TTL_NS`]). `l3_len`
/// is what must fit the route's MTU: the IP packet, or for a GSO skb one of
/// its segments, as the stack's own forwarding checks it.
#[inline(always)]
pub fn next_hop<C: EbpfContext>(
    ctx: &C,
    entry: *mut Session,
    ifindex: u32,
    flow: &FlowKey,
    tos: u8,
    l3_len: u16,
    now: u64,
) -> Option<NextHop> {
    let cache = cache_words(entry);
    let cached = HopCache::fresh(
        [
            cache[0].load(),
            cache[1].load(),
            cache[2].load(),
            cache[3].load(),
        ],
        now,
    );
    if let Some(hop) = cached
        && l3_len <= hop.mtu
    {
        return Some(hop);
    }
    // A non-zero length makes the kernel check it against the route's MTU.
    let hop = lookup(ctx, ifindex, flow, tos, l3_len)?;
    if cached.is_none() {
        store(cache, &hop, now);
    }
    Some(hop)
}

/// The four words of a session direction's route cache.
#[inline(always)]
fn cache_words(entry: *mut Session) -> [MapWord; 4] {
    // SAFETY: a live map value from a lookup in this program run; the
    // words are 8-byte aligned inside it.
    let w = unsafe { core::ptr::addr_of_mut!((*entry).hop.words) } as *mut u64;
    // SAFETY: inside the same array of four.
    unsafe {
        [
            MapWord(w),
            MapWord(w.add(1)),
            MapWord(w.add(2)),
            MapWord(w.add(3)),
        ]
    }
}

/// Writes a fresh lookup into the session's cache as a write tagged
/// [`HopCache::next_tag`] of the one it replaces: the tag is claimed on
/// word 0 by compare-and-exchange, so only one CPU writes with it, and a
/// CPU that loses the claim keeps its lookup for its own packet only.
/// Readers take the four words only when their tags agree (see
/// [`HopCache`]), so no ordering between the stores is needed.
#[inline(always)]
fn store(cache: [MapWord; 4], hop: &NextHop, now: u64) {
    let first = cache[0].load();
    let tag = HopCache::next_tag(HopCache::tag(first));
    if cache[0]
        .compare_exchange(first, HopCache::stamp_word(tag, now))
        .is_err()
    {
        return;
    }
    let [a, b, c] = HopCache::route_words(tag, hop);
    cache[1].store(a);
    cache[2].store(b);
    cache[3].store(c);
}

/// The length a TC packet must fit into: one segment's for a GSO skb (IP and
/// transport headers plus the segment size), else the IP packet's.
#[inline(always)]
pub fn skb_l3_len(ctx: &TcContext, ip_hdr_len: usize, l4_hdr_len: u16, tot_len: u16) -> u16 {
    // SAFETY: reads a field of the program's own context.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    if gso_size == 0 {
        return tot_len;
    }
    let seg = ip_hdr_len as u32 + l4_hdr_len as u32 + gso_size;
    seg.min(u16::MAX as u32) as u16
}

/// Whether the stack would take this TC packet as addressed to the host
/// (not to another host's MAC, as a promiscuous interface also sees), and
/// it carries no VLAN tag in its metadata (which a redirect would keep).
#[inline(always)]
pub fn skb_for_host(ctx: &TcContext) -> bool {
    // SAFETY: reads fields of the program's own context.
    unsafe { (*ctx.skb.skb).pkt_type == PACKET_HOST && (*ctx.skb.skb).vlan_present == 0 }
}

/// Whether an XDP frame is addressed to the MAC of the interface it came in
/// on, which is what the stack would accept for forwarding.
#[inline(always)]
pub fn frame_for_host(data: usize, end: usize, ifindex: u32) -> bool {
    let Ok(dst) = read::<[u8; 6]>(data, end, 0) else {
        return false;
    };
    // SAFETY: read-only lookup.
    match unsafe { NAT_IF_MACS.get(ifindex) } {
        Some(mac) => mac[..6] == dst,
        None => false,
    }
}

/// Does what the stack would to a forwarded frame: new link addresses and
/// the TTL decrement, whose checksum difference joins `l3_diff` (the
/// translation's) in one header-checksum update. The caller checked TTL >= 2.
#[inline(always)]
pub fn hop(
    data: usize,
    end: usize,
    next: &NextHop,
    ttl: u8,
    proto: u8,
    l3_diff: u32,
) -> Result<(), DropReason> {
    let eth = ptr_at::<[u8; 12]>(data, end, 0)?;
    let ttl_at = ptr_at::<u8>(data, end, ETH_HLEN + IP_TTL)?;
    let check = ptr_at::<u16>(data, end, ETH_HLEN + off::IP_CHECK)?;
    // SAFETY: all three pointers were bounds-checked by ptr_at.
    unsafe {
        core::ptr::write_unaligned(eth, next.macs);
        core::ptr::write_unaligned(ttl_at, ttl - 1);
        let c = core::ptr::read_unaligned(check);
        let diff = add(l3_diff, ttl_decrement_diff(ttl, proto));
        core::ptr::write_unaligned(check, apply(c, diff));
    }
    Ok(())
}

/// Sets up the XDP redirect to `ifindex` if the fast path may send there
/// (an interface in NAT_FAST_DEVS); the program returns XDP_REDIRECT only then.
#[inline(always)]
pub fn xdp_redirect(ifindex: u32) -> bool {
    NAT_FAST_DEVS.redirect(ifindex, 0).is_ok()
}

/// Sets up the TC redirect to the egress of `ifindex` if it is a fast-path
/// interface; the program returns TC_ACT_REDIRECT only then.
#[inline(always)]
pub fn tc_redirect(ifindex: u32) -> bool {
    NAT_FAST_DEVS.get(ifindex).is_some() && tc_redirect_egress(ifindex)
}

/// Sets up the TC redirect to the egress of `ifindex`, known to be ours.
#[inline(always)]
pub fn tc_redirect_egress(ifindex: u32) -> bool {
    // SAFETY: plain helper call; flags 0 sends to the device's egress.
    unsafe { bpf_redirect(ifindex, 0) == TC_ACT_REDIRECT as i64 }
}

/// The TOS and TTL bytes of the IPv4 header.
#[inline(always)]
pub fn tos_ttl(data: usize, end: usize) -> Result<(u8, u8), DropReason> {
    Ok((
        read::<u8>(data, end, ETH_HLEN + IP_TOS)?,
        read::<u8>(data, end, ETH_HLEN + IP_TTL)?,
    ))
}

/// `bpf_fib_lookup`'s answer when the route is known and the neighbour
/// not yet: the interface is set, and `bpf_redirect_neigh` resolves it.
const FIB_NO_NEIGH: i64 = 7;

/// The interface the stack would route `flow` out of, arriving on
/// `ifindex`: known also while its neighbour is not resolved yet (the
/// hairpin redirects with [`tc_redirect_neigh`], which resolves it). `p`
/// holds the lookup's parameters where the caller has room for them.
#[inline(always)]
pub fn out_interface(
    ctx: &TcContext,
    p: &mut FibParams,
    ifindex: u32,
    flow: &FlowKey,
    tos: u8,
) -> Option<u32> {
    // SAFETY: a plain C struct; all-zero is its neutral value.
    *p = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.l4_protocol = flow.proto;
    p.sport = flow.sport;
    p.dport = flow.dport;
    p.ifindex = ifindex;
    p.__bindgen_anon_2.tos = tos;
    p.__bindgen_anon_3.ipv4_src = flow.saddr;
    p.__bindgen_anon_4.ipv4_dst = flow.daddr;
    // SAFETY: `p` is a valid bpf_fib_lookup of the size passed.
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), p, size_of::<FibParams>() as i32, 0) };
    if rc == 0 || rc == FIB_NO_NEIGH {
        Some(p.ifindex)
    } else {
        None
    }
}

/// Sets up the TC redirect to `ifindex` with the kernel resolving the next
/// hop of the (rewritten) packet and its neighbour; the program returns
/// TC_ACT_REDIRECT only then.
#[inline(always)]
pub fn tc_redirect_neigh(ifindex: u32) -> bool {
    // SAFETY: plain helper call; no parameters: the kernel looks up the
    // next hop of the packet and resolves its neighbour.
    unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) == TC_ACT_REDIRECT as i64 }
}
