//! Per-CPU outcome counters: every packet the programs look at ends in exactly one.

macro_rules! counters {
    ($($variant:ident = $name:literal: $help:literal,)+) => {
        /// Index into the per-CPU stats array.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter {
            $($variant,)+
        }

        impl Counter {
            pub const ALL: &[Counter] = &[$(Counter::$variant,)+];

            /// Stable name used by `nat stats`.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Counter::$variant => $name,)+
                }
            }

            pub const fn help(self) -> &'static str {
                match self {
                    $(Counter::$variant => $help,)+
                }
            }
        }
    };
}

counters! {
    XlateOut = "translated_out": "egress packets translated (source rewritten)",
    XlateIn = "translated_in": "ingress packets translated back (destination rewritten) and handed to the stack",
    FastOut = "fast_out": "internal packets of existing sessions translated and redirected to the external interface in XDP, past the stack",
    FastIn = "fast_in": "replies translated back and redirected to an internal interface in XDP, past the stack",
    FastMiss = "fast_miss": "packets on a fast-path interface left to the stack before any route lookup: no session, not TCP or UDP, a fragment, TTL 1 or malformed",
    FastRoute = "fast_route": "session packets on an internal fast-path interface left to the stack by the route lookup: no neighbour entry yet, larger than the MTU, or routed elsewhere (replies in that case count as translated_in)",
    Opened = "sessions_opened": "new sessions created by egress (allocations)",
    CooldownSkip = "cooldown_skips": "allocation candidates skipped because their key was cooling",
    Fallback = "alloc_fallback": "allocations that took a cooling port because none was free (policy fallback)",
    Spill = "alloc_other_address": "allocations on another external address because the host's own had no free port",
    StrictCooling = "drop_strict_cooling": "new flows dropped because every free port was cooling (policy strict)",
    Rejected = "rejected": "new TCP flows refused with ICMP administratively prohibited (on-exhaustion reject)",
    HostLimit = "drop_host_limit": "new flows refused because their internal host held max-sessions-per-host live sessions (answered with ICMP administratively prohibited under on-exhaustion reject)",
    Evicted = "evicted_openings": "unanswered openings (SYN sent, no answer, idle 3 s) removed to make room for a new flow of the same host while the session table was nearly full",
    RstOutOfWindow = "rst_out_of_window": "resets, from outside or from inside, whose sequence number lies outside the receiving host's window (RFC 5961), or that answer a SYN without acknowledging it, dropped: the session is neither closed nor cooled",
    RstInexact = "rst_inexact": "resets inside the receiving host's window whose sequence number is not exact (neither its last acknowledgment nor the end of the sender's last segment), or toward a host that has sent nothing yet, passed untouched: the session stays as it was and the endpoint answers with a challenge ACK (RFC 5961)",
    Collision = "collisions": "translated SYNs answered with an ACK instead of a SYN-ACK: a remote still holding the old connection on this key (TIME_WAIT or half-open)",
    SynRefused = "syn_refused": "translated SYNs answered with a reset: nothing listening at the destination, or a filter refusing it (not a key collision)",
    Reopened = "sessions_reopened": "closed or reset sessions reopened by a new SYN on the same mapping",
    CooldownFull = "cooldown_map_full": "cooldowns that could not be recorded because the cooldown map was full",
    NoSession = "drop_no_session": "internal TCP segments without SYN and without a session, dropped",
    AllocFail = "drop_alloc_failed": "new flows for which no external port was free, dropped",
    SessionTableFull = "drop_session_table_full": "new flows dropped because a session map (NAT_FWD or NAT_REV) was full: raise --max-sessions",
    Malformed = "drop_malformed": "packets with truncated or inconsistent headers, dropped",
    Unsupported = "drop_unsupported": "internal packets the NAT does not translate (not TCP, UDP, ICMP echo or ICMP error), dropped",
    FragUnknown = "fragment_unknown": "later fragments whose first fragment was not seen (from inside dropped, from outside passed)",
    RewriteError = "drop_rewrite_error": "packets the kernel's checksum helper refused to rewrite, dropped",
    EimConflict = "eim_conflict": "new flows of an internal endpoint with an endpoint-independent mapping that got another port, because the mapping's key toward the destination was cooling (the TIME_WAIT rule wins) or held by another endpoint's session",
    EimInbound = "eim_inbound": "packets from outside that filtering-udp admitted to an endpoint-independent mapping, opening a session toward its internal endpoint",
    InsertRace = "insert_race": "new flows whose session another CPU created first (its entry is used)",
    IcmpUnmatched = "icmp_error_unmatched": "ICMP errors whose embedded packet matches no session (from outside passed untouched, from inside dropped)",
    PassExternal = "pass_external_source": "egress TCP/UDP packets from an external address, passed untouched: with --fast-path under --ingress tc, the ones the fast path translated",
    NotOursOut = "pass_not_internal": "egress packets not from an internal prefix, passed untouched",
    Filtered = "pass_filtered": "packets to an endpoint-independent mapping's port that filtering-udp does not admit (from outside, or hairpinned from inside), passed to the stack untouched",
    NotOursIn = "pass_no_session": "ingress packets matching no session, passed to the stack untouched",
    NotIpv4 = "pass_not_ipv4": "packets that are not IPv4, passed untouched",
    ForwardOpened = "forward_opened": "sessions opened by a packet from outside (or a hairpinned one) to a port forward",
    ForwardConflict = "drop_forward_conflict": "packets to a port forward dropped because the internal host already has a session with that remote on the forwarded internal port",
    Hairpin = "hairpin": "internal packets to an external address and port owned by a port forward, translated both ways and sent back to an internal interface",
    HairpinUnrouted = "drop_hairpin_unrouted": "hairpinned packets dropped because no route leads to the internal host through an internal interface",
    NotHairpin = "pass_not_hairpin": "packets from inside to an external address that are not hairpinned (no forward or mapping owns the port: the NAT host's own services; fragments, ICMP, TTL 1), left to what runs next (the fast path, then the stack); other packets on an internal interface are not counted here but by the fast path or egress next",
    TaggedInternal = "drop_tagged_internal": "egress frames tagged for a VLAN (802.1Q or 802.1ad, one tag or two) whose inner IPv4 source is internal, dropped: the NAT translates untagged frames of the external interface only",
    EventsDropped = "events_dropped": "compliance events (blocks, exhaustion, quotas, thresholds, sessions) lost because the event ring buffer was full: the daemon fell behind or is not running; the packets went on",
    BlockAllocated = "blocks_allocated": "port blocks handed to internal hosts (allocation blocks)",
    BlockReleased = "blocks_released": "port blocks given back after their last session ended (allocation blocks)",
    BlockLimit = "drop_block_limit": "new flows refused because their host's blocks had no usable port toward the destination and the host held max-blocks-per-host blocks (allocation blocks)",
    NoBlock = "drop_no_block": "new flows refused because no block was free on their host's address (or, for a host without blocks, on any address) (allocation blocks)",
}

/// Number of counters, the size of the stats map.
pub const COUNTER_COUNT: u32 = Counter::ALL.len() as u32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_dense_and_names_unique() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
            for d in &Counter::ALL[i + 1..] {
                assert_ne!(c.name(), d.name());
            }
        }
    }
}
