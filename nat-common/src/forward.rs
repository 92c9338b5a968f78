//! What the stack does to a packet it forwards, for the XDP fast path that
//! forwards established flows without it.

use crate::csum::diff16;

/// The lowest TTL the fast path forwards. A packet that arrives with TTL 1
/// expires at this hop, and only the stack sends the ICMP time exceeded.
pub const MIN_FORWARD_TTL: u8 = 2;

pub use crate::flow::ROUTE_TTL_NS;

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
    use crate::flow::{HopCache, NextHop, PROTO_ICMP, PROTO_TCP, PROTO_UDP};

    fn route() -> NextHop {
        NextHop {
            ifindex: 7,
            mtu: 1500,
            macs: [1, 2, 3, 4, 5, 6, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6],
        }
    }

    fn write(tag: u16, hop: &NextHop, now: u64) -> [u64; 4] {
        let [a, b, c] = HopCache::route_words(tag, hop);
        [HopCache::stamp_word(tag, now), a, b, c]
    }

    #[test]
    fn cached_route_is_used_for_one_ttl() {
        assert_eq!(HopCache::fresh([0; 4], 5), None);
        let at = 1 << 20;
        let w = write(1, &route(), at);
        assert_eq!(HopCache::decode(w), Some((route(), at)));
        assert_eq!(HopCache::fresh(w, at), Some(route()));
        assert_eq!(HopCache::fresh(w, at + ROUTE_TTL_NS - 1), Some(route()));
        assert_eq!(HopCache::fresh(w, at + ROUTE_TTL_NS), None);
        // A stamp another CPU wrote just after this clock read only costs a
        // fresh lookup.
        assert_eq!(HopCache::fresh(w, at - 1), None);
    }

    #[test]
    fn a_cached_route_is_read_whole_or_not_at_all() {
        let old = write(9, &route(), 1 << 30);
        let moved = NextHop {
            ifindex: 8,
            mtu: 9000,
            macs: [9; 12],
        };
        let new = write(HopCache::next_tag(9), &moved, 2 << 30);
        assert_eq!(HopCache::decode(new), Some((moved, 2 << 30)));
        // Every mix of the two writes, word by word, is refused.
        for mask in 1..15u32 {
            let mut mix = old;
            for (i, w) in mix.iter_mut().enumerate() {
                if mask & (1 << i) != 0 {
                    *w = new[i];
                }
            }
            assert_eq!(HopCache::decode(mix), None, "mix {mask:04b}");
        }
        assert_eq!(HopCache::next_tag(u16::MAX), 1, "0 stays 'never written'");
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
