//! The CloudWatch emulator of the tests: moto behind the CBOR⇄JSON translator
//! (`tests/support/cw_emulator.py`), run as a child process, with helpers to inject faults and read back
//! what was accepted (metrics from CloudWatch, subnets from moto's EC2).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{repo_root, test_python};
/// moto plus the CBOR⇄JSON translator (`tests/support/cw_emulator.py`) as a child process.
pub struct Emulator {
    child: Child,
    pub port: u16,
    pub moto_port: u16,
}

impl Emulator {
    pub fn start() -> Result<Self> {
        use std::io::BufRead;
        let mut child = Command::new(test_python()?)
            .arg(repo_root().join("tests/support/cw_emulator.py"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start the CloudWatch emulator")?;
        let stdout = child.stdout.take().context("emulator stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(60)).context("emulator did not start within 60s")?;
        let mut parts = line.split_whitespace().skip(1);
        let port = parts.next().and_then(|p| p.parse().ok()).context("emulator port")?;
        let moto_port = parts.next().and_then(|p| p.parse().ok()).context("moto port")?;
        Ok(Self { child, port, moto_port })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn control(&self, what: &str, body: serde_json::Value) -> Result<()> {
        reqwest::Client::new().post(format!("{}/__control/{what}", self.url())).body(body.to_string()).send().await?.error_for_status()?;
        Ok(())
    }

    /// Every request the translator saw.
    pub async fn requests(&self) -> Result<Vec<serde_json::Value>> {
        let text = reqwest::get(format!("{}/__control/requests", self.url())).await?.text().await?;
        Ok(serde_json::from_str(&text)?)
    }

    /// The PutMetricData requests that got through to moto.
    pub async fn accepted_puts(&self) -> Result<Vec<serde_json::Value>> {
        Ok(self.requests().await?.into_iter().filter(|r| r["op"] == "PutMetricData" && r["fault"].is_null()).collect())
    }

    /// Call a CloudWatch operation on moto directly (JSON protocol).
    pub async fn moto(&self, op: &str, body: serde_json::Value) -> Result<serde_json::Value> {
        let target = format!("GraniteServiceVersion20100801.{op}");
        let text = self
            .moto_post("monitoring", &[("X-Amz-Target", &target), ("Content-Type", "application/x-amz-json-1.0")], body.to_string())
            .await?;
        Ok(serde_json::from_str(&text)?)
    }

    /// POST `body` to moto directly, signed (in form) for `service` in us-east-1; the answer's text.
    async fn moto_post(&self, service: &str, headers: &[(&str, &str)], body: String) -> Result<String> {
        let mut req = reqwest::Client::new().post(format!("http://127.0.0.1:{}/", self.moto_port)).header(
            "Authorization",
            format!("AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=0"),
        );
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.body(body.clone()).send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("moto {service} {body}: {status}: {text}");
        }
        Ok(text)
    }

    /// Datapoints of one metric of dimension CLUSTER_ID=`cluster` over the last hour, by timestamp.
    pub async fn datapoints(&self, metric: &str, cluster: &str) -> Result<Vec<(f64, f64, f64)>> {
        self.datapoints_with(metric, &[("CLUSTER_ID", cluster)]).await
    }

    /// Call an EC2 action on moto directly (EC2's query protocol, as the SDK speaks it); the XML answer.
    pub async fn ec2(&self, params: &[(&str, &str)]) -> Result<String> {
        let enc = |s: &str| -> String {
            s.bytes()
                .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
                .collect()
        };
        let mut body = String::from("Version=2016-11-15");
        for (k, v) in params {
            body.push_str(&format!("&{}={}", enc(k), enc(v)));
        }
        self.moto_post("ec2", &[("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")], body).await
    }

    /// Datapoints of one metric with exactly these dimensions over the last hour, by timestamp.
    pub async fn datapoints_with(&self, metric: &str, dimensions: &[(&str, &str)]) -> Result<Vec<(f64, f64, f64)>> {
        let dims: Vec<serde_json::Value> = dimensions.iter().map(|(n, v)| serde_json::json!({"Name": n, "Value": v})).collect();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64();
        let v = self
            .moto(
                "GetMetricStatistics",
                serde_json::json!({
                    "Namespace": "Kubernetes",
                    "MetricName": metric,
                    "Dimensions": dims,
                    "StartTime": now - 3600.0,
                    "EndTime": now + 600.0,
                    "Period": 1,
                    "Statistics": ["Sum", "Maximum", "SampleCount"],
                }),
            )
            .await?;
        let mut out: Vec<(f64, f64, f64)> = v["Datapoints"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|d| {
                        (
                            d["Timestamp"].as_f64().unwrap_or(0.0),
                            d["Sum"].as_f64().unwrap_or(f64::NAN),
                            d["Maximum"].as_f64().unwrap_or(f64::NAN),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(out)
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
