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

use crate::state::status_label;
use cni_metrics_proto::clock::rfc3339;

/// `watch`'s flags (its own only: a server setting in the environment never breaks it).
#[derive(Clone, Debug, clap::Args)]
pub struct WatchConfig {
    /// The aggregator's gRPC address.
    #[arg(long = "aggregator", env = "AGGREGATOR_URL", default_value = "http://127.0.0.1:61690")]
    pub aggregator: String,
    /// Print one snapshot and exit.
    #[arg(long)]
    pub once: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Rows of the node table.
    #[arg(long, default_value_t = 15)]
    pub top: usize,
    /// Only these nodes (repeat the flag).
    #[arg(long)]
    pub node: Vec<String>,
    /// Redraw at most this often.
    #[arg(long = "refresh", default_value = "1s", value_parser = cni_metrics_proto::duration::parse_positive)]
    pub interval: std::time::Duration,
    /// Client certificate, key and CA (PEM) when the aggregator requires mutual TLS (use an https:// URL).
    #[command(flatten)]
    pub tls: cni_metrics_proto::tls::ClientTlsFlags,
    #[command(flatten)]
    pub log: crate::config::LogArgs,
}

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
    render_totals(&mut s, c);
    render_nodes(&mut s, nodes, top);
    if !c.subnets.is_empty() {
        render_subnets(&mut s, c, top);
    }
    render_stale(&mut s, nodes, top);
    if !c.aggregates.is_empty() {
        render_errors(&mut s, c);
    }
    s
}

/// The cluster's counts, IPs and utilization.
fn render_totals(s: &mut String, c: &ClusterView) {
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
    if let Some(cooling) = c.cooldown_ips {
        let _ = writeln!(s, "WARM POOL  idle {}  of which in cooldown {} (no pod can have those yet)", c.available_ips, cooling);
    }
    let _ = writeln!(
        s,
        "utilization {} of total, {} of max   ENIs {} / {}",
        pct(c.utilization_total),
        pct(c.utilization_max),
        c.enis_allocated,
        c.enis_max
    );
    if c.nodes_ipv6 > 0 {
        let _ = writeln!(
            s,
            "IPv6 nodes {}: in assigned/total/max, not in available, headroom, utilization or low on IPs\n  \
             (an IPv6 node runs out of max pods, not addresses)",
            c.nodes_ipv6
        );
    }
}

/// The nodes lowest on IP headroom.
fn render_nodes(s: &mut String, nodes: &[NodeView], top: usize) {
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
}

/// The subnets, worst first (`--subnet-metrics`), each with its free /28 blocks (`--subnet-prefixes`)
/// and, below it, its exhaustion forecast in words where there is one.
fn render_subnets(s: &mut String, c: &ClusterView, top: usize) {
    let stale = if c.subnets.iter().any(|x| x.stale) { "  (EC2 not reachable: last known values)" } else { "" };
    let _ =
        writeln!(s, "\nSUBNETS (worst first): {} addresses available, {} low{stale}", num(c.subnet_available_ips), c.subnets_low_on_ips);
    let _ = writeln!(
        s,
        "{:<24} {:<11} {:>7} {:>9} {:>7} {:>6} {:>6} {:>8} {:>4}",
        "SUBNET", "AZ", "USABLE", "AVAILABLE", "CLUSTER", "PODS", "OTHERS", "FREE /28", "LOW"
    );
    for x in c.subnets.iter().take(top) {
        let free = if x.prefixes_counted { x.free_prefixes.to_string() } else { "-".into() };
        let low = match (x.low_on_ips, x.low_on_prefixes) {
            (true, true) => "both",
            (true, false) => "IPs",
            (false, true) => "/28",
            (false, false) => "",
        };
        let _ = writeln!(
            s,
            "{:<24} {:<11} {:>7} {:>9} {:>7} {:>6} {:>6} {:>8} {:>4}",
            x.subnet_id,
            x.availability_zone,
            num(x.usable_ips),
            num(x.available_ips),
            num(x.held_by_cluster),
            num(x.assigned_to_pods),
            num(x.held_by_others),
            free,
            low
        );
        if let Some(line) = forecast_line(x, c.forecast_window_seconds) {
            let _ = writeln!(s, "  {line}");
        }
    }
}

/// "runs out of addresses in about 5 h, of free /28s in about 2 h (at the last 6 h's rate)", or
/// `None` without a forecast.
fn forecast_line(x: &cni_metrics_proto::v1::SubnetView, window: f64) -> Option<String> {
    let parts: Vec<String> = [("addresses", x.addresses_exhaustion_seconds), ("free /28s", x.prefixes_exhaustion_seconds)]
        .into_iter()
        .filter_map(|(what, secs)| Some(format!("of {what} in {}", about(secs.filter(|s| s.is_finite() && *s >= 0.0)?))))
        .collect();
    (!parts.is_empty()).then(|| format!("runs out {} (at the last {}'s rate)", parts.join(", "), span(window)))
}

/// A forecast's time in words: "less than a minute", "about 40 min", "about 5 h", "about 3 days".
fn about(secs: f64) -> String {
    let minutes = (secs / 60.0).round();
    if secs < 60.0 {
        "less than a minute".into()
    } else if minutes < 90.0 {
        format!("about {minutes} min")
    } else if secs < 48.0 * 3600.0 {
        format!("about {} h", (secs / 3600.0).round())
    } else {
        format!("about {} days", (secs / 86_400.0).round())
    }
}

/// A window's length: "6 h", "90 min", "2 days".
fn span(secs: f64) -> String {
    if secs >= 48.0 * 3600.0 && secs % 86_400.0 == 0.0 {
        format!("{} days", secs / 86_400.0)
    } else if secs >= 3600.0 && secs % 3600.0 == 0.0 {
        format!("{} h", secs / 3600.0)
    } else {
        format!("{} min", (secs / 60.0).round())
    }
}

/// Nodes whose scrape fails or that stopped reporting.
fn render_stale(s: &mut String, nodes: &[NodeView], top: usize) {
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
}

/// The error counters that are not zero.
fn render_errors(s: &mut String, c: &ClusterView) {
    let errors: Vec<(&str, f64)> = ERROR_FAMILIES
        .iter()
        .map(|(fam, label)| {
            let v = c.aggregates.iter().filter(|a| a.name == *fam && a.kind == MetricKind::Counter as i32).map(|a| a.value).sum::<f64>();
            (*label, v)
        })
        .collect();
    let _ = writeln!(s, "\nERRORS since aggregator start (empty means healthy)");
    for (label, v) in errors.iter().filter(|(_, v)| *v > 0.0) {
        let _ = writeln!(s, "  {label:<44} {v}");
    }
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
    nodes_ipv6: u64,
    forecast_window_seconds: f64,
    /// Null when no node reports it.
    cooldown_ips: Option<f64>,
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
    /// `None` (null) unless the subnet's free /28 blocks were counted.
    free_prefixes: Option<u32>,
    free_reserved_prefixes: Option<u32>,
    largest_free_block_prefix_length: Option<u32>,
    low_on_prefixes: bool,
    /// Seconds until zero; null without a forecast.
    addresses_exhaustion_seconds: Option<f64>,
    prefixes_exhaustion_seconds: Option<f64>,
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
    ipv6: bool,
    /// Null when the node's agent does not read introspection.
    cooldown_ips: Option<f64>,
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
        nodes_ipv6: c.nodes_ipv6.into(),
        forecast_window_seconds: c.forecast_window_seconds,
        cooldown_ips: c.cooldown_ips,
        subnets: c.subnets.iter().map(json_subnet).collect(),
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
                ipv6: n.ipv6,
                cooldown_ips: n.cooldown_ips,
                last_report_age_ms: n.last_report_age_ms,
            })
            .collect(),
    };
    // Serializing plain structs of strings, numbers and bools cannot fail.
    serde_json::to_string(&view).unwrap_or_default()
}

fn json_subnet(x: &cni_metrics_proto::v1::SubnetView) -> JsonSubnet<'_> {
    let counted = |v: u32| x.prefixes_counted.then_some(v);
    JsonSubnet {
        subnet_id: &x.subnet_id,
        availability_zone: &x.availability_zone,
        usable_ips: x.usable_ips,
        available_ips: x.available_ips,
        held_by_cluster: x.held_by_cluster,
        assigned_to_pods: x.assigned_to_pods,
        held_by_others: x.held_by_others,
        low_on_ips: x.low_on_ips,
        stale: x.stale,
        free_prefixes: counted(x.free_prefixes),
        free_reserved_prefixes: counted(x.free_reserved_prefixes),
        largest_free_block_prefix_length: counted(x.largest_free_block_prefix_length).filter(|l| *l > 0),
        low_on_prefixes: x.low_on_prefixes,
        addresses_exhaustion_seconds: x.addresses_exhaustion_seconds,
        prefixes_exhaustion_seconds: x.prefixes_exhaustion_seconds,
    }
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
            ..cni_metrics_proto::v1::SubnetView::default()
        };
        c.subnets = vec![subnet("subnet-low", 12.0, true), subnet("subnet-ok", 200.0, false)];
        c.subnet_available_ips = 212.0;
        c.subnets_low_on_ips = 1;
        let t = render_table(&c, &[], 10);
        assert!(t.contains("SUBNETS (worst first): 212 addresses available, 1 low  (EC2 not reachable: last known values)"), "{t}");
        let low = t.find("\nsubnet-low ").unwrap_or(usize::MAX);
        assert!(low < t.find("\nsubnet-ok ").unwrap_or(0), "{t}");
        assert!(t.contains(" IPs\n"), "{t}");
        assert!(!t.contains("runs out"), "no forecast without one: {t}");
        let v: serde_json::Value = serde_json::from_str(&render_json(&c, &[])).unwrap_or_default();
        assert_eq!(v["subnets"][0]["subnet_id"], "subnet-low");
        assert_eq!(v["subnets_low_on_ips"], 1);
    }

    #[test]
    fn subnets_show_free_prefixes_and_the_forecast_in_words() {
        let mut c = cluster();
        c.forecast_window_seconds = 6.0 * 3600.0;
        let base = cni_metrics_proto::v1::SubnetView {
            subnet_id: "subnet-0123456789abcdef0".into(),
            availability_zone: "us-east-1a".into(),
            usable_ips: 4091.0,
            available_ips: 900.0,
            ..cni_metrics_proto::v1::SubnetView::default()
        };
        let draining = cni_metrics_proto::v1::SubnetView {
            prefixes_counted: true,
            free_prefixes: 3,
            largest_free_block_prefix_length: 28,
            low_on_prefixes: true,
            addresses_exhaustion_seconds: Some(5.2 * 3600.0),
            prefixes_exhaustion_seconds: Some(40.0 * 60.0),
            ..base.clone()
        };
        let flat = cni_metrics_proto::v1::SubnetView { subnet_id: "subnet-flat".into(), ..base };
        c.subnets = vec![draining, flat];
        let t = render_table(&c, &[], 10);
        assert!(t.contains("\n  runs out of addresses in about 5 h, of free /28s in about 40 min (at the last 6 h's rate)\n"), "{t}");
        assert_eq!(t.matches("runs out").count(), 1, "a flat subnet has no forecast line: {t}");
        let row = t.lines().find(|l| l.starts_with("subnet-0123")).unwrap_or_default();
        assert!(row.ends_with("        3  /28"), "free /28s and low on them: {row:?}");
        let flat_row = t.lines().find(|l| l.starts_with("subnet-flat")).unwrap_or_default();
        assert!(flat_row.ends_with("        -     "), "not counted: {flat_row:?}");
        assert!(t.lines().all(|l| l.chars().count() <= 100), "{t}");
        let v: serde_json::Value = serde_json::from_str(&render_json(&c, &[])).unwrap_or_default();
        assert_eq!(v["subnets"][0]["free_prefixes"], 3);
        assert_eq!(v["subnets"][0]["prefixes_exhaustion_seconds"], 2400.0);
        assert_eq!(v["subnets"][1]["free_prefixes"], serde_json::Value::Null);
        assert_eq!(v["subnets"][1]["addresses_exhaustion_seconds"], serde_json::Value::Null);
        for (secs, words) in
            [(30.0, "less than a minute"), (600.0, "about 10 min"), (7200.0, "about 2 h"), (5.0 * 86_400.0, "about 5 days")]
        {
            assert_eq!(about(secs), words);
        }
        for (secs, words) in [(5400.0, "90 min"), (21_600.0, "6 h"), (172_800.0, "2 days")] {
            assert_eq!(span(secs), words);
        }
    }

    #[test]
    fn warm_pool_line_only_when_cooldown_is_known() {
        let mut c = cluster();
        assert!(!render_table(&c, &[], 10).contains("WARM POOL"), "unknown cooldown: no line");
        c.cooldown_ips = Some(0.0);
        let t = render_table(&c, &[], 10);
        let line = t.lines().find(|l| l.starts_with("WARM POOL")).unwrap_or_default();
        assert_eq!(line, format!("WARM POOL  idle {}  of which in cooldown 0 (no pod can have those yet)", c.available_ips));
        assert!(line.len() <= 100);
        assert!(render_json(&c, &[]).contains("\"cooldown_ips\":0.0"), "{}", render_json(&c, &[]));
    }

    #[test]
    fn ipv6_nodes_are_named_and_said_why() {
        let mut c = cluster();
        assert!(!render_table(&c, &[], 10).contains("IPv6"), "{c:?}");
        c.nodes_ipv6 = 2;
        let v6 = NodeView { ipv6: true, available_ips: -1.0, ip_headroom: -1.0, ..node("v6-node", 0.0, false, false) };
        let t = render_table(&c, &[v6.clone(), node("v4-node", 3.0, true, false)], 10);
        assert!(t.contains("IPv6 nodes 2: in assigned/total/max, not in available, headroom, utilization or low on IPs"), "{t}");
        assert!(t.contains("\n  (an IPv6 node runs out of max pods, not addresses)\n"), "{t}");
        assert!(t.lines().all(|l| l.chars().count() <= 100), "{t}");
        assert!(!t.contains("\nv6-node "), "an IPv6 node has no IP headroom to rank: {t}");
        let v: serde_json::Value = serde_json::from_str(&render_json(&c, &[v6])).unwrap_or_default();
        assert_eq!((v["nodes_ipv6"].clone(), v["nodes"][0]["ipv6"].clone()), (2.into(), true.into()));
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
