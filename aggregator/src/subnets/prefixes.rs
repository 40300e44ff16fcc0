//! The free-prefix refresher (`--subnet-prefixes`): every `--subnet-prefixes-refresh` (5 min by default;
//! `DescribeNetworkInterfaces` is a heavier call than `DescribeSubnets`) it lists the ENIs of the subnets
//! EC2 described ([`Ec2::interfaces`], 1,000 a page) and each subnet's CIDR reservations, takes the
//! blocks the nodes report from the state, counts outside the state lock (pure,
//! [`crate::state::subnets::prefixes::report`]) and stores the counts. Each call is counted by result;
//! throttling is retried with the shared backoff; on failure the last counts stay, marked stale; access
//! denied is logged once with the policy to add. In `auto` mode nothing is asked of EC2 until a node holds
//! a prefix.

use std::collections::BTreeMap;
use std::time::Duration;

use tracing::{info, warn};

use super::ec2::Ec2;
use super::{backoff, refresh_result, retrying, Denials};
use crate::aws::{AwsError, Retry};
use crate::state::subnets::prefixes::{report, SpaceFacts};
use crate::state::RefreshResult;
use crate::state::StateHandle;

/// The IAM statement `--subnet-prefixes` needs, as logged when it is missing.
pub const POLICY_HINT: &str = r#"{"Effect": "Allow", "Action": ["ec2:DescribeNetworkInterfaces", "ec2:GetSubnetCidrReservations"], "Resource": "*"} (deploy/iam-policy-subnets.json)"#;

const WHAT: &str = "free prefix counts";

/// Refresh every `refresh` until `shutdown`.
pub async fn run_refresher(state: StateHandle, region: Option<String>, refresh: Duration, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let ec2 = Ec2::new(region).await;
    let Some(retry) = backoff() else { return };
    info!(refresh = %cni_metrics_proto::duration::format(refresh), "free prefixes: DescribeNetworkInterfaces and GetSubnetCidrReservations once per refresh (when a node holds prefixes, or with --subnet-prefixes=true)");
    let mut tick = tokio::time::interval(refresh);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut denials = Denials::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut shutdown => return,
        }
        let Some((inputs, low_below)) = state.read(|st| st.prefixes_wanted().then(|| (st.prefix_inputs(), st.prefix_low_below()))) else {
            continue;
        };
        if inputs.is_empty() {
            continue; // EC2 has not described a subnet yet
        }
        let ids: Vec<String> = inputs.iter().map(|i| i.subnet_id.clone()).collect();
        let Some(result) = fetch(&state, &ec2, &retry, &ids, &mut shutdown).await else { return };
        match result {
            Ok(facts) => {
                let skipped = facts.values().map(|f| f.skipped).sum();
                let counted = report(&inputs, &facts, low_below);
                state.set_prefix_report(counted, skipped, cni_metrics_proto::clock::unix_ms_now());
                denials.allowed("DescribeNetworkInterfaces and GetSubnetCidrReservations", WHAT);
            }
            Err(e) if e.retry == Retry::Heal => {
                state.prefix_refresh_failed();
                denials.denied(&e, e.operation, WHAT, POLICY_HINT);
            }
            Err(e) => {
                state.prefix_refresh_failed();
                warn!(error = %e, "free prefixes: {} failed; the last counts stay, marked stale", e.operation);
            }
        }
    }
}

/// One refresh's EC2 calls: the ENIs of all the subnets, then each subnet's reservations. `None`: shutdown.
async fn fetch(
    state: &StateHandle,
    ec2: &Ec2,
    retry: &cni_metrics_proto::backoff::Backoff,
    ids: &[String],
    shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Option<Result<BTreeMap<String, SpaceFacts>, AwsError>> {
    let on_retry = |r| state.record_prefix_call(r);
    let mut facts = match retrying(retry, "DescribeNetworkInterfaces", shutdown, on_retry, || ec2.interfaces(ids)).await? {
        Ok(f) => f,
        Err(e) => return Some(Err(counted(state, e))),
    };
    state.record_prefix_call(RefreshResult::Ok);
    for (id, f) in &mut facts {
        match retrying(retry, "GetSubnetCidrReservations", shutdown, on_retry, || ec2.reservations(id)).await? {
            Ok(r) => f.reservations = r,
            Err(e) => return Some(Err(counted(state, e))),
        }
        state.record_prefix_call(RefreshResult::Ok);
    }
    Some(Ok(facts))
}

/// The final failure of a call, counted.
fn counted(state: &StateHandle, e: AwsError) -> AwsError {
    let result = if e.retry == Retry::Heal { RefreshResult::Denied } else { refresh_result(e.kind) };
    state.record_prefix_call(result);
    e
}
