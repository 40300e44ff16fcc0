//! One `Subscribe(changes)` subscriber: the full picture once, in pages, then only what changed.
//!
//! The picture is paged by name, each page under its own short hold of the state lock, so a
//! subscriber joining a 100,000-node cluster never holds ingestion up for long. Changes come from the
//! notifier's broadcasts (each lists the nodes changed or removed since the previous one) and wait in
//! [`Pending`], keyed by name, so a subscriber that is sent less often than the notifier ticks gets
//! every node's latest view once. A broadcast computed before a page was taken is older than that
//! page for the page's names: [`Picture::covers`] drops those entries, so a node never goes back to an
//! older view. Sending waits for the subscriber, but never for long: a subscriber that stops reading
//! is cut off with RESOURCE_EXHAUSTED, as is one the broadcasts outrun.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;
use std::time::Instant;

use cni_metrics_proto::v1::{ClusterUpdate, ClusterView, NodeView};
use prost::Message as _;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Duration;
use tonic::Status;
use tracing::{info, warn};

use super::query::{NodeQuery, PAGE_BYTES};
use super::views::cluster_view;
use super::Broadcast;
use crate::state::StateHandle;

/// Nodes in one update of a picture or change set.
pub const PAGE_NODES: usize = 1_000;
/// A subscriber that takes none of its updates for this long is cut off.
const STALL: Duration = Duration::from_secs(10);

/// Changes not yet sent: each node's latest view, or `None` when it left.
#[derive(Debug, Default)]
pub struct Pending {
    nodes: BTreeMap<String, Option<NodeView>>,
}

impl Pending {
    /// Take in a broadcast's changes, but those the picture already has newer (`skip`).
    pub fn merge(&mut self, changed: &[NodeView], removed: &[Arc<str>], skip: impl Fn(&str) -> bool) {
        for name in removed.iter().filter(|n| !skip(n)) {
            self.nodes.insert(name.to_string(), None);
        }
        for v in changed.iter().filter(|v| !skip(&v.name)) {
            self.nodes.insert(v.name.clone(), Some(v.clone()));
        }
    }

    /// A picture page now covers the names in (`after`, `through`] (`None`: to the end).
    pub fn forget(&mut self, after: Option<&str>, through: Option<&str>) {
        let lo = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.to_owned()));
        let hi = through.map_or(Bound::Unbounded, |t| Bound::Included(t.to_owned()));
        let gone: Vec<String> = self.nodes.range((lo, hi)).map(|(k, _)| k.clone()).collect();
        for k in gone {
            self.nodes.remove(&k);
        }
    }

    pub fn clear(&mut self) {
        self.nodes.clear();
    }

    /// Everything pending as updates of at most [`PAGE_NODES`] entries and about [`PAGE_BYTES`]; the
    /// cluster view goes on the last one.
    pub fn drain(&mut self, version: u64, cluster: ClusterView) -> Vec<ClusterUpdate> {
        let mut out = Vec::new();
        let mut cur = ClusterUpdate { version, more: true, ..ClusterUpdate::default() };
        let (mut entries, mut bytes) = (0, 0);
        for (name, view) in std::mem::take(&mut self.nodes) {
            let len = view.as_ref().map_or(name.len() + 4, |v| v.encoded_len() + 8);
            if entries > 0 && (entries >= PAGE_NODES || bytes + len > PAGE_BYTES) {
                out.push(std::mem::replace(&mut cur, ClusterUpdate { version, more: true, ..ClusterUpdate::default() }));
                (entries, bytes) = (0, 0);
            }
            match view {
                Some(v) => cur.nodes.push(v),
                None => cur.removed_nodes.push(name),
            }
            entries += 1;
            bytes += len;
        }
        cur.more = false;
        cur.cluster = Some(cluster);
        out.push(cur);
        out
    }
}

/// The full picture as paged so far: each page's last name (`None`: the end) and the state version it
/// was taken at.
#[derive(Debug, Default)]
pub struct Picture {
    pages: Vec<(Option<String>, u64)>,
    done: bool,
}

impl Picture {
    /// Where the next page starts (after this name).
    fn cursor(&self) -> Option<String> {
        self.pages.last().and_then(|(last, _)| last.clone())
    }

    /// A page up to `last` (`None`: the end) taken at `version`.
    pub fn paged(&mut self, last: Option<String>, version: u64) {
        self.done = last.is_none();
        self.pages.push((last, version));
    }

    /// Whether the picture already has `name` as of `version` or later.
    pub fn covers(&self, name: &str, version: u64) -> bool {
        let i = self.pages.partition_point(|(last, _)| last.as_deref().is_some_and(|l| l < name));
        self.pages.get(i).is_some_and(|(_, v)| *v >= version)
    }
}

/// One subscriber's task.
pub struct ChangeFeed {
    pub state: StateHandle,
    pub rx: broadcast::Receiver<Arc<Broadcast>>,
    pub tx: mpsc::Sender<Result<ClusterUpdate, Status>>,
    pub only: Vec<String>,
    pub min_interval: Duration,
    /// The subscriber's address, for logs.
    pub peer: String,
}

impl ChangeFeed {
    /// The next page of the picture, taken under the lock.
    fn page(&self, picture: &mut Picture, pending: &mut Pending) -> ClusterUpdate {
        let after = picture.cursor();
        let q = NodeQuery::by_name(&self.only, after.clone(), PAGE_NODES);
        let (page, version, cluster) = self.state.read(|st| {
            let now = Instant::now();
            let page = q.page(st, now);
            let cluster = page.next.is_none().then(|| cluster_view(st, now, true));
            (page, st.version(), cluster)
        });
        let last = page.next.map(|k| k.name);
        pending.forget(after.as_deref(), last.as_deref());
        let reset = picture.pages.is_empty();
        picture.paged(last, version);
        ClusterUpdate { cluster, nodes: page.nodes, version, removed_nodes: Vec::new(), reset, more: !picture.done }
    }

    fn cut_off(&self, why: &'static str, msg: &'static str) {
        warn!(peer = %self.peer, why, "subscriber dropped");
        let _ = self.tx.try_send(Err(Status::resource_exhausted(msg)));
    }

    pub async fn run(mut self) {
        info!(peer = %self.peer, nodes = self.only.len(), "change subscriber connected");
        let mut picture = Picture::default();
        let mut pending = Pending::default();
        let mut outbox: VecDeque<ClusterUpdate> = VecDeque::new();
        // The newest broadcast not yet sent on (its version and cluster view go on the next change set).
        let mut newest: Option<Arc<Broadcast>> = None;
        let mut sent_version = 0;
        let mut last_sent = tokio::time::Instant::now();
        let mut stall_from = tokio::time::Instant::now();
        loop {
            if outbox.is_empty() {
                stall_from = tokio::time::Instant::now();
                if !picture.done {
                    outbox.push_back(self.page(&mut picture, &mut pending));
                } else if newest.is_some() && tokio::time::Instant::now() >= last_sent + self.min_interval {
                    if let Some(b) = newest.take() {
                        let version = b.version.max(sent_version);
                        outbox.extend(pending.drain(version, b.cluster.clone()));
                        last_sent = tokio::time::Instant::now();
                    }
                }
            } else if stall_from.elapsed() > STALL {
                return self.cut_off("not reading", "consumer too slow: it took no update for 10 s; resubscribe");
            }
            let due = last_sent + self.min_interval;
            // One slot of the channel stays free for the status that cuts a subscriber off.
            let room = self.tx.capacity() > 1;
            tokio::select! {
                r = self.rx.recv() => match r {
                    Ok(b) => {
                        let first = picture.pages.first().map_or(u64::MAX, |p| p.1);
                        if b.version <= first {
                            continue; // the picture is newer
                        }
                        if !b.complete {
                            // The broadcast could not say everything that changed: start the picture over.
                            picture = Picture::default();
                            pending.clear();
                            newest = None;
                            continue;
                        }
                        let only = &self.only;
                        let skip = |name: &str| (!only.is_empty() && !only.iter().any(|o| o == name)) || picture.covers(name, b.version);
                        pending.merge(&b.changed, &b.removed, skip);
                        newest = Some(b);
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        return self.cut_off("updates missed", "consumer too slow: updates were missed; resubscribe");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                permit = self.tx.reserve(), if room && !outbox.is_empty() => match (permit, outbox.pop_front()) {
                    (Ok(p), Some(u)) => {
                        sent_version = sent_version.max(u.version);
                        stall_from = tokio::time::Instant::now();
                        p.send(Ok(u));
                    }
                    _ => return,
                },
                _ = tokio::time::sleep(Duration::from_millis(50)), if !room && !outbox.is_empty() => {}
                _ = tokio::time::sleep_until(due), if outbox.is_empty() && picture.done && newest.is_some() => {}
                _ = self.tx.closed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests;
