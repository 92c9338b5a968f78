//! What the stack does to a packet it forwards, for the XDP fast path that
//! forwards established flows without it.

use crate::csum::diff16;

/// The lowest TTL the fast path forwards. A packet that arrives with TTL 1
/// expires at this hop, and only the stack sends the ICMP time exceeded.
pub const MIN_FORWARD_TTL: u8 = 2;

/// How long the fast path uses a session's cached route lookup
/// ([`crate::flow::NextHop`]) before it asks the kernel again: route and
/// neighbour changes reach established flows within this time.
pub const ROUTE_TTL_NS: u64 = 1_000_000_000;

/// `AF_INET`, the address family of a route lookup.
pub const AF_INET: u8 = 2;

/// The difference that decrementing the TTL makes to the IPv4 header sum.
/// TTL and protocol share one 16-bit word (bytes 8 and 9), taken in native
/// order like every word in [`crate::csum`].
#[inline(always)]
pub const fn ttl_decrement_diff(ttl: u8, proto: u8) -> u32 {
    diff16(
        u16::from_ne_bytes([ttl, proto]),
        u16::from_ne_bytes([ttl.wrapping_sub(1), proto]),
    )
}

/// Why a packet on the fast path is left to the stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ineligible {
    /// Fragments: only the stack reassembles or tracks them.
    Fragment,
    /// Neither TCP nor UDP: ICMP and the rest take the stack path.
    Protocol,
    /// TTL 1 or 0: the stack answers with ICMP time exceeded.
    Expiring,
}

/// Whether a packet may take the fast path at all, before any lookup.
#[inline(always)]
pub const fn eligible(fragment: bool, proto: u8, ttl: u8) -> Result<(), Ineligible> {
    use crate::flow::{PROTO_TCP, PROTO_UDP};
    if fragment {
        return Err(Ineligible::Fragment);
    }
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Err(Ineligible::Protocol);
    }
    if ttl < MIN_FORWARD_TTL {
        return Err(Ineligible::Expiring);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{NextHop, PROTO_ICMP, PROTO_TCP, PROTO_UDP};

    #[test]
    fn cached_route_is_used_for_one_ttl() {
        let never = NextHop::default();
        assert!(!never.fresh(5));
        let hop = NextHop {
            checked: 1_000,
            ..NextHop::default()
        };
        assert!(hop.fresh(1_000));
        assert!(hop.fresh(1_000 + ROUTE_TTL_NS - 1));
        assert!(!hop.fresh(1_000 + ROUTE_TTL_NS));
        // A stamp another CPU wrote just after this clock read only costs a
        // fresh lookup.
        assert!(!hop.fresh(999));
    }

    #[test]
    fn only_whole_tcp_and_udp_with_ttl_to_spare() {
        assert_eq!(eligible(false, PROTO_TCP, 64), Ok(()));
        assert_eq!(eligible(false, PROTO_UDP, 2), Ok(()));
        assert_eq!(eligible(false, PROTO_UDP, 1), Err(Ineligible::Expiring));
        assert_eq!(eligible(false, PROTO_TCP, 0), Err(Ineligible::Expiring));
        assert_eq!(eligible(true, PROTO_TCP, 64), Err(Ineligible::Fragment));
        assert_eq!(eligible(false, PROTO_ICMP, 64), Err(Ineligible::Protocol));
    }
}
