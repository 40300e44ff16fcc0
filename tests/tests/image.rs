//! Container images, built daemonless with `scripts/build-images.sh` (static binaries for amd64 and
//! arm64 + buildah from `scratch`): each exported OCI archive is one image index with a linux/amd64 and a
//! linux/arm64 manifest; each has the expected user, entrypoint and labels (the compiler that built it
//! among them), holds nothing but the binary (and the CA bundle for the aggregator), a static ELF file
//! of its architecture that runs (arm64 under qemu-aarch64-static); the indexes push to a real registry
//! as one tag each; and the amd64 binaries run from their extracted images.
//! Skipped, with the reason printed, where buildah is not installed (.ci/run installs it).

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use cni_metrics_e2e::{repo_root, scratch_dir, which};
use serde_json::Value;

fn blob(layout: &Path, digest: &str) -> Result<Vec<u8>> {
    let hex = digest.strip_prefix("sha256:").context("digest")?;
    Ok(std::fs::read(layout.join("blobs/sha256").join(hex))?)
}

fn json_blob(layout: &Path, digest: &Value) -> Result<Value> {
    Ok(serde_json::from_slice(&blob(layout, digest.as_str().context("digest")?)?)?)
}

/// The ELF machine (`e_machine`) of a binary and whether it asks for an interpreter (dynamic linking),
/// read from its headers (64-bit little-endian ELF).
fn elf_facts(bytes: &[u8]) -> Result<(u16, bool)> {
    ensure!(bytes.len() > 64 && &bytes[..4] == b"\x7fELF" && bytes[4] == 2 && bytes[5] == 1, "not a 64-bit little-endian ELF file");
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let machine = u16_at(18);
    let phoff = usize::try_from(u64::from_le_bytes(bytes[32..40].try_into()?))?;
    let (phentsize, phnum) = (usize::from(u16_at(54)), usize::from(u16_at(56)));
    const PT_INTERP: u32 = 3;
    let interp = (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        bytes.get(o..o + 4).is_some_and(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]) == PT_INTERP)
    });
    Ok((machine, interp))
}

/// (OCI architecture, ELF machine).
const PLATFORMS: [(&str, u16); 2] = [("amd64", 62), ("arm64", 183)];

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
    println!("{}", String::from_utf8_lossy(&out.stdout));
    let dir = scratch_dir("image")?;
    for (name, files) in
        [("agent", vec!["cni-metrics-agent"]), ("aggregator", vec!["cni-metrics-aggregator", "etc/ssl/certs/ca-certificates.crt"])]
    {
        let layout = dir.join(name);
        std::fs::create_dir_all(&layout)?;
        let archive = root.join(format!("target/images/cni-metrics-{name}.tar"));
        ensure!(Command::new("tar").arg("-xf").arg(&archive).arg("-C").arg(&layout).status()?.success(), "untar {name}");
        let top: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
        let index = json_blob(&layout, &top["manifests"][0]["digest"])?;
        ensure!(index["mediaType"] == "application/vnd.oci.image.index.v1+json", "{name}: one image index, got {index}");
        let manifests = index["manifests"].as_array().context("manifests")?;
        let mut archs: Vec<&str> = manifests.iter().filter_map(|m| m["platform"]["architecture"].as_str()).collect();
        archs.sort_unstable();
        ensure!(archs == ["amd64", "arm64"], "{name}: the index holds {archs:?}");
        for m in manifests {
            let arch = m["platform"]["architecture"].as_str().unwrap_or_default();
            let rootfs = layout.join(format!("rootfs-{arch}"));
            check_platform_image(&layout, m, name, &files, &rootfs)?;
            check_binary(&rootfs, name, arch)?;
        }
        println!("{name}: {} bytes compressed (both architectures)", std::fs::metadata(&archive)?.len());
        if name == "aggregator" {
            let demo = Command::new(layout.join("rootfs-amd64/cni-metrics-aggregator")).arg("demo").output()?;
            ensure!(!demo.status.success(), "the production aggregator is built without the demo");
        }
    }
    push_to_a_registry(&root, &dir).await?;
    run_from_images(&dir).await
}

/// One architecture's image: linux, user 65534, the entrypoint, the labels with the compiler, and
/// layers that hold only the expected files (no shell, no libc), unpacked into `rootfs`.
fn check_platform_image(layout: &Path, m: &Value, name: &str, files: &[&str], rootfs: &Path) -> Result<()> {
    let arch = m["platform"]["architecture"].as_str().unwrap_or_default();
    let manifest = json_blob(layout, &m["digest"])?;
    let config = json_blob(layout, &manifest["config"]["digest"])?;
    ensure!(
        config["architecture"] == arch && config["os"] == "linux",
        "{name}/{arch}: config says {} {}",
        config["os"],
        config["architecture"]
    );
    let c = &config["config"];
    ensure!(c["User"] == "65534:65534", "{name}/{arch}: user {}", c["User"]);
    ensure!(c["Entrypoint"] == serde_json::json!([format!("/cni-metrics-{name}")]), "{name}/{arch}: entrypoint {}", c["Entrypoint"]);
    let labels = &c["Labels"];
    ensure!(labels["org.opencontainers.image.title"] == format!("cni-metrics-{name}"), "{name}/{arch}: labels {labels}");
    let toolchain = labels["cni-metrics.build.toolchain"].as_str().unwrap_or_default();
    ensure!(toolchain.starts_with("rustc "), "{name}/{arch}: the compiler is recorded: {labels}");
    println!("{name}/{arch}: built with {toolchain}");
    std::fs::create_dir_all(rootfs)?;
    for layer in manifest["layers"].as_array().context("layers")? {
        let path = layout.join("blobs/sha256").join(layer["digest"].as_str().unwrap_or("").trim_start_matches("sha256:"));
        ensure!(Command::new("tar").arg("-xf").arg(&path).arg("-C").arg(rootfs).status()?.success(), "untar layer");
    }
    let mut found = Vec::new();
    let mut stack = vec![rootfs.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                found.push(p.strip_prefix(rootfs)?.to_string_lossy().into_owned());
            }
        }
    }
    found.sort();
    let mut want: Vec<String> = files.iter().map(|f| (*f).to_owned()).collect();
    want.sort();
    ensure!(found == want, "{name}/{arch}: image files {found:?}");
    Ok(())
}

/// The image's binary is a static ELF file of its architecture and runs: natively on amd64, under
/// `qemu-aarch64-static` (called explicitly: binfmt may not be registered) on arm64.
fn check_binary(rootfs: &Path, name: &str, arch: &str) -> Result<()> {
    let bin = rootfs.join(format!("cni-metrics-{name}"));
    let (machine, interp) = elf_facts(&std::fs::read(&bin)?)?;
    let want = PLATFORMS.iter().find(|(a, _)| *a == arch).map(|(_, m)| *m).context("unknown architecture")?;
    ensure!(machine == want, "{name}/{arch}: ELF machine {machine}, want {want}");
    ensure!(!interp, "{name}/{arch}: the binary is dynamically linked");
    let run = match arch {
        "amd64" => Command::new(&bin).arg("--version").output(),
        _ => Command::new("qemu-aarch64-static").arg(&bin).arg("--version").output(),
    };
    let run = match run {
        Ok(r) => r,
        Err(e) if std::env::var_os("CI").is_none() => {
            println!("SKIPPED running {name}/{arch}: {e} (apt-get install qemu-user-static)");
            return Ok(());
        }
        Err(e) => return Err(e).context(format!("running {name}/{arch}")),
    };
    let version = String::from_utf8_lossy(&run.stdout).into_owned();
    ensure!(run.status.success() && version.starts_with(&format!("cni-metrics-{name} ")), "{name}/{arch}: --version printed {version:?}");
    println!("{name}/{arch}: {} bytes, static, runs: {}", std::fs::metadata(&bin)?.len(), version.trim());
    Ok(())
}

/// Push both image indexes to a real registry (Debian's docker-registry on loopback) with the command
/// docs/install.md gives (`skopeo copy --all`), and read back that each tag serves both architectures.
async fn push_to_a_registry(root: &Path, dir: &Path) -> Result<()> {
    let (Some(registry), Some(skopeo)) = (which("docker-registry"), which("skopeo")) else {
        ensure!(std::env::var_os("CI").is_none(), "docker-registry and skopeo are needed for the push check");
        println!("SKIPPED push_to_a_registry: docker-registry or skopeo is not installed");
        return Ok(());
    };
    let port = cni_metrics_e2e::free_port()?;
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("registry").display()
        ),
    )?;
    let log = std::fs::File::create(dir.join("registry.log"))?;
    let mut server = Command::new(registry).arg("serve").arg(&config).stdout(log.try_clone()?).stderr(log).spawn()?;
    let result = async {
        cni_metrics_e2e::eventually(std::time::Duration::from_secs(10), || async move {
            Ok(match reqwest::get(format!("http://127.0.0.1:{port}/v2/")).await {
                Ok(_) => Ok(()),
                Err(e) => Err(e.to_string()),
            })
        })
        .await?;
        let version = env!("CARGO_PKG_VERSION"); // the workspace version, which the script tags the images with
        for name in ["agent", "aggregator"] {
            let dest = format!("docker://127.0.0.1:{port}/cni-metrics-{name}:{version}");
            let archive = format!("oci-archive:{}", root.join(format!("target/images/cni-metrics-{name}.tar")).display());
            let copy = Command::new(&skopeo).args(["copy", "--all", "--dest-tls-verify=false", &archive, &dest]).output()?;
            ensure!(copy.status.success(), "skopeo copy --all: {}", String::from_utf8_lossy(&copy.stderr));
            let raw = Command::new(&skopeo).args(["inspect", "--raw", "--tls-verify=false", &dest]).output()?;
            let index: Value = serde_json::from_slice(&raw.stdout).context("the pushed tag's manifest")?;
            let mut archs: Vec<&str> =
                index["manifests"].as_array().into_iter().flatten().filter_map(|m| m["platform"]["architecture"].as_str()).collect();
            archs.sort_unstable();
            ensure!(archs == ["amd64", "arm64"], "{name}: the registry serves {archs:?} under one tag");
            println!("{name}: pushed to a registry as one tag serving {archs:?}");
        }
        Ok(())
    }
    .await;
    let _ = server.kill();
    let _ = server.wait();
    result
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
            .arg(dir.join(name).join("rootfs-amd64"))
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
