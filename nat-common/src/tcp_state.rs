//! Session state, derived from what each direction has shown.

use crate::{
    config::Config,
    flow::{PROTO_TCP, PROTO_UDP, seen},
    headers::tcp_flags,
};

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
        PROTO_TCP => {
            if (fwd_seen | rev_seen) & seen::RST != 0 {
                State::Reset
            } else if fwd_seen & seen::FIN != 0 && rev_seen & seen::FIN != 0 {
                State::Closed
            } else if fwd_seen & seen::FIN != 0 {
                State::FinInternal
            } else if rev_seen & seen::FIN != 0 {
                State::FinExternal
            } else if rev_seen & seen::SYN_ACK != 0 {
                State::Established
            } else {
                State::SynSent
            }
        }
        _ => State::Other,
    }
}

/// How long a session in `state` may stay idle before the reaper removes it.
pub const fn idle_timeout_ms(state: State, cfg: &Config) -> u64 {
    match state {
        State::Established => cfg.timeout_tcp_established_ms,
        State::Udp | State::Other => cfg.timeout_udp_ms,
        State::SynSent | State::FinInternal | State::FinExternal | State::Closed | State::Reset => {
            cfg.timeout_tcp_transitory_ms
        }
    }
}
