//! Free /28 prefixes in the state (`--subnet-prefixes`): the last count per subnet, when it was made,
//! whether the last refresh failed (the counts stay, marked stale) and the calls by result. The refresher
//! ([`crate::subnets::prefixes`]) asks EC2, takes [`ClusterState::prefix_inputs`] (each subnet's CIDR and
//! the blocks the nodes report in it) under the lock, counts outside it ([`prefixes::report`], pure) and
//! stores the result with [`ClusterState::set_prefix_report`].

use cni_metrics_proto::labels::Counts;

use super::prefixes::{self, Block, PrefixReport, SubnetInput};
use super::RefreshResult;
use crate::state::ClusterState;

/// Whether free prefixes are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PrefixMode {
    /// When any node holds a prefix (prefix delegation), by its introspection or `awscni_total_ipv4_prefixes`.
    Auto,
    #[value(alias = "on")]
    True,
    #[value(alias = "off")]
    False,
}

/// The prefix part of the subnet state.
#[derive(Debug, Default)]
pub struct PrefixState {
    /// `Some` when `--subnet-metrics` is on and `--subnet-prefixes` is not false.
    mode: Option<PrefixMode>,
    low_below: u32,
    report: Option<PrefixReport>,
    refreshed_unix_ms: i64,
    stale: bool,
    calls: Counts<RefreshResult>,
    /// EC2 entries that were not IPv4, left out (summed over refreshes).
    skipped: u64,
}

impl ClusterState {
    /// Count free prefixes in this mode; a subnet with fewer than `low_below` free /28s is low on them.
    pub fn enable_prefixes(&mut self, mode: PrefixMode, low_below: u32) {
        if mode != PrefixMode::False {
            self.subnets.prefixes.mode = Some(mode);
            self.subnets.prefixes.low_below = low_below;
        }
    }

    /// Whether the refresher should count now: on, or auto and some node holds a prefix.
    pub fn prefixes_wanted(&self) -> bool {
        match self.subnets.prefixes.mode {
            Some(PrefixMode::True) => true,
            Some(PrefixMode::Auto) => self.any_node_holds_prefixes(),
            _ => false,
        }
    }

    fn any_node_holds_prefixes(&self) -> bool {
        let by_introspection = self.book.iter().any(|n| n.subnets().iter().any(|s| s.blocks.iter().any(|b| b.prefix_len < 32)));
        by_introspection
            || self
                .series
                .iter()
                .any(|s| &**s.name() == "awscni_total_ipv4_prefixes" && s.labels().is_empty() && s.gauge_value().is_some_and(|v| v > 0.0))
    }

    /// The subnets EC2 described (their CIDRs) with the blocks the live nodes report in each.
    pub fn prefix_inputs(&self) -> Vec<SubnetInput> {
        let mut out: Vec<SubnetInput> = self
            .subnets
            .facts
            .values()
            .filter_map(|f| {
                Some(SubnetInput {
                    subnet_id: f.subnet_id.clone(),
                    availability_zone: f.availability_zone.clone(),
                    cidr: Block::parse(&f.cidr).ok()?,
                    cluster_blocks: Vec::new(),
                })
            })
            .collect();
        for n in self.book.iter() {
            for s in n.subnets() {
                if let Some(input) = out.iter_mut().find(|i| i.subnet_id == s.subnet_id) {
                    input.cluster_blocks.extend(s.blocks.iter().filter_map(|b| crate::state::validate::block(b).ok()));
                }
            }
        }
        out
    }

    pub fn prefix_low_below(&self) -> u32 {
        self.subnets.prefixes.low_below
    }

    /// A refresh succeeded: the counts, and the EC2 entries left out.
    pub fn set_prefix_report(&mut self, report: PrefixReport, skipped: u32, now_unix_ms: i64) {
        let free: Vec<(String, String, f64)> =
            report.rows.iter().map(|r| (r.subnet_id.clone(), r.availability_zone.clone(), f64::from(r.space.free))).collect();
        self.sample_for_forecast(super::forecast::Resource::Prefixes, &free, now_unix_ms);
        let p = &mut self.subnets.prefixes;
        p.report = Some(report);
        p.refreshed_unix_ms = now_unix_ms;
        p.stale = false;
        p.skipped += u64::from(skipped);
        self.version += 1;
    }

    /// One EC2 call of a prefix refresh, by result.
    pub fn record_prefix_call(&mut self, result: RefreshResult) {
        self.subnets.prefixes.calls.inc(result);
    }

    /// A refresh failed: the last counts stay, marked stale.
    pub fn prefix_refresh_failed(&mut self) {
        self.subnets.prefixes.stale = true;
        self.version += 1;
    }

    /// The last counts; `None` before the first refresh or with prefixes off.
    pub fn prefix_report(&self) -> Option<&PrefixReport> {
        self.subnets.prefixes.mode?;
        self.subnets.prefixes.report.as_ref()
    }
}

/// What `/metrics` shows of the prefixes, copied under the state lock.
pub struct PrefixView {
    report: Option<PrefixReport>,
    stale: bool,
    refreshed_unix_ms: i64,
    calls: Counts<RefreshResult>,
    skipped: u64,
    low_below: u32,
}

impl ClusterState {
    /// The prefix part of `/metrics`; `None` unless `--subnet-prefixes` can be on.
    pub(in crate::state) fn prefix_view(&self) -> Option<PrefixView> {
        let p = &self.subnets.prefixes;
        p.mode?;
        Some(PrefixView {
            report: p.report.clone(),
            stale: p.stale,
            refreshed_unix_ms: p.refreshed_unix_ms,
            calls: p.calls.clone(),
            skipped: p.skipped,
            low_below: p.low_below,
        })
    }
}

impl PrefixView {
    /// The `cni_metrics_subnet_*prefix*` families.
    pub(in crate::state) fn render(&self, page: &mut cni_metrics_proto::exposition::Page<'_>) {
        use cni_metrics_proto::exposition::Kind;
        let rows = self.report.iter().flat_map(|r| &r.rows);
        type Get = fn(&prefixes::PrefixRow) -> Option<f64>;
        let per_subnet: [(&str, &str, Get); 4] = [
            ("free_prefixes", "Aligned /28 blocks of the subnet wholly free and outside explicit CIDR reservations", |r| {
                Some(f64::from(r.space.free))
            }),
            ("free_reserved_prefixes", "Of the free /28 blocks, those inside the subnet's prefix CIDR reservations", |r| {
                Some(f64::from(r.space.free_in_prefix_reservations))
            }),
            (
                "largest_free_block_prefix_length",
                "Prefix length of the largest free aligned block (28: only /28s left; absent: nothing free)",
                |r| r.space.largest_free_len.map(f64::from),
            ),
            ("low_on_prefixes", "1 when the subnet has fewer free /28 blocks than --subnet-low-prefixes", |r| {
                Some(f64::from(u8::from(r.low)))
            }),
        ];
        for (metric, help, get) in per_subnet {
            let name = format!("cni_metrics_subnet_{metric}");
            let mut family = page.family(&name, Kind::Gauge, help);
            for row in rows.clone() {
                if let Some(v) = get(row) {
                    family.sample(&[("subnet_id", &row.subnet_id), ("availability_zone", &row.availability_zone)], v);
                }
            }
        }
        let mut low = page.family(
            "cni_metrics_subnets_low_on_prefixes",
            Kind::Gauge,
            "Subnets of the cluster with fewer free /28 blocks than --subnet-low-prefixes",
        );
        if let Some(r) = &self.report {
            low.sample(&[], f64::from(r.low));
        }
        let mut free_by_az =
            page.family("cni_metrics_az_free_prefixes", Kind::Gauge, "Free /28 blocks over the cluster's subnets of the AZ");
        for (az, (free, _)) in self.report.iter().flat_map(|r| &r.by_az) {
            free_by_az.sample(&[("availability_zone", az)], f64::from(*free));
        }
        page.gauge(
            "cni_metrics_subnet_low_prefixes_threshold",
            "--subnet-low-prefixes: fewer free /28 blocks than this is low",
            f64::from(self.low_below),
        );
        page.gauge(
            "cni_metrics_subnet_prefixes_stale",
            "1 when the last free-prefix refresh failed (the counts are older)",
            f64::from(u8::from(self.stale)),
        );
        page.gauge(
            "cni_metrics_subnet_prefixes_refresh_timestamp_seconds",
            "When the free prefixes were last counted (Unix seconds; 0: not yet)",
            self.refreshed_unix_ms as f64 / 1000.0,
        );
        page.counts(
            "cni_metrics_subnet_prefix_calls_total",
            "DescribeNetworkInterfaces and GetSubnetCidrReservations attempts, by result",
            "result",
            &self.calls,
        );
        page.counter(
            "cni_metrics_subnet_prefix_entries_skipped_total",
            "EC2 addresses and reservations that were not IPv4, left out of the counts",
            self.skipped,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every sample of a page follows its own family's `# TYPE` line (the text format wants a family's
    /// lines as one group).
    fn ungrouped(page: &str) -> Vec<String> {
        let mut current = "";
        let mut bad = Vec::new();
        for line in page.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                current = rest.split(' ').next().unwrap_or("");
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap_or("");
                if !name.starts_with(current) || current.is_empty() {
                    bad.push(line.to_owned());
                }
            }
        }
        bad
    }

    #[test]
    fn each_family_s_samples_follow_its_declaration() {
        let mut by_az = std::collections::BTreeMap::new();
        by_az.insert("us-east-1a".to_owned(), (12, 1));
        let row = prefixes::PrefixRow {
            subnet_id: "subnet-1".into(),
            availability_zone: "us-east-1a".into(),
            space: prefixes::PrefixSpace { free: 12, ..prefixes::PrefixSpace::default() },
            low: true,
        };
        let report = PrefixReport { rows: vec![row], by_az, free: 12, low: 1 };
        let view =
            PrefixView { report: Some(report), stale: false, refreshed_unix_ms: 1, calls: Counts::default(), skipped: 0, low_below: 32 };
        let mut out = String::new();
        view.render(&mut cni_metrics_proto::exposition::Page::new(&mut out, &[("cluster_id", "c")]));
        assert!(out.contains("cni_metrics_subnets_low_on_prefixes{cluster_id=\"c\"} 1"), "{out}");
        assert!(out.contains("cni_metrics_az_free_prefixes{cluster_id=\"c\",availability_zone=\"us-east-1a\"} 12"), "{out}");
        assert_eq!(ungrouped(&out), Vec::<String>::new(), "{out}");
    }
}
