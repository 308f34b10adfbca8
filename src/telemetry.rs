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
    let _ = FORMAT.set(format);
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

/// The log format chosen at [`init`] (pretty until then).
static FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// The log format chosen at [`init`].
pub fn log_format() -> LogFormat {
    FORMAT.get().copied().unwrap_or(LogFormat::Pretty)
}

/// A fatal error on stderr: `error: MESSAGE` and one indented line per detail, or under
/// `--log-format json` one JSON line `{"timestamp", "level": "ERROR", "fatal": true,
/// "message", "details": [...]}` that a log shipper can parse like every other line. The
/// caller escapes text from outside ([`crate::text`]); JSON escapes the rest.
pub fn fatal(message: &str, details: &[String]) {
    eprint!("{}", fatal_text(log_format(), message, details));
}

/// What [`fatal`] writes, for a given format.
pub fn fatal_text(format: LogFormat, message: &str, details: &[String]) -> String {
    match format {
        LogFormat::Pretty => {
            let mut s = format!("error: {message}\n");
            for d in details {
                s.push_str(&format!("  {d}\n"));
            }
            s
        }
        LogFormat::Json => {
            let mut line = serde_json::json!({
                "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "level": "ERROR",
                "fatal": true,
                "message": message,
            });
            if !details.is_empty() {
                line["details"] = serde_json::json!(details);
            }
            format!("{line}\n")
        }
    }
}

/// The `schema` value of a command's JSON document: `qlik-rotator.COMMAND/v1`. The version
/// changes only when a field is removed or changes meaning; new fields may appear within it.
pub fn schema(command: &str) -> String {
    format!("qlik-rotator.{command}/v1")
}

/// Prints a command's `--output json` document: `body` (an object) with `schema` added, as
/// one line on stdout. Shared by every command with JSON output (`plan`, `rotate`,
/// `check-config`, `connectors`, `describe-connector`, and later `status`, `coverage`).
pub fn print_document(command: &str, body: serde_json::Value) {
    write_stdout(format_args!("{}\n", document(command, body)));
}

/// The document [`print_document`] prints: `{"schema": …, …body}` on one line, `schema`
/// first (a reader can dispatch on it before parsing the rest).
pub fn document(command: &str, mut body: serde_json::Value) -> String {
    let schema = serde_json::Value::String(schema(command));
    match body.as_object_mut() {
        Some(map) => {
            map.remove("schema");
            let rest = body.to_string();
            match rest.strip_prefix('{').filter(|r| *r != "}") {
                Some(r) => format!("{{\"schema\":{schema},{r}"),
                None => format!("{{\"schema\":{schema}}}"),
            }
        }
        None => serde_json::json!({"schema": schema, "value": body}).to_string(),
    }
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

    #[test]
    fn fatal_errors_are_one_json_line_under_json_and_plain_lines_otherwise() {
        let details = vec!["jobs[0].source: \"x\"\nforged".to_owned()];
        let json = fatal_text(LogFormat::Json, "bad \"config\"", &details);
        assert_eq!(json.lines().count(), 1, "{json}");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["level"], "ERROR");
        assert_eq!(v["fatal"], true);
        assert_eq!(v["message"], "bad \"config\"");
        assert_eq!(v["details"][0], details[0]);
        let pretty = fatal_text(LogFormat::Pretty, "bad", &["a".to_owned()]);
        assert_eq!(pretty, "error: bad\n  a\n");
    }

    #[test]
    fn documents_start_with_their_schema() {
        let d = document("plan", serde_json::json!({"ok": true, "schema": "forged"}));
        assert_eq!(d, r#"{"schema":"qlik-rotator.plan/v1","ok":true}"#);
        assert_eq!(
            document("x", serde_json::json!({})),
            r#"{"schema":"qlik-rotator.x/v1"}"#
        );
        let v: serde_json::Value =
            serde_json::from_str(&document("y", serde_json::json!([1]))).unwrap();
        assert_eq!(v["value"][0], 1);
    }
}
