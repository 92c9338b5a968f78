//! Mutex locking for the testbed's shared state.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Ignores poisoning: the guarded data here (peer lists, output lines,
/// counters) stays consistent even if a holder panicked, and a second panic
/// would only hide the first one's message.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
