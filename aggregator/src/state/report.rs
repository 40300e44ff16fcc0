//! One report, in named steps: [`ClusterState::check`] refuses it before anything changes (stale
//! session, missing snapshot, mismatched lengths, strings, redefinitions) or finds it older than one
//! applied; then the definitions, the snapshot's removals, the counters' raw values (and what a run
//! first seen mid-way brings), the values, and the node's status.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use cni_metrics_proto::v1::{MetricKind, Report, ScrapeStatus};

use super::{status_label, validate, Applied, ClusterState, IngestError};

/// What the checks found.
enum Checked {
    /// Apply it.
    Fresh,
    /// Older than a report already applied: acknowledge it again, change nothing else.
    Old(Applied),
}

impl ClusterState {
    pub(super) fn apply(&mut self, node_name: &str, session: u64, r: &Report, now: Instant) -> Result<Applied, IngestError> {
        if let Checked::Old(applied) = self.check(node_name, session, r)? {
            self.stats.reports_ignored_old_seq += 1;
            if let Some(mut n) = self.book.node_mut(node_name) {
                n.touch(now);
            }
            return Ok(applied);
        }
        let Some(name) = self.book.get(node_name).map(|n| n.name().clone()) else {
            return Err(IngestError::StaleSession(session));
        };
        for d in &r.defs {
            self.define(&name, d);
        }
        if r.snapshot {
            self.drop_unlisted(&name, r);
        }
        // A run first seen after it had already sent reports (this aggregator restarted): its counters
        // start from the committed totals their definitions carry (see `define`), so what a previous
        // aggregator never published is counted now.
        let (first_report, recovering) = match self.book.get(&name) {
            Some(n) => (n.last_seq() == 0, r.snapshot && n.last_seq() == 0 && r.seq > 1),
            None => (false, false),
        };
        if first_report {
            self.establish(&name, r);
        }
        let recovered = if !r.counter_raws.is_empty() || recovering { self.note_raws(&name, r, recovering) } else { 0.0 };
        for (&id, &v) in r.ids.iter().zip(&r.values) {
            self.update(&name, id, v);
        }
        if recovering {
            self.stats.runs_recovered += 1;
            self.stats.recovered_increments += recovered;
        }
        for &id in &r.removed {
            self.remove_series(&name, id);
        }
        let applied = self.note_status(&name, session, r, now)?;
        Ok(Applied { recovered: recovering.then_some(recovered), ..applied })
    }

    /// Refuse a report before anything changes, or find it older than one applied.
    fn check(&self, node_name: &str, session: u64, r: &Report) -> Result<Checked, IngestError> {
        let node = self.book.get(node_name).filter(|n| n.session() == session).ok_or(IngestError::StaleSession(session))?;
        if !node.snapshot_seen() && !r.snapshot {
            return Err(IngestError::SnapshotExpected);
        }
        if r.ids.len() != r.values.len() {
            return Err(IngestError::LengthMismatch { ids: r.ids.len(), values: r.values.len() });
        }
        if !r.counter_raws.is_empty() {
            // Kinds of this report's definitions (a map only when it has any: deltas rarely do).
            let defined: HashMap<u32, bool> = r.defs.iter().map(|d| (d.id, d.kind == MetricKind::Counter as i32)).collect();
            let is_counter =
                |id: &u32| defined.get(id).copied().unwrap_or_else(|| node.series(*id).is_some_and(|s| s.kind == MetricKind::Counter));
            let counters = r.ids.iter().filter(|id| is_counter(id)).count();
            if counters != r.counter_raws.len() {
                return Err(IngestError::RawMismatch { counters, raws: r.counter_raws.len() });
            }
        }
        if r.seq <= node.last_seq() && !r.snapshot {
            return Ok(Checked::Old(Applied { ack: node.last_seq(), fresh: false, recovered: None, committed: node.committed_seq() }));
        }
        // Validate every string and definition before changing anything.
        validate::report(r)?;
        for d in &r.defs {
            let Some(existing) = node.series(d.id) else { continue };
            let renamed = existing.slot.is_some_and(|i| **self.series.get(i).name() != *d.name);
            if existing.kind as i32 != d.kind || renamed {
                return Err(IngestError::Redefined(d.id));
            }
        }
        Ok(Checked::Fresh)
    }

    /// A snapshot lists every live series: the node's others are gone, and its series take no more room
    /// than they need (a v1.23 node's ~40 series would otherwise keep room for 64).
    fn drop_unlisted(&mut self, name: &Arc<str>, r: &Report) {
        let listed: HashSet<u32> = r.ids.iter().copied().chain(r.defs.iter().map(|d| d.id)).collect();
        let gone: Vec<u32> = self.book.get(name).map(|n| n.series_ids().filter(|id| !listed.contains(id)).collect()).unwrap_or_default();
        for id in gone {
            self.remove_series(name, id);
        }
        if let Some(mut n) = self.book.node_mut(name) {
            n.shrink_series();
        }
    }

    /// The run's first report: it is established.
    fn establish(&mut self, name: &Arc<str>, r: &Report) {
        // A departed record of an earlier run has served its purpose (for a keeping run, once a window
        // with its increments closed: until then it is the resume point).
        if self.book.get(name).is_some_and(|n| !n.keeps_position()) {
            self.book.departed_mut().remove(name);
        }
        if r.baseline_unknown {
            self.stats.baseline_unknown_runs += 1;
        }
    }

    /// The counters' raw values (the resume point), before their totals apply; returns what a
    /// recovering run brings beyond its committed totals.
    fn note_raws(&mut self, name: &Arc<str>, r: &Report, recovering: bool) -> f64 {
        self.book.node_mut(name).map_or(0.0, |mut node| node.note_raws(r, recovering))
    }

    /// The report's scrape status, subnets and sequence on the node.
    fn note_status(&mut self, name: &Arc<str>, session: u64, r: &Report, now: Instant) -> Result<Applied, IngestError> {
        let status = ScrapeStatus::try_from(r.status).unwrap_or(ScrapeStatus::Unreachable);
        if status != ScrapeStatus::Ok && status != ScrapeStatus::Pending {
            *self.stats.scrape_errors.entry(status_label(status)).or_default() += 1;
        }
        self.stats.bad_lines += u64::from(r.bad_lines);
        if r.subnets_changed {
            self.set_ipv6_prefixes(name, r.subnets.iter().any(|s| s.ipv6_prefixes > 0));
        }
        self.set_cooldown(name, r.cooldown_ips);
        let keep_blocks = self.subnets.threshold.is_some();
        let Some(mut node) = self.book.node_mut(name) else {
            return Err(IngestError::StaleSession(session));
        };
        if r.subnets_changed {
            // The blocks only serve --subnet-prefixes, which needs --subnet-metrics: not kept without it.
            let placed = self.breakdowns.place_subnets(&r.subnets);
            self.breakdowns.apply_subnets(node.subnet_groups(), false);
            self.breakdowns.apply_subnets(&placed, true);
            node.set_subnets(&r.subnets, placed, keep_blocks);
        }
        let recorded = node.record(r, status, now);
        drop(node);
        if recorded.newly_in_doubt {
            self.stats.baseline_in_doubt_runs += 1;
        }
        let applied = Applied { ack: recorded.ack, fresh: true, recovered: None, committed: recorded.committed };
        if !r.ids.is_empty() || !r.removed.is_empty() || !r.defs.is_empty() || r.snapshot {
            self.version += 1;
        }
        Ok(applied)
    }
}
