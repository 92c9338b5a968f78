//! Map memory that other CPUs write at the same time: whole 64-bit words,
//! read and written in one access each, changed by a fully ordered
//! compare-and-exchange (BPF_CMPXCHG, Linux 5.12 and later; the kernel's
//! value-returning atomics are full barriers on every architecture).

use core::intrinsics::{AtomicOrdering, atomic_cxchg};

use nat_common::seen_word::SharedWord;

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
