//! Logging set-up shared by both binaries: `tracing` with key/value fields, text or JSON lines, level from
//! `RUST_LOG`, else upstream's `AWS_VPC_K8S_CNI_LOGLEVEL`, else `info`. Text is coloured only on a
//! terminal, and never when `NO_COLOR` is set: a file, a pipe or a log shipper gets plain text.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Install the global subscriber writing to stderr (once; later calls are no-ops).
pub fn init(format: LogFormat) {
    let colour = use_colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR"));
    install(format, colour, std::io::stderr);
}

/// Logging as [`init`], into `file` instead of stderr (the demo's live view owns the terminal).
pub fn init_file(format: LogFormat, file: std::fs::File) {
    install(format, false, std::sync::Mutex::new(file));
}

fn install<W>(format: LogFormat, colour: bool, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = filter_directive(std::env::var("RUST_LOG").ok(), std::env::var("AWS_VPC_K8S_CNI_LOGLEVEL").ok());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(colour).with_writer(writer);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The filter: `RUST_LOG` when it parses, else upstream's level variable (any case), else `info`.
fn filter_directive(rust_log: Option<String>, cni_level: Option<String>) -> String {
    let parses = |f: &String| EnvFilter::try_new(f).is_ok();
    rust_log.filter(parses).or_else(|| cni_level.map(|l| l.to_ascii_lowercase()).filter(parses)).unwrap_or_else(|| "info".to_owned())
}

/// ANSI colour only on a terminal, and not when `NO_COLOR` is set to anything but the empty string.
fn use_colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Completes on SIGTERM (Kubernetes) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("interrupt received, shutting down"),
        _ = term => tracing::info!("SIGTERM received, shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        // (terminal, NO_COLOR, colour)
        let cases = [(true, None, true), (true, Some(""), true), (true, Some("1"), false), (false, None, false), (false, Some("1"), false)];
        for (terminal, no_color, want) in cases {
            assert_eq!(use_colour(terminal, no_color.map(Into::into)), want, "{terminal} {no_color:?}");
        }
    }

    #[test]
    fn level_from_rust_log_then_the_cni_variable() {
        let s = |v: &str| Some(v.to_owned());
        let cases = [
            (None, None, "info"),
            (None, s("DEBUG"), "debug"),
            (s("warn"), s("DEBUG"), "warn"),
            (s("not a filter ==="), s("Error"), "error"),
            (None, s("= nonsense ="), "info"),
        ];
        for (rust_log, cni, want) in cases {
            assert_eq!(filter_directive(rust_log.clone(), cni.clone()), want, "{rust_log:?} {cni:?}");
        }
    }
}
