//! The agent's counting core, pure (no I/O, no clock: the caller passes `now`): a [`Tally`] folds each
//! scrape into the delta engine ([`Tally::fold`]), keeps what the aggregator has not been told yet
//! ([`Pending`]), numbers the reports it builds, and remembers in the [`CommitLog`] what the aggregator
//! has published, which is the position a new run resumes from.
//!
//! [`Tally::fold`] decides the scrape's status and detail and returns what a person should hear of it
//! as [`Note`]s; the event loop (`run.rs`) logs those and counts them in the agent's own metrics, so the
//! rules are table-tested here without sockets.

use cni_metrics_proto::v1::{Report, ScrapeStatus, SubnetUsage, Welcome};

use crate::commit::CommitLog;
use crate::delta::{DeltaConfig, DeltaEngine, ResumePoints};
use crate::history::{History, PoolReading};
use crate::introspect::CardTotals;
use crate::multicard::Corrected;
use crate::parse::parse;
use crate::report::{counter_totals, delta_report, snapshot_report, Pending, ScrapeFacts};
use crate::scrape::ScrapeError;

/// What the agent has counted of its node and what the aggregator has published of it.
pub struct Tally {
    engine: DeltaEngine,
    pending: Pending,
    commits: CommitLog,
    /// The last scrape's outcome, sent with every report.
    scrape: ScrapeFacts,
    /// Sequence number of the last report queued.
    seq: u64,
    /// The pool's recent history, for the warm-pool advisor.
    history: History,
}

/// What one scrape did: its status and detail, its counts for the agent's metrics, and what to log.
#[derive(Debug, PartialEq)]
pub struct Folded {
    pub status: ScrapeStatus,
    pub detail: String,
    /// The page's bad lines, invalid samples and series dropped at `--max-series`.
    pub bad_lines: u32,
    pub invalid_samples: u32,
    pub dropped_series: u32,
    /// The network cards introspection reported and the page values their sums corrected; `None` when
    /// ipamd's page could not be read.
    pub multi_card: Option<(usize, Vec<Corrected>)>,
    pub notes: Vec<Note>,
}

/// Something a person should hear of a scrape.
#[derive(Debug, PartialEq)]
pub enum Note {
    /// The series limit (`--max-series`) dropped this many new series.
    SeriesDropped(u32),
    /// Every series fits the limit again.
    SeriesWithinLimit,
    /// Lines ipamd's page had that do not parse (how many, the first described).
    BadLines(u32, String),
    /// ipamd restarted (its new start time): its counters' reset is folded in.
    IpamdRestarted(f64),
    /// The scrape works again after failing (the status before).
    Recovered(ScrapeStatus),
    /// The scrape fails (its status and detail); it is retried at every tick.
    Failing(ScrapeStatus, String),
}

impl Tally {
    /// A tally whose pool history covers `history_window`.
    pub fn new(cfg: DeltaConfig, max_commit_log: usize, history_window: std::time::Duration, now_ms: i64) -> Self {
        Self {
            engine: DeltaEngine::new(cfg),
            pending: Pending::default(),
            commits: CommitLog::new(max_commit_log),
            scrape: ScrapeFacts::pending(now_ms),
            seq: 0,
            history: History::new(history_window),
        }
    }

    /// The pool's recent history (one sample per usable scrape).
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Fold one scrape result, read at `now_ms` with introspection's `cards`, into the engine and what
    /// the next report says.
    pub fn fold(&mut self, fetched: Result<String, ScrapeError>, cards: &[CardTotals], now_ms: i64) -> Folded {
        let mut folded = match fetched {
            Ok(text) => self.fold_page(&text, cards, now_ms),
            Err(e) => Folded::failed(e.status(), e.to_string()),
        };
        folded.detail = plain_detail(&folded.detail);
        let facts = &mut self.scrape;
        facts.scrape_time_ms = now_ms;
        facts.ipamd_start_time = self.engine.ipamd_start_time().unwrap_or(0.0);
        let status_changed = folded.status != facts.status;
        if status_changed || folded.detail != facts.status_detail {
            self.pending.status_detail_changed = true;
        }
        if status_changed {
            folded.notes.push(match folded.status {
                ScrapeStatus::Ok => Note::Recovered(facts.status),
                status => Note::Failing(status, folded.detail.clone()),
            });
        }
        facts.status = folded.status;
        facts.status_detail.clone_from(&folded.detail);
        folded
    }

    /// A page ipamd served: parsed, corrected by the cards' sums, observed by the engine.
    fn fold_page(&mut self, text: &str, cards: &[CardTotals], now_ms: i64) -> Folded {
        let mut page = parse(text);
        let corrected = crate::multicard::correct(&mut page, cards);
        let obs = self.engine.observe(&page, now_ms as f64 / 1000.0);
        let facts = &mut self.scrape;
        let mut notes = Vec::new();
        facts.bad_lines = page.bad_lines;
        if obs.dropped_series as u64 != facts.dropped_series {
            if obs.dropped_series > 0 {
                notes.push(Note::SeriesDropped(obs.dropped_series));
            } else if obs.usable {
                notes.push(Note::SeriesWithinLimit);
            }
        }
        if obs.usable {
            facts.dropped_series = obs.dropped_series as u64;
        }
        if page.bad_lines > 0 {
            notes.push(Note::BadLines(page.bad_lines, crate::parse::describe(&page.first_errors)));
        }
        if obs.ipamd_restarted {
            notes.push(Note::IpamdRestarted(self.engine.ipamd_start_time().unwrap_or(0.0)));
        }
        let first = crate::parse::describe(&page.first_errors[..page.first_errors.len().min(1)]);
        let (status, detail) = if obs.usable {
            if let Some(reading) = PoolReading::from_page(&page) {
                self.history.record(now_ms, reading);
            }
            self.pending.absorb(&obs);
            obs.removed.iter().for_each(|id| self.commits.forget(*id));
            let detail = if page.bad_lines > 0 { format!("{} bad lines ({first})", page.bad_lines) } else { String::new() };
            (ScrapeStatus::Ok, detail)
        } else if first.is_empty() {
            (ScrapeStatus::Garbage, format!("no usable awscni_ metric in {} bytes", text.len()))
        } else {
            (
                ScrapeStatus::Garbage,
                format!("no usable awscni_ metric in {} bytes ({} bad lines, first at {first})", text.len(), page.bad_lines),
            )
        };
        Folded {
            status,
            detail,
            bad_lines: page.bad_lines,
            invalid_samples: obs.invalid_samples,
            dropped_series: obs.dropped_series,
            multi_card: Some((cards.len(), corrected)),
            notes,
        }
    }

    /// Introspection's count of free addresses in ipamd's cooldown (None: unknown), sent with every report.
    pub fn set_cooldown_ips(&mut self, cooldown_ips: Option<f64>) {
        self.scrape.cooldown_ips = cooldown_ips;
    }

    /// Introspection's per-subnet usage; a change goes out with the next report.
    pub fn set_subnets(&mut self, subnets: Vec<SubnetUsage>) {
        if subnets != self.scrape.subnets {
            self.scrape.subnets = subnets;
            self.pending.subnets_changed = true;
        }
    }

    /// The next report as a snapshot (every live series, the committed totals) or a delta (what is
    /// pending); numbered after the last one queued.
    pub fn next_report(&self, snapshot: bool) -> Report {
        if snapshot {
            snapshot_report(&self.engine, &self.commits, self.seq + 1, &self.scrape)
        } else {
            delta_report(&self.engine, &self.pending, self.seq + 1, &self.scrape)
        }
    }

    /// Hand `report` to `send`; once it is queued (`send` returned true), its counter totals wait in the
    /// commit log for the window that publishes them and nothing is pending any more. Returns whether it
    /// was queued.
    pub fn queue(&mut self, report: Report, send: impl FnOnce(Report) -> bool) -> bool {
        let (seq, start) = (report.seq, report.ipamd_start_time_seconds);
        let totals: Vec<(u32, f64, f64)> = counter_totals(&self.engine, &report).collect();
        if !send(report) {
            return false;
        }
        self.seq = seq;
        self.commits.record(seq, start, totals);
        self.pending.clear();
        true
    }

    /// The aggregator's sinks delivered the reports up to `seq`; whether the commit advanced.
    pub fn commit(&mut self, seq: u64) -> bool {
        self.commits.commit(seq)
    }

    /// The run's first Welcome decides where counting resumes: the aggregator's point wins (it is
    /// newer), else the state file's (`from_file`).
    pub fn resume(&mut self, welcome: &Welcome, from_file: Option<ResumePoints>) -> Resumed {
        self.engine.set_aggregator_started(welcome.started_unix_ms as f64 / 1000.0);
        let (points, from) = match (welcome.resume.as_ref(), from_file) {
            (Some(r), _) => (Some(resume_points(r)), ResumeSource::Aggregator),
            (None, Some(p)) => (Some(p), ResumeSource::StateFile),
            (None, None) => (None, ResumeSource::Nowhere),
        };
        let corrected = self.engine.apply_resume(points.clone()).len();
        Resumed { points, from, corrected }
    }

    pub fn engine(&self) -> &DeltaEngine {
        &self.engine
    }

    pub fn commits(&self) -> &CommitLog {
        &self.commits
    }
}

/// Where the run resumed counting ([`Tally::resume`]).
#[derive(Debug, PartialEq)]
pub struct Resumed {
    pub points: Option<ResumePoints>,
    pub from: ResumeSource,
    /// Series whose first-sight increments the points corrected.
    pub corrected: usize,
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum ResumeSource {
    Aggregator,
    StateFile,
    Nowhere,
}

impl Folded {
    /// ipamd's page could not be read.
    fn failed(status: ScrapeStatus, detail: String) -> Self {
        Self { status, detail, bad_lines: 0, invalid_samples: 0, dropped_series: 0, multi_card: None, notes: Vec::new() }
    }
}

/// The proto resume as the engine's lookup.
pub fn resume_points(r: &cni_metrics_proto::v1::Resume) -> ResumePoints {
    let raw = r
        .points
        .iter()
        .map(|p| {
            let mut labels: Vec<(String, String)> = p.labels.iter().map(|l| (l.name.clone(), l.value.clone())).collect();
            labels.sort_unstable();
            (crate::delta::SeriesKey { name: p.name.clone(), labels }, p.raw)
        })
        .collect();
    ResumePoints { ipamd_start_time: r.ipamd_start_time_seconds, raw }
}

/// A status detail as the aggregator accepts it: control characters as spaces, at most 512 bytes.
fn plain_detail(detail: &str) -> String {
    let mut out: String = detail.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if out.len() > 512 {
        let mut end = 509;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests;
