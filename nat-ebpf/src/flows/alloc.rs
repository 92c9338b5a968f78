//! External port allocation for a new flow, in the flows layer: the
//! search for a candidate (a port the allocator tries) on the host's own
//! external address and then the others, each free one claimed through
//! the session layer's claim (`session::claim`), within the host's limit
//! (`session::hosts`).
//!
//! A candidate is free when no live session holds its reverse key and the
//! key is not cooling; its claim is atomic across CPUs, and the same port
//! stays usable toward every other destination.
//!
//! The whole search, the host's own address and then the others
//! ([`Tour`]), is one bpf_loop whose callback works from the index it is
//! passed and from state in map memory, which the verifier does not track:
//! it checks the callback once, as one step with an unknown index. A loop
//! around the walk (once per address) would have the verifier walk the
//! callback again for every address, and on kernels whose bpf_loop checks
//! carry precision across iterations that no longer fits its limit.
//!
//! With an endpoint-independent mapping mode (`mapping-udp`, `mapping-tcp`)
//! a flow first tries its endpoint's mapping ([`mapping::join`]); without
//! one, the probe claims a new mapping with each candidate
//! ([`mapping::claim`]). In every mode a candidate another endpoint's
//! mapping owns is skipped. The cooldown check comes first in every case:
//! a cooling key is never handed out.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::bpf_loop,
    macros::map,
    maps::{PerCpuArray, lpm_trie::Key},
};
use nat_common::{
    blocks::MAX_BLOCKS_PER_HOST,
    config::{Config, MAX_POOL, PoolAddr, allocation, policy},
    counters::Counter,
    flow::FlowKey,
    mapping::SESSION_BLOCK,
    nat_event::kind,
    probe::{
        PROBE_BUCKETS, Tour, flow_hash, for_flow, pool_index, preservable, probe_bucket, span, walk,
    },
};

use super::{blocks, mapping};
use crate::{
    base::{
        maps::{
            NAT_CONFIG, NAT_COOLDOWN, NAT_DET_PREFIXES, NAT_HOST_BLOCKS, NAT_POOL, NAT_PROBES,
            NAT_REV, count, hash_seed,
        },
        outcome::DropReason,
        packet::{Endpoint, decode_endpoint, encode_endpoint},
    },
    net::nat_events,
    session::{
        blocks::{self as block_count, HELD, REFUSED, geometry},
        claim::{CLAIM_LOST, CLAIM_WON, insert_failure, nat_claim_pair},
        evict, hosts,
    },
};

/// The allocator's probe state, one per CPU ([`Probe`]); never pinned.
#[map(name = "NAT_PROBE_STATE")]
static NAT_PROBE_STATE: PerCpuArray<Probe> = PerCpuArray::with_max_entries(1, 0);

const FOUND_NONE: u32 = 0;
const FOUND_WON: u32 = 1;
const FOUND_LOST: u32 = 2;
/// A session insert failed for another reason than a taken key; the
/// probe's `session.addr` holds its error ([`insert_failure`]).
const FOUND_ERROR: u32 = 3;

/// State of one allocation's walk, in this CPU's slot of NAT_PROBE_STATE:
/// on the stack it would push the call chain nat_egress, nat_allocate,
/// probe callback, nat_claim_pair past the 512 bytes the verifier allows a
/// chain. The callback finds it there itself (bpf_loop gets no context):
/// Linux 6.1 takes only a stack pointer as that context. A CPU runs one
/// program at a time and nothing here sleeps, so the slot is this
/// allocation's for the length of the call. Everything the callback
/// carries from one candidate to the next lives here, in map memory, where
/// the verifier knows none of it: the callback is verified as one step
/// with an unknown index, never once per value of a counter.
#[repr(C)]
struct Probe {
    fwd: FlowKey,
    /// The address being walked, with the flow's own stride.
    pool: PoolAddr,
    now: u64,
    /// The probed candidate, not live, whose cooldown ends soonest (u64::MAX: none).
    best_until: u64,
    start: u32,
    tcp_flags: u32,
    /// Honour cooldowns (setting `cooldown-enabled`).
    cooling: u32,
    found: u32,
    /// 1-based index, in its address's walk, of the candidate that was claimed.
    probes: u32,
    /// What a free candidate is claimed as: [`mapping::PROBE_NEW_MAPPING`], a
    /// session and a new endpoint-independent mapping with it, or else a
    /// session for this destination alone.
    mode: u32,
    /// The pool index of the host's own address, and the pool's length.
    own: u32,
    pool_len: u32,
    /// The order of the walk over the pool's addresses.
    tour: Tour,
    /// Which window of the walk `pool` holds: 0 the host's own address, k
    /// the k-th after it in the pool (`walk`); the host's block list's slot
    /// `base + k` (`blocks`); its share (`deterministic`, one window).
    /// [`NO_SLOT`] before the first.
    slot: u32,
    /// One of [`allocation`].
    allocation: u32,
    /// The flow's own stride over a window: every window of a mode has
    /// the same size (the loader gives every pool address one range), so
    /// it is worked out once per allocation, in nat_allocate's frame
    /// rather than under the probe callback, where the chain has no room.
    flow_step: u32,
    /// `blocks`: the host list's slot the tour's first window is.
    base: u32,
    /// `blocks`: the slots (each plus one; 0 none) of the blocks this
    /// allocation took, held by it until its port is claimed or it fails.
    taken: [u32; NEW_BLOCK_TRIES as usize],
    best_addr: u32,
    session: Endpoint,
    best_port: u16,
    _pad: [u8; 2],
}

/// [`Probe::slot`] before the walk has loaded an address.
const NO_SLOT: u32 = u32::MAX;

/// Loads address `slot` of the walk into this CPU's probe state, with the
/// flow's own stride; false when the pool has no usable entry there.
#[inline(always)]
fn enter(slot: u32) -> bool {
    nat_probe_enter(slot as u64) != 0
}

/// [`enter`] as a global BPF function: inlined, its copy of the pool entry
/// and the stride's arguments took a frame that pushed the deepest call
/// chain (program, nat_allocate, probe callback, claim) past the 512 bytes
/// Linux 6.1 allows. Returns 1 when the address was loaded.
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn nat_probe_enter(slot: u64) -> i64 {
    let Some(p) = NAT_PROBE_STATE.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot, filled by nat_allocate before the walk.
    let p = unsafe { &mut *p };
    let Some(cfg) = NAT_CONFIG.get(0) else {
        return 0;
    };
    let slot = slot as u32;
    let window = match p.allocation {
        allocation::BLOCKS => block_window(p, cfg, slot),
        allocation::DETERMINISTIC => share_window(p, cfg),
        _ => address_window(p, slot),
    };
    let Some((addr, port_min, port_max)) = window else {
        return 0;
    };
    p.pool.addr = addr;
    p.pool.port_min = port_min;
    p.pool.port_max = port_max;
    p.pool.step = p.flow_step;
    p.slot = slot;
    1
}

/// `walk`: the pool's address `slot` places after the host's own, its
/// whole range.
#[inline(always)]
fn address_window(p: &Probe, slot: u32) -> Option<(u32, u16, u16)> {
    if p.own >= p.pool_len || slot >= p.pool_len {
        return None;
    }
    // own < pool_len and slot < pool_len: one subtraction wraps it.
    let mut idx = p.own + slot;
    if idx >= p.pool_len {
        idx -= p.pool_len;
    }
    let pool = NAT_POOL.get(idx)?;
    Some((pool.addr, pool.port_min, pool.port_max))
}

/// `blocks`: the block in slot `base + slot` of the host's list; an empty
/// slot is a window of no ports, which the walk passes over.
#[inline(always)]
fn block_window(p: &Probe, cfg: &Config, slot: u32) -> Option<(u32, u16, u16)> {
    let k = (p.base + slot) as usize;
    if k >= MAX_BLOCKS_PER_HOST {
        return None;
    }
    // SAFETY: read-only copy of a map value.
    let list = unsafe { NAT_HOST_BLOCKS.get(p.fwd.saddr) }?;
    // SAFETY: an aligned word of the copy's map value, read once.
    let v = unsafe { core::ptr::read_volatile(&list.slots[k]) };
    if v == 0 {
        return Some((list.addr, 1, 0));
    }
    let (lo, hi) = geometry(cfg)?.ports(v as u32 - 1)?;
    Some((list.addr, lo, hi))
}

/// `deterministic`: the host's share (RFC 7422), from its number among
/// the internal prefixes' addresses.
#[inline(always)]
fn share_window(p: &Probe, cfg: &Config) -> Option<(u32, u16, u16)> {
    let (per, range) = (cfg.det_per_address, cfg.det_range);
    if per == 0 || range == 0 {
        return None;
    }
    let prefix = NAT_DET_PREFIXES.get(Key::new(32, p.fwd.saddr))?;
    let index = prefix
        .base
        .wrapping_add(u32::from_be(p.fwd.saddr).wrapping_sub(prefix.network));
    let address = index / per;
    if address >= p.pool_len {
        return None;
    }
    let pool = NAT_POOL.get(address)?;
    let lo = pool.port_min as u32 + (index % per) * range;
    let hi = lo + range - 1;
    if hi > pool.port_max as u32 {
        return None;
    }
    Some((pool.addr, lo as u16, hi as u16))
}

#[inline(always)]
fn try_candidate(p: &mut Probe, port_host: u16) -> bool {
    let port = port_host.to_be();
    let rev_key = p.fwd.translated(p.pool.addr, port);
    let mut stale = false;
    if p.cooling != 0
        && let Some(until) = NAT_COOLDOWN.get_ptr(rev_key)
    {
        // SAFETY: map value pointer from the lookup above.
        let until = unsafe { *until };
        if until > p.now {
            count(Counter::CooldownSkip);
            // SAFETY: read-only lookup.
            if until < p.best_until && unsafe { NAT_REV.get(rev_key) }.is_none() {
                p.best_until = until;
                p.best_addr = p.pool.addr;
                p.best_port = port_host;
            }
            return false;
        }
        stale = true;
    }
    match claim_candidate(p, port) {
        Claim::Won(s) => {
            if stale {
                let _ = NAT_COOLDOWN.remove(rev_key);
            }
            p.found = FOUND_WON;
            p.session = s;
            true
        }
        Claim::Lost(s) => {
            p.found = FOUND_LOST;
            p.session = s;
            true
        }
        Claim::Taken => false,
        Claim::Failed(err) => {
            p.found = FOUND_ERROR;
            // nat_egress's stack has no bytes to spare for a field of its own.
            p.session.addr = err as u32;
            true
        }
    }
}

/// Claims a free candidate as the probe's mode asks: one global function
/// call in either mode, so the probe has no branch on it (in blocks, the
/// claim holds the port's block for the session, `mapping::claim`).
#[inline(always)]
fn claim_candidate(p: &mut Probe, port: u16) -> Claim {
    let r = mapping::claim(&p.fwd, p.pool.addr, port, p.tcp_flags as u8, p.mode, p.now);
    decode(r, p.pool.addr, port)
}

/// Candidate `i` of the allocation's [`Tour`]; 1 ends the walk.
extern "C" fn probe_step(i: u64, _ctx: *mut c_void) -> i64 {
    let Some(p) = NAT_PROBE_STATE.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's slot, which nat_allocate filled before the loop.
    let p = unsafe { &mut *p };
    let Some((slot, j)) = p.tour.at(i as u32) else {
        return 1;
    };
    if slot != p.slot && !enter(slot) {
        return 1;
    }
    // The tour stops short of a second lap on the host's address's range;
    // an address whose range is shorter skips the rest of its share.
    if j >= span(p.pool.port_min, p.pool.port_max) {
        return 0;
    }
    let port = walk(&p.pool, p.start, j);
    p.probes = j + 1;
    if try_candidate(p, port) { 1 } else { 0 }
}

enum Claim {
    Won(Endpoint),
    /// Another CPU created this very flow meanwhile.
    Lost(Endpoint),
    Taken,
    /// An insert failed for another reason than an existing key (its error).
    Failed(i32),
}

/// Inserts the session pair for `fwd` on (`ext_addr`, `port`).
#[inline(always)]
fn claim_pair(
    fwd: &FlowKey,
    ext_addr: u32,
    port: u16,
    tcp_flags: u8,
    marks: u16,
    now: u64,
) -> Claim {
    let flags = tcp_flags as u64 | (marks as u64) << 8;
    let r = nat_claim_pair(fwd, ext_addr as u64, port as u64, flags, now);
    decode(r, ext_addr, port)
}

#[inline(always)]
fn decode(r: i64, ext_addr: u32, port: u16) -> Claim {
    if r < 0 {
        Claim::Failed(r as i32)
    } else if r == CLAIM_WON {
        Claim::Won(Endpoint {
            addr: ext_addr,
            port,
        })
    } else if r >> 48 == CLAIM_LOST {
        Claim::Lost(Endpoint {
            addr: (r >> 16) as u32,
            port: r as u16,
        })
    } else {
        Claim::Taken
    }
}

/// The stride of the flow whose walk starts at `start` on a range
/// `port_min..=port_max` with the pool's stride `step` ([`for_flow`]), as a
/// global BPF function: inlined, its sixteen multiplications were walked by
/// the verifier on every path into the spill loop, and Linux 6.1 took that
/// loop for an endless one; as a call it returns one unknown number, as the
/// pool map's stride did. It uses no stack, so no call chain gets deeper.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nat_flow_stride(port_min: u64, port_max: u64, step: u64, start: u64) -> u64 {
    let pool = PoolAddr {
        addr: 0,
        port_min: port_min as u16,
        port_max: port_max as u16,
        step: step as u32,
        _pad: 0,
    };
    for_flow(&pool, start as u32).step as u64
}

#[inline(always)]
fn histogram(bucket: u32) {
    if let Some(slot) = NAT_PROBES.get_ptr_mut(bucket) {
        // SAFETY: per-CPU slot.
        unsafe { *slot += 1 };
    }
}

/// Finds an external address and port for `fwd` and inserts the session
/// pair, within the host's limit (`session::hosts`: reserved before, kept
/// or given back after). Under table pressure the host may first lose one
/// of its own idle unanswered openings (`session::evict`). The host's
/// reservation and the eviction happen here, in the caller's frame, around
/// [`nat_allocate`]: inside it, their calls would add to the deepest chain
/// (caller, nat_allocate, probe callback, claim), which Linux 6.1 holds to
/// 512 bytes with every frame rounded up to 32.
#[inline(always)]
pub fn allocate(fwd: &FlowKey, tcp_flags: u8, now: u64) -> Result<Endpoint, DropReason> {
    let admitted = hosts::admit(fwd).inspect_err(|_| {
        let limit = NAT_CONFIG.get(0).map_or(0, |c| c.max_sessions_per_host);
        nat_events::exhausted(kind::QUOTA_REACHED, fwd, 0, limit);
    })?;
    if admitted.pressure {
        evict::make_room(fwd.saddr, now);
    }
    let mut r = nat_allocate(fwd, tcp_flags as u64, now);
    if r == SETTLE_COOLING {
        r = nat_allocate_cooling(fwd, tcp_flags as u64, now);
    }
    block_count::settle();
    let new = r >= 0 && r & NEW_PAIR != 0;
    hosts::settle(fwd, admitted, new, tcp_flags);
    decode_endpoint(if r >= 0 { r & !NEW_PAIR } else { r })
}

/// Set in [`nat_allocate`]'s answer (above the endpoint's 48 bits) when the
/// pair is this flow's own, not another CPU's.
const NEW_PAIR: i64 = 1 << 48;

/// [`nat_allocate`]'s answer when no port was free toward the destination
/// and the flow may settle for the probe's best cooling port, which
/// [`nat_allocate_cooling`] then claims. Two calls from the caller's frame
/// rather than one inside the other: the claim's chain (claim, reserve)
/// below the walk's frame would pass the 512 bytes Linux 6.1 allows.
const SETTLE_COOLING: i64 = 1 << 49;

/// The port search of [`allocate`] as a global BPF function: verified once
/// on its own, with the probe walks, spill loop and fallback it holds,
/// instead of once for every path of nat_egress (and the hairpin program)
/// that reaches a new flow; Linux 6.1's verifier gave up on nat_egress with
/// it inlined. Returns [`encode_endpoint`]'s code, with [`NEW_PAIR`].
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn nat_allocate(fwd: *const FlowKey, tcp_flags: u64, now: u64) -> i64 {
    if fwd.is_null() {
        return encode_endpoint(Err(DropReason::AllocFail));
    }
    // A copy on this function's stack: Linux 6.1 takes no pointer argument
    // of a global function as a map key. Volatile, so that LLVM keeps it.
    // SAFETY: checked for null; the callers pass their stack key.
    let fwd = unsafe { core::ptr::read_volatile(fwd) };
    let mut new = false;
    let r = match allocate_port(&fwd, tcp_flags as u8, now, &mut new) {
        Ok(None) => return SETTLE_COOLING,
        Ok(Some(s)) => encode_endpoint(Ok(s)),
        Err(drop) => encode_endpoint(Err(drop)),
    };
    if r >= 0 && new { r | NEW_PAIR } else { r }
}

/// `new` is set when the pair inserted is this flow's own (not another
/// CPU's); `None` when the flow is to settle for the best cooling port.
#[inline(always)]
fn allocate_port(
    fwd: &FlowKey,
    tcp_flags: u8,
    now: u64,
    new: &mut bool,
) -> Result<Option<Endpoint>, DropReason> {
    let cfg: &Config = NAT_CONFIG.get(0).ok_or(DropReason::AllocFail)?;
    let pool_len = cfg.pool_len;
    if pool_len == 0 || pool_len > MAX_POOL {
        return Err(DropReason::AllocFail);
    }
    let j = mapping::join(fwd, tcp_flags, now);
    if j < 0 {
        return Err(insert_failure(j as i32));
    }
    if j >> 48 != 0 {
        // Joined its endpoint's mapping: a pair of its own (counted for
        // its host) unless another CPU created this very flow first.
        *new = j >> 48 == CLAIM_WON;
        let s = Endpoint {
            addr: (j >> 16) as u32,
            port: j as u16,
        };
        if *new {
            opened(cfg, fwd, s);
        }
        return Ok(Some(s));
    }
    // Below 2^48 and from a global function: 0 or 1, unknown to the
    // verifier, which so keeps one state for both modes.
    let mode = (j & 1) as u32;
    let seed = hash_seed();
    let p = NAT_PROBE_STATE
        .get_ptr_mut(0)
        .ok_or(DropReason::AllocFail)?;
    // SAFETY: this CPU's slot, used only for the length of this call.
    let p = unsafe { &mut *p };
    // Field by field: a whole Probe put together first would take its
    // size of this frame, which is on the deepest call chain.
    p.fwd = *fwd;
    p.now = now;
    p.best_until = u64::MAX;
    p.start = flow_hash(fwd, seed);
    p.tcp_flags = tcp_flags as u32;
    p.cooling = cfg.cooldown_enabled;
    p.found = FOUND_NONE;
    p.probes = 0;
    p.mode = mode;
    p.own = pool_index(fwd.saddr, seed, pool_len);
    p.pool_len = pool_len;
    p.slot = NO_SLOT;
    p.allocation = cfg.allocation;
    p.flow_step = 0;
    p.base = 0;
    p.taken = [0; NEW_BLOCK_TRIES as usize];
    p.pool.addr = 0;
    p.best_addr = 0;
    p.best_port = 0;
    // The flow's own stride: one for all flows clusters the taken ports
    // (see nat_common::probe).
    let (size, step) = match cfg.allocation {
        allocation::BLOCKS => (cfg.block_size, cfg.share_step),
        allocation::DETERMINISTIC => (cfg.det_range, cfg.share_step),
        _ => {
            let pool = NAT_POOL.get(0).ok_or(DropReason::AllocFail)?;
            (span(pool.port_min, pool.port_max), pool.step)
        }
    };
    if size == 0 || size > u16::MAX as u32 || step == 0 {
        return Err(DropReason::AllocFail);
    }
    p.flow_step = nat_flow_stride(1, size as u64, step as u64, p.start as u64) as u32;
    match cfg.allocation {
        allocation::BLOCKS => {
            if let Err(drop) = blocks_walk(cfg, fwd, now) {
                release_taken();
                return Err(drop);
            }
        }
        allocation::DETERMINISTIC => {
            if !enter(0) {
                return Err(DropReason::AllocFail);
            }
            walk_tour(Tour::uniform(
                span(p.pool.port_min, p.pool.port_max).min(SHARE_PROBES),
                1,
            ));
        }
        _ => {
            // The internal port first, where the host's own address can keep it.
            if !enter(0) {
                return Err(DropReason::AllocFail);
            }
            let src_port = u16::from_be(fwd.sport);
            if preservable(&p.pool, src_port) {
                p.probes = 1;
                try_candidate(p, src_port);
            }
            // Then one walk over the host's own address and, when it has no
            // free port toward the destination, the others before settling
            // for a cooling port. One lap of an address's walk visits each
            // of its ports once: a longer walk would only look at the same
            // ports again (and count their cooldowns twice).
            if p.found == FOUND_NONE {
                walk_tour(Tour::new(span(p.pool.port_min, p.pool.port_max), pool_len));
            }
        }
    }
    // Settling for a cooling port keeps the blocks taken here held until
    // nat_allocate_cooling has claimed it: the port may be in one of them.
    let settles = p.found == FOUND_NONE && p.best_port != 0 && cfg.policy != policy::STRICT;
    if !settles {
        release_taken();
    }
    match p.found {
        FOUND_WON => {
            *new = true;
            count(Counter::Opened);
            if cfg.allocation == allocation::WALK && p.slot != 0 {
                count(Counter::Spill);
            }
            histogram(probe_bucket(p.probes));
            opened(cfg, fwd, p.session);
            return Ok(Some(p.session));
        }
        FOUND_LOST => {
            count(Counter::InsertRace);
            return Ok(Some(p.session));
        }
        FOUND_ERROR => return Err(insert_failure(p.session.addr as i32)),
        _ => {}
    }
    if p.best_port == 0 {
        return Err(exhausted(cfg, fwd));
    }
    if cfg.policy == policy::STRICT {
        return Err(DropReason::StrictCooling);
    }
    Ok(None)
}

/// Candidates one walk over a host's own ports may try (its blocks', its
/// deterministic share's): the whole of a default layout (8 blocks of
/// 256), and a bound on what one SYN can cost whatever the layout, since a
/// host whose ports are all in use toward a server can send SYNs as fast
/// as it likes. Past it, the flow's own start and stride pick which ports
/// are tried.
const SHARE_PROBES: u32 = 2048;

/// New blocks one allocation may take when the host's blocks have no
/// usable port toward the destination. A block just given back after a
/// host's busy use toward one server has every port cooling toward it;
/// a second block, taken while the first is still held (so never the same
/// one), makes settling for a cooling port that unlucky draw twice over.
const NEW_BLOCK_TRIES: u32 = 2;

/// `blocks`: the host's blocks, then, when none has a usable port toward
/// the destination, up to [`NEW_BLOCK_TRIES`] new ones. Each new block
/// holds the allocation's count until [`release_taken`], so a block that
/// gave no port goes back, and one that did stays with its session.
#[inline(always)]
fn blocks_walk(cfg: &Config, fwd: &FlowKey, now: u64) -> Result<(), DropReason> {
    let p = NAT_PROBE_STATE
        .get_ptr_mut(0)
        .ok_or(DropReason::AllocFail)?;
    // SAFETY: this CPU's slot, used only for the length of this call.
    let p = unsafe { &mut *p };
    let held = blocks_in_use(fwd.saddr);
    walk_tour(Tour::uniform(
        cfg.block_size.min(SHARE_PROBES / held.max(1)),
        held,
    ));
    let mut outcome = Ok(());
    let mut k = 0;
    while k < NEW_BLOCK_TRIES as usize && p.found == FOUND_NONE {
        match blocks::take(fwd, now) {
            Ok(slot) => {
                p.taken[k] = slot + 1;
                p.base = slot;
                p.slot = NO_SLOT;
                walk_tour(Tour::uniform(cfg.block_size.min(SHARE_PROBES), 1));
            }
            // The host may still settle for a cooling port of its blocks.
            Err(_) if p.best_port != 0 => break,
            Err(drop) => {
                outcome = Err(drop);
                break;
            }
        }
        k += 1;
    }
    outcome
}

/// Gives back the allocation's holds on the blocks it took (a session
/// claimed on one holds it on its own).
#[inline(always)]
fn release_taken() {
    let Some(p) = NAT_PROBE_STATE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot, filled by nat_allocate in this program run.
    let p = unsafe { &mut *p };
    let mut k = 0;
    while k < NEW_BLOCK_TRIES as usize {
        let slot = p.taken[k];
        p.taken[k] = 0;
        if slot != 0 {
            p.base = slot - 1;
            if enter(0) {
                block_count::release(p.pool.addr, p.pool.port_min.to_be());
            }
        }
        k += 1;
    }
}

/// Claims the best cooling port the probe of [`nat_allocate`] found (in
/// this CPU's probe state, which nothing else touches between the two
/// calls of one program run), as a global BPF function for the reason
/// `nat_allocate` is one. Answers as `nat_allocate` does.
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn nat_allocate_cooling(fwd: *const FlowKey, tcp_flags: u64, now: u64) -> i64 {
    if fwd.is_null() {
        return encode_endpoint(Err(DropReason::AllocFail));
    }
    // SAFETY: checked for null; the callers pass their stack key. A copy,
    // as in nat_allocate.
    let fwd = unsafe { core::ptr::read_volatile(fwd) };
    let mut new = false;
    let r = encode_endpoint(settle_cooling(&fwd, tcp_flags as u8, now, &mut new));
    release_taken();
    if r >= 0 && new { r | NEW_PAIR } else { r }
}

#[inline(always)]
fn settle_cooling(
    fwd: &FlowKey,
    tcp_flags: u8,
    now: u64,
    new: &mut bool,
) -> Result<Endpoint, DropReason> {
    let cfg: &Config = NAT_CONFIG.get(0).ok_or(DropReason::AllocFail)?;
    let p = NAT_PROBE_STATE
        .get_ptr_mut(0)
        .ok_or(DropReason::AllocFail)?;
    // SAFETY: this CPU's slot, filled by nat_allocate in this program run.
    let p = unsafe { &*p };
    if p.best_port == 0 {
        return Err(exhausted(cfg, fwd));
    }
    let port = p.best_port.to_be();
    // Never another endpoint's mapping's port (checked here, once, rather
    // than for every cooling candidate in the probe).
    if mapping::owned_by_other(fwd, p.best_addr, port) {
        return Err(exhausted(cfg, fwd));
    }
    let held = block_count::hold(fwd.saddr, p.best_addr, port);
    if held == REFUSED {
        return Err(exhausted(cfg, fwd));
    }
    let marks = if held == HELD { SESSION_BLOCK } else { 0 };
    let claim = claim_pair(fwd, p.best_addr, port, tcp_flags, marks, now);
    if held == HELD && !matches!(claim, Claim::Won(_)) {
        block_count::release(p.best_addr, port);
    }
    match claim {
        Claim::Won(s) => {
            *new = true;
            let _ = NAT_COOLDOWN.remove(fwd.translated(p.best_addr, port));
            count(Counter::Opened);
            count(Counter::Fallback);
            histogram(PROBE_BUCKETS - 1);
            opened(cfg, fwd, s);
            Ok(s)
        }
        Claim::Lost(s) => {
            count(Counter::InsertRace);
            Ok(s)
        }
        Claim::Taken => Err(exhausted(cfg, fwd)),
        Claim::Failed(err) => Err(insert_failure(err)),
    }
}

/// Walks `tour` with the probe callback, from where the probe state says.
#[inline(always)]
fn walk_tour(tour: Tour) {
    let Some(p) = NAT_PROBE_STATE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot, used only for the length of this call.
    unsafe { (*p).tour = tour };
    // Linux 6.1 wants the callback's context to be a stack pointer (a null
    // one fails its check of the callback's arguments); the callback
    // ignores it and finds its state in NAT_PROBE_STATE.
    let mut unused = 0u64;
    // SAFETY: the callback only touches this CPU's `Probe` slot.
    unsafe {
        bpf_loop(
            tour.len(),
            probe_step as *mut c_void,
            core::ptr::addr_of_mut!(unused).cast(),
            0,
        );
    }
}

/// How many slots of the host's block list the walk looks at: up to the
/// last one in use (slots empty in between are passed over).
#[inline(always)]
fn blocks_in_use(host: u32) -> u32 {
    // SAFETY: read-only copy of a map value.
    let Some(list) = (unsafe { NAT_HOST_BLOCKS.get(host) }) else {
        return 0;
    };
    let mut used = 0;
    let mut k = 0;
    while k < MAX_BLOCKS_PER_HOST {
        // SAFETY: an aligned word of the copy's map value.
        if unsafe { core::ptr::read_volatile(&list.slots[k]) } != 0 {
            used = k as u32 + 1;
        }
        k += 1;
    }
    used
}

/// The drop for a flow no port was found for, logged as what ran out:
/// the host's share (`deterministic`), or every address's ports toward
/// the destination (`walk`; `blocks` logs its own in `super::blocks`).
#[inline(always)]
fn exhausted(cfg: &Config, fwd: &FlowKey) -> DropReason {
    match cfg.allocation {
        allocation::DETERMINISTIC => {
            // The share's address, as the walk loaded it (0: the host has none).
            let external = NAT_PROBE_STATE.get(0).map_or(0, |p| p.pool.addr);
            nat_events::exhausted(kind::PORTS_EXHAUSTED, fwd, external, cfg.det_range)
        }
        allocation::BLOCKS => {}
        _ => nat_events::exhausted(kind::ADDRESSES_EXHAUSTED, fwd, 0, 0),
    }
    DropReason::AllocFail
}

/// A session opened for `fwd` on `s`, logged when `log-sessions` asks.
#[inline(always)]
fn opened(cfg: &Config, fwd: &FlowKey, s: Endpoint) {
    if cfg.log_sessions != 0 {
        nat_events::session(kind::SESSION_CREATED, fwd, s.addr, s.port);
    }
}
