//! Compliance events: what the datapath tells the daemon for its IPFIX and
//! syslog exports (RFC 8158's NAT events), through a ring buffer. A full
//! buffer drops the event and counts it (`events_dropped`), never the packet.

/// Kinds of [`NatEvent`].
pub mod kind {
    /// A host got a port block.
    pub const BLOCK_ALLOCATED: u16 = 1;
    /// A block went back after its last session ended.
    pub const BLOCK_RELEASED: u16 = 2;
    /// No free block on the host's address, or on any address for a host
    /// without blocks (`blocks`), or no port left for the flow on any
    /// address (`walk`).
    pub const ADDRESSES_EXHAUSTED: u16 = 3;
    /// A host's deterministic share had no usable port for the flow
    /// (`blocks` logs its limit as a quota instead).
    pub const PORTS_EXHAUSTED: u16 = 4;
    /// A host reached `max-sessions-per-host` (`value`: the limit), or
    /// `max-blocks-per-host` with no port left in its blocks (`value`: the limit).
    pub const QUOTA_REACHED: u16 = 5;
    /// An external address's blocks in use passed `pool-threshold` percent
    /// upward (`value`: the percent now).
    pub const THRESHOLD_REACHED: u16 = 6;
    /// A session opened (`log-sessions`).
    pub const SESSION_CREATED: u16 = 7;
    /// A session ended (`log-sessions`).
    pub const SESSION_DELETED: u16 = 8;
}

/// One event. Addresses are in network byte order as in the maps; ports
/// that came from packets too, ports the NAT counts (a block's range) in
/// host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatEvent {
    /// Boot-clock nanoseconds; the daemon turns them into wall-clock time.
    pub time_ns: u64,
    /// One of [`kind`].
    pub kind: u16,
    /// IP protocol of a session's or a flow's event, 0 otherwise.
    pub proto: u8,
    pub _pad: u8,
    /// The kind's number: a limit, a percent; 0 where it has none.
    pub value: u32,
    /// The internal host.
    pub internal: u32,
    /// The external address.
    pub external: u32,
    /// A session's remote address.
    pub remote: u32,
    /// A session's internal port (network byte order).
    pub internal_port: u16,
    /// A session's external port (network byte order).
    pub external_port: u16,
    /// A session's remote port (network byte order).
    pub remote_port: u16,
    /// A block's first port (host byte order).
    pub block_first: u16,
    /// A block's size in ports; 0 for other events.
    pub block_ports: u32,
}
