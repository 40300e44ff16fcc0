//! Every string an agent sends, checked before it touches state. A peer is untrusted: its names become
//! Prometheus sample and label names, CloudWatch dimension values and terminal text, so each has the
//! grammar or the character set of what it claims to be and a bounded length. A message that fails is
//! refused whole (the caller changes nothing), with the field named in the error.

use cni_metrics_proto::catalog::FORWARDED_PREFIX;
use cni_metrics_proto::shapes::{self, is_dns1123_subdomain, is_label_name, is_metric_name, Fact};
use cni_metrics_proto::v1::{FamilyType, Hello, Ipv4Block, MetricKind, Report, SeriesDef};

use super::subnets::prefixes::{Block, BlockError, LARGEST_SUBNET};
use super::IngestError;

/// Longest label value accepted (ipamd's are CIDRs, ENI ids, function names).
pub const MAX_LABEL_VALUE: usize = 1024;
/// Most labels on one series.
pub const MAX_LABELS: usize = 16;
/// Longest scrape status detail (the agent truncates its own at 512).
pub const MAX_STATUS_DETAIL: usize = 1024;

/// Most IPv4 blocks one report may list over all its subnets (the agent's own bound).
pub const MAX_BLOCKS: usize = 4096;

/// Label names the aggregator writes itself.
const RESERVED_LABELS: &[&str] = &["cluster_id"];

/// A hello's strings: the node name is a Kubernetes node name; the node facts have their AWS shapes.
pub fn hello(h: &Hello) -> Result<(), IngestError> {
    if !is_dns1123_subdomain(&h.node_name) {
        return Err(IngestError::BadNodeName);
    }
    for (field, value) in hello_facts(h) {
        if !shapes::fact_ok(field, value) {
            return Err(IngestError::BadHelloField(field.name()));
        }
    }
    Ok(())
}

/// The node facts of a hello, by field.
fn hello_facts(h: &Hello) -> [(Fact, &str); 6] {
    [
        (Fact::AgentVersion, &h.agent_version),
        (Fact::AvailabilityZone, &h.availability_zone),
        (Fact::Region, &h.region),
        (Fact::InstanceType, &h.instance_type),
        (Fact::InstanceId, &h.instance_id),
        (Fact::ClusterName, &h.cluster_name),
    ]
}

/// A report's strings: definitions, the scrape status detail, subnet ids.
pub fn report(r: &Report) -> Result<(), IngestError> {
    for d in &r.defs {
        def(d)?;
    }
    if r.status_detail.len() > MAX_STATUS_DETAIL || r.status_detail.chars().any(char::is_control) {
        return Err(IngestError::BadReportField("status_detail"));
    }
    if r.cooldown_ips.is_some_and(|c| !(c.is_finite() && c >= 0.0)) {
        return Err(IngestError::BadReportField("cooldown_ips"));
    }
    for s in &r.subnets {
        if s.subnet_id.is_empty() || !shapes::fact_ok(Fact::SubnetId, &s.subnet_id) {
            return Err(IngestError::BadReportField("subnet_id"));
        }
        let count = |x: f64| x.is_finite() && x >= 0.0;
        if !(count(s.total_ips) && count(s.assigned_ips) && count(s.cooldown_ips)) {
            return Err(IngestError::BadReportField("subnet usage"));
        }
        if !s.blocks.iter().all(|b| block(b).is_ok()) {
            return Err(IngestError::BadReportField("subnet blocks"));
        }
    }
    if r.subnets.iter().map(|s| s.blocks.len()).sum::<usize>() > MAX_BLOCKS {
        return Err(IngestError::BadReportField("subnet blocks"));
    }
    Ok(())
}

/// A node's IPv4 block: aligned, and between a /16 (the largest subnet) and a /32.
pub fn block(b: &Ipv4Block) -> Result<Block, BlockError> {
    let len = u8::try_from(b.prefix_len).ok().filter(|l| (LARGEST_SUBNET..=32).contains(l)).ok_or(BlockError::Length(b.prefix_len))?;
    Block::new(b.address, len)
}

/// A series definition: a known kind; an `awscni_` family with a Prometheus metric name; the sample
/// name the family itself or, for summaries and histograms, the family with its `_sum`/`_count`
/// (`_bucket`) suffix; label names of the label grammar, not reserved, not repeated; bounded values.
pub fn def(d: &SeriesDef) -> Result<(), IngestError> {
    let bad = |why: &'static str| Err(IngestError::BadDef { id: d.id, why });
    if !matches!(MetricKind::try_from(d.kind), Ok(MetricKind::Gauge | MetricKind::Counter)) {
        return bad("unknown kind");
    }
    if !is_metric_name(&d.family) || !d.family.starts_with(FORWARDED_PREFIX) {
        return bad("the family is not an awscni_ metric name");
    }
    if !is_metric_name(&d.name) {
        return bad("the sample name is not a metric name");
    }
    let family_type = FamilyType::try_from(d.family_type).unwrap_or(FamilyType::Untyped);
    let suffix_ok = match d.name.strip_prefix(d.family.as_str()) {
        Some("") => true,
        Some("_sum" | "_count") => matches!(family_type, FamilyType::Summary | FamilyType::Histogram),
        Some("_bucket") => family_type == FamilyType::Histogram,
        _ => false,
    };
    if !suffix_ok {
        return bad("the sample name does not belong to its family");
    }
    if d.labels.len() > MAX_LABELS {
        return bad("too many labels");
    }
    for (i, l) in d.labels.iter().enumerate() {
        if !is_label_name(&l.name) || RESERVED_LABELS.contains(&l.name.as_str()) {
            return bad("a label name is invalid or reserved");
        }
        if d.labels[..i].iter().any(|o| o.name == l.name) {
            return bad("a label name is repeated");
        }
        if l.value.len() > MAX_LABEL_VALUE {
            return bad("a label value is too long");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cni_metrics_proto::v1::{Label, SubnetUsage};

    /// (expected refusal, how the good message is spoiled).
    type Case<T> = (&'static str, fn(&mut T));

    fn good_def() -> SeriesDef {
        SeriesDef {
            id: 1,
            family: "awscni_aws_api_latency_ms".into(),
            name: "awscni_aws_api_latency_ms_sum".into(),
            kind: MetricKind::Counter as i32,
            family_type: FamilyType::Summary as i32,
            labels: vec![Label { name: "api".into(), value: "any \"value\"\n{}=".into() }],
            committed_total: 0.0,
        }
    }

    #[test]
    fn hello_fields_have_their_aws_shapes() {
        let good = Hello {
            node_name: "ip-10-0-1-2.ec2.internal".into(),
            agent_version: "0.1.0+abc".into(),
            availability_zone: "eu-west-1a".into(),
            region: "eu-west-1".into(),
            instance_type: "m5.large".into(),
            instance_id: "i-0123456789abcdef0".into(),
            cluster_name: "prod_cluster-1".into(),
            interval_ms: 30_000,
            ..Hello::default()
        };
        assert_eq!(hello(&good), Ok(()));
        assert_eq!(hello(&Hello { node_name: "Bad".into(), ..good.clone() }), Err(IngestError::BadNodeName));
        let cases: [Case<Hello>; 6] = [
            ("agent_version", |h| h.agent_version = "1.0 <script>".into()),
            ("availability_zone", |h| h.availability_zone = "eu-west-1a\n".into()),
            ("region", |h| h.region = "x".repeat(33)),
            ("instance_type", |h| h.instance_type = "m5.large\"".into()),
            ("instance_id", |h| h.instance_id = "i-{}".into()),
            ("cluster_name", |h| h.cluster_name = "a,b=c".into()),
        ];
        for (field, spoil) in cases {
            let mut h = good.clone();
            spoil(&mut h);
            assert_eq!(hello(&h), Err(IngestError::BadHelloField(field)), "{field}");
        }
    }

    #[test]
    fn definitions() {
        assert_eq!(def(&good_def()), Ok(()));
        let cases: [Case<SeriesDef>; 11] = [
            ("unknown kind", |d| d.kind = 99),
            ("the family is not an awscni_ metric name", |d| d.family = "awscni_total_ip_addresses\nbroken{".into()),
            ("the family is not an awscni_ metric name", |d| d.family = "node_cpu_seconds".into()),
            ("the sample name is not a metric name", |d| d.name = "awscni_aws_api_latency_ms_sum}".into()),
            ("the sample name does not belong to its family", |d| d.name = "awscni_other".into()),
            ("the sample name does not belong to its family", |d| d.name = "awscni_aws_api_latency_ms_bucket".into()),
            ("a label name is invalid or reserved", |d| d.labels[0].name = "a\"b\nc".into()),
            ("a label name is invalid or reserved", |d| d.labels[0].name = "__name__".into()),
            ("a label name is invalid or reserved", |d| d.labels[0].name = "cluster_id".into()),
            ("a label name is repeated", |d| d.labels.push(d.labels[0].clone())),
            ("a label value is too long", |d| d.labels[0].value = "v".repeat(MAX_LABEL_VALUE + 1)),
        ];
        for (why, spoil) in cases {
            let mut d = good_def();
            spoil(&mut d);
            assert_eq!(def(&d), Err(IngestError::BadDef { id: 1, why }), "{why}");
        }
        let gauge = SeriesDef {
            name: "awscni_assigned_ip_addresses".into(),
            family: "awscni_assigned_ip_addresses".into(),
            family_type: FamilyType::Gauge as i32,
            labels: vec![],
            ..good_def()
        };
        assert_eq!(def(&gauge), Ok(()));
        assert!(def(&SeriesDef { name: "awscni_assigned_ip_addresses_sum".into(), ..gauge }).is_err(), "a gauge has no _sum");
    }

    #[test]
    fn report_strings() {
        let ok = Report { status_detail: "no complete answer within 150ms".into(), ..Report::default() };
        assert_eq!(report(&ok), Ok(()));
        let detail = Report { status_detail: "a\u{1b}[2Jb".into(), ..Report::default() };
        assert_eq!(report(&detail), Err(IngestError::BadReportField("status_detail")));
        let subnet = |id: &str, total: f64| Report {
            subnets: vec![SubnetUsage { subnet_id: id.into(), total_ips: total, assigned_ips: 1.0, enis: 1, ..SubnetUsage::default() }],
            ..Report::default()
        };
        let blocks = |blocks: Vec<(u32, u32)>| Report {
            subnets: vec![SubnetUsage {
                subnet_id: "subnet-1".into(),
                blocks: blocks.into_iter().map(|(address, prefix_len)| Ipv4Block { address, prefix_len }).collect(),
                ..SubnetUsage::default()
            }],
            ..Report::default()
        };
        assert_eq!(report(&blocks(vec![(0x0a00_0110, 28), (0x0a00_0105, 32), (0x0a01_0000, 16)])), Ok(()));
        for bad in [vec![(0x0a00_0111, 28)], vec![(0x0a00_0000, 15)], vec![(0x0a00_0105, 33)], vec![(0x0a00_0000, 28); MAX_BLOCKS + 1]] {
            assert_eq!(report(&blocks(bad)), Err(IngestError::BadReportField("subnet blocks")));
        }
        assert_eq!(report(&subnet("subnet-0abc1234def567890", 14.0)), Ok(()));
        assert_eq!(report(&subnet("subnet-\"x", 14.0)), Err(IngestError::BadReportField("subnet_id")));
        assert_eq!(report(&subnet("subnet-1", f64::NAN)), Err(IngestError::BadReportField("subnet usage")));
        // Addresses in cooldown: a count (finite, not negative), for the node and per subnet.
        for (cooldown, ok) in [
            (Some(0.0), true),
            (Some(12.0), true),
            (None, true),
            (Some(-1.0), false),
            (Some(f64::NAN), false),
            (Some(f64::INFINITY), false),
        ] {
            let r = Report { cooldown_ips: cooldown, ..Report::default() };
            assert_eq!(report(&r).is_ok(), ok, "{cooldown:?}");
            let mut r = subnet("subnet-1", 14.0);
            r.subnets[0].cooldown_ips = cooldown.unwrap_or(0.0);
            assert_eq!(report(&r).is_ok(), ok, "subnet {cooldown:?}");
        }
        assert_eq!(report(&Report { cooldown_ips: Some(-1.0), ..Report::default() }), Err(IngestError::BadReportField("cooldown_ips")));
    }
}
