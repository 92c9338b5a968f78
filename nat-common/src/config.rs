//! Settings the datapath reads: live knobs in the config map, addresses in the pool map.

/// Maximum number of external addresses in the pool map.
pub const MAX_POOL: u32 = 16;

/// `last_seen` is refreshed at most this often, so the established path does
/// not write its session entry on every packet.
pub const TOUCH_GRANULARITY_NS: u64 = 1_000_000_000;

/// Candidates the allocator tries for one new flow before giving up.
pub const MAX_PROBES: u32 = 64;

/// Live settings; the CLI rewrites index 0 of the config map while traffic flows.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Entries of the pool map in use; 0 means the NAT translates nothing yet.
    pub pool_len: u32,
    pub _pad: u32,
    pub timeout_tcp_established_ms: u64,
    pub timeout_tcp_transitory_ms: u64,
    pub timeout_udp_ms: u64,
}

impl Default for Config {
    /// Idle timeouts after RFC 5382 (TCP) and RFC 4787 (UDP).
    fn default() -> Self {
        Self {
            pool_len: 0,
            _pad: 0,
            timeout_tcp_established_ms: 7_440_000,
            timeout_tcp_transitory_ms: 240_000,
            timeout_udp_ms: 300_000,
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
