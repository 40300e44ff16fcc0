//! The metric catalogue: every ipamd family the project knows (upstream v1.23.1, 27 `awscni_*` families),
//! with the kind we treat it as, the labels folded away on the node and across the cluster, how samples
//! combine across nodes, the exact ipamd HELP text and the upstream helper's CloudWatch MetricName.
//!
//! The catalogue, not the page's `# TYPE` line, decides a known family's kind: ipamd v1.16–v1.18 typed
//! several counters as gauges by accident (in their metrics registration) while their values stayed cumulative. Families not in
//! the catalogue are forwarded with the kind their TYPE line gives (untyped → gauge).

use crate::v1::{FamilyType, MetricKind};

/// How the per-node values of one cluster series combine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeFold {
    /// Sum over nodes (gauges: live nodes only; counters: increments of every node ever seen).
    Sum,
    /// Maximum over live nodes (summary quantiles: a sum of p99s means nothing).
    Max,
}

/// How the upstream helper derived a CloudWatch datum from a family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloudWatchFold {
    /// Gauge: sum of every series of the family over live nodes at the end of the window.
    GaugeSum,
    /// Counter: sum of every series' increments during the window.
    CounterIncrease,
    /// Latency summary: the max `quantile="0.99"` where nodes expose quantiles, otherwise the mean
    /// latency (Σ `_sum` increments / Σ `_count` increments) of the window. Upstream's value has been a
    /// constant 0 since ipamd dropped quantiles in 2021.
    LatencyP99OrMean,
}

/// One ipamd family.
#[derive(Clone, Copy, Debug)]
pub struct FamilySpec {
    pub name: &'static str,
    /// The TYPE the family is re-exposed with.
    pub family_type: FamilyType,
    /// Labels the agent sums away before computing deltas (unbounded or per-pod cardinality).
    pub node_drop_labels: &'static [&'static str],
    /// Labels the aggregator sums away for the cluster series (unique per node, e.g. ENI ids).
    pub cluster_drop_labels: &'static [&'static str],
    /// ipamd's HELP text, verbatim.
    pub help: &'static str,
    /// The upstream helper's CloudWatch MetricName, or the name for families it never published.
    pub cloudwatch_name: Option<&'static str>,
    /// Whether the upstream helper published it (the 20 drop-in names).
    pub upstream: bool,
    pub cloudwatch_fold: CloudWatchFold,
}

use CloudWatchFold::*;
use FamilyType as T;

const fn fam(
    name: &'static str,
    family_type: FamilyType,
    help: &'static str,
    cloudwatch_name: Option<&'static str>,
    upstream: bool,
) -> FamilySpec {
    let cloudwatch_fold = match family_type {
        T::Counter => CounterIncrease,
        T::Summary => LatencyP99OrMean,
        _ => GaugeSum,
    };
    FamilySpec { name, family_type, node_drop_labels: &[], cluster_drop_labels: &[], help, cloudwatch_name, upstream, cloudwatch_fold }
}

const fn drop_node(mut f: FamilySpec, labels: &'static [&'static str]) -> FamilySpec {
    f.node_drop_labels = labels;
    f
}

const fn drop_cluster(mut f: FamilySpec, labels: &'static [&'static str]) -> FamilySpec {
    f.cluster_drop_labels = labels;
    f
}

/// Every known family, in ipamd's definition order.
pub static FAMILIES: &[FamilySpec] = &[
    fam("awscni_ipamd_error_count", T::Counter, "The number of errors encountered in ipamd", Some("ipamdErr"), true),
    fam("awscni_ipamd_action_inprogress", T::Gauge, "The number of ipamd actions in progress", Some("ipamdActionInProgress"), true),
    fam(
        "awscni_eni_max",
        T::Gauge,
        "The maximum number of ENIs that can be attached to the instance, accounting for unmanaged ENIs",
        Some("eniMaxAvailable"),
        true,
    ),
    fam(
        "awscni_ip_max",
        T::Gauge,
        "The maximum number of IP addresses that can be allocated to the instance",
        Some("maxIPAddresses"),
        true,
    ),
    fam(
        "awscni_reconcile_count",
        T::Counter,
        "The number of times ipamd reconciles on ENIs and IP/Prefix addresses",
        Some("reconcileCount"),
        true,
    ),
    fam("awscni_add_ip_req_count", T::Counter, "The number of add IP address requests", Some("addReqCount"), true),
    fam("awscni_del_ip_req_count", T::Counter, "The number of delete IP address requests", Some("delReqCount"), true),
    fam("awscni_pod_eni_error_count", T::Counter, "The number of errors encountered for pod ENIs", Some("podENIErr"), true),
    fam("awscni_aws_api_latency_ms", T::Summary, "AWS API call latency in ms", Some("awsAPILatency"), true),
    fam("awscni_aws_api_error_count", T::Counter, "The number of times AWS API returns an error", Some("awsAPIErr"), true),
    // `error` carries free error text (unbounded cardinality): summed away on the node.
    drop_node(
        fam("awscni_aws_utils_error_count", T::Counter, "The number of errors not handled in awsutils library", Some("awsUtilErr"), true),
        &["error"],
    ),
    fam("awscni_ec2api_req_count", T::Counter, "The number of requests made to EC2 APIs by CNI", Some("ec2ApiReqCount"), true),
    fam("awscni_ec2api_error_count", T::Counter, "The number of failed EC2 APIs requests", Some("ec2ApiErrCount"), true),
    fam("awscni_eni_allocated", T::Gauge, "The number of ENIs allocated", Some("eniAllocated"), true),
    fam("awscni_total_ip_addresses", T::Gauge, "The total number of IP addresses", Some("totalIPAddresses"), true),
    fam("awscni_assigned_ip_addresses", T::Gauge, "The number of IP addresses assigned to pods", Some("assignIPAddresses"), true),
    fam(
        "awscni_force_removed_enis",
        T::Counter,
        "The number of ENIs force removed while they had assigned pods",
        Some("forceRemoveENI"),
        true,
    ),
    fam(
        "awscni_force_removed_ips",
        T::Counter,
        "The number of IPs force removed while they had assigned pods",
        Some("forceRemoveIPs"),
        true,
    ),
    fam("awscni_total_ipv4_prefixes", T::Gauge, "The total number of IPv4 prefixes", Some("totalIPv4Prefixes"), true),
    // One `/32` per pod in secondary-IP mode: summed away on the node.
    drop_node(
        fam(
            "awscni_assigned_ip_per_cidr",
            T::Gauge,
            "The total number of IP addresses assigned per cidr",
            Some("totalAssignedIPv4sPerCidr"),
            true,
        ),
        &["cidr"],
    ),
    fam(
        "awscni_no_available_ip_addresses",
        T::Counter,
        "The number of pod IP assignments that fail due to no available IP addresses",
        Some("noAvailableIPAddresses"),
        false,
    ),
    // ENI ids are unique per node: kept per node, summed away for the cluster.
    drop_cluster(
        fam("awscni_assigned_ip_per_eni", T::Gauge, "The number of allocated ips partitioned by eni", Some("assignedIPsPerENI"), false),
        &["eni"],
    ),
    fam(
        "awscni_ipamd_startup_duration_seconds",
        T::Histogram,
        "The duration of IPAMD startup from process start to ready to serve CNI requests",
        None,
        false,
    ),
    fam(
        "awscni_ipamd_node_initialization_duration_seconds",
        T::Histogram,
        "The duration of node initialization during IPAMD startup",
        None,
        false,
    ),
    fam("awscni_connmark_backend", T::Gauge, "The connmark backend in use; the active backend's series is set to 1", None, false),
    fam("awscni_connmark_reconcile_total", T::Counter, "The number of connmark Setup/Cleanup reconciliations by result", None, false),
    fam(
        "awscni_build_info",
        T::Gauge,
        "A metric with a constant '1' value labeled by version, revision, and goversion from which amazon-vpc-cni-k8s was built.",
        None,
        false,
    ),
];

/// CloudWatch names of the capacity metrics the aggregator derives (not ipamd families).
pub const DERIVED_CLOUDWATCH_NAMES: &[&str] = &[
    "availableIPAddresses",
    "ipHeadroom",
    "ipUtilization",
    "ipCapacityUtilization",
    "nodesLowOnIPs",
    // --subnet-metrics (EC2's DescribeSubnets)
    "subnetAvailableIPAddresses",
    "subnetsLowOnIPs",
    "subnetUsableIPAddresses",
    "subnetClusterIPAddresses",
    "subnetOtherIPAddresses",
    // --subnet-prefixes (DescribeNetworkInterfaces, GetSubnetCidrReservations)
    "subnetFreePrefixes",
    "subnetsLowOnPrefixes",
    "subnetFreeReservedPrefixes",
    "subnetLargestFreeBlockPrefixLength",
    // the exhaustion forecast (--forecast-window)
    "subnetHoursToExhaustion",
];

/// ipamd's process start time: read by the agent for reset detection, never forwarded.
pub const PROCESS_START_TIME: &str = "process_start_time_seconds";

/// Prefix of the families the agent forwards.
pub const FORWARDED_PREFIX: &str = "awscni_";

/// The catalogue entry of a family, if known.
pub fn family(name: &str) -> Option<&'static FamilySpec> {
    FAMILIES.iter().find(|f| f.name == name)
}

/// The role of one sample inside its family, from its name suffix and labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SampleRole {
    /// The family's own value (gauge, counter, untyped).
    Value,
    /// A summary quantile (`quantile` label): a gauge that folds across nodes by max.
    Quantile,
    /// `_sum`, `_count` or `_bucket` of a summary or histogram: a counter.
    Aggregate,
}

/// Decide a sample's kind and cross-node fold from its family type and role.
pub fn sample_kind(family_type: FamilyType, role: SampleRole) -> (MetricKind, NodeFold) {
    match (family_type, role) {
        (_, SampleRole::Quantile) => (MetricKind::Gauge, NodeFold::Max),
        (_, SampleRole::Aggregate) => (MetricKind::Counter, NodeFold::Sum),
        (T::Counter, SampleRole::Value) => (MetricKind::Counter, NodeFold::Sum),
        _ => (MetricKind::Gauge, NodeFold::Sum),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_has_every_ipamd_family_once_and_the_20_upstream_names() {
        assert_eq!(FAMILIES.len(), 27);
        let mut names: Vec<_> = FAMILIES.iter().map(|f| f.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 27, "duplicate family");
        let upstream: Vec<_> = FAMILIES.iter().filter(|f| f.upstream).filter_map(|f| f.cloudwatch_name).collect();
        assert_eq!(upstream.len(), 20);
        for n in ["assignIPAddresses", "awsAPILatency", "ec2ApiErrCount", "totalAssignedIPv4sPerCidr"] {
            assert!(upstream.contains(&n), "{n} missing");
        }
    }

    #[test]
    fn flipped_families_are_counters_whatever_the_page_says() {
        for n in [
            "awscni_add_ip_req_count",
            "awscni_pod_eni_error_count",
            "awscni_aws_api_error_count",
            "awscni_force_removed_enis",
            "awscni_force_removed_ips",
            "awscni_no_available_ip_addresses",
        ] {
            assert_eq!(family(n).map(|f| f.family_type), Some(T::Counter), "{n}");
        }
    }

    #[test]
    fn sample_kinds() {
        assert_eq!(sample_kind(T::Summary, SampleRole::Quantile), (MetricKind::Gauge, NodeFold::Max));
        assert_eq!(sample_kind(T::Summary, SampleRole::Aggregate), (MetricKind::Counter, NodeFold::Sum));
        assert_eq!(sample_kind(T::Histogram, SampleRole::Aggregate), (MetricKind::Counter, NodeFold::Sum));
        assert_eq!(sample_kind(T::Counter, SampleRole::Value), (MetricKind::Counter, NodeFold::Sum));
        assert_eq!(sample_kind(T::Gauge, SampleRole::Value), (MetricKind::Gauge, NodeFold::Sum));
        assert_eq!(sample_kind(T::Untyped, SampleRole::Value), (MetricKind::Gauge, NodeFold::Sum));
    }
}
