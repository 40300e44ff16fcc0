//! The aggregator's `/metrics` text of the cluster state: every ipamd family with a `cluster_id` label,
//! the derived capacity, the breakdowns and the ingest self-metrics.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use cni_metrics_proto::catalog;
use cni_metrics_proto::labels::{Counts, Label};
use cni_metrics_proto::v1::{FamilyType, MetricKind};

use super::series::Slot;
use super::{status_label, ClusterState, Dim, GroupTotals, SubnetTotals};

impl ClusterState {
    /// Append the Prometheus text exposition of the cluster aggregates and ingestion self-metrics.
    pub fn render_prometheus(&self, out: &mut String, now: Instant) {
        let cid = escape(&self.cfg.cluster_id);
        let mut by_family: BTreeMap<&str, Vec<&Slot>> = BTreeMap::new();
        for s in &self.slots {
            by_family.entry(&s.family).or_default().push(s);
        }
        for (family, mut slots) in by_family {
            slots.sort_by(|a, b| (&*a.name, &a.labels).cmp(&(&*b.name, &b.labels)));
            let lines: Vec<(&Slot, f64)> = slots
                .into_iter()
                .filter_map(|s| match s.kind {
                    MetricKind::Counter => Some((s, s.total)),
                    _ => s.gauge_value().map(|v| (s, v)),
                })
                .collect();
            if lines.is_empty() {
                continue;
            }
            let t = self.families.get(family).copied().unwrap_or(FamilyType::Untyped);
            let help = catalog::family(family).map_or("ipamd metric summed across the cluster's nodes", |f| f.help);
            let _ = writeln!(out, "# HELP {family} {help}\n# TYPE {family} {}", catalog::type_keyword(t));
            for (s, v) in lines {
                let _ = write!(out, "{}{{cluster_id=\"{cid}\"", s.name);
                for (k, val) in &s.labels {
                    let _ = write!(out, ",{k}=\"{}\"", escape(val));
                }
                let _ = writeln!(out, "}} {}", fmt_value(v));
            }
        }
        self.render_capacity(out, &cid, now);
        self.render_self_metrics(out, &cid);
    }

    fn render_capacity(&self, out: &mut String, cid: &str, now: Instant) {
        let c = &self.capacity;
        let gauge = |out: &mut String, name: &str, help: &str, v: Option<f64>| {
            if let Some(v) = v {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{cluster_id=\"{cid}\"}} {}", fmt_value(v));
            }
        };
        gauge(
            out,
            "cni_metrics_available_ip_addresses",
            "Sum over nodes of (total - assigned): warm IPs free for pods now",
            (c.with_available > 0).then_some(c.available),
        );
        gauge(
            out,
            "cni_metrics_ip_headroom",
            "Sum over nodes of (ip_max - assigned): IPs pods could still get as ENIs attach",
            (c.with_headroom > 0).then_some(c.headroom),
        );
        let (u_total, u_max) = c.utilization();
        if u_total.is_some() || u_max.is_some() {
            let name = "cni_metrics_ip_utilization_ratio";
            let _ = writeln!(
                out,
                "# HELP {name} Sum of assigned IPs over the sum of total (basis=total) or max (basis=max) IPs\n# TYPE {name} gauge"
            );
            for (basis, v) in [("total", u_total), ("max", u_max)] {
                if let Some(v) = v {
                    let _ = writeln!(out, "{name}{{cluster_id=\"{cid}\",basis=\"{basis}\"}} {}", fmt_value(v));
                }
            }
        }
        gauge(out, "cni_metrics_nodes_low_on_ips", "Nodes whose IP headroom is below --low-ip-threshold", Some(f64::from(c.low_nodes)));
        let stale = self.nodes.values().filter(|n| Self::is_stale(n, now)).count();
        gauge(out, "cni_metrics_nodes_stale", "Nodes whose last scrape failed or that missed two reports", Some(stale as f64));
        gauge(
            out,
            "cni_metrics_capacity_anomalies",
            "Nodes reporting impossible capacity (assigned > total or max, negative values)",
            Some(f64::from(c.anomalous_nodes)),
        );
        self.render_breakdowns(out, cid);
        let _ = writeln!(
            out,
            "# HELP cni_metrics_capacity_anomalies_total Times a node started reporting impossible capacity\n# TYPE cni_metrics_capacity_anomalies_total counter\ncni_metrics_capacity_anomalies_total{{cluster_id=\"{cid}\"}} {}",
            self.stats.capacity_anomalies
        );
    }

    /// `cni_metrics_<metric>_by_<label>` families: their own families, so `sum()` never double counts.
    fn render_breakdowns(&self, out: &mut String, cid: &str) {
        type Get = fn(&GroupTotals) -> Option<f64>;
        let metrics: [(&str, &str, Get); 7] = [
            ("nodes", "Nodes", |g| Some(f64::from(g.nodes))),
            ("assigned_ip_addresses", "IPs assigned to pods", |g| Some(g.assigned)),
            ("total_ip_addresses", "IPs held by the nodes", |g| Some(g.total)),
            ("ip_max", "Most IPs the nodes can hold", |g| Some(g.max)),
            ("available_ip_addresses", "Sum over nodes of (total - assigned)", |g| {
                (g.capacity.with_available > 0).then_some(g.capacity.available)
            }),
            ("ip_headroom", "Sum over nodes of (ip_max - assigned)", |g| (g.capacity.with_headroom > 0).then_some(g.capacity.headroom)),
            ("nodes_low_on_ips", "Nodes whose IP headroom is below --low-ip-threshold", |g| Some(f64::from(g.capacity.low_nodes))),
        ];
        if self.breakdowns.dims.contains(&Dim::Subnet) {
            type SubnetGet = fn(&SubnetTotals) -> f64;
            let subnet_metrics: [(&str, &str, SubnetGet); 4] = [
                ("nodes", "Nodes with ENIs", |t| f64::from(t.nodes)),
                ("total_ip_addresses", "IPs the cluster's nodes hold", |t| t.total),
                ("assigned_ip_addresses", "IPs assigned to pods", |t| t.assigned),
                ("available_ip_addresses", "Sum over nodes of (held - assigned)", |t| t.available),
            ];
            for (metric, help, get) in subnet_metrics {
                let name = format!("cni_metrics_{metric}_by_subnet_id");
                let _ = writeln!(out, "# HELP {name} {help}, by subnet (ipamd introspection)\n# TYPE {name} gauge");
                for (subnet, t) in &self.breakdowns.subnets {
                    let _ = writeln!(out, "{name}{{cluster_id=\"{cid}\",subnet_id=\"{}\"}} {}", escape(subnet), fmt_value(get(t)));
                }
            }
        }
        for dim in self.breakdowns.dims.iter().filter(|d| **d != Dim::Subnet) {
            let label = dim.label();
            for (metric, help, get) in metrics {
                let name = format!("cni_metrics_{metric}_by_{label}");
                let _ = writeln!(out, "# HELP {name} {help}, by {label}\n# TYPE {name} gauge");
                for ((d, value), g) in self.breakdowns.groups.range((*dim, String::new())..) {
                    if d != dim {
                        break;
                    }
                    if let Some(v) = get(g) {
                        let _ = writeln!(out, "{name}{{cluster_id=\"{cid}\",{label}=\"{}\"}} {}", escape(value), fmt_value(v));
                    }
                }
            }
        }
        if !self.breakdowns.dims.is_empty() {
            let _ = writeln!(
                out,
                "# HELP cni_metrics_breakdown_overflow_total Node placements put in the group \"other\" by --max-breakdown-groups\n# TYPE cni_metrics_breakdown_overflow_total counter\ncni_metrics_breakdown_overflow_total{{cluster_id=\"{cid}\"}} {}",
                self.breakdowns.overflow
            );
        }
    }

    fn render_self_metrics(&self, out: &mut String, cid: &str) {
        let st = &self.stats;
        let mut by_status: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut dropped = 0u64;
        for n in self.nodes.values() {
            *by_status.entry(status_label(n.status)).or_default() += 1;
            dropped += n.dropped_series;
        }
        let ok = by_status.get("ok").copied().unwrap_or(0);
        let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{cluster_id=\"{cid}\"}} {}", fmt_value(v));
        };
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{cluster_id=\"{cid}\"}} {v}");
        };
        let labelled = |out: &mut String, name: &str, help: &str, kind: &str, label: &str, m: &BTreeMap<&'static str, u64>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (k, v) in m {
                let _ = writeln!(out, "{name}{{cluster_id=\"{cid}\",{label}=\"{k}\"}} {v}");
            }
        };
        gauge(out, "cni_metrics_nodes_reporting", "Nodes whose last ipamd scrape succeeded", ok as f64);
        labelled(out, "cni_metrics_nodes", "Known nodes by the status of their last ipamd scrape", "gauge", "scrape_status", &by_status);
        gauge(out, "cni_metrics_cluster_series", "Cluster series held by the aggregator", self.slots.len() as f64);
        gauge(
            out,
            "cni_metrics_agent_dropped_series",
            "Series the agents dropped at their per-node limit in their latest scrape",
            dropped as f64,
        );
        counter(out, "cni_metrics_sessions_total", "Agent streams accepted", st.sessions);
        counter(out, "cni_metrics_reports_received_total", "Agent reports applied", st.reports);
        counter(
            out,
            "cni_metrics_reports_stale_total",
            "Reports ignored because a newer one was already applied",
            st.reports_ignored_old_seq,
        );
        counts(out, cid, "cni_metrics_reports_rejected_total", "Agent streams and messages refused, by reason", "reason", &st.rejected);
        counts(out, cid, "cni_metrics_series_rejected_total", "Series refused, by reason", "reason", &st.series_rejected);
        labelled(
            out,
            "cni_metrics_scrape_errors_total",
            "Reports of a failed ipamd scrape, by status",
            "counter",
            "status",
            &st.scrape_errors,
        );
        counter(out, "cni_metrics_bad_lines_total", "ipamd page lines the agents could not parse", st.bad_lines);
        counter(out, "cni_metrics_nonfinite_values_total", "NaN or infinite values ignored", st.nonfinite_values);
        counter(
            out,
            "cni_metrics_counter_regressions_total",
            "Counter totals that went backwards within an agent run (ignored)",
            st.counter_regressions,
        );
        counter(out, "cni_metrics_node_goodbyes_total", "Nodes that left with a goodbye", st.goodbyes);
        counter(out, "cni_metrics_nodes_expired_total", "Nodes dropped after their TTL", st.expired);
        counter(out, "cni_metrics_agent_restarts_total", "Agent runs replaced by a new run of the same node", st.agent_restarts);
        counter(
            out,
            "cni_metrics_agent_runs_recovered_total",
            "Agent runs first seen mid-way (this aggregator restarted): counted from their committed totals",
            st.runs_recovered,
        );
        let _ = writeln!(
            out,
            "# HELP cni_metrics_recovered_increments_total Counter increments counted from agents' committed totals after an aggregator restart (delivered by no earlier aggregator, or in doubt)\n# TYPE cni_metrics_recovered_increments_total counter\ncni_metrics_recovered_increments_total{{cluster_id=\"{cid}\"}} {}",
            fmt_value(st.recovered_increments)
        );
        counter(
            out,
            "cni_metrics_agent_runs_resumed_total",
            "New agent runs that resumed counting where the node's previous run stopped",
            st.runs_resumed,
        );
        counter(
            out,
            "cni_metrics_agent_runs_continued_total",
            "Agent runs that came back after leaving (partition, expiry) and continued from their kept totals",
            st.runs_continued,
        );
        counter(
            out,
            "cni_metrics_agent_baseline_unknown_total",
            "Agent runs that started without a resume point on an ipamd older than their initial window: increments before their first scrape are not counted",
            st.baseline_unknown_runs,
        );
        counter(
            out,
            "cni_metrics_agent_baseline_in_doubt_total",
            "Agent runs that counted a young ipamd from its start without a resume point, on an aggregator younger than that ipamd: part may be counted twice",
            st.baseline_in_doubt_runs,
        );
        counter(
            out,
            "cni_metrics_departed_evicted_total",
            "Departed-node records dropped at their bound (those nodes' next agent run cannot resume)",
            st.departed_evicted,
        );
        gauge(out, "cni_metrics_departed_nodes", "Departed-node records kept for continuation and resume", self.departed.len() as f64);
    }
}

/// A counter family with one sample per value of label `L` (zeros included).
fn counts<L: Label>(out: &mut String, cid: &str, name: &str, help: &str, label: &str, counts: &Counts<L>) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (l, v) in counts.iter() {
        let _ = writeln!(out, "{name}{{cluster_id=\"{cid}\",{label}=\"{}\"}} {v}", l.as_str());
    }
}

fn escape(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return std::borrow::Cow::Borrowed(v);
    }
    std::borrow::Cow::Owned(v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n"))
}

fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".to_owned()
        } else {
            "-Inf".to_owned()
        }
    } else {
        format!("{v}")
    }
}
