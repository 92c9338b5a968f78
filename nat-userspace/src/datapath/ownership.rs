//! Who holds which external ports, read back from the maps under each
//! allocation mode: the port blocks with their ranges and their use per
//! external address, and the deterministic formula over the prefixes and
//! the pool the instance holds. `nat blocks`, `nat lookup` and the metrics
//! answer from these.

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};
use nat_common::{
    blocks::{BLOCK_DYING, Block, BlockKey, Geometry, HostBlocks, MAX_BLOCKS_PER_HOST},
    config::{Config, PoolAddr, allocation},
    deterministic::{DetPrefix, Layout, Numbering, Prefix},
};

use crate::datapath::tables::Tables;

/// The name of an `allocation` value, as the setting spells it.
pub fn allocation_name(value: u32) -> &'static str {
    match value {
        allocation::WALK => "walk",
        allocation::BLOCKS => "blocks",
        allocation::DETERMINISTIC => "deterministic",
        _ => "unknown",
    }
}

fn ip(be: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be(be))
}

/// How external address `addr`'s (network order) range divides into
/// blocks. Every pool entry has the same range, so an address that left
/// the pool on a reload is divided as the pool is now; `None` for an empty
/// pool.
pub fn geometry(cfg: &Config, pool: &[PoolAddr], addr: u32) -> Option<Geometry> {
    let entry = pool.iter().find(|p| p.addr == addr).or(pool.first())?;
    Some(Geometry {
        port_min: entry.port_min,
        port_max: entry.port_max,
        block_size: cfg.block_size,
    })
}

/// One allocated block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockRow {
    pub host: Ipv4Addr,
    pub external: Ipv4Addr,
    pub index: u32,
    /// Its first and last port; `None` when the index lies past the range
    /// as it is now.
    pub ports: Option<(u16, u16)>,
    /// Live sessions on its ports, plus claims in flight.
    pub sessions: u64,
    /// Boot-clock nanoseconds of its allocation.
    pub since: u64,
}

impl BlockRow {
    pub fn new(key: &BlockKey, block: &Block, cfg: &Config, pool: &[PoolAddr]) -> Self {
        Self {
            host: ip(block.host),
            external: ip(key.addr),
            index: key.index,
            ports: geometry(cfg, pool, key.addr).and_then(|g| g.ports(key.index)),
            sessions: block.sessions,
            since: block.since,
        }
    }
}

/// The allocated blocks, by host, external address and index; blocks
/// being released (their count marked dying) are no longer anyone's.
pub fn block_rows(blocks: &[(BlockKey, Block)], cfg: &Config, pool: &[PoolAddr]) -> Vec<BlockRow> {
    let mut rows: Vec<BlockRow> = blocks
        .iter()
        .filter(|(_, b)| b.sessions < BLOCK_DYING)
        .map(|(k, b)| BlockRow::new(k, b, cfg, pool))
        .collect();
    rows.sort_by_key(|r| (r.host, r.external, r.index));
    rows
}

/// The block holding `port` of `external` now, if one does.
pub fn block_at(tables: &Tables, external: Ipv4Addr, port: u16) -> Result<Option<BlockRow>> {
    let cfg = tables.config()?;
    let pool = tables.pool()?;
    let addr = u32::from(external).to_be();
    let Some(index) = geometry(&cfg, &pool, addr).and_then(|g| g.block_of(port)) else {
        return Ok(None);
    };
    let key = BlockKey { addr, index };
    Ok(tables
        .block(addr, index)?
        .filter(|b| b.sessions < BLOCK_DYING)
        .map(|b| BlockRow::new(&key, &b, &cfg, &pool)))
}

/// The blocks internal host `host` holds now, in the order of its slots.
pub fn blocks_of(tables: &Tables, host: Ipv4Addr) -> Result<Vec<BlockRow>> {
    let cfg = tables.config()?;
    let pool = tables.pool()?;
    let host_be = u32::from(host).to_be();
    let Some(list) = tables.host_blocks_of(host_be)? else {
        return Ok(Vec::new());
    };
    let mut rows = Vec::new();
    for index in slot_indices(&list) {
        let key = BlockKey {
            addr: list.addr,
            index,
        };
        // A block is inserted before the slot naming it is claimed, and the
        // slot cleared before the block is deleted, so between the two
        // reads the slot may name a block that went back and was taken by
        // another host, or none: only a live block of this host counts.
        if let Some(block) = tables.block(list.addr, index)?
            && block.host == host_be
            && block.sessions < BLOCK_DYING
        {
            rows.push(BlockRow::new(&key, &block, &cfg, &pool));
        }
    }
    Ok(rows)
}

/// The block indices a host's list names.
pub fn slot_indices(list: &HostBlocks) -> impl Iterator<Item = u32> + '_ {
    list.slots
        .iter()
        .filter(|&&s| s != 0)
        .map(|&s| (s - 1) as u32)
}

/// Blocks in use and free on one external address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockUsage {
    pub external: Ipv4Addr,
    pub in_use: u64,
    pub free: u64,
}

/// Blocks in use and free per address of the pool, from the datapath's
/// counts by pool index.
pub fn block_usage(in_use: &[u64], cfg: &Config, pool: &[PoolAddr]) -> Vec<BlockUsage> {
    pool.iter()
        .zip(in_use)
        .map(|(p, &n)| {
            let total = geometry(cfg, pool, p.addr).map_or(0, |g| u64::from(g.blocks()));
            BlockUsage {
                external: ip(p.addr),
                in_use: n,
                free: total.saturating_sub(n),
            }
        })
        .collect()
}

/// The most blocks a host may hold under `max_blocks_per_host`.
pub fn block_limit(cfg: &Config) -> u32 {
    cfg.max_blocks_per_host.min(MAX_BLOCKS_PER_HOST as u32)
}

/// Hosts holding as many blocks as they may (`max-blocks-per-host`): the
/// next flow toward a destination their blocks have no port for is refused.
pub fn hosts_at_block_limit(hosts: &[(u32, HostBlocks)], cfg: &Config) -> u64 {
    let limit = block_limit(cfg);
    if limit == 0 {
        return 0;
    }
    hosts
        .iter()
        .filter(|(_, h)| slot_indices(h).count() as u32 >= limit)
        .count() as u64
}

/// Why the deterministic maps of an instance give no answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DetError {
    #[error(
        "the deterministic prefix map is empty (the instance was not loaded with allocation deterministic)"
    )]
    NoPrefixes,
    #[error("the pool holds no external address")]
    NoPool,
    #[error("the pool's addresses have different port ranges")]
    MixedRanges,
    #[error("deterministic prefixes {0} and {1} overlap")]
    Overlap(String, String),
    #[error(
        "deterministic prefix {prefix} is numbered from {held} in the map, from {formula} by the formula"
    )]
    Base {
        prefix: String,
        held: u32,
        formula: u64,
    },
    #[error(
        "the config map gives {held_per} hosts per address and {held_range} ports each, the formula over the prefixes and the pool {per} and {range}"
    )]
    Layout {
        held_per: u32,
        held_range: u32,
        per: u64,
        range: u32,
    },
    #[error("{hosts} internal addresses over {addresses} external ones leave no port for a host")]
    NoRange { hosts: u64, addresses: u32 },
}

fn show(p: &Prefix) -> String {
    format!("{}/{}", Ipv4Addr::from(p.network), p.len)
}

/// One internal host's deterministic share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DetShare {
    /// Its number in the numbering of the internal addresses.
    pub index: u64,
    pub external: Ipv4Addr,
    pub port_min: u16,
    pub port_max: u16,
}

/// Deterministic NAT as an instance holds it: its prefixes and their
/// numbering, its pool and the layout the formula gives, checked against
/// what the datapath reads (the prefix map's bases, the config map's hosts
/// per address and ports per host), so an answer is the datapath's.
#[derive(Clone, Debug)]
pub struct Deterministic {
    prefixes: Vec<Prefix>,
    pool: Vec<Ipv4Addr>,
    layout: Layout,
}

impl Deterministic {
    /// From the prefix map's entries (sorted by network), the pool and the
    /// config map.
    pub fn new(
        prefixes: &[(Prefix, DetPrefix)],
        pool: &[PoolAddr],
        cfg: &Config,
    ) -> Result<Self, DetError> {
        if prefixes.is_empty() {
            return Err(DetError::NoPrefixes);
        }
        let first = pool.first().ok_or(DetError::NoPool)?;
        if pool
            .iter()
            .any(|p| (p.port_min, p.port_max) != (first.port_min, first.port_max))
        {
            return Err(DetError::MixedRanges);
        }
        let list: Vec<Prefix> = prefixes.iter().map(|(p, _)| *p).collect();
        for pair in list.windows(2) {
            if u64::from(pair[0].network) + pair[0].size() > u64::from(pair[1].network) {
                return Err(DetError::Overlap(show(&pair[0]), show(&pair[1])));
            }
        }
        let numbering = Numbering { prefixes: &list };
        for ((prefix, held), (_, base)) in prefixes.iter().zip(numbering.bases()) {
            if u64::from(held.base) != base || held.network != prefix.network {
                return Err(DetError::Base {
                    prefix: show(prefix),
                    held: held.base,
                    formula: base,
                });
            }
        }
        let layout = Layout {
            hosts: numbering.hosts(),
            addresses: pool.len() as u32,
            port_min: first.port_min,
            port_max: first.port_max,
        };
        if layout.range() == 0 {
            return Err(DetError::NoRange {
                hosts: layout.hosts,
                addresses: layout.addresses,
            });
        }
        if u64::from(cfg.det_per_address) != layout.per_address() || cfg.det_range != layout.range()
        {
            return Err(DetError::Layout {
                held_per: cfg.det_per_address,
                held_range: cfg.det_range,
                per: layout.per_address(),
                range: layout.range(),
            });
        }
        Ok(Self {
            prefixes: list,
            pool: pool.iter().map(|p| ip(p.addr)).collect(),
            layout,
        })
    }

    /// As the running instance holds it.
    pub fn read(tables: &Tables) -> Result<Self> {
        let cfg = tables.config()?;
        Self::new(&tables.det_prefixes()?, &tables.pool()?, &cfg)
            .context("the instance's deterministic maps give no answer")
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// `internal`'s external address and ports; `None` outside the prefixes.
    pub fn share(&self, internal: Ipv4Addr) -> Option<DetShare> {
        let numbering = Numbering {
            prefixes: &self.prefixes,
        };
        let index = numbering.index(u32::from(internal))?;
        let share = self.layout.share(index)?;
        Some(DetShare {
            index,
            external: *self.pool.get(share.address as usize)?,
            port_min: share.port_min,
            port_max: share.port_max,
        })
    }

    /// The one internal address whose share holds `port` of `external`;
    /// `None` for an address outside the pool or a port in no share.
    pub fn owner(&self, external: Ipv4Addr, port: u16) -> Option<Ipv4Addr> {
        let address = self.pool.iter().position(|a| *a == external)? as u32;
        let index = self.layout.host(address, port)?;
        Numbering {
            prefixes: &self.prefixes,
        }
        .address(index)
        .map(Ipv4Addr::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool_of(addrs: &[Ipv4Addr], lo: u16, hi: u16) -> Vec<PoolAddr> {
        addrs
            .iter()
            .map(|a| PoolAddr {
                addr: u32::from(*a).to_be(),
                port_min: lo,
                port_max: hi,
                ..PoolAddr::default()
            })
            .collect()
    }

    /// The entries a loader numbering `prefixes` in order writes.
    fn det_entries(prefixes: &[Prefix]) -> Vec<(Prefix, DetPrefix)> {
        Numbering { prefixes }
            .bases()
            .map(|(p, base)| {
                (
                    p,
                    DetPrefix {
                        network: p.network,
                        base: base as u32,
                    },
                )
            })
            .collect()
    }

    const SLASH_24: Prefix = Prefix {
        network: 0x0a00_0700,
        len: 24,
    };

    fn four_addresses() -> Vec<Ipv4Addr> {
        (1..=4).map(|i| Ipv4Addr::new(203, 0, 113, i)).collect()
    }

    fn config_for(layout: &Layout) -> Config {
        Config {
            allocation: allocation::DETERMINISTIC,
            det_per_address: layout.per_address() as u32,
            det_range: layout.range(),
            ..Config::default()
        }
    }

    /// Every port of a /24 on four addresses, both ways, against the
    /// formula written out here: host i on address i / 64, ports
    /// 1024 + (i % 64) * 999 .. + 998, the last 41 ports nobody's.
    #[test]
    fn a_slash_24_on_four_addresses_is_exact_for_every_port() {
        let pool_addrs = four_addresses();
        let pool = pool_of(&pool_addrs, 1024, 65000);
        let layout = Layout {
            hosts: 256,
            addresses: 4,
            port_min: 1024,
            port_max: 65000,
        };
        let det = Deterministic::new(&det_entries(&[SLASH_24]), &pool, &config_for(&layout))
            .expect("a consistent layout");
        assert_eq!(det.layout(), layout);
        for i in 0..256u32 {
            let host = Ipv4Addr::from(SLASH_24.network + i);
            let share = det.share(host).expect("every host of the /24 has a share");
            let lo = 1024 + (i % 64) * 999;
            assert_eq!(
                (
                    share.external,
                    u32::from(share.port_min),
                    u32::from(share.port_max)
                ),
                (pool_addrs[(i / 64) as usize], lo, lo + 998),
                "{host}"
            );
            let formula = layout.share(u64::from(i)).unwrap();
            assert_eq!(
                (share.port_min, share.port_max),
                (formula.port_min, formula.port_max)
            );
        }
        for (a, external) in pool_addrs.iter().enumerate() {
            for port in 0..=u16::MAX {
                let want = (1024..1024 + 64 * 999).contains(&u32::from(port)).then(|| {
                    let slot = (u32::from(port) - 1024) / 999;
                    Ipv4Addr::from(SLASH_24.network + a as u32 * 64 + slot)
                });
                let got = det.owner(*external, port);
                assert_eq!(got, want, "{external}:{port}");
                let formula = layout
                    .host(a as u32, port)
                    .map(|i| Ipv4Addr::from(SLASH_24.network + i as u32));
                assert_eq!(got, formula, "{external}:{port}");
                if let Some(host) = got {
                    let share = det.share(host).unwrap();
                    assert_eq!(share.external, *external);
                    assert!((share.port_min..=share.port_max).contains(&port));
                }
            }
        }
        assert_eq!(det.owner(Ipv4Addr::new(203, 0, 113, 5), 2000), None);
        assert_eq!(det.share(Ipv4Addr::new(10, 0, 8, 0)), None);
    }

    #[test]
    fn maps_that_disagree_with_the_formula_give_no_answer() {
        let pool = pool_of(&four_addresses(), 1024, 65000);
        let layout = Layout {
            hosts: 256,
            addresses: 4,
            port_min: 1024,
            port_max: 65000,
        };
        let cfg = config_for(&layout);
        let entries = det_entries(&[SLASH_24]);
        assert_eq!(
            Deterministic::new(&[], &pool, &cfg).unwrap_err(),
            DetError::NoPrefixes
        );
        assert_eq!(
            Deterministic::new(&entries, &[], &cfg).unwrap_err(),
            DetError::NoPool
        );
        let stale = Config {
            det_range: 998,
            ..cfg
        };
        assert!(matches!(
            Deterministic::new(&entries, &pool, &stale),
            Err(DetError::Layout { .. })
        ));
        let mut shifted = entries.clone();
        shifted[0].1.base = 1;
        assert!(matches!(
            Deterministic::new(&shifted, &pool, &cfg),
            Err(DetError::Base { .. })
        ));
        let two = [
            SLASH_24,
            Prefix {
                network: 0x0a00_0780,
                len: 25,
            },
        ];
        assert!(matches!(
            Deterministic::new(&det_entries(&two), &pool, &cfg),
            Err(DetError::Overlap(..))
        ));
        let mut mixed = pool.clone();
        mixed[3].port_max = 60000;
        assert_eq!(
            Deterministic::new(&entries, &mixed, &cfg).unwrap_err(),
            DetError::MixedRanges
        );
    }

    #[test]
    fn blocks_are_read_with_the_pool_range_and_the_block_size() {
        let pool = pool_of(&four_addresses()[..2], 1024, 2047);
        let cfg = Config {
            allocation: allocation::BLOCKS,
            block_size: 256,
            max_blocks_per_host: 2,
            ..Config::default()
        };
        let host = u32::from(Ipv4Addr::new(10, 0, 7, 9)).to_be();
        let key = BlockKey {
            addr: pool[1].addr,
            index: 3,
        };
        let blocks = [
            (
                key,
                Block {
                    sessions: 2,
                    since: 5,
                    host,
                    slot: 0,
                    addr: pool[1].addr,
                    index: 3,
                },
            ),
            (
                BlockKey {
                    addr: pool[1].addr,
                    index: 1,
                },
                Block {
                    sessions: BLOCK_DYING,
                    since: 1,
                    host,
                    slot: 1,
                    addr: pool[1].addr,
                    index: 1,
                },
            ),
        ];
        let rows = block_rows(&blocks, &cfg, &pool);
        assert_eq!(
            rows,
            [BlockRow {
                host: Ipv4Addr::new(10, 0, 7, 9),
                external: Ipv4Addr::new(203, 0, 113, 2),
                index: 3,
                ports: Some((1792, 2047)),
                sessions: 2,
                since: 5,
            }]
        );
        let usage = block_usage(&[1, 4, 9], &cfg, &pool);
        assert_eq!(
            usage.iter().map(|u| (u.in_use, u.free)).collect::<Vec<_>>(),
            [(1, 3), (4, 0)]
        );
        let mut full = HostBlocks {
            addr: pool[1].addr,
            ..HostBlocks::default()
        };
        full.slots[0] = 4;
        full.slots[5] = 2;
        let mut one = full;
        one.slots[5] = 0;
        assert_eq!(slot_indices(&full).collect::<Vec<_>>(), [3, 1]);
        assert_eq!(hosts_at_block_limit(&[(1, full), (2, one)], &cfg), 1);
    }
}
