//! Graviton nodes: the arm64 builds of the agent and the aggregator, the very release binaries the
//! arm64 images ship (`scripts/build-binaries.sh arm64`: Debian sid's toolchain, static), run under
//! `qemu-aarch64-static`, called explicitly (binfmt may not be registered), next to amd64 agents.
//!
//! - A mixed cluster: an arm64 aggregator, one arm64 agent and two amd64 agents against fake ipamds;
//!   the published counters equal what the simulators counted, through an ipamd restart (a counter
//!   reset) and a restart of the arm64 agent that resumes from its state file.
//! - The arm64 aggregator publishing to the CloudWatch emulator (moto behind the CBOR translator).
//!
//! Needs root (the sid root is made with debootstrap and entered with chroot), debootstrap and
//! qemu-user-static; `.ci/run` installs them. Elsewhere the tests say SKIPPED, unless CI is set: then a
//! missing piece fails them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use cni_metrics_e2e::cluster::Cluster;
use cni_metrics_e2e::*;

const QEMU: &str = "qemu-aarch64-static";

/// The arm64 binaries' directory and the emulator, built once per test process; `None` (SKIPPED) where
/// this machine cannot build or run them and CI is not set.
fn arm64() -> Result<Option<(PathBuf, PathBuf)>> {
    static BUILT: OnceLock<std::result::Result<(PathBuf, PathBuf), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let qemu = which(QEMU).ok_or(format!("{QEMU} is not installed (apt-get install qemu-user-static)"))?;
        let started = std::time::Instant::now();
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/build-binaries.sh"))
            .arg("arm64")
            .output()
            .map_err(|e| format!("cannot run build-binaries.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!("build-binaries.sh arm64 failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let toolchain =
            String::from_utf8_lossy(&out.stderr).lines().find(|l| l.starts_with("arm64 toolchain")).unwrap_or_default().to_owned();
        println!("arm64 binaries ready in {:.0} s ({toolchain})", started.elapsed().as_secs_f64());
        Ok((PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()), qemu))
    });
    match built {
        Ok(b) => Ok(Some(b.clone())),
        Err(why) if std::env::var_os("CI").is_some() => bail!("arm64 binaries: {why}"),
        Err(why) => {
            println!("SKIPPED: {why}");
            Ok(None)
        }
    }
}

fn emulated(qemu: &Path, dir: &Path, bin: &str) -> Program {
    Program::emulated(qemu, dir.join(bin))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_architecture_cluster_sums_exactly() -> Result<()> {
    let Some((dir, qemu)) = arm64()? else { return Ok(()) };
    let version = Command::new(&qemu).arg(dir.join("cni-metrics-agent")).arg("--version").output()?;
    ensure!(version.status.success(), "the arm64 agent does not run under {QEMU}: {}", String::from_utf8_lossy(&version.stderr));
    let mut c = Cluster::new("arm64-mixed", 3, false)?;
    c.keep_position = true;
    c.aggregator_program = Some(emulated(&qemu, &dir, "cni-metrics-aggregator"));
    c.agent_programs.insert(0, emulated(&qemu, &dir, "cni-metrics-agent"));
    c.start_aggregator()?;
    c.start_agents()?;
    c.wait_reporting(3).await?;
    for (what, pid) in [("aggregator", c.aggregators[0].pid()), ("node-0's agent", c.agent(0)?.pid())] {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))?;
        ensure!(exe.ends_with(QEMU), "the {what} runs under {QEMU}, not natively: {}", exe.display());
    }
    c.step_all(5, Duration::from_millis(250)).await?;
    c.wait_exact("a mixed cluster reporting", Duration::from_secs(30)).await?;

    // A counter reset on the arm64 node (its ipamd restarts), then on an amd64 one.
    c.ipamd(0, "restart")?;
    c.ipamd(1, "restart")?;
    c.step_all(4, Duration::from_millis(250)).await?;
    c.wait_exact("ipamd restarts on both architectures", Duration::from_secs(30)).await?;

    // The arm64 agent restarts and resumes from its state file; the ipamd counts on meanwhile.
    ensure!(c.agent(0)?.terminate(Duration::from_secs(10))?, "the arm64 agent exits cleanly on SIGTERM");
    let state = c.state_dir(0);
    ensure!(std::fs::read_dir(&state).map(|d| d.count()).unwrap_or(0) > 0, "the arm64 agent wrote its state file in {}", state.display());
    c.step_all(3, Duration::from_millis(250)).await?;
    c.start_agent(0)?;
    c.wait_reporting(3).await?;
    c.step_all(3, Duration::from_millis(250)).await?;
    c.wait_exact("the arm64 agent's restart with its state file", Duration::from_secs(30)).await?;
    let resumed = c.self_metric("cni_metrics_agent_runs_resumed_total").await?;
    ensure!(resumed >= 1.0, "the new arm64 agent run resumed where the previous one stopped ({resumed})");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arm64_aggregator_publishes_to_cloudwatch() -> Result<()> {
    let Some((dir, qemu)) = arm64()? else { return Ok(()) };
    let emu = Emulator::start()?;
    let mut c = Cluster::new("arm64-cloudwatch", 2, false)?;
    c.aggregator_program = Some(emulated(&qemu, &dir, "cni-metrics-aggregator"));
    c.agent_programs.insert(1, emulated(&qemu, &dir, "cni-metrics-agent"));
    c.agg_extra = ["--cloudwatch", "true", "--publish-interval", "500ms"].map(str::to_owned).to_vec();
    c.agg_env = vec![("AWS_ENDPOINT_URL".to_owned(), Some(emu.url()))];
    c.start_aggregator()?;
    c.start_agents()?;
    c.wait_reporting(2).await?;
    c.step_all(5, Duration::from_millis(250)).await?;
    c.wait_exact("two nodes reporting", Duration::from_secs(30)).await?;
    let (add, del, _) = c.truth()?;
    let sum = |metric: &'static str| {
        let emu = &emu;
        async move { Ok::<f64, anyhow::Error>(emu.datapoints(metric, "e2e").await?.iter().map(|d| d.1).sum()) }
    };
    eventually(Duration::from_secs(30), || async {
        let got = (sum("addReqCount").await?, sum("delReqCount").await?);
        Ok(if got == (add, del) { Ok(()) } else { Err(format!("CloudWatch (addReqCount, delReqCount) {got:?}, truth {:?}", (add, del))) })
    })
    .await
    .context("the arm64 aggregator's datums in CloudWatch")?;
    let page = c.metrics().await?;
    ensure!(sample(&page, "cni_metrics_cloudwatch_requests_total", &[("result", "ok")]).unwrap_or(0.0) >= 1.0, "PutMetricData accepted");
    Ok(())
}
