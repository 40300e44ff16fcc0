//! Reads ipamd's page over HTTP with a bounded timeout and body size, and classifies every failure into a
//! small set of statuses the aggregator understands (connection refused means ipamd is not ready yet or
//! runs with `DISABLE_METRICS=true`).

use std::time::Duration;

use cni_metrics_proto::v1::ScrapeStatus;

#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("connection refused (ipamd not ready, or DISABLE_METRICS=true)")]
    Refused,
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    #[error("ipamd answered HTTP {0}")]
    HttpStatus(u16),
    #[error("page larger than the {0}-byte limit")]
    TooLarge(usize),
    #[error("ipamd unreachable: {0}")]
    Unreachable(String),
}

impl ScrapeError {
    pub fn status(&self) -> ScrapeStatus {
        match self {
            ScrapeError::Refused => ScrapeStatus::Refused,
            ScrapeError::Timeout(_) => ScrapeStatus::Timeout,
            ScrapeError::HttpStatus(_) => ScrapeStatus::HttpError,
            ScrapeError::TooLarge(_) => ScrapeStatus::TooLarge,
            ScrapeError::Unreachable(_) => ScrapeStatus::Unreachable,
        }
    }
}

/// An HTTP reader of one URL.
#[derive(Clone, Debug)]
pub struct Scraper {
    client: reqwest::Client,
    url: String,
    timeout: Duration,
    max_bytes: usize,
}

impl Scraper {
    pub fn new(url: &str, timeout: Duration, max_bytes: usize) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .no_proxy()
            // A fresh connection per scrape: a restarted or stopped ipamd is seen as such at once.
            .pool_max_idle_per_host(0)
            .user_agent(concat!("cni-metrics-agent/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { client, url: url.to_owned(), timeout, max_bytes })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Fetch the page as text (invalid UTF-8 replaced, so a binary body becomes bad lines, not an error).
    pub async fn fetch(&self) -> Result<String, ScrapeError> {
        let classify = |e: reqwest::Error| self.classify(e);
        let mut resp = self.client.get(&self.url).header("Accept", "text/plain;version=0.0.4").send().await.map_err(classify)?;
        let status = resp.status();
        if !status.is_success() {
            return Err(ScrapeError::HttpStatus(status.as_u16()));
        }
        if resp.content_length().is_some_and(|n| n > self.max_bytes as u64) {
            return Err(ScrapeError::TooLarge(self.max_bytes));
        }
        let mut body = Vec::with_capacity(resp.content_length().map_or(16 * 1024, |n| n as usize));
        while let Some(chunk) = resp.chunk().await.map_err(classify)? {
            if body.len() + chunk.len() > self.max_bytes {
                return Err(ScrapeError::TooLarge(self.max_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(match String::from_utf8(body) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    fn classify(&self, e: reqwest::Error) -> ScrapeError {
        if e.is_timeout() {
            return ScrapeError::Timeout(self.timeout);
        }
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = source {
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::ConnectionRefused {
                    return ScrapeError::Refused;
                }
                if io.kind() == std::io::ErrorKind::TimedOut {
                    return ScrapeError::Timeout(self.timeout);
                }
            }
            source = s.source();
        }
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        ScrapeError::Unreachable(msg)
    }
}
