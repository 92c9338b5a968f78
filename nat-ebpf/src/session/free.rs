//! Freeing a session, in the session layer: the one way a session ends,
//! whoever ends it (the sweep, `flows::sweep`, for an idle session;
//! eviction, [`super::evict`], for a host's idle opening under table
//! pressure). What must happen when a session goes belongs here.
//!
//! The order keeps the key claimed until the last moment: the key is
//! cooled first, then the forward entry is deleted (with the mapping
//! reference it holds, and the session counted off its host), then the
//! reverse entry, so a key is never both unclaimed and not cooling; a
//! session on a port block gives its count back last (`super::blocks`). A
//! packet that arrives while the caller looks at the session keeps it:
//! `last_seen` is read again right before the deletes.

use core::ptr::read_volatile;

use aya_ebpf::bindings::BPF_NOEXIST;
use nat_common::{
    flow::{FlowKey, Session},
    mapping::{SESSION_BLOCK, SESSION_INBOUND},
    nat_event::kind,
};

use super::{blocks, hosts, mapping_ref::remove_forward};
use crate::{
    base::maps::{NAT_CONFIG, NAT_COOLDOWN, NAT_REV},
    net::nat_events,
};

/// What a failed BPF_NOEXIST insert returns when the key exists.
const EEXIST: i32 = 17;

/// Makes `key` cool until at least `until`; false if it could not be
/// recorded (the cooldown map is full). A longer cooldown already there
/// stays: this only ever extends.
#[inline(always)]
pub fn cool(key: &FlowKey, until: u64) -> bool {
    // Most keys have no entry: one insert, no lookup.
    match NAT_COOLDOWN.insert(key, until, BPF_NOEXIST as u64) {
        Ok(()) => return true,
        Err(e) if e != -EEXIST => return false,
        Err(_) => {}
    }
    if let Some(cur) = NAT_COOLDOWN.get_ptr(key)
        // SAFETY: map value pointer from the lookup.
        && unsafe { read_volatile(cur) } >= until
    {
        return true;
    }
    NAT_COOLDOWN.insert(key, until, 0).is_ok()
}

/// What became of a session [`free_session`] was asked to free.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Freed: its key cooling, both entries gone, its host's count given
    /// back (unless it was opened from outside).
    Freed,
    /// Kept, with its port: its key could not be cooled (the cooldown map
    /// is full), and a key is never freed without cooling.
    Kept,
    /// Left alone: a packet came since the caller's reads, or another CPU
    /// deleted the forward entry first (and frees the rest itself).
    Spared,
}

/// Frees the session whose forward entry is `fwd` (under `key`) and whose
/// reverse entry is `rev` (under `rev_key`, if it points back): cools the
/// key until `cool_until` (if it must cool), then deletes the forward
/// entry and then the reverse one. `f_last` and `r_last` are the entries'
/// `last_seen` as the caller read them when it judged the session: moved
/// since, the session stays.
#[inline(always)]
pub fn free_session(
    key: &FlowKey,
    fwd: *const Session,
    f_last: u64,
    rev_key: &FlowKey,
    rev: Option<*const Session>,
    r_last: u64,
    cool_until: Option<u64>,
) -> Fate {
    if let Some(until) = cool_until
        && !cool(rev_key, until)
    {
        // The session and its port stay until the cooldown map has room.
        return Fate::Kept;
    }
    // A packet since the reads above: the session lives on (the cooldown
    // just written does no harm while the key is claimed).
    // SAFETY: map value pointers from the caller's lookups, still mapped.
    let moved = unsafe {
        read_volatile(&(*fwd).last_seen) != f_last
            || rev.is_some_and(|r| read_volatile(&(*r).last_seen) != r_last)
    };
    if moved {
        return Fate::Spared;
    }
    // The forward entry goes with its mapping reference. Only the CPU
    // whose delete succeeded goes on: it counts the session off its host
    // (a port forward's inbound session was never counted) and deletes the
    // reverse entry, which another's delete of a key since claimed anew
    // would take from its new session.
    let Some(marks) = remove_forward(key, fwd) else {
        return Fate::Spared;
    };
    if marks & SESSION_INBOUND == 0 {
        hosts::released(key.saddr);
    }
    if rev.is_some() {
        let _ = NAT_REV.remove(rev_key);
    }
    // Last: the block's count keeps the block (and its place in the
    // host's list) until the session is gone from both maps.
    if marks & SESSION_BLOCK != 0 {
        blocks::release(rev_key.saddr, rev_key.sport);
    }
    if NAT_CONFIG.get(0).is_some_and(|c| c.log_sessions != 0) {
        nat_events::session(kind::SESSION_DELETED, key, rev_key.saddr, rev_key.sport);
    }
    Fate::Freed
}
