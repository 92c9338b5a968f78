//! Per-host limits and table pressure (RFC 6888 REQ-4/5): how many live
//! sessions each internal address holds, and which of its openings may make
//! room for a new flow of its own when the session table is nearly full.

use crate::flow::seen;

/// Default of the `max-sessions-per-host` setting: an eighth of the default
/// session table (262,144 pairs), so it takes at least eight hosts at their
/// limit to fill a default table, while a busy host (a proxy, a build
/// machine) still has tens of thousands of sessions.
pub const DEFAULT_MAX_SESSIONS_PER_HOST: u32 = 32_768;

/// Openings a host entry remembers as eviction candidates. Small and fixed,
/// so the allocation path looks at no more than this many sessions.
pub const HOST_OPENINGS: usize = 4;

/// An opening unanswered for this long may be evicted under pressure: a
/// SYN the remote answers at all is answered within a round trip, and the
/// client's first retransmission comes after 1 s.
pub const OPENING_IDLE_NS: u64 = 3_000_000_000;

/// A host entry's session count at and above this marks an entry that the
/// sweep is deleting (its count reached zero); an allocation that meets it
/// undoes its reservation and makes a fresh entry.
pub const HOST_DYING: u64 = 1 << 62;

/// Value of the hosts map, keyed by the internal address (network byte order).
///
/// `sessions` and `next` are changed only by atomic read-modify-write
/// instructions, so CPUs racing on one host never lose an update. Each
/// opening is one 8-byte word ([`Opening::pack`]), written with one store:
/// a reader sees a whole opening, old or new, never half of each, and it
/// re-checks the session it names before acting on it anyway.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostEntry {
    /// Live sessions of this host plus allocations in flight.
    pub sessions: u64,
    /// Ring cursor: the slot of `openings` the next opening goes to (mod [`HOST_OPENINGS`]).
    pub next: u32,
    /// The host's address, as in the key: an allocation that increments an
    /// entry the sweep has just deleted (and the map reused for another
    /// host) sees another address here and takes its increment back.
    pub addr: u32,
    /// The host's most recent TCP openings, 0 for an empty slot.
    pub openings: [u64; HOST_OPENINGS],
}

/// A host's TCP opening toward (daddr, dport) from sport, network byte order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opening {
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
}

impl Opening {
    /// One word, never 0 (an empty slot) for a real opening: port 0 is no
    /// TCP port the NAT opens a session for, so sport or dport is non-zero.
    pub const fn pack(self) -> u64 {
        ((self.daddr as u64) << 32) | ((self.sport as u64) << 16) | self.dport as u64
    }

    pub const fn unpack(word: u64) -> Option<Self> {
        if word == 0 {
            return None;
        }
        Some(Self {
            daddr: (word >> 32) as u32,
            sport: (word >> 16) as u16,
            dport: word as u16,
        })
    }
}

/// Whether a host holding `sessions` (live plus in flight, this
/// allocation not counted) is refused a new flow under `limit` (0: none).
pub const fn at_limit(sessions: u64, limit: u32) -> bool {
    limit != 0 && sessions >= limit as u64
}

/// Whether `live` session pairs make a table of `capacity` nearly full:
/// within a sixteenth of it (6.25%; 16,384 pairs of a default table).
pub const fn under_pressure(live: u64, capacity: u64) -> bool {
    capacity != 0 && live >= capacity - capacity / 16
}

/// Whether a TCP session may be evicted for a new flow of its host: the
/// internal host sent a SYN and nothing else, the remote sent nothing, and
/// the session has been idle [`OPENING_IDLE_NS`].
pub const fn evictable(fwd_seen: u8, rev_seen: u8, now: u64, last_seen: u64) -> bool {
    fwd_seen == seen::SYN && rev_seen == 0 && now.saturating_sub(last_seen) >= OPENING_IDLE_NS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openings_round_trip_and_are_never_empty() {
        let o = Opening {
            daddr: 0x0200_12c6,
            sport: 0x3930,
            dport: 0x5000,
        };
        assert_eq!(Opening::unpack(o.pack()), Some(o));
        assert_eq!(Opening::unpack(0), None);
        let only_dport = Opening {
            daddr: 0,
            sport: 0,
            dport: 1,
        };
        assert_ne!(only_dport.pack(), 0);
    }

    #[test]
    fn limit_counts_the_new_flow() {
        assert!(!at_limit(0, 1));
        assert!(at_limit(1, 1));
        assert!(!at_limit(32_767, DEFAULT_MAX_SESSIONS_PER_HOST));
        assert!(at_limit(32_768, DEFAULT_MAX_SESSIONS_PER_HOST));
        assert!(!at_limit(u64::MAX, 0), "0 means no limit");
    }

    #[test]
    fn pressure_starts_a_sixteenth_below_capacity() {
        assert!(!under_pressure(245_759, 262_144));
        assert!(under_pressure(245_760, 262_144));
        assert!(under_pressure(262_144, 262_144));
        assert!(!under_pressure(u64::MAX, 0), "unknown capacity");
    }

    #[test]
    fn only_idle_unanswered_openings_are_evictable() {
        let idle = OPENING_IDLE_NS;
        assert!(evictable(seen::SYN, 0, 10 * idle, 9 * idle));
        assert!(
            !evictable(seen::SYN, 0, idle - 1, 0),
            "not idle long enough"
        );
        assert!(
            !evictable(seen::SYN, seen::SYN_ACK, 10 * idle, 0),
            "answered"
        );
        assert!(!evictable(seen::SYN, seen::RST, 10 * idle, 0), "refused");
        assert!(!evictable(seen::SYN | seen::FIN, 0, 10 * idle, 0));
        assert!(!evictable(0, 0, 10 * idle, 0), "UDP or no SYN");
        assert!(!evictable(seen::SYN, 0, 0, idle), "clock behind last_seen");
    }

    #[test]
    fn default_limit_is_a_fair_share_of_the_default_table() {
        assert_eq!(262_144 / DEFAULT_MAX_SESSIONS_PER_HOST, 8);
    }
}
