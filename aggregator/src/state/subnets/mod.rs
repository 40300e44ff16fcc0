//! Subnet capacity in the state (`--subnet-metrics`): the EC2 facts the refresher last fetched, when, and
//! whether the last refresh failed (then the values are kept and marked stale); the cluster's use of each
//! subnet is summed from the nodes' reported introspection when asked, so it is never out of step with
//! them. [`ClusterState::subnet_report`] joins both ([`model::join`], pure). The refresher that asks EC2
//! lives above the state, in [`crate::subnets`].

use std::collections::BTreeMap;

use cni_metrics_proto::labels::Counts;

pub mod forecast;
pub mod model;
pub mod prefixes;
pub mod space;

use super::ClusterState;
use model::{join, ClusterUse, LowThreshold, SubnetFacts, SubnetReport};

cni_metrics_proto::label_enum! {
    /// How a subnet refresh ended: the `result` of `cni_metrics_subnet_refreshes_total`.
    pub enum RefreshResult {
        Ok => "ok",
        Throttled => "throttled",
        Denied => "denied",
        Error => "error",
    }
}

/// The subnet part of the state.
#[derive(Debug, Default)]
pub struct SubnetState {
    /// `Some` when `--subnet-metrics` is on.
    pub(in crate::state) threshold: Option<LowThreshold>,
    pub(in crate::state) facts: BTreeMap<String, SubnetFacts>,
    /// Unix ms of the facts; 0 before the first refresh.
    pub(in crate::state) refreshed_unix_ms: i64,
    /// The last refresh failed.
    pub(in crate::state) stale: bool,
    pub(in crate::state) refreshes: Counts<RefreshResult>,
    /// Refreshes in which some subnet's usable − available − held came out negative.
    pub(in crate::state) inconsistent: u64,
    /// `--subnet-prefixes`: free /28 blocks.
    pub(in crate::state) prefixes: space::PrefixState,
    /// The exhaustion forecast's samples, and `--forecast-window` in seconds.
    pub(in crate::state) forecasts: forecast::Forecasts,
    pub(in crate::state) forecast_window: f64,
}

impl SubnetState {
    /// `--forecast-window`, in seconds.
    pub fn forecast_window(&self) -> f64 {
        self.forecast_window
    }

    /// The last refresh failed: the values are the last good ones.
    pub fn stale(&self) -> bool {
        self.stale
    }

    /// When EC2 last answered (0: never).
    pub fn refreshed_unix_ms(&self) -> i64 {
        self.refreshed_unix_ms
    }
}

impl ClusterState {
    /// Turn subnet metrics on with this low-on-addresses threshold and forecast window.
    pub fn enable_subnets(&mut self, threshold: LowThreshold, forecast_window: std::time::Duration) {
        self.subnets.threshold = Some(threshold);
        self.subnets.forecast_window = forecast_window.as_secs_f64();
    }

    /// One refresh's free values per subnet and per AZ into the forecast's samples.
    pub(super) fn sample_for_forecast(&mut self, resource: forecast::Resource, per_subnet: &[(String, String, f64)], now_unix_ms: i64) {
        use forecast::Scope;
        let mut values: Vec<(Scope, f64)> = per_subnet.iter().map(|(id, _, v)| (Scope::Subnet(id.clone()), *v)).collect();
        let mut by_az: BTreeMap<&str, f64> = BTreeMap::new();
        for (_, az, v) in per_subnet {
            *by_az.entry(az).or_default() += v;
        }
        values.extend(by_az.into_iter().map(|(az, v)| (Scope::Az(az.to_owned()), v)));
        let window = self.subnets.forecast_window;
        self.subnets.forecasts.record(resource, now_unix_ms as f64 / 1000.0, &values, window);
    }

    /// Every forecast: (resource, subnet or AZ, seconds until zero).
    pub fn exhaustion_forecasts(&self) -> Vec<(forecast::Resource, forecast::Scope, f64)> {
        self.subnets.forecasts.forecasts(self.subnets.forecast_window).into_iter().map(|(r, s, v)| (r, s.clone(), v)).collect()
    }

    /// The subnets the cluster's nodes report ENIs in.
    pub fn subnets_in_use(&self) -> Vec<String> {
        let ids: std::collections::BTreeSet<&str> =
            self.book.iter().flat_map(|n| n.subnets().iter().map(|s| s.subnet_id.as_str())).collect();
        ids.into_iter().map(str::to_owned).collect()
    }

    /// What the live nodes hold per subnet.
    pub fn cluster_subnet_use(&self) -> BTreeMap<String, ClusterUse> {
        let mut out: BTreeMap<String, ClusterUse> = BTreeMap::new();
        for n in self.book.iter() {
            for s in n.subnets() {
                let u = out.entry(s.subnet_id.clone()).or_default();
                u.nodes += 1;
                u.pod_addresses += s.total_ips;
                u.assigned += s.assigned_ips;
                u.enis += s.enis;
            }
        }
        out
    }

    /// A refresh succeeded: these are the subnets EC2 described.
    pub fn set_subnet_facts(&mut self, facts: Vec<SubnetFacts>, now_unix_ms: i64) {
        self.subnets.facts = facts.into_iter().map(|f| (f.subnet_id.clone(), f)).collect();
        self.subnets.refreshed_unix_ms = now_unix_ms;
        self.subnets.stale = false;
        self.subnets.refreshes.inc(RefreshResult::Ok);
        if self.subnet_report().is_some_and(|r| r.negative_others > 0) {
            self.subnets.inconsistent += 1;
        }
        let free: Vec<(String, String, f64)> =
            self.subnets.facts.values().map(|f| (f.subnet_id.clone(), f.availability_zone.clone(), f.available as f64)).collect();
        self.sample_for_forecast(forecast::Resource::Addresses, &free, now_unix_ms);
        self.version += 1;
    }

    /// An attempt within a refresh failed and is retried.
    pub fn record_subnet_retry(&mut self, result: RefreshResult) {
        self.subnets.refreshes.inc(result);
    }

    /// A refresh failed: the last values stay, marked stale.
    pub fn subnet_refresh_failed(&mut self, result: RefreshResult) {
        self.subnets.stale = true;
        self.subnets.refreshes.inc(result);
        self.version += 1;
    }

    /// The joined subnet numbers; `None` unless subnet metrics are on and EC2 answered once.
    pub fn subnet_report(&self) -> Option<SubnetReport> {
        let threshold = self.subnets.threshold?;
        if self.subnets.refreshed_unix_ms == 0 {
            return None;
        }
        Some(join(&self.subnets.facts, &self.cluster_subnet_use(), threshold))
    }
}

/// What `/metrics` shows of the subnets, copied under the state lock (see `render.rs`).
pub struct SubnetsView {
    report: Option<SubnetReport>,
    stale: bool,
    refreshed_unix_ms: i64,
    refreshes: Counts<RefreshResult>,
    inconsistent: u64,
    /// (resource, subnet or AZ, the subnet's AZ, seconds until zero).
    exhaustion: Vec<(forecast::Resource, forecast::Scope, String, f64)>,
    window: f64,
}

impl ClusterState {
    /// The forecasts with each subnet's AZ.
    fn exhaustion_view(&self) -> Vec<(forecast::Resource, forecast::Scope, String, f64)> {
        self.exhaustion_forecasts()
            .into_iter()
            .map(|(r, scope, secs)| {
                let az = match &scope {
                    forecast::Scope::Subnet(id) => self.subnets.facts.get(id).map(|f| f.availability_zone.clone()).unwrap_or_default(),
                    forecast::Scope::Az(az) => az.clone(),
                };
                (r, scope, az, secs)
            })
            .collect()
    }

    /// The subnet part of `/metrics`; `None` without `--subnet-metrics`.
    pub(super) fn subnets_view(&self) -> Option<SubnetsView> {
        self.subnets.threshold?;
        Some(SubnetsView {
            report: self.subnet_report(),
            stale: self.subnets.stale,
            refreshed_unix_ms: self.subnets.refreshed_unix_ms,
            refreshes: self.subnets.refreshes.clone(),
            inconsistent: self.subnets.inconsistent,
            exhaustion: self.exhaustion_view(),
            window: self.subnets.forecast_window,
        })
    }
}

impl SubnetsView {
    /// The `cni_metrics_subnet*` families (only with `--subnet-metrics`).
    pub(super) fn render(&self, page: &mut cni_metrics_proto::exposition::Page<'_>) {
        use cni_metrics_proto::exposition::Kind;
        // The families are declared as soon as subnet metrics are on (empty until EC2 first answers).
        let report = &self.report;
        {
            type Get = fn(&model::SubnetRow) -> f64;
            let per_subnet: [(&str, &str, Get); 6] = [
                ("usable_ip_addresses", "Addresses of the subnet instances may use (CIDR size - 5 AWS reserves)", |r| r.usable),
                ("available_ip_addresses", "Free addresses of the subnet (EC2 AvailableIpAddressCount)", |r| r.available),
                ("cluster_ip_addresses", "Addresses this cluster's nodes hold in the subnet (ENI primaries and pod addresses)", |r| {
                    r.held_by_cluster
                }),
                ("assigned_ip_addresses", "Addresses of the subnet assigned to this cluster's pods", |r| r.assigned_to_pods),
                ("other_ip_addresses", "Addresses held by anything else (usable - available - this cluster's, clamped at 0)", |r| {
                    r.held_by_others
                }),
                ("low_on_ips", "1 when the subnet's available addresses are below --subnet-low-threshold", |r| f64::from(u8::from(r.low))),
            ];
            for (metric, help, get) in per_subnet {
                let name = format!("cni_metrics_subnet_{metric}");
                let mut family = page.family(&name, Kind::Gauge, help);
                for row in report.iter().flat_map(|r| &r.rows) {
                    family.sample(&[("subnet_id", &row.subnet_id), ("availability_zone", &row.availability_zone)], get(row));
                }
            }
        }
        let mut family = page.family("cni_metrics_subnets_low_on_ips", Kind::Gauge, "Subnets of the cluster below --subnet-low-threshold");
        if let Some(r) = &report {
            family.sample(&[], f64::from(r.low));
        }
        page.gauge(
            "cni_metrics_subnet_stale",
            "1 when the last DescribeSubnets failed (the subnet values are older)",
            f64::from(u8::from(self.stale)),
        );
        page.gauge(
            "cni_metrics_subnet_refresh_timestamp_seconds",
            "When EC2 last described the subnets (Unix seconds; 0: not yet)",
            self.refreshed_unix_ms as f64 / 1000.0,
        );
        page.counts("cni_metrics_subnet_describe_calls_total", "DescribeSubnets attempts, by result", "result", &self.refreshes);
        self.render_exhaustion(page);
        page.counter(
            "cni_metrics_subnet_inconsistent_total",
            "Refreshes in which a subnet's usable - available - this cluster's came out negative (read at different moments)",
            self.inconsistent,
        );
    }
}

impl SubnetsView {
    /// `cni_metrics_subnet_exhaustion_seconds` and `cni_metrics_az_exhaustion_seconds`: present only for a
    /// falling trend with enough samples.
    fn render_exhaustion(&self, page: &mut cni_metrics_proto::exposition::Page<'_>) {
        use cni_metrics_proto::exposition::Kind;
        use cni_metrics_proto::labels::Label;
        use forecast::Scope;
        let (subnet, az) = ("cni_metrics_subnet_exhaustion_seconds", "cni_metrics_az_exhaustion_seconds");
        let mut family = page.family(subnet, Kind::Gauge, "Seconds until the subnet has no free addresses (resource=addresses) or /28s (prefixes) at the trend of --forecast-window; absent unless falling");
        for (r, scope, zone, secs) in &self.exhaustion {
            if let Scope::Subnet(id) = scope {
                family.sample(&[("subnet_id", id), ("availability_zone", zone), ("resource", r.as_str())], *secs);
            }
        }
        let mut family = page.family(az, Kind::Gauge, "Seconds until the cluster's subnets of the AZ have no free addresses or /28s at the trend of --forecast-window; absent unless falling");
        for (r, scope, _, secs) in &self.exhaustion {
            if let Scope::Az(zone) = scope {
                family.sample(&[("availability_zone", zone), ("resource", r.as_str())], *secs);
            }
        }
        page.gauge("cni_metrics_forecast_window_seconds", "--forecast-window: the trailing window of the exhaustion forecast", self.window);
    }
}
