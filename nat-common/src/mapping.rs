//! Mapping and filtering behaviour (RFC 4787, RFC 5382): the settings'
//! values and the map types of endpoint-independent mappings.
//!
//! An endpoint-independent mapping ties an internal endpoint (protocol,
//! address, port) to one external address and port for as long as the
//! endpoint has a session; every new flow from it, to any destination, gets
//! that external endpoint unless its key is cooling toward the destination.
//! Two maps hold it, both written with BPF_NOEXIST so two CPUs can never give
//! one external port to two internal endpoints: the mapping map, keyed by the
//! internal endpoint, and the owner map, keyed by the external one, which the
//! ingress filter and hairpinning look up. All addresses and ports are in
//! network byte order.

/// Values of `mapping-udp` and `mapping-tcp`.
pub mod mode {
    /// One external port per flow and destination; the same port serves
    /// other internal endpoints toward other destinations.
    pub const ADDRESS_PORT_DEPENDENT: u32 = 0;
    /// One external endpoint per internal endpoint, for every destination.
    pub const ENDPOINT_INDEPENDENT: u32 = 1;
}

/// Values of `filtering-udp`: which packets from outside to an
/// endpoint-independent mapping's port open a session toward its owner.
pub mod filtering {
    /// From anywhere (full cone).
    pub const ENDPOINT_INDEPENDENT: u32 = 0;
    /// From an address the internal endpoint has sent to, any port
    /// (restricted cone; RFC 4787 REQ-8's choice for some stringency).
    pub const ADDRESS_DEPENDENT: u32 = 1;
    /// Only from an address and port it has sent to, that is only packets
    /// of existing sessions (port-restricted cone).
    pub const ADDRESS_PORT_DEPENDENT: u32 = 2;
}

/// Forward-entry mark ([`crate::flow::Session::mapping`]): the session
/// holds one reference on its internal endpoint's endpoint-independent
/// mapping, to be released exactly once, when the forward entry is deleted.
pub const SESSION_MAPPED: u16 = 1;

/// Forward-entry mark: the session was opened from outside (a port
/// forward, or a packet a mapping's filter admitted), not allocated for its
/// internal host, so it is not in that host's session count
/// ([`crate::hosts`]) and its end takes nothing off it.
pub const SESSION_INBOUND: u16 = 2;

/// Forward-entry mark: the session's external port is in a block of its
/// host's (`allocation = "blocks"`) and counts in that block's sessions,
/// so its end gives one back ([`crate::blocks::Block::sessions`]).
pub const SESSION_BLOCK: u16 = 4;

/// An endpoint with its protocol: the internal one keys the mapping map,
/// the external one the owner map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

impl EndpointKey {
    pub const fn new(proto: u8, addr: u32, port: u16) -> Self {
        Self {
            addr,
            port,
            proto,
            _pad: 0,
        }
    }
}

/// Value of the mapping map: the external endpoint of an internal one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mapping {
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
    /// Forward entries marked [`SESSION_MAPPED`] that hold this mapping.
    /// Changed only by compare-and-exchange; 0 means dying: no session may
    /// join it any more, and the one that released the last reference
    /// deletes both entries.
    pub refs: u64,
    /// Boot-clock ns of its creation: tells this mapping's filter entries
    /// from those of an earlier mapping of the same endpoints.
    pub born: u64,
}

/// Value of the owner map: the internal endpoint an external one belongs to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
    /// The owning mapping's [`Mapping::born`]: a filter answer is trusted
    /// only for the mapping it was recorded for.
    pub born: u64,
}

/// Key of the filter map: an external endpoint of a mapping and a remote
/// address its internal endpoint has sent to (address-dependent filtering).
/// The value is the mapping's [`Mapping::born`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerKey {
    pub ext_addr: u32,
    pub remote: u32,
    pub ext_port: u16,
    pub proto: u8,
    pub _pad: u8,
}

impl PeerKey {
    pub const fn new(proto: u8, ext_addr: u32, ext_port: u16, remote: u32) -> Self {
        Self {
            ext_addr,
            remote,
            ext_port,
            proto,
            _pad: 0,
        }
    }
}

/// Whether `filtering` admits a packet from outside to a mapping whose
/// endpoint has (`peer_known`) or has not sent to the packet's source
/// address. Address-and-port-dependent filtering admits nothing new: the
/// packets it lets through are those of sessions that exist already.
pub const fn admits(filtering: u32, peer_known: bool) -> bool {
    match filtering {
        filtering::ENDPOINT_INDEPENDENT => true,
        filtering::ADDRESS_DEPENDENT => peer_known,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filtering_admits_as_rfc_4787_describes() {
        assert!(admits(filtering::ENDPOINT_INDEPENDENT, false));
        assert!(admits(filtering::ADDRESS_DEPENDENT, true));
        assert!(!admits(filtering::ADDRESS_DEPENDENT, false));
        assert!(!admits(filtering::ADDRESS_PORT_DEPENDENT, true));
        assert!(!admits(99, true));
    }

    #[test]
    fn map_types_have_no_hidden_padding() {
        assert_eq!(size_of::<EndpointKey>(), 8);
        assert_eq!(size_of::<Mapping>(), 24);
        assert_eq!(size_of::<Owner>(), 16);
        assert_eq!(size_of::<PeerKey>(), 12);
    }
}
