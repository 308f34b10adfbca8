//! The one-shot commands behind the CLI. Results go to stdout, logs to stderr.

use std::{io::Write, path::Path, process::ExitCode};

use futures_util::StreamExt;

use crate::{
    app::{self, App},
    config::{self, Config, ConfigInput, QlikConfig},
    daemon,
    rotation::{Outcome, RunOptions},
    runner::{JobRuntime, RetryPolicy, Runner},
    text::Escaped,
};

/// The exit codes and the error types that choose them, in a module of their own
/// ([`crate::exit`]) so that the modules below this one can name them.
pub use crate::exit::{
    CONFIG_ERROR_TYPES, CREDENTIAL_ERROR_TYPES, EXIT_FAILED, EXIT_IN_USE, EXIT_NO_CREDENTIALS,
    EXIT_UNAVAILABLE, EXIT_USAGE, UNAVAILABLE_ERROR_TYPES, failure_exit,
};

/// Prints a fatal error (one JSON line under `--log-format json`).
fn fatal(message: &str) {
    crate::telemetry::fatal(message, &[]);
}

/// The exit code for a state directory that cannot be opened.
fn state_exit(e: &crate::state::StateError) -> ExitCode {
    ExitCode::from(if e.is_in_use() {
        EXIT_IN_USE
    } else {
        EXIT_USAGE
    })
}

/// Loads and validates, printing every error (in [`crate::app`], the load phase's one helper,
/// so that the commands below this module can use it).
pub use crate::app::load;

/// How far `check-config` goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckMode {
    /// `--syntax-only`: the file alone.
    Syntax,
    /// The default: the file, and the variables and files it names exist.
    Local,
    /// `--online`: also pre-flight every connection and read every secret once.
    Online,
}

/// `check-config [--online | --syntax-only] [--output json]`.
pub async fn check_config(
    path: &Path,
    mode: CheckMode,
    json: bool,
    input: &dyn ConfigInput,
) -> ExitCode {
    use serde_json::json;
    let cfg = match load_for_check(path, json, input) {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    let warnings: Vec<String> = cfg.warnings().iter().map(ToString::to_string).collect();
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    // Everything the configuration points to must exist (values are never read here).
    let missing = if mode == CheckMode::Syntax {
        Vec::new()
    } else {
        references(&cfg, input)
    };
    // Only `--output json` prints the document (at 10,000 jobs it was 15 MiB of `check-config`'s
    // 37 MiB peak in text mode).
    let doc = if json {
        check_document(path, &cfg, &warnings, &missing)
    } else {
        serde_json::Value::Null
    };
    if !missing.is_empty() {
        crate::telemetry::fatal(
            &format!(
                "{} refers to environment variables or files that are missing",
                Escaped(&path.display().to_string())
            ),
            &missing.iter().map(ToString::to_string).collect::<Vec<_>>(),
        );
        print_verdict(json, doc, false);
        return ExitCode::from(EXIT_USAGE);
    }
    if !json {
        print_config_summary(path, &cfg);
    }
    if mode != CheckMode::Online {
        print_verdict(json, doc, true);
        return ExitCode::SUCCESS;
    }
    let rotator = match app::rotator(&cfg, input).await {
        Ok(r) => r,
        Err(e) => {
            fatal(&Escaped(&e.to_string()).to_string());
            return build_exit(&e);
        }
    };
    let mut checks = Vec::new();
    let mut failures: Vec<&'static str> = Vec::new();
    if let Some(check) = check_state_table(&cfg, json).await {
        if check["ok"] != json!(true) {
            failures.push("state_backend");
        }
        checks.push(check);
    }
    if !json {
        let urls: Vec<String> = (cfg.tenants.iter())
            .map(|t| match cfg.multi_tenant {
                true => format!("{} ({})", t.tenant_url, t.name),
                false => t.tenant_url.to_string(),
            })
            .collect();
        crate::outln!("pre-flight against {}:", urls.join(", "));
    }
    for job in &cfg.jobs {
        check_job_online(&rotator, job, json, &mut checks, &mut failures).await;
    }
    let code = failure_exit(&failures);
    let mut doc = doc;
    doc["preflight"] = json!(checks);
    print_verdict(json, doc, code == 0);
    ExitCode::from(code)
}

/// The load phase of `check-config`: on errors, the JSON document (with `--output json`) and
/// the messages on stderr; the exit code to use.
/// With `--output json`, prints `check-config`'s document with its verdict `ok`.
fn print_verdict(json: bool, mut doc: serde_json::Value, ok: bool) {
    if json {
        doc["ok"] = serde_json::json!(ok);
        crate::telemetry::print_document("check-config", doc);
    }
}

fn load_for_check(path: &Path, json: bool, input: &dyn ConfigInput) -> Result<Config, ExitCode> {
    use serde_json::json;
    config::load(path, input).map_err(|errs| {
        if json {
            crate::telemetry::print_document(
                "check-config",
                json!({
                    "ok": false,
                    "config": path.display().to_string(),
                    "errors": errs.0.iter().map(|e| json!({"key": e.path, "message": e.message})).collect::<Vec<_>>(),
                }),
            );
        }
        load(path, input)
            .err()
            .unwrap_or(ExitCode::from(EXIT_USAGE))
    })
}

/// `check-config`'s JSON document before its verdict: the jobs, the number of sources, the
/// warnings and the missing references.
fn check_document(
    path: &Path,
    cfg: &Config,
    warnings: &[String],
    missing: &[config::ConfigError],
) -> serde_json::Value {
    use serde_json::json;
    json!({
        "config": path.display().to_string(),
        "jobs": cfg.jobs.iter().map(|job| json!({
            "name": job.name,
            "connections": job.connections.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "connector": job.connector(),
            "scheme": job.spec.scheme,
            "source": job.source,
            "secret": job.secret.id,
            "schedule": job.schedule,
            "timezone": job.timezone.to_string(),
        })).collect::<Vec<_>>(),
        "sources": cfg.sources.len(),
        "warnings": warnings,
        "errors": missing.iter().map(|e| json!({"key": e.path, "message": e.message})).collect::<Vec<_>>(),
    })
}

/// The shared state table (`backend = "dynamodb"`): exists, ACTIVE, the right keys, reachable
/// with these credentials. `None` for the SQLite backend. Prints its line unless `json`.
async fn check_state_table(cfg: &Config, json: bool) -> Option<serde_json::Value> {
    let config::state::BackendConfig::DynamoDb(d) = &cfg.state.backend else {
        return None;
    };
    let db = crate::state::dynamodb::DynamoState::connect(
        &d.table,
        d.region.as_deref(),
        cfg.state.history_retention,
    )
    .await;
    let health = crate::state::StateBackend::health(&db).await;
    let line = match &health {
        Ok(()) => "OK".to_owned(),
        Err(e) => format!("FAILED: {e}"),
    };
    if !json {
        crate::outln!("state table {}: {}", Escaped(&d.table), Escaped(&line));
    }
    Some(serde_json::json!({
        "state_table": d.table,
        "ok": health.is_ok(),
        "error_type": health.is_err().then_some("state_backend"),
        "message": crate::text::printable(&line, 4000),
    }))
}

/// `check-config --online` for one job: pre-flight first; then, when a connection passes, the
/// secret is read once (as a plan run does) and its key names checked against the job's
/// connector. Values are never shown. One check per connection goes to `checks`, the error
/// type of each failure to `failures`.
async fn check_job_online(
    rotator: &crate::rotation::Rotator,
    job: &config::JobConfig,
    json: bool,
    checks: &mut Vec<serde_json::Value>,
    failures: &mut Vec<&'static str>,
) {
    let mut pre = Vec::new();
    for target in &job.connections {
        pre.push(crate::runner::preflight(rotator, job, target).await);
    }
    let plan = if pre.iter().any(Result::is_ok) {
        let opts = RunOptions {
            plan_only: true,
            ..RunOptions::default()
        };
        rotator.run(job, opts).await
    } else {
        Vec::new()
    };
    for (target, preflight) in job.connections.iter().zip(pre) {
        let label = if job.connections.len() > 1 {
            format!("{}[{}]", job.name, target.key())
        } else {
            job.name.clone()
        };
        let secret = plan
            .iter()
            .find(|r| r.connection_key == target.key())
            .and_then(|r| r.outcome.error());
        let (ok, line, error_type) = preflight_line(preflight, secret);
        if let Some(t) = error_type {
            failures.push(t);
        }
        if !json {
            crate::outln!("  {label}: {}", Escaped(&line));
        }
        checks.push(serde_json::json!({
            "job": job.name,
            "connection": target.key(),
            "ok": ok,
            "error_type": error_type,
            "message": crate::text::printable(&line, 4000),
        }));
    }
}

/// One connection's `check-config --online` verdict: ok, the line to print and the error type.
fn preflight_line(
    preflight: Result<crate::qlik::model::DataConnection, crate::runner::PreflightError>,
    secret: Option<&crate::rotation::RotationError>,
) -> (bool, String, Option<&'static str>) {
    match preflight {
        Ok(_) if secret.is_some() => {
            let e = secret.expect("checked");
            (
                false,
                format!("FAILED: the secret does not fit the job: {e}"),
                Some(e.error_type()),
            )
        }
        Ok(conn) => (
            true,
            format!(
                "OK (connection {}, {}; secret fields match)",
                conn.id, conn.datasource_id
            ),
            None,
        ),
        Err(e) => {
            let t = match &e {
                crate::runner::PreflightError::Read(q) => q.error_type(),
                crate::runner::PreflightError::NoUpdate(_) => "no_update_privilege",
                crate::runner::PreflightError::Specs(r) => r.error_type(),
                crate::runner::PreflightError::WrongConnector { .. } => "wrong_connector",
            };
            (false, format!("FAILED: {e}"), Some(t))
        }
    }
}

/// Every environment variable and file the configuration refers to that does not exist (or,
/// for a variable, is empty): the Qlik API key or OAuth client secret, the admin token file,
/// and the files of the `[sources.NAME]` tables. Names the key and the variable, never a value.
pub fn references(cfg: &Config, input: &dyn ConfigInput) -> Vec<config::ConfigError> {
    use config::{QlikAuth, SecretLocator};
    let mut errs = Vec::new();
    let mut check = |key: &str, loc: &SecretLocator, alternative: &str| {
        if let Err(message) = loc.read(input) {
            let name = match loc {
                SecretLocator::Env(n) if looks_like_variable(n) => format!(" {n}"),
                _ => String::new(),
            };
            let how = match loc {
                SecretLocator::Env(_) => format!("export{name}, or set {alternative} instead"),
                SecretLocator::File(_) => format!(
                    "create it (readable by the rotator only), or set {alternative} instead"
                ),
            };
            errs.push(config::ConfigError {
                path: key.to_owned(),
                message: format!(
                    "{}: {how}",
                    message.replacen(
                        "the environment variable it names",
                        &format!("the environment variable{name}"),
                        1
                    ),
                ),
            });
        }
    };
    for t in &cfg.tenants {
        let key = |k: &str| format!("{}.{k}", t.table);
        match &t.auth {
            QlikAuth::ApiKey(loc @ SecretLocator::Env(_)) => {
                check(&key("api_key_env"), loc, &key("api_key_file"));
            }
            QlikAuth::ApiKey(loc) => check(&key("api_key_file"), loc, &key("api_key_env")),
            QlikAuth::OAuth { client_secret, .. } => match client_secret {
                SecretLocator::Env(_) => check(
                    &key("oauth.client_secret_env"),
                    client_secret,
                    &key("oauth.client_secret_file"),
                ),
                SecretLocator::File(_) => check(
                    &key("oauth.client_secret_file"),
                    client_secret,
                    &key("oauth.client_secret_env"),
                ),
            },
        }
    }
    if let Some(file) = &cfg.metrics.admin_token_file {
        check(
            "metrics.admin_token_file",
            &SecretLocator::File(file.clone()),
            "nothing (remove the key to disable the admin API)",
        );
    }
    if let Some(file) = &cfg.metrics.read_token_file {
        check(
            "metrics.read_token_file",
            &SecretLocator::File(file.clone()),
            "nothing (remove the key to disable the read-only admin API)",
        );
    }
    if let Err(source_errs) = crate::secrets::check_all(&cfg.sources) {
        errs.extend(source_errs);
    }
    errs
}

/// Whether an `*_env` value can be printed (in [`crate::text`]).
pub use crate::text::looks_like_variable;

/// Where the rotator's Qlik credentials come from (in [`crate::app`], which names them in
/// Qlik's 401 hints), for the first tenant or one tenant.
pub use crate::app::{identity, tenant_identity};

fn print_config_summary(path: &Path, cfg: &Config) {
    crate::outln!(
        "{}: OK ({} job(s), {} source(s))",
        path.display(),
        cfg.jobs.len(),
        cfg.sources.len()
    );
    for job in &cfg.jobs {
        crate::outln!(
            "  {}: {} via {} ({} scheme) from {}:{}{}",
            job.name,
            job.connections
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" + "),
            job.connector(),
            job.spec.scheme,
            job.source,
            job.secret.id,
            job.schedule
                .as_deref()
                .map(|s| format!(", schedule \"{s}\" {}", job.timezone))
                .unwrap_or_default()
        );
    }
}

fn select<'a>(cfg: &'a Config, job: Option<&str>) -> Result<Vec<&'a config::JobConfig>, ExitCode> {
    match job {
        None => Ok(cfg.jobs.iter().collect()),
        Some(name) => match cfg.job(name) {
            Some(j) => Ok(vec![j]),
            None => {
                let names: Vec<_> = cfg.jobs.iter().map(|j| j.name.as_str()).collect();
                fatal(&format!(
                    "--job: no job named {}{} (jobs: {})",
                    crate::text::quoted(name, 200),
                    crate::text::did_you_mean(name, names.iter().copied()),
                    crate::text::printable(&names.join(", "), 2000)
                ));
                Err(ExitCode::from(EXIT_USAGE))
            }
        },
    }
}

/// Loads the config and builds the rotator (reading the Qlik credentials).
async fn setup(
    path: &Path,
    input: &dyn ConfigInput,
) -> Result<(Config, crate::rotation::Rotator), ExitCode> {
    let cfg = load(path, input)?;
    match app::rotator(&cfg, input).await {
        Ok(r) => Ok((cfg, r)),
        Err(e) => {
            fatal(&Escaped(&e.to_string()).to_string());
            Err(build_exit(&e))
        }
    }
}

/// One connection's result in a JSON document (`plan`, `rotate`): no values, escaped
/// strings are not needed (JSON escapes), but text from outside is capped.
pub fn report_json(report: &crate::rotation::Report) -> serde_json::Value {
    use serde_json::json;
    let mut v = json!({
        "job": report.job,
        "connection": report.connection_key,
        "connection_id": report.connection_id,
        "secret_version": report.secret_version,
        "outcome": report.outcome.label(),
        "ok": report.outcome.is_success(),
        "duration_ms": u64::try_from(report.duration.as_millis()).unwrap_or(u64::MAX),
        "warnings": report.warnings,
    });
    if let crate::rotation::Outcome::Planned(doc) = &report.outcome {
        v["patch"] = doc.clone();
    }
    if let Some(e) = report.outcome.error() {
        v["error"] = json!({
            "stage": e.stage().as_str(),
            "type": e.error_type(),
            "message": crate::text::printable(&e.to_string(), 4000),
        });
    }
    v
}

/// `plan`: masked PATCH documents, nothing sent.
pub async fn plan(path: &Path, job: Option<&str>, json: bool, input: &dyn ConfigInput) -> ExitCode {
    let (cfg, rotator) = match setup(path, input).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let jobs = match select(&cfg, job) {
        Ok(j) => j,
        Err(code) => return code,
    };
    let mut failures: Vec<&'static str> = Vec::new();
    let mut all = Vec::new();
    let mut out = std::io::stdout().lock();
    for job in jobs {
        let reports = rotator
            .run(
                job,
                RunOptions {
                    plan_only: true,
                    ..RunOptions::default()
                },
            )
            .await;
        rotator.finish_run(job, &reports);
        for report in reports {
            if let Some(e) = report.outcome.error() {
                failures.push(e.error_type());
            }
            if json {
                all.push(report_json(&report));
                continue;
            }
            match &report.outcome {
                Outcome::Planned(doc) => {
                    let _ = writeln!(
                        out,
                        "{}: PATCH /api/v1/data-connections/{} (secret version {}; values masked)",
                        report.label(),
                        Escaped(report.connection_id.as_deref().unwrap_or("?")),
                        Escaped(report.secret_version.as_deref().unwrap_or("?"))
                    );
                    let pretty = serde_json::to_string_pretty(doc).unwrap_or_default();
                    for line in pretty.lines() {
                        let _ = writeln!(out, "  {}", Escaped(line));
                    }
                    for w in &report.warnings {
                        let _ = writeln!(out, "  warning: {w}");
                    }
                }
                _ => {
                    let _ = writeln!(out, "{}", report.line());
                }
            }
        }
    }
    drop(out);
    let code = failure_exit(&failures);
    if json {
        crate::telemetry::print_document(
            "plan",
            serde_json::json!({"ok": code == 0, "connections": all}),
        );
    }
    ExitCode::from(code)
}

/// `rotate`: one line per connection; exit 0 only if every one succeeded. Jobs run
/// concurrently through the [`Runner`] (`daemon.max_concurrent_rotations`, the shared write
/// budget), as in the daemon, and record applied versions in the same state file. A progress bar shows on a terminal (stderr); a summary ends the run.
pub async fn rotate(
    path: &Path,
    job: Option<&str>,
    if_changed: bool,
    json: bool,
    input: &dyn ConfigInput,
) -> ExitCode {
    let cfg = match load(path, input) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let jobs = match select(&cfg, job) {
        Ok(j) => j,
        Err(code) => return code,
    };
    rotate_jobs(&cfg, &jobs, if_changed, json, input).await
}

/// `rotate --secret ID`: every job whose secret is `secret` (a name, an ARN, or an ARN without
/// its 6-character suffix); exit 64 when no job uses it.
pub async fn rotate_secret(
    path: &Path,
    secret: &str,
    if_changed: bool,
    json: bool,
    input: &dyn ConfigInput,
) -> ExitCode {
    let cfg = match load(path, input) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let index = crate::triggers::SecretIndex::new(&cfg.jobs, |_| true);
    let jobs: Vec<&config::JobConfig> = (index
        .jobs_for(secret, |i| &cfg.jobs[i].secret.id)
        .into_iter())
    .map(|i| &cfg.jobs[i])
    .collect();
    if jobs.is_empty() {
        fatal(&format!(
            "no job uses the secret {} (--secret takes a secret name or ARN as the jobs' `secret` gives it)",
            crate::text::quoted(secret, 256)
        ));
        return ExitCode::from(EXIT_USAGE);
    }
    rotate_jobs(&cfg, &jobs, if_changed, json, input).await
}

/// The body of `rotate`: builds the app and runs `jobs`.
async fn rotate_jobs(
    cfg: &Config,
    jobs: &[&config::JobConfig],
    if_changed: bool,
    json: bool,
    input: &dyn ConfigInput,
) -> ExitCode {
    // The same lock as the daemon: never two writers of one state directory, and nothing is
    // sent when the directory cannot record what was applied.
    let app = match App::build(cfg, input).await {
        Ok(app) => app,
        Err(e) => {
            fatal(&Escaped(&e.to_string()).to_string());
            return build_exit(&e);
        }
    };
    // One attempt per run: the client's per-request retries (`qlik.max_attempts`) apply, but
    // a one-shot does not wait minutes for a run-level retry; its caller reruns it (and a
    // timeout costs one request timeout, not one per attempt).
    let retry = RetryPolicy::new(1);
    let runner = Runner::new(&app, cfg.daemon.max_concurrent_rotations, retry);
    let tally = run_jobs(
        &runner,
        jobs,
        !if_changed,
        cfg.daemon.max_concurrent_rotations,
        json,
    )
    .await;
    if let Err(e) = runner.close_state().await {
        eprintln!(
            "warning: {} (the daemon will rotate the affected connections once more)",
            Escaped(&e.to_string())
        );
    }
    tally.print_summary();
    let code = failure_exit(&tally.error_types);
    if json {
        crate::telemetry::print_document(
            "rotate",
            serde_json::json!({
                "ok": code == 0,
                "exit_code": code,
                "total": tally.total,
                "outcomes": tally.outcomes,
                "connections": tally.reports,
            }),
        );
    }
    if code != 0 {
        eprintln!(
            "{} of {} rotation(s) failed",
            tally.failed.len(),
            tally.total
        );
    }
    ExitCode::from(code)
}

/// The exit code for a failed build phase.
fn build_exit(e: &app::BuildError) -> ExitCode {
    match e {
        app::BuildError::State(e) => state_exit(e),
        // The API key or OAuth secret cannot be read at run time (check-config says 64).
        app::BuildError::Credential { .. } => ExitCode::from(EXIT_NO_CREDENTIALS),
        _ => ExitCode::from(EXIT_USAGE),
    }
}

/// Runs `jobs`, at most `width` at once, printing each connection's line as its job ends.
async fn run_jobs(
    runner: &Runner,
    jobs: &[&config::JobConfig],
    force: bool,
    width: usize,
    json: bool,
) -> Tally {
    let bar = progress_bar(jobs.len());
    let mut tally = Tally {
        json,
        ..Tally::default()
    };
    // Every secret read up front, in batches where the source has a batch API: each value
    // serves its job's run of this command only.
    let secrets = crate::triggers::prefetch(runner.rotator(), jobs).await;
    let mut runs = futures_util::stream::iter(jobs.iter().zip(secrets))
        .map(|(job, secret)| async move {
            let rt = JobRuntime::ungated((*job).clone());
            (*job, runner.run_job_with(&rt, force, None, secret).await)
        })
        .buffer_unordered(width.max(1));
    while let Some(run) = runs.next().await {
        // Of the runner's skips, only one can happen here (each job runs once, ungated, and
        // nothing stops the runner): Qlik refused the credentials to an earlier job.
        let (job, run) = run;
        match run {
            Ok(reports) => {
                for report in reports {
                    if !json {
                        bar.suspend(|| crate::outln!("{}", report.line()));
                    }
                    tally.add(&report);
                }
            }
            Err(skipped) => {
                let line = format!("{}: skipped: {skipped}", job.name);
                if !json {
                    bar.suspend(|| crate::outln!("{}", Escaped(&line)));
                }
                tally.skip(job, skipped);
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    tally
}

/// A progress bar on stderr when it is a terminal; hidden otherwise (logs, CI, tests).
fn progress_bar(jobs: usize) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if jobs < 2 || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(jobs as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{elapsed_precise} [{wide_bar}] {pos}/{len} jobs, {per_sec}, eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Counts per outcome, and the failed connections' labels.
#[derive(Debug, Default)]
struct Tally {
    total: usize,
    outcomes: std::collections::BTreeMap<&'static str, usize>,
    failed: Vec<String>,
    /// The error type of each failure (for the exit code).
    error_types: Vec<&'static str>,
    /// Whether to keep each report as JSON.
    json: bool,
    reports: Vec<serde_json::Value>,
}

impl Tally {
    fn add(&mut self, report: &crate::rotation::Report) {
        self.total += 1;
        *self.outcomes.entry(report.outcome.label()).or_default() += 1;
        if self.json {
            self.reports.push(report_json(report));
        }
        if let Some(e) = report.outcome.error() {
            self.error_types.push(e.error_type());
            self.failed.push(format!(
                "{}: {} at {} [{}]",
                report.label(),
                report.outcome.label(),
                e.stage().as_str(),
                e.error_type()
            ));
        }
    }

    /// A job that did not run (every one of its connections counts as skipped, and failed).
    fn skip(&mut self, job: &config::JobConfig, why: crate::runner::Skipped) {
        for c in &job.connections {
            self.total += 1;
            *self.outcomes.entry("skipped").or_default() += 1;
            let label = if job.connections.len() > 1 {
                format!("{}[{}]", job.name, c.key())
            } else {
                job.name.clone()
            };
            self.failed
                .push(format!("{label}: skipped [{}]", why.error_type()));
            self.error_types.push(why.error_type());
            if self.json {
                self.reports.push(serde_json::json!({
                    "job": job.name,
                    "connection": c.key(),
                    "outcome": "skipped",
                    "ok": false,
                    "error": {"stage": "none", "type": why.error_type(), "message": why.to_string()},
                }));
            }
        }
    }

    /// The summary table, on stderr (stdout keeps one line per connection).
    fn print_summary(&self) {
        let mut out = std::io::stderr().lock();
        let _ = writeln!(out, "summary: {} rotation(s)", self.total);
        for (outcome, n) in &self.outcomes {
            let _ = writeln!(out, "  {outcome:<14} {n:>6}");
        }
        if !self.failed.is_empty() {
            let _ = writeln!(out, "failed:");
            for f in &self.failed {
                let _ = writeln!(out, "  {}", Escaped(f));
            }
        }
    }
}

/// `run`: the daemon, until SIGTERM/SIGINT.
pub async fn run(path: &Path, input: &dyn ConfigInput) -> ExitCode {
    let cfg = match load(path, input) {
        Ok(c) => c,
        Err(code) => return code,
    };
    for w in cfg.warnings() {
        tracing::warn!(key = %w.path, "Risky configuration: {}", w.message);
    }
    // SIGHUP is taken over before the daemon reports ready: it reloads, never ends the process.
    let mut hup = hangup_stream();
    // Build, then spawn; each failure exits before anything is sent.
    let built = match App::build(&cfg, input).await {
        Ok(app) => daemon::admin_token(&cfg, input).map(|token| (app, token)),
        Err(e) => Err(e.into()),
    };
    // The daemon takes the jobs over (no second copy); a reload compares the other sections
    // with `cfg` and diffs the new jobs against the daemon's (10,000 jobs: 4.4 MiB less).
    let mut cfg = cfg;
    let jobs = std::mem::take(&mut cfg.jobs);
    let spawned = match built {
        Ok((app, token)) => daemon::spawn_owned(app, &cfg, jobs, token).await,
        Err(e) => Err(e),
    };
    let running = match spawned {
        Ok(r) => r,
        Err(e) => {
            let hint = match &e {
                daemon::StartError::Listen { source, .. }
                    if source.kind() == std::io::ErrorKind::AddrInUse =>
                {
                    " (another process listens there: stop it, or set metrics.listen to a free port)"
                }
                _ => "",
            };
            fatal(&format!("{}{hint}", Escaped(&e.to_string())));
            return match e {
                daemon::StartError::Build(app::BuildError::Credential { .. }) => {
                    ExitCode::from(EXIT_NO_CREDENTIALS)
                }
                daemon::StartError::Build(_) | daemon::StartError::AdminToken(_) => {
                    ExitCode::from(EXIT_USAGE)
                }
                daemon::StartError::State(e) => state_exit(&e),
                // A dependency unavailable at start: the port is taken (or not ours to use).
                daemon::StartError::Listen { .. } => ExitCode::from(EXIT_UNAVAILABLE),
                _ => ExitCode::FAILURE,
            };
        }
    };
    let mut running = running;
    let mut current = (config_hash(path), chrono::Utc::now().timestamp());
    running.daemon.metrics().set_config(&current.0, current.1);
    // SIGHUP reloads the configuration (README, "Reloading the configuration"); SIGTERM and
    // SIGINT stop. Without a SIGHUP stream (not unix), only the stop signals count.
    let shutdown = daemon::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(()) = next_hangup(&mut hup) => {
                reload(path, input, &mut cfg, &mut running, &mut current).await;
            }
        }
    }
    running.shutdown().await;
    ExitCode::SUCCESS
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = Option<()>;

/// The SIGHUP stream (registered before anything else listens, so SIGHUP no longer ends the
/// process); `None` where there is none.
fn hangup_stream() -> Hangup {
    #[cfg(unix)]
    {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The next SIGHUP; never resolves without a stream.
async fn next_hangup(hup: &mut Hangup) -> Option<()> {
    #[cfg(unix)]
    if let Some(s) = hup {
        return s.recv().await;
    }
    let _ = hup;
    std::future::pending().await
}

/// The first 16 hex digits of the SHA-256 of the file at `path` (`unreadable` if it cannot
/// be read).
fn config_hash(path: &Path) -> String {
    use sha2::Digest as _;
    match std::fs::read(path) {
        Ok(bytes) => hex::encode(sha2::Sha256::digest(&bytes))[..16].to_owned(),
        Err(_) => "unreadable".to_owned(),
    }
}

/// Emits the [`crate::events::ConfigReloaded`] event of a reload (or of the start, `ok`).
fn reload_event(
    running: &daemon::Running,
    result: &'static str,
    errors: &[String],
    summary: &daemon::ReloadSummary,
    current: &(String, i64),
) {
    crate::events::Event::emit(
        crate::events::ConfigReloaded {
            result,
            errors,
            added: &summary.added,
            removed: &summary.removed,
            changed: &summary.changed,
            running: (&current.0, current.1),
        },
        Some(running.daemon.metrics()),
    );
}

/// SIGHUP: loads and validates `path` again; applies it when valid (see
/// [`daemon::Running::reload`]), else logs every error with its key and keeps `cfg` (and
/// `current`, its hash and load time).
async fn reload(
    path: &Path,
    input: &dyn ConfigInput,
    cfg: &mut Config,
    running: &mut daemon::Running,
    current: &mut (String, i64),
) {
    tracing::info!(path = %path.display(), "SIGHUP: reloading the configuration.");
    let none = daemon::ReloadSummary::default();
    let new = match config::load(path, input) {
        Ok(c) => c,
        Err(errs) => {
            let errors: Vec<String> = errs.0.iter().map(ToString::to_string).collect();
            reload_event(running, "invalid", &errors, &none, current);
            return;
        }
    };
    match running.reload(cfg, &new).await {
        Ok(summary) => {
            *cfg = new;
            cfg.jobs = Vec::new();
            *current = (config_hash(path), chrono::Utc::now().timestamp());
            reload_event(running, "ok", &[], &summary, current);
        }
        Err(errors) => reload_event(running, "refused", &errors, &none, current),
    }
}

/// `connectors`: the catalogue, as text or (`--output json`) as [`connectors_json`].
pub fn connectors(output: crate::cli::ConnectorsOutput) -> ExitCode {
    use crate::connectors::{CATALOGUE, PropKind};
    if output == crate::cli::ConnectorsOutput::Json {
        crate::telemetry::print_document(
            "connectors",
            serde_json::json!({ "connectors": connectors_json() }),
        );
        return ExitCode::SUCCESS;
    }
    crate::outln!(
        "Connectors qlik-rotator knows (first scheme = default; `scheme = \"…\"` picks another):"
    );
    for family in CATALOGUE {
        let mut ids: Vec<String> = family.ids.iter().map(|s| (*s).to_owned()).collect();
        if family.gateway {
            ids.extend(family.ids.iter().map(|id| format!("DG_{id}")));
        }
        crate::outln!("\n{} — {}", family.title, ids.join(", "));
        crate::outln!("  source: {}", family.sources_text());
        for scheme in family.schemes {
            let props: Vec<String> = scheme
                .props
                .iter()
                .map(|p| {
                    let kind = match p.kind {
                        PropKind::Text => "",
                        PropKind::File { .. } => " (file, base64)",
                        PropKind::Header => " (queryHeaders entry named by `header`)",
                    };
                    let opt = if p.required { "" } else { ", optional" };
                    format!("{}{kind} ← secret key \"{}\"{opt}", p.name, p.key)
                })
                .collect();
            crate::outln!("  scheme {}:", scheme.name);
            for p in props {
                crate::outln!("    {p}");
            }
            for (k, v) in scheme.constants {
                crate::outln!("    {k} = {} (fixed)", v.to_json());
            }
        }
    }
    crate::outln!(
        "\nAnything else: connector = \"generic\" with datasource and properties (see `qlik-rotator describe-connector`)."
    );
    ExitCode::SUCCESS
}

/// The catalogue as a JSON array, one entry per `datasourceID` (`DG_` variants included):
/// `{datasourceID, schemes: [{name, properties: [{name, type}]}]}`. `type` is the JSON type
/// the rotator writes (`string`, `array` for file arrays and `queryHeaders`, or the type of a
/// fixed value), i.e. what the connector's api-specs should declare.
pub fn connectors_json() -> serde_json::Value {
    use crate::connectors::{CATALOGUE, PropKind};
    use serde_json::{Value, json};
    let mut out = Vec::new();
    for family in CATALOGUE {
        let schemes: Vec<Value> = family
            .schemes
            .iter()
            .map(|scheme| {
                let mut props: Vec<(&str, &str)> = Vec::new();
                for p in scheme.props {
                    let ty = match p.kind {
                        PropKind::Text => "string",
                        PropKind::File { .. } | PropKind::Header => "array",
                    };
                    props.push((p.name, ty));
                }
                for (name, value) in scheme.constants {
                    props.push((name, crate::connectors::json_type(&value.to_json())));
                }
                let mut seen = std::collections::HashSet::new();
                props.retain(|(name, _)| seen.insert(*name));
                json!({
                    "name": scheme.name,
                    "properties": props
                        .iter()
                        .map(|(name, ty)| json!({"name": name, "type": ty}))
                        .collect::<Vec<_>>(),
                })
            })
            .collect();
        let mut ids: Vec<String> = family.ids.iter().map(|s| (*s).to_owned()).collect();
        if family.gateway {
            ids.extend(family.ids.iter().map(|id| format!("DG_{id}")));
        }
        for id in ids {
            out.push(json!({"datasourceID": id, "schemes": schemes}));
        }
    }
    Value::Array(out)
}

/// Property names that suggest a credential.
fn looks_like_credential(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "password",
        "passwd",
        "pwd",
        "secret",
        "token",
        "key",
        "credential",
        "cert",
        "pfx",
        "passphrase",
    ]
    .iter()
    .any(|w| n.contains(w))
        && !["keyspace", "keepalive"].iter().any(|w| n.contains(w))
}

/// What `describe-connector` is asked for.
#[derive(Debug, Clone, Copy)]
pub struct Describe<'a> {
    /// The datasourceID.
    pub datasource: &'a str,
    /// `--tenant`: required with several tenants.
    pub tenant: Option<&'a str>,
    /// `--output json`.
    pub json: bool,
}

/// `describe-connector`: a connector's api-specs and a ready-to-paste job.
pub async fn describe_connector(
    path: &Path,
    what: &Describe<'_>,
    input: &dyn ConfigInput,
) -> ExitCode {
    let Describe {
        datasource,
        tenant,
        json,
    } = *what;
    let cfg = match load(path, input) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let tenant = match describe_tenant(&cfg, tenant) {
        Ok(t) => t,
        Err(message) => {
            fatal(&message);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let specs = match read_api_specs(tenant, datasource, input).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    if json {
        crate::telemetry::print_document("describe-connector", describe_json(datasource, &specs));
        return ExitCode::SUCCESS;
    }
    print_api_specs(datasource, &specs);
    match crate::connectors::Connector::lookup(datasource) {
        Some(c) => print_catalogue_check(datasource, &specs, &c),
        None => print_generic_job(datasource, &specs, &cfg, tenant),
    }
    ExitCode::SUCCESS
}

/// The tenant `describe-connector` reads: the one `--tenant` names (as `connections` selects
/// it), or the only one. With several tenants and no `--tenant` it is an error (tenants may
/// differ in what they offer; picking one silently would describe another tenant's
/// connector).
fn describe_tenant<'a>(cfg: &'a Config, tenant: Option<&str>) -> Result<&'a QlikConfig, String> {
    match crate::discover::select_tenants(cfg, tenant)?.as_slice() {
        [one] => Ok(one),
        many => {
            let names: Vec<&str> = many.iter().map(|t| &*t.name).collect();
            Err(format!(
                "--tenant: the configuration declares {} tenants ({}); name the one to read the \
                 api-specs from, e.g. --tenant {}",
                names.len(),
                names.join(", "),
                names[0]
            ))
        }
    }
}

/// `describe-connector --output json`: the api-specs' properties (name, declared types,
/// whether the name looks like a credential, description, default, allowed values) and, for
/// a catalogue connector, each scheme checked against them.
fn describe_json(
    datasource: &str,
    specs: &crate::connectors::specs::ApiSpecs,
) -> serde_json::Value {
    use serde_json::json;
    let cap = |s: Option<&String>| s.map(|s| crate::text::printable(s, 2000));
    let properties: Vec<_> = specs
        .properties
        .iter()
        .map(|(name, p)| {
            json!({
                "name": crate::text::printable(name, 500),
                "type": p.ty.display().to_string(),
                "credential": looks_like_credential(name),
                "description": cap(p.description.as_ref()),
                "default": p.default.as_ref().map(ToString::to_string),
                "enum": specs.enum_display(name).map(|e| e.to_string()),
            })
        })
        .collect();
    let catalogue = crate::connectors::Connector::lookup(datasource).map(|c| {
        let schemes: Vec<_> = c
            .family
            .schemes
            .iter()
            .map(|scheme| {
                let spec = crate::connectors::BuildSpec::from_catalogue(
                    &c,
                    scheme,
                    &std::collections::BTreeMap::new(),
                );
                let checked =
                    crate::connectors::specs::check(datasource, specs, &spec.writes(), false);
                json!({
                    "name": scheme.name,
                    "ok": checked.errors.is_empty(),
                    "errors": checked.errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "warnings": checked.warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({ "connector": datasource, "schemes": schemes })
    });
    json!({
        "datasourceID": crate::text::printable(datasource, 200),
        "provider": cap(specs.provider.as_ref()),
        "version": cap(specs.version.as_ref()),
        "ignored_entries": specs.ignored,
        "properties": properties,
        "catalogue": catalogue,
    })
}

/// `completions SHELL`: the completion script on stdout.
pub fn completions(shell: clap_complete::Shell) -> ExitCode {
    use clap::CommandFactory;
    let mut cmd = crate::cli::Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "qlik-rotator", &mut buf);
    crate::telemetry::write_stdout(format_args!("{}", String::from_utf8_lossy(&buf)));
    ExitCode::SUCCESS
}

/// `man [--dir DIR]`: the man page on stdout, or every page written into DIR.
pub fn man(dir: Option<&Path>) -> ExitCode {
    use clap::CommandFactory;
    let cmd = crate::cli::Cli::command();
    if let Some(dir) = dir {
        return match clap_mangen::generate_to(cmd, dir) {
            Ok(()) => {
                eprintln!(
                    "wrote the man pages into {}",
                    Escaped(&dir.display().to_string())
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                fatal(&format!(
                    "--dir {}: cannot write the man pages: {e}",
                    Escaped(&dir.display().to_string())
                ));
                ExitCode::from(EXIT_USAGE)
            }
        };
    }
    let mut buf = Vec::new();
    if let Err(e) = clap_mangen::Man::new(cmd).render(&mut buf) {
        fatal(&format!("cannot render the man page: {e}"));
        return ExitCode::from(EXIT_FAILED);
    }
    crate::telemetry::write_stdout(format_args!("{}", String::from_utf8_lossy(&buf)));
    ExitCode::SUCCESS
}

/// Reads and parses a connector's api-specs from the tenant; prints why not.
async fn read_api_specs(
    tenant: &QlikConfig,
    datasource: &str,
    input: &dyn ConfigInput,
) -> Result<crate::connectors::specs::ApiSpecs, ExitCode> {
    let client = app::tenant_client(tenant, input).map_err(|e| {
        fatal(&Escaped(&e.to_string()).to_string());
        build_exit(&e)
    })?;
    let specs = match client.get_api_specs(datasource).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            let known: Vec<String> = crate::connectors::CATALOGUE
                .iter()
                .flat_map(|f| f.ids.iter().map(|s| (*s).to_owned()))
                .collect();
            fatal(&format!(
                "the tenant has no api-specs for {} (unknown or disabled data source{}; `qlik-rotator connectors` lists the catalogue's ids)",
                crate::text::quoted(datasource, 200),
                crate::text::did_you_mean(
                    datasource,
                    known
                        .iter()
                        .map(String::as_str)
                        .filter(|k| *k != datasource)
                )
            ));
            return Err(ExitCode::from(EXIT_FAILED));
        }
        Err(e) => {
            fatal(&Escaped(&e.to_string()).to_string());
            return Err(ExitCode::from(failure_exit(&[e.error_type()])));
        }
    };
    crate::connectors::specs::ApiSpecs::parse(&specs).map_err(|e| {
        fatal(&format!(
            "the api-specs of {} cannot be used: {e}",
            crate::connectors::specs::printable(datasource, 120)
        ));
        ExitCode::from(EXIT_FAILED)
    })
}

/// The property table of an api-specs document.
fn print_api_specs(datasource: &str, specs: &crate::connectors::specs::ApiSpecs) {
    crate::outln!(
        "{datasource}: {} {} — {} properties{}",
        Escaped(specs.provider.as_deref().unwrap_or("?")),
        Escaped(specs.version.as_deref().unwrap_or("")),
        specs.properties.len(),
        if specs.ignored > 0 {
            format!(" ({} unreadable entries ignored)", specs.ignored)
        } else {
            String::new()
        }
    );
    let width = specs
        .properties
        .keys()
        .map(|n| n.chars().count())
        .max()
        .unwrap_or(4);
    for (name, p) in &specs.properties {
        let mark = if looks_like_credential(name) {
            "credential?"
        } else {
            ""
        };
        crate::outln!(
            "  {name:width$}  {:10}  {mark:11}  {}",
            p.ty.display(),
            Escaped(p.description.as_deref().unwrap_or(""))
        );
        let mut extra = Vec::new();
        if let Some(d) = &p.default {
            extra.push(format!("default {d}"));
        }
        if let Some(e) = specs.enum_display(name) {
            extra.push(format!("one of {e}"));
        }
        if !extra.is_empty() {
            crate::outln!("  {:width$}  {}", "", extra.join("; "));
        }
    }
}

/// For a catalogue connector: each scheme checked against the tenant's api-specs.
fn print_catalogue_check(
    datasource: &str,
    specs: &crate::connectors::specs::ApiSpecs,
    c: &crate::connectors::Connector,
) {
    let schemes: Vec<_> = c.family.schemes.iter().map(|s| s.name).collect();
    crate::outln!(
        "\n{datasource} is in the catalogue: use connector = \"{datasource}\" (schemes: {}).",
        schemes.join(", ")
    );
    for scheme in c.family.schemes {
        let spec = crate::connectors::BuildSpec::from_catalogue(
            c,
            scheme,
            &std::collections::BTreeMap::new(),
        );
        let checked = crate::connectors::specs::check(datasource, specs, &spec.writes(), false);
        if checked.errors.is_empty() && checked.warnings.is_empty() {
            crate::outln!("  scheme {}: matches these api-specs", scheme.name);
        }
        for e in &checked.errors {
            crate::outln!("  scheme {}: refused: {e}", scheme.name);
        }
        for w in &checked.warnings {
            crate::outln!("  scheme {}: warning: {w}", scheme.name);
        }
    }
}

/// For a connector the catalogue does not know: a `generic` job snippet.
fn print_generic_job(
    datasource: &str,
    specs: &crate::connectors::specs::ApiSpecs,
    cfg: &Config,
    tenant: &QlikConfig,
) {
    let pick = |t: &str| -> Vec<String> {
        specs
            .properties
            .iter()
            .filter(|(n, p)| looks_like_credential(n) && matches!(&p.ty, crate::connectors::specs::DeclaredType::Types(ts) if ts.iter().any(|x| x.as_str() == t)))
            .map(|(n, _)| format!("{n:?}"))
            .collect()
    };
    let text = pick("string");
    let files = pick("array");
    let source = cfg.sources.keys().next().map_or("aws", String::as_str);
    crate::outln!(
        "\nA job for it (check the property list; every write is checked against these api-specs):\n"
    );
    crate::outln!("[[jobs]]");
    crate::outln!(
        "name = \"{}\"",
        datasource
            .to_ascii_lowercase()
            .replace(|c: char| !c.is_ascii_alphanumeric(), "-")
    );
    if cfg.multi_tenant {
        crate::outln!("tenant = \"{}\"", tenant.name);
    }
    crate::outln!("connection = {{ id = \"<connection id>\" }}");
    crate::outln!("connector = \"generic\"");
    crate::outln!("datasource = \"{datasource}\"");
    crate::outln!("properties = [{}]", text.join(", "));
    if !files.is_empty() {
        crate::outln!("file_properties = [{}]", files.join(", "));
    }
    crate::outln!("source = \"{source}\"");
    crate::outln!(
        "secret = \"<secret id>\"                 # JSON keys = the property names (or map them in [jobs.fields])"
    );
}
