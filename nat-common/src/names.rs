//! Names of maps and programs, used by the kernel objects, the loader and the CLI.
//!
//! Kernel object names are limited to 15 characters. Pinned file names carry a
//! layout version: a change to a key or value layout bumps it, so a newer
//! binary never misreads maps pinned by an older one.

/// Forward sessions: internal 5-tuple -> external address and port.
pub const MAP_FWD: &str = "NAT_FWD";
/// Reverse sessions: (external addr, external port, remote) -> internal address and port.
/// Its key is also the cooldown key.
pub const MAP_REV: &str = "NAT_REV";
/// Endpoint-independent mappings: internal [`crate::mapping::EndpointKey`] ->
/// [`crate::mapping::Mapping`] (its external address and port).
pub const MAP_EIM: &str = "NAT_EIM";
/// Owners of endpoint-independent mappings: external
/// [`crate::mapping::EndpointKey`] -> [`crate::mapping::Owner`] (the internal
/// endpoint). The ingress filter and hairpinning look up who owns a port here.
pub const MAP_EIM_OWNER: &str = "NAT_EIM_OWNER";
/// Remote addresses each mapping's endpoint has sent to, for
/// address-dependent filtering (LRU): [`crate::mapping::PeerKey`] -> the
/// mapping's `born`.
pub const MAP_EIM_PEERS: &str = "NAT_EIM_PEERS";
/// Live settings, one [`crate::config::Config`] at index 0.
pub const MAP_CONFIG: &str = "NAT_CONFIG";
/// External addresses and their port ranges.
pub const MAP_POOL: &str = "NAT_POOL";
/// Internal prefixes (LPM trie); only sources inside them are translated.
pub const MAP_INTERNAL: &str = "NAT_INTERNAL";
/// Cooling keys: reverse-map key -> boot-clock ns when the key may be reused.
pub const MAP_COOLDOWN: &str = "NAT_COOLDOWN";
/// Per-CPU histogram of probes used per allocation, indexed by [`crate::probe::probe_bucket`].
pub const MAP_PROBES: &str = "NAT_PROBES";
/// Fragments of datagrams whose first fragment was translated: [`crate::flow::FragKey`] -> new address.
pub const MAP_FRAGS: &str = "NAT_FRAGS";
/// Ring buffer of refused SYNs ([`crate::config::RejectEvent`]) for the daemon to answer.
pub const MAP_REJECTS: &str = "NAT_REJECTS";
/// External addresses ([`crate::config::MAX_POOL`] at most): address -> pool index.
pub const MAP_EXT_ADDRS: &str = "NAT_EXT_ADDRS";
/// MAC address of each fast-path interface and of the external one: ifindex -> 6 bytes and 2 of padding.
pub const MAP_IF_MACS: &str = "NAT_IF_MACS";
/// Interfaces the XDP fast path redirects to (DEVMAP_HASH keyed by ifindex):
/// the external interface and the internal ones given with `--fast-path`.
pub const MAP_FAST_DEVS: &str = "NAT_FAST_DEVS";
/// Per-CPU scratch slot where egress assembles a new session entry (not pinned).
pub const MAP_SCRATCH: &str = "NAT_SCRATCH";
/// Per-CPU window of the event log's rate limit ([`crate::event_rate`]; not pinned).
pub const MAP_EVENT_RATE: &str = "NAT_EVENT_RATE";
/// Per-CPU outcome counters, indexed by [`crate::counters::Counter`].
pub const MAP_STATS: &str = "NAT_STATS";
/// The sweep's settings, one [`crate::sweep::SweepControl`] at index 0.
pub const MAP_SWEEP_CTL: &str = "NAT_SWEEP_CTL";
/// Per-CPU running totals of the sweep, indexed by [`crate::sweep::SweepTotal`].
pub const MAP_SWEEP_STATS: &str = "NAT_SWEEP_STATS";
/// The one `bpf_timer` that runs the sweep while no daemon does (a BTF map:
/// the kernel finds the timer in the value through BTF).
pub const MAP_SWEEP_TIMER: &str = "NAT_SWEEP_TIMER";
/// Set by a stopping daemon: its running sweep run ends at the next entry (not pinned).
pub const MAP_SWEEP_STOP: &str = "NAT_SWEEP_STOP";
/// Static port forwards: [`crate::port_forward::ForwardKey`] (protocol,
/// external address, external port) -> [`crate::port_forward::ForwardTarget`].
pub const MAP_FORWARD: &str = "NAT_FORWARD";
/// Per-CPU slot where the allocator puts a forward-map key together (not pinned).
pub const MAP_FORWARD_KEY: &str = "NAT_FORWARD_KEY";
/// Per-CPU slot of the hairpin program's packet and translation (not pinned).
pub const MAP_HAIRPIN_PLAN: &str = "NAT_HAIRPIN_PLAN";

/// Port blocks: [`crate::blocks::BlockKey`] -> [`crate::blocks::Block`].
pub const MAP_BLOCKS: &str = "NAT_BLOCKS";
/// Each host's blocks: internal address -> [`crate::blocks::HostBlocks`].
pub const MAP_HOST_BLOCKS: &str = "NAT_HOST_BLOCKS";
/// Blocks in use per external address, indexed by pool index, changed
/// only by atomic adds.
pub const MAP_BLOCK_USE: &str = "NAT_BLOCK_USE";
/// Per CPU: counts added to blocks that were not the holding host's, to be
/// given back once the claims are done (not pinned).
pub const MAP_BLOCK_UNDO: &str = "NAT_BLOCK_UNDO";
/// Deterministic NAT's numbering of the internal prefixes (LPM trie):
/// prefix -> [`crate::deterministic::DetPrefix`].
pub const MAP_DET_PREFIXES: &str = "NAT_DET_PREFIXES";
/// Ring buffer of compliance events ([`crate::nat_event::NatEvent`]).
pub const MAP_NAT_EVENTS: &str = "NAT_EVENTS";
/// Per CPU, by event kind: boot-clock ns of the last rate-limited event
/// written (exhaustion and quota events, at most one a second per CPU).
pub const MAP_EVENT_LAST: &str = "NAT_EVENT_LAST";

/// Live sessions per internal address: address -> [`crate::hosts::HostEntry`].
pub const MAP_HOSTS: &str = "NAT_HOSTS";
/// Live session pairs over all hosts (plus allocations in flight), one u64
/// at index 0, changed only by atomic adds.
pub const MAP_LIVE: &str = "NAT_LIVE";

pub const PROG_EGRESS: &str = "nat_egress";
/// XDP ingress, the default.
pub const PROG_INGRESS: &str = "nat_ingress";
/// TC ingress, for external interfaces whose peer hands over CHECKSUM_PARTIAL packets.
pub const PROG_INGRESS_TC: &str = "nat_ingress_tc";

/// Fast path on the internal interfaces, XDP (with `--ingress xdp`).
pub const PROG_FAST: &str = "nat_fast";
/// Fast path on the internal interfaces, TC ingress (with `--ingress tc`).
pub const PROG_FAST_TC: &str = "nat_fast_tc";

/// Hairpinning on the internal interfaces (TC ingress): internal packets to
/// an external address and port a forward owns, translated both ways and
/// sent back inside.
pub const PROG_HAIRPIN: &str = "nat_hairpin";

/// The sweep: walks the session and cooldown maps in the kernel. Run
/// by the daemon through BPF_PROG_TEST_RUN (a TC program, so aya can run it)
/// and by the sweep timer it arms; never attached.
pub const PROG_SWEEP: &str = "nat_sweep";

/// Load-time constant: the ifindex of the external interface.
pub const GLOBAL_EXT_IFINDEX: &str = "EXT_IFINDEX";
/// Load-time constant: the first external address (network byte order).
pub const GLOBAL_EXT_ADDR: &str = "EXT_ADDR";
/// Load-time constant: how many external addresses there are.
pub const GLOBAL_EXT_ADDRS: &str = "EXT_ADDRS";
/// Load-time constant: non-zero when internal interfaces have the fast path.
pub const GLOBAL_FAST_PATH: &str = "FAST_PATH";
/// Load-time constant: the capacity of each session map (`--max-sessions`),
/// against which the allocator measures table pressure.
pub const GLOBAL_SESSION_CAPACITY: &str = "SESSION_CAPACITY";
/// Load-time constant: the secret that keys the port-allocation hash.
pub const GLOBAL_HASH_SEED: &str = "HASH_SEED";

/// Layout version appended to every pinned name. Also a new counter makes
/// a new layout: the pinned stats array holds one entry per counter, and a
/// program counting past the end of an older one would lose its count.
pub const LAYOUT_VERSION: u32 = 8;

/// Root of everything this project pins.
pub const PIN_ROOT: &str = "/sys/fs/bpf/nat";
/// Pinned TCX link of the egress program.
pub const LINK_EGRESS: &str = "link_egress";
/// Pinned XDP link of the ingress program.
pub const LINK_INGRESS: &str = "link_ingress";
/// Pinned links of the fast path: this prefix plus the internal interface's name.
pub const LINK_FAST_PREFIX: &str = "link_fast_";
/// Pinned links of the hairpin program: this prefix plus the internal interface's name.
pub const LINK_HAIRPIN_PREFIX: &str = "link_hairpin_";
