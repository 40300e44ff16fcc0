//! Exact through upgrades: real aggregator, agent and fake-ipamd processes, agents keeping their
//! counting position in a state directory per node (as the DaemonSet's hostPath). Aggregator and agents
//! restart together in every interleaving an upgrade or a crash produces, ipamds counting all along;
//! the counters published by every aggregator process together must equal what the ipamds counted.
//! Then the state file's own faults: corrupt, another node's, a future format, an unwritable directory,
//! an older ipamd process.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use cni_metrics_e2e::cluster::{Cluster, Totals};

const STEP: Duration = Duration::from_millis(150);
const EXACT: Duration = Duration::from_secs(40);
const GRACE: Duration = Duration::from_secs(15);

fn keeping_cluster(test: &str, nodes: usize) -> Result<Cluster> {
    let mut c = Cluster::new(test, nodes, true)?;
    c.keep_position = true;
    // Windows of 1 s so a crash always finds increments not yet published.
    c.agg_extra = vec!["--publish-interval".into(), "1s".into()];
    Ok(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregator_and_agents_restarting_together_stay_exact() -> Result<()> {
    let mut c = keeping_cluster("upgrades", 3)?;
    c.start_aggregator()?;
    c.start_agents()?;
    c.wait_reporting(3).await?;
    c.step_all(3, STEP).await?;
    c.wait_exact("start", EXACT).await?;

    // 1. The upgrade: aggregator SIGTERM and agent 0 kill -9 in the same moment, with increments in the
    //    open window; ipamds count while both are down; the agent comes back first.
    c.step_all(2, STEP).await?;
    c.agent(0)?.kill();
    ensure!(c.aggregator()?.terminate(GRACE)?, "aggregator exits on SIGTERM");
    c.step_all(3, STEP).await?;
    c.start_agent(0)?;
    c.step_all(1, STEP).await?;
    c.start_aggregator()?;
    c.wait_reporting(3).await?;
    c.agent(0)?.wait_log("resuming from the state file", Duration::from_secs(10))?;
    c.step_all(1, STEP).await?;
    c.wait_exact("aggregator SIGTERM + agent kill -9, agent back first", EXACT).await?;

    // 2. Both kill -9 at once; the aggregator comes back first.
    c.step_all(2, STEP).await?;
    c.agent(1)?.kill();
    c.aggregator()?.kill();
    c.step_all(3, STEP).await?;
    c.start_aggregator()?;
    c.step_all(1, STEP).await?;
    c.start_agent(1)?;
    c.wait_reporting(3).await?;
    c.step_all(1, STEP).await?;
    c.wait_exact("aggregator and agent kill -9, aggregator back first", EXACT).await?;

    // 3. Aggregator kill -9, agent SIGTERM at once, agent back first.
    c.step_all(2, STEP).await?;
    c.aggregator()?.kill();
    ensure!(c.agent(2)?.terminate(Duration::from_secs(10))?, "agent exits on SIGTERM");
    c.step_all(2, STEP).await?;
    c.start_agent(2)?;
    c.step_all(1, STEP).await?;
    c.start_aggregator()?;
    c.wait_reporting(3).await?;
    c.step_all(1, STEP).await?;
    c.wait_exact("aggregator kill -9 + agent SIGTERM, agent back first", EXACT).await?;

    // 4. An agent restarted three times (kill -9) while the aggregator is down, ipamd counting between.
    ensure!(c.aggregator()?.terminate(GRACE)?, "aggregator exits on SIGTERM");
    for _ in 0..3 {
        c.step_all(2, STEP).await?;
        c.agent(0)?.kill();
        c.step_all(1, STEP).await?;
        c.start_agent(0)?;
    }
    c.step_all(2, STEP).await?;
    c.start_aggregator()?;
    c.wait_reporting(3).await?;
    c.step_all(1, STEP).await?;
    c.wait_exact("agent restarted three times while the aggregator was down", EXACT).await?;

    // 5. A rolling update of the DaemonSet during an aggregator restart: the aggregator's SIGTERM and the
    //    agents' SIGTERMs overlap, each agent comes back while the aggregator is down or starting.
    c.step_all(2, STEP).await?;
    c.aggregator()?.signal_term()?;
    for i in 0..3 {
        c.agent(i)?.signal_term()?;
        c.step_all(1, Duration::from_millis(50)).await?;
        ensure!(c.agent(i)?.wait_exit(Duration::from_secs(10))?, "agent {i} exits on SIGTERM");
        c.start_agent(i)?;
        c.step_all(1, STEP).await?;
    }
    ensure!(c.aggregator()?.wait_exit(GRACE)?, "aggregator exits on SIGTERM");
    c.step_all(2, STEP).await?;
    c.start_aggregator()?;
    c.wait_reporting(3).await?;
    c.step_all(1, STEP).await?;
    c.wait_exact("rolling update of the agents during an aggregator restart", EXACT).await?;

    // 6. The agent crashes, and the aggregator is replaced before the agent is back: the windows closed
    //    after the crash never published the dead run's increments (withheld), its next run counts them.
    c.step_all(2, STEP).await?;
    c.agent(1)?.kill();
    c.step_all(3, Duration::from_millis(700)).await?;
    ensure!(c.aggregator()?.terminate(GRACE)?, "aggregator exits on SIGTERM");
    c.start_aggregator()?;
    c.step_all(1, STEP).await?;
    c.start_agent(1)?;
    c.wait_reporting(3).await?;
    c.step_all(1, STEP).await?;
    c.wait_exact("agent kill -9, later aggregator replaced, then the agent back", EXACT).await?;

    ensure!(c.aggregator()?.terminate(GRACE)?, "aggregator exits on SIGTERM");
    let (truth, published) = (c.truth()?, c.published());
    ensure!(published == truth, "after the final shutdown: published {published:?}, truth {truth:?}");
    for i in 0..3 {
        let file = std::fs::metadata(c.state_dir(i).join("position.json")).context("a position file per node")?;
        eprintln!("upgrades: node {i} position file {} bytes", file.len());
    }
    eprintln!("upgrades: exact at {truth:?} (add, del, ec2) over {} aggregator processes", c.aggregators.len());
    Ok(())
}

/// An agent self-metric with one label, from its page.
fn labelled(page: &str, name: &str, label: (&str, &str)) -> f64 {
    cni_metrics_agent::parse::parse(page)
        .samples
        .iter()
        .find(|s| s.name == name && s.label(label.0) == Some(label.1))
        .map_or(0.0, |s| s.value)
}

fn minus(a: Totals, b: Totals) -> Totals {
    (a.0 - b.0, a.1 - b.1, a.2 - b.2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_state_file_is_counted_and_never_counts_twice() -> Result<()> {
    let mut c = keeping_cluster("state-file-faults", 5)?;
    // ipamds older than the initial window: a run without any resume point starts without a baseline
    // (its increments before its first scrape are lost, and counted as such), never from ipamd's start.
    c.agent_extra = vec!["--initial-window".into(), "1s".into()];
    // Node 3's state directory cannot be created (its parent is a regular file).
    std::fs::write(c.dir.join("not-a-directory"), b"x")?;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    c.start_aggregator()?;
    for i in 0..5 {
        if i == 3 {
            let bad = c.dir.join("not-a-directory").join("state").display().to_string();
            c.agent_extra.extend(["--state-dir".into(), bad]);
            c.keep_position = false;
            c.start_agent(i)?;
            c.agent_extra.truncate(2);
            c.keep_position = true;
        } else {
            c.start_agent(i)?;
        }
    }
    c.wait_reporting(5).await?;
    let page = c.agent_page(3).await?;
    ensure!(labelled(&page, "cni_metrics_agent_state_file_errors_total", ("reason", "unwritable")) == 1.0, "unwritable counted:\n{page}");
    c.agent(3)?.wait_log("the state directory cannot be written", Duration::from_secs(2))?;
    c.step_all(3, STEP).await?;
    // Windows close and commit; then the baseline of this cluster: what was counted before the agents'
    // first scrapes is not known to anyone.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let truth0 = c.truth()?;
    let published0 = c.published();
    let base = minus(truth0, published0);

    // Every agent stops (SIGTERM: files hold the last commit, which covers everything sent: no increment
    // since), the aggregator is replaced, and the files are damaged before the agents come back.
    for i in 0..5 {
        ensure!(c.agent(i)?.terminate(Duration::from_secs(10))?, "agent {i} exits on SIGTERM");
    }
    ensure!(c.aggregator()?.terminate(GRACE)?, "aggregator exits on SIGTERM");
    let files: Vec<std::path::PathBuf> = (0..5).map(|i| c.state_dir(i).join("position.json")).collect();
    let file = |i: usize| files[i].clone();
    let good = std::fs::read_to_string(file(2))?;
    std::fs::write(file(0), &good[..good.len() / 2])?; // truncated (corrupt)
    std::fs::copy(file(2), file(1))?; // another node's file
    std::fs::write(file(2), good.replace("\"format\":1", "\"format\":9"))?; // a future format
    c.ipamd(4, "restart")?; // node 4's file names an older ipamd process
    let before: Vec<Totals> = (0..5).map(|i| c.node_truth(i)).collect::<Result<_>>()?;
    c.step_all(3, STEP).await?;
    let after: Vec<Totals> = (0..5).map(|i| c.node_truth(i)).collect::<Result<_>>()?;
    c.start_aggregator()?;
    c.start_agents()?;
    c.wait_reporting(5).await?;
    c.step_all(1, STEP).await?;

    // Nodes 0-3 had no usable position: what their ipamds counted while no agent ran is lost, counted
    // as runs without a baseline. Node 4 resumes from its file's older ipamd process: counted in full.
    let mut lost = base;
    for i in 0..4 {
        let d = minus(after[i], before[i]);
        lost = (lost.0 + d.0, lost.1 + d.1, lost.2 + d.2);
    }
    c.wait_published("damaged state files", lost, EXACT).await?;
    for (i, reason) in [(0, "corrupt"), (1, "foreign_node"), (2, "future_format")] {
        let page = c.agent_page(i).await?;
        ensure!(
            labelled(&page, "cni_metrics_agent_state_file_errors_total", ("reason", reason)) == 1.0,
            "node {i}: {reason} counted:\n{page}"
        );
        c.agent(i)?.wait_log("state file ignored", Duration::from_secs(2))?;
    }
    ensure!(c.self_metric("cni_metrics_agent_baseline_unknown_total").await? == 4.0, "the four runs without a position are counted");
    c.agent(4)?.wait_log("resuming from the state file", Duration::from_secs(2))?;
    // The damaged files are replaced by good ones at the next commit.
    for i in [0, 1, 2] {
        let text = std::fs::read_to_string(file(i))?;
        ensure!(text.contains(&format!("\"node\":\"node-{i}\"")) && text.contains("\"format\":1"), "node {i}'s file rewritten: {text}");
    }
    Ok(())
}
