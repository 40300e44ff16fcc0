//! The sink's backlog: queued datums in window order, with each window's publisher sequence number so the
//! sink can say up to which window everything is resolved (delivered, rejected and logged, or dropped and
//! counted). Pure: the sink pushes windows, the sender takes batches from the front and resolves them.

use std::collections::VecDeque;

use super::encode::{next_batch_len, Queued};

#[derive(Debug, Default)]
pub(super) struct Queue {
    datums: VecDeque<Queued>,
    /// (datums, publisher's window seq) per queued window, oldest first.
    windows: VecDeque<(usize, u64)>,
    /// The highest window seq handed to the sink.
    accepted_through: u64,
    /// Datums of the front window already resolved (the window is partly sent).
    front_sent: usize,
}

impl Queue {
    /// Queue window `seq`; beyond `max_windows` the oldest windows are dropped: returns their datums.
    pub(super) fn push_window(&mut self, seq: u64, datums: Vec<Queued>, max_windows: usize) -> usize {
        if !datums.is_empty() {
            self.windows.push_back((datums.len(), seq));
            self.datums.extend(datums);
        }
        self.accepted_through = self.accepted_through.max(seq);
        let mut dropped = 0;
        while self.windows.len() > max_windows {
            let n = self.windows.front().map_or(0, |w| w.0) - self.front_sent;
            self.resolve(n);
            dropped += n;
        }
        dropped
    }

    /// The next request's datums from the front (copies: they leave the queue only once resolved).
    pub(super) fn next_batch(&self, namespace: &str) -> Vec<Queued> {
        let n = next_batch_len(self.datums.iter(), namespace);
        self.datums.iter().take(n).cloned().collect()
    }

    /// Every window up to this seq is resolved: delivered, rejected (logged) or dropped (counted).
    pub(super) fn delivered_through(&self) -> u64 {
        self.windows.front().map_or(self.accepted_through, |(_, seq)| seq.saturating_sub(1))
    }

    /// (windows, datums) waiting.
    pub(super) fn backlog(&self) -> (usize, usize) {
        (self.windows.len(), self.datums.len())
    }

    /// The first `n` datums are resolved: remove them, keeping the window accounting right.
    pub(super) fn resolve(&mut self, mut n: usize) {
        while n > 0 {
            let Some(&mut (front, _)) = self.windows.front_mut() else { break };
            let take = n.min(front - self.front_sent);
            self.datums.drain(..take);
            self.front_sent += take;
            n -= take;
            if self.front_sent == front {
                self.windows.pop_front();
                self.front_sent = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::encode::tests::window;
    use super::super::{encode_window, CloudWatchConfig};
    use super::*;

    fn queued(n: usize, end: i64) -> Vec<Queued> {
        encode_window(&window(n, end), &CloudWatchConfig::default()).0
    }

    #[test]
    fn accounting_across_windows() {
        let mut q = Queue::default();
        for (n, end) in [(3, 1), (2, 2), (4, 3)] {
            assert_eq!(q.push_window(end as u64, queued(n, end), 10), 0);
        }
        assert_eq!(q.delivered_through(), 0);
        q.resolve(4);
        assert_eq!((q.windows.len(), q.front_sent, q.datums.len()), (2, 1, 5));
        assert_eq!(q.datums.front().map(|d| d.window_end_ms), Some(2));
        assert_eq!(q.delivered_through(), 1, "window 2 is only partly sent");
        q.resolve(5);
        assert!(q.windows.is_empty() && q.datums.is_empty() && q.front_sent == 0);
        assert_eq!(q.delivered_through(), 3);
    }

    #[test]
    fn a_full_backlog_drops_the_oldest_window_even_partly_sent() {
        let mut q = Queue::default();
        // (seq, datums, datums dropped, backlog after)
        let steps = [(1, 3, 0, (1, 3)), (2, 2, 0, (2, 5)), (3, 4, 3, (2, 6)), (4, 0, 0, (2, 6))];
        for (seq, n, dropped, backlog) in steps {
            assert_eq!(q.push_window(seq, queued(n, seq as i64), 2), dropped, "window {seq}");
            assert_eq!(q.backlog(), backlog, "window {seq}");
        }
        assert_eq!(q.delivered_through(), 1, "window 2 is the oldest left; an empty window 4 is accepted");
        q.resolve(1);
        assert_eq!(q.push_window(5, queued(1, 5), 2), 1, "the rest of the partly sent window 2");
        assert_eq!((q.backlog(), q.delivered_through()), ((2, 5), 2));
        assert_eq!(q.next_batch("Kubernetes").len(), 5);
    }
}
