//! The agent's own small HTTP endpoint: `/metrics` (its self-metrics: received/sent/errors/discarded),
//! `/healthz` (the process runs) and `/readyz` (ipamd was scraped and the aggregator accepted the
//! stream at least once). `router` is a plain axum `Router`, tested with `oneshot`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::{render, AgentStats};

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
