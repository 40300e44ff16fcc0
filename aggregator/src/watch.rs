//! `cni-metrics-aggregator watch`: a terminal view of a running aggregator over its `Consumer` gRPC
//! service. It subscribes to the cluster numbers and redraws totals, utilization, the nodes lowest on
//! IPs (worst first), stale nodes and error counters; it asks for the few nodes it shows (`--top` worst
//! by headroom, `--top` stale), never for all of a 100,000-node cluster. `--once` prints one snapshot and
//! exits; `--json` prints JSON with every node (paged). The rendering is pure ([`render_table`],
//! [`render_json`]) and unit-tested.

use std::fmt::Write as _;
use std::future::Future;

use cni_metrics_proto::v1::consumer_client::ConsumerClient;
use cni_metrics_proto::v1::{
    ClusterView, GetClusterRequest, ListNodesRequest, MetricKind, NodeOrder, NodeView, ScrapeStatus, SubscribeRequest,
};

use crate::config::WatchConfig;
use crate::state::status_label;
use cni_metrics_proto::clock::rfc3339;

/// Error counters shown in the view: (family, label).
const ERROR_FAMILIES: &[(&str, &str)] = &[
    ("awscni_no_available_ip_addresses", "pod IP assignments failed: no available IP"),
    ("awscni_ipamd_error_count", "ipamd errors"),
    ("awscni_aws_api_error_count", "AWS API errors"),
    ("awscni_ec2api_error_count", "EC2 API errors"),
    ("awscni_aws_utils_error_count", "awsutils errors"),
    ("awscni_pod_eni_error_count", "pod ENI errors"),
];

fn pct(r: f64) -> String {
    if r < 0.0 {
        "-".into()
    } else {
        format!("{:.1}%", r * 100.0)
    }
}

fn num(v: f64) -> String {
    if v < 0.0 {
        "-".into()
    } else {
        format!("{v}")
    }
}

fn status_name(s: i32) -> &'static str {
    status_label(ScrapeStatus::try_from(s).unwrap_or(ScrapeStatus::Unreachable))
}

/// The view as a table.
pub fn render_table(c: &ClusterView, nodes: &[NodeView], top: usize) -> String {
    let mut s = String::new();
    let id = if c.cluster_id.is_empty() { "(no cluster id)" } else { c.cluster_id.as_str() };
    let _ = writeln!(
        s,
        "cluster {id}  {}  nodes {} (reporting {}, stale {}, low on IPs {}, anomalous {})",
        rfc3339(c.time_unix_ms),
        c.nodes_known,
        c.nodes_reporting,
        c.nodes_stale,
        c.nodes_low_on_ips,
        c.nodes_anomalous
    );
    let _ = writeln!(
        s,
        "IPs  assigned {}  total {}  max {}  available {}  headroom {}",
        c.assigned_ips, c.total_ips, c.max_ips, c.available_ips, c.ip_headroom
    );
    let _ = writeln!(
        s,
        "utilization {} of total, {} of max   ENIs {} / {}",
        pct(c.utilization_total),
        pct(c.utilization_max),
        c.enis_allocated,
        c.enis_max
    );
    let mut by_headroom: Vec<&NodeView> = nodes.iter().filter(|n| n.ip_headroom >= 0.0).collect();
    by_headroom.sort_by(|a, b| a.ip_headroom.total_cmp(&b.ip_headroom).then_with(|| a.name.cmp(&b.name)));
    let _ = writeln!(s, "\nNODES BY IP HEADROOM (worst first)");
    let _ = writeln!(
        s,
        "{:<28} {:<12} {:<12} {:>8} {:>6} {:>5} {:>9} {:<8} {:<4}",
        "NODE", "AZ", "TYPE", "ASSIGNED", "TOTAL", "MAX", "HEADROOM", "SCRAPE", "LOW"
    );
    for n in by_headroom.iter().take(top) {
        let _ = writeln!(
            s,
            "{:<28} {:<12} {:<12} {:>8} {:>6} {:>5} {:>9} {:<8} {:<4}",
            n.name,
            n.availability_zone,
            n.instance_type,
            num(n.assigned_ips),
            num(n.total_ips),
            num(n.max_ips),
            num(n.ip_headroom),
            status_name(n.status),
            if n.low_on_ips { "yes" } else { "" }
        );
    }
    if !c.subnets.is_empty() {
        let stale = if c.subnets.iter().any(|x| x.stale) { "  (EC2 not reachable: last known values)" } else { "" };
        let _ = writeln!(
            s,
            "\nSUBNETS (worst first): {} addresses available, {} low{stale}",
            num(c.subnet_available_ips),
            c.subnets_low_on_ips
        );
        let _ = writeln!(
            s,
            "{:<26} {:<12} {:>8} {:>9} {:>8} {:>8} {:>7} {:>4}",
            "SUBNET", "AZ", "USABLE", "AVAILABLE", "CLUSTER", "PODS", "OTHERS", "LOW"
        );
        for x in c.subnets.iter().take(top) {
            let _ = writeln!(
                s,
                "{:<26} {:<12} {:>8} {:>9} {:>8} {:>8} {:>7} {:>4}",
                x.subnet_id,
                x.availability_zone,
                num(x.usable_ips),
                num(x.available_ips),
                num(x.held_by_cluster),
                num(x.assigned_to_pods),
                num(x.held_by_others),
                if x.low_on_ips { "yes" } else { "" }
            );
        }
    }
    let stale: Vec<&NodeView> = nodes.iter().filter(|n| n.stale).collect();
    if !stale.is_empty() {
        let _ = writeln!(s, "\nSTALE NODES");
        for n in stale.iter().take(top) {
            let _ = writeln!(
                s,
                "{:<28} {:<11} last report {:.1}s ago  {}",
                n.name,
                status_name(n.status),
                n.last_report_age_ms as f64 / 1000.0,
                n.status_detail
            );
        }
    }
    let errors: Vec<(&str, f64)> = ERROR_FAMILIES
        .iter()
        .map(|(fam, label)| {
            let v = c.aggregates.iter().filter(|a| a.name == *fam && a.kind == MetricKind::Counter as i32).map(|a| a.value).sum::<f64>();
            (*label, v)
        })
        .collect();
    if !c.aggregates.is_empty() {
        let _ = writeln!(s, "\nERRORS since aggregator start (empty means healthy)");
        for (label, v) in errors.iter().filter(|(_, v)| *v > 0.0) {
            let _ = writeln!(s, "  {label:<44} {v}");
        }
    }
    s
}

/// `watch --json`: the cluster, then its nodes (field order as written here).
#[derive(serde::Serialize)]
struct JsonView<'a> {
    cluster_id: &'a str,
    time: String,
    nodes_known: u64,
    nodes_reporting: u64,
    nodes_stale: u64,
    nodes_low_on_ips: u64,
    nodes_anomalous: u64,
    assigned_ips: f64,
    total_ips: f64,
    max_ips: f64,
    available_ips: f64,
    ip_headroom: f64,
    utilization_total: f64,
    utilization_max: f64,
    enis_allocated: f64,
    enis_max: f64,
    subnet_available_ips: f64,
    subnets_low_on_ips: u64,
    subnets: Vec<JsonSubnet<'a>>,
    nodes: Vec<JsonNode<'a>>,
}

#[derive(serde::Serialize)]
struct JsonSubnet<'a> {
    subnet_id: &'a str,
    availability_zone: &'a str,
    usable_ips: f64,
    available_ips: f64,
    held_by_cluster: f64,
    assigned_to_pods: f64,
    held_by_others: f64,
    low_on_ips: bool,
    stale: bool,
}

#[derive(serde::Serialize)]
struct JsonNode<'a> {
    name: &'a str,
    status: &'static str,
    stale: bool,
    availability_zone: &'a str,
    instance_type: &'a str,
    assigned_ips: f64,
    total_ips: f64,
    max_ips: f64,
    available_ips: f64,
    ip_headroom: f64,
    low_on_ips: bool,
    anomalous: bool,
    last_report_age_ms: u64,
}

/// The view as one JSON object (unknown numbers are -1, as in the proto; non-finite ones null).
pub fn render_json(c: &ClusterView, nodes: &[NodeView]) -> String {
    let view = JsonView {
        cluster_id: &c.cluster_id,
        time: rfc3339(c.time_unix_ms),
        nodes_known: c.nodes_known.into(),
        nodes_reporting: c.nodes_reporting.into(),
        nodes_stale: c.nodes_stale.into(),
        nodes_low_on_ips: c.nodes_low_on_ips.into(),
        nodes_anomalous: c.nodes_anomalous.into(),
        assigned_ips: c.assigned_ips,
        total_ips: c.total_ips,
        max_ips: c.max_ips,
        available_ips: c.available_ips,
        ip_headroom: c.ip_headroom,
        utilization_total: c.utilization_total,
        utilization_max: c.utilization_max,
        enis_allocated: c.enis_allocated,
        enis_max: c.enis_max,
        subnet_available_ips: c.subnet_available_ips,
        subnets_low_on_ips: c.subnets_low_on_ips.into(),
        subnets: c
            .subnets
            .iter()
            .map(|x| JsonSubnet {
                subnet_id: &x.subnet_id,
                availability_zone: &x.availability_zone,
                usable_ips: x.usable_ips,
                available_ips: x.available_ips,
                held_by_cluster: x.held_by_cluster,
                assigned_to_pods: x.assigned_to_pods,
                held_by_others: x.held_by_others,
                low_on_ips: x.low_on_ips,
                stale: x.stale,
            })
            .collect(),
        nodes: nodes
            .iter()
            .map(|n| JsonNode {
                name: &n.name,
                status: status_name(n.status),
                stale: n.stale,
                availability_zone: &n.availability_zone,
                instance_type: &n.instance_type,
                assigned_ips: n.assigned_ips,
                total_ips: n.total_ips,
                max_ips: n.max_ips,
                available_ips: n.available_ips,
                ip_headroom: n.ip_headroom,
                low_on_ips: n.low_on_ips,
                anomalous: n.anomalous,
                last_report_age_ms: n.last_report_age_ms,
            })
            .collect(),
    };
    // Serializing plain structs of strings, numbers and bools cannot fail.
    serde_json::to_string(&view).unwrap_or_default()
}

/// The nodes the view shows, without downloading every node: the `top` worst by IP headroom and the
/// `top` longest stale (the table), or every node in pages (`--json`).
async fn fetch_nodes(client: &mut ConsumerClient<tonic::transport::Channel>, cfg: &WatchConfig) -> anyhow::Result<Vec<NodeView>> {
    let base = ListNodesRequest { nodes: cfg.node.clone(), ..ListNodesRequest::default() };
    if cfg.json {
        let mut nodes = Vec::new();
        let mut r = base;
        loop {
            let page = client.list_nodes(r.clone()).await?.into_inner();
            nodes.extend(page.nodes);
            if page.next_page_token.is_empty() {
                return Ok(nodes);
            }
            r.page_token = page.next_page_token;
        }
    }
    let top = u32::try_from(cfg.top).unwrap_or(u32::MAX).clamp(1, 5_000);
    let stale = ListNodesRequest { stale: true, order: NodeOrder::LastReport as i32, page_size: top, ..base.clone() };
    let worst = ListNodesRequest { order: NodeOrder::IpHeadroom as i32, page_size: top, ..base };
    // Stale ones first: the table lists stale nodes in the order given (longest silent first).
    let mut nodes = client.list_nodes(stale).await?.into_inner().nodes;
    for n in client.list_nodes(worst).await?.into_inner().nodes {
        if !nodes.iter().any(|s| s.name == n.name) {
            nodes.push(n);
        }
    }
    Ok(nodes)
}

/// Run the view until `shutdown` (or once).
pub async fn run_watch(cfg: WatchConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let endpoint = cfg.tls.apply(tonic::transport::Endpoint::from_shared(cfg.aggregator.clone())?)?;
    let mut client = ConsumerClient::new(endpoint.connect().await?);
    let print = |c: &ClusterView, nodes: &[NodeView], tty: bool| {
        let text = if cfg.json { render_json(c, nodes) } else { render_table(c, nodes, cfg.top) };
        if tty && !cfg.json {
            print!("\x1b[2J\x1b[H{text}");
        } else {
            println!("{text}");
        }
    };
    if cfg.once {
        let cluster = client.get_cluster(GetClusterRequest {}).await?.into_inner();
        let nodes = fetch_nodes(&mut client, &cfg).await?;
        print(&cluster, &nodes, false);
        return Ok(());
    }
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    // Cluster numbers come as they change; the few nodes shown are asked for on each.
    let req = SubscribeRequest { min_interval_ms: cfg.interval.as_millis() as u32, cluster_only: true, ..SubscribeRequest::default() };
    let mut stream = client.subscribe(req).await?.into_inner();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            m = stream.message() => match m? {
                Some(u) => {
                    let cluster = u.cluster.unwrap_or_default();
                    let nodes = fetch_nodes(&mut client, &cfg).await?;
                    print(&cluster, &nodes, tty);
                }
                None => anyhow::bail!("the aggregator ended the subscription"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cni_metrics_proto::v1::Aggregate;

    fn node(name: &str, headroom: f64, low: bool, stale: bool) -> NodeView {
        NodeView {
            name: name.into(),
            availability_zone: "eu-west-1a".into(),
            instance_type: "m5.large".into(),
            assigned_ips: 10.0,
            total_ips: 14.0,
            max_ips: 10.0 + headroom,
            available_ips: 4.0,
            ip_headroom: headroom,
            low_on_ips: low,
            stale,
            status: if stale { ScrapeStatus::Refused as i32 } else { 0 },
            last_report_age_ms: 1500,
            ..NodeView::default()
        }
    }

    fn cluster() -> ClusterView {
        ClusterView {
            cluster_id: "prod".into(),
            nodes_known: 3,
            nodes_reporting: 2,
            nodes_stale: 1,
            nodes_low_on_ips: 1,
            assigned_ips: 30.0,
            total_ips: 42.0,
            max_ips: 80.0,
            utilization_total: 30.0 / 42.0,
            utilization_max: -1.0,
            aggregates: vec![Aggregate {
                name: "awscni_no_available_ip_addresses".into(),
                labels: vec![],
                kind: MetricKind::Counter as i32,
                value: 7.0,
            }],
            ..ClusterView::default()
        }
    }

    #[test]
    fn table_sorts_worst_first_and_lists_stale_and_errors() {
        let nodes = vec![node("b", 40.0, false, false), node("a", 2.0, true, false), node("c", 8.0, false, true)];
        let t = render_table(&cluster(), &nodes, 10);
        let pos = |n: &str| t.find(&format!("\n{n} ")).unwrap_or(usize::MAX);
        assert!(pos("a") < pos("c") && pos("c") < pos("b"), "{t}");
        assert!(t.contains("utilization 71.4% of total, - of max"), "{t}");
        assert!(t.contains("STALE NODES\nc "), "{t}");
        assert!(t.contains("pod IP assignments failed: no available IP") && t.contains(" 7\n"), "{t}");
        let t = render_table(&cluster(), &nodes, 1);
        assert!(!t.contains("\nb "), "top limits the rows");
    }

    #[test]
    fn subnets_section_when_subnet_metrics_are_on() {
        let mut c = cluster();
        assert!(!render_table(&c, &[], 10).contains("SUBNETS"), "no section without subnet metrics");
        let subnet = |id: &str, available: f64, low: bool| cni_metrics_proto::v1::SubnetView {
            subnet_id: id.into(),
            availability_zone: "eu-west-1a".into(),
            usable_ips: 251.0,
            available_ips: available,
            held_by_cluster: 40.0,
            assigned_to_pods: 30.0,
            held_by_others: 251.0 - available - 40.0,
            low_on_ips: low,
            stale: true,
            refreshed_unix_ms: 0,
        };
        c.subnets = vec![subnet("subnet-low", 12.0, true), subnet("subnet-ok", 200.0, false)];
        c.subnet_available_ips = 212.0;
        c.subnets_low_on_ips = 1;
        let t = render_table(&c, &[], 10);
        assert!(t.contains("SUBNETS (worst first): 212 addresses available, 1 low  (EC2 not reachable: last known values)"), "{t}");
        let low = t.find("\nsubnet-low ").unwrap_or(usize::MAX);
        assert!(low < t.find("\nsubnet-ok ").unwrap_or(0), "{t}");
        assert!(t.contains(" yes\n"), "{t}");
        let v: serde_json::Value = serde_json::from_str(&render_json(&c, &[])).unwrap_or_default();
        assert_eq!(v["subnets"][0]["subnet_id"], "subnet-low");
        assert_eq!(v["subnets_low_on_ips"], 1);
    }

    #[test]
    fn json_is_escaped_and_complete() {
        let mut n = node("we\"ird\\name", 2.0, true, false);
        n.max_ips = f64::NAN;
        let j = render_json(&cluster(), &[n]);
        assert!(j.starts_with("{\"cluster_id\":\"prod\""), "{j}");
        assert!(j.contains("\"name\":\"we\\\"ird\\\\name\""), "{j}");
        assert!(j.contains("\"max_ips\":null"), "{j}");
        assert!(j.ends_with("}]}"), "{j}");
        let v: serde_json::Value = serde_json::from_str(&j).unwrap_or_default();
        assert_eq!(v["nodes"][0]["name"], "we\"ird\\name", "{j}");
        assert_eq!(v["nodes"][0]["low_on_ips"], true, "{j}");
    }
}
