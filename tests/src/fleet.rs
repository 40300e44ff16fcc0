//! The fleet load generator's pure part: what a simulated agent sends. A few *templates* are built once
//! by running the real agent's delta engine over successive pages of a simulated v1.23 ipamd; each
//! simulated agent then replays one template's changes on its own values (gauges set, counters always
//! growing), so its reports have the shape and size of a real agent's without parsing a page per agent.
//! Node names, instance ids and zones follow EKS's conventions. The I/O (connections, pacing, latency
//! histograms) lives in the `cni-metrics-fleet` binary.

use cni_metrics_agent::delta::{DeltaConfig, DeltaEngine};
use cni_metrics_agent::parse::parse;
use cni_metrics_proto::v1::{Hello, MetricKind, Report, ScrapeStatus, SeriesDef, SubnetUsage};
use cni_metrics_testkit::sim::{PageStyle, SimIpamd};

/// One change a template applies at a step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Change {
    /// A gauge takes this value.
    Set(usize, f64),
    /// A counter grows by this much.
    Add(usize, f64),
}

/// The series of one simulated node and how they change from one scrape to the next.
#[derive(Clone, Debug)]
pub struct Template {
    pub defs: Vec<SeriesDef>,
    pub counter: Vec<bool>,
    pub start: Vec<f64>,
    /// `steps[k]`: the changes of the k-th scrape after the snapshot (replayed in a cycle).
    pub steps: Vec<Vec<Change>>,
}

/// Seconds since the epoch at which the simulated ipamds started.
pub const IPAMD_START: f64 = 1_763_700_000.0;

impl Template {
    /// Run the agent's engine over `steps + 1` pages of a v1.23 (secondary IP) ipamd seeded `seed`.
    pub fn build(seed: u64, steps: usize) -> Self {
        let mut sim = SimIpamd::new(PageStyle::Modern, seed, IPAMD_START);
        for _ in 0..20 {
            sim.step();
        }
        let mut engine = DeltaEngine::new(DeltaConfig::default());
        engine.observe(&parse(&sim.render()), IPAMD_START + 10.0);
        let ids = engine.live_ids();
        let mut defs = Vec::new();
        let mut counter = Vec::new();
        let mut start = Vec::new();
        for id in &ids {
            let (Some(info), Some(v)) = (engine.info(*id), engine.value(*id)) else { continue };
            defs.push(SeriesDef {
                id: *id,
                family: info.family.to_string(),
                name: info.key.name.clone(),
                kind: info.kind as i32,
                family_type: info.family_type as i32,
                labels: info.key.labels.iter().map(|(n, v)| cni_metrics_proto::v1::Label { name: n.clone(), value: v.clone() }).collect(),
                committed_total: 0.0,
            });
            counter.push(info.kind == MetricKind::Counter);
            start.push(v);
        }
        let mut prev = start.clone();
        let mut all_steps = Vec::with_capacity(steps);
        for k in 0..steps {
            sim.step();
            let obs = engine.observe(&parse(&sim.render()), IPAMD_START + 40.0 + 30.0 * k as f64);
            let mut changes = Vec::new();
            for id in &obs.changed {
                let (Some(pos), Some(v)) = (defs.iter().position(|d| d.id == *id), engine.value(*id)) else { continue };
                if counter[pos] {
                    changes.push(Change::Add(pos, (v - prev[pos]).max(0.0)));
                } else {
                    changes.push(Change::Set(pos, v));
                }
                prev[pos] = v;
            }
            all_steps.push(changes);
        }
        Self { defs, counter, start, steps: all_steps }
    }
}

/// What one simulated agent knows: its identity, its values and where it is in its template's cycle.
#[derive(Clone, Debug)]
pub struct SimAgent {
    pub index: u64,
    pub template: usize,
    pub values: Vec<f64>,
    pub step: usize,
    pub seq: u64,
    pub run_id: u64,
}

impl SimAgent {
    pub fn new(index: u64, templates: &[Template]) -> Self {
        let template = (index as usize) % templates.len().max(1);
        let values = templates.get(template).map(|t| t.start.clone()).unwrap_or_default();
        Self { index, template, values, step: 0, seq: 0, run_id: 0x5eed_0000_0000 + index }
    }

    /// An EKS-style node name for this agent: `ip-10-x-y-z.<region>.compute.internal`.
    pub fn node_name(&self) -> String {
        let i = self.index;
        format!("ip-10-{}-{}-{}.{REGION}.compute.internal", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff)
    }

    pub fn hello(&self, interval_ms: u64) -> Hello {
        const TYPES: [&str; 4] = ["m5.large", "m6i.2xlarge", "c6g.4xlarge", "r5.xlarge"];
        Hello {
            node_name: self.node_name(),
            agent_version: "fleet".to_owned(),
            run_id: self.run_id,
            ipamd_start_time_seconds: IPAMD_START,
            availability_zone: format!("{REGION}{}", ['a', 'b', 'c'][(self.index % 3) as usize]),
            instance_type: TYPES[(self.index % 4) as usize].to_owned(),
            instance_id: format!("i-0{:016x}", self.index.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 1),
            interval_ms,
            region: REGION.to_owned(),
            cluster_name: "fleet".to_owned(),
            keeps_position: false,
        }
    }

    fn subnets(&self) -> Vec<SubnetUsage> {
        let assigned = self.values.first().copied().unwrap_or(0.0);
        vec![SubnetUsage {
            subnet_id: format!("subnet-0{:016x}", self.index % 6),
            total_ips: 30.0,
            assigned_ips: assigned.clamp(0.0, 30.0),
            enis: 2,
            ..SubnetUsage::default()
        }]
    }

    fn base(&mut self, now_ms: i64) -> Report {
        self.seq += 1;
        Report {
            seq: self.seq,
            scrape_time_ms: now_ms,
            status: ScrapeStatus::Ok as i32,
            ipamd_start_time_seconds: IPAMD_START,
            ..Report::default()
        }
    }

    /// The first report of a stream: every series with its definition and value.
    pub fn snapshot(&mut self, templates: &[Template], now_ms: i64) -> Report {
        let mut r = self.base(now_ms);
        r.snapshot = true;
        r.subnets_changed = true;
        r.subnets = self.subnets();
        let Some(t) = templates.get(self.template) else { return r };
        r.defs = t.defs.clone();
        for (pos, d) in t.defs.iter().enumerate() {
            self.push(&mut r, t, pos, d.id);
        }
        r
    }

    /// The next scrape's report: only what changed.
    pub fn delta(&mut self, templates: &[Template], now_ms: i64) -> Report {
        let mut r = self.base(now_ms);
        let Some(t) = templates.get(self.template) else { return r };
        let Some(changes) = t.steps.get(self.step % t.steps.len().max(1)) else { return r };
        self.step += 1;
        for c in changes {
            let pos = match *c {
                Change::Set(pos, v) => {
                    if let Some(slot) = self.values.get_mut(pos) {
                        *slot = v;
                    }
                    pos
                }
                Change::Add(pos, d) => {
                    if let Some(slot) = self.values.get_mut(pos) {
                        *slot += d;
                    }
                    pos
                }
            };
            if let Some(d) = t.defs.get(pos) {
                self.push(&mut r, t, pos, d.id);
            }
        }
        r
    }

    fn push(&self, r: &mut Report, t: &Template, pos: usize, id: u32) {
        let v = self.values.get(pos).copied().unwrap_or(0.0);
        r.ids.push(id);
        r.values.push(v);
        if t.counter.get(pos).copied().unwrap_or(false) {
            // The simulated ipamd never restarted: its raw value is the running total.
            r.counter_raws.push(v);
        }
    }
}

pub const REGION: &str = "us-west-2";

/// Buckets of the report→ack latency histogram the generator prints: bucket k counts latencies up to
/// 2^(k/4) µs (the last one everything longer).
pub const LATENCY_BUCKETS: usize = 112;

/// The bucket of latency `d`.
pub fn latency_bucket(d: std::time::Duration) -> usize {
    let us = d.as_secs_f64() * 1e6;
    if us <= 1.0 {
        0
    } else {
        ((us.log2() * 4.0).ceil() as usize).min(LATENCY_BUCKETS - 1)
    }
}

/// Quantile `q` of the latencies counted between two histogram snapshots, in ms (bucket upper bounds);
/// NaN when none were.
pub fn latency_quantile(before: &[u64], after: &[u64], q: f64) -> f64 {
    let d: Vec<u64> = after.iter().zip(before.iter().chain(std::iter::repeat(&0))).map(|(a, b)| a.saturating_sub(*b)).collect();
    let n: u64 = d.iter().sum();
    let want = (q * n as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (k, c) in d.iter().enumerate() {
        seen += c;
        if n > 0 && seen >= want {
            return 2f64.powf(k as f64 / 4.0) / 1000.0;
        }
    }
    f64::NAN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_has_a_v123_page_and_changes_every_step() {
        let t = Template::build(3, 8);
        assert!(t.defs.len() >= 10, "{} series", t.defs.len());
        assert!(t.counter.iter().any(|c| *c) && t.counter.iter().any(|c| !*c));
        assert_eq!(t.steps.len(), 8);
        assert!(t.steps.iter().all(|s| !s.is_empty()));
    }

    #[test]
    fn counters_only_grow_across_cycles_and_reports_are_consistent() {
        let templates = vec![Template::build(1, 4), Template::build(2, 4)];
        let mut a = SimAgent::new(5, &templates);
        let snap = a.snapshot(&templates, 1);
        assert_eq!(snap.defs.len(), snap.ids.len());
        let t = &templates[a.template];
        let mut last = a.values.clone();
        for _ in 0..13 {
            let r = a.delta(&templates, 2);
            let counters = r.ids.iter().filter(|id| t.defs.iter().any(|d| d.id == **id && d.kind == MetricKind::Counter as i32)).count();
            assert_eq!(counters, r.counter_raws.len());
            assert_eq!(r.ids.len(), r.values.len());
            for (pos, c) in t.counter.iter().enumerate() {
                if *c {
                    assert!(a.values[pos] >= last[pos]);
                }
            }
            last = a.values.clone();
        }
        assert_eq!(a.seq, 14);
    }

    #[test]
    fn latency_quantiles_come_from_the_window_between_two_snapshots() {
        use std::time::Duration;
        assert_eq!(latency_bucket(Duration::from_nanos(500)), 0);
        // 1 ms = 1000 µs: log2 = 9.97, so bucket 40 (up to 2^10 µs = 1.024 ms).
        assert_eq!(latency_bucket(Duration::from_millis(1)), 40);
        assert_eq!(latency_bucket(Duration::from_secs(3600)), LATENCY_BUCKETS - 1);
        let mut before = vec![0u64; LATENCY_BUCKETS];
        before[40] = 1_000; // old latencies, not in the window
        let mut after = before.clone();
        after[40] += 98;
        after[60] += 2; // 2^15 µs = 32.8 ms
        assert_eq!(latency_quantile(&before, &after, 0.5), 1.024);
        assert_eq!(latency_quantile(&before, &after, 0.99), 32.768);
        assert!(latency_quantile(&after, &after, 0.5).is_nan());
    }

    #[test]
    fn names_are_eks_style_and_distinct() {
        let t = vec![Template::build(1, 1)];
        let names: std::collections::BTreeSet<String> = (0..70_000).map(|i| SimAgent::new(i, &t).node_name()).collect();
        assert_eq!(names.len(), 70_000);
        assert_eq!(SimAgent::new(258, &t).node_name(), "ip-10-0-1-2.us-west-2.compute.internal");
    }
}
