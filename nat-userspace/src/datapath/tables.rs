//! Typed handles on the NAT's maps, opened from an `Ebpf` at load or from pins later.

use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{Context as _, Result};
use aya::maps::{
    Array, HashMap, IterableMap as _, LpmTrie, Map, MapData, MapError, PerCpuArray, lpm_trie::Key,
};
use nat_common::{
    blocks::{Block, BlockKey, HostBlocks},
    config::{Config, MAX_POOL, PoolAddr},
    counters::Counter,
    deterministic::{DetPrefix, Prefix},
    flow::{FlowKey, PROTO_ICMP, PROTO_TCP, PROTO_UDP, Session},
    hosts::{HOST_DYING, HostEntry},
    mapping::{EndpointKey, Mapping, Owner, SESSION_INBOUND, SESSION_MAPPED},
    names::{
        MAP_BLOCK_USE, MAP_BLOCKS, MAP_CONFIG, MAP_COOLDOWN, MAP_DET_PREFIXES, MAP_EIM,
        MAP_EIM_OWNER, MAP_FWD, MAP_HOST_BLOCKS, MAP_HOSTS, MAP_LIVE, MAP_POOL, MAP_PROBES,
        MAP_REV, MAP_STATS,
    },
    probe::PROBE_BUCKETS,
    seen_word::{bits, current_rev_bits},
    tcp_state::{Sent, State, state_of, window_shift},
};

use crate::datapath::{batch, pins::PinDir};

/// The maps stay private: callers go through the operations below, which
/// keep the order the cooldown guarantee depends on in one place.
pub struct Tables {
    fwd: HashMap<MapData, FlowKey, Session>,
    rev: HashMap<MapData, FlowKey, Session>,
    /// Reverse key -> boot-clock ns when it may be reused.
    cooldown: HashMap<MapData, FlowKey, u64>,
    config: Array<MapData, Config>,
    pool: Array<MapData, PoolAddr>,
    stats: PerCpuArray<MapData, u64>,
    probes: PerCpuArray<MapData, u64>,
    hosts: HashMap<MapData, u32, HostEntry>,
    /// Live sessions over all hosts.
    live: Array<MapData, u64>,
    eim: HashMap<MapData, EndpointKey, Mapping>,
    eim_owner: HashMap<MapData, EndpointKey, Owner>,
    /// Port blocks by (external address, block index).
    blocks: HashMap<MapData, BlockKey, Block>,
    /// Each internal host's blocks, keyed by its address (network order).
    host_blocks: HashMap<MapData, u32, HostBlocks>,
    /// Blocks in use per pool index.
    block_use: Array<MapData, u64>,
    /// Deterministic NAT's numbering of the internal prefixes.
    det_prefixes: LpmTrie<MapData, u32, DetPrefix>,
}

impl Tables {
    pub fn open(pins: &PinDir) -> Result<Self> {
        Self::build(|name| {
            let path = pins.path(name);
            let data = MapData::from_pin(&path)
                .with_context(|| format!("cannot open pinned map {}", path.display()))?;
            Map::from_map_data(data)
                .with_context(|| format!("unexpected map type at {}", path.display()))
        })
    }

    /// Takes the maps out of a freshly loaded object (after they were pinned).
    pub fn from_ebpf(ebpf: &mut aya::Ebpf) -> Result<Self> {
        Self::build(|name| {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing from the object"))
        })
    }

    /// From maps handed over one by one, by name (the fixture harness hands
    /// over duplicates of its object's).
    pub fn build(mut take: impl FnMut(&str) -> Result<Map>) -> Result<Self> {
        Ok(Self {
            fwd: take(MAP_FWD)?.try_into().context("forward session map")?,
            rev: take(MAP_REV)?.try_into().context("reverse session map")?,
            cooldown: take(MAP_COOLDOWN)?.try_into().context("cooldown map")?,
            config: take(MAP_CONFIG)?.try_into().context("config map")?,
            pool: take(MAP_POOL)?.try_into().context("pool map")?,
            stats: take(MAP_STATS)?.try_into().context("stats map")?,
            probes: take(MAP_PROBES)?
                .try_into()
                .context("probe histogram map")?,
            hosts: take(MAP_HOSTS)?.try_into().context("host count map")?,
            live: take(MAP_LIVE)?
                .try_into()
                .context("live session count map")?,
            eim: take(MAP_EIM)?.try_into().context("mapping map")?,
            eim_owner: take(MAP_EIM_OWNER)?
                .try_into()
                .context("mapping owner map")?,
            blocks: take(MAP_BLOCKS)?.try_into().context("block map")?,
            host_blocks: take(MAP_HOST_BLOCKS)?
                .try_into()
                .context("host block map")?,
            block_use: take(MAP_BLOCK_USE)?.try_into().context("block use map")?,
            det_prefixes: take(MAP_DET_PREFIXES)?
                .try_into()
                .context("deterministic prefix map")?,
        })
    }

    pub fn config(&self) -> Result<Config> {
        self.config.get(&0, 0).context("cannot read the config map")
    }

    pub fn set_config(&mut self, cfg: Config) -> Result<()> {
        self.config
            .set(0, cfg, 0)
            .context("cannot write the config map")
    }

    /// The external addresses in use, in pool order.
    /// Writes entry `index` of the pool (a live reload of the addresses or range).
    pub fn set_pool_entry(&mut self, index: u32, entry: PoolAddr) -> Result<()> {
        self.pool
            .set(index, entry, 0)
            .context("cannot write the pool map")
    }

    pub fn pool(&self) -> Result<Vec<PoolAddr>> {
        let len = self.config()?.pool_len;
        (0..len)
            .map(|i| self.pool.get(&i, 0).context("cannot read the pool map"))
            .collect()
    }

    /// Probe histogram totals over all CPUs, indexed by bucket.
    pub fn probe_histogram(&self) -> Result<Vec<u64>> {
        (0..PROBE_BUCKETS)
            .map(|b| {
                let per_cpu = self
                    .probes
                    .get(&b, 0)
                    .context("cannot read the probe histogram")?;
                Ok(per_cpu.iter().sum())
            })
            .collect()
    }

    /// Every cooldown entry with its end time, ended ones included.
    pub fn cooldown_entries(&self) -> Result<Vec<(FlowKey, u64)>> {
        batch::lookup_all(self.cooldown.map()).context("cannot read the cooldown map")
    }

    /// Cooling keys with their end time, skipping entries that ended already.
    pub fn cooling(&self, now: u64) -> Result<Vec<(FlowKey, u64)>> {
        let mut all = self.cooldown_entries()?;
        all.retain(|(_, until)| *until > now);
        Ok(all)
    }

    /// Counter totals over all CPUs, in [`Counter::ALL`] order.
    pub fn counters(&self) -> Result<Vec<(Counter, u64)>> {
        Counter::ALL
            .iter()
            .map(|&c| {
                let per_cpu = self
                    .stats
                    .get(&(c as u32), 0)
                    .with_context(|| format!("cannot read counter {}", c.name()))?;
                Ok((c, per_cpu.iter().sum()))
            })
            .collect()
    }

    /// Live sessions per internal address as the datapath counts them,
    /// hosts being deleted (count reached zero) left out.
    pub fn host_counts(&self) -> Result<Vec<(Ipv4Addr, u64)>> {
        let all: Vec<(u32, HostEntry)> =
            batch::lookup_all(self.hosts.map()).context("cannot read the host count map")?;
        Ok(all
            .into_iter()
            .filter(|(_, e)| e.sessions < HOST_DYING)
            .map(|(addr, e)| (Ipv4Addr::from(u32::from_be(addr)), e.sessions))
            .collect())
    }

    /// Every port block, read in batches, blocks being released included
    /// (their `sessions` at or above [`nat_common::blocks::BLOCK_DYING`]).
    pub fn blocks(&self) -> Result<Vec<(BlockKey, Block)>> {
        batch::lookup_all(self.blocks.map()).context("cannot read the block map")
    }

    /// The block `index` of external address `addr` (network order), if allocated.
    pub fn block(&self, addr: u32, index: u32) -> Result<Option<Block>> {
        match self.blocks.get(&BlockKey { addr, index }, 0) {
            Ok(b) => Ok(Some(b)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).context("cannot read the block map"),
        }
    }

    /// Every host's block list, read in batches, keyed by its address
    /// (network order).
    pub fn host_blocks(&self) -> Result<Vec<(u32, HostBlocks)>> {
        batch::lookup_all(self.host_blocks.map()).context("cannot read the host block map")
    }

    /// The block list of internal host `addr` (network order), if it holds any.
    pub fn host_blocks_of(&self, addr: u32) -> Result<Option<HostBlocks>> {
        match self.host_blocks.get(&addr, 0) {
            Ok(h) => Ok(Some(h)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).context("cannot read the host block map"),
        }
    }

    /// Blocks in use on each external address, by pool index (every index
    /// the map has, in use by the pool or not).
    pub fn block_use(&self) -> Result<Vec<u64>> {
        (0..MAX_POOL)
            .map(|i| {
                self.block_use
                    .get(&i, 0)
                    .context("cannot read the block use map")
            })
            .collect()
    }

    /// Deterministic NAT's prefixes with what the map says of each, sorted
    /// by network address. An LPM trie has no batch lookup: entry by entry,
    /// at most [`nat_common::deterministic::MAX_PREFIXES`].
    pub fn det_prefixes(&self) -> Result<Vec<(Prefix, DetPrefix)>> {
        let keys: Vec<Key<u32>> = self
            .det_prefixes
            .keys()
            .collect::<Result<_, _>>()
            .context("cannot list the deterministic prefix map")?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let value = match self.det_prefixes.get(&key, 0) {
                Ok(v) => v,
                // Removed since the walk listed it.
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(e).context("cannot read the deterministic prefix map"),
            };
            let prefix = Prefix {
                network: u32::from_be(key.data()),
                len: key.prefix_len() as u8,
            };
            out.push((prefix, value));
        }
        out.sort_by_key(|(p, _)| (p.network, p.len));
        Ok(out)
    }

    /// Every forward entry, read in batches.
    pub fn forward_entries(&self) -> Result<Vec<(FlowKey, Session)>> {
        batch::lookup_all(self.fwd.map()).context("cannot read the forward session map")
    }

    /// Every reverse entry, read in batches.
    pub fn reverse_entries(&self) -> Result<Vec<(FlowKey, Session)>> {
        batch::lookup_all(self.rev.map()).context("cannot read the reverse session map")
    }

    /// One session as it is now, read entry by entry (a packet may have
    /// changed it since a batch read), with its reverse key; `None` once the
    /// forward entry is gone.
    pub fn session(&self, key: &FlowKey) -> Option<(FlowKey, SessionView)> {
        let fwd = self.fwd.get(key, 0).ok()?;
        let rev_key = key.translated(fwd.addr, fwd.port);
        let rev = self.rev.get(&rev_key, 0).ok();
        Some((rev_key, SessionView::new(key, &fwd, rev.as_ref())))
    }

    /// Cools a reverse key until `until` (boot-clock ns).
    pub fn cool(&mut self, key: FlowKey, until: u64) -> Result<(), MapError> {
        self.cooldown.insert(key, until, 0)
    }

    /// Frees a session as the datapath's sweep does (`free_session` in
    /// `nat-ebpf/src/session/free.rs`), less the cooldown, which is the caller's
    /// ([`Tables::cool`] first): the forward entry goes first, so egress can
    /// no longer pick the pair up; only if that delete found it, the
    /// reference it holds on its endpoint-independent mapping and its
    /// host's count are given back (a session opened from outside through a
    /// mapping's filter is counted for no host); then the reverse entry,
    /// which holds the external port claimed until that moment. Both deletes
    /// are tried; the first error is returned. The counts are read and
    /// written back, not changed atomically as the datapath changes them:
    /// for sessions of hosts no packet reaches meanwhile (the benchmarks').
    pub fn release_session(&mut self, key: &FlowKey, rev_key: &FlowKey) -> Result<(), MapError> {
        let marks = self.fwd.get(key, 0).map(|f| f.mapping);
        let fwd = self.fwd.remove(key);
        let counts = match (&fwd, marks) {
            (Ok(()), Ok(marks)) => {
                let mapping = if marks & SESSION_MAPPED != 0 {
                    self.release_mapping(key)
                } else {
                    Ok(())
                };
                let host = if marks & SESSION_INBOUND == 0 {
                    self.release_host(key.saddr)
                } else {
                    Ok(())
                };
                mapping.and(host)
            }
            _ => Ok(()),
        };
        let rev = self.rev.remove(rev_key);
        fwd.and(counts).and(rev)
    }

    /// One reference of the mapping of `key`'s internal endpoint given back;
    /// the last one deletes it, its mapping entry first and its owner entry,
    /// which reserves the external port, last (`nat-ebpf` `session/mapping_ref.rs`).
    fn release_mapping(&mut self, key: &FlowKey) -> Result<(), MapError> {
        let internal = EndpointKey::new(key.proto, key.saddr, key.sport);
        let m = match self.eim.get(&internal, 0) {
            Ok(m) => m,
            Err(MapError::KeyNotFound) => return Ok(()),
            Err(e) => return Err(e),
        };
        match m.refs {
            0 => Ok(()),
            // Gone already (the datapath released it meanwhile): released.
            1 => {
                gone_is_ok(self.eim.remove(&internal))?;
                gone_is_ok(
                    self.eim_owner
                        .remove(&EndpointKey::new(key.proto, m.addr, m.port)),
                )
            }
            refs => self.eim.insert(
                internal,
                Mapping {
                    refs: refs - 1,
                    ..m
                },
                0,
            ),
        }
    }

    /// One of `saddr`'s sessions given back, and one of the total: the host
    /// entry deleted when it reaches zero, a dying one left alone, the total
    /// never below zero (`nat-ebpf` `session/hosts.rs`).
    fn release_host(&mut self, saddr: u32) -> Result<(), MapError> {
        let host = match self.hosts.get(&saddr, 0) {
            Ok(e) if e.addr == saddr && (1..HOST_DYING).contains(&e.sessions) => {
                if e.sessions == 1 {
                    self.hosts.remove(&saddr)
                } else {
                    self.hosts.insert(
                        saddr,
                        HostEntry {
                            sessions: e.sessions - 1,
                            ..e
                        },
                        0,
                    )
                }
            }
            Ok(_) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e),
        };
        let live = self.live.get(&0, 0)?;
        self.live.set(0, live.saturating_sub(1), 0)?;
        host
    }

    /// Claims a reverse key with a holder entry, as the datapath's
    /// allocation does (for the benchmarks, which stage occupied ports).
    pub fn hold_reverse(&mut self, key: FlowKey, holder: Session) -> Result<(), MapError> {
        self.rev.insert(key, holder, 0)
    }

    /// Writes whole sessions in batches (for the benchmarks).
    pub fn fill_sessions(
        &self,
        fwd: &[(FlowKey, Session)],
        rev: &[(FlowKey, Session)],
    ) -> Result<()> {
        batch::update_all(self.fwd.map(), fwd).context("cannot fill the forward session map")?;
        batch::update_all(self.rev.map(), rev).context("cannot fill the reverse session map")
    }

    /// Every session, joined from its forward and reverse entries. Both maps
    /// are read in batches, then joined here.
    pub fn sessions(&self) -> Result<Vec<SessionView>> {
        let fwd = self.forward_entries()?;
        let rev: std::collections::HashMap<FlowKey, Session> =
            self.reverse_entries()?.into_iter().collect();
        Ok(fwd
            .iter()
            .map(|(key, f)| SessionView::new(key, f, rev.get(&key.translated(f.addr, f.port))))
            .collect())
    }
}

/// One session as the CLI and the sweep see it.
#[derive(Clone, Debug)]
pub struct SessionView {
    pub proto: u8,
    pub internal: SocketAddrV4,
    pub external: SocketAddrV4,
    pub remote: SocketAddrV4,
    pub state: State,
    /// Seen bits of the forward and reverse entries.
    pub fwd_seen: u8,
    pub rev_seen: u8,
    /// Boot-clock nanoseconds of the last packet in either direction.
    pub last_seen: u64,
    /// False when the reverse entry is missing (being created or freed).
    pub paired: bool,
    /// The session is on its internal endpoint's endpoint-independent
    /// mapping (else its port was picked for this destination alone).
    pub independent: bool,
    /// TCP: what the NAT saw the internal host and the remote send in this
    /// connection, which resets are judged by.
    pub tcp: Option<[TcpSide; 2]>,
}

/// What one TCP host of a session sent, as its entry records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSide {
    /// Its latest acknowledgment number and window field (unscaled), once
    /// it acknowledged anything in this connection.
    pub acked: Option<(u32, u16)>,
    /// Its window in bytes: the field scaled as both SYNs agreed.
    pub window_bytes: Option<u64>,
    /// The shift its SYN's window scale option announced (capped at 14).
    pub wscale: Option<u8>,
    /// Where its last segment ended, once it sent any in this connection.
    pub sent_end: Option<u32>,
}

impl TcpSide {
    fn new(own: &Sent, other: &Sent) -> Self {
        use nat_common::{flow::seen, tcp_state::WSCALE_SENT};
        let wscale = own.syn_wscale();
        let acked = (own.seen & seen::ACK != 0).then_some((own.acked, own.window));
        Self {
            acked,
            window_bytes: acked
                .map(|(_, w)| u64::from(w) << window_shift(wscale, other.syn_wscale())),
            wscale: (wscale & WSCALE_SENT != 0).then_some(wscale & !WSCALE_SENT),
            sent_end: (own.seen != 0).then_some(own.sent_end),
        }
    }
}

fn sent(s: &Session, seen: u8) -> Sent {
    Sent {
        seen,
        acked: s.acked,
        window: s.window,
        wscale: s.wscale,
        sent_end: s.sent_end,
    }
}

impl SessionView {
    pub fn new(key: &FlowKey, fwd: &Session, rev: Option<&Session>) -> Self {
        // Reverse bits of a connection since reopened on this mapping do not count.
        let rev_seen = rev.map_or(0, |r| current_rev_bits(fwd.seen, r.seen));
        let rev_last = rev.map_or(0, |r| r.last_seen);
        Self {
            proto: key.proto,
            internal: endpoint(key.saddr, key.sport),
            external: endpoint(fwd.addr, fwd.port),
            remote: endpoint(key.daddr, key.dport),
            state: state_of(key.proto, bits(fwd.seen), rev_seen),
            fwd_seen: bits(fwd.seen),
            rev_seen,
            last_seen: fwd.last_seen.max(rev_last),
            paired: rev.is_some(),
            independent: fwd.mapping & SESSION_MAPPED != 0,
            tcp: (key.proto == PROTO_TCP).then(|| {
                let internal = sent(fwd, bits(fwd.seen));
                let remote = rev.map_or(Sent::default(), |r| sent(r, rev_seen));
                [
                    TcpSide::new(&internal, &remote),
                    TcpSide::new(&remote, &internal),
                ]
            }),
        }
    }

    /// The mapping this session belongs to, as `mapping-udp` names its kind.
    pub fn mapping_name(&self) -> &'static str {
        if self.independent {
            "endpoint-independent"
        } else {
            "address-port-dependent"
        }
    }

    pub fn proto_name(&self) -> &'static str {
        proto_name(self.proto)
    }
}

pub fn proto_name(proto: u8) -> &'static str {
    match proto {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        PROTO_ICMP => "icmp",
        _ => "other",
    }
}

/// A socket address from network-order fields as stored in the maps.
pub fn endpoint(addr_be: u32, port_be: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(u32::from_be(addr_be)), u16::from_be(port_be))
}

/// The clock the datapath stamps sessions with (bpf_ktime_get_boot_ns).
pub fn boot_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .expect("CLOCK_BOOTTIME is always available");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

fn gone_is_ok(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        r => r,
    }
}
