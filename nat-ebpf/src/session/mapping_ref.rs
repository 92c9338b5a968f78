//! References on endpoint-independent mappings, in the session layer:
//! taken by a flow that joins a mapping (`flows::mapping`), released with
//! the forward entry that holds one ([`remove_forward`], the way every
//! forward entry is deleted, so freeing a session releases its reference
//! wherever it is freed). A mapping lives exactly as long as a forward
//! entry holds a reference on it: `refs` changes only by
//! compare-and-exchange, a reference is taken only while it is above 0,
//! and the CPU whose release reaches 0 deletes both of the mapping's
//! entries.

use core::ptr::read_volatile;

use nat_common::{
    flow::{FlowKey, Session},
    mapping::{EndpointKey, Mapping, SESSION_MAPPED},
    seen_word::{SharedWord, update},
};

use crate::base::{
    maps::{NAT_EIM, NAT_EIM_OWNER, NAT_FWD},
    shared::MapWord,
};

/// Exchange attempts for a release. A failed attempt means another CPU
/// changed the count in between (a session of the same endpoint opening or
/// ending within a few instructions); a release that ran out would leave
/// the mapping alive with no session, so it gets far more than it can need.
const RELEASE_ATTEMPTS: u32 = 64;

/// Takes a reference on a live mapping; false if it is dying.
#[inline(always)]
pub fn acquire(m: *mut Mapping) -> bool {
    // SAFETY: live map value pointer; `refs` is an aligned 64-bit word.
    let refs = MapWord(unsafe { core::ptr::addr_of_mut!((*m).refs) });
    update(&refs, |r| if r == 0 { None } else { Some(r + 1) }).is_some()
}

/// Releases one reference of the mapping of internal endpoint
/// (`proto`, `addr`, `port`); the last one deletes the mapping.
#[inline(always)]
pub fn release(proto: u8, addr: u32, port: u16) {
    nat_mapping_release(proto as u64, addr as u64, port as u64);
}

/// [`release`] as a global function, verified once: its exchange loop
/// would otherwise be walked on every path that ends a session or gives a
/// failed claim's reference back. Returns 1 when it ran out of attempts.
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn nat_mapping_release(proto: u64, addr: u64, port: u64) -> i32 {
    let key = EndpointKey::new(proto as u8, addr as u32, port as u16);
    let Some(m) = NAT_EIM.get_ptr_mut(key) else {
        return 0;
    };
    // SAFETY: live map value pointer.
    let refs = MapWord(unsafe { core::ptr::addr_of_mut!((*m).refs) });
    let mut current = refs.load();
    let mut tries = 0;
    while tries < RELEASE_ATTEMPTS {
        if current == 0 {
            return 0;
        }
        match refs.compare_exchange(current, current - 1) {
            Ok(()) => {
                if current == 1 {
                    // Dying: no one joins it any more. The mapping entry
                    // goes first, so a new flow of the endpoint creates a
                    // fresh one; the owner entry last, so the port stays
                    // reserved until nothing refers to it.
                    // SAFETY: live map value pointer.
                    let (ext_addr, ext_port) = unsafe { ((*m).addr, (*m).port) };
                    let _ = NAT_EIM.remove(key);
                    let _ = NAT_EIM_OWNER.remove(EndpointKey::new(proto as u8, ext_addr, ext_port));
                }
                return 0;
            }
            Err(found) => current = found,
        }
        tries += 1;
    }
    1
}

/// Deletes the forward entry of an ending session, and releases the
/// mapping reference it holds. Every deletion of a forward entry goes
/// through here.
#[inline(always)]
pub fn remove_forward(key: &FlowKey, fwd: *const Session) -> Option<u16> {
    // SAFETY: the caller's live map value pointer, read before the delete.
    let marks = unsafe { read_volatile(&(*fwd).mapping) };
    // Only the CPU whose delete succeeded releases: one release per entry.
    NAT_FWD.remove(key).ok()?;
    if marks & SESSION_MAPPED != 0 {
        release(key.proto, key.saddr, key.sport);
    }
    Some(marks)
}
