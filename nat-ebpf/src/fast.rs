//! The fast path: packets of existing sessions cross between the internal
//! interfaces and the external one without entering the stack. Whatever it
//! does not take (new flows, fragments, ICMP, TTL 1, unresolved neighbours,
//! packets over the MTU) goes to the stack unchanged, where TC egress
//! handles it as before; the fast path never drops.
//!
//! It runs in the hook `--ingress` picks. In XDP it rewrites with plain
//! RFC 1624 arithmetic, so the internal interfaces must deliver complete
//! checksums (a wire does; a veth peer does only with its transmit checksum
//! offload off). In TC it uses the skb-aware helpers, so partial checksums
//! stay right, and the packet goes straight to the external interface's
//! egress. Each session direction caches its route lookup for a second.

use aya_ebpf::{
    EbpfContext,
    bindings::{__sk_buff, TC_ACT_REDIRECT, bpf_fib_lookup as FibParams},
    helpers::generated::{bpf_fib_lookup, bpf_redirect},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use nat_common::{
    counters::Counter,
    csum::{add, apply},
    flow::{FlowKey, HopCache, NextHop, PROTO_TCP, Session},
    forward::{AF_INET, eligible, ttl_decrement_diff},
    headers::{ETH_HLEN, ETH_P_IP, check_ipv4, off},
    seen_word::SharedWord,
};

use crate::{
    hairpin,
    maps::{NAT_FAST_DEVS, NAT_FWD, NAT_IF_MACS, ext_ifindex},
    packet::{
        DropReason, Endpoint, HEADERS_MAX, Ipv4Fields, L4Fields, Side, decode, encode,
        frame_ip_len, ipv4_fields, l4_fields, now_ns, ptr_at, read, tc_action, touch, xdp_verdict,
    },
    shared::MapWord,
    skb::linear_headers,
    tc_rewrite::rewrite_endpoint,
    track::{self, SynOptions},
    xdp_rewrite,
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
fn tc_redirect_egress(ifindex: u32) -> bool {
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

/// A packet on an internal interface that belongs to a session and may take the fast path.
struct Candidate {
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
fn candidate<C: SynOptions>(ctx: &C, data: usize, end: usize, avail: usize) -> Option<Candidate> {
    match read::<u16>(data, end, 12) {
        Ok(t) if u16::from_be(t) == ETH_P_IP => {}
        _ => return None,
    }
    let ip = ipv4_fields(data, end, ETH_HLEN).ok()?;
    let meta = check_ipv4(ip.ver_ihl, ip.tot_len, ip.frag, ip.proto, avail).ok()?;
    let (tos, ttl) = tos_ttl(data, end).ok()?;
    eligible(meta.fragment, ip.proto, ttl).ok()?;
    let l4_at = ETH_HLEN + meta.hdr_len;
    let mut l4 = l4_fields(data, end, l4_at, ip.proto, meta.l4_len(), true).ok()?;
    let key = FlowKey::new(ip.proto, ip.saddr, l4.sport, ip.daddr, l4.dport);
    let entry = NAT_FWD.get_ptr_mut(key)?;
    l4.wscale = ctx.syn_wscale(&l4, l4_at);
    Some(Candidate {
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
fn track_session(c: &Candidate, now: u64) -> Result<Endpoint, DropReason> {
    let refresh = c.ip.proto != PROTO_TCP || track::egress(&c.key, c.entry, &c.l4, now)?;
    if refresh {
        touch(c.entry, now);
    }
    // SAFETY: live map value from the lookup in `candidate`.
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
    let Some(c) = candidate(ctx, data, end, frame_ip_len(data, end)) else {
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
    let Some(c) = candidate(ctx, data, end, len.saturating_sub(ETH_HLEN)) else {
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
