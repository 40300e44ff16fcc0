//! Support for the end-to-end tests: build and start the real `cni-metrics-agent` and
//! `cni-metrics-aggregator` binaries as child processes, find their addresses in their JSON logs, read the
//! aggregator's `/metrics` and wait for conditions with a deadline. Fake ipamds are the real HTTP servers
//! of `cni_metrics_testkit::FakeIpamd`, running in the test process.

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
        cmd.args(["build", "--quiet", "-p", "cni-metrics-agent", "-p", "cni-metrics-aggregator", "-p", "cni-metrics-testkit", "--bins"]);
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

/// A program to run: one of the host build's binaries, or another architecture's binary run under its
/// user-mode emulator (arm64 under `qemu-aarch64-static`, called explicitly: binfmt may not be registered).
#[derive(Clone, Debug)]
pub struct Program {
    path: PathBuf,
    emulator: Option<PathBuf>,
}

impl Program {
    /// The host build's binary `bin` (built on first use, see [`bin_dir`]).
    pub fn host(bin: &str) -> Result<Self> {
        Ok(Self { path: bin_dir()?.join(bin), emulator: None })
    }

    /// `path` run under `emulator`.
    pub fn emulated(emulator: &Path, path: PathBuf) -> Self {
        Self { path, emulator: Some(emulator.to_owned()) }
    }

    /// The command that runs it (inside network namespace `ns` when given: `ip netns exec` execs it).
    fn command(&self, ns: Option<&str>) -> Command {
        let argv: Vec<&Path> = self.emulator.iter().map(PathBuf::as_path).chain([self.path.as_path()]).collect();
        let mut c = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(argv[0]);
                c
            }
            None => Command::new(argv[0]),
        };
        c.args(&argv[1..]);
        c
    }
}

/// A child process killed on drop, with its output in files under a temporary directory.
pub struct Proc {
    pub name: String,
    child: Child,
    stdin: Option<std::process::ChildStdin>,
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
        Self::start_env(bin, name, args, &[], dir)
    }

    /// Start with extra environment variables (`(name, None)` removes one).
    pub fn start_env(bin: &str, name: &str, args: &[String], env: &[(&str, Option<&str>)], dir: &Path) -> Result<Self> {
        Self::start_in(None, bin, name, args, env, dir, false)
    }

    /// Start inside network namespace `ns` (via `ip netns exec`, which execs the binary: the pid is the
    /// binary's), optionally with a stdin the test writes to ([`Proc::send`]).
    pub fn start_in(
        ns: Option<&str>,
        bin: &str,
        name: &str,
        args: &[String],
        env: &[(&str, Option<&str>)],
        dir: &Path,
        piped_stdin: bool,
    ) -> Result<Self> {
        Self::start_program(ns, &Program::host(bin)?, name, args, env, dir, piped_stdin)
    }

    /// [`Proc::start_in`] of any [`Program`].
    pub fn start_program(
        ns: Option<&str>,
        program: &Program,
        name: &str,
        args: &[String],
        env: &[(&str, Option<&str>)],
        dir: &Path,
        piped_stdin: bool,
    ) -> Result<Self> {
        let stdout_path = dir.join(format!("{name}.stdout"));
        let stderr_path = dir.join(format!("{name}.stderr"));
        let mut cmd = program.command(ns);
        cmd.args(args)
            .env("RUST_LOG", "info")
            // Never leave loopback: no instance metadata, no real AWS.
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
            .env_remove("AWS_REGION")
            .env_remove("AWS_DEFAULT_REGION")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ROLE_ARN")
            .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
            .env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI")
            .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
            .env_remove("CLUSTER_NAME");
        for (k, v) in env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let mut child = cmd
            .env_remove("AWS_CLUSTER_ID")
            .stdin(if piped_stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(std::fs::File::create(&stdout_path)?)
            .stderr(std::fs::File::create(&stderr_path)?)
            .spawn()
            .with_context(|| format!("cannot start {}", program.path.display()))?;
        let stdin = child.stdin.take();
        Ok(Self { name: name.to_owned(), child, stdin, stdout_path, stderr_path })
    }

    /// Write one command line to the process's stdin and wait (up to 10 s) for its one-line answer on
    /// stdout.
    pub fn send(&mut self, line: &str) -> Result<String> {
        use std::io::Write as _;
        let before = self.stdout().lines().count();
        let stdin = self.stdin.as_mut().context("stdin not piped")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.stdout();
            if let Some(answer) = out.lines().nth(before) {
                return Ok(answer.to_owned());
            }
            if Instant::now() > deadline {
                bail!("{}: no answer to {line:?}; stderr:\n{}", self.name, self.stderr());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
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

    /// SIGTERM without waiting (see [`Proc::wait_exit`]).
    pub fn signal_term(&self) -> Result<()> {
        Command::new("kill").args(["-TERM", &self.pid().to_string()]).status()?;
        Ok(())
    }

    /// SIGTERM, then wait up to `grace` for the exit; returns whether it exited by itself.
    pub fn terminate(&mut self, grace: Duration) -> Result<bool> {
        self.signal_term()?;
        self.wait_exit(grace)
    }

    /// Wait up to `grace` for an exit (SIGKILL after it); returns whether it exited by itself, cleanly.
    pub fn wait_exit(&mut self, grace: Duration) -> Result<bool> {
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
        self.stdin = None;
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
        let mut args = vec!["--cluster-id", "e2e"];
        args.extend_from_slice(extra);
        Self::start_env(dir, name, grpc_listen, &args, &[])
    }

    /// Start with JSON logs, the stdout sink, 200 ms publish windows, `extra` args and environment.
    pub fn start_env(dir: &Path, name: &str, grpc_listen: &str, extra: &[&str], env: &[(&str, Option<&str>)]) -> Result<Self> {
        Self::start_in(None, dir, name, grpc_listen, extra, env)
    }

    /// [`Aggregator::start_env`] inside network namespace `ns`, when given.
    pub fn start_in(
        ns: Option<&str>,
        dir: &Path,
        name: &str,
        grpc_listen: &str,
        extra: &[&str],
        env: &[(&str, Option<&str>)],
    ) -> Result<Self> {
        Self::start_program(&Program::host("cni-metrics-aggregator")?, ns, dir, name, grpc_listen, extra, env)
    }

    /// [`Aggregator::start_in`] of any build of the aggregator (e.g. the arm64 one under its emulator).
    pub fn start_program(
        program: &Program,
        ns: Option<&str>,
        dir: &Path,
        name: &str,
        grpc_listen: &str,
        extra: &[&str],
        env: &[(&str, Option<&str>)],
    ) -> Result<Self> {
        let mut args: Vec<String> =
            ["--grpc-listen", grpc_listen, "--stdout", "true", "--log-format", "json"].iter().map(|s| (*s).to_owned()).collect();
        if !extra.contains(&"--http-listen") {
            args.extend(["--http-listen".to_owned(), "127.0.0.1:0".to_owned()]);
        }
        // Counters reach /metrics when their window closes: short windows unless the test says otherwise.
        if !extra.contains(&"--publish-interval") {
            args.extend(["--publish-interval".to_owned(), "200ms".to_owned()]);
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        // Test credentials and region unless the test says otherwise.
        let mut all: Vec<(&str, Option<&str>)> =
            vec![("AWS_ACCESS_KEY_ID", Some("testing")), ("AWS_SECRET_ACCESS_KEY", Some("testing")), ("AWS_REGION", Some("us-east-1"))];
        all.extend_from_slice(env);
        let proc = Proc::start_program(ns, program, name, &args, &all, dir, false)?;
        let line = proc.wait_log("aggregator starting", Duration::from_secs(30))?;
        let grpc = json_field(&line, "grpc").context("grpc address in log")?;
        let http = json_field(&line, "http").context("http address in log")?;
        Ok(Self { proc, grpc, http })
    }

    pub async fn readyz(&self) -> Result<(u16, String)> {
        let r = reqwest::get(format!("http://{}/readyz", self.http)).await?;
        Ok((r.status().as_u16(), r.text().await?))
    }

    pub async fn metrics(&self) -> Result<String> {
        let body = reqwest::get(format!("http://{}/metrics", self.http)).await?.error_for_status()?.text().await?;
        Ok(body)
    }
}

/// Start an agent process for `node` scraping `ipamd_url`.
pub fn start_agent(dir: &Path, node: &str, ipamd_url: &str, aggregator_grpc: &str, extra: &[&str]) -> Result<Proc> {
    let mut args: Vec<String> = ["--ipamd-url", ipamd_url, "--node-name", node, "--imds", "false", "--log-format", "json"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let enis = ipamd_url.replace("/metrics", "/v1/enis");
    let aggregator = format!("http://{aggregator_grpc}");
    for (flag, default) in [
        ("--aggregator", aggregator.as_str()),
        ("--interval", "200ms"),
        ("--scrape-timeout", "150ms"),
        ("--introspection-url", enis.as_str()),
        ("--http-listen", "127.0.0.1:0"),
    ] {
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

/// Resident memory (KiB) and CPU time used so far (s, user + system) of process `pid`, from /proc.
pub fn proc_stat(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command: utime is the 12th, stime the 13th.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0) + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (rss, ticks as f64 / 100.0)
}

/// A fake ipamd on a free loopback port serving a new simulated node of `style` (ipamd started a second
/// ago, so its counters count from zero) after `steps` simulation steps.
pub async fn fake_ipamd(style: cni_metrics_testkit::PageStyle, seed: u64, steps: usize) -> Result<cni_metrics_testkit::FakeIpamd> {
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0) - 1.0;
    let mut sim = cni_metrics_testkit::SimIpamd::new(style, seed, started);
    for _ in 0..steps {
        sim.step();
    }
    Ok(cni_metrics_testkit::FakeIpamd::start(sim, std::net::SocketAddr::from(([127, 0, 0, 1], 0))).await?)
}

/// A free loopback port for a process that binds it later (an aggregator that must come back on the
/// same address, a program under qemu that takes seconds to start).
///
/// The port comes from below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`): a port that
/// `bind(0)` handed out could be taken between the check and the program's bind, by another test's
/// `bind(0)` or by any outgoing connection's local port (CI once failed with "address in use" that way).
/// Ports here are handed out by no one else: each call in this process takes the next one from a start
/// that depends on the process id (tests of one binary share the counter; binaries run one at a time), and
/// a port something already holds is skipped.
pub fn free_port() -> Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, high) = outside_ephemeral_range()?;
    let span = u32::from(high - low);
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = low + offset as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free loopback port between {low} and {high}")
}

/// The ports the kernel never hands out by itself: 10,000 up to the start of the ephemeral range
/// (`net.ipv4.ip_local_port_range`, 32,768 by default), or those above its end when it starts lower.
fn outside_ephemeral_range() -> Result<(u16, u16)> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut bounds = range.split_whitespace().map(|b| b.parse::<u16>().ok());
    let (first, last) = match (bounds.next().flatten(), bounds.next().flatten()) {
        (Some(first), Some(last)) => (first, last),
        _ => (32_768, 60_999),
    };
    let below = (10_000, first);
    let above = (last.saturating_add(1), u16::MAX);
    [below, above]
        .into_iter()
        .filter(|(low, high)| high > low)
        .max_by_key(|(low, high)| high - low)
        .context(format!("no ports outside the ephemeral range {first}-{last}"))
}

pub mod cluster;
pub mod emulator;
pub mod fleet;
pub mod invariants;
pub mod netns;
pub use emulator::Emulator;

/// Sum of the `value=` fields of the stdout sink's lines for `metric`.
pub fn stdout_sum(stdout: &str, metric: &str) -> f64 {
    let needle = format!(" metric={metric} ");
    stdout.lines().filter(|l| l.contains(&needle)).filter_map(|l| l.split(" value=").nth(1)?.split(' ').next()?.parse::<f64>().ok()).sum()
}

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
    let json = Command::new(test_python()?)
        .args(["-c", "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))"])
        .arg(&file)
        .output()?;
    anyhow::ensure!(json.status.success(), "yaml to json: {}", String::from_utf8_lossy(&json.stderr));
    let docs: Vec<serde_json::Value> = serde_json::from_slice(&json.stdout)?;
    Ok((yaml, docs, file))
}

/// The text of the first `<tag>…</tag>` in an XML answer.
pub fn xml_field<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(&xml[start..end])
}

/// Check a `/metrics` page with Prometheus' own `promtool check metrics` (Debian's `prometheus`
/// package; `.ci/run` installs it). Lint findings (upstream's drop-in names without `_total`) are
/// allowed; a page Prometheus cannot parse is an error. `Ok(false)` when promtool is not installed
/// and the run is not CI (where its absence is an error).
pub fn promtool_check(page: &str) -> Result<bool> {
    use std::io::Write as _;
    let child =
        Command::new("promtool").args(["check", "metrics"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && std::env::var_os("CI").is_none() => {
            eprintln!("NOTE: promtool not installed (apt-get install prometheus); page checked by our own parser only");
            return Ok(false);
        }
        Err(e) => bail!("cannot run promtool (Debian package prometheus): {e}"),
    };
    child.stdin.take().context("promtool stdin")?.write_all(page.as_bytes())?;
    let out = child.wait_with_output()?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // promtool exits 1 on a parse error and 3 on lint findings only.
    if !(out.status.success() || out.status.code() == Some(3)) || text.contains("error while linting") || text.contains("parsing error") {
        bail!("promtool check metrics refused the page ({}): {text}\n--- page ---\n{page}", out.status);
    }
    Ok(true)
}

/// Certificates for the TLS tests, made by the `openssl` command line (EC P-256, valid 2 days).
pub mod pki {
    use std::path::Path;
    use std::process::Command;

    use anyhow::{ensure, Context, Result};

    fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
        let out = Command::new("openssl").args(args).current_dir(dir).output().context("openssl is needed for the TLS tests")?;
        ensure!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    }

    /// `openssl req` making a new EC P-256 key `name.key` and writing `out` (`-x509`: self-signed).
    fn request(dir: &Path, name: &str, x509: bool, out: &str) -> Result<()> {
        let (key, subject) = (format!("{name}.key"), format!("/CN={name}"));
        let mut args = vec!["req"];
        if x509 {
            args.extend(["-x509", "-days", "2"]);
        }
        args.extend([
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            out,
            "-subj",
            &subject,
        ]);
        openssl(dir, &args)
    }

    /// A self-signed CA (`name.crt`, `name.key`) in `dir`.
    pub fn ca(dir: &Path, name: &str) -> Result<()> {
        request(dir, name, true, &format!("{name}.crt"))
    }

    /// A certificate `name.crt` / `name.key` signed by CA `ca`, with X.509v3 extensions `ext`
    /// (e.g. `subjectAltName=DNS:localhost`).
    pub fn leaf(dir: &Path, ca: &str, name: &str, ext: &str) -> Result<()> {
        request(dir, name, false, &format!("{name}.csr"))?;
        std::fs::write(dir.join(format!("{name}.ext")), ext)?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.crt"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-out",
                &format!("{name}.crt"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ],
        )
    }
}
