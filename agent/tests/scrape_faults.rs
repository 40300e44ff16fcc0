//! The scraper's error classes against a real HTTP server in each failure mode ipamd can be in: an
//! HTTP error status, a hang, an oversized body, a stopped server.

use std::net::SocketAddr;
use std::time::Duration;

use cni_metrics_agent::scrape::{ScrapeError, Scraper};
use cni_metrics_testkit::{FakeIpamd, Mode, PageStyle, SimIpamd};

#[tokio::test]
async fn scrape_errors_name_what_ipamd_did() {
    let sim = SimIpamd::new(PageStyle::Modern, 1, 1.0);
    let f = FakeIpamd::start(sim, SocketAddr::from(([127, 0, 0, 1], 0))).await.expect("bind");
    let scraper = Scraper::new(&f.url(), Duration::from_millis(300), 64 * 1024).expect("client");
    let page = scraper.fetch().await.expect("page");
    assert!(page.contains("awscni_assigned_ip_addresses"));
    f.set_mode(Mode::Status(503));
    assert!(matches!(scraper.fetch().await, Err(ScrapeError::HttpStatus(503))));
    f.set_mode(Mode::Slow(Duration::from_secs(2)));
    assert!(matches!(scraper.fetch().await, Err(ScrapeError::Timeout(_))));
    f.set_mode(Mode::Huge(200_000));
    assert!(matches!(scraper.fetch().await, Err(ScrapeError::TooLarge(_))));
    f.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(matches!(scraper.fetch().await, Err(ScrapeError::Refused)), "stopped server refuses");
}
