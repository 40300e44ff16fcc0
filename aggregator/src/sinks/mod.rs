//! Where publish windows go. A sink is a name, an async `publish` of one window (deliver it, or queue
//! it for a delivery task of its own) and how far it has resolved what it was given
//! ([`Sink::delivered_through`]), which the publisher turns into commits. Sinks: [`stdout`] (one line
//! per datum, for dry runs) and [`cloudwatch`].

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::state::Window;

pub mod cloudwatch;
pub mod stdout;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("write failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A destination of publish windows.
pub trait Sink: Send + Sync {
    fn name(&self) -> &'static str;
    /// Take window `seq` (the publisher's numbering: 1, 2, …): deliver it, or queue it for a delivery
    /// task of the sink's own.
    fn publish<'a>(&'a self, seq: u64, window: &'a Window) -> BoxFuture<'a, Result<(), SinkError>>;
    /// The highest window `seq` up to which every window handed over is resolved: delivered, or dropped
    /// and counted. Sinks that deliver inside `publish` resolve everything (`u64::MAX`).
    fn delivered_through(&self) -> u64 {
        u64::MAX
    }
    /// At shutdown: deliver what is still queued within `grace`.
    fn close(&self, _grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    /// For `/readyz`: why the sink is not healthy, if it is not.
    fn readiness(&self) -> Result<(), String> {
        Ok(())
    }
    /// Append the sink's self-metrics to `/metrics`.
    fn render_metrics(&self, _page: &mut cni_metrics_proto::exposition::Page<'_>) {}
}
