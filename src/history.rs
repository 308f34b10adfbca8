//! `qlik-rotator history`: the audit trail of attempts, newest first, from the state backend.
//!
//! With SQLite it opens `<state_dir>/state.db` read-only and without the directory lock (a WAL
//! reader neither waits for nor blocks the daemon), so it works while the daemon runs. Every
//! text field is escaped ([`text::printable`]) in both outputs: job names come from the config
//! file and versions from the vault, and neither may drive the terminal. Nothing is sent.

use std::process::ExitCode;

use crate::{
    cli::{HistoryArgs, HistoryOutput},
    commands::{self, EXIT_USAGE},
    config::{ConfigInput, state::BackendConfig},
    state::{Attempt, HistoryQuery, sqlite::HistoryReader},
    text::{self, Escaped},
};

/// The most characters of one field printed.
const MAX_FIELD: usize = 256;

/// Runs `history`.
pub async fn run(args: &HistoryArgs, input: &dyn ConfigInput) -> ExitCode {
    let cfg = match commands::load(&args.config.config, input) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let query = HistoryQuery {
        job: args.job.clone(),
        connection: args.connection.clone(),
        since_ms: args.since.map(|d| {
            chrono::Utc::now()
                .timestamp_millis()
                .saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        }),
        limit: args.limit as usize,
    };
    let rows = match &cfg.state.backend {
        BackendConfig::Sqlite => match HistoryReader::open(&cfg.daemon.state_dir) {
            Ok(Some(reader)) => reader.history(&query),
            Ok(None) => {
                eprintln!(
                    "no state database in {} yet: nothing has been recorded",
                    Escaped(&cfg.daemon.state_dir.display().to_string())
                );
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        },
        // The shared table (one Query, newest first; the table's TTL and the daemons prune).
        BackendConfig::DynamoDb(d) => {
            let db = crate::state::dynamodb::DynamoState::connect(
                &d.table,
                d.region.as_deref(),
                cfg.state.history_retention,
            )
            .await;
            match crate::state::StateBackend::history(&db, &query).await {
                Ok(rows) => Ok(rows),
                Err(e) => {
                    eprintln!("error: state.table: {}", Escaped(&e.to_string()));
                    return ExitCode::from(commands::EXIT_FAILED);
                }
            }
        }
    };
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!("error: daemon.state_dir: {}", Escaped(&e.to_string()));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match args.output {
        HistoryOutput::Json => crate::outln!("{}", to_json(&rows)),
        HistoryOutput::Table => {
            for line in table(&rows) {
                crate::outln!("{line}");
            }
        }
    }
    ExitCode::SUCCESS
}

fn field(s: &str) -> String {
    text::printable(s, MAX_FIELD)
}

fn opt(s: Option<&String>) -> String {
    s.map_or_else(|| "-".to_owned(), |s| field(s))
}

fn time(at_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(at_ms).map_or_else(
        || at_ms.to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}

/// The JSON document `{"schema": "qlik-rotator.history/v1", "attempts": [...]}`: one
/// object per attempt, every text field escaped as in the table.
pub fn to_json(rows: &[Attempt]) -> String {
    let items: Vec<serde_json::Value> = rows
        .iter()
        .map(|a| {
            serde_json::json!({
                "at": time(a.at_ms),
                "at_ms": a.at_ms,
                "job": field(&a.job),
                "connection": field(&a.connection),
                "outcome": field(&a.outcome),
                "stage": a.stage.as_deref().map(field),
                "error_type": a.error_type.as_deref().map(field),
                "secret_version": a.secret_version.as_deref().map(field),
                "duration_ms": a.duration_ms,
            })
        })
        .collect();
    // The shape of every `--output json` document: one object, `schema` first.
    format!(
        "{{\"schema\":\"qlik-rotator.history/v1\",\"attempts\":{}}}",
        serde_json::Value::Array(items)
    )
}

/// The table: a header, then one aligned line per attempt.
pub fn table(rows: &[Attempt]) -> Vec<String> {
    let header = [
        "TIME",
        "JOB",
        "CONNECTION",
        "OUTCOME",
        "STAGE",
        "ERROR",
        "VERSION",
        "DURATION",
    ]
    .map(str::to_owned);
    let mut cells: Vec<[String; 8]> = vec![header];
    cells.extend(rows.iter().map(|a| {
        [
            time(a.at_ms),
            field(&a.job),
            field(&a.connection),
            field(&a.outcome),
            opt(a.stage.as_ref()),
            opt(a.error_type.as_ref()),
            opt(a.secret_version.as_ref()),
            format!("{}ms", a.duration_ms),
        ]
    }));
    let mut widths = [0usize; 8];
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    cells
        .iter()
        .map(|row| {
            let mut line = String::new();
            for (i, (c, w)) in row.iter().zip(widths).enumerate() {
                if i + 1 == row.len() {
                    line.push_str(c);
                } else {
                    line.push_str(c);
                    line.extend(std::iter::repeat_n(' ', w - c.chars().count() + 2));
                }
            }
            line
        })
        .collect()
}
