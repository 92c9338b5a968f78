//! Session state, derived from what each direction has shown.

use crate::{
    config::Config,
    flow::{PROTO_ICMP, PROTO_TCP, PROTO_UDP, seen},
    headers::tcp_flags,
};

/// Whether a packet of protocol `proto` with TCP flags `flags` may open a
/// flow: a TCP SYN without ACK or RST, or any datagram of another protocol.
pub const fn opens_flow(proto: u8, flags: u8) -> bool {
    let mask = tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST;
    proto != PROTO_TCP || flags & mask == tcp_flags::SYN
}

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// SYN sent by the internal host, not answered yet.
    SynSent,
    Established,
    /// The internal host sent the first FIN.
    FinInternal,
    /// The external host sent the first FIN (it will hold TIME_WAIT if it closes last).
    FinExternal,
    /// Both sides sent FIN.
    Closed,
    Reset,
    Udp,
    /// An ICMP echo exchange (identifier translated like a port).
    Icmp,
    Other,
}

impl State {
    pub const fn name(self) -> &'static str {
        match self {
            State::SynSent => "syn_sent",
            State::Established => "established",
            State::FinInternal => "fin_internal",
            State::FinExternal => "fin_external",
            State::Closed => "closed",
            State::Reset => "reset",
            State::Udp => "udp",
            State::Icmp => "icmp",
            State::Other => "other",
        }
    }
}

/// The [`seen`] bits a TCP segment with `flags` adds for its direction.
#[inline(always)]
pub const fn seen_bits(flags: u8) -> u8 {
    let mut bits = 0;
    if flags & tcp_flags::SYN != 0 {
        bits |= if flags & tcp_flags::ACK != 0 {
            seen::SYN_ACK
        } else {
            seen::SYN
        };
    }
    if flags & tcp_flags::FIN != 0 {
        bits |= seen::FIN;
    }
    if flags & tcp_flags::RST != 0 {
        bits |= seen::RST;
    }
    if flags & tcp_flags::ACK != 0 {
        bits |= seen::ACK;
    }
    bits
}

/// The state of a session from the bits its forward (egress) and reverse
/// (ingress) entries have collected.
pub const fn state_of(proto: u8, fwd_seen: u8, rev_seen: u8) -> State {
    match proto {
        PROTO_UDP => State::Udp,
        PROTO_ICMP => State::Icmp,
        PROTO_TCP => {
            if (fwd_seen | rev_seen) & seen::RST != 0 {
                State::Reset
            } else if fwd_seen & seen::FIN != 0 && rev_seen & seen::FIN != 0 {
                State::Closed
            } else if fwd_seen & seen::FIN != 0 {
                State::FinInternal
            } else if rev_seen & seen::FIN != 0 {
                State::FinExternal
            } else if (rev_seen | fwd_seen) & seen::SYN_ACK != 0 {
                // A SYN-ACK from outside answers the internal host's SYN; one
                // from the internal host answers a remote's SYN to a port forward.
                State::Established
            } else {
                State::SynSent
            }
        }
        _ => State::Other,
    }
}

/// TCP option kind of the window scale (RFC 7323 2.2), 3 bytes long.
pub const WSCALE_KIND: u8 = 3;
/// The largest shift (RFC 7323 2.3): a larger one is taken as this.
pub const WSCALE_MAX: u8 = 14;
/// In a recorded window scale: the direction's SYN carried the option
/// (its shift in the bits below).
pub const WSCALE_SENT: u8 = 0x80;
/// Bytes of TCP options at most: a 60-byte header less its fixed 20.
pub const TCP_OPTIONS_MAX: usize = 40;

/// A walk over a SYN's TCP options in search of the window scale option,
/// as Linux parses them (tcp_parse_options): end of list, no-operation,
/// then kind and length, stopping at a length below 2 or past the options;
/// an option of kind 3 counts only with length 3, and of several the last
/// counts. The walk takes one step per byte ([`OptionWalk::step`]), so the
/// datapath runs it as a `bpf_loop` whose callback the verifier checks
/// once, with its state in map memory, rather than walking every path of
/// a loop whose steps depend on the bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionWalk {
    pub bytes: [u8; TCP_OPTIONS_MAX],
    /// How many of `bytes` are the options (at most [`TCP_OPTIONS_MAX`]).
    pub len: u32,
    /// Where the next option starts.
    pub next: u32,
    /// [`WSCALE_SENT`] with the shift capped at [`WSCALE_MAX`], or 0 while
    /// none was found.
    pub found: u32,
    pub _pad: u32,
}

impl OptionWalk {
    /// A walk over the first `len` of `bytes`.
    pub const fn new(bytes: [u8; TCP_OPTIONS_MAX], len: u32) -> Self {
        Self {
            bytes,
            len,
            next: 0,
            found: 0,
            _pad: 0,
        }
    }

    /// Step `j` of the walk, at byte `j`: a byte is an option's kind only
    /// where the option before it ended. `false` once the walk is over.
    #[inline(always)]
    pub fn step(&mut self, j: usize) -> bool {
        let len = self.len as usize;
        if j >= len || j >= TCP_OPTIONS_MAX {
            return false;
        }
        if j != self.next as usize {
            return true;
        }
        let Some(&kind) = self.bytes.get(j) else {
            return false;
        };
        if kind == 0 {
            return false;
        }
        if kind == 1 {
            self.next = j as u32 + 1;
            return true;
        }
        let Some(&size) = self.bytes.get(j + 1) else {
            return false;
        };
        let size = size as usize;
        if j + 2 > len || size < 2 || j + size > len {
            return false;
        }
        if kind == WSCALE_KIND && size == 3 {
            let Some(&shift) = self.bytes.get(j + 2) else {
                return false;
            };
            let shift = if shift > WSCALE_MAX {
                WSCALE_MAX
            } else {
                shift
            };
            self.found = (WSCALE_SENT | shift) as u32;
        }
        self.next = (j + size) as u32;
        true
    }
}

/// [`OptionWalk`] over `options` (at most [`TCP_OPTIONS_MAX`] bytes of them
/// are looked at): [`WSCALE_SENT`] with the shift, or 0 when the SYN
/// carries no window scale option.
pub fn wscale_option(options: &[u8]) -> u8 {
    let len = options.len().min(TCP_OPTIONS_MAX);
    let mut bytes = [0; TCP_OPTIONS_MAX];
    bytes[..len].copy_from_slice(&options[..len]);
    let mut walk = OptionWalk::new(bytes, len as u32);
    let mut j = 0;
    while walk.step(j) {
        j += 1;
    }
    walk.found as u8
}

/// The shift that scales the window fields `own` sends, given the window
/// scale options both directions' SYNs carried (recorded as by
/// [`wscale_option`]): windows are scaled only when both sent the option
/// (RFC 7323 2.2).
#[inline(always)]
pub const fn window_shift(own: u8, other: u8) -> u32 {
    if own & other & WSCALE_SENT != 0 {
        let shift = own & !WSCALE_SENT;
        (if shift > WSCALE_MAX {
            WSCALE_MAX
        } else {
            shift
        }) as u32
    } else {
        0
    }
}

/// The window field to record for a segment with `flags` and window
/// `field` whose sender's SYN carried `wscale`: a SYN-ACK's window is
/// never scaled (RFC 7323 2.2), so it is kept divided by the shift its
/// later windows will use, rounded up, and [`rst_verdict`] scales every
/// recorded window alike. A SYN-ACK carries the option only when the SYN
/// did, so its own option says whether the shift applies.
#[inline(always)]
pub const fn recorded_window(flags: u8, field: u16, wscale: u8) -> u16 {
    if flags & tcp_flags::SYN == 0 {
        return field;
    }
    let shift = window_shift(wscale, WSCALE_SENT);
    (((field as u32) + (1 << shift) - 1) >> shift) as u16
}

/// Where a segment ends in sequence space: `seq` plus `payload` bytes, plus
/// 1 for SYN and for FIN, which take a sequence number each.
#[inline(always)]
pub const fn segment_end(seq: u32, flags: u8, payload: u16) -> u32 {
    let mut end = seq.wrapping_add(payload as u32);
    if flags & tcp_flags::SYN != 0 {
        end = end.wrapping_add(1);
    }
    if flags & tcp_flags::FIN != 0 {
        end = end.wrapping_add(1);
    }
    end
}

/// Whether a segment with `flags` from a host whose seen bits of this
/// connection were `own` before it is recorded in its entry's TCP fields:
/// every segment but a reset (an exact one ends the session anyway, and
/// one that is not must leave it as it was, or a blind host could make
/// its next reset end a "train" it made up), and a SYN only while the host
/// has acknowledged nothing (its opening SYN or SYN-ACK, or their
/// retransmissions; a SYN on an open connection changes nothing).
#[inline(always)]
pub const fn records(flags: u8, own: u8) -> bool {
    flags & tcp_flags::RST == 0 && (flags & tcp_flags::SYN == 0 || own & seen::ACK == 0)
}

/// A TCP segment as the tracking records and judges it, host order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// A SYN's window scale option ([`wscale_option`]); 0 otherwise.
    pub wscale: u8,
    pub window: u16,
    /// Payload bytes.
    pub payload: u16,
}

impl Segment {
    /// [`segment_end`] of this segment.
    #[inline(always)]
    pub const fn end(&self) -> u32 {
        segment_end(self.seq, self.flags, self.payload)
    }
}

/// What the NAT saw one direction's host send in the session's current
/// connection, from its entry (host order): its seen bits of this
/// connection (0: nothing yet) and the TCP fields of [`crate::flow::Session`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    pub seen: u8,
    pub acked: u32,
    pub window: u16,
    pub wscale: u8,
    pub sent_end: u32,
}

impl Sent {
    /// The window scale option of the host's SYN, when this connection's
    /// SYN (or SYN-ACK) was seen; 0 otherwise.
    #[inline(always)]
    pub const fn syn_wscale(&self) -> u8 {
        if self.seen & (seen::SYN | seen::SYN_ACK) != 0 {
            self.wscale
        } else {
            0
        }
    }
}

/// What a reset does ([`rst_verdict`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RstVerdict {
    /// Its sequence number is exact: it resets the session (state reset,
    /// the reset cooldown) and passes.
    Exact,
    /// In the receiver's window, or toward a host the NAT has seen nothing
    /// of: it passes untouched and the session stays as it was; the
    /// endpoint judges it (a challenge ACK, RFC 5961 3.2), and that answer
    /// passes as any segment does.
    InWindow,
    /// Outside the receiver's window: dropped and counted
    /// (`rst_out_of_window`), the session as it was.
    OutOfWindow,
}

/// RFC 5961 section 3.2 as a middlebox applies it (netfilter's conntrack
/// does the same): a reset with sequence number `seq` (and, with ACK in
/// `flags`, acknowledgment number `ack`) from `sender` toward `receiver`
/// is exact when `seq` equals the receiver's last acknowledgment, or ends
/// the train of the sender's own segments (equals its last segment's end,
/// which itself lies in the receiver's window: a blind host that injected
/// a segment of its own must have hit the window with it). Any other
/// reset inside the receiver's window [acked, acked + (window << shift))
/// is [`RstVerdict::InWindow`], outside it [`RstVerdict::OutOfWindow`].
/// No slack widens the window: the receiver's real left edge is at or
/// past the acknowledgment the NAT saw last (acknowledgments still on
/// their way only move it on), and the sender knows of no right edge the
/// NAT has not seen, since every window reaches it through the NAT; a
/// reset left of the NAT's edge is left of the endpoint's too, which would
/// ignore it.
///
/// A receiver that has acknowledged nothing yet (it sent only its SYN)
/// has no window: a reset answering its SYN is exact when it carries ACK
/// acknowledging exactly that SYN (RFC 793, SYN-SENT), otherwise out of
/// window. A receiver the NAT has seen nothing of in this connection (a
/// port forward's internal host before it answered the remote's SYN) has
/// no window the NAT could judge by: the reset is in window, passed to
/// the endpoint, which checks it itself, and it changes nothing.
#[inline(always)]
pub const fn rst_verdict(
    seq: u32,
    ack: u32,
    flags: u8,
    sender: &Sent,
    receiver: &Sent,
) -> RstVerdict {
    if receiver.seen == 0 {
        return RstVerdict::InWindow;
    }
    if receiver.seen & seen::ACK == 0 {
        return if flags & tcp_flags::ACK != 0 && ack == receiver.sent_end {
            RstVerdict::Exact
        } else {
            RstVerdict::OutOfWindow
        };
    }
    let shift = window_shift(receiver.syn_wscale(), sender.syn_wscale());
    let size = (receiver.window as u32) << shift;
    let from_edge = seq.wrapping_sub(receiver.acked);
    if from_edge == 0 || (sender.seen != 0 && seq == sender.sent_end && from_edge <= size) {
        RstVerdict::Exact
    } else if from_edge < size {
        RstVerdict::InWindow
    } else {
        RstVerdict::OutOfWindow
    }
}

/// How long a session in `state` may stay idle before the sweep removes it.
pub const fn idle_timeout_ms(state: State, cfg: &Config) -> u64 {
    match state {
        State::Established => cfg.timeout_tcp_established_ms,
        State::Udp | State::Other => cfg.timeout_udp_ms,
        State::Icmp => cfg.timeout_icmp_ms,
        State::SynSent | State::FinInternal | State::FinExternal => cfg.timeout_tcp_transitory_ms,
        State::Closed | State::Reset => cfg.timeout_tcp_closed_ms,
    }
}

/// How a session ended, which decides how long its key cools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseKind {
    /// The external side sent the first FIN, or both at once: it holds TIME_WAIT.
    ExternalFirst,
    /// The internal side closed first: the remote ends in CLOSED.
    InternalFirst,
    Reset,
    /// Swept while idle: nothing is known of the remote's state.
    Idle,
    Udp,
    /// An ICMP echo session expired.
    Icmp,
}

impl CloseKind {
    pub const fn name(self) -> &'static str {
        match self {
            CloseKind::ExternalFirst => "external_first",
            CloseKind::InternalFirst => "internal_first",
            CloseKind::Reset => "reset",
            CloseKind::Idle => "idle",
            CloseKind::Udp => "udp",
            CloseKind::Icmp => "icmp",
        }
    }
}

/// The close a TCP session has completed, if it has: an RST either way, or a
/// FIN each way. Both sides marking their FIN as first means they crossed.
#[inline(always)]
pub const fn close_kind(fwd_seen: u8, rev_seen: u8) -> Option<CloseKind> {
    if (fwd_seen | rev_seen) & seen::RST != 0 {
        return Some(CloseKind::Reset);
    }
    if fwd_seen & seen::FIN == 0 || rev_seen & seen::FIN == 0 {
        return None;
    }
    if fwd_seen & seen::FIN_FIRST != 0 && rev_seen & seen::FIN_FIRST == 0 {
        Some(CloseKind::InternalFirst)
    } else {
        Some(CloseKind::ExternalFirst)
    }
}

/// How a session the sweep expires in `state` ended.
pub const fn expiry_kind(proto: u8, fwd_seen: u8, rev_seen: u8) -> CloseKind {
    if proto == PROTO_ICMP {
        return CloseKind::Icmp;
    }
    if proto != PROTO_TCP {
        return CloseKind::Udp;
    }
    match close_kind(fwd_seen, rev_seen) {
        Some(kind) => kind,
        None => CloseKind::Idle,
    }
}

/// Milliseconds a key cools after a session ended this way; 0 when cooldown is off.
#[inline(always)]
pub const fn cooldown_ms(kind: CloseKind, cfg: &Config) -> u64 {
    if cfg.cooldown_enabled == 0 {
        return 0;
    }
    match kind {
        CloseKind::ExternalFirst | CloseKind::Idle => cfg.cooldown_ms,
        CloseKind::InternalFirst => cfg.cooldown_local_close_ms,
        CloseKind::Reset => cfg.cooldown_rst_ms,
        CloseKind::Udp => cfg.cooldown_udp_ms,
        CloseKind::Icmp => cfg.cooldown_icmp_ms,
    }
}
