//! A whole test cluster for fault tests: nodes (a `cni-metrics-fake-ipamd` process and a real agent
//! process each), and a succession of real aggregator processes on one fixed address (each restart is a
//! new process; all their stdout sink lines count as published).
//!
//! With root, nodes live in Linux network namespaces ([`Lab`]): each node's ipamd is on its own
//! `127.0.0.1:61678` and partitions cut the node's link. Without, everything runs on loopback ports and
//! partitions are unavailable; [`Cluster::new`] prints why.
//!
//! The truth is what the fake ipamds counted (their lifetime counters, asked over stdin so it works
//! while a node is cut off); the published numbers are the sums of the stdout sink's windows over every
//! aggregator process that ever ran, the same datums CloudWatch gets.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::netns::{Lab, CONTROL_IP};
use crate::{eventually, free_port, json_field, sample, scratch_dir, stdout_sum, Aggregator, Launch, Proc, Program};

pub struct Node {
    pub name: String,
    pub fake: Proc,
    pub agent: Option<Proc>,
    /// ipamd's metrics URL as the agent sees it.
    ipamd: String,
    pub ipamd_up: bool,
    runs: usize,
}

pub struct Cluster {
    pub dir: PathBuf,
    lab: Option<Lab>,
    pub nodes: Vec<Node>,
    /// Every aggregator process started, oldest first; the last is the current one.
    pub aggregators: Vec<Proc>,
    agg_listen: String,
    agg_http: String,
    pub agg_extra: Vec<String>,
    /// Extra environment of aggregator processes (e.g. the CloudWatch emulator's endpoint).
    pub agg_env: Vec<(String, Option<String>)>,
    pub agent_extra: Vec<String>,
    /// Agents keep their counting position in a state directory of their node (as the DaemonSet does).
    pub keep_position: bool,
    /// The agent build each node runs (by index), when not the host's (e.g. arm64 under its emulator).
    pub agent_programs: std::collections::HashMap<usize, Program>,
    /// The aggregator build, when not the host's.
    pub aggregator_program: Option<Program>,
}

/// The counters the fault tests compare: (addReqCount, delReqCount, ec2ApiReqCount). The last grows at
/// every simulated interval, so every report carries an increment.
pub type Totals = (f64, f64, f64);

impl Cluster {
    /// A cluster with `nodes` nodes (ipamds started, no agents yet), in namespaces when `netns` and
    /// possible.
    pub fn new(test: &str, nodes: usize, netns: bool) -> Result<Self> {
        let dir = scratch_dir(test)?;
        let lab = if netns {
            match Lab::create(0) {
                Ok(lab) => Some(lab),
                Err(why) => {
                    eprintln!("NOTE {test}: network namespaces unavailable ({why}); running on loopback ports, partitions skipped");
                    None
                }
            }
        } else {
            None
        };
        let agg_listen = match &lab {
            Some(_) => format!("{CONTROL_IP}:61690"),
            None => format!("127.0.0.1:{}", free_port()?),
        };
        let mut c = Cluster {
            dir,
            lab,
            nodes: Vec::new(),
            aggregators: Vec::new(),
            agg_listen,
            agg_http: String::new(),
            agg_extra: Vec::new(),
            agg_env: Vec::new(),
            agent_extra: Vec::new(),
            keep_position: false,
            agent_programs: std::collections::HashMap::new(),
            aggregator_program: None,
        };
        for _ in 0..nodes {
            c.add_node()?;
        }
        Ok(c)
    }

    pub fn netns(&self) -> bool {
        self.lab.is_some()
    }

    /// Add a node with a fresh ipamd (started 2 s ago, modern and prefix-delegation pages in turn);
    /// returns its index.
    pub fn add_node(&mut self) -> Result<usize> {
        let style = if self.nodes.len().is_multiple_of(2) { "modern" } else { "pd" };
        self.add_node_with(style, 2.0)
    }

    /// Add a node whose ipamd serves pages of `style` (`modern`, `pd`, `legacy`: 2019, `gauge`: counters
    /// typed as gauges) and started `age_secs` ago (older than the agents' initial window: its
    /// counters are a baseline, not counted); returns its index.
    pub fn add_node_with(&mut self, style: &str, age_secs: f64) -> Result<usize> {
        let i = self.nodes.len();
        let name = format!("node-{i}");
        let (ns, listen) = match &mut self.lab {
            Some(lab) => {
                lab.add_node(i)?;
                (Some(lab.node(i)), "127.0.0.1:61678".to_owned())
            }
            None => (None, format!("127.0.0.1:{}", free_port()?)),
        };
        let (seed, age) = ((100 + i).to_string(), age_secs.to_string());
        let args = ["--listen", &listen, "--seed", &seed, "--style", style, "--age-secs", &age];
        let fake = Launch::host("cni-metrics-fake-ipamd", &format!("{name}-ipamd"), &self.dir)?
            .netns(ns.as_deref())
            .args(args)
            .piped_stdin()
            .start()?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !fake.stdout().contains("LISTENING") {
            if std::time::Instant::now() > deadline {
                bail!("fake ipamd {name} did not start: {}", fake.stderr());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.nodes.push(Node { name, fake, agent: None, ipamd: format!("http://{listen}/metrics"), ipamd_up: true, runs: 0 });
        Ok(i)
    }

    /// Start (or restart) node `i`'s agent.
    pub fn start_agent(&mut self, i: usize) -> Result<()> {
        let ns = self.lab.as_ref().map(|l| l.node(i));
        let n = &mut self.nodes[i];
        n.runs += 1;
        let mut args: Vec<String> = [
            "--ipamd-url",
            &n.ipamd,
            "--introspection-url",
            &n.ipamd.replace("/metrics", "/v1/enis"),
            "--node-name",
            &n.name,
            "--aggregator",
            &format!("http://{}", self.agg_listen),
            "--interval",
            "200ms",
            "--scrape-timeout",
            "150ms",
            // A silently dead link is noticed in 2 s (+1 s), as 30 s (+10 s) would be on a real node.
            "--keepalive",
            "1s",
            "--imds",
            "false",
            "--http-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(self.agent_extra.iter().cloned());
        if self.keep_position {
            args.extend(["--state-dir".to_owned(), self.dir.join(format!("{}-state", n.name)).display().to_string()]);
        }
        let name = format!("{}-agent-{}", n.name, n.runs);
        let program = match self.agent_programs.get(&i) {
            Some(p) => p.clone(),
            None => Program::host("cni-metrics-agent")?,
        };
        n.agent = Some(Launch::new(program, &name, &self.dir).netns(ns.as_deref()).args(args).start()?);
        Ok(())
    }

    pub fn start_agents(&mut self) -> Result<()> {
        (0..self.nodes.len()).try_for_each(|i| self.start_agent(i))
    }

    pub fn agent(&mut self, i: usize) -> Result<&mut Proc> {
        self.nodes[i].agent.as_mut().context("agent not running")
    }

    /// Start a new aggregator process on the fixed address.
    pub fn start_aggregator(&mut self) -> Result<()> {
        let ns = self.lab.as_ref().map(Lab::control);
        let mut extra: Vec<&str> = vec!["--cluster-id", "e2e"];
        extra.extend(self.agg_extra.iter().map(String::as_str));
        let name = format!("aggregator-{}", self.aggregators.len() + 1);
        let env: Vec<(&str, Option<&str>)> = self.agg_env.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
        let program = match &self.aggregator_program {
            Some(p) => p.clone(),
            None => Program::host("cni-metrics-aggregator")?,
        };
        let launch = Launch::new(program, &name, &self.dir).netns(ns.as_deref()).args(["--grpc-listen", self.agg_listen.as_str()]);
        let agg = Aggregator::start_with(launch.args(extra).envs(&env))?;
        self.agg_http = agg.http;
        self.aggregators.push(agg.proc);
        Ok(())
    }

    /// The address agents dial.
    pub fn aggregator_address(&self) -> &str {
        &self.agg_listen
    }

    /// Whether node `i`'s link is cut.
    pub fn partitioned(&self, i: usize) -> bool {
        self.lab.as_ref().is_some_and(|l| l.is_partitioned(i))
    }

    /// The current aggregator process.
    pub fn aggregator(&mut self) -> Result<&mut Proc> {
        self.aggregators.last_mut().context("no aggregator started")
    }

    /// The current aggregator's `/metrics` (from inside its namespace when there is one).
    pub async fn metrics(&self) -> Result<String> {
        let ns = self.lab.as_ref().map(Lab::control);
        http_get(ns.as_deref(), &format!("http://{}/metrics", self.agg_http)).await
    }

    /// The `/metrics` page of node `i`'s agent.
    pub async fn agent_page(&self, i: usize) -> Result<String> {
        let agent = self.nodes[i].agent.as_ref().context("agent not running")?;
        let line = agent.wait_log("agent HTTP endpoint", Duration::from_secs(10))?;
        let addr = json_field(&line, "http").context("agent http address")?;
        let ns = self.lab.as_ref().map(|l| l.node(i));
        http_get(ns.as_deref(), &format!("http://{addr}/metrics")).await
    }

    /// A self-metric of node `i`'s agent.
    pub async fn agent_metric(&self, i: usize, name: &str) -> Result<f64> {
        let page = self.agent_page(i).await?;
        let parsed = cni_metrics_agent::parse::parse(&page);
        parsed.samples.iter().find(|s| s.name == name).map(|s| s.value).with_context(|| format!("{name} not on the agent's page"))
    }

    /// A self-metric of the current aggregator.
    pub async fn self_metric(&self, name: &str) -> Result<f64> {
        let page = self.metrics().await?;
        sample(&page, name, &[]).with_context(|| format!("{name} not on the page"))
    }

    /// Send a command to node `i`'s fake ipamd.
    pub fn ipamd(&mut self, i: usize, cmd: &str) -> Result<()> {
        let answer = self.nodes[i].fake.send(cmd)?;
        if answer != "OK" {
            bail!("{} ipamd {cmd:?}: {answer}", self.nodes[i].name);
        }
        match cmd {
            "down" => self.nodes[i].ipamd_up = false,
            "up" => self.nodes[i].ipamd_up = true,
            _ => {}
        }
        Ok(())
    }

    /// Advance every running ipamd `times` intervals, `pause` apart.
    pub async fn step_all(&mut self, times: usize, pause: Duration) -> Result<()> {
        let up: Vec<usize> = (0..self.nodes.len()).filter(|i| self.nodes[*i].ipamd_up).collect();
        self.step(&up, times, pause).await
    }

    /// Advance the ipamds of `nodes` `times` intervals, `pause` apart.
    pub async fn step(&mut self, nodes: &[usize], times: usize, pause: Duration) -> Result<()> {
        for _ in 0..times {
            for i in nodes {
                self.ipamd(*i, "step 1")?;
            }
            tokio::time::sleep(pause).await;
        }
        Ok(())
    }

    /// What the ipamds counted, summed over nodes.
    pub fn truth(&mut self) -> Result<Totals> {
        let mut t = (0.0, 0.0, 0.0);
        for i in 0..self.nodes.len() {
            let n = self.node_truth(i)?;
            t = (t.0 + n.0, t.1 + n.1, t.2 + n.2);
        }
        Ok(t)
    }

    /// What node `i`'s ipamd counted.
    pub fn node_truth(&mut self, i: usize) -> Result<Totals> {
        let f = self.node_facts(i)?;
        Ok((f("add"), f("del"), f("ec2")))
    }

    /// Node `i`'s ipamd gauges now: (assigned, total, max).
    pub fn node_gauges(&mut self, i: usize) -> Result<Totals> {
        let f = self.node_facts(i)?;
        Ok((f("assigned"), f("total"), f("max")))
    }

    /// Node `i`'s ipamd's `truth` answer, by field.
    fn node_facts(&mut self, i: usize) -> Result<impl Fn(&str) -> f64> {
        let line = self.nodes[i].fake.send("truth")?;
        let json: serde_json::Value = serde_json::from_str(line.strip_prefix("TRUTH ").context("truth line")?)?;
        Ok(move |k: &str| json[k].as_f64().unwrap_or(f64::NAN))
    }

    /// Node `i`'s ipamd metrics URL, as its agent sees it.
    pub fn ipamd_url(&self, i: usize) -> &str {
        &self.nodes[i].ipamd
    }

    /// Node `i`'s ipamd page (from inside its namespace when there is one).
    pub async fn ipamd_page(&self, i: usize) -> Result<String> {
        let ns = self.lab.as_ref().map(|l| l.node(i));
        http_get(ns.as_deref(), &self.nodes[i].ipamd).await
    }

    /// Wait until the current aggregator's `/metrics` shows the gauges of `gauge_nodes` and every node's
    /// counters less `lost` (baselines not counted): (assigned, total, max, add, del).
    pub async fn wait_page_exact(&mut self, gauge_nodes: &[usize], lost: Totals, timeout: Duration) -> Result<()> {
        let mut gauges = (0.0, 0.0, 0.0);
        for i in gauge_nodes {
            let g = self.node_gauges(*i)?;
            gauges = (gauges.0 + g.0, gauges.1 + g.1, gauges.2 + g.2);
        }
        let t = self.truth()?;
        let want = (Some(gauges.0), Some(gauges.1), Some(gauges.2), Some(t.0 - lost.0), Some(t.1 - lost.1));
        let this = &*self;
        eventually(timeout, || async move {
            let page = this.metrics().await?;
            let got = (
                sample(&page, "awscni_assigned_ip_addresses", &[]),
                sample(&page, "awscni_total_ip_addresses", &[]),
                sample(&page, "awscni_ip_max", &[]),
                sample(&page, "awscni_add_ip_req_count", &[]),
                sample(&page, "awscni_del_ip_req_count", &[("reason", "PodDeleted")]),
            );
            Ok(if got == want { Ok(()) } else { Err(format!("(assigned, total, max, add, del) got {got:?}, want {want:?}")) })
        })
        .await
    }

    /// Node `i`'s state directory (with `keep_position`).
    pub fn state_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}-state", self.nodes[i].name))
    }

    /// What every aggregator process published, summed over windows.
    pub fn published(&self) -> Totals {
        let out: Vec<String> = self.aggregators.iter().map(Proc::stdout).collect();
        let sum = |metric: &str| out.iter().map(|o| stdout_sum(o, metric)).sum();
        (sum("addReqCount"), sum("delReqCount"), sum("ec2ApiReqCount"))
    }

    /// Wait until the published totals equal the truth, and still do 1.5 s later (an overshoot that
    /// arrives in a later window fails).
    pub async fn wait_exact(&mut self, what: &str, timeout: Duration) -> Result<()> {
        self.wait_published(what, (0.0, 0.0, 0.0), timeout).await
    }

    /// [`Cluster::wait_exact`], less `lost` (increments a test knows are not counted, e.g. a run that
    /// started without a baseline): nothing beyond that lost, nothing counted twice.
    pub async fn wait_published(&mut self, what: &str, lost: Totals, timeout: Duration) -> Result<()> {
        let t = self.truth()?;
        let truth = (t.0 - lost.0, t.1 - lost.1, t.2 - lost.2);
        let this = &*self;
        eventually(timeout, || async move {
            let got = this.published();
            Ok(if got == truth { Ok(()) } else { Err(format!("published (add, del, ec2) {got:?}, truth {truth:?}")) })
        })
        .await
        .with_context(|| format!("after {what}"))?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let got = self.published();
        if got != truth {
            bail!("after {what}: published (add, del, ec2) {got:?} moved past the truth {truth:?}");
        }
        Ok(())
    }

    /// Cut or restore node `i`'s link (namespaces only).
    pub fn partition(&self, i: usize, down: bool) -> Result<()> {
        self.lab.as_ref().context("partitions need network namespaces")?.set_partitioned(i, down)
    }

    /// Wait until the current aggregator has `n` nodes reporting.
    pub async fn wait_reporting(&self, n: usize) -> Result<()> {
        eventually(Duration::from_secs(40), || async {
            let got = self.self_metric("cni_metrics_nodes_reporting").await?;
            Ok(if got == n as f64 { Ok(()) } else { Err(format!("nodes reporting {got}, want {n}")) })
        })
        .await
    }
}

/// GET `url`, from inside namespace `ns` when given (with the machine's Python, as the test process is
/// outside every namespace).
async fn http_get(ns: Option<&str>, url: &str) -> Result<String> {
    match ns {
        None => Ok(reqwest::get(url).await?.error_for_status()?.text().await?),
        Some(ns) => {
            // A short blocking call: the tests run on a multi-thread runtime.
            let out = std::process::Command::new("ip")
                .args(["netns", "exec", ns, "python3", "-c"])
                .arg("import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())")
                .arg(url)
                .output()?;
            if !out.status.success() {
                bail!("GET {url} in {ns}: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        }
    }
}
