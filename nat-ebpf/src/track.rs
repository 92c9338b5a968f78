//! TCP state of existing sessions: seen words, close detection, cooldowns,
//! collisions, reopening and the judgement of resets (RFC 5961). Every
//! segment records its sender's acknowledgment, window and end in the
//! sender's own entry; everything past that runs only for packets that
//! change a session's state (SYN, FIN, RST, the first answer and the first
//! ACK), so the established path costs those stores and one comparison.
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

use aya_ebpf::{
    bindings::{__sk_buff, xdp_md},
    programs::{TcContext, XdpContext},
};
use nat_common::{
    counters::Counter,
    flow::{FlowKey, PROTO_TCP, Session, seen},
    headers::{
        ETH_HLEN, TCP_MIN_HLEN,
        tcp_flags::{ACK, FIN, RST, SYN},
    },
    mapping::SESSION_INBOUND,
    seen_word::{
        SharedWord, bits, current_rev_bits, ended, forward_add, forward_reopen, generation,
        inbound_reopen, pack, reverse_add, update,
    },
    tcp_state::{
        CloseKind, RstVerdict, Segment, Sent, close_kind, cooldown_ms, recorded_window, records,
        rst_verdict, seen_bits, wscale_option,
    },
};

use crate::{
    maps::{NAT_CONFIG, NAT_COOLDOWN, NAT_FWD, NAT_REV, count},
    packet::{L4Fields, read},
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

/// The TCP segment of `l4` as the tracking takes it, host order, with the
/// window scale option of a SYN (`wscale`, from [`SynOptions`]).
#[inline(always)]
pub fn segment(l4: &L4Fields, wscale: u8) -> Segment {
    Segment {
        seq: u32::from_be(l4.seq),
        ack: u32::from_be(l4.ack),
        flags: l4.tcp_flags,
        wscale,
        window: u16::from_be(l4.window),
        payload: l4.payload,
    }
}

/// Egress packet of an existing session; `false` for a reset outside the
/// remote's window, which must be dropped (it has changed nothing).
#[inline(always)]
pub fn egress(fwd_key: &FlowKey, fwd: *mut Session, seg: &Segment, now: u64) -> bool {
    let [a, b] = seg.pack();
    nat_track_egress(fwd_key, fwd, a, b, now) == KEEP
}

/// Ingress packet of an existing session; `false` for a reset outside the
/// internal host's window, which must be dropped (it has changed nothing).
#[inline(always)]
pub fn ingress(rev_key: &FlowKey, rev: *mut Session, seg: &Segment, now: u64) -> bool {
    let [a, b] = seg.pack();
    nat_track_ingress(rev_key, rev, a, b, now) == KEEP
}

/// A new flow's SYN, once the allocation inserted its session: its numbers
/// go into the forward entry as any opening SYN's do.
#[inline(always)]
pub fn opened(fwd_key: &FlowKey, seg: &Segment, now: u64) {
    if let Some(fwd) = NAT_FWD.get_ptr_mut(fwd_key) {
        egress(fwd_key, fwd, seg, now);
    }
}

/// The tracking functions' answers: the packet goes on, or is dropped.
const KEEP: i32 = 0;
const DROP: i32 = 1;

/// A program's way to the window scale option of a SYN: a global BPF
/// function of the program's context type reads the options, so the
/// verifier checks their walk once per program, and only SYNs pay for it.
pub trait SynOptions {
    /// [`wscale_option`] of the TCP header `l4` at `l4_at`, for a SYN; 0
    /// for any other segment.
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
    let ctx = TcContext::new(skb);
    // The caller made the headers linear (the options of a SYN with up to
    // 20 bytes of IPv4 options are within them); an option past the
    // linear part reads as absent.
    syn_wscale(ctx.data(), ctx.data_end(), l4_at, hdr_len)
}

#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn nat_syn_wscale_xdp(xdp: *mut xdp_md, l4_at: u64, hdr_len: u64) -> u64 {
    let ctx = XdpContext::new(xdp);
    syn_wscale(ctx.data(), ctx.data_end(), l4_at, hdr_len)
}

#[inline(always)]
fn syn_wscale(data: usize, end: usize, l4_at: u64, hdr_len: u64) -> u64 {
    // Bounds the verifier can add to a packet pointer: the TCP header
    // starts at most an Ethernet and a 60-byte IPv4 header in.
    if l4_at > (ETH_HLEN + 60) as u64 || hdr_len > 60 || hdr_len < TCP_MIN_HLEN as u64 {
        return 0;
    }
    let at = l4_at as usize + TCP_MIN_HLEN;
    let len = hdr_len as usize - TCP_MIN_HLEN;
    wscale_option(len, |i| read::<u8>(data, end, at + i).ok()) as u64
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
// limit). It hands them their pointer arguments as possibly null. The
// segment comes as [`Segment::pack`]'s two words.

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
    track_egress(&fwd_key, fwd, &Segment::unpack([seg_a, seg_b]), now)
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
    track_ingress(&rev_key, rev, &Segment::unpack([seg_a, seg_b]), now)
}

#[inline(always)]
fn track_egress(fwd_key: &FlowKey, fwd: *mut Session, seg: &Segment, now: u64) -> i32 {
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
    let rev = NAT_REV.get_ptr_mut(rev_key);
    let rev_seen = rev.map(seen_of);
    let other = rev_seen.map_or(0, |r| current_rev_bits(before, r.load()));
    if flags & RST != 0 {
        // Judged against the remote's window, as resets from outside are
        // against the internal host's.
        let remote = rev.map_or(Sent::default(), |r| sent(r, other));
        match rst_verdict(seg.seq, seg.ack, flags, &sent(fwd, bits(before)), &remote) {
            RstVerdict::Exact => {}
            RstVerdict::InWindow => {
                count(Counter::RstInexact);
                return KEEP;
            }
            RstVerdict::OutOfWindow => return DROP,
        }
    }
    let epoch = generation(before);
    if new_syn {
        // The internal socket opens the same 5-tuple again (the SYN retry
        // after a collision): keep the mapping, start a new generation.
        // The key's cooldown entry stays: it does no harm while the key
        // is claimed, and it still protects the key if the reaper is
        // removing the old session at this very moment.
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
fn track_ingress(rev_key: &FlowKey, rev: *mut Session, seg: &Segment, now: u64) -> i32 {
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
    // Without a forward entry (being reaped) the reverse keeps its own generation.
    let fwd_word = fwd_seen.map_or(pack(generation(before), 0), |f| f.load());
    let mut epoch = generation(fwd_word);
    let mut other = bits(fwd_word);
    let mut own = current_rev_bits(fwd_word, before);
    if flags & RST != 0 {
        // RFC 5961: only an exact reset changes the session.
        let internal = fwd.map_or(Sent::default(), |f| sent(f, other));
        match rst_verdict(seg.seq, seg.ack, flags, &sent(rev, own), &internal) {
            RstVerdict::Exact => {}
            RstVerdict::InWindow => {
                count(Counter::RstInexact);
                return KEEP;
            }
            RstVerdict::OutOfWindow => return DROP,
        }
    }
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
