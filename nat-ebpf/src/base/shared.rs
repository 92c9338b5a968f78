//! Map memory that other CPUs write at the same time, in the bottom layer:
//! whole 64-bit words, read and written in one access each, changed by a
//! fully ordered compare-and-exchange (BPF_CMPXCHG, Linux 5.12 and later;
//! the kernel's value-returning atomics are full barriers on every
//! architecture). The seen words, host counts, mapping references and
//! route caches above are all such words.

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd};

use nat_common::seen_word::{ATTEMPTS, SharedWord};

/// An aligned 64-bit word inside a live map value.
#[derive(Clone, Copy)]
pub struct MapWord(pub *mut u64);

impl MapWord {
    /// A plain 64-bit store: readers see the old or the new value, whole.
    #[inline(always)]
    pub fn store(self, v: u64) {
        // SAFETY: an aligned word of a live map value.
        unsafe { core::ptr::write_volatile(self.0, v) }
    }

    /// Adds `v` (wrapping: a negative number as its two's complement) and
    /// returns the value before. The bpf target's CPU v1 has no
    /// value-returning add, so this is a compare-and-exchange loop; past
    /// [`ATTEMPTS`] lost races it adds with BPF_XADD, which returns nothing
    /// but is never lost either, and returns the last value it read.
    #[inline(always)]
    pub fn fetch_add(self, v: u64) -> u64 {
        let mut cur = self.load();
        let mut i = 0;
        while i < ATTEMPTS {
            match self.compare_exchange(cur, cur.wrapping_add(v)) {
                Ok(()) => return cur,
                Err(found) => cur = found,
            }
            i += 1;
        }
        add(self.0, v);
        cur
    }
}

/// BPF_XADD: an atomic add whose result is not used.
#[inline(always)]
pub fn add<T: Copy>(word: *mut T, v: T) {
    // SAFETY: an aligned word of a live map value.
    unsafe {
        let _ = atomic_xadd::<T, T, { AtomicOrdering::SeqCst }>(word, v);
    }
}

impl SharedWord for MapWord {
    #[inline(always)]
    fn load(&self) -> u64 {
        // SAFETY: an aligned word of a live map value.
        unsafe { core::ptr::read_volatile(self.0) }
    }

    #[inline(always)]
    fn compare_exchange(&self, current: u64, new: u64) -> Result<(), u64> {
        // SAFETY: an aligned word of a live map value; BPF_CMPXCHG on map
        // values is what the verifier allows for 64-bit words.
        let (found, ok) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                self.0, current, new,
            )
        };
        if ok { Ok(()) } else { Err(found) }
    }
}
