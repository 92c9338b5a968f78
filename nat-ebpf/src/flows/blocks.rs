//! Taking a port block for an internal host (`allocation = "blocks"`), in
//! the flows layer: the allocator asks for one when the host's blocks have
//! no usable port toward a destination (`super::alloc`).
//!
//! A free block is found the way a free port is: one `bpf_loop` tries
//! block numbers on the host's address (a host's first block on its own
//! address, then the others: paired pooling is decided by the first), from
//! a random start with a random stride coprime to the number of blocks,
//! so the order blocks go out in says nothing to an outsider (RFC 6888
//! REQ-14). A block is taken by inserting it into the block table with
//! BPF_NOEXIST, which no two CPUs can both win; it is inserted holding one
//! count, the caller's walk's, which the caller gives back when its walk
//! is done (`session::blocks::release`), so a block that yields no port
//! goes back at once.

use core::{
    ffi::c_void,
    ptr::{addr_of_mut, write_volatile},
};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_prandom_u32, bpf_loop},
    macros::map,
    maps::PerCpuArray,
};
use nat_common::{
    blocks::{BLOCK_DYING, Block, BlockKey, HostBlocks, MAX_BLOCKS_PER_HOST, NO_SLOT},
    config::MAX_POOL,
    counters::Counter,
    flow::FlowKey,
    nat_event::kind,
    probe::{Tour, pool_index},
    seen_word::SharedWord,
};

use crate::{
    base::{
        maps::{NAT_BLOCKS, NAT_CONFIG, NAT_HOST_BLOCKS, NAT_POOL, count, hash_seed},
        outcome::{DropReason, decode, encode},
        shared::MapWord,
    },
    net::nat_events,
    session::blocks::{geometry, in_use, leave},
};

/// One search's state, per CPU, where the callback finds it; never pinned.
#[repr(C)]
struct Search {
    now: u64,
    host: u32,
    /// The pool index the search starts on.
    own: u32,
    pool_len: u32,
    /// Blocks on each address.
    blocks: u32,
    start: u32,
    stride: u32,
    tour: Tour,
    /// The block taken: its number plus one (0: none yet), its address and
    /// pool index.
    found: u32,
    found_addr: u32,
    found_pool: u32,
    _pad: u32,
    /// A host's first entry, put together here and inserted from here:
    /// on the stack it would take a frame that the deepest call chain
    /// (program, nat_allocate, this search) has no room for.
    fresh: HostBlocks,
}

#[map(name = "NAT_BLOCK_SEARCH")]
static NAT_BLOCK_SEARCH: PerCpuArray<Search> = PerCpuArray::with_max_entries(1, 0);

/// A new block for the host of `fwd`, holding one count for the caller's
/// walk: the slot of the host's list that names it.
#[inline(always)]
pub fn take(fwd: &FlowKey, now: u64) -> Result<u32, DropReason> {
    let r = nat_block_take(fwd as *const FlowKey, now);
    if r >= 0 {
        return Ok(r as u32);
    }
    match decode(r) {
        Err(drop) => Err(drop),
        Ok(_) => Err(DropReason::NoBlock),
    }
}

/// Blocks one search tries, over all the addresses it looks at: past it,
/// a pool with few blocks left would make every SYN of a host without one
/// (and each retransmission) walk the whole pool, about 100 ns a block,
/// 17 ms for 129,024 blocks; within it the random start and stride decide
/// which blocks are tried, so a host may be refused while a few blocks are
/// still free somewhere.
const SEARCH_BLOCKS: u32 = 4096;

/// [`take`] as a global BPF function, verified once with its search.
/// Returns the slot, or [`encode`]'s code of a drop.
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn nat_block_take(fwd: *const FlowKey, now: u64) -> i64 {
    if fwd.is_null() {
        return encode(Err(DropReason::NoBlock));
    }
    // SAFETY: checked for null; the caller's stack key, read in place.
    let key = unsafe { &*fwd };
    let host = key.saddr;
    let Some(cfg) = NAT_CONFIG.get(0) else {
        return encode(Err(DropReason::NoBlock));
    };
    let Some(g) = geometry(cfg) else {
        return encode(Err(DropReason::NoBlock));
    };
    let (pool_len, blocks) = (cfg.pool_len, g.blocks());
    if pool_len == 0 || pool_len > MAX_POOL || blocks == 0 {
        return encode(Err(DropReason::NoBlock));
    }
    let max = cfg.max_blocks_per_host.min(MAX_BLOCKS_PER_HOST as u32);
    // The host's entry, held for this allocation: its address decides the
    // search. A host without one starts on its own address.
    let entry = hold_host(host);
    let (own, addresses) = match entry {
        Some((e, before)) => {
            if before >= max as u64 {
                leave(host, e);
                nat_events::exhausted(kind::QUOTA_REACHED, key, 0, max);
                return encode(Err(DropReason::BlockLimit));
            }
            // SAFETY: a live map value pointer; written at insert.
            (unsafe { (*e).pool_index }, 1)
        }
        None => (pool_index(host, hash_seed(), pool_len), pool_len),
    };
    let Some(s) = NAT_BLOCK_SEARCH.get_ptr_mut(0) else {
        if let Some((e, _)) = entry {
            leave(host, e);
        }
        return encode(Err(DropReason::NoBlock));
    };
    // SAFETY: this CPU's slot, used only for the length of this call.
    let s = unsafe { &mut *s };
    // SAFETY: plain helper calls.
    let r1 = unsafe { bpf_get_prandom_u32() };
    // Field by field: a whole Search would be put together on the stack first.
    s.now = now;
    s.host = host;
    s.own = own;
    s.pool_len = pool_len;
    s.blocks = blocks;
    s.start = r1 % blocks;
    // A stride coprime to the number of blocks visits each once; the
    // random start is what makes the order unpredictable.
    s.stride = cfg.index_step.max(1);
    s.tour = Tour::uniform(blocks.min(SEARCH_BLOCKS / addresses.max(1)), addresses);
    s.found = 0;
    let mut unused = 0u64;
    // SAFETY: the callback only touches this CPU's search slot.
    unsafe {
        bpf_loop(
            s.tour.len(),
            block_step as *mut c_void,
            core::ptr::addr_of_mut!(unused).cast(),
            0,
        );
    }
    if s.found == 0 {
        if let Some((e, _)) = entry {
            leave(host, e);
        }
        nat_events::exhausted(kind::ADDRESSES_EXHAUSTED, key, 0, 0);
        return encode(Err(DropReason::NoBlock));
    }
    let (index, addr, pool) = (s.found - 1, s.found_addr, s.found_pool);
    let block_key = BlockKey { addr, index };
    let e = match entry {
        Some((e, _)) => e,
        None => match new_host(s, host, addr, pool) {
            Some(e) => e,
            None => {
                let _ = NAT_BLOCKS.remove(block_key);
                return encode(Err(DropReason::NoBlock));
            }
        },
    };
    // SAFETY: a live map value pointer; written at insert.
    if unsafe { (*e).addr } != addr {
        // Another CPU gave the host its first block on another address
        // meanwhile: all of a host's blocks are on one address.
        let _ = NAT_BLOCKS.remove(block_key);
        leave(host, e);
        return encode(Err(DropReason::NoBlock));
    }
    let Some(slot) = claim_slot(e, index, max) else {
        let _ = NAT_BLOCKS.remove(block_key);
        leave(host, e);
        return encode(Err(DropReason::BlockLimit));
    };
    if let Some(block) = NAT_BLOCKS.get_ptr_mut(block_key) {
        // SAFETY: a live map value pointer; no release reads it before the
        // caller's walk gives its count back.
        unsafe { write_volatile(addr_of_mut!((*block).slot), slot) };
    }
    let before = in_use(pool, 1);
    let threshold = cfg.pool_threshold as u64;
    if threshold > 0
        && before * 100 < threshold * blocks as u64
        && (before + 1) * 100 >= threshold * blocks as u64
    {
        nat_events::threshold(addr, ((before + 1) * 100 / blocks as u64) as u32);
    }
    count(Counter::BlockAllocated);
    let first = g.ports(index).map_or(0, |(lo, _)| lo);
    nat_events::block(kind::BLOCK_ALLOCATED, host, addr, first, cfg.block_size);
    slot as i64
}

/// Block `i` of the search's tour; 1 ends the search.
extern "C" fn block_step(i: u64, _ctx: *mut c_void) -> i64 {
    let Some(s) = NAT_BLOCK_SEARCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's slot, which nat_block_take filled before the loop.
    let s = unsafe { &mut *s };
    let Some((address, j)) = s.tour.at(i as u32) else {
        return 1;
    };
    // Read once: a map value the lookups below could change, for all the
    // compiler knows, and the division needs its divisor proven non-zero.
    let blocks = s.blocks as u64;
    if s.own >= s.pool_len || address >= s.pool_len || blocks == 0 {
        return 1;
    }
    // own < pool_len and address < pool_len: one subtraction wraps it.
    let mut pool = s.own + address;
    if pool >= s.pool_len {
        pool -= s.pool_len;
    }
    let Some(entry) = NAT_POOL.get(pool) else {
        return 1;
    };
    let index = ((s.start as u64 + j as u64 * s.stride as u64) % blocks) as u32;
    let key = BlockKey {
        addr: entry.addr,
        index,
    };
    let block = Block {
        sessions: 1,
        since: s.now,
        host: s.host,
        slot: NO_SLOT,
        addr: entry.addr,
        index,
    };
    match NAT_BLOCKS.insert(key, block, BPF_NOEXIST as u64) {
        Ok(()) => {
            s.found = index + 1;
            s.found_addr = entry.addr;
            s.found_pool = pool;
            1
        }
        // Taken: the next one. Any other error is a full table: stop.
        Err(-17) => 0,
        Err(_) => 1,
    }
}

/// The host's live entry with one more hold on it, and its holds before.
#[inline(always)]
fn hold_host(host: u32) -> Option<(*mut HostBlocks, u64)> {
    let e = NAT_HOST_BLOCKS.get_ptr_mut(host)?;
    // SAFETY: a live map value pointer; `held` is an aligned word.
    let word = MapWord(unsafe { addr_of_mut!((*e).held) });
    let before = word.fetch_add(1);
    // A dying entry's count is never read again: the add is not taken
    // back, which could land on the element's next life.
    if before >= BLOCK_DYING {
        return None;
    }
    Some((e, before))
}

/// The host's entry for its first block, on `addr` (pool index `pool`),
/// held once; or the entry another CPU inserted meanwhile, held once.
#[inline(always)]
fn new_host(s: &mut Search, host: u32, addr: u32, pool: u32) -> Option<*mut HostBlocks> {
    let fresh = &mut s.fresh;
    fresh.held = 1;
    fresh.addr = addr;
    fresh.pool_index = pool;
    let mut k = 0;
    while k < MAX_BLOCKS_PER_HOST {
        fresh.slots[k] = 0;
        k += 1;
    }
    // The value by reference: a copy would take its 144 bytes of the stack.
    #[allow(clippy::needless_borrows_for_generic_args)]
    let inserted = NAT_HOST_BLOCKS.insert(host, &*fresh, BPF_NOEXIST as u64);
    if inserted.is_ok() {
        return NAT_HOST_BLOCKS.get_ptr_mut(host);
    }
    hold_host(host).map(|(e, _)| e)
}

/// Puts block `index` into the first free slot below `max` of the host's
/// list; the slot, or `None` when all are taken.
#[inline(always)]
fn claim_slot(e: *mut HostBlocks, index: u32, max: u32) -> Option<u32> {
    let mut k = 0;
    while k < MAX_BLOCKS_PER_HOST {
        if k as u32 >= max {
            return None;
        }
        // SAFETY: a live map value pointer; each slot is an aligned word.
        let word = MapWord(unsafe { addr_of_mut!((*e).slots[k]) });
        if word.compare_exchange(0, index as u64 + 1).is_ok() {
            return Some(k as u32);
        }
        k += 1;
    }
    None
}
