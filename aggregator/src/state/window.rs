//! Closing a publish window: the cluster's CloudWatch datums (upstream's names and units, derived
//! capacity, breakdowns) and the commit marks that promise each node run its increments are in it.

use cni_metrics_proto::catalog::{self, CloudWatchFold};
use cni_metrics_proto::v1::MetricKind;

use super::node::CommitMark;
use super::series::Slot;
use super::{ClusterState, Dim};

/// The unit of a datum (CloudWatch's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Milliseconds,
    Percent,
}

impl Unit {
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
            Unit::Percent => "Percent",
        }
    }
}

impl std::fmt::Display for Unit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One CloudWatch-style datum of a publish window.
#[derive(Debug, Clone, PartialEq)]
pub struct Datum {
    pub metric_name: &'static str,
    pub value: f64,
    pub unit: Unit,
    /// A breakdown dimension (name, value) besides CLUSTER_ID.
    pub dimension: Option<(&'static str, String)>,
}

/// What a sink publishes: the cluster's values for one window.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// The configured cluster id, else the one cluster name all agents agree on, else empty.
    pub cluster_id: String,
    /// The one AWS region all agents that know it agree on.
    pub region_hint: Option<String>,
    /// Unix ms of the window's end (the datums' timestamp).
    pub end_unix_ms: i64,
    pub nodes: usize,
    pub datums: Vec<Datum>,
    /// What this window promises each node run (see [`ClusterState::commit`]).
    pub commits: Vec<CommitMark>,
    /// The publisher's sequence number of the window (0 until it numbers it).
    pub seq: u64,
}

impl ClusterState {
    /// Close the publish window: gauges as they are now, counters' increments since the last window.
    pub fn take_window(&mut self, end_unix_ms: i64) -> Window {
        let mut datums = Vec::new();
        for spec in catalog::FAMILIES {
            let Some(metric_name) = spec.cloudwatch_name else { continue };
            let slots = self.slots.iter().filter(|s| *s.family == *spec.name);
            let value = match spec.cloudwatch_fold {
                CloudWatchFold::GaugeSum => {
                    let mut any = false;
                    let mut sum = 0.0;
                    for s in slots {
                        if let Some(v) = s.gauge_value() {
                            any = true;
                            sum += v;
                        }
                    }
                    any.then_some(sum)
                }
                CloudWatchFold::CounterIncrease => {
                    let mut any = false;
                    let mut sum = 0.0;
                    for s in slots.filter(|s| s.kind == MetricKind::Counter) {
                        any = true;
                        sum += s.window;
                    }
                    any.then_some(sum)
                }
                CloudWatchFold::LatencyP99OrMean => latency(slots),
            };
            if let Some(value) = value {
                let unit = if spec.cloudwatch_fold == CloudWatchFold::LatencyP99OrMean { Unit::Milliseconds } else { Unit::Count };
                datums.push(Datum { metric_name, value, unit, dimension: None });
            }
        }
        for s in &mut self.slots {
            s.total += s.window;
            s.window = 0.0;
        }
        let mut commits = Vec::new();
        let mut established = Vec::new();
        for n in self.nodes.values_mut().filter(|n| !n.withheld) {
            if n.last_seq > n.closed_seq {
                if n.closed_seq == 0 && n.keeps_position && !self.departed.is_empty() {
                    established.push(n.name.clone());
                }
                n.closed_seq = n.last_seq;
                n.published_ipamd_start = n.ipamd_start_time;
                // Kept for the next window unless it grew large (a snapshot), so busy windows do not
                // allocate and idle nodes hold at most a few entries' capacity.
                if n.unpublished.capacity() > 8 {
                    n.unpublished = Vec::new();
                } else {
                    n.unpublished.clear();
                }
                commits.push(CommitMark { node: n.name.clone(), run_id: n.run_id, seq: n.last_seq });
            }
        }
        for name in &established {
            self.departed.remove(name);
        }
        for (name, d) in self.departed.iter_mut().filter(|(_, d)| !d.keeps_position) {
            if d.last_seq > d.closed_seq {
                d.closed_seq = d.last_seq;
                commits.push(CommitMark { node: name.clone(), run_id: d.run_id, seq: d.last_seq });
            }
        }
        if !self.nodes.is_empty() {
            let c = &self.capacity;
            let (u_total, u_max) = c.utilization();
            let derived = [
                ("availableIPAddresses", (c.with_available > 0).then_some(c.available), Unit::Count),
                ("ipHeadroom", (c.with_headroom > 0).then_some(c.headroom), Unit::Count),
                ("ipUtilization", u_total.map(|r| r * 100.0), Unit::Percent),
                ("ipCapacityUtilization", u_max.map(|r| r * 100.0), Unit::Percent),
                ("nodesLowOnIPs", Some(f64::from(c.low_nodes)), Unit::Count),
            ];
            for (metric_name, value, unit) in derived {
                if let Some(value) = value {
                    datums.push(Datum { metric_name, value, unit, dimension: None });
                }
            }
            for (subnet, t) in &self.breakdowns.subnets {
                for (metric_name, v) in
                    [("totalIPAddresses", t.total), ("assignIPAddresses", t.assigned), ("availableIPAddresses", t.available)]
                {
                    datums.push(Datum {
                        metric_name,
                        value: v,
                        unit: Unit::Count,
                        dimension: Some((Dim::Subnet.cloudwatch(), subnet.clone())),
                    });
                }
            }
            for ((dim, value), g) in &self.breakdowns.groups {
                let c = &g.capacity;
                let per_group = [
                    ("assignIPAddresses", Some(g.assigned)),
                    ("totalIPAddresses", Some(g.total)),
                    ("maxIPAddresses", Some(g.max)),
                    ("availableIPAddresses", (c.with_available > 0).then_some(c.available)),
                    ("ipHeadroom", (c.with_headroom > 0).then_some(c.headroom)),
                    ("nodesLowOnIPs", Some(f64::from(c.low_nodes))),
                ];
                for (metric_name, v) in per_group {
                    if let Some(v) = v {
                        datums.push(Datum { metric_name, value: v, unit: Unit::Count, dimension: Some((dim.cloudwatch(), value.clone())) });
                    }
                }
            }
        }
        // --subnet-metrics: EC2's numbers per subnet, per AZ and for the cluster.
        if let Some(r) = self.subnet_report() {
            let count = |metric_name: &'static str, value: f64, dimension: Option<(&'static str, String)>| Datum {
                metric_name,
                value,
                unit: Unit::Count,
                dimension,
            };
            datums.push(count("subnetAvailableIPAddresses", r.available, None));
            datums.push(count("subnetsLowOnIPs", f64::from(r.low), None));
            for (az, (available, low)) in &r.by_az {
                datums.push(count("subnetAvailableIPAddresses", *available, Some((Dim::Az.cloudwatch(), az.clone()))));
                datums.push(count("subnetsLowOnIPs", f64::from(*low), Some((Dim::Az.cloudwatch(), az.clone()))));
            }
            for row in &r.rows {
                let dim = || Some((Dim::Subnet.cloudwatch(), row.subnet_id.clone()));
                datums.push(count("subnetAvailableIPAddresses", row.available, dim()));
                datums.push(count("subnetUsableIPAddresses", row.usable, dim()));
                datums.push(count("subnetClusterIPAddresses", row.held_by_cluster, dim()));
                datums.push(count("subnetOtherIPAddresses", row.held_by_others, dim()));
            }
        }
        let cluster_id = if self.cfg.cluster_id.is_empty() {
            self.agreed_cluster_name().unwrap_or_default().to_owned()
        } else {
            self.cfg.cluster_id.clone()
        };
        Window {
            cluster_id,
            region_hint: self.agreed_region().map(str::to_owned),
            end_unix_ms,
            nodes: self.nodes.len(),
            datums,
            commits,
            seq: 0,
        }
    }
}

/// Max p99 over live nodes where quantiles exist, else the window's mean from `_sum`/`_count`.
fn latency<'a>(slots: impl Iterator<Item = &'a Slot>) -> Option<f64> {
    let mut p99: Option<f64> = None;
    let (mut sum, mut count) = (0.0, 0.0);
    for s in slots {
        if s.labels.iter().any(|(k, v)| k == "quantile" && v == "0.99") {
            if let Some(v) = s.gauge_value() {
                p99 = Some(p99.map_or(v, |m: f64| m.max(v)));
            }
        } else if s.name.ends_with("_sum") {
            sum += s.window;
        } else if s.name.ends_with("_count") {
            count += s.window;
        }
    }
    p99.or_else(|| (count > 0.0).then(|| sum / count))
}
