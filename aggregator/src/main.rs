//! `cni-metrics-aggregator`: parses the configuration, sets up logging and the shutdown signal, binds the
//! listeners and hands them to [`server::serve`]; `demo` (with the default `demo` feature) runs the
//! self-contained demo instead.
#![forbid(unsafe_code)]

use std::sync::Arc;

use anyhow::Context as _;
use cni_metrics_aggregator::cli::{Cli, Command};
use cni_metrics_aggregator::config::ServerConfig;
use cni_metrics_aggregator::sinks::cloudwatch::CloudWatchSink;
use cni_metrics_aggregator::sinks::stdout::StdoutSink;
use cni_metrics_aggregator::sinks::Sink;
use cni_metrics_aggregator::{server, watch};
use cni_metrics_proto::telemetry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse_args().command {
        #[cfg(feature = "demo")]
        Command::Demo(mut demo_cfg) => {
            // On a terminal the live view owns the screen: logs go to a file it names.
            let format = demo_cfg.log.log_format;
            if std::io::IsTerminal::is_terminal(&std::io::stdout()) || demo_cfg.log_file.is_some() {
                let path = demo_cfg.log_file.clone().unwrap_or_else(|| std::env::temp_dir().join("cni-metrics-demo.log"));
                let file = std::fs::File::create(&path).with_context(|| format!("cannot write the demo log {}", path.display()))?;
                telemetry::init_file(format, file);
                demo_cfg.log_file = Some(path);
            } else {
                telemetry::init(format);
            }
            cni_metrics_aggregator::demo::run_demo(demo_cfg, telemetry::shutdown_signal()).await
        }
        Command::Watch(w) => {
            telemetry::init(w.log.log_format);
            watch::run_watch(w, telemetry::shutdown_signal()).await
        }
        Command::Serve(args) => {
            telemetry::init(args.log.log_format);
            serve(args.validate()?).await
        }
    }
}

/// Bind the listeners, start the sinks and serve until the shutdown signal.
async fn serve(cfg: ServerConfig) -> anyhow::Result<()> {
    let grpc_addr = cfg.listen.grpc_listen;
    let grpc = cni_metrics_aggregator::listen::bind(grpc_addr).with_context(|| format!("cannot listen on {grpc_addr} (--grpc-listen)"))?;
    let http_addr = cfg.listen.http_listen;
    let http = tokio::net::TcpListener::bind(http_addr).await.with_context(|| format!("cannot listen on {http_addr} (--http-listen)"))?;
    let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
    if cfg.publish.stdout {
        sinks.push(Arc::new(StdoutSink::new()));
    }
    if let Some(cw) = cfg.cloudwatch.clone() {
        sinks.push(Arc::new(CloudWatchSink::start(cw)));
    }
    let handles = server::Handles::new(&cfg);
    server::serve(cfg, grpc, http, sinks, handles, telemetry::shutdown_signal()).await?;
    Ok(())
}
