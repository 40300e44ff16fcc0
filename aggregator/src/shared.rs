//! The one piece of state every part of the aggregator shares: the [`ClusterState`] behind a mutex. The
//! ingest service, the publisher, the HTTP endpoints and the consumer service lock it for short critical
//! sections and never across an await.
//!
//! [`lock`] also keeps the longest time anyone waited for the lock (in the state's stats, written under
//! the lock), so `/metrics` shows how long ingestion was held up; an uncontended lock is not timed.

use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Instant;

use crate::state::ClusterState;

/// The state shared by the service, the HTTP endpoints and the publisher.
pub type Shared = Arc<Mutex<ClusterState>>;

/// Lock the state; a poisoned lock (a panic elsewhere) still yields the data.
pub fn lock(state: &Shared) -> MutexGuard<'_, ClusterState> {
    match state.try_lock() {
        Ok(g) => g,
        Err(TryLockError::Poisoned(e)) => e.into_inner(),
        Err(TryLockError::WouldBlock) => {
            let t = Instant::now();
            let mut g = state.lock().unwrap_or_else(|e| e.into_inner());
            g.record_lock_wait(t.elapsed());
            g
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_contended_lock_records_its_wait() {
        let state: Shared = Arc::new(Mutex::new(ClusterState::new(crate::state::StateConfig::default())));
        let held = lock(&state);
        assert_eq!(held.stats().longest_lock_wait, Duration::ZERO, "uncontended: not timed");
        let other = state.clone();
        let waiter = std::thread::spawn(move || drop(lock(&other)));
        std::thread::sleep(Duration::from_millis(30));
        drop(held);
        let _ = waiter.join();
        assert!(lock(&state).stats().longest_lock_wait >= Duration::from_millis(20));
    }
}
