//! What the aggregator has *published* of this agent run: the counter running totals as of the last
//! `Commit` (pure, no I/O).
//!
//! Every report the agent sends is recorded here as (seq, counter id, running total). A `Commit{seq}`
//! from the aggregator means every increment up to that report is in a window all sinks delivered, so
//! the latest total of each counter with a seq at or below it becomes that counter's *committed* total.
//! Snapshots carry the committed totals; an aggregator that does not know the run (it restarted and lost
//! its state) counts from them, so nothing it never published is lost and nothing published is counted
//! twice.
//!
//! Memory: one entry per counter change per report, released at each commit. The log is bounded
//! (`max_entries`); at the bound the oldest entries are folded into the committed totals as if committed
//! (counted in [`CommitLog::overflowed`]): should the aggregator then also lose its state, those
//! increments would be lost instead of recounted.

use std::collections::{HashMap, VecDeque};

/// The commit log of one agent run.
#[derive(Debug)]
pub struct CommitLog {
    entries: VecDeque<(u64, u32, f64)>,
    committed: HashMap<u32, f64>,
    committed_seq: u64,
    max_entries: usize,
    overflowed: u64,
}

impl CommitLog {
    pub fn new(max_entries: usize) -> Self {
        Self { entries: VecDeque::new(), committed: HashMap::new(), committed_seq: 0, max_entries: max_entries.max(1), overflowed: 0 }
    }

    /// Record the counter totals a sent report `seq` carried.
    pub fn record(&mut self, seq: u64, totals: impl IntoIterator<Item = (u32, f64)>) {
        for (id, total) in totals {
            self.entries.push_back((seq, id, total));
        }
        while self.entries.len() > self.max_entries {
            if let Some((_, id, total)) = self.entries.pop_front() {
                self.committed.insert(id, total);
                self.overflowed += 1;
            }
        }
    }

    /// The aggregator committed every report up to `seq`. Returns false for an old (or repeated) commit.
    pub fn commit(&mut self, seq: u64) -> bool {
        if seq <= self.committed_seq {
            return false;
        }
        self.committed_seq = seq;
        while let Some(&(s, id, total)) = self.entries.front() {
            if s > seq {
                break;
            }
            self.committed.insert(id, total);
            self.entries.pop_front();
        }
        true
    }

    /// The committed running total of a counter (0 when nothing of it was committed).
    pub fn committed(&self, id: u32) -> f64 {
        self.committed.get(&id).copied().unwrap_or(0.0)
    }

    pub fn committed_seq(&self) -> u64 {
        self.committed_seq
    }

    /// Entries waiting for a commit.
    pub fn backlog(&self) -> usize {
        self.entries.len()
    }

    /// Entries folded in as committed at the bound.
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }

    /// A series the engine no longer has: its entries and committed total go.
    pub fn forget(&mut self, id: u32) {
        self.committed.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_take_the_latest_total_at_or_below_the_seq() {
        let mut log = CommitLog::new(100);
        log.record(1, [(1, 0.0), (2, 5.0)]);
        log.record(2, [(1, 3.0)]);
        log.record(3, [(1, 7.0), (2, 6.0)]);
        assert_eq!((log.committed(1), log.committed(2)), (0.0, 0.0));
        assert!(log.commit(2));
        assert_eq!((log.committed(1), log.committed(2)), (3.0, 5.0));
        assert_eq!(log.backlog(), 2);
        assert!(!log.commit(2), "a repeated commit is ignored");
        assert!(!log.commit(1), "an older commit is ignored");
        assert_eq!(log.committed(1), 3.0);
        assert!(log.commit(10));
        assert_eq!((log.committed(1), log.committed(2), log.backlog()), (7.0, 6.0, 0));
        assert_eq!(log.committed(99), 0.0);
    }

    #[test]
    fn the_bound_folds_the_oldest_in_and_counts_them() {
        let mut log = CommitLog::new(3);
        log.record(1, [(1, 1.0), (2, 1.0)]);
        log.record(2, [(1, 2.0), (2, 2.0)]);
        assert_eq!((log.backlog(), log.overflowed()), (3, 1));
        assert_eq!(log.committed(1), 1.0);
        log.forget(1);
        assert_eq!(log.committed(1), 0.0);
    }
}
