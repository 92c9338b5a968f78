//! Settings the datapath reads: live knobs in the config map, addresses in the pool map.

/// Maximum number of external addresses in the pool map.
pub const MAX_POOL: u32 = 16;

/// `last_seen` is refreshed at most this often, so the established path does
/// not write its session entry on every packet.
pub const TOUCH_GRANULARITY_NS: u64 = 1_000_000_000;

/// Candidates the allocator tries on a host's own external address before
/// giving up on it: at 95% of a destination's range in use or cooling, 256
/// spread-out probes miss the free 5% with probability 0.95^256 < 1e-5.
pub const MAX_PROBES: u32 = 256;

/// Candidates tried on each other external address once the host's own has
/// no free port toward the destination.
pub const SPILL_PROBES: u32 = 64;

/// What the allocator does when every probed candidate is live or cooling.
pub mod policy {
    /// Take the probed candidate that is not live and whose cooldown ends
    /// soonest (the Windows Server 2003 SP1 rule).
    pub const FALLBACK: u32 = 0;
    /// Drop the opening packet; the client's retransmission tries again.
    pub const STRICT: u32 = 1;
}

/// How a new flow's external port is found (setting `allocation`).
pub mod allocation {
    /// A walk over the whole range of the host's external address, then the
    /// others ([`crate::probe::Tour`]): the most ports per destination.
    pub const WALK: u32 = 0;
    /// Inside port blocks handed to each internal host on demand
    /// ([`crate::blocks`]): a log line per block, not per session.
    pub const BLOCKS: u32 = 1;
    /// Inside the share a formula gives each internal host (RFC 7422,
    /// [`crate::deterministic`]): no log at all, only the formula.
    pub const DETERMINISTIC: u32 = 2;
}

/// What happens to a TCP SYN for which no port can be allocated.
pub mod exhaustion {
    /// Dropped; the client retransmits and may get a port later.
    pub const DROP: u32 = 0;
    /// Dropped, and the client is sent ICMP destination unreachable,
    /// communication administratively prohibited, so it fails fast (RFC 5508 REQ-8).
    pub const REJECT: u32 = 1;
}

/// Bytes of the refused packet an ICMP error quotes: its IPv4 header (with
/// options, at most 60) and the first 8 bytes of its TCP header.
pub const REJECT_QUOTE: usize = 68;

/// A refused SYN, handed to user space to answer (building an ICMP error in
/// place from a possibly CHECKSUM_PARTIAL skb is not safe in the datapath).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RejectEvent {
    /// Valid bytes of `quote`.
    pub len: u32,
    pub _pad: u32,
    pub quote: [u8; REJECT_QUOTE],
}

/// Live settings; the CLI rewrites index 0 of the config map while traffic flows.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Entries of the pool map in use; 0 means the NAT translates nothing yet.
    pub pool_len: u32,
    /// One of [`policy`].
    pub policy: u32,
    /// 0: a port is reusable as soon as its session ends.
    pub cooldown_enabled: u32,
    /// One of [`exhaustion`]: what a TCP SYN that gets no port receives.
    pub on_exhaustion: u32,
    /// After the external side closed first, both closed at once, or an idle expiry.
    pub cooldown_ms: u64,
    /// After the internal side closed first (the server ends in CLOSED).
    pub cooldown_local_close_ms: u64,
    /// After a reset.
    pub cooldown_rst_ms: u64,
    /// After a UDP flow expired.
    pub cooldown_udp_ms: u64,
    pub timeout_tcp_established_ms: u64,
    pub timeout_tcp_transitory_ms: u64,
    /// How long a closed or reset session keeps its mapping for late segments
    /// and the client's SYN retry; its cooldown runs from the close.
    pub timeout_tcp_closed_ms: u64,
    pub timeout_udp_ms: u64,
    pub timeout_icmp_ms: u64,
    /// After an ICMP echo session expired. Its own setting, not UDP's: an
    /// echo identifier is reused at once by most stacks, and a remote that
    /// matches echo replies by identifier may want a pause UDP does not.
    pub cooldown_icmp_ms: u64,
    /// Non-zero: rare drops (no port, malformed, refused rewrite) are logged
    /// through aya-log to the daemon's log.
    pub log_events: u32,
    /// One of [`crate::mapping::mode`], for UDP flows.
    pub mapping_udp: u32,
    /// One of [`crate::mapping::mode`], for TCP flows.
    pub mapping_tcp: u32,
    /// One of [`crate::mapping::filtering`]: what reaches an endpoint-independent UDP mapping from outside.
    pub filtering_udp: u32,
    /// Live sessions one internal address may hold; a new flow past it is
    /// refused (`drop_host_limit`). 0: no limit.
    pub max_sessions_per_host: u32,
    /// One of [`allocation`]: how a new flow's external port is found. Set
    /// at load, with the fields after it.
    pub allocation: u32,
    /// Ports in a block ([`allocation::BLOCKS`]).
    pub block_size: u32,
    /// Blocks one internal address may hold at once ([`allocation::BLOCKS`]);
    /// at most [`crate::blocks::MAX_BLOCKS_PER_HOST`].
    pub max_blocks_per_host: u32,
    /// Percent of an external address's blocks in use at which a threshold
    /// event is logged as the count passes it upward; 0: none.
    pub pool_threshold: u32,
    /// Non-zero: each session's creation and deletion is a logged event.
    pub log_sessions: u32,
    /// [`allocation::DETERMINISTIC`]: internal hosts per external address
    /// and ports per host ([`crate::deterministic::Layout`]).
    pub det_per_address: u32,
    pub det_range: u32,
    /// The probe stride of a block or a deterministic share: coprime with
    /// its size ([`crate::probe::stride_for`]), as the pool's is with the range.
    pub share_step: u32,
    /// The stride a search for a free block takes over an address's
    /// blocks, coprime with their number.
    pub index_step: u32,
}

impl Default for Config {
    /// Idle timeouts after RFC 5382 (TCP) and RFC 4787 (UDP); cooldowns after
    /// TMG 2010 SP2 (240 s covers the longest 2*MSL in use, Windows').
    fn default() -> Self {
        Self {
            pool_len: 0,
            policy: policy::FALLBACK,
            cooldown_enabled: 1,
            on_exhaustion: exhaustion::DROP,
            cooldown_ms: 240_000,
            cooldown_local_close_ms: 15_000,
            cooldown_rst_ms: 15_000,
            cooldown_udp_ms: 0,
            timeout_tcp_established_ms: 7_440_000,
            timeout_tcp_transitory_ms: 240_000,
            timeout_tcp_closed_ms: 10_000,
            timeout_udp_ms: 300_000,
            timeout_icmp_ms: 60_000,
            cooldown_icmp_ms: 0,
            log_events: 0,
            // Peer-to-peer lives on UDP, and cooldown-udp is 0, so UDP
            // mappings cost no TIME_WAIT capacity; TCP keeps a whole port
            // range per destination, which the TIME_WAIT cooldown needs
            // under load.
            mapping_udp: crate::mapping::mode::ENDPOINT_INDEPENDENT,
            mapping_tcp: crate::mapping::mode::ADDRESS_PORT_DEPENDENT,
            filtering_udp: crate::mapping::filtering::ADDRESS_DEPENDENT,
            max_sessions_per_host: crate::hosts::DEFAULT_MAX_SESSIONS_PER_HOST,
            allocation: allocation::WALK,
            block_size: crate::blocks::DEFAULT_BLOCK_SIZE,
            max_blocks_per_host: crate::blocks::DEFAULT_MAX_BLOCKS_PER_HOST,
            pool_threshold: 0,
            log_sessions: 0,
            det_per_address: 0,
            det_range: 0,
            share_step: 0,
            index_step: 0,
        }
    }
}

/// One external address and the ports the NAT may hand out on it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolAddr {
    /// Network byte order.
    pub addr: u32,
    /// Host byte order, inclusive.
    pub port_min: u16,
    /// Host byte order, inclusive.
    pub port_max: u16,
    /// Probe stride, coprime with the range size ([`crate::probe::stride_for`]).
    pub step: u32,
    pub _pad: u32,
}
