//! `ListNodes` as a query: filters, a server-side order, and pages cut by key.
//!
//! A page is the first `page_size` nodes (and at most [`PAGE_BYTES`]) after the previous page's last
//! key, in the order asked for. The key is (order value, name), unique per node, so a node that changes
//! between two pages is listed once at most and no other is skipped for it. The page token carries that
//! key and a fingerprint of the order and filters; a token replayed with other ones is refused. Selection
//! is one pass over the nodes and a partial sort of those after the key: O(nodes), without building a
//! view of any node outside the page. Pure: the caller holds the state lock.

use std::collections::{BinaryHeap, HashSet};
use std::fmt::Write as _;
use std::time::Instant;

use cni_metrics_proto::v1::{ListNodesRequest, NodeOrder, NodeView, ScrapeStatus};
use prost::Message as _;

use super::views::node_view;
use crate::state::index::headroom_rank;
use crate::state::{ClusterState, NodeState};

/// Most nodes in one page.
pub const MAX_PAGE_SIZE: usize = 5_000;
/// A page ends before it passes this many encoded bytes (the gRPC message limit is 4 MiB).
pub const PAGE_BYTES: usize = 1 << 20;
/// Longest page token accepted (a fingerprint, an order value and a hex-encoded node name).
const MAX_TOKEN: usize = 64 + 2 * 253;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("unknown node order {0}")]
    UnknownOrder(i32),
    #[error("unknown scrape status {0} in the status filter")]
    UnknownStatus(i32),
    #[error("max_ip_headroom must be a number")]
    BadHeadroom,
    #[error("page_token is not a token this aggregator gives out")]
    BadToken,
    #[error("page_token belongs to another order or other filters; start again without a token")]
    TokenMismatch,
}

/// Where a page starts: after this (order value, name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub rank: u64,
    pub name: String,
}

/// A validated `ListNodesRequest`.
#[derive(Debug, Clone)]
pub struct NodeQuery {
    only: Vec<String>,
    page_size: usize,
    order: NodeOrder,
    statuses: Vec<ScrapeStatus>,
    zones: HashSet<String>,
    max_headroom: Option<f64>,
    low: bool,
    stale: bool,
    after: Option<Key>,
    fingerprint: u64,
}

/// One page of nodes.
#[derive(Debug)]
pub struct Page {
    pub nodes: Vec<NodeView>,
    /// The key of the last node when more follow.
    pub next: Option<Key>,
    /// Nodes that pass the filters, over all pages.
    pub total: usize,
}

/// A node in the page being selected, ordered by (rank, name).
struct Candidate<'a> {
    rank: u64,
    node: &'a NodeState,
}

impl Ord for Candidate<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.rank.cmp(&other.rank).then_with(|| self.node.name().cmp(other.node.name()))
    }
}

impl PartialOrd for Candidate<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Candidate<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}

impl Eq for Candidate<'_> {}

/// FNV-1a: stable across processes and versions, unlike the std hasher.
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.iter().chain(&[0xff]) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

impl NodeQuery {
    /// Validate a request.
    pub fn from_request(r: &ListNodesRequest) -> Result<Self, QueryError> {
        let order = NodeOrder::try_from(r.order).map_err(|_| QueryError::UnknownOrder(r.order))?;
        let mut statuses = r
            .statuses
            .iter()
            .map(|&s| ScrapeStatus::try_from(s).map_err(|_| QueryError::UnknownStatus(s)))
            .collect::<Result<Vec<_>, _>>()?;
        statuses.sort_unstable();
        statuses.dedup();
        if r.max_ip_headroom.is_some_and(f64::is_nan) {
            return Err(QueryError::BadHeadroom);
        }
        let mut only = r.nodes.clone();
        only.sort_unstable();
        only.dedup();
        let mut zones: Vec<&String> = r.availability_zones.iter().collect();
        zones.sort_unstable();
        zones.dedup();
        let status_bytes: Vec<u8> = statuses.iter().map(|s| *s as u8).collect();
        let headroom = r.max_ip_headroom.map(f64::to_bits).unwrap_or(u64::MAX).to_le_bytes();
        let flags = [order as u8, u8::from(r.low_on_ips), u8::from(r.stale)];
        let mut parts: Vec<&[u8]> = vec![b"v1", &flags, &status_bytes, &headroom];
        parts.extend(zones.iter().map(|z| z.as_bytes()));
        parts.push(b"nodes");
        parts.extend(only.iter().map(|n| n.as_bytes()));
        let fingerprint = fnv(&parts);
        let mut q = Self {
            page_size: match r.page_size as usize {
                0 => MAX_PAGE_SIZE,
                n => n.min(MAX_PAGE_SIZE),
            },
            zones: zones.into_iter().cloned().collect(),
            only,
            order,
            statuses,
            max_headroom: r.max_ip_headroom,
            low: r.low_on_ips,
            stale: r.stale,
            after: None,
            fingerprint,
        };
        if !r.page_token.is_empty() {
            q.after = Some(q.decode(&r.page_token)?);
        }
        Ok(q)
    }

    /// Every node (of `only`, when not empty) by name, after `after`, `page_size` at a time: the
    /// aggregator's own paging (the Subscribe picture), which hands out no tokens.
    pub fn by_name(only: &[String], after: Option<String>, page_size: usize) -> Self {
        let mut only = only.to_vec();
        only.sort_unstable();
        only.dedup();
        Self {
            only,
            page_size: page_size.clamp(1, MAX_PAGE_SIZE),
            order: NodeOrder::Name,
            statuses: Vec::new(),
            zones: HashSet::new(),
            max_headroom: None,
            low: false,
            stale: false,
            after: after.map(|name| Key { rank: 0, name }),
            fingerprint: 0,
        }
    }

    fn matches(&self, n: &NodeState, now: Instant) -> bool {
        (self.statuses.is_empty() || self.statuses.contains(&n.status()))
            && (self.zones.is_empty() || self.zones.contains(n.availability_zone()))
            && self.max_headroom.is_none_or(|m| n.derived().headroom.is_some_and(|h| h <= m))
            && (!self.low || n.derived().low)
            && (!self.stale || n.is_stale(now))
    }

    fn rank(&self, st: &ClusterState, n: &NodeState) -> u64 {
        match self.order {
            NodeOrder::Name => 0,
            NodeOrder::IpHeadroom => headroom_rank(n),
            NodeOrder::LastReport => st.report_key(n),
        }
    }

    fn filtered(&self) -> bool {
        !self.statuses.is_empty() || !self.zones.is_empty() || self.max_headroom.is_some() || self.low || self.stale
    }

    /// The page this query asks for.
    pub fn page(&self, st: &ClusterState, now: Instant) -> Page {
        if self.only.is_empty() && matches!(self.order, NodeOrder::Name | NodeOrder::IpHeadroom) {
            // From the state's ordered indexes: O(page) without filters, a counting pass with them.
            let total = if self.filtered() { st.nodes().filter(|n| self.matches(n, now)).count() } else { st.node_count() };
            let mut from: Box<dyn Iterator<Item = (u64, &NodeState)>> = match self.order {
                NodeOrder::Name => Box::new(st.nodes_after(self.after.as_ref().map(|a| a.name.as_str())).map(|n| (0, n))),
                _ => Box::new(st.nodes_by_headroom_after(self.after.as_ref().map(|a| (a.rank, a.name.as_str())))),
            };
            let mut from = from.by_ref().filter(|(_, n)| self.matches(n, now));
            let sorted: Vec<(u64, &NodeState)> = from.by_ref().take(self.page_size).collect();
            let beyond = from.next().is_some();
            return Self::finish(&sorted, beyond, total, now);
        }
        let candidates: Box<dyn Iterator<Item = &NodeState>> =
            if self.only.is_empty() { Box::new(st.nodes()) } else { Box::new(self.only.iter().filter_map(|name| st.node(name))) };
        // The page's nodes in a bounded max-heap: one comparison rejects most nodes, and only the page
        // is ever sorted.
        let mut total = 0;
        let mut remaining = 0;
        let mut heap: BinaryHeap<Candidate<'_>> = BinaryHeap::with_capacity(self.page_size + 1);
        for n in candidates.filter(|n| self.matches(n, now)) {
            total += 1;
            let c = Candidate { rank: self.rank(st, n), node: n };
            if self.after.as_ref().is_some_and(|a| (c.rank, &**n.name()) <= (a.rank, a.name.as_str())) {
                continue;
            }
            remaining += 1;
            if heap.len() < self.page_size {
                heap.push(c);
            } else if heap.peek().is_some_and(|top| c < *top) {
                heap.pop();
                heap.push(c);
            }
        }
        let sorted: Vec<(u64, &NodeState)> = heap.into_sorted_vec().into_iter().map(|c| (c.rank, c.node)).collect();
        let beyond = remaining > sorted.len();
        Self::finish(&sorted, beyond, total, now)
    }

    /// The views of `sorted` up to the byte budget; `beyond`: more nodes follow them.
    fn finish(sorted: &[(u64, &NodeState)], beyond: bool, total: usize, now: Instant) -> Page {
        let mut nodes = Vec::with_capacity(sorted.len());
        let mut bytes = 0;
        for (_, n) in sorted {
            let v = node_view(n, now);
            let len = v.encoded_len() + 8;
            if !nodes.is_empty() && bytes + len > PAGE_BYTES {
                break;
            }
            bytes += len;
            nodes.push(v);
        }
        let next = (beyond || nodes.len() < sorted.len())
            .then(|| sorted.get(nodes.len().wrapping_sub(1)))
            .flatten()
            .map(|(rank, n)| Key { rank: *rank, name: n.name().to_string() });
        Page { nodes, next, total }
    }

    /// The token of a page that starts after `key`.
    pub fn encode(&self, key: &Key) -> String {
        let mut s = format!("{:016x}{:016x}", self.fingerprint, key.rank);
        for b in key.name.as_bytes() {
            let _ = write!(s, "{b:02x}");
        }
        s
    }

    fn decode(&self, token: &str) -> Result<Key, QueryError> {
        if token.len() > MAX_TOKEN || token.len() < 32 || !token.len().is_multiple_of(2) || !token.is_ascii() {
            return Err(QueryError::BadToken);
        }
        let hex = |s: &str| u64::from_str_radix(s, 16).map_err(|_| QueryError::BadToken);
        if hex(&token[..16])? != self.fingerprint {
            return Err(QueryError::TokenMismatch);
        }
        let rank = hex(&token[16..32])?;
        let bytes = (32..token.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&token[i..i + 2], 16).map_err(|_| QueryError::BadToken))
            .collect::<Result<Vec<u8>, _>>()?;
        let name = String::from_utf8(bytes).map_err(|_| QueryError::BadToken)?;
        Ok(Key { rank, name })
    }
}

#[cfg(test)]
mod tests;
