//! TCP state of existing sessions, in the session layer: seen words, close
//! detection, cooldowns, collisions, reopening and the judgement of resets
//! (RFC 5961). Every segment records its sender's acknowledgment, window
//! and end in the sender's own entry; everything past that runs only for
//! packets that change a session's state (SYN, FIN, RST, the first answer
//! and the first ACK), so the established path costs those stores and one
//! comparison.
//!
//! Each direction's seen word is written only by the programs of that
//! direction, and only by compare-and-exchange ([`nat_common::seen_word`]):
//! packets of one direction on several CPUs cannot lose each other's bits,
//! and an internal host's reopen never touches the reverse entry, whose
//! bits of the closed connection simply stop counting once the forward
//! entry is a generation ahead. The one exception is a remote reopening a
//! port forward's session: the generation lives in the forward word, so
//! ingress moves it on, by the same exchange
//! ([`nat_common::seen_word::inbound_reopen`]).

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{__sk_buff, xdp_md},
    helpers::{
        bpf_loop,
        generated::{bpf_skb_load_bytes, bpf_xdp_load_bytes},
    },
    programs::{TcContext, XdpContext},
};
use nat_common::{
    counters::Counter,
    flow::{FlowKey, PROTO_TCP, Session, seen},
    headers::{
        TCP_MIN_HLEN,
        tcp_flags::{ACK, FIN, RST, SYN},
    },
    mapping::SESSION_INBOUND,
    seen_word::{
        SharedWord, bits, current_rev_bits, ended, forward_add, forward_reopen, generation,
        inbound_reopen, pack, reverse_add, update,
    },
    tcp_state::{
        CloseKind, OptionWalk, RstVerdict, Segment, Sent, TCP_OPTIONS_MAX, close_kind, cooldown_ms,
        recorded_window, records, rst_verdict, seen_bits,
    },
};

use crate::base::{
    maps::{NAT_CONFIG, NAT_COOLDOWN, NAT_FWD, NAT_REV, NAT_TCP_OPTIONS, count},
    outcome::DropReason,
    packet::{L4Fields, now_ns, read},
    shared::MapWord,
};

#[inline(always)]
fn seen_of(entry: *mut Session) -> MapWord {
    // SAFETY: `entry` is a live map value pointer from this program run.
    MapWord(unsafe { core::ptr::addr_of_mut!((*entry).seen) })
}

#[inline(always)]
fn stamp(entry: *mut Session, now: u64) {
    // The entry changed anyway: stamp the exact time, so a close is timed
    // from the close and not from the last coarse refresh.
    // SAFETY: `entry` is a live map value pointer from this program run.
    unsafe { (*entry).last_seen = now };
}

/// A packet of an existing session from its internal host (through
/// egress, the fast path or the hairpin's sender side): `Ok(true)` when
/// the session is to be refreshed ([`touch`](crate::base::packet::touch)),
/// `Ok(false)` for a reset that passes but leaves the session as it was,
/// not even refreshed, and the drop of a reset outside the remote's window
/// (it has changed nothing either). A reset is judged first, by a global function of its
/// own: its frame then sits beside the tracking's, not under it, on a
/// chain (the fast path's) at the 512 bytes Linux 6.1 allows.
#[inline(always)]
pub fn from_inside(
    fwd_key: &FlowKey,
    fwd: *mut Session,
    l4: &L4Fields,
    now: u64,
) -> Result<bool, DropReason> {
    let [a, b] = words(l4);
    if l4.tcp_flags & RST != 0 {
        let judged = nat_judge_egress(fwd_key, fwd, a, b);
        if judged != KEEP {
            return outcome(judged);
        }
    }
    outcome(nat_track_egress(fwd_key, fwd, a, b, now))
}

/// A packet of an existing session from its remote (through ingress or
/// the hairpin's receiver side), as [`from_inside`]: the drop is of a reset
/// outside the internal host's window.
#[inline(always)]
pub fn from_outside(
    rev_key: &FlowKey,
    rev: *mut Session,
    l4: &L4Fields,
    now: u64,
) -> Result<bool, DropReason> {
    let [a, b] = words(l4);
    if l4.tcp_flags & RST != 0 {
        let judged = nat_judge_ingress(rev_key, rev, a, b);
        if judged != KEEP {
            return outcome(judged);
        }
    }
    outcome(nat_track_ingress(rev_key, rev, a, b, now))
}

/// [`from_inside`] for `nat_egress`, whose frame is on a chain (through the
/// allocation) at the 512 bytes Linux 6.1 allows: the global functions
/// read the TCP header at `l4_at` (and a SYN's window scale option) from
/// the packet themselves, in their own frames, so that nothing of it stays
/// live in the program's.
#[inline(always)]
pub fn from_inside_tc(
    ctx: &TcContext,
    fwd_key: &FlowKey,
    fwd: *mut Session,
    flags: u8,
    l4_at: usize,
) -> Result<bool, DropReason> {
    if flags & RST != 0 {
        let judged = nat_judge_egress_tc(ctx.skb.skb, fwd_key, fwd, l4_at as u64);
        if judged != KEEP {
            return outcome(judged);
        }
    }
    outcome(nat_track_egress_tc(ctx.skb.skb, fwd_key, fwd, l4_at as u64))
}

/// A new flow's SYN in `nat_egress` (or the hairpin), once the allocation
/// inserted its session: its numbers go into the forward entry as any
/// opening SYN's do, read as in [`from_inside_tc`].
#[inline(always)]
pub fn opened_tc(ctx: &TcContext, fwd_key: &FlowKey, l4_at: usize) {
    nat_track_opened_tc(ctx.skb.skb, fwd_key, l4_at as u64);
}

/// The TCP header `l4` in the two words the global functions take: its
/// pointer would do, but a global function may write through it, so the
/// verifier forgets what it knew of the caller's copy (the checksum's
/// offset, which the rewrite after it needs bounded).
#[inline(always)]
fn words(l4: &L4Fields) -> [u64; 2] {
    [
        l4.seq as u64 | (l4.ack as u64) << 32,
        l4.tcp_flags as u64
            | (l4.wscale as u64) << 8
            | (l4.window as u64) << 16
            | (l4.payload as u64) << 32,
    ]
}

/// The TCP segment of [`words`], host order, as the tracking records and
/// judges it.
#[inline(always)]
fn segment(a: u64, b: u64) -> Segment {
    Segment {
        seq: u32::from_be(a as u32),
        ack: u32::from_be((a >> 32) as u32),
        flags: b as u8,
        wscale: (b >> 8) as u8,
        window: u16::from_be((b >> 16) as u16),
        payload: (b >> 32) as u16,
    }
}

/// The answers of the judging and tracking functions: the packet goes on
/// (for a reset: it is exact, and tracked), goes on leaving the session
/// untouched (an inexact reset), or is dropped.
const KEEP: i32 = 0;
const UNTOUCHED: i32 = 1;
const DROP: i32 = 2;

#[inline(always)]
fn outcome(code: i32) -> Result<bool, DropReason> {
    match code {
        KEEP => Ok(true),
        UNTOUCHED => Ok(false),
        _ => Err(DropReason::RstOutOfWindow),
    }
}

/// A program's way to the window scale option of a SYN: a global BPF
/// function of the program's context type copies the options (with the
/// helper of its context type, which reads past the linear part of an skb
/// too) and walks them, so the verifier checks the walk once per program,
/// and only SYNs pay for it.
pub trait SynOptions {
    /// The window scale option ([`nat_common::tcp_state::OptionWalk`]) of
    /// the TCP header `l4` at `l4_at`, for a SYN; 0 for any other segment.
    fn syn_wscale(&self, l4: &L4Fields, l4_at: usize) -> u8;
}

impl SynOptions for TcContext {
    #[inline(always)]
    fn syn_wscale(&self, l4: &L4Fields, l4_at: usize) -> u8 {
        if l4.tcp_flags & SYN == 0 {
            return 0;
        }
        nat_syn_wscale_tc(self.skb.skb, l4_at as u64, l4.hdr_len as u64) as u8
    }
}

impl SynOptions for XdpContext {
    #[inline(always)]
    fn syn_wscale(&self, l4: &L4Fields, l4_at: usize) -> u8 {
        if l4.tcp_flags & SYN == 0 {
            return 0;
        }
        nat_syn_wscale_xdp(self.ctx, l4_at as u64, l4.hdr_len as u64) as u8
    }
}

#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn nat_syn_wscale_tc(skb: *mut __sk_buff, l4_at: u64, hdr_len: u64) -> u64 {
    let Some((walk, at, len)) = options_walk(l4_at, hdr_len) else {
        return 0;
    };
    // SAFETY: the helper copies `len` bytes (1 to 40, checked) of the
    // packet, linear or not, into this CPU's walk, which has room for 40.
    let copied = unsafe {
        bpf_skb_load_bytes(
            skb as *const c_void,
            at,
            (*walk).bytes.as_mut_ptr().cast(),
            len,
        )
    };
    if copied != 0 {
        0
    } else {
        walk_options(walk, len)
    }
}

#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn nat_syn_wscale_xdp(xdp: *mut xdp_md, l4_at: u64, hdr_len: u64) -> u64 {
    let Some((walk, at, len)) = options_walk(l4_at, hdr_len) else {
        return 0;
    };
    // SAFETY: as in nat_syn_wscale_tc.
    let copied = unsafe { bpf_xdp_load_bytes(xdp, at, (*walk).bytes.as_mut_ptr().cast(), len) };
    if copied != 0 {
        0
    } else {
        walk_options(walk, len)
    }
}

/// This CPU's option walk, where the options of the TCP header at `l4_at`
/// of `hdr_len` bytes start, and how many bytes they are; `None` for a
/// header without options.
#[inline(always)]
fn options_walk(l4_at: u64, hdr_len: u64) -> Option<(*mut OptionWalk, u32, u32)> {
    if hdr_len <= TCP_MIN_HLEN as u64 || hdr_len > (TCP_MIN_HLEN + TCP_OPTIONS_MAX) as u64 {
        return None;
    }
    let walk = NAT_TCP_OPTIONS.get_ptr_mut(0)?;
    let at = l4_at as u32 + TCP_MIN_HLEN as u32;
    Some((walk, at, hdr_len as u32 - TCP_MIN_HLEN as u32))
}

/// The walk over `len` copied bytes, one `bpf_loop` step per byte.
#[inline(always)]
fn walk_options(walk: *mut OptionWalk, len: u32) -> u64 {
    // SAFETY: this CPU's slot, used only for the length of this call.
    unsafe {
        (*walk).len = len;
        (*walk).next = 0;
        (*walk).found = 0;
    }
    // Linux 6.1 wants the callback's context to be a stack pointer; the
    // callback finds the walk in its map instead.
    let mut unused = 0u64;
    // SAFETY: the callback only touches this CPU's walk.
    unsafe {
        bpf_loop(
            TCP_OPTIONS_MAX as u32,
            option_step as *mut c_void,
            core::ptr::addr_of_mut!(unused).cast(),
            0,
        );
        (*walk).found as u64
    }
}

/// Step `j` of the option walk; 1 ends the loop.
extern "C" fn option_step(j: u64, _ctx: *mut c_void) -> i64 {
    let Some(walk) = NAT_TCP_OPTIONS.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's walk, filled by walk_options before the loop.
    if unsafe { (*walk).step(j as usize) } {
        0
    } else {
        1
    }
}

/// Records what a segment says of its sender in the sender's own entry
/// (the forward entry for the internal host, the reverse for the remote),
/// each field with a store of its own, only when it changed; see
/// [`Session`] for why concurrent writers of one direction are harmless.
#[inline(always)]
fn note(entry: *mut Session, seg: &Segment) {
    let end = seg.end();
    // SAFETY: live map value pointer from this program run.
    unsafe {
        if seg.flags & ACK != 0 {
            let window = recorded_window(seg.flags, seg.window, seg.wscale);
            if (*entry).acked != seg.ack {
                (*entry).acked = seg.ack;
            }
            if (*entry).window != window {
                (*entry).window = window;
            }
        }
        if (*entry).sent_end != end {
            (*entry).sent_end = end;
        }
        if seg.flags & SYN != 0 {
            (*entry).wscale = seg.wscale;
        }
    }
}

/// What the NAT saw of an entry's host in this connection: `seen`, its
/// seen bits of this connection, and the entry's TCP fields.
#[inline(always)]
fn sent(entry: *const Session, seen: u8) -> Sent {
    // SAFETY: live map value pointer from this program run.
    unsafe {
        Sent {
            seen,
            acked: (*entry).acked,
            window: (*entry).window,
            wscale: (*entry).wscale,
            sent_end: (*entry).sent_end,
        }
    }
}

// Global BPF functions: the verifier checks each once, on its own, instead
// of once for every path of every program that reaches it (the exchange
// loops would otherwise multiply nat_egress's paths past the verifier's
// limit). It hands them their pointer arguments as possibly null. A reset
// reaches the tracking only once judged exact.

#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn nat_judge_egress(
    fwd_key: *const FlowKey,
    fwd: *mut Session,
    seg_a: u64,
    seg_b: u64,
) -> i32 {
    if fwd_key.is_null() || fwd.is_null() {
        return KEEP;
    }
    // SAFETY: checked for null; the caller passes its stack key. A copy,
    // as in nat_track_egress.
    let fwd_key = unsafe { core::ptr::read_volatile(fwd_key) };
    judge_from_inside(&fwd_key, fwd, &segment(seg_a, seg_b))
}

/// [`nat_judge_egress`] of the segment at `l4_at` of `skb` ([`from_inside_tc`]).
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn nat_judge_egress_tc(
    skb: *mut __sk_buff,
    fwd_key: *const FlowKey,
    fwd: *mut Session,
    l4_at: u64,
) -> i32 {
    if skb.is_null() || fwd_key.is_null() || fwd.is_null() {
        return KEEP;
    }
    // SAFETY: as in nat_judge_egress.
    let fwd_key = unsafe { core::ptr::read_volatile(fwd_key) };
    match skb_segment(skb, l4_at, false) {
        Some(seg) => judge_from_inside(&fwd_key, fwd, &seg),
        None => KEEP,
    }
}

#[inline(always)]
fn judge_from_inside(fwd_key: &FlowKey, fwd: *mut Session, seg: &Segment) -> i32 {
    let before = seen_of(fwd).load();
    // SAFETY: live map value pointer.
    let (addr, port) = unsafe { ((*fwd).addr, (*fwd).port) };
    // Judged against the remote's window, as resets from outside are
    // against the internal host's.
    let remote = match NAT_REV.get_ptr_mut(fwd_key.translated(addr, port)) {
        Some(r) => sent(r, current_rev_bits(before, seen_of(r).load())),
        None => Sent::default(),
    };
    judged(rst_verdict(
        seg.seq,
        seg.ack,
        seg.flags,
        &sent(fwd, bits(before)),
        &remote,
    ))
}

#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn nat_judge_ingress(
    rev_key: *const FlowKey,
    rev: *mut Session,
    seg_a: u64,
    seg_b: u64,
) -> i32 {
    if rev_key.is_null() || rev.is_null() {
        return KEEP;
    }
    // SAFETY: checked for null; the caller passes its stack key. A copy,
    // as in nat_track_egress.
    let rev_key = unsafe { core::ptr::read_volatile(rev_key) };
    let seg = segment(seg_a, seg_b);
    let before = seen_of(rev).load();
    // SAFETY: live map value pointer.
    let (addr, port) = unsafe { ((*rev).addr, (*rev).port) };
    let fwd_key = FlowKey::new(PROTO_TCP, addr, port, rev_key.daddr, rev_key.dport);
    // Without a forward entry (being freed) nothing is known of the
    // internal host: the reset changes nothing.
    let (own, internal) = match NAT_FWD.get_ptr_mut(fwd_key) {
        Some(f) => {
            let word = seen_of(f).load();
            (current_rev_bits(word, before), sent(f, bits(word)))
        }
        None => (bits(before), Sent::default()),
    };
    judged(rst_verdict(
        seg.seq,
        seg.ack,
        seg.flags,
        &sent(rev, own),
        &internal,
    ))
}

/// RFC 5961: only an exact reset goes on to change the session.
#[inline(always)]
fn judged(verdict: RstVerdict) -> i32 {
    match verdict {
        RstVerdict::Exact => KEEP,
        RstVerdict::InWindow => {
            count(Counter::RstInexact);
            UNTOUCHED
        }
        RstVerdict::OutOfWindow => DROP,
    }
}

#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn nat_track_egress(
    fwd_key: *const FlowKey,
    fwd: *mut Session,
    seg_a: u64,
    seg_b: u64,
    now: u64,
) -> i32 {
    if fwd_key.is_null() || fwd.is_null() {
        return KEEP;
    }
    // A copy on this function's stack: Linux 6.1 takes no pointer argument
    // of a global function as a map key. Volatile, so that LLVM keeps it.
    // SAFETY: checked for null; the caller passes its stack key.
    let fwd_key = unsafe { core::ptr::read_volatile(fwd_key) };
    track_from_inside(&fwd_key, fwd, &segment(seg_a, seg_b), now)
}

/// [`from_inside_tc`] past the judgement: [`nat_track_egress`] of the segment
/// at `l4_at` of `skb`.
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn nat_track_egress_tc(
    skb: *mut __sk_buff,
    fwd_key: *const FlowKey,
    fwd: *mut Session,
    l4_at: u64,
) -> i32 {
    if skb.is_null() || fwd_key.is_null() || fwd.is_null() {
        return KEEP;
    }
    // SAFETY: checked for null; the caller passes its stack key. A copy,
    // as in nat_track_egress.
    let fwd_key = unsafe { core::ptr::read_volatile(fwd_key) };
    match skb_segment(skb, l4_at, true) {
        Some(seg) => track_from_inside(&fwd_key, fwd, &seg, now_ns()),
        None => KEEP,
    }
}

/// [`opened_tc`]: its own global function, so that the lookup and the
/// tracking take no room in the frame of `nat_egress`.
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn nat_track_opened_tc(skb: *mut __sk_buff, fwd_key: *const FlowKey, l4_at: u64) -> i32 {
    if skb.is_null() || fwd_key.is_null() {
        return KEEP;
    }
    // SAFETY: checked for null; the caller passes its stack key. A copy,
    // as in nat_track_egress.
    let fwd_key = unsafe { core::ptr::read_volatile(fwd_key) };
    match (skb_segment(skb, l4_at, true), NAT_FWD.get_ptr_mut(fwd_key)) {
        // A SYN: never a reset to judge.
        (Some(seg), Some(fwd)) => track_from_inside(&fwd_key, fwd, &seg, now_ns()),
        _ => KEEP,
    }
}

/// The TCP segment at `l4_at` of `skb`, which the program checked already
/// (`l4_fields`), read again from the packet, with a SYN's window scale
/// option when `options`; `None` when it is not there (it is).
#[inline(always)]
fn skb_segment(skb: *mut __sk_buff, l4_at: u64, options: bool) -> Option<Segment> {
    use nat_common::headers::{ETH_HLEN, off};
    let ctx = TcContext::new(skb);
    let (data, end) = (ctx.data(), ctx.data_end());
    // Bounds the verifier can add to a packet pointer.
    if l4_at > (ETH_HLEN + 60) as u64 {
        return None;
    }
    let at = l4_at as usize;
    let tot_len = u16::from_be(read::<u16>(data, end, ETH_HLEN + off::IP_TOT_LEN).ok()?);
    let h = read::<[u8; 12]>(data, end, at + off::TCP_SEQ).ok()?;
    let hdr_len = ((h[off::TCP_DOFF - off::TCP_SEQ] >> 4) as usize) * 4;
    let flags = h[off::TCP_FLAGS - off::TCP_SEQ];
    let payload = (tot_len as usize).saturating_sub(at - ETH_HLEN + hdr_len) as u16;
    let wscale = if options && flags & SYN != 0 {
        nat_syn_wscale_tc(skb, l4_at, hdr_len as u64) as u8
    } else {
        0
    };
    Some(Segment {
        seq: u32::from_be_bytes([h[0], h[1], h[2], h[3]]),
        ack: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
        flags,
        wscale,
        window: u16::from_be_bytes([h[10], h[11]]),
        payload,
    })
}

#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn nat_track_ingress(
    rev_key: *const FlowKey,
    rev: *mut Session,
    seg_a: u64,
    seg_b: u64,
    now: u64,
) -> i32 {
    if rev_key.is_null() || rev.is_null() {
        return KEEP;
    }
    // SAFETY: checked for null; the caller passes its stack key. A copy,
    // as in nat_track_egress.
    let rev_key = unsafe { core::ptr::read_volatile(rev_key) };
    track_from_outside(&rev_key, rev, &segment(seg_a, seg_b), now)
}

#[inline(always)]
fn track_from_inside(fwd_key: &FlowKey, fwd: *mut Session, seg: &Segment, now: u64) -> i32 {
    let flags = seg.flags;
    let own_seen = seen_of(fwd);
    let before = own_seen.load();
    if records(flags, bits(before)) {
        note(fwd, seg);
    }
    let packet = seen_bits(flags);
    let new_syn = flags & (SYN | ACK) == SYN;
    if packet & !bits(before) == 0 && !new_syn {
        return KEEP;
    }
    // SAFETY: live map value pointer.
    let (addr, port) = unsafe { ((*fwd).addr, (*fwd).port) };
    let rev_key = fwd_key.translated(addr, port);
    let rev_seen = NAT_REV.get_ptr_mut(rev_key).map(seen_of);
    let other = rev_seen.map_or(0, |r| current_rev_bits(before, r.load()));
    let epoch = generation(before);
    if new_syn {
        // The internal socket opens the same 5-tuple again (the SYN retry
        // after a collision): keep the mapping, start a new generation.
        // The key's cooldown entry stays: it does no harm while the key
        // is claimed, and it still protects the key if the sweep is
        // freeing the old session at this very moment.
        if update(&own_seen, |w| forward_reopen(w, epoch, other)).is_some() {
            stamp(fwd, now);
            // The new connection's opening SYN: its numbers replace the
            // old connection's, whose seen bits no longer count.
            note(fwd, seg);
            count(Counter::Reopened);
        }
        return KEEP;
    }
    let other_fin = other & seen::FIN != 0;
    let Some((old, new)) = update(&own_seen, |w| forward_add(w, epoch, packet, other_fin)) else {
        return KEEP;
    };
    stamp(fwd, now);
    if bits(new) & !bits(old) & (seen::FIN | seen::RST) != 0 {
        // Read again after the exchange, a full barrier: of a FIN each way
        // recorded at once on two CPUs, at least one side sees both.
        let other = rev_seen.map_or(0, |r| current_rev_bits(new, r.load()));
        if let Some(kind) = close_kind(bits(new), other) {
            start_cooldown(&rev_key, kind, now);
        }
    }
    KEEP
}

#[inline(always)]
fn track_from_outside(rev_key: &FlowKey, rev: *mut Session, seg: &Segment, now: u64) -> i32 {
    let flags = seg.flags;
    let own_seen = seen_of(rev);
    let before = own_seen.load();
    if flags & (SYN | RST) == 0 {
        note(rev, seg);
    }
    // Answered, open, and nothing new: established traffic ends here with
    // the one lookup it came with. Everything else reads the forward entry,
    // whose generation says whether these bits are the current
    // connection's: a SYN-ACK or a reset may answer a reopen.
    // (A remote's own SYN, to a port forward, makes it answered too: the
    // internal host answers it, there is no SYN of ours to collide with.)
    if flags & (SYN | FIN | RST) == 0
        && bits(before) & (seen::SYN_ACK | seen::ODD_ANSWER | seen::SYN) != 0
        && (flags & ACK == 0 || bits(before) & seen::ACK != 0)
        && !ended(bits(before), 0)
    {
        return KEEP;
    }
    // SAFETY: live map value pointer.
    let (addr, port) = unsafe { ((*rev).addr, (*rev).port) };
    let fwd_key = FlowKey::new(PROTO_TCP, addr, port, rev_key.daddr, rev_key.dport);
    let fwd = NAT_FWD.get_ptr_mut(fwd_key);
    let fwd_seen = fwd.map(seen_of);
    // Without a forward entry (being freed) the reverse keeps its own generation.
    let fwd_word = fwd_seen.map_or(pack(generation(before), 0), |f| f.load());
    let mut epoch = generation(fwd_word);
    let mut other = bits(fwd_word);
    let mut own = current_rev_bits(fwd_word, before);
    if flags & (SYN | ACK) == SYN
        && ended(own, other)
        && let (Some(f), Some(f_seen)) = (fwd, fwd_seen)
        // SAFETY: live map value pointer; the mark is written at creation only.
        && unsafe { (*f).mapping } & SESSION_INBOUND != 0
        && update(&f_seen, |w| inbound_reopen(w, epoch, own)).is_some()
    {
        // The remote of a port forward connects again from the same port
        // after the last connection closed: a new connection, as egress
        // reopens for the internal host. The reverse word follows below.
        epoch += 1;
        other = 0;
        own = 0;
        count(Counter::Reopened);
    }
    if flags & SYN != 0 && records(flags, own) {
        note(rev, seg);
    }
    let mut packet = seen_bits(flags);
    // Until the remote answered with a SYN-ACK, any other answer may be a
    // remote that still holds the previous connection on this key (an
    // ACK of the old one: TIME_WAIT, PAWS); a reset is a plain refusal:
    // no listener, or a filter.
    let unanswered = own & (seen::SYN_ACK | seen::ODD_ANSWER) == 0 && flags & SYN == 0;
    if unanswered && other & seen::SYN != 0 && !ended(other, 0) {
        packet |= seen::ODD_ANSWER;
    }
    let other_fin = other & seen::FIN != 0;
    let Some((old, new)) = update(&own_seen, |w| reverse_add(w, epoch, packet, other_fin)) else {
        return KEEP;
    };
    let added = bits(new) & !current_rev_bits(new, old);
    if added == 0 {
        return KEEP;
    }
    // Counted by the one CPU whose exchange added the mark.
    if added & seen::ODD_ANSWER != 0 {
        count(if flags & RST != 0 {
            Counter::SynRefused
        } else {
            Counter::Collision
        });
    }
    stamp(rev, now);
    if added & (seen::FIN | seen::RST) != 0 {
        // Read again after the exchange, as on egress. A forward entry that
        // moved on has reopened: these bits are the old connection's.
        let fwd_now = fwd_seen.map_or(pack(epoch, 0), |f| f.load());
        if generation(fwd_now) == epoch
            && let Some(kind) = close_kind(bits(fwd_now), bits(new))
        {
            start_cooldown(rev_key, kind, now);
        }
    }
    KEEP
}

/// Records when `rev_key` may be handed out again after a close of `kind`.
/// The cooldown runs from the close; the session itself lingers a little
/// longer for late segments and keeps the key claimed meanwhile.
#[inline(always)]
fn start_cooldown(rev_key: &FlowKey, kind: CloseKind, now: u64) {
    let Some(cfg) = NAT_CONFIG.get(0) else { return };
    let ms = cooldown_ms(kind, cfg);
    if ms == 0 {
        return;
    }
    if NAT_COOLDOWN
        .insert(rev_key, now + ms * 1_000_000, 0)
        .is_err()
    {
        count(Counter::CooldownFull);
    }
}
