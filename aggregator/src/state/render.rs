//! The aggregator's `/metrics` text of the cluster state: every ipamd family with a `cluster_id` label,
//! the derived capacity, the breakdowns and the ingest self-metrics, through the shared writer
//! ([`cni_metrics_proto::exposition`]).
//!
//! Rendering is two steps so a big cluster's page does not hold up ingestion: [`ClusterState::metrics_view`]
//! copies, under the state lock, what the page shows (cluster-level values only: series lines, sums,
//! breakdown groups, counters, plus one pass over the nodes for their counts), and
//! [`MetricsView::render`] writes the text after the lock is released.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use cni_metrics_proto::catalog;
use cni_metrics_proto::exposition::{Kind, Page};
use cni_metrics_proto::v1::FamilyType;

use super::breakdown::Breakdowns;
use super::capacity::CapacityTotals;
use super::stats::IngestStats;
use super::subnets::SubnetsView;
use super::{status_label, ClusterState, Dim, GroupTotals, SubnetTotals};

/// One sample of the page: sample name, labels, value.
type Line = (Arc<str>, Vec<(String, String)>, f64);

/// One family's sample lines (sorted when written).
struct FamilyLines {
    family: Arc<str>,
    family_type: FamilyType,
    lines: Vec<Line>,
}

/// What `/metrics` shows of the state, copied under the lock; [`MetricsView::render`] needs no lock.
pub struct MetricsView {
    cluster_id: String,
    families: Vec<FamilyLines>,
    capacity: CapacityTotals,
    stale: u64,
    by_status: BTreeMap<&'static str, u64>,
    dropped: u64,
    breakdowns: Breakdowns,
    subnets: Option<SubnetsView>,
    prefixes: Option<super::subnets::space::PrefixView>,
    stats: IngestStats,
    slots: usize,
    departed: usize,
}

impl ClusterState {
    /// Append the Prometheus text exposition of the cluster aggregates and ingestion self-metrics.
    pub fn render_prometheus(&self, out: &mut String, now: Instant) {
        self.metrics_view(now).render(out);
    }

    /// Copy what `/metrics` shows (hold the lock only for this; render the copy after).
    pub fn metrics_view(&self, now: Instant) -> MetricsView {
        let mut by_family: BTreeMap<&Arc<str>, Vec<Line>> = BTreeMap::new();
        for s in self.series.iter() {
            if let Some(v) = s.value() {
                by_family.entry(s.family()).or_default().push((s.name().clone(), s.labels().to_vec(), v));
            }
        }
        let families = by_family
            .into_iter()
            .map(|(family, lines)| FamilyLines { family: family.clone(), family_type: self.series.family_type(family), lines })
            .collect();
        let by_status: BTreeMap<&'static str, u64> = self.status_counts().map(|(s, c)| (status_label(s), c)).collect();
        let (stale, dropped) = (self.stale_count(now), self.dropped_series());
        MetricsView {
            cluster_id: self.cfg.cluster_id.clone(),
            families,
            capacity: self.capacity,
            stale,
            by_status,
            dropped,
            breakdowns: self.breakdowns.clone(),
            subnets: self.subnets_view(),
            prefixes: self.prefix_view(),
            stats: self.stats.clone(),
            slots: self.series.len(),
            departed: self.book.departed().len(),
        }
    }
}

impl MetricsView {
    /// Append the text of the page.
    pub fn render(&self, out: &mut String) {
        let mut page = Page::new(out, &[("cluster_id", &self.cluster_id)]);
        for f in &self.families {
            // Sorted here, outside the lock.
            let mut lines: Vec<&Line> = f.lines.iter().collect();
            lines.sort_by(|a, b| (&*a.0, &a.1).cmp(&(&*b.0, &b.1)));
            let help = catalog::family(&f.family).map_or("ipamd metric summed across the cluster's nodes", |f| f.help);
            let mut family = page.family(&f.family, Kind::from(f.family_type), help);
            for (name, labels, v) in lines {
                // A sample's name is its family's plus a suffix (`_sum`, `_count`, …): validated on entry.
                let Some(suffix) = name.strip_prefix(&*f.family) else { continue };
                family.suffixed(suffix, labels.iter().map(|(k, v)| (k.as_str(), v.as_str())), *v);
            }
        }
        self.render_capacity(&mut page);
        if let Some(s) = &self.subnets {
            s.render(&mut page);
        }
        if let Some(p) = &self.prefixes {
            p.render(&mut page);
        }
        self.render_self_metrics(&mut page);
    }

    fn render_capacity(&self, page: &mut Page<'_>) {
        let c = &self.capacity;
        let gauge = |page: &mut Page<'_>, name: &str, help: &str, v: Option<f64>| {
            if let Some(v) = v {
                page.gauge(name, help, v);
            }
        };
        gauge(
            page,
            "cni_metrics_available_ip_addresses",
            "Sum over nodes of (total - assigned): warm IPs free for pods now",
            (c.with_available > 0).then_some(c.available),
        );
        gauge(
            page,
            "cni_metrics_ip_headroom",
            "Sum over nodes of (ip_max - assigned): IPs pods could still get as ENIs attach",
            (c.with_headroom > 0).then_some(c.headroom),
        );
        let (u_total, u_max) = c.utilization();
        if u_total.is_some() || u_max.is_some() {
            let name = "cni_metrics_ip_utilization_ratio";
            let mut family =
                page.family(name, Kind::Gauge, "Sum of assigned IPs over the sum of total (basis=total) or max (basis=max) IPs");
            for (basis, v) in [("total", u_total), ("max", u_max)] {
                if let Some(v) = v {
                    family.sample(&[("basis", basis)], v);
                }
            }
        }
        gauge(
            page,
            "cni_metrics_cooldown_ips",
            "Free IPs in ipamd's IP cooldown (unassigned within IP_COOLDOWN_PERIOD): counted as available by ipamd, not usable by pods yet",
            (c.with_cooldown > 0).then_some(c.cooldown),
        );
        gauge(page, "cni_metrics_nodes_low_on_ips", "Nodes whose IP headroom is below --low-ip-threshold", Some(f64::from(c.low_nodes)));
        gauge(page, "cni_metrics_nodes_stale", "Nodes whose last scrape failed or that missed two reports", Some(self.stale as f64));
        gauge(
            page,
            "cni_metrics_ipv6_nodes",
            "IPv6 nodes: bounded by max pods, not addresses; in the sums but not in IPs free, headroom, utilization or low on IPs",
            Some(f64::from(c.ipv6_nodes)),
        );
        gauge(
            page,
            "cni_metrics_capacity_anomalies",
            "Nodes reporting impossible capacity (assigned > total or max, negative values)",
            Some(f64::from(c.anomalous_nodes)),
        );
        self.render_breakdowns(page);
        page.counter(
            "cni_metrics_capacity_anomalies_total",
            "Times a node started reporting impossible capacity",
            self.stats.capacity_anomalies,
        );
    }

    /// `cni_metrics_<metric>_by_<label>` families: their own families, so `sum()` never double counts.
    fn render_breakdowns(&self, page: &mut Page<'_>) {
        type Get = fn(&GroupTotals) -> Option<f64>;
        let metrics: [(&str, &str, Get); 8] = [
            ("nodes", "Nodes", |g| Some(f64::from(g.nodes))),
            ("assigned_ip_addresses", "IPs assigned to pods", |g| Some(g.assigned)),
            ("total_ip_addresses", "IPs held by the nodes", |g| Some(g.total)),
            ("ip_max", "Most IPs the nodes can hold", |g| Some(g.max)),
            ("available_ip_addresses", "Sum over nodes of (total - assigned)", |g| {
                (g.capacity.with_available > 0).then_some(g.capacity.available)
            }),
            ("ip_headroom", "Sum over nodes of (ip_max - assigned)", |g| (g.capacity.with_headroom > 0).then_some(g.capacity.headroom)),
            ("nodes_low_on_ips", "Nodes whose IP headroom is below --low-ip-threshold", |g| Some(f64::from(g.capacity.low_nodes))),
            ("cooldown_ips", "Free IPs in ipamd's IP cooldown", |g| (g.capacity.with_cooldown > 0).then_some(g.capacity.cooldown)),
        ];
        if self.breakdowns.dims.contains(&Dim::Subnet) {
            type SubnetGet = fn(&SubnetTotals) -> f64;
            let subnet_metrics: [(&str, &str, SubnetGet); 5] = [
                ("nodes", "Nodes with ENIs", |t| f64::from(t.nodes)),
                ("total_ip_addresses", "IPs the cluster's nodes hold", |t| t.total),
                ("assigned_ip_addresses", "IPs assigned to pods", |t| t.assigned),
                ("available_ip_addresses", "Sum over nodes of (held - assigned)", |t| t.available),
                ("cooldown_ips", "Free IPs in ipamd's IP cooldown", |t| t.cooldown),
            ];
            for (metric, help, get) in subnet_metrics {
                let name = format!("cni_metrics_{metric}_by_subnet_id");
                let mut family = page.family(&name, Kind::Gauge, &format!("{help}, by subnet (ipamd introspection)"));
                for (subnet, t) in &self.breakdowns.subnets {
                    family.sample(&[("subnet_id", subnet)], get(t));
                }
            }
        }
        for dim in self.breakdowns.dims.iter().filter(|d| **d != Dim::Subnet) {
            let label = dim.label();
            for (metric, help, get) in metrics {
                let name = format!("cni_metrics_{metric}_by_{label}");
                let mut family = page.family(&name, Kind::Gauge, &format!("{help}, by {label}"));
                for ((d, value), g) in self.breakdowns.groups.range((*dim, String::new())..) {
                    if d != dim {
                        break;
                    }
                    if let Some(v) = get(g) {
                        family.sample(&[(label, value)], v);
                    }
                }
            }
        }
        if !self.breakdowns.dims.is_empty() {
            page.counter(
                "cni_metrics_breakdown_overflow_total",
                "Node placements put in the group \"other\" by --max-breakdown-groups",
                self.breakdowns.overflow,
            );
        }
    }

    fn render_self_metrics(&self, page: &mut Page<'_>) {
        let st = &self.stats;
        let ok = self.by_status.get("ok").copied().unwrap_or(0);
        let gauges: [(&str, &str, f64); 3] = [
            ("cni_metrics_nodes_reporting", "Nodes whose last ipamd scrape succeeded", ok as f64),
            (
                "cni_metrics_state_lock_wait_max_seconds",
                "Longest wait for the cluster state lock (ingestion, publishing, views) since the previous /metrics page",
                st.longest_lock_wait.as_secs_f64(),
            ),
            (
                "cni_metrics_metrics_render_lock_seconds",
                "How long the previous /metrics page held the cluster state lock",
                st.last_render_hold.as_secs_f64(),
            ),
        ];
        for (name, help, v) in gauges {
            page.gauge(name, help, v);
        }
        labelled(
            page,
            "cni_metrics_nodes",
            "Known nodes by the status of their last ipamd scrape",
            Kind::Gauge,
            "scrape_status",
            &self.by_status,
        );
        page.gauge("cni_metrics_cluster_series", "Cluster series held by the aggregator", self.slots as f64);
        page.gauge(
            "cni_metrics_agent_dropped_series",
            "Series the agents dropped at their per-node limit in their latest scrape",
            self.dropped as f64,
        );
        page.counter("cni_metrics_sessions_total", "Agent streams accepted", st.sessions);
        page.counter("cni_metrics_reports_received_total", "Agent reports applied", st.reports);
        page.counter(
            "cni_metrics_reports_in_parts_total",
            "Agent reports that arrived in parts of about 1 KiB (snapshots, large subnet lists) and were applied once assembled",
            st.reports_in_parts,
        );
        page.counter(
            "cni_metrics_reports_stale_total",
            "Reports ignored because a newer one was already applied",
            st.reports_ignored_old_seq,
        );
        page.counts("cni_metrics_reports_rejected_total", "Agent streams and messages refused, by reason", "reason", &st.rejected);
        page.counter(
            "cni_metrics_streams_token_expired_total",
            "Agent streams ended when the agent's token expired (it reconnects with the one kubelet refreshed)",
            st.token_expiries,
        );
        page.counts("cni_metrics_series_rejected_total", "Series refused, by reason", "reason", &st.series_rejected);
        labelled(
            page,
            "cni_metrics_scrape_errors_total",
            "Reports of a failed ipamd scrape, by status",
            Kind::Counter,
            "status",
            &st.scrape_errors,
        );
        for (name, help, v) in self.lifecycle_counters() {
            page.counter(name, help, v);
        }
        page.single(
            "cni_metrics_recovered_increments_total",
            Kind::Counter,
            "Counter increments counted from agents' committed totals after an aggregator restart (delivered by no earlier aggregator, or in doubt)",
            st.recovered_increments,
        );
        self.render_resume_metrics(page);
    }

    /// Counters of what ingestion saw and ignored, and of the nodes' lifecycle.
    fn lifecycle_counters(&self) -> [(&'static str, &'static str, u64); 7] {
        let st = &self.stats;
        [
            ("cni_metrics_bad_lines_total", "ipamd page lines the agents could not parse", st.bad_lines),
            ("cni_metrics_nonfinite_values_total", "NaN or infinite values ignored", st.nonfinite_values),
            (
                "cni_metrics_counter_regressions_total",
                "Counter totals that went backwards within an agent run (ignored)",
                st.counter_regressions,
            ),
            ("cni_metrics_node_goodbyes_total", "Nodes that left with a goodbye", st.goodbyes),
            ("cni_metrics_nodes_expired_total", "Nodes dropped after their TTL", st.expired),
            ("cni_metrics_agent_restarts_total", "Agent runs replaced by a new run of the same node", st.agent_restarts),
            (
                "cni_metrics_agent_runs_recovered_total",
                "Agent runs first seen mid-way (this aggregator restarted): counted from their committed totals",
                st.runs_recovered,
            ),
        ]
    }

    /// How agent runs resumed, continued or started without a baseline, and the departed records.
    fn render_resume_metrics(&self, page: &mut Page<'_>) {
        let st = &self.stats;
        let counters: [(&str, &str, u64); 5] = [
            ("cni_metrics_agent_runs_resumed_total", "New agent runs that resumed counting where the node's previous run stopped", st.runs_resumed),
            (
                "cni_metrics_agent_runs_continued_total",
                "Agent runs that came back after leaving (partition, expiry) and continued from their kept totals",
                st.runs_continued,
            ),
            (
                "cni_metrics_agent_baseline_unknown_total",
                "Agent runs that started without a resume point on an ipamd older than their initial window: increments before their first scrape are not counted",
                st.baseline_unknown_runs,
            ),
            (
                "cni_metrics_agent_baseline_in_doubt_total",
                "Agent runs that counted a young ipamd from its start without a resume point, on an aggregator younger than that ipamd: part may be counted twice",
                st.baseline_in_doubt_runs,
            ),
            (
                "cni_metrics_departed_evicted_total",
                "Departed-node records dropped at their bound (those nodes' next agent run cannot resume)",
                st.departed_evicted,
            ),
        ];
        for (name, help, v) in counters {
            page.counter(name, help, v);
        }
        page.gauge("cni_metrics_departed_nodes", "Departed-node records kept for continuation and resume", self.departed as f64);
    }
}

/// A family with one sample per label value.
fn labelled(page: &mut Page<'_>, name: &str, help: &str, kind: Kind, label: &str, m: &BTreeMap<&'static str, u64>) {
    let mut family = page.family(name, kind, help);
    for (k, v) in m {
        family.sample(&[(label, k)], *v as f64);
    }
}
