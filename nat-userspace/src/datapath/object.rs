//! Phase 2 of `nat load`: the embedded kernel object, loaded with this run's constants.

use std::{
    hash::{BuildHasher as _, Hasher as _},
    path::PathBuf,
};

use anyhow::{Context as _, Result};
use aya::{Ebpf, EbpfLoader, VerifierLogLevel};
use nat_common::{
    blocks::MIN_BLOCK_SIZE,
    config::MAX_POOL,
    names::{
        GLOBAL_EXT_ADDR, GLOBAL_EXT_ADDRS, GLOBAL_EXT_IFINDEX, GLOBAL_FAST_PATH, GLOBAL_HASH_SEED,
        GLOBAL_SESSION_CAPACITY, MAP_BLOCKS, MAP_COOLDOWN, MAP_EIM, MAP_EIM_OWNER, MAP_EIM_PEERS,
        MAP_FWD, MAP_HOST_BLOCKS, MAP_HOSTS, MAP_REV,
    },
};

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nat-ebpf"));

/// The kernel object this binary carries, as the linker wrote it.
pub fn object_bytes() -> &'static [u8] {
    EBPF_OBJECT
}

/// Load-time constants of the programs besides the hash seed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Globals {
    pub ext_ifindex: u32,
    pub fast_path: bool,
    /// The first external address, in network byte order.
    pub ext_addr: u32,
    pub ext_addrs: u32,
}

/// Loads the embedded object (programs not yet loaded into the kernel) with
/// maps of its own, pinned nowhere (for the benchmarks and fixtures), room
/// for the blocks of the smallest block size.
pub fn load_object(max_sessions: u32, max_cooldowns: u32, globals: Globals) -> Result<Ebpf> {
    let blocks = blocks_capacity(MIN_BLOCK_SIZE);
    load_pinned(max_sessions, max_cooldowns, blocks, globals, &[])
}

/// Entries the block table needs for every block of a full pool of
/// `block_size`-port blocks.
pub const fn blocks_capacity(block_size: u32) -> u32 {
    let per_address = 65_536 / if block_size == 0 { 1 } else { block_size };
    MAX_POOL * if per_address == 0 { 1 } else { per_address }
}

/// Loads the embedded object against pinned maps: each map named in `pinned`
/// is opened at its path when pinned there (an adopted instance keeps its
/// sessions, cooldowns and counters), else created and pinned there.
pub fn load_pinned(
    max_sessions: u32,
    max_cooldowns: u32,
    max_blocks: u32,
    globals: Globals,
    pinned: &[(&'static str, PathBuf)],
) -> Result<Ebpf> {
    // A per-load secret: which port a flow gets must not be predictable from
    // outside. Only new allocations use it, so an adopted instance may change it.
    let seed = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish() as u32;
    let mut loader = EbpfLoader::new();
    for (name, path) in pinned {
        loader.map_pin_path(name, path.as_path());
    }
    loader
        // Statistics and the verifier's own messages, not the instruction
        // trace: a rejection then costs one more verifier run and shows its
        // reason, where the trace (tens of MB for nat_egress) overflows every
        // buffer aya retries with, hiding the reason after up to 10 more runs
        // (an hour under TCG).
        .verifier_log_level(VerifierLogLevel::STATS)
        .override_global(GLOBAL_HASH_SEED, &seed, true)
        .override_global(GLOBAL_EXT_IFINDEX, &globals.ext_ifindex, true)
        .override_global(GLOBAL_FAST_PATH, &u32::from(globals.fast_path), true)
        .override_global(GLOBAL_EXT_ADDR, &globals.ext_addr, true)
        .override_global(GLOBAL_EXT_ADDRS, &globals.ext_addrs, true)
        .map_max_entries(MAP_FWD, max_sessions)
        .map_max_entries(MAP_REV, max_sessions)
        .map_max_entries(MAP_HOSTS, max_sessions)
        .override_global(GLOBAL_SESSION_CAPACITY, &max_sessions, true)
        .map_max_entries(MAP_COOLDOWN, max_cooldowns)
        // Each mapping has a session, each remote it sent to one too.
        .map_max_entries(MAP_EIM, max_sessions)
        .map_max_entries(MAP_EIM_OWNER, max_sessions)
        .map_max_entries(MAP_EIM_PEERS, max_sessions)
        .map_max_entries(MAP_BLOCKS, max_blocks)
        // Every host with a block holds a session on it.
        .map_max_entries(MAP_HOST_BLOCKS, max_sessions)
        .load(EBPF_OBJECT)
        .context("cannot load the kernel programs (root with CAP_BPF and CAP_NET_ADMIN and a kernel with BTF are needed)")
}
