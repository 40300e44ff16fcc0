//! The HTTP face of the aggregator: `/metrics` (Prometheus text 0.0.4: cluster aggregates under ipamd's
//! family names with a `cluster_id` label, plus `cni_metrics_*` self-metrics), `/healthz` and `/readyz`.
//! `router(state)` is a plain axum `Router`, so handlers are tested with `oneshot`, no socket needed.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use cni_metrics_proto::exposition::Page;
use cni_metrics_proto::flags::parse_switch;

use crate::publish::PublishStats;
use crate::sinks::Sink;
use crate::state::StateHandle;

/// `serve`'s flag for Prometheus.
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Prometheus")]
pub struct PrometheusArgs {
    /// Serve the cluster aggregates on /metrics (the aggregator's own metrics are always served).
    #[arg(long, env = "USE_PROMETHEUS", default_value = "true", value_parser = parse_switch, action = clap::ArgAction::Set)]
    pub prometheus: bool,
}

#[derive(Clone)]
pub struct HttpState {
    pub cluster: StateHandle,
    pub publish: Arc<Mutex<PublishStats>>,
    /// Whether `/metrics` serves the cluster aggregates (`USE_PROMETHEUS`); self-metrics always.
    pub prometheus: bool,
    pub sinks: Vec<Arc<dyn Sink>>,
    /// What the gRPC listener counted, and whether it requires mutual TLS.
    pub connections: Arc<crate::listen::ConnectionStats>,
    pub tls: bool,
    /// The agent token verifier, in `--agent-auth token` mode.
    pub auth: Option<Arc<crate::auth::TokenAuth>>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(st): State<HttpState>) -> impl IntoResponse {
    let mut out = String::with_capacity(16 * 1024);
    // Copy under the lock, write the text after it: ingestion waits only for the copy.
    let (view, cluster_id) = st.cluster.metrics_copy(st.prometheus);
    if let Some(view) = view {
        view.render(&mut out);
    }
    let mut page = Page::new(&mut out, &[("cluster_id", &cluster_id)]);
    st.publish.lock().unwrap_or_else(|e| e.into_inner()).render(&mut page);
    for sink in &st.sinks {
        sink.render_metrics(&mut page);
    }
    st.connections.render(&mut page, st.tls);
    if let Some(auth) = &st.auth {
        auth.render(&mut page);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out)
}

/// Ready when every sink is healthy (e.g. the last PutMetricData succeeded).
async fn readyz(State(st): State<HttpState>) -> impl IntoResponse {
    let nodes = st.cluster.read(|c| c.node_count());
    let problems: Vec<String> = st.sinks.iter().filter_map(|s| s.readiness().err()).collect();
    if problems.is_empty() {
        (StatusCode::OK, format!("ready: {nodes} nodes\n"))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", problems.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateConfig;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    fn app() -> Router {
        let cluster = StateHandle::new(StateConfig { cluster_id: "c1".into(), ..StateConfig::default() });
        router(HttpState {
            cluster,
            publish: Arc::default(),
            prometheus: true,
            sinks: Vec::new(),
            connections: Arc::default(),
            tls: false,
            auth: None,
        })
    }

    async fn get_text(path: &str) -> (StatusCode, String, Option<String>) {
        let resp = match app().oneshot(Request::get(path).body(Body::empty()).unwrap_or_default()).await {
            Ok(r) => r,
            Err(e) => match e {},
        };
        let status = resp.status();
        let ct = resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap_or_default();
        (status, String::from_utf8_lossy(&bytes).into_owned(), ct)
    }

    #[tokio::test]
    async fn endpoints() {
        let (s, body, ct) = get_text("/metrics").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(ct.as_deref(), Some("text/plain; version=0.0.4; charset=utf-8"));
        assert!(body.contains("cni_metrics_nodes_reporting{cluster_id=\"c1\"} 0"), "{body}");
        assert!(body.contains("cni_metrics_publish_windows_total{cluster_id=\"c1\"} 0"), "{body}");
        let (s, body, _) = get_text("/healthz").await;
        assert_eq!((s, body.as_str()), (StatusCode::OK, "ok\n"));
        let (s, body, _) = get_text("/readyz").await;
        assert_eq!((s, body.as_str()), (StatusCode::OK, "ready: 0 nodes\n"));
        let (s, _, _) = get_text("/nope").await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }
}
