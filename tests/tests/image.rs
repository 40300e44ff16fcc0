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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_scratch_nonroot_and_run() -> Result<()> {
    if Command::new("buildah").arg("--version").output().is_err() {
        println!("SKIPPED images_are_scratch_nonroot_and_run: buildah is not installed (apt-get install buildah)");
        return Ok(());
    }
    let root = repo_root();
    let out = Command::new("bash").arg(root.join("scripts/build-images.sh")).output()?;
    ensure!(
        out.status.success(),
        "build-images.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = scratch_dir("image")?;
    for (name, files) in
        [("agent", vec!["cni-metrics-agent"]), ("aggregator", vec!["cni-metrics-aggregator", "etc/ssl/certs/ca-certificates.crt"])]
    {
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
        if name == "aggregator" {
            let demo = Command::new(rootfs.join("cni-metrics-aggregator")).arg("demo").output()?;
            ensure!(!demo.status.success(), "the production aggregator is built without the demo");
        }
    }
    run_from_images(&dir).await
}

/// Run both binaries from their images' root filesystems in a chroot, as user 65534, against a fake
/// ipamd: the node must show up in the aggregator.
async fn run_from_images(dir: &Path) -> Result<()> {
    if Command::new("chroot").arg("--help").output().is_err() || !nix_root() {
        println!("SKIPPED run_from_images: chroot needs root");
        return Ok(());
    }
    let sim = cni_metrics_testkit::sim::SimIpamd::new(cni_metrics_testkit::sim::PageStyle::Modern, 3, 1.0);
    let fake = cni_metrics_testkit::FakeIpamd::start(sim, std::net::SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let grpc = cni_metrics_e2e::free_port()?;
    let http = cni_metrics_e2e::free_port()?;
    let chroot = |name: &str, args: &[String]| -> Result<std::process::Child> {
        let log = std::fs::File::create(dir.join(format!("{name}.chroot.log")))?;
        let chroot_bin =
            ["/usr/sbin/chroot", "/usr/bin/chroot", "/sbin/chroot"].into_iter().find(|p| Path::new(p).exists()).unwrap_or("chroot");
        Ok(Command::new(chroot_bin)
            .arg("--userspec=65534:65534")
            .arg(dir.join(name).join("rootfs"))
            .arg(format!("/cni-metrics-{name}"))
            .args(args)
            .env_clear()
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?)
    };
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    let mut agg = chroot(
        "aggregator",
        &s(&["--grpc-listen", &format!("127.0.0.1:{grpc}"), "--http-listen", &format!("127.0.0.1:{http}"), "--cluster-id", "image"]),
    )?;
    let mut agent = chroot(
        "agent",
        &s(&[
            "--ipamd-url",
            &fake.url(),
            "--aggregator",
            &format!("http://127.0.0.1:{grpc}"),
            "--node-name",
            "image-node",
            "--interval",
            "200ms",
            "--imds",
            "false",
            "--http-listen",
            "",
            "--introspection-url",
            "",
        ]),
    )?;
    let result = cni_metrics_e2e::eventually(std::time::Duration::from_secs(20), || async {
        let page = reqwest::get(format!("http://127.0.0.1:{http}/metrics")).await?.text().await?;
        let got = page.lines().find(|l| l.starts_with("cni_metrics_nodes_reporting{")).map(str::to_owned);
        Ok(if got.as_deref() == Some("cni_metrics_nodes_reporting{cluster_id=\"image\"} 1") { Ok(()) } else { Err(format!("{got:?}")) })
    })
    .await;
    let _ = agent.kill();
    let _ = agg.kill();
    let _ = agent.wait();
    let _ = agg.wait();
    result.with_context(|| std::fs::read_to_string(dir.join("agent.chroot.log")).unwrap_or_default())
}

fn nix_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}
