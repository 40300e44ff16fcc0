//! The agent's counting position on the node: the ipamd raw value of every counter series at the last
//! `Commit`, kept in one small file under `--state-dir` (a `hostPath`), the way log shippers keep their
//! read offsets. A new agent run that no aggregator can give a resume point (both restarted: every
//! upgrade) resumes from it, so what ipamd counted while no agent ran is counted once.
//!
//! Why the file never counts twice: it holds the position of the last *commit*, i.e. of what every sink
//! has delivered. What was applied but not committed is either still held by a live aggregator (whose
//! resume point then wins: it is newer) or died with the aggregator that held it (and was never
//! published). An aggregator withholds the increments of a keeping run whose stream is gone
//! (`Hello.keeps_position`), so it never publishes what this file cannot learn about.
//!
//! The file: JSON, `{"format":1,"node":…,"ipamd_start_time_seconds":…,"written_unix_ms":…,"series":
//! [{"name":…,"labels":[[n,v],…],"raw":…}]}`. Written after a commit, atomically (temporary file, fsync,
//! rename, fsync of the directory), by one writer task off the scrape path; bounded in size. A file that
//! is corrupt, truncated, of another node, of a future format or too large is refused with a bounded
//! [`PositionError::reason`] and ignored: the run then follows the rules without a resume point.
//!
//! Decoding and encoding are pure; [`PositionFile`] does the I/O.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::delta::{ResumePoints, SeriesKey};

/// The format this agent writes; files of a higher format are refused (a downgrade keeps running).
pub const FORMAT: u32 = 1;
/// Bound of the file: far above a real node's counters (about 20 series, 2 KB), far below memory concerns.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Most series a file may hold (the agent's own `--max-series` default is 2,000).
pub const MAX_SERIES: usize = 10_000;
const FILE_NAME: &str = "position.json";

/// Where counting stood at the last commit.
#[derive(Clone, Debug, PartialEq)]
pub struct Position {
    pub node: String,
    pub ipamd_start_time: f64,
    pub written_unix_ms: i64,
    /// Counter series (after the node fold) and ipamd's raw value at the commit.
    pub points: Vec<(SeriesKey, f64)>,
}

impl Position {
    /// The position as a resume point for the delta engine.
    pub fn resume_points(&self) -> ResumePoints {
        ResumePoints { ipamd_start_time: self.ipamd_start_time, raw: self.points.iter().cloned().collect::<HashMap<_, _>>() }
    }
}

/// Why a position file was not used or not written. Bounded: a metric label.
#[derive(Debug, thiserror::Error)]
pub enum PositionError {
    #[error("cannot be parsed (corrupt or truncated): {0}")]
    Corrupt(String),
    #[error("is of format {0}, newer than this agent's {FORMAT}")]
    FutureFormat(u32),
    #[error("belongs to node {found:?}, not to this node")]
    ForeignNode { found: String },
    #[error("is larger than {MAX_FILE_BYTES} bytes or holds more than {MAX_SERIES} series")]
    TooLarge,
    #[error("cannot be read: {0}")]
    Unreadable(std::io::Error),
    #[error("cannot be written: {0}")]
    Unwritable(std::io::Error),
}

impl PositionError {
    /// The reason's place in [`PositionError::REASONS`] (the agent's counter slot).
    pub fn index(&self) -> usize {
        match self {
            PositionError::Corrupt(_) => 0,
            PositionError::FutureFormat(_) => 1,
            PositionError::ForeignNode { .. } => 2,
            PositionError::TooLarge => 3,
            PositionError::Unreadable(_) => 4,
            PositionError::Unwritable(_) => 5,
        }
    }

    pub fn reason(&self) -> &'static str {
        Self::REASONS[self.index()]
    }

    /// Every reason, for exposition (zeros included).
    pub const REASONS: [&'static str; 6] = ["corrupt", "future_format", "foreign_node", "too_large", "unreadable", "unwritable"];
}

#[derive(Serialize, Deserialize)]
struct FileV1 {
    format: u32,
    node: String,
    ipamd_start_time_seconds: f64,
    written_unix_ms: i64,
    series: Vec<PointV1>,
}

#[derive(Serialize, Deserialize)]
struct PointV1 {
    name: String,
    labels: Vec<(String, String)>,
    raw: f64,
}

/// Only the format field, read first so a future format is told from a corrupt file.
#[derive(Deserialize)]
struct Header {
    format: u32,
}

/// Encode a position (one line of JSON).
pub fn encode(p: &Position) -> String {
    let file = FileV1 {
        format: FORMAT,
        node: p.node.clone(),
        ipamd_start_time_seconds: p.ipamd_start_time,
        written_unix_ms: p.written_unix_ms,
        series: p.points.iter().map(|(k, raw)| PointV1 { name: k.name.clone(), labels: k.labels.clone(), raw: *raw }).collect(),
    };
    let mut s = serde_json::to_string(&file).unwrap_or_default();
    s.push('\n');
    s
}

/// Decode and validate a position file of `node`.
pub fn decode(text: &str, node: &str) -> Result<Position, PositionError> {
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(PositionError::TooLarge);
    }
    let header: Header = serde_json::from_str(text).map_err(|e| PositionError::Corrupt(e.to_string()))?;
    if header.format > FORMAT {
        return Err(PositionError::FutureFormat(header.format));
    }
    if header.format != FORMAT {
        return Err(PositionError::Corrupt(format!("unknown format {}", header.format)));
    }
    let f: FileV1 = serde_json::from_str(text).map_err(|e| PositionError::Corrupt(e.to_string()))?;
    if f.node != node {
        return Err(PositionError::ForeignNode { found: f.node });
    }
    if f.series.len() > MAX_SERIES {
        return Err(PositionError::TooLarge);
    }
    if !(f.ipamd_start_time_seconds.is_finite() && f.ipamd_start_time_seconds > 0.0) {
        return Err(PositionError::Corrupt(format!("ipamd start time {}", f.ipamd_start_time_seconds)));
    }
    let mut points = Vec::with_capacity(f.series.len());
    for p in f.series {
        if !(p.raw.is_finite() && p.raw >= 0.0) || p.name.is_empty() {
            return Err(PositionError::Corrupt(format!("series {:?} with raw value {}", p.name, p.raw)));
        }
        let mut labels = p.labels;
        labels.sort_unstable();
        points.push((SeriesKey { name: p.name, labels }, p.raw));
    }
    Ok(Position { node: f.node, ipamd_start_time: f.ipamd_start_time_seconds, written_unix_ms: f.written_unix_ms, points })
}

/// The position file in a state directory.
#[derive(Clone, Debug)]
pub struct PositionFile {
    dir: PathBuf,
    path: PathBuf,
}

impl PositionFile {
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_owned(), path: dir.join(FILE_NAME) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Read the node's position; `Ok(None)` when there is no file yet.
    pub fn load(&self, node: &str) -> Result<Option<Position>, PositionError> {
        match std::fs::metadata(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(PositionError::Unreadable(e)),
            Ok(m) if m.len() > MAX_FILE_BYTES => return Err(PositionError::TooLarge),
            Ok(_) => {}
        }
        let bytes = std::fs::read(&self.path).map_err(PositionError::Unreadable)?;
        let text = std::str::from_utf8(&bytes).map_err(|e| PositionError::Corrupt(e.to_string()))?;
        decode(text, node).map(Some)
    }

    /// Check at start that the directory takes a file (created if missing), without touching the
    /// position itself.
    pub fn probe(&self) -> Result<(), PositionError> {
        std::fs::create_dir_all(&self.dir).map_err(PositionError::Unwritable)?;
        let probe = self.dir.join(".probe");
        let r = std::fs::write(&probe, b"probe").map_err(PositionError::Unwritable);
        let _ = std::fs::remove_file(&probe);
        r
    }

    /// Replace the file atomically: write a temporary file, fsync it, rename it over, fsync the directory.
    pub fn store(&self, p: &Position) -> Result<usize, PositionError> {
        let text = encode(p);
        let tmp = self.dir.join(format!(".{FILE_NAME}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, &self.path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            PositionError::Unwritable(e)
        })?;
        Ok(text.len())
    }
}

/// Create `dir` and give it to `owner` (`uid:gid`), mode 0700 (`--prepare-state-dir`).
pub fn prepare_dir(dir: &Path, owner: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    let (uid, gid) = owner
        .split_once(':')
        .and_then(|(u, g)| Some((u.trim().parse::<u32>().ok()?, g.trim().parse::<u32>().ok()?)))
        .ok_or_else(|| format!("--prepare-state-dir takes uid:gid (e.g. 65534:65534), got {owner:?}"))?;
    if dir.as_os_str().is_empty() {
        return Err("--prepare-state-dir needs --state-dir (STATE_DIR)".into());
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(|e| format!("cannot give {} to {uid}:{gid}: {e}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("cannot set the mode of {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, labels: &[(&str, &str)]) -> SeriesKey {
        SeriesKey { name: name.into(), labels: labels.iter().map(|(n, v)| ((*n).into(), (*v).into())).collect() }
    }

    fn position() -> Position {
        Position {
            node: "ip-10-0-1-17.eu-west-1.compute.internal".into(),
            ipamd_start_time: 1_764_000_000.5,
            written_unix_ms: 1_764_000_100_000,
            points: vec![
                (key("awscni_add_ip_req_count", &[]), 42.0),
                (key("awscni_aws_api_error_count", &[("api", "CreateNetworkInterface"), ("error", "a\"b}=\nc")]), 3.0),
            ],
        }
    }

    #[test]
    fn round_trip() {
        let p = position();
        let text = encode(&p);
        assert_eq!(decode(&text, &p.node).ok(), Some(p.clone()));
        let r = p.resume_points();
        assert_eq!(r.ipamd_start_time, 1_764_000_000.5);
        assert_eq!(r.raw.get(&key("awscni_add_ip_req_count", &[])), Some(&42.0));
    }

    #[test]
    fn refusals_have_reasons() {
        let p = position();
        let text = encode(&p);
        let cases: Vec<(String, &str, &str)> = vec![
            (text[..text.len() / 2].to_owned(), p.node.as_str(), "corrupt"),
            (String::new(), p.node.as_str(), "corrupt"),
            ("garbage".into(), p.node.as_str(), "corrupt"),
            (text.replace("\"format\":1", "\"format\":2"), p.node.as_str(), "future_format"),
            (text.replace("\"format\":1", "\"format\":0"), p.node.as_str(), "corrupt"),
            (text.clone(), "another-node", "foreign_node"),
            (text.replace("42.0", "-1.0"), p.node.as_str(), "corrupt"),
            (text.replace("1764000000.5", "0.0"), p.node.as_str(), "corrupt"),
            (" ".repeat(MAX_FILE_BYTES as usize + 1), p.node.as_str(), "too_large"),
        ];
        for (text, node, reason) in cases {
            let got = decode(&text, node).map(|_| ()).map_err(|e| e.reason());
            assert_eq!(got, Err(reason), "{}", &text[..text.len().min(80)]);
        }
    }

    #[test]
    fn prepare_dir_hands_the_directory_to_the_agents_user() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = std::env::temp_dir().join(format!("cni-prepare-{}-{}", std::process::id(), fastrand::u64(..)));
        for bad in ["", "65534", "a:b", "1:-2"] {
            assert!(prepare_dir(&dir, bad).is_err_and(|e| e.contains("uid:gid")), "{bad:?}");
        }
        assert!(prepare_dir(Path::new(""), "1:1").is_err_and(|e| e.contains("--state-dir")));
        assert!(std::fs::create_dir_all(&dir).is_ok());
        // What we create is ours: owned by root exactly when the test runs as root.
        let root = std::fs::metadata(&dir).is_ok_and(|m| m.uid() == 0);
        let r = prepare_dir(&dir.join("state"), "65534:65534");
        if root {
            assert_eq!(r, Ok(()));
            let m = std::fs::metadata(dir.join("state")).map(|m| (m.uid(), m.gid(), m.mode() & 0o777)).ok();
            assert_eq!(m, Some((65534, 65534, 0o700)));
        } else {
            assert!(r.is_err_and(|e| e.contains("cannot give")), "only root may hand a directory to another user");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn store_replaces_atomically_and_load_reads_it_back() {
        let dir = std::env::temp_dir().join(format!("cni-position-{}-{}", std::process::id(), fastrand::u64(..)));
        let f = PositionFile::new(&dir);
        assert!(matches!(f.load("n"), Ok(None)), "no file yet");
        assert!(f.probe().is_ok());
        let mut p = position();
        let n = f.store(&p).map_err(|e| e.to_string());
        assert!(n.as_ref().is_ok_and(|n| *n < 512), "{n:?}");
        p.points[0].1 = 43.0;
        assert!(f.store(&p).is_ok());
        assert_eq!(f.load(&p.node).ok().flatten(), Some(p.clone()));
        let names: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        assert_eq!(names, vec!["position.json".to_owned()], "no temporary file left");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
