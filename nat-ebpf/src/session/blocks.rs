//! A port block's count, in the session layer (`allocation = "blocks"`):
//! every session on one of the block's ports holds one ([`hold`] before
//! its claim, given back by `super::free` at its end, marked
//! `SESSION_BLOCK`), and so does an allocation while it walks a block it
//! has just taken (`flows::blocks`). The release that takes the count to
//! zero gives the block back: it leaves its host's list (and the host's
//! entry goes with its last block), the block table, and the count of
//! blocks in use on its address, and the release is logged.
//!
//! The count is one word changed by atomic adds, as a host's session
//! count: a release that takes it to zero marks it dying
//! ([`BLOCK_DYING`], by compare-and-exchange from 0) before anything is
//! deleted, and a hold that meets a dying block takes its add back and
//! fails, so no session is ever claimed on a block being given back.

use core::ptr::{addr_of_mut, read_volatile};

use aya_ebpf::{macros::map, maps::PerCpuArray};

use nat_common::{
    blocks::{BLOCK_DYING, BlockKey, Geometry, MAX_BLOCKS_PER_HOST},
    config::{Config, allocation},
    counters::Counter,
    nat_event::kind,
    seen_word::SharedWord,
};

use crate::{
    base::{
        maps::{NAT_BLOCK_USE, NAT_BLOCKS, NAT_CONFIG, NAT_HOST_BLOCKS, NAT_POOL, count},
        shared::MapWord,
    },
    net::nat_events,
};

const MINUS_ONE: u64 = u64::MAX;

/// [`hold`]'s answers.
pub const REFUSED: i64 = 0;
/// The NAT does not allocate in blocks: nothing to hold.
pub const NOT_BLOCKS: i64 = 1;
/// The block now counts one more session.
pub const HELD: i64 = 2;

/// How the configured port range divides into blocks: every pool
/// address shares the range of its first entry.
#[inline(always)]
pub fn geometry(cfg: &Config) -> Option<Geometry> {
    let pool = NAT_POOL.get(0)?;
    Some(Geometry {
        port_min: pool.port_min,
        port_max: pool.port_max,
        block_size: cfg.block_size,
    })
}

/// One more session of internal host `host` on external (`addr`, `port`),
/// network byte order, before its claim: [`HELD`], [`NOT_BLOCKS`], or
/// [`REFUSED`] when the port's block is not there, is being given back, or
/// is not the host's. Inlined, not a global function: it takes a few bytes
/// of its caller's frame, where a call would add a 32-byte frame to the
/// deepest chain of the hairpin program (caller, allocation, probe
/// callback, claim, reserve), which Linux 6.1 holds to 512 bytes.
#[inline(always)]
pub fn hold(host: u32, addr: u32, port: u16) -> i64 {
    let Some(key) = key_of(addr, port) else {
        return NOT_BLOCKS;
    };
    let Some(block) = NAT_BLOCKS.get_ptr_mut(key) else {
        return REFUSED;
    };
    // SAFETY: a live map value pointer; `sessions` is an aligned word.
    let word = MapWord(unsafe { addr_of_mut!((*block).sessions) });
    // A dying block's count is never read again: the add is not taken
    // back, which could land on the element's next life.
    if word.fetch_add(1) >= BLOCK_DYING {
        return REFUSED;
    }
    // The add keeps the element from being given back, so what it holds
    // now stays: the block the host's walk saw may have gone back and its
    // memory come back as another block, or the block gone to another host.
    // SAFETY: written at insert, before the element was in the table.
    let (owner, at, index) = unsafe {
        (
            read_volatile(&(*block).host),
            read_volatile(&(*block).addr),
            read_volatile(&(*block).index),
        )
    };
    if owner != host || at != key.addr || index != key.index {
        defer_give_back(word, at, index);
        return REFUSED;
    }
    HELD
}

/// An add to another block's count, to be given back by [`settle`]. Not
/// given back here: the add may be all that keeps a block whose last
/// session just ended from going back (its release then found it held),
/// so the give-back must be a release, whose call would add a frame to
/// the deepest chain (a claim inside the allocation's walk). The record
/// is this CPU's; adds to one block pile up in it. An add to a second
/// block while the first is pending is taken back in place, which leaves
/// that block held only if its last session ended in the same instant.
#[inline(always)]
fn defer_give_back(word: MapWord, addr: u32, index: u32) {
    if let Some(u) = NAT_BLOCK_UNDO.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; no other program run uses it meanwhile.
        let u = unsafe { &mut *u };
        if u.count == 0 || (u.addr == addr && u.index == index) {
            u.addr = addr;
            u.index = index;
            u.count += 1;
            return;
        }
    }
    word.fetch_add(MINUS_ONE);
}

/// Gives back the adds [`hold`] made to blocks that were not the host's,
/// from a frame shallow enough for the release's call; every program that
/// may hold a block calls it once the claims are done.
#[inline(always)]
pub fn settle() {
    let Some(u) = NAT_BLOCK_UNDO.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; no other program run uses it meanwhile.
    let u = unsafe { &mut *u };
    let n = u.count;
    if n == 0 {
        return;
    }
    u.count = 0;
    nat_block_release(
        u64::from(u.addr),
        u64::from(u.index) | BY_INDEX | (n.min(COUNT_MAX) << COUNT_SHIFT),
    );
}

/// Adds to give back, deferred by [`hold`], per CPU; never pinned.
#[map(name = "NAT_BLOCK_UNDO")]
static NAT_BLOCK_UNDO: PerCpuArray<Undo> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
struct Undo {
    addr: u32,
    index: u32,
    count: u64,
}

/// One session less on external (`addr`, `port`): a claim that [`hold`]
/// preceded failed, or a marked session ended.
#[inline(always)]
pub fn release(addr: u32, port: u16) {
    nat_block_release(addr as u64, port as u64);
}

/// [`nat_block_release`]'s second argument is a block's index, not a
/// port, with the count to give back above [`COUNT_SHIFT`] (0: one).
const BY_INDEX: u64 = 1 << 32;
const COUNT_SHIFT: u32 = 40;
/// A walk holds one block at most once per port of it (32,768 at most).
const COUNT_MAX: u64 = (1 << 24) - 1;

/// The block table's key of external (`addr`, `port`) in blocks mode.
#[inline(always)]
fn key_of(addr: u32, port: u16) -> Option<BlockKey> {
    let cfg = NAT_CONFIG.get(0)?;
    if cfg.allocation != allocation::BLOCKS {
        return None;
    }
    let index = geometry(cfg)?.block_of(u16::from_be(port))?;
    Some(BlockKey { addr, index })
}

/// Gives one count back to the block of external (`addr`, `port`), or
/// counts to the block of `addr` and the index in `port` with
/// [`BY_INDEX`]; the last gives the block back.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nat_block_release(addr: u64, port: u64) -> i64 {
    let n = (port >> COUNT_SHIFT).max(1);
    let key = if port & BY_INDEX != 0 {
        Some(BlockKey {
            addr: addr as u32,
            index: port as u32,
        })
    } else {
        key_of(addr as u32, port as u16)
    };
    let Some(key) = key else {
        return 0;
    };
    let Some(block) = NAT_BLOCKS.get_ptr_mut(key) else {
        return 0;
    };
    // SAFETY: a live map value pointer; `sessions` is an aligned word.
    let word = MapWord(unsafe { addr_of_mut!((*block).sessions) });
    let before = word.fetch_add(n.wrapping_neg());
    if before < n || before >= BLOCK_DYING {
        // Never below zero, and a dying block's count is not ours to change.
        word.fetch_add(n);
        return 0;
    }
    if before != n || word.compare_exchange(0, BLOCK_DYING).is_err() {
        return 0;
    }
    // SAFETY: written at insert, before any session could hold the block.
    let (host, slot) = unsafe { (read_volatile(&(*block).host), read_volatile(&(*block).slot)) };
    let (first, size) = NAT_CONFIG
        .get(0)
        .and_then(|cfg| Some((geometry(cfg)?.ports(key.index)?.0, cfg.block_size)))
        .unwrap_or((0, 0));
    // Logged while the block is still in the map: no other host can take
    // it before its release is in the ring buffer, so the log never shows
    // a block with two holders, whatever the CPUs' order.
    nat_events::block(kind::BLOCK_RELEASED, host, key.addr, first, size);
    let pool_index = leave_host(host, slot, key.index);
    let _ = NAT_BLOCKS.remove(key);
    if let Some(index) = pool_index {
        in_use(index, MINUS_ONE);
    }
    count(Counter::BlockReleased);
    1
}

/// Takes block `index` out of slot `slot` of `host`'s list and gives up
/// one of the host's holds (its last deletes the host's entry); returns
/// the pool index of the host's address.
#[inline(always)]
fn leave_host(host: u32, slot: u32, index: u32) -> Option<u32> {
    let entry = NAT_HOST_BLOCKS.get_ptr_mut(host)?;
    // SAFETY: a live map value pointer; written at insert.
    let pool_index = unsafe { read_volatile(&(*entry).pool_index) };
    if (slot as usize) < MAX_BLOCKS_PER_HOST {
        // SAFETY: a live map value pointer; each slot is an aligned word.
        let word = MapWord(unsafe { addr_of_mut!((*entry).slots[slot as usize]) });
        let _ = word.compare_exchange(index as u64 + 1, 0);
    }
    leave(host, entry);
    Some(pool_index)
}

/// Gives up one of `host`'s holds on its entry `entry` (a block it no
/// longer has, or an allocation that took none); the last deletes the
/// entry, marked dying first so that an allocation meeting it makes a
/// fresh one.
#[inline(always)]
pub fn leave(host: u32, entry: *mut nat_common::blocks::HostBlocks) {
    // SAFETY: a live map value pointer; `held` is an aligned word.
    let word = MapWord(unsafe { addr_of_mut!((*entry).held) });
    let before = word.fetch_add(MINUS_ONE);
    if before == 0 || before >= BLOCK_DYING {
        word.fetch_add(1);
        return;
    }
    if before == 1 && word.compare_exchange(0, BLOCK_DYING).is_ok() {
        let _ = NAT_HOST_BLOCKS.remove(host);
    }
}

/// Adds `delta` (wrapping) to the count of blocks in use on the pool's
/// address `pool_index`, and returns the count before.
#[inline(always)]
pub fn in_use(pool_index: u32, delta: u64) -> u64 {
    match NAT_BLOCK_USE.get_ptr_mut(pool_index) {
        Some(word) => MapWord(word).fetch_add(delta),
        None => 0,
    }
}
