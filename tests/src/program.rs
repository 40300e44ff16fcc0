//! The programs the end-to-end tests run: the workspace's binaries, built once per test process, or
//! another architecture's build run under its user-mode emulator.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{anyhow, Result};

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
    pub(crate) path: PathBuf,
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
    pub(crate) fn command(&self, ns: Option<&str>) -> Command {
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
