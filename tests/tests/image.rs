//! Container images, built daemonless with `scripts/build-images.sh` (static binaries + buildah from
//! `scratch`): the exported OCI archives have the expected user, entrypoint and labels, hold nothing but
//! the binary (and the CA bundle for the aggregator), and the binary runs from the extracted image.
//! Skipped, with the reason printed, where buildah is not installed (.ci/run installs it).

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use cni_metrics_e2e::{repo_root, scratch_dir};
use serde_json::Value;

fn blob(layout: &Path, digest: &str) -> Result<Vec<u8>> {
    let hex = digest.strip_prefix("sha256:").context("digest")?;
    Ok(std::fs::read(layout.join("blobs/sha256").join(hex))?)
}

#[test]
fn images_are_scratch_nonroot_and_run() -> Result<()> {
    if Command::new("buildah").arg("--version").output().is_err() {
        println!("SKIPPED images_are_scratch_nonroot_and_run: buildah is not installed (apt-get install buildah)");
        return Ok(());
    }
    let root = repo_root();
    let out = Command::new("bash").arg(root.join("scripts/build-images.sh")).output()?;
    ensure!(out.status.success(), "build-images.sh failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let dir = scratch_dir("image")?;
    for (name, files) in [("agent", vec!["cni-metrics-agent"]), ("aggregator", vec!["cni-metrics-aggregator", "etc/ssl/certs/ca-certificates.crt"])] {
        let layout = dir.join(name);
        std::fs::create_dir_all(&layout)?;
        let archive = root.join(format!("target/images/cni-metrics-{name}.tar"));
        ensure!(Command::new("tar").arg("-xf").arg(&archive).arg("-C").arg(&layout).status()?.success(), "untar {name}");
        let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
        let manifest: Value = serde_json::from_slice(&blob(&layout, index["manifests"][0]["digest"].as_str().context("manifest")?)?)?;
        let config: Value = serde_json::from_slice(&blob(&layout, manifest["config"]["digest"].as_str().context("config")?)?)?;
        let c = &config["config"];
        ensure!(c["User"] == "65534:65534", "{name}: user {}", c["User"]);
        ensure!(c["Entrypoint"] == serde_json::json!([format!("/cni-metrics-{name}")]), "{name}: entrypoint {}", c["Entrypoint"]);
        ensure!(c["Labels"]["org.opencontainers.image.title"] == format!("cni-metrics-{name}"), "{name}: labels {}", c["Labels"]);
        // The layers hold only the expected files: no shell, no libc.
        let rootfs = layout.join("rootfs");
        std::fs::create_dir_all(&rootfs)?;
        for layer in manifest["layers"].as_array().context("layers")? {
            let path = layout.join("blobs/sha256").join(layer["digest"].as_str().unwrap_or("").trim_start_matches("sha256:"));
            ensure!(Command::new("tar").arg("-xf").arg(&path).arg("-C").arg(&rootfs).status()?.success(), "untar layer");
        }
        let mut found = Vec::new();
        let mut stack = vec![rootfs.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d)? {
                let p = e?.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    found.push(p.strip_prefix(&rootfs)?.to_string_lossy().into_owned());
                }
            }
        }
        found.sort();
        let mut want: Vec<String> = files.iter().map(|f| (*f).to_owned()).collect();
        want.sort();
        ensure!(found == want, "{name}: image files {found:?}");
        let run = Command::new(rootfs.join(format!("cni-metrics-{name}"))).arg("--version").output()?;
        let version = String::from_utf8_lossy(&run.stdout).into_owned();
        ensure!(run.status.success() && version.starts_with(&format!("cni-metrics-{name} ")), "{name}: --version printed {version:?}");
        println!("{name}: {} bytes compressed, {version}", std::fs::metadata(&archive)?.len());
    }
    Ok(())
}
