//! `qlik-rotator history`: the audit trail of attempts, newest first, from the state backend;
//! and `qlik-rotator status`, each job's state from the same store ([`crate::status`]).
//!
//! With SQLite it opens `<state_dir>/state.db` read-only and without the directory lock (a WAL
//! reader neither waits for nor blocks the daemon), so it works while the daemon runs. Every
//! text field is escaped ([`text::printable`]) in both outputs: job names come from the config
//! file and versions from the vault, and neither may drive the terminal. Nothing is sent.

use std::process::ExitCode;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::{
    cli::{HistoryArgs, HistoryOutput, StatusArgs},
    commands::{self, EXIT_USAGE},
    config::{Config, ConfigInput, JobConfig, state::BackendConfig},
    state::{Attempt, HistoryQuery, JobState, StateBackend, StateError, sqlite::HistoryReader},
    status,
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

/// Runs `status` (the data: [`crate::status`]).
pub async fn status(args: &StatusArgs, input: &dyn ConfigInput) -> ExitCode {
    let cfg = match commands::load(&args.config.config, input) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let jobs: Vec<&JobConfig> = match &args.job {
        None => cfg.jobs.iter().collect(),
        Some(name) => match cfg.job(name) {
            Some(j) => vec![j],
            None => {
                crate::telemetry::fatal(
                    &format!(
                        "--job: no job named {} in the configuration",
                        text::quoted(name, 128)
                    ),
                    &[],
                );
                return ExitCode::from(EXIT_USAGE);
            }
        },
    };
    let now = Utc::now();
    let statuses = match read_statuses(&cfg, &jobs, now).await {
        Ok(s) => s,
        Err((key, e, code)) => {
            crate::telemetry::fatal(&format!("{key}: {}", Escaped(&e.to_string())), &[]);
            return ExitCode::from(code);
        }
    };
    match args.output {
        HistoryOutput::Json => {
            crate::telemetry::print_document("status", status::to_json(&statuses, now))
        }
        HistoryOutput::Table => {
            for line in status::table(&statuses) {
                crate::outln!("{line}");
            }
        }
    }
    ExitCode::SUCCESS
}

type ReadError = (&'static str, StateError, u8);

/// The statuses of `jobs` from the state store, read without its lock.
async fn read_statuses(
    cfg: &Config,
    jobs: &[&JobConfig],
    now: DateTime<Utc>,
) -> Result<Vec<status::JobStatus>, ReadError> {
    let query = |job: &JobConfig| HistoryQuery {
        job: Some(job.name.clone()),
        limit: status::ATTEMPTS_PER_JOB,
        ..HistoryQuery::default()
    };
    let build = |job: &JobConfig, state: &BTreeMap<String, JobState>, attempts: &[Attempt]| {
        status::job_status(
            job,
            status::Known {
                state,
                attempts,
                event_driven: status::event_driven(cfg, job),
                // The state store does not record it: the daemon knows it (`GET /jobs`).
                secret_created: None,
                now,
            },
        )
    };
    match &cfg.state.backend {
        BackendConfig::Sqlite => {
            let dir_err = |e| ("daemon.state_dir", e, EXIT_USAGE);
            let Some(reader) = HistoryReader::open(&cfg.daemon.state_dir).map_err(dir_err)? else {
                eprintln!(
                    "no state database in {} yet: nothing has been recorded",
                    Escaped(&cfg.daemon.state_dir.display().to_string())
                );
                return Ok(jobs
                    .iter()
                    .map(|j| build(j, &BTreeMap::new(), &[]))
                    .collect());
            };
            let state = reader.applied().map_err(dir_err)?;
            let mut out = Vec::with_capacity(jobs.len());
            for job in jobs {
                let attempts = reader.history(&query(job)).map_err(dir_err)?;
                out.push(build(job, &state, &attempts));
            }
            Ok(out)
        }
        BackendConfig::DynamoDb(d) => {
            let table_err = |e| ("state.table", e, commands::EXIT_FAILED);
            let db = crate::state::dynamodb::DynamoState::connect(
                &d.table,
                d.region.as_deref(),
                cfg.state.history_retention,
            )
            .await;
            let state = db.load().await.map_err(table_err)?;
            let mut out = Vec::with_capacity(jobs.len());
            for job in jobs {
                let attempts = db.history(&query(job)).await.map_err(table_err)?;
                out.push(build(job, &state, &attempts));
            }
            Ok(out)
        }
    }
}
