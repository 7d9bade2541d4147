//! The one way dcd takes a lock.

use std::sync::{Mutex, MutexGuard};

/// Lock `m`, taking the data even if a thread panicked while holding it: every
/// value kept behind our locks is whole after each statement, so a panic
/// elsewhere never leaves it half-written, and one failed call must not take
/// every later call down with it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
