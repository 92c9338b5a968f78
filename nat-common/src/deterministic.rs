//! Deterministic NAT (RFC 7422): every internal address's external address
//! and port range follow from a formula over the internal prefixes and the
//! pool, so the answer to "who had 203.0.113.7:40001?" needs no log, only
//! the formula and the configuration of the day.
//!
//! The internal addresses are numbered in order: the prefixes sorted by
//! network address, each address of each prefix in turn (network and
//! broadcast addresses included, so the numbering is the prefixes' own and
//! never depends on which hosts exist). The pool's addresses take
//! `per_address` consecutive hosts each, and each host a range of `range`
//! consecutive ports of the port range, in the same order:
//!
//! ```text
//! host i -> pool[i / per_address], ports port_min + (i % per_address) * range .. + range
//! ```
//!
//! with `per_address = ceil(hosts / addresses)` and
//! `range = floor(ports / per_address)`. Ports past the last whole range
//! belong to no host and are never handed out.

/// Internal prefixes deterministic mode numbers at most (the size of the
/// internal-prefix map).
pub const MAX_PREFIXES: usize = 256;

/// Value of the deterministic prefix map (an LPM trie keyed by the
/// internal prefix): the prefix's network address in host byte order and
/// the number of its first address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DetPrefix {
    pub network: u32,
    pub base: u32,
}

/// The shape of one deterministic mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Internal addresses numbered, over all prefixes.
    pub hosts: u64,
    /// External addresses in the pool.
    pub addresses: u32,
    /// The port range every external address shares (host byte order, inclusive).
    pub port_min: u16,
    pub port_max: u16,
}

/// One host's share: the pool index of its external address and its ports
/// (host byte order, inclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    pub address: u32,
    pub port_min: u16,
    pub port_max: u16,
}

impl Layout {
    const fn ports(&self) -> u32 {
        if self.port_max < self.port_min {
            0
        } else {
            self.port_max as u32 - self.port_min as u32 + 1
        }
    }

    /// Hosts per external address.
    pub const fn per_address(&self) -> u64 {
        if self.addresses == 0 {
            return 0;
        }
        self.hosts.div_ceil(self.addresses as u64)
    }

    /// Ports per host; 0 when the pool cannot give every host one.
    pub const fn range(&self) -> u32 {
        let per = self.per_address();
        if per == 0 || per > self.ports() as u64 {
            return 0;
        }
        (self.ports() as u64 / per) as u32
    }

    /// Host `index`'s share; `None` past the last host or when hosts get no port.
    pub const fn share(&self, index: u64) -> Option<Share> {
        let range = self.range();
        if range == 0 || index >= self.hosts {
            return None;
        }
        let per = self.per_address();
        let slot = index % per;
        let lo = self.port_min as u64 + slot * range as u64;
        Some(Share {
            address: (index / per) as u32,
            port_min: lo as u16,
            port_max: (lo + range as u64 - 1) as u16,
        })
    }

    /// The host whose share holds `port` on pool address `address`: the
    /// formula undone. `None` for a port outside every share.
    pub const fn host(&self, address: u32, port: u16) -> Option<u64> {
        let range = self.range();
        if range == 0 || address >= self.addresses || port < self.port_min {
            return None;
        }
        let per = self.per_address();
        let slot = (port - self.port_min) as u64 / range as u64;
        if slot >= per {
            return None;
        }
        let index = address as u64 * per + slot;
        if index >= self.hosts {
            return None;
        }
        Some(index)
    }
}

/// One internal prefix as the numbering sees it (network in host byte order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    pub network: u32,
    pub len: u8,
}

impl Prefix {
    /// Addresses in the prefix.
    pub const fn size(&self) -> u64 {
        1u64 << (32 - self.len as u32)
    }

    pub const fn contains(&self, addr: u32) -> bool {
        let mask = if self.len == 0 {
            0
        } else {
            u32::MAX << (32 - self.len as u32)
        };
        addr & mask == self.network & mask
    }
}

/// The numbering of the internal addresses over `prefixes`, which must be
/// sorted by network address and not overlap (the loader checks both).
#[derive(Clone, Copy, Debug)]
pub struct Numbering<'a> {
    pub prefixes: &'a [Prefix],
}

impl Numbering<'_> {
    /// Internal addresses numbered.
    pub fn hosts(&self) -> u64 {
        self.prefixes.iter().map(Prefix::size).sum()
    }

    /// The number of the first address of each prefix, in order.
    pub fn bases(&self) -> impl Iterator<Item = (Prefix, u64)> + '_ {
        self.prefixes.iter().scan(0u64, |next, p| {
            let base = *next;
            *next += p.size();
            Some((*p, base))
        })
    }

    /// The number of internal address `addr` (host byte order).
    pub fn index(&self, addr: u32) -> Option<u64> {
        self.bases()
            .find(|(p, _)| p.contains(addr))
            .map(|(p, base)| base + (addr - p.network) as u64)
    }

    /// The internal address numbered `index` (host byte order).
    pub fn address(&self, index: u64) -> Option<u32> {
        self.bases()
            .find(|(p, base)| index >= *base && index < base + p.size())
            .map(|(p, base)| p.network + (index - base) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::{Layout, Numbering, Prefix};

    #[test]
    fn a_slash_24_over_four_addresses_gets_64_hosts_each() {
        let l = Layout {
            hosts: 256,
            addresses: 4,
            port_min: 1024,
            port_max: 65000,
        };
        assert_eq!(l.per_address(), 64);
        // 63,977 ports: 999 each, 41 left over.
        assert_eq!(l.range(), 999);
        let first = l.share(0).unwrap();
        assert_eq!(
            (first.address, first.port_min, first.port_max),
            (0, 1024, 2022)
        );
        let last = l.share(255).unwrap();
        assert_eq!(last.address, 3);
        assert_eq!(last.port_max as u32, 1024 + 64 * 999 - 1);
        assert_eq!(l.host(3, last.port_max), Some(255));
        // Past the last whole range: nobody's.
        assert_eq!(l.host(3, 65000), None);
        assert_eq!(l.share(256), None);
    }

    #[test]
    fn too_many_hosts_for_the_ports_get_no_share() {
        let l = Layout {
            hosts: 1 << 24,
            addresses: 1,
            port_min: 1024,
            port_max: 65535,
        };
        assert_eq!(l.range(), 0);
        assert_eq!(l.share(0), None);
        assert_eq!(l.host(0, 2000), None);
    }

    #[test]
    fn numbering_runs_through_the_prefixes_in_order() {
        let prefixes = [
            Prefix {
                network: 0x0a00_0000,
                len: 30,
            },
            Prefix {
                network: 0xc0a8_0100,
                len: 31,
            },
        ];
        let n = Numbering {
            prefixes: &prefixes,
        };
        assert_eq!(n.hosts(), 6);
        assert_eq!(n.index(0x0a00_0003), Some(3));
        assert_eq!(n.index(0xc0a8_0101), Some(5));
        assert_eq!(n.index(0xc0a8_0102), None);
        assert_eq!(n.address(4), Some(0xc0a8_0100));
        assert_eq!(n.address(6), None);
    }
}
