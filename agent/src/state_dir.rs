//! The state directory (`--state-dir`): at start, the position the node's previous agent run committed
//! (a resume point for when no aggregator has one); after every commit, the new position, written by a
//! background task so the scrape loop never waits for the disk. Every problem is logged once, counted
//! and never fatal. The file's encoding lives in [`crate::position`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use cni_metrics_proto::clock::unix_ms_now;

use crate::commit::CommitLog;
use crate::config::AgentConfig;
use crate::delta::{DeltaEngine, ResumePoints, SeriesKey};
use crate::metrics::AgentStats;
use crate::position::{Position, PositionFile};

/// Open `--state-dir`: read the node's position (a resume point for when no aggregator has one) and
/// check that the directory takes a file. Problems are logged once, counted and never fatal: without a
/// writable directory the agent runs without keeping its position.
pub(crate) async fn open_state_dir(
    cfg: &AgentConfig,
    node: &str,
    stats: &Arc<AgentStats>,
) -> (Option<PositionWriter>, Option<ResumePoints>) {
    let Some(dir) = cfg.state_dir.get() else { return (None, None) };
    let file = PositionFile::new(dir);
    let path = file.path().display().to_string();
    let resume = match file.load(node) {
        Ok(Some(p)) => {
            info!(node, path = %path, series = p.points.len(), ipamd_start_time = p.ipamd_start_time, written_unix_ms = p.written_unix_ms, "state file read: the committed position of the node's previous agent run");
            Some(p.resume_points())
        }
        Ok(None) => {
            info!(node, path = %path, "no state file yet");
            None
        }
        Err(e) => {
            stats.state_file_error(&e);
            warn!(node, path = %path, reason = e.reason(), error = %e, "state file ignored: this run follows the rules without a resume point from it");
            None
        }
    };
    match file.probe() {
        Ok(()) => (Some(PositionWriter::spawn(file, stats.clone(), node.to_owned())), resume),
        Err(e) => {
            stats.state_file_error(&e);
            warn!(node, dir = %dir.display(), reason = e.reason(), error = %e, "the state directory cannot be written: the counting position is not kept on the node");
            (None, resume)
        }
    }
}

/// The committed position, for the state file: every live counter with a committed raw value.
pub(crate) fn save_position(writer: &Option<PositionWriter>, engine: &DeltaEngine, commits: &CommitLog, node: &str) {
    let Some(w) = writer else { return };
    let start = commits.committed_start();
    if start <= 0.0 {
        return;
    }
    let points = engine
        .live_ids()
        .into_iter()
        .filter_map(|id| {
            Some((
                engine.info(id).filter(|i| i.kind == cni_metrics_proto::v1::MetricKind::Counter)?.key.clone(),
                commits.committed_raw(id)?,
            ))
        })
        .collect();
    w.save(Position { node: node.to_owned(), ipamd_start_time: start, written_unix_ms: unix_ms_now(), points });
}

pub(crate) fn position_of_resume(node: &str, r: &ResumePoints) -> Position {
    let mut points: Vec<(SeriesKey, f64)> = r.raw.iter().map(|(k, v)| (k.clone(), *v)).collect();
    points.sort_by(|a, b| a.0.cmp(&b.0));
    Position { node: node.to_owned(), ipamd_start_time: r.ipamd_start_time, written_unix_ms: unix_ms_now(), points }
}

/// Writes positions to the state file off the event loop: the latest position wins, writes never pile up.
pub(crate) struct PositionWriter {
    latest: tokio::sync::watch::Sender<Option<Position>>,
    task: JoinHandle<()>,
}

impl PositionWriter {
    fn spawn(file: PositionFile, stats: Arc<AgentStats>, node: String) -> Self {
        let (latest, mut rx) = tokio::sync::watch::channel::<Option<Position>>(None);
        let task = tokio::spawn(async move {
            let mut failing = false;
            while rx.changed().await.is_ok() {
                let Some(p) = rx.borrow_and_update().clone() else { continue };
                let f = file.clone();
                let result = tokio::task::spawn_blocking(move || f.store(&p)).await;
                match result {
                    Ok(Ok(bytes)) => {
                        stats.state_file_writes.fetch_add(1, Ordering::Relaxed);
                        if std::mem::take(&mut failing) {
                            info!(node = %node, path = %file.path().display(), "state file written again");
                        }
                        debug!(node = %node, bytes, "state file written");
                    }
                    Ok(Err(e)) => {
                        stats.state_file_error(&e);
                        if !std::mem::replace(&mut failing, true) {
                            warn!(node = %node, path = %file.path().display(), reason = e.reason(), error = %e, "cannot write the state file; the previous position stays (a later agent run may count part of the increments again)");
                        }
                    }
                    Err(_) => {}
                }
            }
        });
        Self { latest, task }
    }

    pub(crate) fn save(&self, p: Position) {
        self.latest.send_replace(Some(p));
    }

    /// Write what is pending and stop, within `grace`.
    pub(crate) async fn finish(self, grace: Duration) {
        let Self { latest, mut task } = self;
        drop(latest);
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            task.abort();
        }
    }
}
