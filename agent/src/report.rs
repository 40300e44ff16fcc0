//! Builds the wire messages from the delta engine's state: pure, so message sizes are unit-tested and
//! benchmarked without a network.
//!
//! Between two reports the agent accumulates what it owes the aggregator in [`Pending`] (ids whose value
//! changed, series added or removed, a new scrape status). A report that could not be queued is simply not
//! taken out of `Pending`: values are absolute (gauges) or running totals (counters), so sending the
//! latest value later loses nothing.

use std::collections::BTreeSet;

use cni_metrics_proto::v1::{Label, Report, ScrapeStatus, SeriesDef, SubnetUsage};

use cni_metrics_proto::v1::MetricKind;

use crate::commit::CommitLog;
use crate::delta::{DeltaEngine, Observation, SeriesInfo};

/// What the aggregator has not been told yet in this session.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Pending {
    pub defs: BTreeSet<u32>,
    pub changed: BTreeSet<u32>,
    pub removed: BTreeSet<u32>,
    pub status_detail_changed: bool,
    pub subnets_changed: bool,
}

impl Pending {
    /// Fold one scrape's observation in.
    pub fn absorb(&mut self, obs: &Observation) {
        for id in &obs.removed {
            // Defined and removed before anyone heard of it: say nothing at all.
            if !self.defs.remove(id) {
                self.removed.insert(*id);
            }
            self.changed.remove(id);
        }
        self.defs.extend(obs.added.iter().copied());
        self.changed.extend(obs.changed.iter().copied());
    }

    pub fn clear(&mut self) {
        *self = Pending::default();
    }
}

/// Per-scrape facts carried by every report.
#[derive(Debug, Clone, PartialEq)]
pub struct ScrapeFacts {
    pub scrape_time_ms: i64,
    pub status: ScrapeStatus,
    pub status_detail: String,
    pub bad_lines: u32,
    pub dropped_series: u64,
    pub ipamd_start_time: f64,
    /// Per-subnet usage from introspection (empty when unknown).
    pub subnets: Vec<SubnetUsage>,
    /// Free addresses in ipamd's IP cooldown, from introspection (None when unknown).
    pub cooldown_ips: Option<f64>,
}

impl ScrapeFacts {
    /// Before the first scrape of a run.
    pub fn pending(now_ms: i64) -> Self {
        Self { status: ScrapeStatus::Pending, status_detail: "no scrape yet".to_owned(), ..Self::ok(now_ms, 0.0) }
    }

    /// A successful clean scrape (benchmarks and tests).
    pub fn ok(scrape_time_ms: i64, ipamd_start_time: f64) -> Self {
        Self {
            scrape_time_ms,
            status: ScrapeStatus::Ok,
            status_detail: String::new(),
            bad_lines: 0,
            dropped_series: 0,
            ipamd_start_time,
            subnets: Vec::new(),
            cooldown_ips: None,
        }
    }
}

fn def(info: &SeriesInfo, committed_total: f64) -> SeriesDef {
    SeriesDef {
        committed_total,
        id: info.id,
        family: info.family.to_string(),
        name: info.key.name.clone(),
        kind: info.kind as i32,
        family_type: info.family_type as i32,
        labels: info.key.labels.iter().map(|(n, v)| Label { name: n.clone(), value: v.clone() }).collect(),
    }
}

/// An incremental report of what is pending.
pub fn delta_report(engine: &DeltaEngine, pending: &Pending, seq: u64, facts: &ScrapeFacts) -> Report {
    let mut r = base(seq, false, facts, pending.status_detail_changed);
    r.baseline_in_doubt = engine.baseline_in_doubt();
    if pending.subnets_changed {
        r.subnets_changed = true;
        r.subnets.clone_from(&facts.subnets);
    }
    r.defs = pending.defs.iter().filter_map(|id| engine.info(*id)).map(|i| def(i, 0.0)).collect();
    for id in &pending.changed {
        push_value(engine, &mut r, *id);
    }
    r.removed = pending.removed.iter().copied().collect();
    r
}

/// Append one value (and, for a counter, ipamd's raw value).
fn push_value(engine: &DeltaEngine, r: &mut Report, id: u32) -> bool {
    let (Some(info), Some(v)) = (engine.info(id), engine.value(id)) else { return false };
    r.ids.push(id);
    r.values.push(v);
    if info.kind == MetricKind::Counter {
        r.counter_raws.push(engine.raw(id).unwrap_or(0.0));
    }
    true
}

/// A full snapshot: every live series with its definition, its committed total and current value.
pub fn snapshot_report(engine: &DeltaEngine, commits: &CommitLog, seq: u64, facts: &ScrapeFacts) -> Report {
    let mut r = base(seq, true, facts, true);
    r.subnets_changed = true;
    r.subnets.clone_from(&facts.subnets);
    r.baseline_unknown = engine.baseline_unknown();
    r.baseline_in_doubt = engine.baseline_in_doubt();
    for id in engine.live_ids() {
        if let Some(info) = engine.info(id) {
            let d = def(info, commits.committed(id));
            if push_value(engine, &mut r, id) {
                r.defs.push(d);
            }
        }
    }
    r
}

/// The counters a report carries, for the commit log: (id, running total, ipamd raw value).
pub fn counter_totals<'a>(engine: &'a DeltaEngine, r: &'a Report) -> impl Iterator<Item = (u32, f64, f64)> + 'a {
    r.ids
        .iter()
        .zip(&r.values)
        .filter(|(id, _)| engine.info(**id).is_some_and(|i| i.kind == MetricKind::Counter))
        .zip(&r.counter_raws)
        .map(|((id, v), raw)| (*id, *v, *raw))
}

fn base(seq: u64, snapshot: bool, facts: &ScrapeFacts, with_detail: bool) -> Report {
    Report {
        seq,
        snapshot,
        scrape_time_ms: facts.scrape_time_ms,
        status: facts.status as i32,
        status_detail: if with_detail { facts.status_detail.clone() } else { String::new() },
        defs: Vec::new(),
        ids: Vec::new(),
        values: Vec::new(),
        removed: Vec::new(),
        bad_lines: facts.bad_lines,
        dropped_series: facts.dropped_series,
        ipamd_start_time_seconds: facts.ipamd_start_time,
        subnets_changed: false,
        subnets: Vec::new(),
        counter_raws: Vec::new(),
        baseline_unknown: false,
        baseline_in_doubt: false,
        // Whole: the session cuts it into parts when the aggregator accepts them.
        part: 0,
        parts: 0,
        cooldown_ips: facts.cooldown_ips,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::DeltaConfig;
    use crate::parse::parse;
    use cni_metrics_proto::v1::{agent_message, AgentMessage};
    use cni_metrics_testkit::sim::{PageStyle, SimIpamd};
    use prost::Message;

    fn facts() -> ScrapeFacts {
        ScrapeFacts::ok(1_763_800_000_000, 1_763_700_000.0)
    }

    #[test]
    fn idle_report_is_tiny_and_snapshot_is_complete() {
        let sim = SimIpamd::new(PageStyle::Modern, 3, 1_763_700_000.0);
        let text = sim.render();
        let mut engine = DeltaEngine::new(DeltaConfig::default());
        let mut pending = Pending::default();
        pending.absorb(&engine.observe(&parse(&text), 1_763_800_000.0));
        let snap = snapshot_report(&engine, &CommitLog::new(10), 1, &facts());
        assert_eq!(snap.defs.len(), engine.live_ids().len());
        assert_eq!(snap.ids.len(), snap.values.len());
        pending.clear();
        // Same page again: nothing changed.
        pending.absorb(&engine.observe(&parse(&text), 1_763_800_030.0));
        let idle = delta_report(&engine, &pending, 123_456, &facts());
        assert!(idle.ids.is_empty() && idle.defs.is_empty() && idle.removed.is_empty());
        let wire = AgentMessage { body: Some(agent_message::Body::Report(idle)) }.encoded_len();
        // + 5 bytes gRPC framing + 9 bytes HTTP/2 DATA header.
        assert!(wire + 14 <= 128, "idle report is {wire} bytes");
    }

    #[test]
    fn pending_merges_add_then_remove_to_nothing() {
        let mut p = Pending::default();
        p.absorb(&Observation { usable: true, added: vec![5], changed: vec![5], ..Observation::default() });
        p.absorb(&Observation { usable: true, removed: vec![5, 6], ..Observation::default() });
        assert!(p.defs.is_empty() && p.changed.is_empty());
        assert_eq!(p.removed.iter().copied().collect::<Vec<_>>(), vec![6]);
    }
}
