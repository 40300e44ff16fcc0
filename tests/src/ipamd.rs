//! Simulated ipamds in the test process: real HTTP servers (`cni_metrics_testkit::FakeIpamd`) over the
//! ipamd simulator. (The `cni-metrics-fake-ipamd` binary runs one per process, see [`crate::cluster`].)

use anyhow::Result;

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
