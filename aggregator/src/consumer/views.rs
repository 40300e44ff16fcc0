//! What consumers see, built by pure functions from the state under its lock: the cluster numbers
//! ([`cluster_view`]) and one node ([`node_view`]).

use std::time::Instant;

use cni_metrics_proto::clock::unix_ms_now;
use cni_metrics_proto::v1::{Aggregate, ClusterView, Label, NodeView, ScrapeStatus, SubnetView};

use crate::state::{ClusterState, NodeState};

/// The cluster numbers.
pub fn cluster_view(st: &ClusterState, now: Instant, with_aggregates: bool) -> ClusterView {
    let c = st.capacity();
    let (u_total, u_max) = c.utilization();
    let sum = |name: &str| st.value(name, &[]).unwrap_or(0.0);
    let mut view = ClusterView {
        cluster_id: st.cluster_id().to_owned(),
        time_unix_ms: unix_ms_now(),
        nodes_known: st.node_count() as u32,
        nodes_reporting: st.status_count(ScrapeStatus::Ok) as u32,
        nodes_stale: st.stale_count(now) as u32,
        nodes_low_on_ips: c.low_nodes,
        nodes_anomalous: c.anomalous_nodes,
        assigned_ips: sum("awscni_assigned_ip_addresses"),
        total_ips: sum("awscni_total_ip_addresses"),
        max_ips: sum("awscni_ip_max"),
        available_ips: c.available,
        ip_headroom: c.headroom,
        utilization_total: u_total.unwrap_or(-1.0),
        utilization_max: u_max.unwrap_or(-1.0),
        enis_allocated: sum("awscni_eni_allocated"),
        enis_max: sum("awscni_eni_max"),
        aggregates: Vec::new(),
        subnets: Vec::new(),
        subnet_available_ips: 0.0,
        subnets_low_on_ips: 0,
        nodes_ipv6: c.ipv6_nodes,
        forecast_window_seconds: 0.0,
        cooldown_ips: (c.with_cooldown > 0).then_some(c.cooldown),
    };
    if let Some(r) = st.subnet_report() {
        view.subnet_available_ips = r.available;
        view.subnets_low_on_ips = r.low;
        view.forecast_window_seconds = st.subnets().forecast_window();
        view.subnets = subnet_views(st, &r.rows);
    }
    if with_aggregates {
        view.aggregates = st
            .aggregates()
            .map(|(name, labels, kind, value)| Aggregate {
                name: name.to_owned(),
                labels: labels.iter().map(|(n, v)| Label { name: n.clone(), value: v.clone() }).collect(),
                kind: kind as i32,
                value,
            })
            .collect();
    }
    view
}

/// The subnets' rows with their free /28 blocks and forecasts where there are some.
fn subnet_views(st: &ClusterState, rows: &[crate::state::SubnetRow]) -> Vec<SubnetView> {
    use crate::state::subnets::forecast::{Resource, Scope};
    let prefixes = st.prefix_report();
    let forecasts = st.exhaustion_forecasts();
    let forecast = |resource: Resource, subnet: &str| {
        forecasts
            .iter()
            .find(|(r, scope, _)| *r == resource && matches!(scope, Scope::Subnet(id) if id == subnet))
            .map(|(_, _, secs)| *secs)
    };
    rows.iter()
        .map(|row| {
            let counted = prefixes.and_then(|p| p.rows.iter().find(|p| p.subnet_id == row.subnet_id));
            SubnetView {
                subnet_id: row.subnet_id.clone(),
                availability_zone: row.availability_zone.clone(),
                usable_ips: row.usable,
                available_ips: row.available,
                held_by_cluster: row.held_by_cluster,
                assigned_to_pods: row.assigned_to_pods,
                held_by_others: row.held_by_others,
                low_on_ips: row.low,
                stale: st.subnets().stale(),
                refreshed_unix_ms: st.subnets().refreshed_unix_ms(),
                prefixes_counted: counted.is_some(),
                free_prefixes: counted.map_or(0, |p| p.space.free),
                free_reserved_prefixes: counted.map_or(0, |p| p.space.free_in_prefix_reservations),
                largest_free_block_prefix_length: counted.and_then(|p| p.space.largest_free_len).map_or(0, u32::from),
                low_on_prefixes: counted.is_some_and(|p| p.low),
                addresses_exhaustion_seconds: forecast(Resource::Addresses, &row.subnet_id),
                prefixes_exhaustion_seconds: forecast(Resource::Prefixes, &row.subnet_id),
            }
        })
        .collect()
}

/// One node.
pub fn node_view(n: &NodeState, now: Instant) -> NodeView {
    let known = |v: Option<f64>| v.unwrap_or(-1.0);
    let age_ms = now.saturating_duration_since(n.last_seen()).as_millis() as u64;
    NodeView {
        name: n.name().to_string(),
        status: n.status() as i32,
        status_detail: n.status_detail().to_owned(),
        last_report_age_ms: age_ms,
        stale: n.is_stale(now),
        connected: n.connected(),
        availability_zone: n.availability_zone().to_owned(),
        instance_type: n.instance_type().to_owned(),
        instance_id: n.instance_id().to_owned(),
        region: n.region().to_owned(),
        agent_version: n.agent_version().to_owned(),
        assigned_ips: known(n.capacity().assigned),
        total_ips: known(n.capacity().total),
        max_ips: known(n.capacity().max),
        available_ips: known(n.derived().available),
        ip_headroom: known(n.derived().headroom),
        low_on_ips: n.derived().low,
        anomalous: n.derived().anomalous,
        series: n.series_count() as u32,
        bad_lines_total: n.bad_lines_total(),
        last_report_unix_ms: unix_ms_now().saturating_sub(i64::try_from(age_ms).unwrap_or(i64::MAX)),
        ipv6: n.derived().ipv6,
        cooldown_ips: n.derived().cooldown,
    }
}

/// Node views sorted by name, filtered to `only` when not empty.
pub fn node_views(st: &ClusterState, now: Instant, only: &[String]) -> Vec<NodeView> {
    let mut v: Vec<NodeView> = if only.is_empty() {
        st.nodes().map(|n| node_view(n, now)).collect()
    } else {
        let mut names: Vec<&str> = only.iter().map(String::as_str).collect();
        names.sort_unstable();
        names.dedup();
        names.into_iter().filter_map(|o| st.node(o)).map(|n| node_view(n, now)).collect()
    };
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}
