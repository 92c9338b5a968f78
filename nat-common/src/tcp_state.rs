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

/// How far a reset's sequence number may lie from the internal host's last
/// acknowledgment the NAT saw, either way: acknowledgments on their way,
/// and resets answering an older segment (RFC 793 takes their sequence
/// number from that segment's acknowledgment).
pub const RST_SLACK: u32 = 1 << 20;

/// RFC 5961 section 3.2 as a middlebox can apply it: a reset from outside
/// counts only when its sequence number lies in the internal host's
/// receive window, from its last acknowledgment `acked` over its window
/// field scaled by the largest shift there is (14, RFC 7323: the scale the
/// SYN negotiated is not parsed, so a valid reset is never refused), give
/// or take [`RST_SLACK`]. A blind reset then has to hit that range, one
/// in 4096 of the sequence space or less for windows below 2^16 << 14 / 4.
/// `acked` 0: the internal host has acknowledged nothing in this
/// connection yet (a reset answering its SYN), anything goes. Host order.
pub const fn rst_in_window(seq: u32, acked: u32, window: u16) -> bool {
    if acked == 0 {
        return true;
    }
    let width = ((window as u32) << 14) + 2 * RST_SLACK;
    seq.wrapping_sub(acked.wrapping_sub(RST_SLACK)) <= width
}

/// How long a session in `state` may stay idle before the reaper removes it.
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
    /// Reaped while idle: nothing is known of the remote's state.
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

/// How a session the reaper expires in `state` ended.
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
