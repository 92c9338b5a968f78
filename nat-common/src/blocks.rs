//! Port blocks (`allocation = "blocks"`, RFC 6888 REQ-13 to 15): an
//! internal host's first flow gets it a block of `block_size` consecutive
//! ports on one external address (paired pooling, RFC 4787 REQ-2), its
//! flows allocate inside its blocks, and it gets another block when they
//! have no usable port toward a destination, up to `max_blocks_per_host`.
//! A block goes back when its last session ends; the cooldowns of its keys
//! stay in the cooldown map, so a block handed to another host still never
//! reuses a cooling key. Only a block's allocation and release is logged.
//!
//! The block table is keyed by (external address, block index), so a
//! block's owner is one lookup away from any external endpoint; each
//! host's entry lists its blocks.

/// Slots of a host's block list: the most `max-blocks-per-host` can be.
pub const MAX_BLOCKS_PER_HOST: usize = 16;

/// Default of `block-size`.
pub const DEFAULT_BLOCK_SIZE: u32 = 256;

/// Default of `max-blocks-per-host`: 2,048 ports per host with the
/// default block size.
pub const DEFAULT_MAX_BLOCKS_PER_HOST: u32 = 8;

/// Smallest `block-size`: below it a host's walk finds nothing toward a
/// busy server's cooling keys before it asks for another block.
pub const MIN_BLOCK_SIZE: u32 = 8;

/// A block's session count at and above this marks a block being
/// released: an allocation that meets it takes its increment back and
/// uses another block.
pub const BLOCK_DYING: u64 = 1 << 62;

/// Key of the block table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BlockKey {
    /// The external address, network byte order.
    pub addr: u32,
    /// The block's number on that address ([`Geometry::ports`]).
    pub index: u32,
}

/// Value of the block table. `sessions` is changed only by atomic
/// read-modify-write instructions; the other fields are written at insert
/// (`slot` once more, by the allocating CPU). The table is preallocated, so
/// a deleted element's memory may come back as another block's at once: a
/// CPU that held a block through a pointer it looked up earlier reads
/// `host`, `addr` and `index` after its add to `sessions` (which keeps the
/// element from being given back meanwhile) and gives the add back when
/// they are not the block it meant.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Block {
    /// Live sessions on the block's ports plus claims in flight.
    pub sessions: u64,
    /// Boot-clock nanoseconds of the allocation.
    pub since: u64,
    /// The internal host, network byte order.
    pub host: u32,
    /// The slot of the host's list that names it ([`NO_SLOT`] until the
    /// allocating CPU has claimed one, which it does before any session
    /// can hold the block).
    pub slot: u32,
    /// The block's own key, [`BlockKey::addr`] and [`BlockKey::index`].
    pub addr: u32,
    pub index: u32,
}

/// [`Block::slot`] before a slot is claimed.
pub const NO_SLOT: u32 = u32::MAX;

/// Value of the host-blocks table, keyed by the internal address. `held`
/// and the slots change only by atomic read-modify-write instructions;
/// `addr` and `pool_index` are written once, at insert.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostBlocks {
    /// Blocks the host holds plus block allocations in flight; at and
    /// above [`BLOCK_DYING`] the entry is being deleted (its last block
    /// went back) and an allocation makes a fresh one.
    pub held: u64,
    /// The external address every block of the host is on, network byte order.
    pub addr: u32,
    /// Its index in the pool.
    pub pool_index: u32,
    /// Each slot 0 (free) or a block's index plus one.
    pub slots: [u64; MAX_BLOCKS_PER_HOST],
}

/// How an address's port range divides into blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub port_min: u16,
    pub port_max: u16,
    pub block_size: u32,
}

impl Geometry {
    /// Whole blocks in the range; ports past the last whole block are in none.
    pub const fn blocks(&self) -> u32 {
        if self.block_size == 0 || self.port_max < self.port_min {
            return 0;
        }
        (self.port_max as u32 - self.port_min as u32 + 1) / self.block_size
    }

    /// The first and last port of block `index` (host byte order).
    pub const fn ports(&self, index: u32) -> Option<(u16, u16)> {
        if index >= self.blocks() {
            return None;
        }
        let lo = self.port_min as u32 + index * self.block_size;
        Some((lo as u16, (lo + self.block_size - 1) as u16))
    }

    /// The block holding `port` (host byte order).
    pub const fn block_of(&self, port: u16) -> Option<u32> {
        if self.block_size == 0 || port < self.port_min {
            return None;
        }
        let index = (port - self.port_min) as u32 / self.block_size;
        if index < self.blocks() {
            Some(index)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Geometry;

    #[test]
    fn blocks_tile_the_range_and_leave_the_tail() {
        let g = Geometry {
            port_min: 1024,
            port_max: 2047,
            block_size: 300,
        };
        assert_eq!(g.blocks(), 3);
        assert_eq!(g.ports(0), Some((1024, 1323)));
        assert_eq!(g.ports(2), Some((1624, 1923)));
        assert_eq!(g.ports(3), None);
        assert_eq!(g.block_of(1323), Some(0));
        assert_eq!(g.block_of(1324), Some(1));
        assert_eq!(g.block_of(1924), None);
        assert_eq!(g.block_of(1023), None);
    }
}
