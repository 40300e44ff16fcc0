//! [`FakeIpamd`]: a real HTTP server on loopback serving one simulated ipamd's `/metrics` and
//! `/v1/enis` (from [`crate::sim`]), with switchable failure modes (garbage, HTTP errors, hangs, huge
//! bodies, a fixed page). The demo, the benchmarks and the end-to-end tests scrape it as they would ipamd.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::sim::SimIpamd;

/// How a fake ipamd answers.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    /// The simulated page.
    Normal,
    /// A binary/HTML garbage body with status 200.
    Garbage,
    /// An HTTP error status.
    Status(u16),
    /// Wait this long before answering.
    Slow(Duration),
    /// A body of this many bytes.
    Huge(usize),
    /// This exact page.
    Page(String),
}

struct Fake {
    sim: Mutex<SimIpamd>,
    mode: Mutex<Mode>,
    /// The simulator as of the last page served in [`Mode::Normal`]: what the agent last read.
    served: Mutex<Option<SimIpamd>>,
}

/// A real HTTP server on loopback serving one simulated ipamd's `/metrics`.
pub struct FakeIpamd {
    pub addr: SocketAddr,
    inner: Arc<Fake>,
    task: JoinHandle<()>,
}

impl FakeIpamd {
    /// Serve `sim` on `addr` (use port 0 for a free one).
    pub async fn start(sim: SimIpamd, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Fake { sim: Mutex::new(sim), mode: Mutex::new(Mode::Normal), served: Mutex::new(None) });
        let app = Router::new().route("/metrics", get(page)).route("/v1/enis", get(enis)).with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, inner, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}/metrics", self.addr)
    }

    /// The introspection endpoint (`/v1/enis`).
    pub fn enis_url(&self) -> String {
        format!("http://{}/v1/enis", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.inner.mode.lock().unwrap_or_else(|e| e.into_inner()) = mode;
    }

    /// Run `f` on the simulator (step it, restart it, read its truth).
    pub fn with_sim<T>(&self, f: impl FnOnce(&mut SimIpamd) -> T) -> T {
        f(&mut self.inner.sim.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Read the simulator as of the last simulated page served (the truth the agent last saw; `None`
    /// before the first).
    pub fn last_served<T>(&self, f: impl FnOnce(&SimIpamd) -> T) -> Option<T> {
        self.inner.served.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(f)
    }

    /// Stop serving: further scrapes get "connection refused".
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for FakeIpamd {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn enis(State(f): State<Arc<Fake>>) -> Response {
    let text = f.sim.lock().unwrap_or_else(|e| e.into_inner()).render_enis();
    ([(header::CONTENT_TYPE, "application/json")], text).into_response()
}

async fn page(State(f): State<Arc<Fake>>) -> Response {
    let mode = f.mode.lock().unwrap_or_else(|e| e.into_inner()).clone();
    match mode {
        Mode::Normal => {}
        Mode::Garbage => {
            let mut body = b"<html><body>502 Bad Gateway</body></html>\n\x00\x01\xff\xfe binary {{{ \"".to_vec();
            body.extend((0u8..=255).cycle().take(4096));
            return (StatusCode::OK, body).into_response();
        }
        Mode::Status(code) => return StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR).into_response(),
        Mode::Slow(d) => tokio::time::sleep(d).await,
        Mode::Huge(n) => return (StatusCode::OK, "# padding\n".repeat(n / 10 + 1)).into_response(),
        Mode::Page(text) => return (StatusCode::OK, text).into_response(),
    }
    let text = {
        let sim = f.sim.lock().unwrap_or_else(|e| e.into_inner());
        *f.served.lock().unwrap_or_else(|e| e.into_inner()) = Some(sim.clone());
        sim.render()
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}
