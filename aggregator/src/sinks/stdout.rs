//! The stdout sink: one line per datum, like upstream's log lines, for dry runs; its encoder is a pure
//! function.

use std::fmt::Write as _;
use std::io::Write;
use std::sync::Mutex;

use cni_metrics_proto::clock::rfc3339;

use super::{BoxFuture, Sink, SinkError};
use crate::state::Window;

/// Prints each datum as a line to a writer (stdout by default).
pub struct StdoutSink {
    out: Mutex<Box<dyn Write + Send>>,
}

impl StdoutSink {
    pub fn new() -> Self {
        Self { out: Mutex::new(Box::new(std::io::stdout())) }
    }

    pub fn with_writer(w: Box<dyn Write + Send>) -> Self {
        Self { out: Mutex::new(w) }
    }
}

impl Default for StdoutSink {
    fn default() -> Self {
        Self::new()
    }
}

impl Sink for StdoutSink {
    fn name(&self) -> &'static str {
        "stdout"
    }

    fn publish<'a>(&'a self, _seq: u64, window: &'a Window) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let text = encode_lines(window);
            let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
            out.write_all(text.as_bytes())?;
            out.flush()?;
            Ok(())
        })
    }
}

/// One line per datum: `<RFC 3339 time> cluster_id=<id> metric=<CloudWatch name> value=<v> unit=<unit>`.
pub fn encode_lines(w: &Window) -> String {
    let mut s = String::with_capacity(w.datums.len() * 96);
    let ts = rfc3339(w.end_unix_ms);
    for d in &w.datums {
        let dim = d.dimension.as_ref().map(|(n, v)| format!(" {n}={v}")).unwrap_or_default();
        let _ = writeln!(s, "{ts} cluster_id={}{dim} metric={} value={} unit={}", w.cluster_id, d.metric_name, d.value, d.unit);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Datum, Unit};

    #[test]
    fn stdout_lines() {
        let w = Window {
            cluster_id: "prod".into(),
            region_hint: None,
            end_unix_ms: 0,
            nodes: 2,
            datums: vec![
                Datum { metric_name: "assignIPAddresses", value: 42.0, unit: Unit::Count, dimension: None },
                Datum { metric_name: "awsAPILatency", value: 12.5, unit: Unit::Milliseconds, dimension: None },
                Datum {
                    metric_name: "ipHeadroom",
                    value: 7.0,
                    unit: Unit::Count,
                    dimension: Some(("AvailabilityZone", "eu-west-1a".into())),
                },
            ],
        };
        assert_eq!(
            encode_lines(&w),
            "1970-01-01T00:00:00.000Z cluster_id=prod metric=assignIPAddresses value=42 unit=Count\n\
             1970-01-01T00:00:00.000Z cluster_id=prod metric=awsAPILatency value=12.5 unit=Milliseconds\n\
             1970-01-01T00:00:00.000Z cluster_id=prod AvailabilityZone=eu-west-1a metric=ipHeadroom value=7 unit=Count\n"
        );
    }
}
