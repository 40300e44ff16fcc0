//! What readers need of every node, kept up to date as nodes change, so that no reader walks the
//! nodes: counts by scrape status, the sum of dropped series, when each reporting node goes stale and
//! when each node expires (ordered sets: the stale count, the nodes that went stale in a time span and
//! the expired ones are range reads), and the log of nodes changed or removed since the consumer
//! notifier last looked. A node's entry is recomputed after every hello and report ([`Indexed`] from the
//! node, the difference applied here), so no code path that changes a node has to remember the index.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use cni_metrics_proto::v1::ScrapeStatus;

use super::NodeState;

/// Nodes remembered as changed or removed between two notifier ticks (beyond: subscribers start over).
const MAX_LOG: usize = 100_000;
/// Scrape statuses (the proto enum's values 0..=7).
const STATUSES: usize = 8;

/// What the index holds of one node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Indexed {
    status: ScrapeStatus,
    dropped: u64,
    /// When a reporting node goes stale (two intervals without a report); `None` when its scrape failed
    /// (stale already).
    stale_at: Option<Instant>,
    expires_at: Instant,
    /// The node's IP headroom as an order key (`u64::MAX`: unknown).
    headroom: u64,
}

/// The order key of a node's headroom (unknown last).
pub fn headroom_rank(n: &NodeState) -> u64 {
    n.derived().headroom.filter(|v| !v.is_nan()).map_or(u64::MAX, super::order_key)
}

impl Indexed {
    pub fn of(n: &NodeState) -> Self {
        Self {
            status: n.status(),
            dropped: n.dropped_series(),
            stale_at: (n.status() == ScrapeStatus::Ok).then(|| n.late_at()),
            expires_at: n.last_seen() + n.ttl(),
            headroom: headroom_rank(n),
        }
    }
}

#[derive(Debug, Default)]
pub struct NodeIndex {
    nodes: u64,
    by_status: [u64; STATUSES],
    dropped: u64,
    stale_at: BTreeSet<(Instant, Arc<str>)>,
    expires_at: BTreeSet<(Instant, Arc<str>)>,
    by_headroom: BTreeSet<(u64, Arc<str>)>,
    changed: Vec<Arc<str>>,
    removed: Vec<Arc<str>>,
    lost: bool,
}

fn slot(s: ScrapeStatus) -> usize {
    (s as usize).min(STATUSES - 1)
}

/// The range of a time-ordered set before `t`.
fn before(t: Instant) -> (Instant, Arc<str>) {
    (t, Arc::from(""))
}

impl NodeIndex {
    /// A node's entry went from `old` to `new` (`None`: absent).
    pub fn update(&mut self, name: &Arc<str>, old: Option<Indexed>, new: Option<Indexed>) {
        if old == new {
            return;
        }
        if let Some(o) = old {
            self.nodes = self.nodes.saturating_sub(1);
            self.by_status[slot(o.status)] = self.by_status[slot(o.status)].saturating_sub(1);
            self.dropped = self.dropped.saturating_sub(o.dropped);
            if let Some(t) = o.stale_at {
                self.stale_at.remove(&(t, name.clone()));
            }
            self.expires_at.remove(&(o.expires_at, name.clone()));
            self.by_headroom.remove(&(o.headroom, name.clone()));
        }
        if let Some(n) = new {
            self.nodes += 1;
            self.by_status[slot(n.status)] += 1;
            self.dropped += n.dropped;
            if let Some(t) = n.stale_at {
                self.stale_at.insert((t, name.clone()));
            }
            self.expires_at.insert((n.expires_at, name.clone()));
            self.by_headroom.insert((n.headroom, name.clone()));
        }
    }

    pub fn count(&self, s: ScrapeStatus) -> u64 {
        self.by_status[slot(s)]
    }

    /// Nodes per scrape status (those with any).
    pub fn by_status(&self) -> impl Iterator<Item = (ScrapeStatus, u64)> + '_ {
        self.by_status
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .filter_map(|(i, c)| Some((ScrapeStatus::try_from(i32::try_from(i).ok()?).ok()?, *c)))
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Stale nodes at `now`: every node whose last scrape failed, and every other one two intervals
    /// without a report.
    pub fn stale(&self, now: Instant) -> u64 {
        let failing = self.nodes - self.count(ScrapeStatus::Ok);
        failing + self.stale_at.range(..before(now)).count() as u64
    }

    /// Reporting nodes that went stale in [`since`, `now`).
    pub fn went_stale(&self, since: Instant, now: Instant) -> impl Iterator<Item = &Arc<str>> {
        let range = if since < now { before(since)..before(now) } else { before(now)..before(now) };
        self.stale_at.range(range).map(|(_, n)| n)
    }

    /// Nodes past their TTL at `now`.
    pub fn expired(&self, now: Instant) -> Vec<Arc<str>> {
        self.expires_at.range(..before(now)).map(|(_, n)| n.clone()).collect()
    }

    /// Nodes by (headroom rank, name), from just after `after`.
    pub fn by_headroom_after(&self, after: Option<(u64, &str)>) -> impl Iterator<Item = (u64, &Arc<str>)> {
        use std::ops::Bound;
        let from = match after {
            // Just after (rank, name): the first key with this rank and a greater name, or a greater rank.
            Some((rank, name)) => Bound::Excluded((rank, Arc::<str>::from(name))),
            None => Bound::Unbounded,
        };
        self.by_headroom.range((from, Bound::Unbounded)).map(|(r, n)| (*r, n))
    }

    pub fn log_change(&mut self, name: &Arc<str>) {
        self.log(name, false);
    }

    pub fn log_removal(&mut self, name: &Arc<str>) {
        self.log(name, true);
    }

    fn log(&mut self, name: &Arc<str>, removed: bool) {
        if self.changed.len() + self.removed.len() >= MAX_LOG {
            self.lost = true;
            return;
        }
        if removed {
            self.removed.push(name.clone());
        } else {
            self.changed.push(name.clone());
        }
    }

    /// The nodes changed and those removed since the last call (each once, by name); `None` when more
    /// changed than the log keeps between two calls.
    pub fn take_log(&mut self) -> Option<NodeChanges> {
        let (mut changed, mut removed) = (std::mem::take(&mut self.changed), std::mem::take(&mut self.removed));
        if std::mem::take(&mut self.lost) {
            return None;
        }
        for v in [&mut changed, &mut removed] {
            v.sort_unstable();
            v.dedup();
        }
        Some(NodeChanges { changed, removed })
    }
}

/// Nodes that changed and nodes that were removed (a node can be in both: removed, then back).
#[derive(Debug, Default, PartialEq)]
pub struct NodeChanges {
    pub changed: Vec<Arc<str>>,
    pub removed: Vec<Arc<str>>,
}

/// How many nodes report each value of a fact (cluster name, region; empty values are not counted),
/// so the one value all agree on is known without a pass over the nodes.
#[derive(Debug, Default)]
pub struct Tally(HashMap<String, u32>);

impl Tally {
    /// A node now reports `new` where it reported `old` (empty: nothing).
    pub fn replace(&mut self, old: &str, new: &str) {
        if old == new {
            return;
        }
        if !old.is_empty() {
            if let Some(c) = self.0.get_mut(old) {
                *c -= 1;
                if *c == 0 {
                    self.0.remove(old);
                }
            }
        }
        if !new.is_empty() {
            *self.0.entry(new.to_owned()).or_default() += 1;
        }
    }

    /// The single value reported, if every node that reports one agrees.
    pub fn agreed(&self) -> Option<&str> {
        let mut keys = self.0.keys();
        match (keys.next(), keys.next()) {
            (Some(k), None) => Some(k),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry(status: ScrapeStatus, t: Instant, stale_in: u64, expire_in: u64) -> Indexed {
        Indexed {
            status,
            dropped: 1,
            stale_at: (status == ScrapeStatus::Ok).then(|| t + Duration::from_secs(stale_in)),
            expires_at: t + Duration::from_secs(expire_in),
            headroom: stale_in,
        }
    }

    #[test]
    fn counts_and_time_ranges_follow_updates() {
        let t = Instant::now();
        let s = |n: u64| t + Duration::from_secs(n);
        let mut ix = NodeIndex::default();
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"), Arc::from("c"));
        ix.update(&a, None, Some(entry(ScrapeStatus::Ok, t, 2, 3)));
        ix.update(&b, None, Some(entry(ScrapeStatus::Ok, t, 4, 6)));
        ix.update(&c, None, Some(entry(ScrapeStatus::Timeout, t, 2, 3)));
        assert_eq!((ix.count(ScrapeStatus::Ok), ix.count(ScrapeStatus::Timeout), ix.dropped()), (2, 1, 3));
        // (at, stale, went stale since the second before, expired)
        let cases: [(u64, u64, Vec<&str>, Vec<&str>); 4] =
            [(1, 1, vec![], vec![]), (3, 2, vec!["a"], vec![]), (5, 3, vec!["b"], vec!["a", "c"]), (7, 3, vec![], vec!["a", "c", "b"])];
        for (at, stale, went, expired) in cases {
            assert_eq!(ix.stale(s(at)), stale, "stale at {at}");
            let w: Vec<&str> = ix.went_stale(s(at.saturating_sub(2)), s(at)).map(|n| &**n).collect();
            assert_eq!(w, went, "went stale before {at}");
            let e: Vec<String> = ix.expired(s(at)).iter().map(|n| n.to_string()).collect();
            assert_eq!(e, expired, "expired at {at}");
        }
        // a reports again (fresh until 12), c recovers, b leaves.
        ix.update(&a, Some(entry(ScrapeStatus::Ok, t, 2, 3)), Some(entry(ScrapeStatus::Ok, s(10), 2, 3)));
        ix.update(&c, Some(entry(ScrapeStatus::Timeout, t, 2, 3)), Some(entry(ScrapeStatus::Ok, s(10), 2, 3)));
        ix.update(&b, Some(entry(ScrapeStatus::Ok, t, 4, 6)), None);
        assert_eq!((ix.stale(s(11)), ix.count(ScrapeStatus::Timeout), ix.dropped()), (0, 0, 2));
        assert_eq!(ix.by_status().collect::<Vec<_>>(), vec![(ScrapeStatus::Ok, 2)]);
        assert!(ix.expired(s(12)).is_empty());
        let order: Vec<(u64, &str)> = ix.by_headroom_after(None).map(|(r, n)| (r, &**n)).collect();
        assert_eq!(order, vec![(2, "a"), (2, "c")], "by headroom, then name");
        let after: Vec<&str> = ix.by_headroom_after(Some((2, "a"))).map(|(_, n)| &**n).collect();
        assert_eq!(after, vec!["c"]);
    }

    #[test]
    fn the_log_is_deduplicated_and_bounded() {
        let mut ix = NodeIndex::default();
        let a: Arc<str> = Arc::from("a");
        ix.log_change(&a);
        ix.log_change(&a);
        ix.log_removal(&a);
        assert_eq!(ix.take_log(), Some(NodeChanges { changed: vec![a.clone()], removed: vec![a.clone()] }));
        assert_eq!(ix.take_log(), Some(NodeChanges::default()));
        for _ in 0..=MAX_LOG {
            ix.log_change(&a);
        }
        assert_eq!(ix.take_log(), None, "overflow is said, not hidden");
        assert_eq!(ix.take_log(), Some(NodeChanges::default()), "and then forgotten");
    }

    #[test]
    fn tally_agrees_only_on_one_value() {
        let mut t = Tally::default();
        assert_eq!(t.agreed(), None);
        t.replace("", "c1");
        t.replace("", "c1");
        t.replace("", "");
        assert_eq!(t.agreed(), Some("c1"));
        t.replace("", "c2");
        assert_eq!(t.agreed(), None);
        t.replace("c2", "c1");
        assert_eq!(t.agreed(), Some("c1"));
        for _ in 0..2 {
            t.replace("c1", "");
            assert_eq!(t.agreed(), Some("c1"));
        }
        t.replace("c1", "");
        assert_eq!(t.agreed(), None);
        // Taking away a value never reported changes nothing.
        t.replace("c9", "");
        assert_eq!(t.agreed(), None);
    }
}
