//! The commands as a user meets them: `serve` without naming it, and `watch` and `demo` reading none of
//! the server's settings.

use std::ffi::OsString;
use std::time::Duration;

use super::*;

fn parse(a: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_args(std::iter::once("cni-metrics-aggregator").chain(a.iter().copied()).map(OsString::from).collect())
}

fn serve(a: &[&str]) -> Result<ServeArgs, String> {
    match parse(a).map_err(|e| e.to_string())?.command {
        Command::Serve(s) => Ok(*s),
        _ => Err("not serve".into()),
    }
}

#[test]
fn without_a_command_the_aggregator_serves() {
    // (arguments, serves)
    let cases: [(&[&str], bool); 6] = [
        (&[], true),
        (&["--publish-interval", "30s"], true),
        (&["serve", "--publish-interval", "30s"], true),
        (&["watch", "--once"], false),
        (&["--help"], false),
        (&["--version"], false),
    ];
    for (a, serves) in cases {
        let got = parse(a).map(|c| matches!(c.command, Command::Serve(_)));
        assert_eq!(got.unwrap_or(false), serves, "{a:?}");
    }
    assert_eq!(serve(&["--publish-interval", "30s"]).map(|s| s.publish.publish_interval), Ok(Duration::from_secs(30)));
}

#[test]
fn watch_and_demo_read_none_of_the_servers_environment() {
    use clap::CommandFactory;
    let cli = Cli::command();
    let envs = |c: &clap::Command| -> Vec<String> {
        c.get_arguments().filter_map(|a| a.get_env()).map(|e| e.to_string_lossy().into_owned()).collect()
    };
    let serve_envs = cli.find_subcommand("serve").map(envs).unwrap_or_default();
    assert!(serve_envs.len() > 40 && serve_envs.contains(&"PUBLISH_INTERVAL".to_owned()), "{serve_envs:?}");
    for name in ["watch", "demo"] {
        let Some(cmd) = cli.find_subcommand(name) else {
            assert!(name == "demo" && cfg!(not(feature = "demo")), "no {name} command");
            continue;
        };
        let shared: Vec<String> = envs(cmd).into_iter().filter(|e| serve_envs.contains(e) && e != "LOG_FORMAT").collect();
        assert!(shared.is_empty(), "{name} reads serve's {shared:?}");
    }
    // A server flag given to watch is refused, not ignored.
    assert!(parse(&["watch", "--publish-interval", "1s"]).is_err());
}

#[test]
fn demo_is_a_command_of_builds_with_the_demo() {
    #[cfg(feature = "demo")]
    assert!(matches!(parse(&["demo", "--nodes", "2"]).map(|c| c.command), Ok(Command::Demo(crate::demo::DemoConfig { nodes: 2, .. }))));
    #[cfg(not(feature = "demo"))]
    assert!(parse(&["demo"]).is_err(), "a build without the demo feature has no demo");
}
