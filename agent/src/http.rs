//! The agent's own small HTTP endpoint: `/metrics` (its self-metrics: received/sent/errors/discarded),
//! `/healthz` (the process runs) and `/readyz` (ipamd was scraped and the aggregator accepted the
//! stream at least once). `router` is a plain axum `Router`, tested with `oneshot`.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::run::AgentStats;

#[derive(Clone)]
pub struct AgentHttp {
    pub node: Arc<str>,
    pub stats: Arc<AgentStats>,
}

pub fn router(state: AgentHttp) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// The self-metrics as Prometheus text.
pub fn render(node: &str, s: &AgentStats) -> String {
    let mut out = String::with_capacity(2048);
    let node = node.replace('\\', "\\\\").replace('"', "\\\"");
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
        ("state_file_writes_total", "Committed positions written to the state file (--state-dir)", &s.state_file_writes),
    ];
    for (name, help, v) in counters {
        let _ = writeln!(
            out,
            "# HELP cni_metrics_agent_{name} {help}\n# TYPE cni_metrics_agent_{name} counter\ncni_metrics_agent_{name}{{node=\"{node}\"}} {}",
            v.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(out, "# HELP cni_metrics_agent_state_file_errors_total State file problems: not used, or not written\n# TYPE cni_metrics_agent_state_file_errors_total counter");
    for (reason, v) in crate::position::PositionError::REASONS.iter().zip(&s.state_file_errors) {
        let _ =
            writeln!(out, "cni_metrics_agent_state_file_errors_total{{node=\"{node}\",reason=\"{reason}\"}} {}", v.load(Ordering::Relaxed));
    }
    let _ = writeln!(
        out,
        "# HELP cni_metrics_agent_commit_backlog Counter changes sent and not yet published by the aggregator\n# TYPE cni_metrics_agent_commit_backlog gauge\ncni_metrics_agent_commit_backlog{{node=\"{node}\"}} {}",
        s.commit_backlog.load(Ordering::Relaxed)
    );
    out
}

async fn metrics(State(st): State<AgentHttp>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], render(&st.node, &st.stats))
}

async fn readyz(State(st): State<AgentHttp>) -> impl IntoResponse {
    let scraped = st.stats.scrapes.load(Ordering::Relaxed) > st.stats.scrape_errors.load(Ordering::Relaxed);
    let connected = st.stats.acks.load(Ordering::Relaxed) > 0;
    match (scraped, connected) {
        (true, true) => (StatusCode::OK, "ready\n"),
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "no successful ipamd scrape yet\n"),
        (true, false) => (StatusCode::SERVICE_UNAVAILABLE, "the aggregator has not acknowledged a report yet\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get_text(app: Router, path: &str) -> (StatusCode, String) {
        let resp = match app.oneshot(Request::get(path).body(Body::empty()).unwrap_or_default()).await {
            Ok(r) => r,
            Err(e) => match e {},
        };
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap_or_default();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn endpoints() {
        let stats = Arc::new(AgentStats::default());
        let app = || router(AgentHttp { node: Arc::from("n\"1"), stats: stats.clone() });
        assert_eq!(get_text(app(), "/healthz").await, (StatusCode::OK, "ok\n".into()));
        assert_eq!(get_text(app(), "/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
        stats.scrapes.fetch_add(3, Ordering::Relaxed);
        stats.scrape_errors.fetch_add(1, Ordering::Relaxed);
        stats.acks.fetch_add(1, Ordering::Relaxed);
        assert_eq!(get_text(app(), "/readyz").await, (StatusCode::OK, "ready\n".into()));
        let (_, body) = get_text(app(), "/metrics").await;
        assert!(body.contains("cni_metrics_agent_scrapes_total{node=\"n\\\"1\"} 3\n"), "{body}");
        assert!(body.contains("# TYPE cni_metrics_agent_scrape_errors_total counter\n"), "{body}");
    }
}
