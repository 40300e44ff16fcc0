//! `serve`'s configuration (the commands themselves are in [`crate::cli`]).
//!
//! `serve`'s flags are one clap `Args` group per concern, each declared next to the component it
//! configures ([`ListenArgs`], [`StateArgs`], [`IngestArgs`], [`PublishArgs`], [`CloudWatchArgs`],
//! [`PrometheusArgs`], [`AwsArgs`], [`SubnetArgs`], [`TlsArgs`], [`TokenAuthArgs`], [`ConsumerArgs`]),
//! and [`ServeArgs::validate`] turns them into the typed [`ServerConfig`] once: per-flag rules
//! (ranges, switches, a blank value meaning unset) are the flag parsers' (`cni_metrics_proto::flags`),
//! the rules across flags are here. `watch`'s and `demo`'s flags live with them.

use std::time::Duration;

use clap::{Args, Parser};
use cni_metrics_proto::telemetry::LogFormat;

use crate::auth::{TokenAuthArgs, TokenAuthConfig};
use crate::aws::AwsArgs;
use crate::consumer::ConsumerArgs;
use crate::http::PrometheusArgs;
use crate::ingest::IngestArgs;
use crate::listen::ListenArgs;
use crate::publish::PublishArgs;
use crate::sinks::cloudwatch::{CloudWatchArgs, CloudWatchConfig, UnknownMetric};
use crate::state::{StateArgs, StateConfig};
use crate::subnets::{SubnetArgs, SubnetsConfig};
use crate::tls::{TlsArgs, TlsConfig, TlsIncomplete};

pub use cni_metrics_proto::flags::parse_switch;

/// Logging, for every command.
#[derive(Clone, Debug, Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// Every flag of `serve`, a group per concern.
#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub state: StateArgs,
    #[command(flatten)]
    pub ingest: IngestArgs,
    #[command(flatten)]
    pub publish: PublishArgs,
    #[command(flatten)]
    pub cloudwatch: CloudWatchArgs,
    #[command(flatten)]
    pub prometheus: PrometheusArgs,
    #[command(flatten)]
    pub aws: AwsArgs,
    #[command(flatten)]
    pub subnets: SubnetArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub auth: TokenAuthArgs,
    #[command(flatten)]
    pub consumer: ConsumerArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// `serve`'s flags alone, as their own command line (defaults, tests).
#[derive(Parser)]
pub(crate) struct Serve {
    #[command(flatten)]
    pub(crate) args: ServeArgs,
}

/// What the aggregator runs with, validated: one typed part per concern.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: ListenArgs,
    pub state: StateConfig,
    pub ingest: IngestArgs,
    pub publish: PublishArgs,
    /// `None` unless `--cloudwatch` is on.
    pub cloudwatch: Option<CloudWatchConfig>,
    /// Whether `/metrics` serves the cluster aggregates (`USE_PROMETHEUS`); self-metrics always.
    pub prometheus: bool,
    /// `None` unless `--subnet-metrics` is on.
    pub subnets: Option<SubnetsConfig>,
    /// `None` without mutual TLS.
    pub tls: Option<TlsConfig>,
    /// `None` unless `--agent-auth token`.
    pub auth: Option<TokenAuthConfig>,
    pub subscribe_interval: Duration,
    pub log_format: LogFormat,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    UnknownMetric(#[from] UnknownMetric),
    #[error(transparent)]
    TlsIncomplete(#[from] TlsIncomplete),
}

impl ServeArgs {
    /// The typed configuration; the rules across flags are checked here, once.
    pub fn validate(self) -> Result<ServerConfig, ConfigError> {
        let region = self.aws.region.into_option();
        Ok(ServerConfig {
            cloudwatch: self.cloudwatch.config(region.clone())?,
            subnets: self.subnets.config(region),
            tls: self.tls.config()?,
            auth: self.auth.config(),
            state: self.state.config(),
            listen: self.listen,
            ingest: self.ingest,
            publish: self.publish,
            prometheus: self.prometheus.prometheus,
            subscribe_interval: self.consumer.subscribe_interval,
            log_format: self.log.log_format,
        })
    }

    /// Every flag at its default, the environment ignored. The clap attributes are the one source of
    /// defaults: [`ServerConfig::for_test`] derives from them and the cores' `Default`s are tested
    /// against them.
    pub fn defaults() -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let cmd = Serve::command().mut_args(|a| a.env(None::<&'static str>));
        // Only the defaults are parsed here, so this fails only if an attribute is broken (the tests'
        // `defaults_parse_and_match_the_cores` proves it does not).
        let m = cmd.try_get_matches_from(["serve"]).expect("the aggregator's flag defaults parse");
        Serve::from_arg_matches(&m).expect("the aggregator's flag defaults parse").args
    }
}

impl ServerConfig {
    /// Defaults for an in-process aggregator on loopback (tests and the demo): free ports, no sink.
    pub fn for_test(cluster_id: &str) -> Self {
        let mut args = ServeArgs::defaults();
        args.listen = ListenArgs {
            grpc_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            http_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        args.state.cluster_id = cni_metrics_proto::flags::NonBlank::new(Some(cluster_id.to_owned()));
        // Quicker than production: tests and the demo stop and redraw in fractions of a second.
        args.publish.shutdown_grace = Duration::from_secs(5);
        args.consumer.subscribe_interval = Duration::from_millis(200);
        args.cloudwatch.cloudwatch = false;
        args.publish.stdout = false;
        // The defaults pass validation (the tests prove it), so only a broken attribute lands here.
        args.validate().expect("the default configuration is valid")
    }
}

#[cfg(test)]
mod tests;
