//! Support for the end-to-end tests: build and start the real `cni-metrics-agent` and
//! `cni-metrics-aggregator` binaries as child processes, find their addresses in their JSON logs, read the
//! aggregator's `/metrics` and wait for conditions with a deadline. Fake ipamds are the real HTTP servers
//! of `cni_metrics_aggregator::demo::FakeIpamd`, running in the test process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// Build both binaries once per test process (a no-op when up to date) and return the directory.
pub fn bin_dir() -> Result<&'static Path> {
    static DIR: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        // target/<profile>/deps/<test-binary>
        let dir = exe.parent().and_then(Path::parent).ok_or("unexpected test binary location")?.to_path_buf();
        let release = dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "cni-metrics-agent", "-p", "cni-metrics-aggregator", "--bins"]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().map_err(|e| format!("cannot run cargo build: {e}"))?;
        if !status.success() {
            return Err(format!("cargo build of the binaries failed: {status}"));
        }
        Ok(dir)
    })
    .as_deref()
    .map_err(|e| anyhow!("{e}"))
}

/// A child process killed on drop, with its output in files under a temporary directory.
pub struct Proc {
    pub name: String,
    child: Child,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
}

pub fn scratch_dir(test: &str) -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("cni-metrics-e2e-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

impl Proc {
    pub fn start(bin: &str, name: &str, args: &[String], dir: &Path) -> Result<Self> {
        let stdout_path = dir.join(format!("{name}.stdout"));
        let stderr_path = dir.join(format!("{name}.stderr"));
        let child = Command::new(bin_dir()?.join(bin))
            .args(args)
            .env("RUST_LOG", "info")
            // Never leave loopback: no instance metadata, no real AWS.
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_CLUSTER_ID")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path)?)
            .stderr(std::fs::File::create(&stderr_path)?)
            .spawn()
            .with_context(|| format!("cannot start {bin}"))?;
        Ok(Self { name: name.to_owned(), child, stdout_path, stderr_path })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// SIGTERM, then wait up to `grace` for the exit; returns whether it exited by itself.
    pub fn terminate(&mut self, grace: Duration) -> Result<bool> {
        Command::new("kill").args(["-TERM", &self.pid().to_string()]).status()?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("{} exited with {status}; stderr:\n{}", self.name, self.stderr());
                }
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        Ok(false)
    }

    /// SIGKILL (a crash).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Wait for a log line containing `needle` and return it.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.stderr().lines().find(|l| l.contains(needle)) {
                return Ok(line.to_owned());
            }
            if Instant::now() > deadline {
                bail!("{}: no log line with {needle:?} within {timeout:?}; stderr:\n{}", self.name, self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The value of a JSON string field in a log line (`"key":"value"`).
pub fn json_field(line: &str, key: &str) -> Option<String> {
    let pat = format!("\"{key}\":\"");
    let start = line.find(&pat)? + pat.len();
    let end = line[start..].find('"')? + start;
    Some(line[start..end].to_owned())
}

/// A running aggregator process.
pub struct Aggregator {
    pub proc: Proc,
    pub grpc: String,
    pub http: String,
}

impl Aggregator {
    /// Start with `--cluster-id e2e`, JSON logs, the stdout sink, and extra args.
    pub fn start(dir: &Path, name: &str, grpc_listen: &str, extra: &[&str]) -> Result<Self> {
        let mut args: Vec<String> = [
            "--grpc-listen",
            grpc_listen,
            "--http-listen",
            "127.0.0.1:0",
            "--cluster-id",
            "e2e",
            "--stdout",
            "true",
            "--log-format",
            "json",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let proc = Proc::start("cni-metrics-aggregator", name, &args, dir)?;
        let line = proc.wait_log("aggregator starting", Duration::from_secs(20))?;
        let grpc = json_field(&line, "grpc").context("grpc address in log")?;
        let http = json_field(&line, "http").context("http address in log")?;
        Ok(Self { proc, grpc, http })
    }

    pub async fn metrics(&self) -> Result<String> {
        let body = reqwest::get(format!("http://{}/metrics", self.http)).await?.error_for_status()?.text().await?;
        Ok(body)
    }
}

/// Start an agent process for `node` scraping `ipamd_url`.
pub fn start_agent(dir: &Path, node: &str, ipamd_url: &str, aggregator_grpc: &str, extra: &[&str]) -> Result<Proc> {
    let mut args: Vec<String> = [
        "--ipamd-url",
        ipamd_url,
        "--aggregator",
        &format!("http://{aggregator_grpc}"),
        "--node-name",
        node,
        "--imds",
        "false",
        "--log-format",
        "json",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    for (flag, default) in [("--interval", "200ms"), ("--scrape-timeout", "150ms")] {
        if !extra.contains(&flag) {
            args.extend([flag.to_owned(), default.to_owned()]);
        }
    }
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    Proc::start("cni-metrics-agent", node, &args, dir)
}

/// The value of the sample `name` with exactly `labels` (besides `cluster_id="e2e"`) on a metrics page.
pub fn sample(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let parsed = cni_metrics_agent::parse::parse(page);
    parsed
        .samples
        .iter()
        .find(|s| {
            s.name == name
                && s.label("cluster_id") == Some("e2e")
                && s.labels.len() == labels.len() + 1
                && labels.iter().all(|(k, v)| s.label(k) == Some(*v))
        })
        .map(|s| s.value)
}

/// Poll `check` until it returns `Ok(true)` or the deadline passes; the last message explains a failure.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<std::result::Result<(), String>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = String::from("never checked");
    while Instant::now() < deadline {
        match check().await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(why)) => last = why,
            Err(e) => last = format!("error: {e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("condition not met within {timeout:?}: {last}")
}

/// A free loopback port (for an aggregator that must come back on the same address).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Sum of the `value=` fields of the stdout sink's lines for `metric`.
pub fn stdout_sum(stdout: &str, metric: &str) -> f64 {
    let needle = format!(" metric={metric} ");
    stdout
        .lines()
        .filter(|l| l.contains(&needle))
        .filter_map(|l| l.split(" value=").nth(1)?.split(' ').next()?.parse::<f64>().ok())
        .sum()
}
