//! Support for the end-to-end tests, a module per thing they start or read:
//! - [`program`]: the workspace's binaries (built once per test process) or another architecture's;
//! - [`proc`]: [`Launch`] (how to start any process, with the environment that keeps it on loopback) and
//!   [`Proc`] (one running, killed on drop);
//! - [`aggregator`]: aggregator and agent processes with the tests' defaults;
//! - [`cluster`]: a cluster of real processes (fake ipamds, agents, aggregators), in network namespaces
//!   when the machine allows, with its truth; the one way the e2e tests start a cluster;
//! - [`ipamd`]: simulated ipamds served from the test process; [`emulator`]: the AWS emulators (moto);
//! - [`fleet`]: simulated agents for the fleet benchmark; [`invariants`]: the properties' generators;
//! - [`kube`]: helm, kubectl and checkov, renders compared as objects, a real kube-apiserver;
//! - [`page`]: reading `/metrics` and the stdout sink; [`ports`], [`tools`], [`pki`], [`netns`].

pub mod aggregator;
pub mod cluster;
pub mod emulator;
pub mod fleet;
pub mod invariants;
pub mod ipamd;
pub mod kube;
pub mod netns;
pub mod page;
pub mod pki;
pub mod ports;
pub mod proc;
pub mod program;
pub mod tools;

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

pub use aggregator::{start_agent, Aggregator};
pub use emulator::Emulator;
pub use ipamd::fake_ipamd;
pub use page::{promtool_check, sample, stdout_sum};
pub use ports::free_port;
pub use proc::{json_field, proc_stat, scratch_dir, Launch, Proc};
pub use program::{bin_dir, Program};
pub use tools::{render_overlay, repo_root, test_python, which, xml_field};

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
