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
//! Each entry also keeps ipamd's raw value, and each report ipamd's start time, so the committed
//! *position* (raw values of one ipamd process) can be kept on the node ([`crate::position`]).
//!
//! Memory: one entry per counter change per report, released at each commit. The log is bounded
//! (`max_entries`); at the bound the oldest entries are folded into the committed totals as if committed
//! (counted in [`CommitLog::overflowed`]): should the aggregator then also lose its state, those
//! increments would be lost instead of recounted.

use std::collections::{HashMap, VecDeque};

/// The commit log of one agent run.
#[derive(Debug)]
pub struct CommitLog {
    /// (seq, counter id, running total, ipamd raw value).
    entries: VecDeque<(u64, u32, f64, f64)>,
    /// (seq, ipamd start time) of every recorded report not yet committed.
    starts: VecDeque<(u64, f64)>,
    /// Counter id → (running total, raw value) at the last commit.
    committed: HashMap<u32, (f64, f64)>,
    committed_seq: u64,
    committed_start: f64,
    max_entries: usize,
    overflowed: u64,
}

impl CommitLog {
    pub fn new(max_entries: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            starts: VecDeque::new(),
            committed: HashMap::new(),
            committed_seq: 0,
            committed_start: 0.0,
            max_entries: max_entries.max(1),
            overflowed: 0,
        }
    }

    /// Record the counters a sent report `seq` carried: (id, running total, raw value), and the ipamd
    /// start time the report named.
    pub fn record(&mut self, seq: u64, ipamd_start: f64, totals: impl IntoIterator<Item = (u32, f64, f64)>) {
        for (id, total, raw) in totals {
            self.entries.push_back((seq, id, total, raw));
        }
        if ipamd_start > 0.0 && self.starts.back().is_none_or(|(_, s)| *s != ipamd_start) {
            self.starts.push_back((seq, ipamd_start));
        }
        while self.entries.len() > self.max_entries {
            if let Some((_, id, total, raw)) = self.entries.pop_front() {
                self.committed.insert(id, (total, raw));
                self.overflowed += 1;
            }
        }
        while self.starts.len() > self.max_entries {
            if let Some((_, start)) = self.starts.pop_front() {
                self.committed_start = start;
            }
        }
    }

    /// The aggregator committed every report up to `seq`. Returns false for an old (or repeated) commit.
    pub fn commit(&mut self, seq: u64) -> bool {
        if seq <= self.committed_seq {
            return false;
        }
        self.committed_seq = seq;
        while let Some(&(s, id, total, raw)) = self.entries.front() {
            if s > seq {
                break;
            }
            self.committed.insert(id, (total, raw));
            self.entries.pop_front();
        }
        while let Some(&(s, start)) = self.starts.front() {
            if s > seq {
                break;
            }
            self.committed_start = start;
            self.starts.pop_front();
        }
        true
    }

    /// The committed running total of a counter (0 when nothing of it was committed).
    pub fn committed(&self, id: u32) -> f64 {
        self.committed.get(&id).map_or(0.0, |c| c.0)
    }

    /// ipamd's raw value of a counter at the last commit, if any of it was committed.
    pub fn committed_raw(&self, id: u32) -> Option<f64> {
        self.committed.get(&id).map(|c| c.1)
    }

    /// ipamd's start time as of the last committed report (0 when unknown or nothing committed).
    pub fn committed_start(&self) -> f64 {
        self.committed_start
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
        log.record(1, 100.0, [(1, 0.0, 10.0), (2, 5.0, 50.0)]);
        log.record(2, 100.0, [(1, 3.0, 13.0)]);
        log.record(3, 200.0, [(1, 7.0, 4.0), (2, 6.0, 1.0)]);
        assert_eq!((log.committed(1), log.committed(2), log.committed_raw(1), log.committed_start()), (0.0, 0.0, None, 0.0));
        assert!(log.commit(2));
        assert_eq!((log.committed(1), log.committed(2)), (3.0, 5.0));
        assert_eq!((log.committed_raw(1), log.committed_raw(2), log.committed_start()), (Some(13.0), Some(50.0), 100.0));
        assert_eq!(log.backlog(), 2);
        assert!(!log.commit(2), "a repeated commit is ignored");
        assert!(!log.commit(1), "an older commit is ignored");
        assert_eq!(log.committed(1), 3.0);
        assert!(log.commit(10));
        assert_eq!((log.committed(1), log.committed(2), log.backlog()), (7.0, 6.0, 0));
        assert_eq!((log.committed_raw(1), log.committed_start()), (Some(4.0), 200.0), "the raw values of the restarted ipamd");
        assert_eq!(log.committed(99), 0.0);
    }

    #[test]
    fn the_bound_folds_the_oldest_in_and_counts_them() {
        let mut log = CommitLog::new(3);
        log.record(1, 100.0, [(1, 1.0, 1.0), (2, 1.0, 1.0)]);
        log.record(2, 100.0, [(1, 2.0, 2.0), (2, 2.0, 2.0)]);
        assert_eq!((log.backlog(), log.overflowed()), (3, 1));
        assert_eq!(log.committed(1), 1.0);
        log.forget(1);
        assert_eq!(log.committed(1), 0.0);
    }
}
