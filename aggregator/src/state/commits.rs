//! Commit bookkeeping: which report of each node run every sink has delivered (the commit an agent's
//! position and a new aggregator's recovery rest on), and the increments of a run that keeps its
//! position, withheld from the open window while its stream is gone (see the proto's
//! `Hello.keeps_position`).

use std::sync::Arc;

use super::{ClusterState, CommitMark};

impl ClusterState {
    /// A keeping run's stream is gone: take its increments out of the open window (see the proto's
    /// `Hello.keeps_position`). They stay in its `unpublished` entries for a return of the same run.
    pub(super) fn withhold(&mut self, name: &Arc<str>) {
        self.move_pending(name, true);
    }

    /// The run's stream is live again: its withheld increments go back into the open window.
    pub(super) fn release(&mut self, name: &Arc<str>) {
        self.move_pending(name, false);
    }

    fn move_pending(&mut self, name: &Arc<str>, withhold: bool) {
        let Some(mut node) = self.book.node_mut(name) else { return };
        if !node.set_withheld(withhold) {
            return;
        }
        let sign = if withhold { -1.0 } else { 1.0 };
        for (slot, pending) in node.unpublished_by_slot() {
            self.series.add_increment(slot, sign * pending);
        }
    }

    /// Record that every sink delivered windows with these marks; returns how many node runs advanced.
    pub fn commit(&mut self, marks: &[CommitMark]) -> usize {
        let advanced = marks.iter().filter(|m| self.book.commit(m)).count();
        if advanced > 0 {
            self.commit_generation += 1;
        }
        advanced
    }

    /// Bumped whenever a commit advances (streams compare it to send their node's commit).
    pub fn commit_generation(&self) -> u64 {
        self.commit_generation
    }

    /// The committed seq of the node's current session, if it is still that session.
    pub fn committed_seq(&self, node: &str, session: u64) -> Option<u64> {
        self.book.get(node).filter(|n| n.session() == session).map(|n| n.committed_seq())
    }

    /// A departed keeping run's (committed, closed) seqs: what it still waits for after its goodbye.
    pub fn departed_commits(&self, node: &str, run_id: u64) -> Option<(u64, u64)> {
        self.book.departed().get(node).filter(|d| d.run_id == run_id && d.keeps_position).map(|d| (d.committed_seq, d.closed_seq))
    }

    /// Departed-node records held.
    pub fn departed_count(&self) -> usize {
        self.book.departed().len()
    }
}
