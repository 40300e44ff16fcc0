//! The command line: `serve` (the default: run the aggregator), `watch` and `demo`, each parsing only
//! its own flags (clap with `env =`), so a server setting in a pod's environment never breaks `watch`.
//! `serve`'s flags and their validation are [`crate::config`]'s; `watch`'s and `demo`'s live with them.

use std::ffi::OsString;

use clap::{Parser, Subcommand};

use crate::config::ServeArgs;

#[derive(Clone, Debug, Parser)]
#[command(
    name = "cni-metrics-aggregator",
    version,
    about = "Sums per-node ipamd reports into exact cluster metrics, publishes and re-exposes them",
    after_help = "Without a command the aggregator serves: `cni-metrics-aggregator [FLAGS]` is `cni-metrics-aggregator serve [FLAGS]`."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Debug, Subcommand)]
pub enum Command {
    /// Run the aggregator (the default command).
    Serve(Box<ServeArgs>),
    /// Run an aggregator with simulated nodes (fake ipamd pages, real agents, real gRPC); no AWS, no cluster.
    #[cfg(feature = "demo")]
    Demo(crate::demo::DemoConfig),
    /// A terminal view of a running aggregator (its Consumer gRPC service).
    Watch(crate::watch::WatchConfig),
}

/// The commands, and what `serve` is taken for when the first argument names none.
const COMMANDS: [&str; 4] = ["serve", "demo", "watch", "help"];

impl Cli {
    /// Parse the process arguments, `serve` when no command is named.
    pub fn parse_args() -> Self {
        Self::parse_from(with_default_command(std::env::args_os().collect()))
    }

    /// As [`Cli::parse_args`], for given arguments (tests).
    pub fn try_parse_args(args: Vec<OsString>) -> Result<Self, clap::Error> {
        Self::try_parse_from(with_default_command(args))
    }
}

/// `serve` inserted when the first argument is neither a command nor help/version: the aggregator's
/// manifests run it with flags (or none) and no command.
fn with_default_command(mut args: Vec<OsString>) -> Vec<OsString> {
    let first = args.get(1).and_then(|a| a.to_str());
    let named = first.is_some_and(|a| COMMANDS.contains(&a) || ["-h", "--help", "-V", "--version"].contains(&a));
    if !named {
        args.insert(1.min(args.len()), OsString::from("serve"));
    }
    args
}

#[cfg(test)]
mod tests;
