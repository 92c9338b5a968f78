//! A session direction's seen word: which connection on the mapping its
//! [`seen`] bits belong to, and the bits, changed only by compare-and-swap.
//!
//! Several CPUs handle packets of one direction at once (queues, the fast
//! path beside TC egress), so a plain read-modify-write of the bits could
//! lose a FIN or RST and with it the close-time cooldown. Every change is a
//! fully ordered compare-and-exchange of the whole word (BPF_CMPXCHG on a
//! 64-bit map value, Linux 5.12 and later) computed from the value it
//! replaces; a change that lost the race is recomputed from the winner's
//! value ([`update`]).
//!
//! The word's upper bits are a generation: a SYN that reopens a closed
//! mapping (the client's retry after a collision, or reuse of the 5-tuple)
//! starts a new generation in the forward entry. The reverse entry is never
//! written by egress; its bits count only while its generation equals the
//! forward entry's ([`current_rev_bits`]), and ingress moves it to the
//! forward entry's generation with the first packet it records after the
//! reopen ([`reverse_add`]). A packet whose CPU read the generation before a
//! reopen cannot mark the new connection: every change names the generation
//! it was computed for, and the exchange fails if the word moved on.

use crate::flow::seen;

/// Low bits: the [`seen`] bits.
const BITS: u32 = 8;

pub const fn bits(word: u64) -> u8 {
    word as u8
}

pub const fn generation(word: u64) -> u64 {
    word >> BITS
}

pub const fn pack(generation: u64, bits: u8) -> u64 {
    (generation << BITS) | bits as u64
}

/// The reverse entry's bits as far as the forward entry's connection goes:
/// bits of an earlier generation belong to a connection that has been
/// closed and reopened on this mapping since.
pub const fn current_rev_bits(fwd: u64, rev: u64) -> u8 {
    if generation(rev) == generation(fwd) {
        bits(rev)
    } else {
        0
    }
}

/// The bits a packet adds to a direction that has `own`, given whether
/// the other direction has sent its FIN: the first FIN is marked as such.
pub const fn new_bits(packet: u8, own: u8, other_fin: bool) -> u8 {
    let mut add = packet & !own;
    if add & seen::FIN != 0 && !other_fin {
        add |= seen::FIN_FIRST;
    }
    add
}

/// The forward word once a packet of generation `epoch` adds its `packet`
/// bits; `None` when there is nothing to add, or when the word has moved to
/// a later generation (the packet belongs to the connection before a reopen).
pub const fn forward_add(word: u64, epoch: u64, packet: u8, other_fin: bool) -> Option<u64> {
    if generation(word) != epoch {
        return None;
    }
    let add = new_bits(packet, bits(word), other_fin);
    if add == 0 {
        None
    } else {
        Some(word | add as u64)
    }
}

/// Whether a direction with `own` bits and the other with `other` has ended.
pub const fn ended(own: u8, other: u8) -> bool {
    (own | other) & (seen::FIN | seen::RST) != 0
}

/// The forward word once a SYN opens a new connection on a mapping whose
/// connection of generation `epoch` has ended (`other`: the reverse's current
/// bits); `None` when it has not ended or the word has already moved on.
pub const fn forward_reopen(word: u64, epoch: u64, other: u8) -> Option<u64> {
    if generation(word) != epoch || !ended(bits(word), other) {
        return None;
    }
    Some(pack(epoch + 1, seen::SYN))
}

/// The forward word once a remote's SYN reopens a port forward's session
/// whose connection of generation `epoch` has ended (`rev`: the reverse's
/// current bits): a new generation in which the internal host has sent
/// nothing yet; `None` when it has not ended or the word has already moved
/// on. The one change ingress makes to the forward word, by the same
/// exchange as every other: the generation lives there, and the reverse
/// word then follows it with the SYN's bit ([`reverse_add`]). Egress
/// packets of the old connection computed for `epoch` are refused from
/// then on ([`forward_add`]).
pub const fn inbound_reopen(word: u64, epoch: u64, rev: u8) -> Option<u64> {
    if generation(word) != epoch || !ended(bits(word), rev) {
        return None;
    }
    Some(pack(epoch + 1, 0))
}

/// The reverse word once an inbound packet adds its `packet` bits, the
/// forward entry being at generation `fwd_gen`. A word of an earlier
/// generation starts afresh at `fwd_gen` (even with nothing to add, so that
/// the next packets see current bits); `None` when nothing changes, or when
/// the word is already at a later generation than the one this packet's
/// CPU read (a reopen and its first answer overtook it).
pub const fn reverse_add(word: u64, fwd_gen: u64, packet: u8, other_fin: bool) -> Option<u64> {
    let epoch = generation(word);
    if epoch > fwd_gen {
        return None;
    }
    let own = if epoch == fwd_gen { bits(word) } else { 0 };
    let add = new_bits(packet, own, other_fin);
    if add == 0 && epoch == fwd_gen {
        return None;
    }
    Some(pack(fwd_gen, own | add))
}

/// A seen word in memory other CPUs write too: a map value in the kernel,
/// an atomic in host tests.
pub trait SharedWord {
    fn load(&self) -> u64;
    /// A fully ordered compare-and-exchange: `Err` carries the value found.
    fn compare_exchange(&self, current: u64, new: u64) -> Result<(), u64>;
}

/// Exchange attempts [`update`] makes. An attempt fails only when another
/// CPU changed the word in between, and each such change is a packet of the
/// same session that either added a bit (at most the 6 bits of one
/// generation) or moved the word to a later generation (which the next
/// attempt sees: the forward side then stops, the reverse side recomputes
/// against it). Running out takes more than this many packets of one
/// session landing on other CPUs within the few instructions of one
/// attempt, each adding something new.
pub const ATTEMPTS: u32 = 8;

/// Replaces the word with `next(current)` atomically; returns the value
/// replaced and the new one, or `None` when `next` declined.
#[inline(always)]
pub fn update<W: SharedWord>(word: &W, next: impl Fn(u64) -> Option<u64>) -> Option<(u64, u64)> {
    let mut current = word.load();
    let mut tries = 0;
    while tries < ATTEMPTS {
        let new = next(current)?;
        match word.compare_exchange(current, new) {
            Ok(()) => return Some((current, new)),
            Err(found) => current = found,
        }
        tries += 1;
    }
    None
}

#[cfg(not(target_arch = "bpf"))]
impl SharedWord for core::sync::atomic::AtomicU64 {
    fn load(&self) -> u64 {
        self.load(core::sync::atomic::Ordering::Relaxed)
    }

    fn compare_exchange(&self, current: u64, new: u64) -> Result<(), u64> {
        use core::sync::atomic::Ordering::{Relaxed, SeqCst};
        self.compare_exchange(current, new, SeqCst, Relaxed)
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::seen::{FIN, FIN_FIRST, RST, SYN, SYN_ACK};

    #[test]
    fn reverse_bits_of_an_earlier_connection_do_not_count() {
        let fwd = pack(3, SYN);
        assert_eq!(current_rev_bits(fwd, pack(3, SYN_ACK)), SYN_ACK);
        assert_eq!(current_rev_bits(fwd, pack(2, SYN_ACK | RST)), 0);
    }

    #[test]
    fn forward_changes_name_their_generation() {
        let w = pack(1, SYN);
        assert_eq!(
            forward_add(w, 1, FIN, false),
            Some(pack(1, SYN | FIN | FIN_FIRST))
        );
        assert_eq!(forward_add(w, 1, FIN, true), Some(pack(1, SYN | FIN)));
        assert_eq!(forward_add(w, 1, SYN, false), None);
        // Computed before a reopen that won: the new connection is untouched.
        assert_eq!(forward_add(pack(2, SYN), 1, FIN, false), None);
        assert_eq!(forward_reopen(w, 1, 0), None);
        assert_eq!(forward_reopen(w, 1, RST), Some(pack(2, SYN)));
        assert_eq!(forward_reopen(pack(1, SYN | FIN), 1, 0), Some(pack(2, SYN)));
        assert_eq!(forward_reopen(pack(2, SYN), 1, RST), None);
    }

    #[test]
    fn a_remote_reopens_an_ended_forwarded_session() {
        // Reset from either side, or a FIN each way: a new generation in
        // which the internal host has sent nothing.
        assert_eq!(
            inbound_reopen(pack(4, SYN_ACK | RST), 4, SYN),
            Some(pack(5, 0))
        );
        assert_eq!(
            inbound_reopen(pack(4, SYN_ACK), 4, SYN | RST),
            Some(pack(5, 0))
        );
        assert_eq!(
            inbound_reopen(pack(4, SYN_ACK | FIN), 4, SYN | FIN),
            Some(pack(5, 0))
        );
        // Open, or moved on since the packet's CPU read it: nothing.
        assert_eq!(inbound_reopen(pack(4, SYN_ACK), 4, SYN), None);
        assert_eq!(inbound_reopen(pack(5, 0), 4, RST), None);
        // The reverse word follows with the SYN.
        assert_eq!(
            reverse_add(pack(4, SYN | RST), 5, SYN, false),
            Some(pack(5, SYN))
        );
    }

    #[test]
    fn reverse_follows_the_forward_generation() {
        let old = pack(1, SYN_ACK | FIN);
        // The new connection's SYN-ACK: the old bits are gone.
        assert_eq!(reverse_add(old, 2, SYN_ACK, false), Some(pack(2, SYN_ACK)));
        // Nothing to add still moves the word, once.
        assert_eq!(reverse_add(old, 2, 0, false), Some(pack(2, 0)));
        assert_eq!(reverse_add(pack(2, 0), 2, 0, false), None);
        assert_eq!(reverse_add(pack(2, SYN_ACK), 2, SYN_ACK, false), None);
        assert_eq!(
            reverse_add(pack(2, SYN_ACK), 2, FIN, false),
            Some(pack(2, SYN_ACK | FIN | FIN_FIRST))
        );
        // A CPU that read generation 1 never writes over generation 2.
        assert_eq!(reverse_add(pack(2, SYN_ACK), 1, RST, false), None);
    }

    /// The exchange loop against real contention: threads adding
    /// different bits to one word never lose one.
    #[test]
    fn concurrent_additions_keep_every_bit() {
        extern crate std;
        use core::sync::atomic::AtomicU64;
        use std::{sync::Arc, thread, vec::Vec};
        for _ in 0..200 {
            let word = Arc::new(AtomicU64::new(pack(5, 0)));
            let handles: Vec<_> = [SYN, FIN, RST, SYN_ACK]
                .into_iter()
                .map(|bit| {
                    let word = Arc::clone(&word);
                    thread::spawn(move || {
                        update(&*word, |w| forward_add(w, 5, bit, true)).is_some()
                    })
                })
                .collect();
            for h in handles {
                assert!(h.join().unwrap(), "an exchange ran out of attempts");
            }
            let w = word.load(core::sync::atomic::Ordering::SeqCst);
            assert_eq!(w, pack(5, SYN | FIN | RST | SYN_ACK));
        }
    }

    /// A late FIN of the old connection racing the reopen either lands
    /// before it (and is wiped with the old connection) or is refused.
    #[test]
    fn a_reopen_is_never_marked_by_the_old_connection() {
        extern crate std;
        use core::sync::atomic::{AtomicU64, Ordering};
        use std::{sync::Arc, thread};
        for _ in 0..500 {
            let word = Arc::new(AtomicU64::new(pack(1, SYN | RST)));
            let late = {
                let word = Arc::clone(&word);
                thread::spawn(move || update(&*word, |w| forward_add(w, 1, FIN, true)))
            };
            let reopen = {
                let word = Arc::clone(&word);
                thread::spawn(move || update(&*word, |w| forward_reopen(w, 1, 0)))
            };
            late.join().unwrap();
            assert!(reopen.join().unwrap().is_some(), "the reopen must happen");
            assert_eq!(word.load(Ordering::SeqCst), pack(2, SYN));
        }
    }
}
