//! Static port forwards (DNAT): an external (protocol, address, port) of the
//! pool that belongs to an internal endpoint, opened by packets from outside.
//!
//! A range is stored port by port, so the datapath does one exact lookup;
//! each entry also names the range it was added with, so that a range is
//! listed and deleted as the one forward the operator added.

/// Ports one forward may span: each is a map entry, and the allocator probes
/// the map once per candidate, so ranges stay operator-sized.
pub const MAX_FORWARD_RANGE: u32 = 1024;

/// Entries of the forward map: [`MAX_FORWARD_RANGE`] times eight full ranges.
pub const MAX_FORWARD_ENTRIES: u32 = 8192;

/// Key of the forward map: the external endpoint (protocol, address, port
/// in network byte order), the same key the mapping owner map uses.
pub type ForwardKey = crate::mapping::EndpointKey;

/// Value of the forward map: where the port leads, and the range it was
/// added with (host order, for listing and deleting it whole).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwardTarget {
    /// Internal address and port, network byte order.
    pub addr: u32,
    pub port: u16,
    /// First external port of the range this entry belongs to (host order).
    pub first: u16,
    /// Ports in that range.
    pub count: u16,
    pub _pad: u16,
}

/// Port `i` of a range starting at `first` (host order), if it exists.
pub const fn nth_port(first: u16, i: u32) -> Option<u16> {
    let p = first as u32 + i;
    if p > u16::MAX as u32 {
        None
    } else {
        Some(p as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_of_a_range_stop_at_65535() {
        assert_eq!(nth_port(65534, 1), Some(65535));
        assert_eq!(nth_port(65535, 1), None);
        assert_eq!(nth_port(80, 0), Some(80));
    }

    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(size_of::<ForwardKey>(), 8);
        assert_eq!(size_of::<ForwardTarget>(), 12);
    }
}
