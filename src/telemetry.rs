//! Logging setup: tracing to stderr, human-readable or JSON, filtered by `RUST_LOG`, with the
//! HTTP and AWS client crates capped at `info` whatever `RUST_LOG` says.

use tracing_subscriber::{
    EnvFilter, Layer, filter::Targets, fmt, layer::SubscriberExt, util::SubscriberInitExt,
};

/// Crates whose debug/trace output may contain wire data (headers, bodies, tokens, signed
/// requests); capped at `info`. A target matches by prefix (`hyper` covers `hyper::proto::h1`).
pub const WIRE_TARGETS: &[&str] = &[
    "aws_smithy_runtime",
    "aws_smithy_runtime_api",
    "aws_smithy_http",
    "aws_smithy_http_client",
    "aws_sdk_secretsmanager",
    "aws_config",
    "aws_runtime",
    "aws_sigv4",
    "aws_credential_types",
    "hyper",
    "hyper_util",
    "h2",
    "reqwest",
    "rustls",
    "tower",
    "axum",
];

/// The cap applied to [`WIRE_TARGETS`], on top of `RUST_LOG`.
///
/// It is a separate filter, not extra `RUST_LOG` directives, so that no directive can lift it:
/// `RUST_LOG=trace`, `RUST_LOG=hyper=trace` and `RUST_LOG=hyper::proto=trace` all leave these
/// crates at `info`. There is deliberately no override: their detailed output can carry the
/// Authorization header, OAuth token bodies and signed AWS requests, and a log is not the place
/// to debug them.
pub fn wire_cap() -> Targets {
    Targets::new()
        .with_default(tracing::level_filters::LevelFilter::TRACE)
        .with_targets(
            WIRE_TARGETS
                .iter()
                .map(|t| (*t, tracing::level_filters::LevelFilter::INFO)),
        )
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Pretty,
    /// One JSON object per line (for log shippers).
    Json,
}

/// Installs the global subscriber. `default_level` applies when `RUST_LOG` is unset; the
/// scheduler's own start-up chatter ("Job creator created", …) is then shown from `warn`.
/// [`WIRE_TARGETS`] are capped at `info` in every case (see [`wire_cap`]).
pub fn init(format: LogFormat, default_level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{default_level},tokio_cron_scheduler=warn")));
    // Colours only for a person at a terminal: in a file, a pipe or journald, escape
    // sequences are noise (and a line's bytes should be what the event said).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let layer = match format {
        LogFormat::Pretty => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .compact()
            .with_target(false)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .boxed(),
    };
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(filter).with_filter(wire_cap()))
        .try_init();
}

/// Writes to stdout; when the reader has gone away (`qlik-rotator … | head`), exits quietly
/// with status 141, as a process killed by SIGPIPE would, instead of panicking.
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush())
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(141);
    }
}

/// `println!` for command output that tolerates a closed pipe (see [`write_stdout`]).
#[macro_export]
macro_rules! outln {
    () => {
        $crate::telemetry::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::telemetry::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::*;

    #[test]
    fn wire_targets_are_capped_at_info_and_the_rest_is_not() {
        let cap = wire_cap();
        for t in WIRE_TARGETS {
            let sub = format!("{t}::inner::module");
            for target in [*t, sub.as_str()] {
                assert!(!cap.would_enable(target, &Level::DEBUG), "{target} debug");
                assert!(!cap.would_enable(target, &Level::TRACE), "{target} trace");
                assert!(cap.would_enable(target, &Level::INFO), "{target} info");
            }
        }
        assert!(cap.would_enable("qlik_rotator::daemon", &Level::TRACE));
        assert!(cap.would_enable("tokio_cron_scheduler", &Level::DEBUG));
    }
}
