//! The handle every part of the aggregator holds: [`StateHandle`] owns the [`ClusterState`] behind a
//! mutex and is the only code that takes that lock (mini-redis's `Db`). Each method is one short
//! critical section, never held across an await: the ingest service, the publisher, the TTL sweeper, the
//! HTTP endpoints, the consumer service and the EC2 refreshers change the state only through the named
//! methods below, each of which keeps the state's invariants.
//!
//! Readers get values, not references: [`StateHandle::read`] runs a function over `&ClusterState` under
//! the lock and its result must be `'static` (a view, a page, a count), so nothing that points into the
//! state outlives the critical section.
//!
//! The lock also keeps the longest time anyone waited for it (in the state's stats, written under the
//! lock), so `/metrics` shows how long ingestion was held up; an uncontended lock is not timed.

use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use cni_metrics_proto::v1::{Hello, Report};

use super::index::NodeChanges;
use super::subnets::prefixes::PrefixReport;
use super::subnets::space::PrefixMode;
use super::{
    Applied, ClosedWindow, ClusterState, CommitMark, IngestError, LowThreshold, MetricsView, RefreshResult, Refusal, StateConfig,
    SubnetFacts, Welcomed,
};

/// The cluster state, shared by the service, the publisher, the HTTP endpoints, the consumer service and
/// the refreshers. Cloning it clones the handle, not the state.
#[derive(Clone, Debug)]
pub struct StateHandle {
    shared: Arc<Mutex<ClusterState>>,
}

impl StateHandle {
    pub fn new(cfg: StateConfig) -> Self {
        Self::from(ClusterState::new(cfg))
    }

    /// Lock the state; a poisoned lock (a panic elsewhere) still yields the data.
    fn lock(&self) -> MutexGuard<'_, ClusterState> {
        match self.shared.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => {
                let t = Instant::now();
                let mut g = self.shared.lock().unwrap_or_else(|e| e.into_inner());
                g.record_lock_wait(t.elapsed());
                g
            }
        }
    }

    /// A value computed from the state under the lock (a view, a page, a count).
    pub fn read<R: 'static>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        f(&self.lock())
    }

    /// A stream said hello (see [`ClusterState::hello`]).
    pub fn hello(&self, h: &Hello, now: Instant) -> Result<Welcomed, IngestError> {
        self.lock().hello(h, now)
    }

    /// Apply one report of `node` on stream `session` (`in_parts`: it arrived in parts).
    pub fn report(&self, node: &str, session: u64, r: &Report, in_parts: bool, now: Instant) -> Result<Applied, IngestError> {
        let mut st = self.lock();
        let applied = st.report(node, session, r, now);
        if in_parts && applied.is_ok() {
            st.record_report_in_parts();
        }
        applied
    }

    /// The stream ended without a goodbye: the node stays until its TTL.
    pub fn disconnected(&self, node: &str, session: u64) {
        self.lock().disconnected(node, session);
    }

    /// The node said goodbye: its gauges leave the sums at once; false when the session was not current.
    pub fn goodbye(&self, node: &str, session: u64) -> bool {
        self.lock().goodbye(node, session)
    }

    /// A departed keeping run's (committed, closed) seqs: what it still waits for after its goodbye.
    pub fn departed_commits(&self, node: &str, run_id: u64) -> Option<(u64, u64)> {
        self.lock().departed_commits(node, run_id)
    }

    /// The node's committed seq when the stream `session` has not sent it yet (it sent `sent`).
    pub fn unsent_commit(&self, node: &str, session: u64, sent: u64) -> Option<u64> {
        self.lock().committed_seq(node, session).filter(|s| *s > sent)
    }

    /// A stream or message refused before it reached the state (limits, authentication, framing).
    pub fn refuse(&self, why: Refusal) {
        self.lock().record_refusal(why);
    }

    /// A stream ended because its agent's token expired.
    pub fn record_token_expiry(&self) {
        self.lock().record_token_expiry();
    }

    /// Drop nodes silent for longer than their TTL; returns their names.
    pub fn expire(&self, now: Instant) -> Vec<Arc<str>> {
        self.lock().expire(now)
    }

    /// Close the publish window at `end_unix_ms`; returns it and how long the close held the lock.
    pub fn close_window(&self, end_unix_ms: i64) -> (ClosedWindow, Duration) {
        let mut st = self.lock();
        let held = Instant::now();
        let closed = st.take_window(end_unix_ms);
        (closed, held.elapsed())
    }

    /// Record that every sink delivered windows with these marks; returns the new commit generation
    /// when some node run's commit advanced.
    pub fn commit(&self, marks: &[CommitMark]) -> Option<u64> {
        let mut st = self.lock();
        (st.commit(marks) > 0).then(|| st.commit_generation())
    }

    /// The `/metrics` copy: the cluster series (`with_aggregates`, i.e. `USE_PROMETHEUS`) and the
    /// self-metrics, copied under the lock so the text is written after it; the cluster id for labels.
    /// The longest lock wait the page shows starts over, and the next page shows this copy's hold.
    pub fn metrics_copy(&self, with_aggregates: bool) -> (Option<MetricsView>, String) {
        let mut st = self.lock();
        let held = Instant::now();
        let view = with_aggregates.then(|| st.metrics_view(held));
        st.record_render_hold(held.elapsed());
        (view, st.cluster_id().to_owned())
    }

    /// The consumers' change log since the last call and, under the same lock, `f` over the state.
    /// `staleness_counts` is asked under the lock too (whether a change subscriber exists: subscribers
    /// register under the lock, so a tick and a new subscriber's first page are ordered); when it says
    /// yes and nodes went stale by time since the last call, the version moves: no report moved it, yet
    /// what consumers see changed. `f` gets its answer.
    pub fn take_changes<R: 'static>(
        &self,
        since: Instant,
        now: Instant,
        staleness_counts: impl FnOnce() -> bool,
        f: impl FnOnce(&ClusterState, Option<NodeChanges>, bool) -> R,
    ) -> R {
        let mut st = self.lock();
        let counts = staleness_counts();
        let changes = st.take_changes(since, now, counts);
        f(&st, changes, counts)
    }

    /// `--subnet-metrics`: turn subnet metrics on.
    pub fn enable_subnets(&self, threshold: LowThreshold, forecast_window: Duration) {
        self.lock().enable_subnets(threshold, forecast_window);
    }

    /// `--subnet-prefixes`: count free prefixes in this mode.
    pub fn enable_prefixes(&self, mode: PrefixMode, low_below: u32) {
        self.lock().enable_prefixes(mode, low_below);
    }

    /// A subnet refresh succeeded: these are the subnets EC2 described.
    pub fn set_subnet_facts(&self, facts: Vec<SubnetFacts>, now_unix_ms: i64) {
        self.lock().set_subnet_facts(facts, now_unix_ms);
    }

    /// An attempt within a subnet refresh failed and is retried.
    pub fn record_subnet_retry(&self, result: RefreshResult) {
        self.lock().record_subnet_retry(result);
    }

    /// A subnet refresh failed: the last values stay, marked stale.
    pub fn subnet_refresh_failed(&self, result: RefreshResult) {
        self.lock().subnet_refresh_failed(result);
    }

    /// A prefix refresh succeeded: the counts, and the EC2 entries left out.
    pub fn set_prefix_report(&self, report: PrefixReport, skipped: u32, now_unix_ms: i64) {
        self.lock().set_prefix_report(report, skipped, now_unix_ms);
    }

    /// One EC2 call of a prefix refresh, by result.
    pub fn record_prefix_call(&self, result: RefreshResult) {
        self.lock().record_prefix_call(result);
    }

    /// A prefix refresh failed: the last counts stay, marked stale.
    pub fn prefix_refresh_failed(&self) {
        self.lock().prefix_refresh_failed();
    }
}

#[cfg(test)]
impl StateHandle {
    /// Tests set the state up directly.
    pub(crate) fn change<R>(&self, f: impl FnOnce(&mut ClusterState) -> R) -> R {
        f(&mut self.lock())
    }
}

/// A handle over a state built elsewhere (tests, benches).
impl From<ClusterState> for StateHandle {
    fn from(st: ClusterState) -> Self {
        Self { shared: Arc::new(Mutex::new(st)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contended_lock_records_its_wait() {
        let state = StateHandle::new(StateConfig::default());
        let held = state.lock();
        assert_eq!(held.stats().longest_lock_wait, Duration::ZERO, "uncontended: not timed");
        let other = state.clone();
        let waiter = std::thread::spawn(move || other.read(|_| ()));
        std::thread::sleep(Duration::from_millis(30));
        drop(held);
        let _ = waiter.join();
        assert!(state.read(|st| st.stats().longest_lock_wait) >= Duration::from_millis(20));
    }
}
