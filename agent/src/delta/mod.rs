//! Turns successive ipamd pages of one node into deltas: the pure heart of the agent (no I/O, no clock:
//! the caller passes the time).
//!
//! Each scrape is first *normalised*: only `awscni_*` samples are kept, each is given its kind from the
//! catalogue (whatever the page's TYPE says for families whose type flipped across ipamd versions),
//! node-level labels the catalogue folds away are summed, and ipamd's `process_start_time_seconds` is read.
//!
//! Then per series:
//! - a gauge is reported when its value changed;
//! - a counter is reported as a running total of increments since the series was defined in this agent
//!   run (see the proto). A counter that decreases, or any counter after ipamd's start time changed, is a
//!   reset: its new value is the increment.
//! - first sight: on the agent's first usable scrape, if ipamd started within `initial_window` the values
//!   are real increments (a new node); otherwise they are the baseline (increment 0). A series that
//!   appears on a later scrape was born since the previous one, so its whole value is an increment.
//! - resume: when this run replaces an earlier agent run of the node, the aggregator says up to which
//!   raw ipamd value it counted each counter ([`DeltaEngine::apply_resume`]); first sight then counts
//!   `raw - resume` (same ipamd process) or the whole value (ipamd restarted since), so increments made
//!   while no agent ran are counted once. Without a resume and with an ipamd older than the initial window,
//!   the run's baseline is unknown ([`DeltaEngine::baseline_unknown`]).
//! - series missing from a clean page are removed; a page with bad lines removes nothing (a garbled line
//!   is not a vanished series). A removed counter leaves a tombstone for the rest of the ipamd process, so
//!   one that comes back is continued, not counted again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cni_metrics_proto::catalog::{self, NodeFold, SampleRole};
use cni_metrics_proto::v1::{FamilyType, MetricKind};

use crate::parse::Page;

/// Identity of a series after node-level folding: sample name plus sorted labels.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub name: String,
    pub labels: Vec<(String, String)>,
}

/// What the stream layer needs to define a series.
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesInfo {
    pub id: u32,
    pub family: Arc<str>,
    pub key: SeriesKey,
    pub kind: MetricKind,
    pub family_type: FamilyType,
    pub node_fold: NodeFold,
}

#[derive(Clone, Debug)]
struct SeriesState {
    info: SeriesInfo,
    /// ipamd's last (folded) value.
    last_raw: f64,
    /// Gauge: the value. Counter: running total of increments since definition.
    value: f64,
    present: bool,
    /// The scrape epoch that last saw it.
    seen: u64,
    /// Counters defined on the run's first scrape: (raw then, increment counted for it), so a resume
    /// that arrives later can correct the first-sight increment.
    first: Option<(f64, f64)>,
}

/// Where a previous agent run's counting stopped (from the aggregator's Welcome).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResumePoints {
    pub ipamd_start_time: f64,
    pub raw: HashMap<SeriesKey, f64>,
}

impl ResumePoints {
    /// The increment a counter first seen at `raw` in ipamd process `start` owes, if the resume speaks
    /// for it: the same process counts from the resume point; a later process counts in full.
    fn first_increment(&self, key: &SeriesKey, raw: f64, start: Option<f64>) -> Option<f64> {
        let start = start?;
        if start == self.ipamd_start_time {
            Some(match self.raw.get(key) {
                Some(&r) if raw >= r => raw - r,
                _ => raw,
            })
        } else if start > self.ipamd_start_time {
            Some(raw)
        } else {
            None
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum ResumeState {
    /// No Welcome yet: first sight is provisional.
    Awaiting,
    /// Known (possibly empty: no earlier run).
    Known(Option<ResumePoints>),
}

/// Configuration of the delta engine.
#[derive(Clone, Debug)]
pub struct DeltaConfig {
    /// An ipamd that started at most this long before the agent's first scrape is a new node.
    pub initial_window: Duration,
    /// At most this many live series per node; more are dropped and counted.
    pub max_series: usize,
}

impl Default for DeltaConfig {
    fn default() -> Self {
        Self { initial_window: Duration::from_secs(300), max_series: 2000 }
    }
}

/// The outcome of one scrape.
#[derive(Debug, Default, PartialEq)]
pub struct Observation {
    /// False when the page had no usable ipamd sample: nothing was applied.
    pub usable: bool,
    /// Newly defined series (their current value is included in `changed`).
    pub added: Vec<u32>,
    /// Series whose value (gauge) or running total (counter) changed, including added ones.
    pub changed: Vec<u32>,
    pub removed: Vec<u32>,
    /// ipamd restarted since the previous scrape (start time changed).
    pub ipamd_restarted: bool,
    /// Samples ignored because they were invalid for their kind (non-finite or negative counters,
    /// duplicate series).
    pub invalid_samples: u32,
    /// New series refused because of `max_series` in this scrape.
    pub dropped_series: u32,
}

/// Per-node delta state.
#[derive(Debug)]
pub struct DeltaEngine {
    cfg: DeltaConfig,
    series: HashMap<SeriesKey, SeriesState>,
    by_id: HashMap<u32, SeriesKey>,
    next_id: u32,
    live: usize,
    ipamd_start: Option<f64>,
    first_scrape_done: bool,
    families: HashMap<String, Arc<str>>,
    epoch: u64,
    resume: ResumeState,
    /// ipamd's start time and whether it was within the initial window, at the first usable scrape.
    first_start: Option<f64>,
    first_fresh: bool,
    /// When the aggregator that sent the run's first Welcome started (Unix seconds).
    aggregator_started: Option<f64>,
}

/// One normalised sample.
struct Normalised {
    family: Arc<str>,
    kind: MetricKind,
    family_type: FamilyType,
    node_fold: NodeFold,
    value: f64,
}

impl DeltaEngine {
    pub fn new(cfg: DeltaConfig) -> Self {
        Self {
            cfg,
            series: HashMap::new(),
            by_id: HashMap::new(),
            next_id: 1,
            live: 0,
            ipamd_start: None,
            first_scrape_done: false,
            families: HashMap::new(),
            epoch: 0,
            resume: ResumeState::Awaiting,
            first_start: None,
            first_fresh: false,
            aggregator_started: None,
        }
    }

    /// ipamd's last (folded) raw value of a series.
    pub fn raw(&self, id: u32) -> Option<f64> {
        self.by_id.get(&id).and_then(|k| self.series.get(k)).map(|s| s.last_raw)
    }

    /// Apply the aggregator's resume point (once per run, before the run's first report). Counters first
    /// seen before it have their first-sight increment corrected; returns the ids whose total changed.
    pub fn apply_resume(&mut self, resume: Option<ResumePoints>) -> Vec<u32> {
        if self.resume != ResumeState::Awaiting {
            return Vec::new();
        }
        let mut changed = Vec::new();
        if let Some(r) = &resume {
            let start = self.first_start;
            for (key, st) in self.series.iter_mut() {
                let Some((raw, counted)) = st.first else { continue };
                if let Some(inc) = r.first_increment(key, raw, start).filter(|inc| !same(*inc, counted)) {
                    st.value = (st.value - counted + inc).max(0.0);
                    st.first = Some((raw, inc));
                    changed.push(st.info.id);
                }
            }
        }
        self.resume = ResumeState::Known(resume);
        changed.sort_unstable();
        changed
    }

    /// Record when the aggregator of the run's first Welcome started (before [`DeltaEngine::apply_resume`]).
    pub fn set_aggregator_started(&mut self, unix_secs: f64) {
        if self.resume == ResumeState::Awaiting && unix_secs > 0.0 {
            self.aggregator_started = Some(unix_secs);
        }
    }

    /// True when a young ipamd was counted from its start without a resume point, by an aggregator younger
    /// than that ipamd: a previous aggregator may have counted an earlier run of this node, and that part
    /// would be counted twice. Reported (and counted by the aggregator) so it is never silent.
    pub fn baseline_in_doubt(&self) -> bool {
        self.first_scrape_done
            && self.first_fresh
            && matches!(self.resume, ResumeState::Known(None))
            && matches!((self.first_start, self.aggregator_started), (Some(s), Some(a)) if s < a)
    }

    /// The run's counting continues from a resume point (the same ipamd process, or one started since).
    fn resumed(&self) -> bool {
        matches!(&self.resume, ResumeState::Known(Some(r)) if self.first_start.is_some_and(|s| s >= r.ipamd_start_time))
    }

    /// True when counting started without a resume point on an ipamd older than the initial window:
    /// increments before the run's first scrape are not known (reported so the loss is counted).
    pub fn baseline_unknown(&self) -> bool {
        self.first_scrape_done && !self.first_fresh && !self.resumed() && matches!(self.resume, ResumeState::Known(_))
    }

    /// ipamd's `process_start_time_seconds` as last seen.
    pub fn ipamd_start_time(&self) -> Option<f64> {
        self.ipamd_start
    }

    /// The definition of a series.
    pub fn info(&self, id: u32) -> Option<&SeriesInfo> {
        self.by_id.get(&id).and_then(|k| self.series.get(k)).map(|s| &s.info)
    }

    /// The current value (gauge) or running total (counter) of a series.
    pub fn value(&self, id: u32) -> Option<f64> {
        self.by_id.get(&id).and_then(|k| self.series.get(k)).map(|s| s.value)
    }

    /// Every live series, ordered by id.
    pub fn live_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.series.values().filter(|s| s.present).map(|s| s.info.id).collect();
        ids.sort_unstable();
        ids
    }

    /// Apply one parsed page scraped at `now_unix` (seconds).
    pub fn observe(&mut self, page: &Page<'_>, now_unix: f64) -> Observation {
        let mut obs = Observation::default();
        let start = page
            .samples
            .iter()
            .find(|s| s.name == catalog::PROCESS_START_TIME && s.labels.is_empty())
            .map(|s| s.value)
            .filter(|v| v.is_finite() && *v > 0.0);
        let current = self.normalise(page, &mut obs);
        if current.is_empty() {
            return obs;
        }
        obs.usable = true;
        let scrape = self.begin_scrape(start, now_unix);
        obs.ipamd_restarted = scrape.restarted;
        for (key, n) in current {
            if let Some(st) = self.series.get_mut(&key).filter(|st| st.present && st.info.kind == n.kind) {
                update_known(st, &n, &scrape, &mut obs);
                continue;
            }
            let tombstone_raw = self.retire(&key, &n, scrape.restarted, &mut obs);
            if self.live >= self.cfg.max_series {
                obs.dropped_series += 1;
                continue;
            }
            self.define(key, n, tombstone_raw, &scrape, &mut obs);
        }
        if scrape.restarted {
            self.zero_unseen_counters(scrape.epoch, &mut obs);
        }
        // Removals only on a clean page, and only of series not seen in it.
        if page.bad_lines == 0 {
            self.remove_unseen(&mut obs);
        }
        obs.added.sort_unstable();
        obs.changed.sort_unstable();
        obs.removed.sort_unstable();
        obs
    }

    /// What this scrape is: after an ipamd restart, the first of the engine, of a fresh ipamd.
    fn begin_scrape(&mut self, start: Option<f64>, now_unix: f64) -> Scrape {
        let restarted = matches!((self.ipamd_start, start), (Some(a), Some(b)) if a != b);
        if restarted {
            // Counters restart from zero with the process: tombstones no longer apply.
            self.series.retain(|_, s| s.present);
            self.by_id.retain(|_, k| self.series.contains_key(k));
        }
        if start.is_some() {
            self.ipamd_start = start;
        }
        let first = !self.first_scrape_done;
        self.first_scrape_done = true;
        let fresh_ipamd = start.is_some_and(|s| now_unix - s <= self.cfg.initial_window.as_secs_f64());
        if first {
            self.first_start = start;
            self.first_fresh = fresh_ipamd;
        }
        self.epoch += 1;
        Scrape { start, restarted, first, fresh_ipamd, epoch: self.epoch }
    }

    /// A series under `key` that cannot continue (gone, or its kind changed) leaves; returns a
    /// tombstone's last raw value when the same counter comes back within the same ipamd process.
    fn retire(&mut self, key: &SeriesKey, n: &Normalised, restarted: bool, obs: &mut Observation) -> Option<f64> {
        let st = self.series.remove(key)?;
        self.by_id.remove(&st.info.id);
        if st.present {
            // Kind changed (an unknown family flipped TYPE): retire the old series.
            obs.removed.push(st.info.id);
            self.live -= 1;
            None
        } else {
            (st.info.kind == n.kind && !restarted).then_some(st.last_raw)
        }
    }

    /// Define a new, reappearing (tombstone) or kind-changed series under a new id.
    fn define(&mut self, key: SeriesKey, n: Normalised, tombstone_raw: Option<f64>, scrape: &Scrape, obs: &mut Observation) {
        let resumed = match &self.resume {
            ResumeState::Known(Some(r)) if scrape.first && n.kind == MetricKind::Counter => r.first_increment(&key, n.value, scrape.start),
            _ => None,
        };
        let value = match n.kind {
            MetricKind::Counter => match (tombstone_raw, resumed) {
                (Some(last), _) if n.value >= last => n.value - last,
                (Some(_), _) => n.value,
                (None, Some(inc)) => inc,
                (None, None) if scrape.restarted || !scrape.first || scrape.fresh_ipamd => n.value,
                (None, None) => 0.0,
            },
            _ => n.value,
        };
        let first_sight = (scrape.first && n.kind == MetricKind::Counter).then_some((n.value, value));
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let info = SeriesInfo { id, family: n.family, key: key.clone(), kind: n.kind, family_type: n.family_type, node_fold: n.node_fold };
        self.by_id.insert(id, key.clone());
        self.series.insert(key, SeriesState { info, last_raw: n.value, value, present: true, seen: scrape.epoch, first: first_sight });
        self.live += 1;
        obs.added.push(id);
        obs.changed.push(id);
    }

    /// After an ipamd restart, the new process has not counted what this page does not show: zero, not
    /// the old process's raw value. Without this, a counter ipamd shows only once it is non-zero (a
    /// labelled `CounterVec` series) would, on reappearing, be counted from the old process's value and
    /// its first increments lost.
    fn zero_unseen_counters(&mut self, epoch: u64, obs: &mut Observation) {
        for st in self.series.values_mut().filter(|s| s.present && s.seen != epoch && s.info.kind == MetricKind::Counter) {
            if !same(st.last_raw, 0.0) {
                st.last_raw = 0.0;
                obs.changed.push(st.info.id);
            }
        }
    }

    fn remove_unseen(&mut self, obs: &mut Observation) {
        let epoch = self.epoch;
        let mut gauges_gone = Vec::new();
        for (key, st) in self.series.iter_mut() {
            if st.present && st.seen != epoch {
                st.present = false;
                obs.removed.push(st.info.id);
                self.live -= 1;
                if st.info.kind != MetricKind::Counter {
                    gauges_gone.push(key.clone());
                }
            }
        }
        // Gauges need no tombstone; cap counter tombstones at max_series.
        for key in gauges_gone {
            if let Some(st) = self.series.remove(&key) {
                self.by_id.remove(&st.info.id);
            }
        }
        let tombstones = self.series.len() - self.live;
        if tombstones > self.cfg.max_series {
            let dead: Vec<SeriesKey> =
                self.series.iter().filter(|(_, s)| !s.present).map(|(k, _)| k.clone()).take(tombstones - self.cfg.max_series).collect();
            for key in dead {
                if let Some(st) = self.series.remove(&key) {
                    self.by_id.remove(&st.info.id);
                }
            }
        }
    }

    /// Select, classify and fold the page's ipamd samples.
    fn normalise(&mut self, page: &Page<'_>, obs: &mut Observation) -> Vec<(SeriesKey, Normalised)> {
        let mut out: HashMap<SeriesKey, Normalised> = HashMap::with_capacity(page.samples.len());
        let mut raw_seen = std::collections::HashSet::new();
        for s in &page.samples {
            if !s.name.starts_with(catalog::FORWARDED_PREFIX) {
                continue;
            }
            let (family, role, spec_type, drop) = resolve_family(page, s.name, s.label("quantile").is_some());
            let (kind, node_fold) = catalog::sample_kind(spec_type, role);
            if kind == MetricKind::Counter && !(s.value.is_finite() && s.value >= 0.0) {
                obs.invalid_samples += 1;
                continue;
            }
            // A series listed twice on one page is a page error: keep the first.
            let raw_key = (s.name, s.labels.iter().map(|(n, v)| (*n, v.as_ref())).collect::<Vec<_>>());
            if !raw_seen.insert(raw_key) {
                obs.invalid_samples += 1;
                continue;
            }
            let mut labels: Vec<(String, String)> =
                s.labels.iter().filter(|(n, _)| !drop.contains(n)).map(|(n, v)| ((*n).to_owned(), v.as_ref().to_owned())).collect();
            labels.sort_unstable();
            let key = SeriesKey { name: s.name.to_owned(), labels };
            match out.get_mut(&key) {
                Some(n) => n.value += s.value,
                None => {
                    let family = self.intern(family);
                    out.insert(key, Normalised { family, kind, family_type: spec_type, node_fold, value: s.value });
                }
            }
        }
        out.into_iter().collect()
    }

    fn intern(&mut self, family: &str) -> Arc<str> {
        if let Some(f) = self.families.get(family) {
            return f.clone();
        }
        let f: Arc<str> = Arc::from(family);
        self.families.insert(family.to_owned(), f.clone());
        f
    }
}

/// Find a sample's family, its role in it, the family type to use and the node-level labels to drop.
fn resolve_family<'p>(page: &Page<'p>, name: &'p str, has_quantile: bool) -> (&'p str, SampleRole, FamilyType, &'static [&'static str]) {
    let known = |fam: &str| catalog::family(fam);
    // The sample is its family's own value when the family is known under that exact name.
    if let Some(spec) = known(name) {
        let role = if has_quantile && spec.family_type == FamilyType::Summary { SampleRole::Quantile } else { SampleRole::Value };
        return (name, role, spec.family_type, spec.node_drop_labels);
    }
    if let Some(t) = page.declared_type(name) {
        let role = if has_quantile && t == FamilyType::Summary { SampleRole::Quantile } else { SampleRole::Value };
        return (name, role, t, &[]);
    }
    for suffix in ["_sum", "_count", "_bucket"] {
        if let Some(base) = name.strip_suffix(suffix) {
            let t = known(base).map(|s| (s.family_type, s.node_drop_labels)).or_else(|| page.declared_type(base).map(|t| (t, &[][..])));
            if let Some((t, drop)) = t {
                if t == FamilyType::Summary || t == FamilyType::Histogram {
                    return (base, SampleRole::Aggregate, t, drop);
                }
            }
        }
    }
    (name, SampleRole::Value, FamilyType::Untyped, &[])
}

/// Equality that treats NaN as equal to NaN (a gauge stuck at NaN has not changed).
/// What one scrape is, for every series in it.
struct Scrape {
    start: Option<f64>,
    restarted: bool,
    first: bool,
    fresh_ipamd: bool,
    epoch: u64,
}

/// A known series (present, same kind) in this scrape: its new value, or its counter's increment.
fn update_known(st: &mut SeriesState, n: &Normalised, scrape: &Scrape, obs: &mut Observation) {
    st.seen = scrape.epoch;
    let mut raw_changed = false;
    let new_value = match n.kind {
        MetricKind::Counter => {
            let inc = if scrape.restarted || n.value < st.last_raw { n.value } else { n.value - st.last_raw };
            // A reset to the same total still moves the raw value (the resume point).
            raw_changed = !same(n.value, st.last_raw);
            st.last_raw = n.value;
            st.value + inc
        }
        _ => n.value,
    };
    if !same(new_value, st.value) || raw_changed {
        st.value = new_value;
        obs.changed.push(st.info.id);
    }
}

fn same(a: f64, b: f64) -> bool {
    a == b || (a.is_nan() && b.is_nan())
}

#[cfg(test)]
mod tests;
