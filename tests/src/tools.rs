//! The tools tests use beside the project's binaries: programs on `PATH`, the repository, the Python
//! test environment (moto, cbor2, PyYAML), kustomize renders, and the XML of AWS query answers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{anyhow, Context, Result};

use crate::proc::scratch_dir;

/// The path of `program` on `PATH`, if it is installed.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(program)).find(|p| p.is_file())
}

/// The repository root (for test support files).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The Python of the test venv with moto and cbor2, created on first use by `tests/support/setup-venv.sh`.
pub fn test_python() -> Result<&'static Path> {
    static PY: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    PY.get_or_init(|| {
        let root = repo_root();
        let venv = std::env::var("CNI_METRICS_TEST_VENV").map(PathBuf::from).unwrap_or_else(|_| root.join("target/test-venv"));
        let status = Command::new("bash")
            .arg(root.join("tests/support/setup-venv.sh"))
            .env("CNI_METRICS_TEST_VENV", &venv)
            .status()
            .map_err(|e| format!("cannot run setup-venv.sh: {e}"))?;
        if !status.success() {
            return Err(format!("tests/support/setup-venv.sh failed ({status}): moto and cbor2 are needed from PyPI"));
        }
        Ok(venv.join("bin/python"))
    })
    .as_deref()
    .map_err(|e| anyhow!("{e}"))
}

/// Render `deploy/overlays/<overlay>` with `kubectl kustomize`: the YAML, its documents as JSON, and the
/// file it was written to (in a scratch directory).
pub fn render_overlay(overlay: &str) -> Result<(String, Vec<serde_json::Value>, PathBuf)> {
    let dir = repo_root().join("deploy/overlays").join(overlay);
    let out =
        Command::new("kubectl").arg("kustomize").arg(&dir).output().context("kubectl (kustomize) is needed for the manifest tests")?;
    anyhow::ensure!(out.status.success(), "kubectl kustomize {overlay}: {}", String::from_utf8_lossy(&out.stderr));
    let yaml = String::from_utf8(out.stdout)?;
    let scratch = scratch_dir(&format!("render-{overlay}"))?;
    let file = scratch.join(format!("{overlay}.yaml"));
    std::fs::write(&file, &yaml)?;
    let docs = crate::kube::yaml_docs(&yaml)?;
    Ok((yaml, docs, file))
}

/// The text of the first `<tag>…</tag>` in an XML answer.
pub fn xml_field<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(&xml[start..end])
}
