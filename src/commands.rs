//! The one-shot commands behind the CLI. Results go to stdout, logs to stderr.

use std::{io::Write, path::Path, process::ExitCode};

use crate::{
    app,
    config::{self, Config, ConfigInput},
    rotation::{Outcome, RunOptions},
};

/// Exit code for an invalid configuration or usage (EX_USAGE).
pub const EXIT_USAGE: u8 = 64;
/// Exit code when a job failed.
pub const EXIT_FAILED: u8 = 1;

/// Loads and validates; prints every error to stderr on failure.
///
/// # Errors
/// The exit code to use.
pub fn load(path: &Path, input: &dyn ConfigInput) -> Result<Config, ExitCode> {
    config::load(path, input).map_err(|errs| {
        eprintln!("error: {} is not a valid configuration", path.display());
        for e in &errs.0 {
            eprintln!("  {e}");
        }
        ExitCode::from(EXIT_USAGE)
    })
}

/// `check-config`.
pub fn check_config(path: &Path, input: &dyn ConfigInput) -> ExitCode {
    match load(path, input) {
        Ok(cfg) => {
            println!(
                "{}: OK ({} job(s), {} source(s))",
                path.display(),
                cfg.jobs.len(),
                cfg.sources.len()
            );
            for job in &cfg.jobs {
                println!(
                    "  {}: {} via {} ({} scheme) from {}:{}{}",
                    job.name,
                    job.connection,
                    job.connector.id,
                    job.scheme.name,
                    job.source,
                    job.secret.id,
                    job.schedule
                        .as_deref()
                        .map(|s| format!(", schedule \"{s}\" {}", job.timezone))
                        .unwrap_or_default()
                );
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn select<'a>(cfg: &'a Config, job: Option<&str>) -> Result<Vec<&'a config::JobConfig>, ExitCode> {
    match job {
        None => Ok(cfg.jobs.iter().collect()),
        Some(name) => match cfg.job(name) {
            Some(j) => Ok(vec![j]),
            None => {
                let names: Vec<_> = cfg.jobs.iter().map(|j| j.name.as_str()).collect();
                eprintln!("error: no job named {name:?} (jobs: {})", names.join(", "));
                Err(ExitCode::from(EXIT_USAGE))
            }
        },
    }
}

/// `plan`: masked PATCH documents, nothing sent.
pub async fn plan(path: &Path, job: Option<&str>, input: &dyn ConfigInput) -> ExitCode {
    let cfg = match load(path, input) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let jobs = match select(&cfg, job) {
        Ok(j) => j,
        Err(code) => return code,
    };
    let rotator = match app::rotator(&cfg, input).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut ok = true;
    let mut out = std::io::stdout().lock();
    for job in jobs {
        let report = rotator
            .run(
                job,
                RunOptions {
                    plan_only: true,
                    ..RunOptions::default()
                },
            )
            .await;
        match &report.outcome {
            Outcome::Planned(doc) => {
                let _ = writeln!(
                    out,
                    "{}: PATCH /api/v1/data-connections/{} (secret version {}; values masked)",
                    job.name,
                    report.connection_id.as_deref().unwrap_or("?"),
                    report.secret_version.as_deref().unwrap_or("?")
                );
                let pretty = serde_json::to_string_pretty(doc).unwrap_or_default();
                for line in pretty.lines() {
                    let _ = writeln!(out, "  {line}");
                }
            }
            _ => {
                ok = false;
                let _ = writeln!(out, "{}", report.line());
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

/// `rotate`: one line per job; exit 0 only if every job succeeded.
pub async fn rotate(path: &Path, job: Option<&str>, input: &dyn ConfigInput) -> ExitCode {
    let cfg = match load(path, input) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let jobs = match select(&cfg, job) {
        Ok(j) => j,
        Err(code) => return code,
    };
    let rotator = match app::rotator(&cfg, input).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut failed = 0;
    for job in &jobs {
        let report = rotator.run(job, RunOptions::default()).await;
        if !report.outcome.is_success() {
            failed += 1;
        }
        println!("{}", report.line());
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!("{failed} of {} job(s) failed", jobs.len());
        ExitCode::from(EXIT_FAILED)
    }
}
