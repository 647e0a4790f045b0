//! Locks that outlive a panic.
//!
//! weir's mutexes guard plain data (tables, counters, caches) whose every
//! update leaves it usable: a thread that panicked while holding one does not
//! make the data wrong, so the poison flag is ignored rather than spreading
//! the panic to every later caller.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, taking the guard of a poisoned mutex as it is.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_mutex_still_gives_its_data() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let held = std::sync::Arc::clone(&m);
        let _ = std::thread::spawn(move || {
            let mut g = lock(&held);
            *g = 2;
            panic!("poisons the mutex");
        })
        .join();
        assert!(m.is_poisoned());
        assert_eq!(*lock(&m), 2);
    }
}
