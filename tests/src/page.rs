//! Reading what the aggregator serves and prints: samples of a `/metrics` page (checked by Prometheus'
//! own parser too) and the stdout sink's lines.

use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

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

/// Sum of the `value=` fields of the stdout sink's lines for `metric`.
pub fn stdout_sum(stdout: &str, metric: &str) -> f64 {
    let needle = format!(" metric={metric} ");
    stdout.lines().filter(|l| l.contains(&needle)).filter_map(|l| l.split(" value=").nth(1)?.split(' ').next()?.parse::<f64>().ok()).sum()
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
