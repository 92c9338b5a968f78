//! The maps the layers above share, in the bottom layer: every map whose
//! value is a `nat_common` type or a plain number, the load-time globals
//! the loader sets, and the lookups everything asks (the outcome counters,
//! internal and external addresses). A map whose value is a type of an
//! upper module is defined in that module (the allocator's probe state,
//! the hairpin's plan, the sweep's walk, batch and timer). Map names are
//! the constants in `nat_common::names`: user space finds maps by name,
//! wherever they are defined here.

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use nat_common::{
    blocks::{Block, BlockKey, HostBlocks},
    config::{Config, MAX_POOL, PoolAddr},
    counters::{COUNTER_COUNT, Counter},
    deterministic::{DetPrefix, MAX_PREFIXES},
    event_rate::EventRate,
    flow::{FlowKey, FragEntry, FragKey, Session},
    hosts::HostEntry,
    mapping::{EndpointKey, Mapping, Owner, PeerKey},
    port_forward::{ForwardKey, ForwardTarget, MAX_FORWARD_ENTRIES},
    probe::PROBE_BUCKETS,
    sweep::{SWEEP_TOTALS, SweepControl},
};

/// Default capacity; the loader overrides it with `--max-sessions`.
const DEFAULT_SESSIONS: u32 = 262_144;

#[map(name = "NAT_FWD")]
pub static NAT_FWD: HashMap<FlowKey, Session> = HashMap::with_max_entries(DEFAULT_SESSIONS, 0);

#[map(name = "NAT_REV")]
pub static NAT_REV: HashMap<FlowKey, Session> = HashMap::with_max_entries(DEFAULT_SESSIONS, 0);

/// Cooling keys (reverse-map keys) -> boot-clock ns when the key may be reused.
#[map(name = "NAT_COOLDOWN")]
pub static NAT_COOLDOWN: HashMap<FlowKey, u64> = HashMap::with_max_entries(2 * DEFAULT_SESSIONS, 0);

/// Endpoint-independent mappings, by internal endpoint (`flows::mapping`).
/// At most one per forward session: the loader sizes it like the sessions.
#[map(name = "NAT_EIM")]
pub static NAT_EIM: HashMap<EndpointKey, Mapping> = HashMap::with_max_entries(DEFAULT_SESSIONS, 0);

/// The same mappings by external endpoint.
#[map(name = "NAT_EIM_OWNER")]
pub static NAT_EIM_OWNER: HashMap<EndpointKey, Owner> =
    HashMap::with_max_entries(DEFAULT_SESSIONS, 0);

/// Remote addresses each mapping's endpoint sent to. LRU: an entry of a
/// mapping that is gone is never read again (its `born` no longer
/// matches), so eviction is all the cleanup it needs; an evicted live
/// entry makes the filter refuse, never admit.
#[map(name = "NAT_EIM_PEERS")]
pub static NAT_EIM_PEERS: LruHashMap<PeerKey, u64> =
    LruHashMap::with_max_entries(DEFAULT_SESSIONS, 0);
/// Live sessions per internal address. Not preallocated: an entry the
/// sweep deletes is freed only after every program run that may still hold
/// a pointer to it has ended (see `session::hosts`). The loader sizes it as the
/// session maps: every entry but a dying one holds at least one session.
#[map(name = "NAT_HOSTS")]
pub static NAT_HOSTS: HashMap<u32, HostEntry> =
    HashMap::with_max_entries(DEFAULT_SESSIONS, 1 /* BPF_F_NO_PREALLOC */);

/// Live session pairs over all hosts, for the table-pressure check.
#[map(name = "NAT_LIVE")]
pub static NAT_LIVE: Array<u64> = Array::with_max_entries(1, 0);

/// Static port forwards; written by the loader and `nat forward` only.
#[map(name = "NAT_FORWARD")]
pub static NAT_FORWARD: HashMap<ForwardKey, ForwardTarget> =
    HashMap::with_max_entries(MAX_FORWARD_ENTRIES, 0);

/// One forward-map key per CPU, for a lookup from a frame with no stack
/// to spare (the claim's check of forwarded ports, `session::claim`);
/// never pinned.
#[map(name = "NAT_FORWARD_KEY")]
pub static NAT_FORWARD_KEY: PerCpuArray<ForwardKey> = PerCpuArray::with_max_entries(1, 0);

/// One session entry per CPU, where a new session is put together before
/// it is inserted; never pinned.
#[map(name = "NAT_SCRATCH")]
pub static NAT_SCRATCH: PerCpuArray<Session> = PerCpuArray::with_max_entries(1, 0);

/// The event log's rate limit, one window per CPU; never pinned.
#[map(name = "NAT_EVENT_RATE")]
pub static NAT_EVENT_RATE: PerCpuArray<EventRate> = PerCpuArray::with_max_entries(1, 0);

/// The walk over a SYN's TCP options, one per CPU
/// ([`nat_common::tcp_state::OptionWalk`]); never pinned.
#[map(name = "NAT_TCP_OPTIONS")]
pub static NAT_TCP_OPTIONS: PerCpuArray<nat_common::tcp_state::OptionWalk> =
    PerCpuArray::with_max_entries(1, 0);

#[map(name = "NAT_PROBES")]
pub static NAT_PROBES: PerCpuArray<u64> = PerCpuArray::with_max_entries(PROBE_BUCKETS, 0);

#[map(name = "NAT_FRAGS")]
pub static NAT_FRAGS: LruHashMap<FragKey, FragEntry> = LruHashMap::with_max_entries(16_384, 0);

/// Port blocks by (external address, block index) (`flows::blocks`); the
/// loader sizes it to every block of the pool.
#[map(name = "NAT_BLOCKS")]
pub static NAT_BLOCKS: HashMap<BlockKey, Block> = HashMap::with_max_entries(16_384, 0);

/// Each internal host's blocks. Not preallocated, as NAT_HOSTS: an entry
/// deleted with the host's last block is freed only after every program
/// run that may still hold a pointer to it has ended.
#[map(name = "NAT_HOST_BLOCKS")]
pub static NAT_HOST_BLOCKS: HashMap<u32, HostBlocks> =
    HashMap::with_max_entries(16_384, 1 /* BPF_F_NO_PREALLOC */);

/// Blocks in use per external address (pool index), changed only by
/// atomic adds: the pool threshold's and the metrics' count.
#[map(name = "NAT_BLOCK_USE")]
pub static NAT_BLOCK_USE: Array<u64> = Array::with_max_entries(MAX_POOL, 0);

/// Deterministic NAT's numbering of the internal prefixes.
#[map(name = "NAT_DET_PREFIXES")]
pub static NAT_DET_PREFIXES: LpmTrie<u32, DetPrefix> =
    LpmTrie::with_max_entries(MAX_PREFIXES as u32, 1 /* BPF_F_NO_PREALLOC */);

/// Compliance events for the daemon's IPFIX and syslog exports.
#[map(name = "NAT_EVENTS")]
pub static NAT_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

#[map(name = "NAT_REJECTS")]
pub static NAT_REJECTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

#[map(name = "NAT_CONFIG")]
pub static NAT_CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map(name = "NAT_POOL")]
pub static NAT_POOL: Array<PoolAddr> = Array::with_max_entries(MAX_POOL, 0);

/// Key data is the address in network byte order.
#[map(name = "NAT_INTERNAL")]
pub static NAT_INTERNAL: LpmTrie<u32, u8> =
    LpmTrie::with_max_entries(256, 1 /* BPF_F_NO_PREALLOC */);

#[map(name = "NAT_STATS")]
pub static NAT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

#[map(name = "NAT_SWEEP_CTL")]
pub static NAT_SWEEP_CTL: Array<SweepControl> = Array::with_max_entries(1, 0);

/// Per-CPU, so the timer and a daemon's run on another CPU never share a slot.
#[map(name = "NAT_SWEEP_STATS")]
pub static NAT_SWEEP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(SWEEP_TOTALS, 0);

/// Index 0 non-zero: the daemon that runs the sweep is stopping, and its
/// run in progress ends at the next entry (the timer's runs ignore it). Not
/// pinned: each daemon's program has its own.
#[map(name = "NAT_SWEEP_STOP")]
pub static NAT_SWEEP_STOP: Array<u32> = Array::with_max_entries(1, 0);

/// The external addresses (value: pool index), for egress to recognise
/// packets the TC fast path has translated already.
#[map(name = "NAT_EXT_ADDRS")]
pub static NAT_EXT_ADDRS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_POOL, 0);

/// The MAC address of each interface with an XDP fast path (the external
/// one too), first 6 bytes: frames addressed elsewhere are the stack's.
#[map(name = "NAT_IF_MACS")]
pub static NAT_IF_MACS: HashMap<u32, [u8; 8]> = HashMap::with_max_entries(64, 0);

/// Where the fast path may redirect: the external interface and the internal
/// fast-path ones, each with an XDP program, so their drivers accept frames.
#[map(name = "NAT_FAST_DEVS")]
pub static NAT_FAST_DEVS: DevMapHash = DevMapHash::with_max_entries(64, 0);

/// Load-time: the external interface's ifindex; the loader sets it.
#[unsafe(no_mangle)]
static EXT_IFINDEX: u32 = 0;

/// Load-time: non-zero when internal interfaces run the fast path, so the
/// external side looks up routes for replies only then.
#[unsafe(no_mangle)]
static FAST_PATH: u32 = 0;

#[inline(always)]
pub fn ext_ifindex() -> u32 {
    // SAFETY: a plain read of a load-time global; volatile as for HASH_SEED.
    unsafe { core::ptr::read_volatile(&EXT_IFINDEX) }
}

#[inline(always)]
pub fn fast_path() -> bool {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&FAST_PATH) != 0 }
}

/// Load-time: the capacity of each session map; the loader sets it.
#[unsafe(no_mangle)]
static SESSION_CAPACITY: u32 = 0;

#[inline(always)]
pub fn session_capacity() -> u64 {
    // SAFETY: as for HASH_SEED below.
    unsafe { core::ptr::read_volatile(&SESSION_CAPACITY) as u64 }
}

/// Load-time secret keying the port-allocation hash; the loader sets it.
#[unsafe(no_mangle)]
static HASH_SEED: u32 = 0;

#[inline(always)]
pub fn hash_seed() -> u32 {
    // SAFETY: a plain read of a global the loader froze at load time; volatile
    // so the compiler does not fold the placeholder 0 into the code.
    unsafe { core::ptr::read_volatile(&HASH_SEED) }
}

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = NAT_STATS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
        unsafe { *slot += 1 };
    }
}

/// Load-time: the first external address, and how many there are, so
/// that the common single-address case needs no map lookup.
#[unsafe(no_mangle)]
static EXT_ADDR: u32 = 0;
#[unsafe(no_mangle)]
static EXT_ADDRS: u32 = 0;

#[inline(always)]
pub fn is_external(addr_be: u32) -> bool {
    // SAFETY: plain reads of load-time globals, volatile as for HASH_SEED.
    let (first, n) = unsafe {
        (
            core::ptr::read_volatile(&EXT_ADDR),
            core::ptr::read_volatile(&EXT_ADDRS),
        )
    };
    // SAFETY: read-only lookup.
    addr_be == first || (n > 1 && unsafe { NAT_EXT_ADDRS.get(addr_be) }.is_some())
}

#[inline(always)]
pub fn is_internal(addr_be: u32) -> bool {
    NAT_INTERNAL
        .get(aya_ebpf::maps::lpm_trie::Key::new(32, addr_be))
        .is_some()
}
