//! The one-shot commands behind the CLI. Results go to stdout, logs to stderr.

use std::{io::Write, path::Path, process::ExitCode};

use futures_util::StreamExt;

use crate::{
    app::{self, App},
    config::{self, Config, ConfigInput},
    daemon,
    rotation::{Outcome, RunOptions},
    runner::{JobRuntime, RetryPolicy, Runner},
    text::Escaped,
};

/// Exit code for an invalid configuration or usage (EX_USAGE).
pub const EXIT_USAGE: u8 = 64;
/// Exit code when a job failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code when the state directory is in use by another process (EX_TEMPFAIL: retrying
/// later can succeed, unlike a bad configuration or an unusable directory, which exit 64).
pub const EXIT_IN_USE: u8 = 75;

/// The exit code for a state directory that cannot be opened.
fn state_exit(e: &crate::state::StateError) -> ExitCode {
    ExitCode::from(if e.is_in_use() {
        EXIT_IN_USE
    } else {
        EXIT_USAGE
    })
}

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

/// `check-config [--online]`.
pub async fn check_config(path: &Path, online: bool, input: &dyn ConfigInput) -> ExitCode {
    let code = check_offline(path, input);
    if !online || code != ExitCode::SUCCESS {
        return code;
    }
    let (cfg, rotator) = match setup(path, input).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    crate::outln!("pre-flight against {}:", cfg.qlik.tenant_url);
    let mut failed = 0;
    for job in &cfg.jobs {
        for target in &job.connections {
            let label = if job.connections.len() > 1 {
                format!("{}[{}]", job.name, target.key())
            } else {
                job.name.clone()
            };
            match crate::runner::preflight(&rotator, job, target).await {
                Ok(conn) => crate::outln!(
                    "  {label}: OK (connection {}, {})",
                    Escaped(&conn.id),
                    Escaped(&conn.datasource_id)
                ),
                Err(e) => {
                    failed += 1;
                    crate::outln!("  {label}: FAILED: {}", Escaped(&e.to_string()));
                }
            }
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

fn check_offline(path: &Path, input: &dyn ConfigInput) -> ExitCode {
    match load(path, input) {
        Ok(cfg) => {
            for w in cfg.warnings() {
                eprintln!("warning: {w}");
            }
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
                    job.connector,
                    job.spec.scheme,
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

/// Loads the config and builds the rotator (reading the Qlik credentials).
async fn setup(
    path: &Path,
    input: &dyn ConfigInput,
) -> Result<(Config, crate::rotation::Rotator), ExitCode> {
    let cfg = load(path, input)?;
    match app::rotator(&cfg, input).await {
        Ok(r) => Ok((cfg, r)),
        Err(e) => {
            eprintln!("error: {}", Escaped(&e.to_string()));
            Err(ExitCode::from(EXIT_USAGE))
        }
    }
}

/// `plan`: masked PATCH documents, nothing sent.
pub async fn plan(path: &Path, job: Option<&str>, input: &dyn ConfigInput) -> ExitCode {
    let (cfg, rotator) = match setup(path, input).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let jobs = match select(&cfg, job) {
        Ok(j) => j,
        Err(code) => return code,
    };
    let mut ok = true;
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
                    ok = false;
                    let _ = writeln!(out, "{}", report.line());
                }
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

/// `rotate`: one line per connection; exit 0 only if every one succeeded. Jobs run
/// concurrently through the [`Runner`] (`daemon.max_concurrent_rotations`, the shared write
/// budget), as in the daemon, and record applied versions in the same state file. A progress bar shows on a terminal (stderr); a summary ends the run.
pub async fn rotate(
    path: &Path,
    job: Option<&str>,
    if_changed: bool,
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
    rotate_jobs(&cfg, &jobs, if_changed, input).await
}

/// `rotate --secret ID`: every job whose secret is `secret` (a name, an ARN, or an ARN without
/// its 6-character suffix); exit 64 when no job uses it.
pub async fn rotate_secret(
    path: &Path,
    secret: &str,
    if_changed: bool,
    input: &dyn ConfigInput,
) -> ExitCode {
    let cfg = match load(path, input) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let index = crate::triggers::SecretIndex::new(&cfg.jobs, |_| true);
    let jobs: Vec<&config::JobConfig> = (index.jobs_for(secret).into_iter())
        .map(|i| &cfg.jobs[i])
        .collect();
    if jobs.is_empty() {
        eprintln!(
            "error: no job uses the secret {} (--secret takes a secret name or ARN as the jobs' `secret` gives it)",
            crate::text::quoted(secret, 256)
        );
        return ExitCode::from(EXIT_USAGE);
    }
    rotate_jobs(&cfg, &jobs, if_changed, input).await
}

/// The body of `rotate`: builds the app and runs `jobs`.
async fn rotate_jobs(
    cfg: &Config,
    jobs: &[&config::JobConfig],
    if_changed: bool,
    input: &dyn ConfigInput,
) -> ExitCode {
    // The same lock as the daemon: never two writers of one state directory, and nothing is
    // sent when the directory cannot record what was applied.
    let app = match App::build(cfg, input).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("error: {}", Escaped(&e.to_string()));
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
    )
    .await;
    if let Err(e) = runner.close_state() {
        eprintln!(
            "warning: {} (the daemon will rotate the affected connections once more)",
            Escaped(&e.to_string())
        );
    }
    tally.print_summary();
    if tally.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "{} of {} rotation(s) failed",
            tally.failed.len(),
            tally.total
        );
        ExitCode::from(EXIT_FAILED)
    }
}

/// The exit code for a failed build phase.
fn build_exit(e: &app::BuildError) -> ExitCode {
    match e {
        app::BuildError::State(e) => state_exit(e),
        _ => ExitCode::from(EXIT_USAGE),
    }
}

/// Runs `jobs`, at most `width` at once, printing each connection's line as its job ends.
async fn run_jobs(
    runner: &Runner,
    jobs: &[&config::JobConfig],
    force: bool,
    width: usize,
) -> Tally {
    let bar = progress_bar(jobs.len());
    let mut tally = Tally::default();
    // Every secret read up front, in batches where the source has a batch API: each value
    // serves its job's run of this command only.
    let secrets = crate::triggers::prefetch(runner.rotator(), jobs).await;
    let mut runs = futures_util::stream::iter(jobs.iter().zip(secrets))
        .map(|(job, secret)| async move {
            let job = JobRuntime::ungated((*job).clone());
            runner.run_job_with(&job, force, None, secret).await
        })
        .buffer_unordered(width.max(1));
    while let Some(run) = runs.next().await {
        // The runner's only skips (already running, stopping, pre-flight) cannot happen
        // here: each job runs once, ungated, and nothing stops the runner.
        for report in run.unwrap_or_default() {
            bar.suspend(|| crate::outln!("{}", report.line()));
            tally.add(&report);
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
}

impl Tally {
    fn add(&mut self, report: &crate::rotation::Report) {
        self.total += 1;
        *self.outcomes.entry(report.outcome.label()).or_default() += 1;
        if let Some(e) = report.outcome.error() {
            self.failed.push(format!(
                "{}: {} at {} [{}]",
                report.label(),
                report.outcome.label(),
                e.stage().as_str(),
                e.error_type()
            ));
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
    let spawned = match built {
        Ok((app, token)) => daemon::spawn(app, &cfg, token).await,
        Err(e) => Err(e),
    };
    let running = match spawned {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}", Escaped(&e.to_string()));
            return match e {
                daemon::StartError::Build(_) | daemon::StartError::AdminToken(_) => {
                    ExitCode::from(EXIT_USAGE)
                }
                daemon::StartError::State(e) => state_exit(&e),
                _ => ExitCode::FAILURE,
            };
        }
    };
    let mut running = running;
    let mut cfg = cfg;
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
        crate::outln!("{}", connectors_json());
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

/// `describe-connector`: a connector's api-specs and a ready-to-paste job.
pub async fn describe_connector(
    path: &Path,
    datasource: &str,
    input: &dyn ConfigInput,
) -> ExitCode {
    let cfg = match load(path, input) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let specs = match read_api_specs(&cfg, datasource, input).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    print_api_specs(datasource, &specs);
    match crate::connectors::Connector::lookup(datasource) {
        Some(c) => print_catalogue_check(datasource, &specs, &c),
        None => print_generic_job(datasource, &specs, &cfg),
    }
    ExitCode::SUCCESS
}

/// Reads and parses a connector's api-specs from the tenant; prints why not.
async fn read_api_specs(
    cfg: &Config,
    datasource: &str,
    input: &dyn ConfigInput,
) -> Result<crate::connectors::specs::ApiSpecs, ExitCode> {
    let client = app::qlik_client(cfg, input).map_err(|e| {
        eprintln!("error: {}", Escaped(&e.to_string()));
        ExitCode::from(EXIT_USAGE)
    })?;
    let specs = match client.get_api_specs(datasource).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            eprintln!(
                "error: the tenant has no api-specs for {datasource:?} (unknown or disabled data source)"
            );
            return Err(ExitCode::from(EXIT_FAILED));
        }
        Err(e) => {
            eprintln!("error: {}", Escaped(&e.to_string()));
            return Err(ExitCode::from(EXIT_FAILED));
        }
    };
    crate::connectors::specs::ApiSpecs::parse(&specs).map_err(|e| {
        eprintln!(
            "error: the api-specs of {} cannot be used: {e}",
            crate::connectors::specs::printable(datasource, 120)
        );
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
fn print_generic_job(datasource: &str, specs: &crate::connectors::specs::ApiSpecs, cfg: &Config) {
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
