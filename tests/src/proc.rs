//! Processes of the end-to-end tests: [`Launch`] says how to start one, [`Proc`] is one running (its
//! output in files, killed on drop), with what tests ask of processes (log lines, signals, resources).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::program::Program;

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

/// How to start a process, in the style of `std::process::Command`: the program, the name its output
/// files and log lines go by, the directory they go to, its arguments and environment, the network
/// namespace it runs in and whether the test writes to its stdin. Every process a test starts is
/// launched here, with the test environment that keeps it on loopback (no instance metadata, no real
/// AWS endpoint or credentials, no cluster id or name from the outside).
#[derive(Clone, Debug)]
pub struct Launch {
    program: Program,
    name: String,
    dir: PathBuf,
    args: Vec<String>,
    env: Vec<(String, Option<String>)>,
    netns: Option<String>,
    piped_stdin: bool,
}

impl Launch {
    /// `program` as `name`, its output files in `dir`.
    pub fn new(program: Program, name: &str, dir: &Path) -> Self {
        Self { program, name: name.to_owned(), dir: dir.to_owned(), args: Vec::new(), env: Vec::new(), netns: None, piped_stdin: false }
    }

    /// The host build's binary `bin` (built on first use).
    pub fn host(bin: &str, name: &str, dir: &Path) -> Result<Self> {
        Ok(Self::new(Program::host(bin)?, name, dir))
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Whether `flag` is among the arguments already.
    pub fn has_arg(&self, flag: &str) -> bool {
        self.args.iter().any(|a| a == flag)
    }

    /// `flag value` unless the arguments have `flag` already.
    pub fn default_arg(self, flag: &str, value: &str) -> Self {
        if self.has_arg(flag) {
            self
        } else {
            self.args([flag, value])
        }
    }

    /// Set (`Some`) or remove (`None`) environment variables, after the test environment.
    pub fn envs(mut self, env: &[(&str, Option<&str>)]) -> Self {
        self.env.extend(env.iter().map(|(k, v)| ((*k).to_owned(), v.map(str::to_owned))));
        self
    }

    /// Run inside network namespace `ns` when given (via `ip netns exec`, which execs the binary: the
    /// pid is the binary's).
    pub fn netns(mut self, ns: Option<&str>) -> Self {
        self.netns = ns.map(str::to_owned);
        self
    }

    /// A stdin the test writes to ([`Proc::send`]).
    pub fn piped_stdin(mut self) -> Self {
        self.piped_stdin = true;
        self
    }

    /// Environment set before the launch's own (defaults it may override).
    pub fn with_env_first(mut self, env: &[(&str, Option<&str>)]) -> Self {
        let mut all: Vec<(String, Option<String>)> = env.iter().map(|(k, v)| ((*k).to_owned(), v.map(str::to_owned))).collect();
        all.append(&mut self.env);
        self.env = all;
        self
    }

    pub fn start(self) -> Result<Proc> {
        let stdout_path = self.dir.join(format!("{}.stdout", self.name));
        let stderr_path = self.dir.join(format!("{}.stderr", self.name));
        let mut cmd = self.program.command(self.netns.as_deref());
        cmd.args(&self.args)
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
        for (k, v) in &self.env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let mut child = cmd
            .env_remove("AWS_CLUSTER_ID")
            .stdin(if self.piped_stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(std::fs::File::create(&stdout_path)?)
            .stderr(std::fs::File::create(&stderr_path)?)
            .spawn()
            .with_context(|| format!("cannot start {}", self.program.path.display()))?;
        let stdin = child.stdin.take();
        Ok(Proc { name: self.name, child, stdin, stdout_path, stderr_path })
    }
}

impl Proc {
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
