//! Closing a publish window: the cluster's CloudWatch datums (upstream's names and units, derived
//! capacity, breakdowns) and the commit marks that promise each node run its increments are in it.

use crate::state::subnets::forecast::{Resource, Scope};
use cni_metrics_proto::catalog::{self, CloudWatchFold};
use cni_metrics_proto::v1::MetricKind;

use super::node::CommitMark;
use super::series::{SeriesTable, Slot};
use super::{Breakdowns, CapacityTotals, ClusterState, Dim, SubnetReport};

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
}

/// A closed window: what the sinks publish, and apart from it what the window promises each node run
/// (the publisher keeps the marks until every sink delivered the window, see [`ClusterState::commit`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ClosedWindow {
    pub window: Window,
    pub commits: Vec<CommitMark>,
}

impl ClusterState {
    /// Close the publish window: gauges as they are now, counters' increments since the last window.
    pub fn take_window(&mut self, end_unix_ms: i64) -> ClosedWindow {
        let mut datums = family_datums(&self.series);
        self.series.close_window();
        let commits = self.book.close_runs();
        if !self.book.is_empty() {
            capacity_datums(&self.capacity, &mut datums);
            breakdown_datums(&self.breakdowns, &mut datums);
        }
        // --subnet-metrics: EC2's numbers per subnet, per AZ and for the cluster.
        if let Some(r) = self.subnet_report() {
            subnet_datums(&r, &mut datums);
        }
        // --subnet-prefixes: free /28 blocks per subnet, per AZ and for the cluster.
        if let Some(r) = self.prefix_report() {
            prefix_datums(r, &mut datums);
        }
        // The exhaustion forecast: hours until the first resource runs out, when a trend is falling.
        if self.subnet_report().is_some() {
            exhaustion_datums(&self.exhaustion_forecasts(), &mut datums);
        }
        let cluster_id = if self.cfg.cluster_id.is_empty() {
            self.book.agreed_cluster_name().unwrap_or_default().to_owned()
        } else {
            self.cfg.cluster_id.clone()
        };
        let region_hint = self.book.agreed_region().map(str::to_owned);
        ClosedWindow { window: Window { cluster_id, region_hint, end_unix_ms, nodes: self.book.len(), datums }, commits }
    }
}

/// The catalogue's CloudWatch names, each folded from its family's slots (grouped in one pass).
fn family_datums(series: &SeriesTable) -> Vec<Datum> {
    let by_family = series.by_family();
    let mut datums = Vec::new();
    for spec in catalog::FAMILIES {
        let Some(metric_name) = spec.cloudwatch_name else { continue };
        let slots = by_family.get(spec.name).map_or(&[][..], Vec::as_slice).iter().copied();
        let (value, unit) = match spec.cloudwatch_fold {
            CloudWatchFold::GaugeSum => (sum_of(slots.filter_map(Slot::gauge_value)), Unit::Count),
            CloudWatchFold::CounterIncrease => (sum_of(slots.filter(|s| s.kind() == MetricKind::Counter).map(|s| s.window())), Unit::Count),
            CloudWatchFold::LatencyP99OrMean => (latency(slots), Unit::Milliseconds),
        };
        if let Some(value) = value {
            datums.push(Datum { metric_name, value, unit, dimension: None });
        }
    }
    datums
}

/// The sum, `None` when there is nothing to sum.
fn sum_of(values: impl Iterator<Item = f64>) -> Option<f64> {
    values.fold(None, |acc, v| Some(acc.unwrap_or(0.0) + v))
}

/// The cluster's derived capacity.
fn capacity_datums(c: &CapacityTotals, datums: &mut Vec<Datum>) {
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
}

/// The breakdown groups (`--breakdown`), each datum with its dimension.
fn breakdown_datums(b: &Breakdowns, datums: &mut Vec<Datum>) {
    for (subnet, t) in &b.subnets {
        for (metric_name, v) in [("totalIPAddresses", t.total), ("assignIPAddresses", t.assigned), ("availableIPAddresses", t.available)] {
            datums.push(Datum { metric_name, value: v, unit: Unit::Count, dimension: Some((Dim::Subnet.cloudwatch(), subnet.clone())) });
        }
    }
    for ((dim, value), g) in &b.groups {
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

/// Subnet capacity (`--subnet-metrics`): per subnet, per AZ and for the cluster.
fn subnet_datums(r: &SubnetReport, datums: &mut Vec<Datum>) {
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

/// Free prefixes (`--subnet-prefixes`): per subnet, per AZ and for the cluster.
fn prefix_datums(r: &crate::state::subnets::prefixes::PrefixReport, datums: &mut Vec<Datum>) {
    let count = |metric_name: &'static str, value: u32, dimension: Option<(&'static str, String)>| Datum {
        metric_name,
        value: f64::from(value),
        unit: Unit::Count,
        dimension,
    };
    datums.push(count("subnetFreePrefixes", r.free, None));
    datums.push(count("subnetsLowOnPrefixes", r.low, None));
    for (az, (free, low)) in &r.by_az {
        datums.push(count("subnetFreePrefixes", *free, Some((Dim::Az.cloudwatch(), az.clone()))));
        datums.push(count("subnetsLowOnPrefixes", *low, Some((Dim::Az.cloudwatch(), az.clone()))));
    }
    for row in &r.rows {
        let dim = || Some((Dim::Subnet.cloudwatch(), row.subnet_id.clone()));
        datums.push(count("subnetFreePrefixes", row.space.free, dim()));
        datums.push(count("subnetFreeReservedPrefixes", row.space.free_in_prefix_reservations, dim()));
        if let Some(len) = row.space.largest_free_len {
            datums.push(count("subnetLargestFreeBlockPrefixLength", u32::from(len), dim()));
        }
    }
}

/// `subnetHoursToExhaustion`: per subnet and per AZ the sooner of addresses and /28s, for the cluster the
/// soonest subnet. Nothing without a falling trend.
fn exhaustion_datums(forecasts: &[(Resource, Scope, f64)], datums: &mut Vec<Datum>) {
    let mut soonest: std::collections::BTreeMap<&Scope, f64> = std::collections::BTreeMap::new();
    for (_, scope, secs) in forecasts {
        let e = soonest.entry(scope).or_insert(*secs);
        *e = e.min(*secs);
    }
    let hours = |secs: f64, dimension| Datum { metric_name: "subnetHoursToExhaustion", value: secs / 3600.0, unit: Unit::Count, dimension };
    let mut cluster: Option<f64> = None;
    for (scope, secs) in soonest {
        let dim = match scope {
            Scope::Subnet(id) => {
                cluster = Some(cluster.map_or(secs, |c| c.min(secs)));
                (Dim::Subnet.cloudwatch(), id.clone())
            }
            Scope::Az(az) => (Dim::Az.cloudwatch(), az.clone()),
        };
        datums.push(hours(secs, Some(dim)));
    }
    if let Some(secs) = cluster {
        datums.push(hours(secs, None));
    }
}

/// Max p99 over live nodes where quantiles exist, else the window's mean from `_sum`/`_count`.
fn latency<'a>(slots: impl Iterator<Item = &'a Slot>) -> Option<f64> {
    let mut p99: Option<f64> = None;
    let (mut sum, mut count) = (0.0, 0.0);
    for s in slots {
        if s.labels().iter().any(|(k, v)| k == "quantile" && v == "0.99") {
            if let Some(v) = s.gauge_value() {
                p99 = Some(p99.map_or(v, |m: f64| m.max(v)));
            }
        } else if s.name().ends_with("_sum") {
            sum += s.window();
        } else if s.name().ends_with("_count") {
            count += s.window();
        }
    }
    p99.or_else(|| (count > 0.0).then(|| sum / count))
}
