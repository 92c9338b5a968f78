//! The claim of a session pair, in the session layer: the one way a new
//! session's two entries go into the maps (the allocator's candidates,
//! joins of endpoint-independent mappings and their inbound admissions all
//! claim through [`nat_claim_pair`]), what its answers mean, and the rule
//! every claim obeys: a port a port forward owns is never handed out.
//!
//! A pair is claimed by inserting its reverse entry with BPF_NOEXIST: the
//! reverse key is (protocol, external address, external port, remote
//! address, remote port), so the claim is atomic across CPUs and the same
//! port stays usable toward every other destination. The forward entry
//! follows with BPF_NOEXIST too; if another CPU created the flow first,
//! the claim is rolled back and the winner's entry used.

use aya_ebpf::bindings::BPF_NOEXIST;
use nat_common::{
    flow::{FlowKey, Session},
    port_forward::ForwardKey,
    tcp_state::seen_bits,
};

use crate::base::{
    maps::{NAT_FORWARD, NAT_FORWARD_KEY, NAT_FWD, NAT_REV, NAT_SCRATCH},
    outcome::DropReason,
};

/// What a failed BPF_NOEXIST insert returns when the key exists.
const EEXIST: i32 = 17;

/// Why an insert that did not meet an existing key failed: a full map
/// (-E2BIG from a preallocated hash, -ENOMEM) takes no entry for any key,
/// so no further candidate is tried. The error travels as a plain number
/// and becomes a drop reason only here, at the exit, so that the verifier
/// walks the probe loop with one state for every failure.
#[inline(always)]
pub fn insert_failure(err: i32) -> DropReason {
    if err == -EEXIST || err >= 0 {
        DropReason::AllocFail
    } else {
        DropReason::SessionTableFull
    }
}

/// The pair is this flow's own.
pub const CLAIM_WON: i64 = 1;
/// A session holds the reverse key (or a port forward the port).
pub const CLAIM_TAKEN: i64 = 2;
/// Another CPU created this very flow meanwhile. In bits 48 and up, above
/// the winner's address (16..48) and port (0..16).
pub const CLAIM_LOST: i64 = 3;

/// Inserts the session pair for `fwd` on (`ext_addr`, `port`), reverse
/// entry first, as a global BPF function, which the verifier checks once
/// on its own rather than once for every state of the probe walk that
/// reaches it. Returns a `CLAIM_*` code, or the failed insert's error.
/// `tcp_flags` carries the forward entry's mapping mark in bits 8..16.
#[unsafe(no_mangle)]
#[inline(never)]
// The entry is inserted by reference on purpose: by value it would be
// copied onto this function's stack first.
#[allow(clippy::needless_borrows_for_generic_args)]
pub extern "C" fn nat_claim_pair(
    fwd: *const FlowKey,
    ext_addr: u64,
    port: u64,
    tcp_flags: u64,
    now: u64,
) -> i64 {
    if fwd.is_null() {
        return 0;
    }
    // SAFETY: checked for null; the caller passes its stack key. A copy on
    // this stack, volatile so that LLVM keeps it: Linux 6.1 takes no pointer
    // argument of a global function as a map key.
    let fwd = unsafe { core::ptr::read_volatile(fwd) };
    let (ext_addr, port) = (ext_addr as u32, port as u16);
    // A port forward owns the port toward every remote: never handed out.
    // Checked here, in the one function every candidate's claim goes
    // through, because the probe walk's stack has no byte to spare.
    if forwarded(fwd.proto, ext_addr, port) {
        return CLAIM_TAKEN;
    }
    let rev_key = fwd.translated(ext_addr, port);
    // One entry, filled for each direction in turn, in a per-CPU scratch
    // slot: the stacks of nat_egress and the probe callback have no room.
    // It is inserted from there, by reference, so no copy of it lands on
    // this function's stack either (the mapping functions call this one).
    let Some(entry) = NAT_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's own slot, used only for the length of this call.
    let entry = unsafe { &mut *entry };
    fill_entry(entry, fwd.saddr, fwd.sport, now);
    if let Err(err) = NAT_REV.insert(rev_key, &*entry, BPF_NOEXIST as u64) {
        return if err == -EEXIST {
            CLAIM_TAKEN
        } else {
            err as i64
        };
    }
    entry.addr = ext_addr;
    entry.port = port;
    entry.mapping = (tcp_flags >> 8) as u16;
    // Generation 0: the mapping's first connection.
    entry.seen = seen_bits(tcp_flags as u8) as u64;
    let err = match NAT_FWD.insert(fwd, &*entry, BPF_NOEXIST as u64) {
        Ok(()) => return CLAIM_WON,
        Err(err) => err,
    };
    let _ = NAT_REV.remove(rev_key);
    // SAFETY: read-only copy of a map value.
    match unsafe { NAT_FWD.get(fwd) } {
        Some(winner) => (CLAIM_LOST << 48) | ((winner.addr as i64) << 16) | winner.port as i64,
        // -EEXIST here: the winner's flow is already gone again.
        None => err as i64,
    }
}

/// A fresh reverse entry, written field by field: a whole `Session` (or
/// its zeroed parts) makes LLVM call memset, which the verifier counts as
/// one more frame under this function, at the bottom of a call chain that
/// is at Linux 6.1's 512-byte limit (every frame rounded up to 32).
#[inline(always)]
fn fill_entry(entry: &mut Session, addr: u32, port: u16, now: u64) {
    use core::ptr::write_volatile;
    // SAFETY: plain stores to the fields of a live map value.
    unsafe {
        write_volatile(&mut entry.addr, addr);
        write_volatile(&mut entry.port, port);
        write_volatile(&mut entry.mapping, 0);
        write_volatile(&mut entry.seen, 0);
        write_volatile(&mut entry.acked, 0);
        write_volatile(&mut entry.window, 0);
        write_volatile(&mut entry.live_until, 0);
        write_volatile(&mut entry.last_seen, now);
        write_volatile(&mut entry.hop.words[0], 0);
        write_volatile(&mut entry.hop.words[1], 0);
        write_volatile(&mut entry.hop.words[2], 0);
        write_volatile(&mut entry.hop.words[3], 0);
        write_volatile(&mut entry.sent_end, 0);
        write_volatile(&mut entry.wscale, 0);
    }
}

/// Whether a claim must skip (`proto`, `addr`, `port`): a forward owns it.
#[inline(always)]
fn forwarded(proto: u8, addr: u32, port: u16) -> bool {
    // No stack: this runs under the probe walk's callback, which with
    // nat_egress's frame uses the whole 512 bytes, so the key is put
    // together in a per-CPU slot (a map value may serve as a key).
    let Some(slot) = NAT_FORWARD_KEY.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's own slot, used only for the length of this call.
    let key = unsafe { &mut *slot };
    *key = ForwardKey::new(proto, addr, port);
    NAT_FORWARD.get_ptr(key).is_some()
}
