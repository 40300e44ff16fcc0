//! `cni-metrics-fake-ipamd`: one simulated ipamd as its own process, so a fault test can run it inside a
//! node's network namespace on that node's `127.0.0.1:61678`, like the real one.
//!
//! It is driven over stdin, not the network, so the test keeps control while the node is partitioned:
//! one command per line, each answered by one line on stdout.
//!
//! | command | effect |
//! |---|---|
//! | `step N` | advance the simulation N intervals (pods come and go, counters grow) |
//! | `restart` | ipamd restarts: a new start time, counters on the page start from zero |
//! | `down` / `up` | stop serving (connection refused) / serve again on the same address |
//! | `mode normal|garbage|hang|huge|error|flipped` | what `/metrics` answers (`flipped`: the live page with every `# TYPE` counter/gauge swapped, as ipamd versions did to some families) |
//! | `truth` | `TRUTH {json}`: lifetime counters and current gauges |
#![forbid(unsafe_code)]

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use cni_metrics_testkit::{FakeIpamd, Mode, PageStyle, SimIpamd};

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.to_owned())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let listen: SocketAddr = arg(&args, "--listen", "127.0.0.1:61678").parse().context("--listen")?;
    let seed: u64 = arg(&args, "--seed", "1").parse().context("--seed")?;
    let age: f64 = arg(&args, "--age-secs", "2").parse().context("--age-secs")?;
    let style = match arg(&args, "--style", "modern").as_str() {
        "modern" => PageStyle::Modern,
        "pd" => PageStyle::PrefixDelegation,
        "legacy" => PageStyle::Legacy2019,
        "gauge" => PageStyle::GaugeTyped,
        other => bail!("unknown --style {other}"),
    };
    let mut fake = Some(FakeIpamd::start(SimIpamd::new(style, seed, now() - age), listen).await.context("bind")?);
    let mut parked: Option<SimIpamd> = None;
    let mut flipped = false;
    println!("LISTENING {listen}");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = rx.recv().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match (words.first().copied(), fake.as_ref()) {
            (Some("step"), Some(f)) => {
                let n: usize = words.get(1).and_then(|w| w.parse().ok()).unwrap_or(1);
                f.with_sim(|s| (0..n).for_each(|_| s.step()));
                "OK".to_owned()
            }
            (Some("restart"), Some(f)) => {
                f.with_sim(|s| s.restart(now()));
                "OK".to_owned()
            }
            (Some("mode"), Some(f)) => {
                flipped = words.get(1).copied() == Some("flipped");
                let mode = match words.get(1).copied() {
                    Some("flipped") => Mode::Page(f.with_sim(|s| flip_types(&s.render()))),
                    Some("garbage") => Mode::Garbage,
                    Some("hang") => Mode::Slow(Duration::from_secs(3600)),
                    Some("huge") => Mode::Huge(100 * 1024 * 1024),
                    Some("error") => Mode::Status(500),
                    _ => Mode::Normal,
                };
                f.set_mode(mode);
                "OK".to_owned()
            }
            (Some("truth"), Some(f)) => f.with_sim(|s| truth(s)),
            (Some("truth"), None) => parked.as_ref().map_or_else(|| "ERR no sim".to_owned(), truth),
            (Some("down"), Some(f)) => {
                parked = Some(f.with_sim(|s| s.clone()));
                f.stop();
                fake = None;
                "OK".to_owned()
            }
            (Some("up"), None) => match parked.take() {
                Some(sim) => match FakeIpamd::start(sim.clone(), listen).await {
                    Ok(f) => {
                        fake = Some(f);
                        "OK".to_owned()
                    }
                    Err(e) => {
                        parked = Some(sim);
                        format!("ERR {e}")
                    }
                },
                None => "ERR no sim".to_owned(),
            },
            // ipamd counts only while it runs: `step` while down is refused, so the truth stays honest.
            (Some(cmd), _) => format!("ERR {cmd} not possible now"),
            (None, _) => continue,
        };
        // A flipped page follows the simulation.
        if let (true, Some(f)) = (flipped, fake.as_ref()) {
            f.set_mode(Mode::Page(f.with_sim(|s| flip_types(&s.render()))));
        }
        println!("{answer}");
        let _ = std::io::stdout().flush();
    }
    Ok(())
}

/// Swap `counter` and `gauge` on every `# TYPE` line.
fn flip_types(page: &str) -> String {
    page.lines()
        .map(|l| match l.strip_prefix("# TYPE ") {
            Some(rest) if rest.ends_with(" counter") => format!("# TYPE {}gauge", rest.trim_end_matches("counter")),
            Some(rest) if rest.ends_with(" gauge") => format!("# TYPE {}counter", rest.trim_end_matches("gauge")),
            _ => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn truth(s: &SimIpamd) -> String {
    let l = &s.lifetime;
    format!(
        "TRUTH {{\"add\":{},\"del\":{},\"ec2\":{},\"assigned\":{},\"total\":{},\"max\":{},\"start\":{},\"cooling\":{}}}",
        l.add_ip_req,
        l.del_ip_req_pod_deleted,
        l.ec2_req_describe + l.ec2_req_assign,
        s.assigned,
        s.total_ips(),
        s.ip_max(),
        s.start_time,
        s.cooling_ips()
    )
}
