//! `cni-metrics-aggregator`: parses the configuration, sets up logging and the shutdown signal, binds the
//! listeners and hands them to [`server::serve`]; `demo` (with the default `demo` feature) runs the
//! self-contained demo instead.
#![forbid(unsafe_code)]

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use cni_metrics_aggregator::config::{Cli, Command};
use cni_metrics_aggregator::sinks::cloudwatch::CloudWatchSink;
use cni_metrics_aggregator::sinks::stdout::StdoutSink;
use cni_metrics_aggregator::sinks::Sink;
use cni_metrics_aggregator::{server, watch};
use cni_metrics_proto::telemetry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg = cli.aggregator.normalized();
    match cli.command {
        #[cfg(feature = "demo")]
        Some(Command::Demo(mut demo_cfg)) => {
            // On a terminal the live view owns the screen: logs go to a file it names.
            if std::io::IsTerminal::is_terminal(&std::io::stdout()) || demo_cfg.log_file.is_some() {
                let path = demo_cfg.log_file.clone().unwrap_or_else(|| std::env::temp_dir().join("cni-metrics-demo.log"));
                let file = std::fs::File::create(&path).with_context(|| format!("cannot write the demo log {}", path.display()))?;
                telemetry::init_file(cfg.log_format, file);
                demo_cfg.log_file = Some(path);
            } else {
                telemetry::init(cfg.log_format);
            }
            return cni_metrics_aggregator::demo::run_demo(demo_cfg, telemetry::shutdown_signal()).await;
        }
        Some(Command::Watch(w)) => {
            telemetry::init(cfg.log_format);
            return watch::run_watch(w, telemetry::shutdown_signal()).await;
        }
        None => telemetry::init(cfg.log_format),
    }
    cfg.validate()?;
    let grpc = cni_metrics_aggregator::listen::bind(cfg.grpc_listen)
        .with_context(|| format!("cannot listen on {} (--grpc-listen)", cfg.grpc_listen))?;
    let http = tokio::net::TcpListener::bind(cfg.http_listen)
        .await
        .with_context(|| format!("cannot listen on {} (--http-listen)", cfg.http_listen))?;
    let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
    if cfg.stdout {
        sinks.push(Arc::new(StdoutSink::new()));
    }
    if cfg.cloudwatch {
        sinks.push(Arc::new(CloudWatchSink::start(cfg.cloudwatch_config())));
    }
    let handles = server::Handles::new(&cfg);
    server::serve(cfg, grpc, http, sinks, handles, telemetry::shutdown_signal()).await?;
    Ok(())
}
