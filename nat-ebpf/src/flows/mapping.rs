//! Endpoint-independent mappings (RFC 4787 REQ-1, RFC 5382 REQ-1) and the
//! filtering of packets from outside to them (RFC 4787 REQ-8), in the
//! flows layer: a flow joins its endpoint's mapping or claims a new one
//! with its port, through the session layer's claim; the allocator
//! (`super::alloc`), ingress and the hairpin ask here.
//!
//! A mapping is two entries, both inserted with BPF_NOEXIST: NAT_EIM by
//! internal endpoint and NAT_EIM_OWNER by external endpoint. The owner entry
//! goes in first and is what reserves the external port, so two CPUs
//! creating mappings at once can never give one external port to two
//! internal endpoints; the mapping entry second, so one endpoint never gets
//! two mappings.
//!
//! A mapping lives exactly as long as its endpoint has a session on it:
//! every forward entry created through it is marked
//! ([`nat_common::mapping::SESSION_MAPPED`]) and holds one reference in
//! `refs`, taken before its session is claimed and released when the
//! forward entry is deleted (however its session is freed: see
//! `session::mapping_ref`) or when its claim fails. `refs` changes only by
//! compare-and-exchange, and a reference is taken only while it is above
//! 0, so once the last reference is released the mapping is dying: nothing
//! joins it again, and the CPU whose release reached 0 deletes both
//! entries. A flow that meets a dying mapping simply gets a port of its
//! own for its destination.
//!
//! The cooldown always wins: a flow whose mapping's key toward its
//! destination is cooling gets another port (`eim_conflict`), since a
//! cooling key is never handed out. The address-and-port-dependent
//! allocator skips ports another endpoint's mapping owns
//! ([`owned_by_other`]), and the new-mapping allocator reserves a port's
//! owner entry before it claims the port toward the first destination.
//!
//! The kernel logic lives in global functions, which the verifier checks
//! once each instead of on every path of the programs that call them.

use core::ptr::read_volatile;

use aya_ebpf::bindings::BPF_NOEXIST;
use nat_common::{
    config::Config,
    counters::Counter,
    flow::{FlowKey, PROTO_TCP, PROTO_UDP, Session},
    mapping::{
        EndpointKey, Mapping, Owner, PeerKey, SESSION_BLOCK, SESSION_INBOUND, SESSION_MAPPED,
        admits, mode,
    },
    probe::pool_index,
};

use crate::{
    base::{
        maps::{
            NAT_CONFIG, NAT_COOLDOWN, NAT_EIM, NAT_EIM_OWNER, NAT_EIM_PEERS, NAT_POOL, NAT_REV,
            count, hash_seed,
        },
        outcome::DropReason,
        packet::{Endpoint, now_ns},
    },
    net::nat_events,
    session::{
        blocks::{self as block_count, HELD, REFUSED},
        claim::{CLAIM_LOST, CLAIM_TAKEN, CLAIM_WON, insert_failure, nat_claim_pair},
        mapping_ref::{acquire, release},
    },
};

/// Whether new flows of `proto` get endpoint-independent mappings.
#[inline(always)]
pub fn independent(cfg: &Config, proto: u8) -> bool {
    let m = match proto {
        PROTO_UDP => cfg.mapping_udp,
        PROTO_TCP => cfg.mapping_tcp,
        _ => mode::ADDRESS_PORT_DEPENDENT,
    };
    m == mode::ENDPOINT_INDEPENDENT
}

/// Which internal endpoint owns external (`proto`, `ext_addr`, `ext_port`)
/// (network byte order) through an endpoint-independent mapping, if one
/// does. Hairpinning and the ingress filter ask this.
#[inline(always)]
pub fn owner(proto: u8, ext_addr: u32, ext_port: u16) -> Option<Endpoint> {
    // SAFETY: read-only copy of a map value.
    let o = unsafe { NAT_EIM_OWNER.get(EndpointKey::new(proto, ext_addr, ext_port)) }?;
    Some(Endpoint {
        addr: o.addr,
        port: o.port,
    })
}

/// Whether (`ext_addr`, `port`) is owned by a mapping of another internal
/// endpoint than `fwd`'s source: the address-port-dependent allocator must
/// not hand it out.
#[inline(always)]
pub fn owned_by_other(fwd: &FlowKey, ext_addr: u32, port: u16) -> bool {
    owner(fwd.proto, ext_addr, port).is_some_and(|o| o.addr != fwd.saddr || o.port != fwd.sport)
}

/// Records that the mapping (`born`) on external `ext` sent to `remote`,
/// for address-dependent filtering.
#[inline(always)]
fn note_peer(proto: u8, ext_addr: u32, ext_port: u16, remote: u32, born: u64) {
    if proto == PROTO_UDP {
        let _ = NAT_EIM_PEERS.insert(PeerKey::new(proto, ext_addr, ext_port, remote), born, 0);
    }
}

/// A new flow's first step, under an endpoint-independent mode: its session
/// on its endpoint's live mapping, or the probe mode for the allocator. A
/// value below 2^48 is the mode ([`PROBE_PORT`] or [`PROBE_NEW_MAPPING`]);
/// one above is the session's claim code (bits 48 and up: `CLAIM_WON` or
/// `CLAIM_LOST`) with its external address (16..48) and port (0..16); a
/// negative one a failed insert's error. The mode reaches the allocator as
/// a number the verifier does not know, so both modes share its states in
/// nat_egress.
#[inline(always)]
pub fn join(fwd: &FlowKey, tcp_flags: u8, now: u64) -> i64 {
    nat_mapping_join(fwd, tcp_flags as u64, now)
}

/// Probe for a port for this destination alone.
pub const PROBE_PORT: i64 = 0;
/// Probe for a new mapping.
pub const PROBE_NEW_MAPPING: i64 = 1;

/// Claims a free candidate of the allocator's probe in `mode`: for a port of
/// its own, unless another endpoint's mapping owns it; for a new mapping,
/// after reserving the owner entry, then the mapping entry, which holds the
/// session's reference. Returns what `claim_pair` returns; `CLAIM_TAKEN`
/// also when the mapping rules refuse the candidate, or when the endpoint
/// got a mapping on another CPU meanwhile (which costs this one packet its
/// port rather than more code in the probe; the next packet joins it).
#[inline(always)]
pub fn claim(fwd: &FlowKey, ext_addr: u32, port: u16, tcp_flags: u8, mode: u32, now: u64) -> i64 {
    let flags_mode = tcp_flags as u64 | ((mode as u64) << 8);
    nat_mapping_claim(fwd, ext_addr as u64, port as u64, flags_mode, now)
}

/// Whether `rev_key` is cooling at `now` (cooldowns on): `Some(true)`
/// cooling, `Some(false)` an ended cooldown is there, `None` none.
#[inline(always)]
fn cooling(cfg: &Config, rev_key: &FlowKey, now: u64) -> Option<bool> {
    if cfg.cooldown_enabled == 0 {
        return None;
    }
    let until = NAT_COOLDOWN.get_ptr(rev_key)?;
    // SAFETY: map value pointer from the lookup.
    Some(unsafe { read_volatile(until) } > now)
}

/// See [`join`]. A dispatcher with a small frame of its own: the lookups
/// and the claim are calls side by side, so their frames never stack up on
/// top of nat_egress's (512 bytes for the whole chain).
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn nat_mapping_join(fwd: *const FlowKey, tcp_flags: u64, now: u64) -> i64 {
    let j = nat_mapping_find(fwd, now);
    if j >> 48 == 0 {
        return j;
    }
    let (ext_addr, ext_port) = ((j >> 16) as u32, j as u16);
    if fwd.is_null() {
        return PROBE_PORT;
    }
    // SAFETY: checked for null; the caller's stack key, read in place.
    let host = unsafe { (*fwd).saddr };
    // In blocks, the session holds its block (the mapping's port is in one
    // of the host's); a block being given back takes no new session.
    let held = block_count::hold(host, ext_addr, ext_port);
    if held == REFUSED {
        if !fwd.is_null() {
            // SAFETY: checked for null; the caller's stack key, read in place.
            let key = unsafe { &*fwd };
            release(key.proto, key.saddr, key.sport);
        }
        return PROBE_PORT;
    }
    let block = if held == HELD { SESSION_BLOCK } else { 0 };
    let flags = tcp_flags | (((SESSION_MAPPED | block) as u64) << 8);
    let r = nat_claim_pair(fwd, ext_addr as u64, ext_port as u64, flags, now);
    if held == HELD && r != CLAIM_WON {
        block_count::release(ext_addr, ext_port);
    }
    nat_mapping_joined(fwd, j, r)
}

/// [`join`]'s lookup: the probe mode, or the mapping a reference was taken
/// on (bits 48 and up: `JOINED`, or `JOINED_STALE` when an ended cooldown of
/// its key toward the destination is left to remove) with its external
/// address and port. Counts `eim_conflict` when that key is cooling.
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn nat_mapping_find(fwd: *const FlowKey, now: u64) -> i64 {
    if fwd.is_null() {
        return PROBE_PORT;
    }
    // SAFETY: checked for null; the caller's stack key, read in place.
    let key = unsafe { &*fwd };
    let Some(cfg) = NAT_CONFIG.get(0) else {
        return PROBE_PORT;
    };
    if !independent(cfg, key.proto) {
        return PROBE_PORT;
    }
    let Some(m) = NAT_EIM.get_ptr_mut(EndpointKey::new(key.proto, key.saddr, key.sport)) else {
        return PROBE_NEW_MAPPING;
    };
    // SAFETY: live map value pointer; a mapping's endpoint never changes.
    let (ext_addr, ext_port) = unsafe { ((*m).addr, (*m).port) };
    let code = match cooling(cfg, &key.translated(ext_addr, ext_port), now) {
        Some(true) => {
            // The TIME_WAIT rule wins: a port of its own.
            count(Counter::CooldownSkip);
            count(Counter::EimConflict);
            return PROBE_PORT;
        }
        Some(false) => JOINED_STALE,
        None => JOINED,
    };
    if !acquire(m) {
        // Dying: its entries are about to go, and no new mapping can be
        // made until they have.
        return PROBE_PORT;
    }
    (code << 48) | ((ext_addr as i64) << 16) | ext_port as i64
}

const JOINED: i64 = 1;
const JOINED_STALE: i64 = 2;

/// [`join`] after the claim of the session pair returned `r`.
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn nat_mapping_joined(fwd: *const FlowKey, j: i64, r: i64) -> i64 {
    if fwd.is_null() {
        return PROBE_PORT;
    }
    // SAFETY: checked for null; the caller's stack key, read in place.
    let key = unsafe { &*fwd };
    let (ext_addr, ext_port) = ((j >> 16) as u32, j as u16);
    if r == CLAIM_WON {
        if j >> 48 == JOINED_STALE {
            let _ = NAT_COOLDOWN.remove(key.translated(ext_addr, ext_port));
        }
        note_mapped_peer(key, ext_addr, ext_port);
        count(Counter::Opened);
        return (CLAIM_WON << 48) | ((ext_addr as i64) << 16) | ext_port as i64;
    }
    release(key.proto, key.saddr, key.sport);
    if r == CLAIM_TAKEN {
        // Another endpoint's session holds the key toward this
        // destination (only after a change of mode).
        count(Counter::EimConflict);
        return PROBE_PORT;
    }
    if r >> 48 == CLAIM_LOST {
        count(Counter::InsertRace);
    }
    r
}

/// [`note_peer`] for a session just won on `fwd`'s source's mapping (its
/// reference keeps the mapping there).
#[inline(always)]
fn note_mapped_peer(fwd: &FlowKey, ext_addr: u32, ext_port: u16) {
    // SAFETY: read-only copy of a map value.
    if let Some(m) = unsafe { NAT_EIM.get(EndpointKey::new(fwd.proto, fwd.saddr, fwd.sport)) } {
        note_peer(fwd.proto, ext_addr, ext_port, fwd.daddr, m.born);
    }
}

/// See [`claim`]; a dispatcher like [`nat_mapping_join`].
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn nat_mapping_claim(
    fwd: *const FlowKey,
    ext_addr: u64,
    port: u64,
    flags_mode: u64,
    now: u64,
) -> i64 {
    let mode = flags_mode >> 8;
    let reserved = nat_mapping_reserve(fwd, ext_addr, port, mode, now);
    if reserved == RESERVE_REFUSED {
        return CLAIM_TAKEN;
    }
    // A new mapping's session holds its first reference, and in blocks the
    // session holds its port's block.
    let block = if reserved == RESERVE_BLOCK {
        SESSION_BLOCK as u64
    } else {
        0
    };
    let flags = (flags_mode & 0xff) | (((mode & SESSION_MAPPED as u64) | block) << 8);
    let r = nat_claim_pair(fwd, ext_addr, port, flags, now);
    nat_mapping_claimed(fwd, mode | (block << 8), r, ext_addr, port);
    r
}

/// Before a candidate's claim: whether the mapping rules allow it. For a
/// port of its own, no other endpoint's mapping may own it; for a new
/// mapping, the owner entry is reserved, then the mapping entry inserted
/// with the session's reference. Then, in blocks, the port's block is
/// held for the session.
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn nat_mapping_reserve(
    fwd: *const FlowKey,
    ext_addr: u64,
    port: u64,
    mode: u64,
    now: u64,
) -> i32 {
    if fwd.is_null() {
        return RESERVE_REFUSED;
    }
    // SAFETY: checked for null; the caller's stack key, read in place.
    let key = unsafe { &*fwd };
    let (ext_addr, port) = (ext_addr as u32, port as u16);
    if mode as i64 != PROBE_NEW_MAPPING {
        if owned_by_other(key, ext_addr, port) {
            return RESERVE_REFUSED;
        }
        return hold_block(key.saddr, ext_addr, port);
    }
    let ext = EndpointKey::new(key.proto, ext_addr, port);
    let owner = Owner {
        addr: key.saddr,
        port: key.sport,
        _pad: 0,
        born: now,
    };
    if NAT_EIM_OWNER
        .insert(ext, owner, BPF_NOEXIST as u64)
        .is_err()
    {
        return RESERVE_REFUSED;
    }
    let mapping = Mapping {
        addr: ext_addr,
        port,
        _pad: 0,
        refs: 1,
        born: now,
    };
    let internal = EndpointKey::new(key.proto, key.saddr, key.sport);
    if NAT_EIM
        .insert(internal, mapping, BPF_NOEXIST as u64)
        .is_err()
    {
        // Ours: nothing else removes an owner entry without its mapping.
        let _ = NAT_EIM_OWNER.remove(ext);
        return RESERVE_REFUSED;
    }
    let held = hold_block(key.saddr, ext_addr, port);
    if held == RESERVE_REFUSED {
        // Both ours, just inserted, with no session on them yet.
        let _ = NAT_EIM.remove(internal);
        let _ = NAT_EIM_OWNER.remove(ext);
    }
    held
}

/// [`nat_mapping_reserve`]'s answers: the claim may go ahead (with the
/// port's block held for its session), or not.
const RESERVE_OK: i32 = 0;
const RESERVE_REFUSED: i32 = 1;
const RESERVE_BLOCK: i32 = 2;

/// In blocks, the session to be holds its block first: a block being
/// given back takes no new session. Done in the reservation, beside the
/// claim rather than above it, so no frame is added to the deepest call
/// chain (program, nat_allocate, probe callback, this claim).
#[inline(always)]
fn hold_block(host: u32, ext_addr: u32, port: u16) -> i32 {
    match block_count::hold(host, ext_addr, port) {
        HELD => RESERVE_BLOCK,
        REFUSED => RESERVE_REFUSED,
        _ => RESERVE_OK,
    }
}

/// After a new mapping's claim returned `r`: a won session records its
/// first destination for the filter; otherwise the reference is released
/// (another CPU may have joined meanwhile: release, never delete).
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn nat_mapping_claimed(
    fwd: *const FlowKey,
    mode_block: u64,
    r: i64,
    ext_addr: u64,
    port: u64,
) -> i32 {
    // The session's hold on its block, when the claim left no session.
    if mode_block >> 8 & SESSION_BLOCK as u64 != 0 && r != CLAIM_WON {
        block_count::release(ext_addr as u32, port as u16);
    }
    let mode = mode_block & 0xff;
    if fwd.is_null() || mode as i64 != PROBE_NEW_MAPPING {
        return 0;
    }
    // SAFETY: checked for null; the caller's stack key, read in place.
    let key = unsafe { &*fwd };
    if r == CLAIM_WON {
        // SAFETY: read-only copy of a map value; its reference keeps it.
        let ext = unsafe { NAT_EIM.get(EndpointKey::new(key.proto, key.saddr, key.sport)) }
            .map(|m| (m.addr, m.port));
        if let Some((addr, port)) = ext {
            note_mapped_peer(key, addr, port);
        }
    } else {
        release(key.proto, key.saddr, key.sport);
    }
    0
}

/// What a packet from outside that matches no session meets.
pub enum Miss {
    /// The filter admitted it: a session toward the mapping's owner was
    /// opened (or another CPU's is there now); its reverse entry.
    Opened(*mut Session),
    /// Passed to the stack, counted.
    Pass(Counter),
}

const ADMIT_NOT_MAPPED: i64 = 0;
const ADMIT_FILTERED: i64 = 1;
const ADMIT_OPENED: i64 = 2;

/// The ingress miss path: a UDP packet to a port an endpoint-independent
/// mapping owns opens a session for its remote toward the internal endpoint
/// when `filtering-udp` admits it. `rev_key` is the reverse key the packet
/// looked up (external endpoint, remote endpoint).
#[inline(always)]
pub fn inbound(rev_key: &FlowKey) -> Result<Miss, DropReason> {
    if rev_key.proto != PROTO_UDP {
        return Ok(Miss::Pass(Counter::NotOursIn));
    }
    let admitted = nat_mapping_admit(rev_key, now_ns());
    block_count::settle();
    match admitted {
        ADMIT_NOT_MAPPED => Ok(Miss::Pass(Counter::NotOursIn)),
        ADMIT_FILTERED => Ok(Miss::Pass(Counter::Filtered)),
        ADMIT_OPENED => Ok(match NAT_REV.get_ptr_mut(rev_key) {
            Some(entry) => Miss::Opened(entry),
            // Gone again already.
            None => Miss::Pass(Counter::NotOursIn),
        }),
        err => Err(insert_failure(err as i32)),
    }
}

/// [`inbound`]'s map work. A dispatcher with a small frame, like
/// [`nat_mapping_join`]: the filter's lookups, the claim and its outcome
/// are calls side by side, so their frames never stack up under a caller
/// that is deep already (the hairpin program's receiver side).
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn nat_mapping_admit(rev_key: *const FlowKey, now: u64) -> i64 {
    if rev_key.is_null() {
        return ADMIT_NOT_MAPPED;
    }
    let j = nat_mapping_admit_check(rev_key, now);
    if j >> 48 & ADMIT_GO == 0 {
        return j;
    }
    // SAFETY: checked for null; the caller passes its stack key.
    let (proto, ext_addr, ext_port, remote, remote_port) = unsafe {
        (
            (*rev_key).proto,
            (*rev_key).saddr,
            (*rev_key).sport,
            (*rev_key).daddr,
            (*rev_key).dport,
        )
    };
    let fwd = FlowKey::new(proto, (j >> 16) as u32, j as u16, remote, remote_port);
    let held = block_count::hold((j >> 16) as u32, ext_addr, ext_port);
    if held == REFUSED {
        release(proto, (j >> 16) as u32, j as u16);
        return ADMIT_FILTERED;
    }
    let block = if held == HELD { SESSION_BLOCK } else { 0 };
    let flags = ((SESSION_MAPPED | SESSION_INBOUND | block) as u64) << 8;
    let r = nat_claim_pair(&fwd, ext_addr as u64, ext_port as u64, flags, now);
    if held == HELD && r != CLAIM_WON {
        block_count::release(ext_addr, ext_port);
    }
    nat_mapping_admitted(rev_key, j, r)
}

/// Bits 48 and up of [`nat_mapping_admit_check`]'s answer when the filter
/// admits: `ADMIT_GO`, and `ADMIT_STALE` when an ended cooldown of the key
/// is to be removed once claimed. The internal endpoint is below them.
const ADMIT_GO: i64 = 1;
const ADMIT_STALE: i64 = 2;

/// The filter's side of [`nat_mapping_admit`]: whether the mapping on the
/// packet's external endpoint admits its remote, and if so a reference
/// taken on it and its internal endpoint.
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn nat_mapping_admit_check(rev_key: *const FlowKey, now: u64) -> i64 {
    if rev_key.is_null() {
        return ADMIT_NOT_MAPPED;
    }
    // SAFETY: checked for null; the caller passes its stack key.
    let key = unsafe { *rev_key };
    let (ext_addr, ext_port) = (key.saddr, key.sport);
    // SAFETY: read-only copy of a map value.
    let Some(o) = (unsafe { NAT_EIM_OWNER.get(EndpointKey::new(key.proto, ext_addr, ext_port)) })
    else {
        return ADMIT_NOT_MAPPED;
    };
    let Some(cfg) = NAT_CONFIG.get(0) else {
        return ADMIT_NOT_MAPPED;
    };
    let peer = PeerKey::new(key.proto, ext_addr, ext_port, key.daddr);
    // SAFETY: read-only copy of a map value.
    let known = unsafe { NAT_EIM_PEERS.get(peer) }.is_some_and(|born| *born == o.born);
    if !admits(cfg.filtering_udp, known) {
        return ADMIT_FILTERED;
    }
    let (int_addr, int_port) = (o.addr, o.port);
    let Some(m) = NAT_EIM.get_ptr_mut(EndpointKey::new(key.proto, int_addr, int_port)) else {
        // Being created or deleted: nothing to deliver to yet.
        return ADMIT_FILTERED;
    };
    // SAFETY: live map value pointer.
    if unsafe { (*m).addr != ext_addr || (*m).port != ext_port } {
        return ADMIT_FILTERED;
    }
    // The remote's key is handed out as any other: never while it cools.
    let stale = match cooling(cfg, &key, now) {
        Some(true) => {
            count(Counter::CooldownSkip);
            return ADMIT_FILTERED;
        }
        Some(false) => ADMIT_STALE,
        None => 0,
    };
    if !acquire(m) {
        return ADMIT_FILTERED;
    }
    ((ADMIT_GO | stale) << 48) | ((int_addr as i64) << 16) | int_port as i64
}

/// The filter's answer for a hairpinned flow from inside to the mapping's
/// external endpoint (`fwd`'s destination), asked before the sender's
/// session is allocated, so that a packet it refuses leaves no session
/// behind: `None` when no mapping owns the endpoint, else whether it admits
/// the sender as it will be seen, from its mapping's external address, or
/// else its host's address in the pool (paired pooling). A flow whose
/// allocation ends on another address meets the filter again when its
/// receiver's session is opened ([`inbound`]).
#[inline(always)]
pub fn hairpin_filter(fwd: &FlowKey) -> Option<bool> {
    match nat_mapping_hairpin_filter(fwd) {
        ADMIT_NOT_MAPPED => None,
        ADMIT_FILTERED => Some(false),
        _ => Some(true),
    }
}

/// See [`hairpin_filter`]: `ADMIT_NOT_MAPPED`, `ADMIT_FILTERED`, or
/// `ADMIT_OPENED` for "admits". Lookups only: the reference and the claim
/// are [`nat_mapping_admit`]'s, once the sender's endpoint is known.
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn nat_mapping_hairpin_filter(fwd: *const FlowKey) -> i64 {
    if fwd.is_null() {
        return ADMIT_NOT_MAPPED;
    }
    // SAFETY: checked for null; the caller passes its plan's key.
    let key = unsafe { *fwd };
    // SAFETY: read-only copy of a map value.
    let Some(o) = (unsafe { NAT_EIM_OWNER.get(EndpointKey::new(key.proto, key.daddr, key.dport)) })
    else {
        return ADMIT_NOT_MAPPED;
    };
    let (born, int_addr, int_port) = (o.born, o.addr, o.port);
    let Some(cfg) = NAT_CONFIG.get(0) else {
        return ADMIT_NOT_MAPPED;
    };
    // Being created or deleted: nothing to deliver to, as in the filter.
    // SAFETY: read-only copy of a map value.
    match unsafe { NAT_EIM.get(EndpointKey::new(key.proto, int_addr, int_port)) } {
        Some(m) if m.addr == key.daddr && m.port == key.dport => {}
        _ => return ADMIT_FILTERED,
    }
    // The settings that do not ask who the sender is.
    if !admits(cfg.filtering_udp, true) {
        return ADMIT_FILTERED;
    }
    if admits(cfg.filtering_udp, false) {
        return ADMIT_OPENED;
    }
    // SAFETY: read-only copy of a map value.
    let own = unsafe { NAT_EIM.get(EndpointKey::new(key.proto, key.saddr, key.sport)) };
    let remote = match own {
        Some(m) if independent(cfg, key.proto) => m.addr,
        _ => {
            let idx = pool_index(key.saddr, hash_seed(), cfg.pool_len);
            match NAT_POOL.get(idx) {
                Some(a) => a.addr,
                None => return ADMIT_FILTERED,
            }
        }
    };
    let peer = PeerKey::new(key.proto, key.daddr, key.dport, remote);
    // SAFETY: read-only copy of a map value.
    let known = unsafe { NAT_EIM_PEERS.get(peer) }.is_some_and(|b| *b == born);
    if admits(cfg.filtering_udp, known) {
        ADMIT_OPENED
    } else {
        ADMIT_FILTERED
    }
}

/// The outcome of [`nat_mapping_admit`]'s claim `r` for the admission `j`:
/// a won claim keeps the reference, anything else gives it back.
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn nat_mapping_admitted(rev_key: *const FlowKey, j: i64, r: i64) -> i64 {
    if rev_key.is_null() {
        return ADMIT_FILTERED;
    }
    // SAFETY: checked for null; the caller passes its stack key.
    let key = unsafe { *rev_key };
    if r == CLAIM_WON {
        if j >> 48 & ADMIT_STALE != 0 {
            let _ = NAT_COOLDOWN.remove(key);
        }
        count(Counter::EimInbound);
        nat_events::inbound_session(&key, (j >> 16) as u32, j as u16);
        return ADMIT_OPENED;
    }
    release(key.proto, (j >> 16) as u32, j as u16);
    if r < 0 {
        return r;
    }
    // Lost: this flow's own session was created by another CPU meanwhile;
    // taken: a session holds the reverse key now. Either way a fresh lookup
    // finds what to translate with.
    if r >> 48 == CLAIM_LOST || r == CLAIM_TAKEN {
        ADMIT_OPENED
    } else {
        ADMIT_FILTERED
    }
}
