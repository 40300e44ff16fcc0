//! The one piece of state every part of the aggregator shares: the [`ClusterState`] behind a mutex. The
//! ingest service, the publisher, the HTTP endpoints and the consumer service lock it for short critical
//! sections and never across an await.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::state::ClusterState;

/// The state shared by the service, the HTTP endpoints and the publisher.
pub type Shared = Arc<Mutex<ClusterState>>;

/// Lock the state; a poisoned lock (a panic elsewhere) still yields the data.
pub fn lock(state: &Shared) -> MutexGuard<'_, ClusterState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}
