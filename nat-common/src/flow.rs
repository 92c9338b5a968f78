//! Session table keys and values.

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMP: u8 = 1;

/// A flow as the egress direction sees it: source, destination, protocol.
///
/// In the forward map the source is the internal host. In the reverse map the
/// source is the external address and port the NAT chose, so the reverse key is
/// exactly (protocol, external ip, external port, destination ip, destination
/// port), the key a cooldown entry needs. Ingress builds it by swapping the
/// inbound packet's source and destination. All fields are in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl FlowKey {
    pub const fn new(proto: u8, saddr: u32, sport: u16, daddr: u32, dport: u16) -> Self {
        Self {
            saddr,
            daddr,
            sport,
            dport,
            proto,
            _pad: [0; 3],
        }
    }

    /// The reverse-map key of this forward flow once it is translated to `ext`.
    pub const fn translated(&self, ext_addr: u32, ext_port: u16) -> Self {
        Self::new(self.proto, ext_addr, ext_port, self.daddr, self.dport)
    }
}

/// What a packet of this direction has shown, one bit each.
pub mod seen {
    pub const SYN: u8 = 1;
    pub const FIN: u8 = 2;
    pub const RST: u8 = 4;
    /// A SYN with ACK: the opening was answered.
    pub const SYN_ACK: u8 = 8;
    /// This direction sent its FIN while the other had not sent one yet.
    pub const FIN_FIRST: u8 = 16;
    /// Reverse entry: the remote answered the internal host's SYN with
    /// something other than a SYN-ACK (counted once: `collisions` for an
    /// ACK, `syn_refused` for a reset).
    pub const ODD_ANSWER: u8 = 32;
}

/// One direction of a session.
///
/// The forward entry is written only by egress and the reverse entry only by
/// ingress, so the two directions never write the same cache line. The
/// session's state is derived from both entries' `seen` bits
/// ([`crate::tcp_state::state_of`]) and its idle time from the later of the
/// two `last_seen`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Session {
    /// Forward entry: the external address. Reverse entry: the internal address.
    pub addr: u32,
    /// Forward entry: the external port. Reverse entry: the internal port.
    pub port: u16,
    /// [`seen`] bits for packets of this entry's direction.
    pub seen: u8,
    pub _pad: u8,
    /// Boot-clock nanoseconds of the last packet, refreshed at most every
    /// [`crate::config::TOUCH_GRANULARITY_NS`].
    pub last_seen: u64,
    /// Where the fast path sends this direction's packets.
    pub hop: NextHop,
}

/// The fast path's cached route lookup for one direction of a session, so
/// that an established flow pays for the kernel's route and neighbour lookup
/// once per [`crate::forward::ROUTE_TTL_NS`] and not per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    /// Boot-clock ns of the lookup this came from; 0: none yet.
    pub checked: u64,
    /// Interface the packets leave by.
    pub ifindex: u32,
    /// MTU of the route, checked against each packet.
    pub mtu: u16,
    /// Destination then source MAC address, as the Ethernet header has them.
    pub macs: [u8; 12],
    pub _pad: [u8; 6],
}

impl NextHop {
    /// Whether the cached lookup may still be used at `now`.
    #[inline(always)]
    pub const fn fresh(&self, now: u64) -> bool {
        self.checked != 0 && now.wrapping_sub(self.checked) < crate::forward::ROUTE_TTL_NS
    }
}

/// Identifies the fragments of one IPv4 datagram crossing the NAT one way.
/// All fields as in the packet (network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub saddr: u32,
    pub daddr: u32,
    pub id: u16,
    pub proto: u8,
    /// [`FRAG_OUT`] or [`FRAG_IN`].
    pub dir: u8,
}

/// Where the fragments of a datagram go, and since when.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragEntry {
    /// The translated address (network byte order).
    pub addr: u32,
    pub _pad: u32,
    /// Boot-clock ns when the first fragment was translated.
    pub at: u64,
}

/// Fragments of one datagram arrive within this long of each other (Linux
/// gives up reassembly after 30 s, net.ipv4.ipfrag_time); an older entry is
/// a previous datagram that happened to have the same IP id.
pub const FRAG_TTL_NS: u64 = 30_000_000_000;

pub const FRAG_OUT: u8 = 0;
pub const FRAG_IN: u8 = 1;
