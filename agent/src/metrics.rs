//! The agent's self-metrics: what it did (received, sent, errors, discarded), counted lock-free by the
//! event loop and rendered as Prometheus text for its `/metrics` endpoint ([`crate::http`]). Declared
//! once here, so the loop and the endpoint share one definition.

use std::sync::atomic::{AtomicU64, Ordering};

use cni_metrics_proto::exposition::{Kind, Page};

use crate::position::PositionError;

/// Counters of what the agent did, for logs and tests.
#[derive(Debug, Default)]
pub struct AgentStats {
    pub scrapes: AtomicU64,
    pub scrape_errors: AtomicU64,
    pub bad_lines: AtomicU64,
    pub invalid_samples: AtomicU64,
    pub dropped_series: AtomicU64,
    pub reports_sent: AtomicU64,
    pub reports_deferred: AtomicU64,
    pub acks: AtomicU64,
    pub commits: AtomicU64,
    /// Counter changes sent and not yet committed (published) by the aggregator.
    pub commit_backlog: AtomicU64,
    /// Commit-log entries folded in as committed at its bound.
    pub commit_log_overflow: AtomicU64,
    pub sessions: AtomicU64,
    pub connect_failures: AtomicU64,
    pub introspection_errors: AtomicU64,
    /// Connections made without a token because `--token-file` could not be read.
    pub token_read_failures: AtomicU64,
    /// Scrapes whose totals came from introspection's per-card sums (multi-card instances).
    pub multi_card_scrapes: AtomicU64,
    /// The last scrape's network cards and what their sums replaced on the page.
    pub multi_card: std::sync::Mutex<(usize, Vec<crate::multicard::Corrected>)>,
    /// Positions written to the state file, and state file problems by reason
    /// ([`PositionError::REASONS`] order).
    pub state_file_writes: AtomicU64,
    pub state_file_errors: [AtomicU64; 6],
    /// Samples of the pool history kept for the warm-pool advisor, and the span they cover (seconds).
    pub advisor_history_samples: AtomicU64,
    pub advisor_history_seconds: AtomicU64,
}

impl AgentStats {
    pub(crate) fn state_file_error(&self, e: &PositionError) {
        self.state_file_errors[e.index()].fetch_add(1, Ordering::Relaxed);
    }
}

/// The self-metrics as Prometheus text (the shared writer; every sample labelled with the node).
pub fn render(node: &str, s: &AgentStats) -> String {
    let mut out = String::with_capacity(2048);
    let mut page = Page::new(&mut out, &[("node", node)]);
    let counters = [
        ("scrapes_total", "ipamd scrapes attempted", &s.scrapes),
        ("scrape_errors_total", "ipamd scrapes that failed or returned no usable metric", &s.scrape_errors),
        ("bad_lines_total", "ipamd page lines that could not be parsed (skipped)", &s.bad_lines),
        ("invalid_samples_total", "ipamd samples ignored: non-finite or negative counters, duplicates", &s.invalid_samples),
        ("dropped_series_total", "New series dropped at --max-series", &s.dropped_series),
        ("reports_sent_total", "Reports queued to the aggregator", &s.reports_sent),
        (
            "reports_deferred_total",
            "Reports deferred because the stream was full or closed (their changes go in the next one)",
            &s.reports_deferred,
        ),
        ("acks_total", "Reports acknowledged by the aggregator", &s.acks),
        ("commits_total", "Commits received: the aggregator's sinks delivered this node's increments up to a report", &s.commits),
        ("commit_log_overflow_total", "Uncommitted counter changes taken as committed at the commit log's bound", &s.commit_log_overflow),
        ("sessions_total", "Streams opened to the aggregator", &s.sessions),
        ("connect_failures_total", "Failed connection attempts to the aggregator", &s.connect_failures),
        ("introspection_errors_total", "Failed reads of ipamd's introspection endpoint", &s.introspection_errors),
        ("token_read_failures_total", "Streams opened without a token because --token-file could not be read", &s.token_read_failures),
        ("multi_card_scrapes_total", "Scrapes whose IP and ENI totals came from introspection's per-card sums", &s.multi_card_scrapes),
        ("state_file_writes_total", "Committed positions written to the state file (--state-dir)", &s.state_file_writes),
    ];
    for (name, help, v) in counters {
        page.counter(&format!("cni_metrics_agent_{name}"), help, v.load(Ordering::Relaxed));
    }
    let name = "cni_metrics_agent_state_file_errors_total";
    let mut family = page.family(name, Kind::Counter, "State file problems: not used, or not written");
    for (reason, v) in PositionError::REASONS.iter().zip(&s.state_file_errors) {
        family.sample(&[("reason", reason)], v.load(Ordering::Relaxed) as f64);
    }
    let (cards, corrected) = s.multi_card.lock().map(|m| m.clone()).unwrap_or_else(|e| e.into_inner().clone());
    page.gauge("cni_metrics_agent_network_cards", "Network cards in the last introspection read (0: not read)", cards as f64);
    type Get = fn(&crate::multicard::Corrected) -> f64;
    let per_metric: [(&str, &str, Get); 2] = [
        ("cni_metrics_agent_ipamd_page_value", "What the page said for a total the cards' sums replaced", |c| c.page),
        ("cni_metrics_agent_multi_card_correction", "Cards' sum minus the page's value (one card's datastore set the page)", |c| {
            c.cards - c.page
        }),
    ];
    for (name, help, value) in per_metric {
        let mut family = page.family(name, Kind::Gauge, help);
        for c in &corrected {
            family.sample(&[("metric", c.name)], value(c));
        }
    }
    page.gauge(
        "cni_metrics_agent_advisor_history_samples",
        "Samples of the node's pool history kept for the warm-pool advisor (--advisor-window)",
        s.advisor_history_samples.load(Ordering::Relaxed) as f64,
    );
    page.gauge(
        "cni_metrics_agent_advisor_history_seconds",
        "The span of the node's pool history, in seconds",
        s.advisor_history_seconds.load(Ordering::Relaxed) as f64,
    );
    page.gauge(
        "cni_metrics_agent_commit_backlog",
        "Counter changes sent and not yet published by the aggregator",
        s.commit_backlog.load(Ordering::Relaxed) as f64,
    );
    out
}
