//! Subnet capacity (`--subnet-metrics`, opt-in): how many addresses are left where the pods will land.
//!
//! ipamd knows the addresses its node holds, not what its subnet has left. The refresher asks EC2
//! ([`ec2`]: `DescribeSubnets`, the one call, paginated) every `--subnet-refresh` about every subnet the
//! agents report ENIs in (custom networking's ENIConfig subnets included) and, with `--subnet-discovery`,
//! about the subnets tagged for the VPC CNI's subnet discovery in the same VPCs; the state joins EC2's
//! numbers with the cluster's own use ([`crate::state::SubnetReport`], pure). Throttling and network errors are retried with the
//! shared backoff within the refresh; on failure the last values stay, marked stale, counted. Access
//! denied is logged once with the policy to add; subnet metrics are extra, so nothing else stops and
//! readiness is unaffected.

pub mod ec2;
pub mod prefixes;

use std::time::Duration;

use cni_metrics_proto::backoff::Backoff;
use cni_metrics_proto::duration::parse_positive;
use cni_metrics_proto::flags::parse_switch;
use tracing::{error, info, warn};

use crate::aws::{AwsError, ErrorKind, Retry};
use crate::state::subnets::space::PrefixMode;
use crate::state::StateHandle;
use crate::state::{LowThreshold, RefreshResult, SubnetFacts};
use ec2::Ec2;

/// The IAM statement `--subnet-metrics` needs, as logged when it is missing.
pub const POLICY_HINT: &str = r#"{"Effect": "Allow", "Action": "ec2:DescribeSubnets", "Resource": "*"} (deploy/iam-policy-subnets.json)"#;

/// Throttled or failed attempts retried within one refresh.
const ATTEMPTS: u32 = 4;

/// `serve`'s flags for subnet capacity.
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Subnet capacity")]
pub struct SubnetArgs {
    /// Subnet capacity from EC2 (`DescribeSubnets`; needs ec2:DescribeSubnets, see
    /// deploy/iam-policy-subnets.json): per subnet, AZ and cluster, joined with the cluster's own use.
    #[arg(long, env = "SUBNET_METRICS", default_value = "false", value_parser = parse_switch, action = clap::ArgAction::Set)]
    pub subnet_metrics: bool,

    /// Also the subnets tagged for the VPC CNI's subnet discovery (`kubernetes.io/role/cni`,
    /// `cni.networking.k8s.aws/cluster/<cluster>`) in the cluster's VPCs, used by a node or not.
    #[arg(long, env = "SUBNET_DISCOVERY", default_value = "false", value_parser = parse_switch, action = clap::ArgAction::Set)]
    pub subnet_discovery: bool,

    /// How often the subnets are described (one paginated DescribeSubnets per refresh).
    #[arg(long, env = "SUBNET_REFRESH", default_value = "60s", value_parser = parse_positive)]
    pub subnet_refresh: Duration,

    /// A subnet is low on addresses below this: a share of its usable addresses (`10%`) or a count (`50`).
    #[arg(long, env = "SUBNET_LOW_THRESHOLD", default_value = "10%", value_parser = LowThreshold::parse)]
    pub subnet_low_threshold: LowThreshold,

    /// Free /28 prefixes per subnet (with --subnet-metrics; needs ec2:DescribeNetworkInterfaces and
    /// ec2:GetSubnetCidrReservations): `auto` counts once any node holds a prefix (prefix delegation).
    #[arg(long, env = "SUBNET_PREFIXES", value_enum, default_value = "auto")]
    pub subnet_prefixes: PrefixMode,

    /// How often free prefixes are counted (one paginated DescribeNetworkInterfaces over the subnets and one
    /// GetSubnetCidrReservations per subnet).
    #[arg(long, env = "SUBNET_PREFIXES_REFRESH", default_value = "5m", value_parser = parse_positive)]
    pub subnet_prefixes_refresh: Duration,

    /// A subnet with fewer free /28 blocks than this is low on prefixes (see docs/metrics.md for the default).
    #[arg(long, env = "SUBNET_LOW_PREFIXES", default_value_t = 32)]
    pub subnet_low_prefixes: u32,

    /// The trailing window of the subnet exhaustion forecast (least squares over the refreshes' samples;
    /// published once at least 6 samples span a quarter of it).
    #[arg(long, env = "FORECAST_WINDOW", default_value = "6h", value_parser = parse_positive)]
    pub forecast_window: Duration,
}

/// Subnet capacity, when `--subnet-metrics` is on: the refreshers' settings and the state's thresholds.
#[derive(Clone, Debug)]
pub struct SubnetsConfig {
    pub refresher: SubnetConfig,
    pub low_threshold: LowThreshold,
    pub forecast_window: Duration,
    /// Free /28 prefixes (off with `PrefixMode::False`), on their own refresh.
    pub prefixes: PrefixMode,
    pub prefixes_refresh: Duration,
    pub low_prefixes: u32,
}

impl SubnetArgs {
    /// `None` unless `--subnet-metrics` is on (`region`: the AWS flag's).
    pub fn config(&self, region: Option<String>) -> Option<SubnetsConfig> {
        self.subnet_metrics.then_some(SubnetsConfig {
            refresher: SubnetConfig { refresh: self.subnet_refresh, discovery: self.subnet_discovery, cluster_name: None, region },
            low_threshold: self.subnet_low_threshold,
            forecast_window: self.forecast_window,
            prefixes: self.subnet_prefixes,
            prefixes_refresh: self.subnet_prefixes_refresh,
            low_prefixes: self.subnet_low_prefixes,
        })
    }
}

/// The subnet refresher's settings.
#[derive(Clone, Debug)]
pub struct SubnetConfig {
    pub refresh: Duration,
    pub discovery: bool,
    /// The cluster name for the discovery tag; else the one the agents report, else the cluster id.
    pub cluster_name: Option<String>,
    pub region: Option<String>,
}

/// One refresh: the reported subnets by id, then (discovery) the tagged ones in their VPCs.
async fn fetch(ec2: &Ec2, ids: &[String], discovery: Option<&str>) -> Result<Vec<SubnetFacts>, AwsError> {
    let mut facts = if ids.is_empty() { Vec::new() } else { ec2.by_id(ids).await? };
    if let Some(cluster) = discovery {
        let mut vpcs: Vec<String> = facts.iter().map(|f| f.vpc_id.clone()).filter(|v| !v.is_empty()).collect();
        vpcs.sort();
        vpcs.dedup();
        for f in ec2.discovered(&vpcs, cluster).await? {
            if !facts.iter().any(|k| k.subnet_id == f.subnet_id) {
                facts.push(f);
            }
        }
    }
    Ok(facts)
}

/// How a failed attempt is counted.
fn refresh_result(kind: ErrorKind) -> RefreshResult {
    if kind == ErrorKind::Throttling {
        RefreshResult::Throttled
    } else {
        RefreshResult::Error
    }
}

/// Run `op` until it succeeds, fails for good, or [`ATTEMPTS`] are spent; a failed attempt that is retried
/// goes to `on_retry`. `None` when `shutdown` came first. Both refreshers use it.
pub(crate) async fn retrying<T, Fut>(
    retry: &Backoff,
    what: &str,
    shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    mut on_retry: impl FnMut(RefreshResult),
    mut op: impl FnMut() -> Fut,
) -> Option<Result<T, AwsError>>
where
    Fut: std::future::Future<Output = Result<T, AwsError>>,
{
    let mut attempts = retry.start(None);
    loop {
        match op().await {
            Err(e) if e.retry == Retry::Retryable && attempts.attempt() + 1 < ATTEMPTS => {
                on_retry(refresh_result(e.kind));
                let d = attempts.next_delay();
                warn!(error = %e, retry_in = %cni_metrics_proto::duration::format(d), "{what} failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    () = shutdown.as_mut() => return None,
                }
            }
            other => return Some(other),
        }
    }
}

/// "Access denied" logged once per outage, with the policy to add, and its end logged once.
pub(crate) struct Denials {
    denied: bool,
}

impl Denials {
    pub(crate) fn new() -> Self {
        Self { denied: false }
    }

    /// `op` was refused: `what` keeps its last values, marked stale.
    pub(crate) fn denied(&mut self, e: &AwsError, op: &str, what: &str, policy: &str) {
        if !self.denied {
            error!(error = %e, policy, "{what}: EC2 refuses {op}; add this to the aggregator's role (the rest keeps working)");
            self.denied = true;
        }
    }

    pub(crate) fn allowed(&mut self, op: &str, what: &str) {
        if self.denied {
            info!("{op} is allowed again; {what} are current");
            self.denied = false;
        }
    }
}

/// The shared retry schedule of the EC2 refreshers.
pub(crate) fn backoff() -> Option<Backoff> {
    match Backoff::new(Duration::from_secs(1), Duration::from_secs(20), 2.0, 0.2) {
        Ok(b) => Some(b),
        Err(e) => {
            error!(error = %e, "subnet refresher: invalid backoff; subnet metrics are off");
            None
        }
    }
}

/// Refresh every `cfg.refresh` until `shutdown`.
pub async fn run_refresher(state: StateHandle, cfg: SubnetConfig, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let ec2 = Ec2::new(cfg.region.clone()).await;
    let Some(retry) = backoff() else { return };
    info!(refresh = %cni_metrics_proto::duration::format(cfg.refresh), discovery = cfg.discovery, "subnet metrics on: DescribeSubnets once per refresh");
    let mut tick = tokio::time::interval(cfg.refresh);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut denials = Denials::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut shutdown => return,
        }
        let named = cfg.cluster_name.clone();
        let (ids, cluster) = state.read(|st| {
            let cluster = named.or_else(|| st.agreed_cluster_name().map(str::to_owned)).unwrap_or_else(|| st.cluster_id().to_owned());
            (st.subnets_in_use(), cluster)
        });
        if ids.is_empty() {
            continue; // no agent has reported a subnet yet
        }
        let discovery = cfg.discovery.then_some(cluster.as_str());
        let on_retry = |r| state.record_subnet_retry(r);
        let Some(result) = retrying(&retry, "DescribeSubnets", &mut shutdown, on_retry, || fetch(&ec2, &ids, discovery)).await else {
            return;
        };
        match result {
            Ok(facts) => {
                state.set_subnet_facts(facts, cni_metrics_proto::clock::unix_ms_now());
                denials.allowed("DescribeSubnets", "subnet metrics");
            }
            Err(e) if e.retry == Retry::Heal => {
                state.subnet_refresh_failed(RefreshResult::Denied);
                denials.denied(&e, "DescribeSubnets", "subnet metrics", POLICY_HINT);
            }
            Err(e) => {
                state.subnet_refresh_failed(refresh_result(e.kind));
                warn!(error = %e, "subnet metrics: DescribeSubnets failed; the last values stay, marked stale");
            }
        }
    }
}
