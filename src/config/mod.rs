//! Configuration: a TOML file plus `QLIK_ROTATOR__SECTION__KEY` environment overrides,
//! validated in one pure pass that reports every error with its key path.
//!
//! Loading is phase one of the lifecycle: no network, no secrets read. Secret *locations*
//! (`*_env`, `*_file`) are validated here; their contents are read in the build phase by
//! [`SecretLocator::read`].

pub mod walk;

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use secrecy::SecretString;
use serde_json::Value;

pub use walk::ConfigError;
use walk::{Errors, Table, kind};

use crate::{
    connectors::{BuildSpec, Connector, FileEncoding, PropKind, SeparateMode},
    secrets::{SecretRef, VersionSelector},
};

/// Prefix of environment overrides: `QLIK_ROTATOR__QLIK__TENANT_URL` sets `qlik.tenant_url`.
pub const ENV_PREFIX: &str = "QLIK_ROTATOR";

/// Where configuration input comes from, so tests never touch the process environment.
pub trait ConfigInput {
    /// The value of environment variable `name`.
    fn var(&self, name: &str) -> Option<String>;
    /// Every variable (used to collect `QLIK_ROTATOR__*` overrides).
    fn vars(&self) -> HashMap<String, String>;
}

/// The process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessEnv;

impl ConfigInput for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn vars(&self) -> HashMap<String, String> {
        std::env::vars().collect()
    }
}

impl ConfigInput for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
    fn vars(&self) -> HashMap<String, String> {
        self.clone()
    }
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} configuration error(s):\n{}", .0.len(), .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// Where a secret used by the rotator itself (API key, OAuth client secret, admin token) lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretLocator {
    /// An environment variable name.
    Env(String),
    /// A file path.
    File(PathBuf),
}

impl SecretLocator {
    /// Reads the secret (build phase). Surrounding whitespace is trimmed.
    ///
    /// # Errors
    /// A message naming the variable or file, never the content.
    pub fn read(&self, input: &dyn ConfigInput) -> Result<SecretString, String> {
        let raw = match self {
            SecretLocator::Env(name) => input
                .var(name)
                .ok_or_else(|| format!("environment variable {name} is not set"))?,
            SecretLocator::File(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        };
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(format!("{} is empty", self.describe()));
        }
        Ok(SecretString::from(trimmed.to_owned()))
    }

    /// `environment variable X` / `file Y`, for messages.
    pub fn describe(&self) -> String {
        match self {
            SecretLocator::Env(name) => format!("environment variable {name}"),
            SecretLocator::File(path) => format!("file {}", path.display()),
        }
    }
}

/// How the rotator authenticates to Qlik.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QlikAuth {
    /// API key (Bearer).
    ApiKey(SecretLocator),
    /// OAuth2 M2M client credentials.
    OAuth {
        /// Client id (not secret).
        client_id: String,
        /// Where the client secret is.
        client_secret: SecretLocator,
        /// Optional scopes.
        scope: Option<String>,
    },
}

/// `[qlik]`.
#[derive(Debug, Clone)]
pub struct QlikConfig {
    /// Tenant base URL.
    pub tenant_url: reqwest::Url,
    /// Auth.
    pub auth: QlikAuth,
    /// Per-request timeout (`request_timeout`, default 30s).
    pub request_timeout: Duration,
    /// Attempts per request (`max_attempts`, default 5).
    pub max_attempts: u32,
    /// Tier 2 writes per minute for this identity (`write_budget_per_min`, default 100; 0 =
    /// unlimited).
    pub write_budget_per_min: u32,
    /// The largest response body read from Qlik (`max_response_bytes`, default 4 MiB, from
    /// 64 KiB to 256 MiB); a longer one fails with `response_too_large`.
    pub max_response_bytes: u64,
}

/// `[sources.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceConfig {
    /// `type = "aws_secrets_manager"`.
    AwsSecretsManager {
        /// Optional region override (else the AWS default chain).
        region: Option<String>,
        /// Optional endpoint override (else `AWS_ENDPOINT_URL_SECRETS_MANAGER` / default).
        endpoint_url: Option<String>,
    },
    /// `type = "file"`.
    File {
        /// Directory of `<secret-id>.json` files (relative paths resolve against the config
        /// file's directory).
        path: PathBuf,
    },
}

/// How a job names its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionRef {
    /// By `qID`.
    Id(String),
    /// By name, optionally within a space; resolved once to the id.
    Name {
        /// `qName`.
        name: String,
        /// Space id.
        space: Option<String>,
    },
}

impl ConnectionRef {
    /// A stable key for state and reports: the id, or `space/name`.
    pub fn key(&self) -> String {
        match self {
            ConnectionRef::Id(id) => id.clone(),
            ConnectionRef::Name { name, space } => {
                format!("{}/{name}", space.as_deref().unwrap_or(""))
            }
        }
    }
}

impl std::fmt::Display for ConnectionRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectionRef::Id(id) => write!(f, "id {id}"),
            ConnectionRef::Name { name, space: None } => write!(f, "name {name:?}"),
            ConnectionRef::Name {
                name,
                space: Some(s),
            } => write!(f, "name {name:?} in space {s}"),
        }
    }
}

/// `[[jobs]]`.
#[derive(Debug, Clone)]
pub struct JobConfig {
    /// Unique job name (metrics label, CLI selector).
    pub name: String,
    /// The connections (one, or several fed by the same secret).
    pub connections: Vec<ConnectionRef>,
    /// The connector (`datasourceID`), for labels and messages.
    pub connector: String,
    /// What to write: properties, keys, encodings, scheme (resolved from the catalogue or a
    /// `generic` job). Jobs with equal specs share one.
    pub spec: Arc<BuildSpec>,
    /// Name of the `[sources.NAME]` entry.
    pub source: String,
    /// The secret and version to read.
    pub secret: SecretRef,
    /// 6-field cron (with seconds) for the daemon; `None` = only on demand / one-shot.
    pub schedule: Option<String>,
    /// Time zone of `schedule` (IANA name; default UTC).
    pub timezone: chrono_tz::Tz,
    /// Random delay up to this before each scheduled run.
    pub jitter: Duration,
    /// Run once as soon as the daemon starts.
    pub run_on_start: bool,
    /// Rotate even if the secret version has not changed.
    pub force: bool,
    /// How old the last success may get before the credentials count as stale (alerting).
    pub max_age: Duration,
}

/// `[daemon]`.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Where state (last applied versions) is kept.
    pub state_dir: PathBuf,
    /// How many rotations may run at once.
    pub max_concurrent_rotations: usize,
    /// How long in-flight rotations may take to finish on shutdown.
    pub shutdown_grace_period: Duration,
    /// Attempts per rotation within one run before waiting for the next schedule.
    pub max_attempts_per_run: u32,
}

/// `[metrics]`.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// Listen address of `/metrics`, `/healthz`, `/readyz` and the admin API.
    pub listen: SocketAddr,
    /// Bearer token file enabling `POST /jobs/{name}/rotate`.
    pub admin_token_file: Option<PathBuf>,
}

/// A validated configuration: what the rest of the crate sees.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[qlik]`.
    pub qlik: QlikConfig,
    /// `[sources.*]`.
    pub sources: BTreeMap<String, SourceConfig>,
    /// `[[jobs]]`.
    pub jobs: Vec<JobConfig>,
    /// `[daemon]`.
    pub daemon: DaemonConfig,
    /// `[metrics]`.
    pub metrics: MetricsConfig,
}

impl JobConfig {
    /// The state-file key of one of the job's connections: the job name for a single
    /// connection, `job@connection` for a job feeding several.
    pub fn state_key(&self, conn: &ConnectionRef) -> String {
        if self.connections.len() == 1 {
            self.name.clone()
        } else {
            format!("{}@{}", self.name, conn.key())
        }
    }
}

impl Config {
    /// The job named `name`.
    pub fn job(&self, name: &str) -> Option<&JobConfig> {
        self.jobs.iter().find(|j| j.name == name)
    }
}

/// Loads `path` with environment overrides from `input` and validates it.
///
/// # Errors
/// Every problem found, each with its key path.
pub fn load(path: &Path, input: &dyn ConfigInput) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            path: path.display().to_string(),
            message: format!("cannot read the configuration file: {e}"),
        }])
    })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    load_str(&text, &base, input)
}

/// Like [`load`], from TOML text; relative paths resolve against `base_dir`.
///
/// # Errors
/// Every problem found, each with its key path.
pub fn load_str(
    text: &str,
    base_dir: &Path,
    input: &dyn ConfigInput,
) -> Result<Config, ConfigErrors> {
    let overrides: HashMap<String, String> = input
        .vars()
        .into_iter()
        .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
        .collect();
    let tree: Value = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .source(Some(overrides)),
        )
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| {
            ConfigErrors(vec![ConfigError {
                path: "<file>".into(),
                message: format!("not valid TOML: {e}"),
            }])
        })?;
    validate(&tree, base_dir)
}

/// Validates an untyped configuration tree.
///
/// # Errors
/// Every problem found, each with its key path.
pub fn validate(tree: &Value, base_dir: &Path) -> Result<Config, ConfigErrors> {
    let mut errs = Errors::default();
    let empty = Value::Object(Default::default());
    let mut root = Table::new("", tree, &mut errs).ok_or_else(|| ConfigErrors(errs.0.clone()))?;

    let qlik = match root.get("qlik") {
        Some(v) => Table::new("qlik", v, &mut errs).and_then(|t| qlik_section(t, &mut errs)),
        None => {
            errs.push(
                "qlik",
                "is required (the [qlik] table with tenant_url and credentials)",
            );
            None
        }
    };

    let mut sources = BTreeMap::new();
    if let Some(v) = root.get("sources")
        && Table::new("sources", v, &mut errs).is_some()
    {
        for (name, value) in sorted(v) {
            let path = format!("sources.{name}");
            if let Some(src) =
                Table::new(path, value, &mut errs).and_then(|t| source(t, base_dir, &mut errs))
            {
                sources.insert(name.clone(), src);
            }
        }
    }

    let mut jobs = Vec::new();
    // Equal specs are shared: most jobs of a large config use a catalogue connector as is.
    let mut specs: Vec<Arc<BuildSpec>> = Vec::new();
    match root.get("jobs") {
        Some(Value::Array(items)) if items.is_empty() => {
            errs.push("jobs", "at least one [[jobs]] entry is required");
        }
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                if let Some(job) = Table::new(format!("jobs[{i}]"), item, &mut errs)
                    .and_then(|t| job(t, &sources, &mut errs))
                {
                    let mut job: JobConfig = job;
                    match specs.iter().find(|s| ***s == *job.spec) {
                        Some(shared) => job.spec = shared.clone(),
                        None if specs.len() < 64 => specs.push(job.spec.clone()),
                        None => {}
                    }
                    jobs.push(job);
                }
            }
        }
        Some(other) => errs.push(
            "jobs",
            format!(
                "expected an array of tables ([[jobs]]), found {}",
                kind(other)
            ),
        ),
        None => errs.push("jobs", "at least one [[jobs]] entry is required"),
    }
    let mut seen = BTreeMap::new();
    for (i, j) in jobs.iter().enumerate() {
        if let Some(first) = seen.insert(j.name.clone(), i) {
            errs.push(
                format!("jobs[{i}].name"),
                format!("duplicate job name {:?} (also jobs[{first}])", j.name),
            );
        }
    }

    let daemon = Table::new("daemon", root.get("daemon").unwrap_or(&empty), &mut errs)
        .map(|t| daemon_section(t, base_dir, &mut errs));
    let metrics = Table::new("metrics", root.get("metrics").unwrap_or(&empty), &mut errs)
        .and_then(|t| metrics_section(t, base_dir, &mut errs));
    root.finish(&mut errs);

    match (qlik, daemon, metrics) {
        (Some(qlik), Some(daemon), Some(metrics)) if errs.0.is_empty() => Ok(Config {
            qlik,
            sources,
            jobs,
            daemon,
            metrics,
        }),
        _ => Err(ConfigErrors(errs.0)),
    }
}

fn sorted(v: &Value) -> Vec<(&String, &Value)> {
    v.as_object()
        .map(|m| m.iter().collect())
        .unwrap_or_default()
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() { p } else { base.join(p) }
}

/// `X_env` / `X_file`, exactly one; an inline `X` is refused.
fn locator(
    t: &mut Table<'_>,
    what: &'static str,
    env_key: &'static str,
    file_key: &'static str,
    inline_key: &'static str,
    required: bool,
    errs: &mut Errors,
) -> Option<SecretLocator> {
    if t.get(inline_key).is_some() {
        errs.push(
            t.key_path(inline_key),
            format!(
                "{what} is never accepted inline in the file; use {} or {}",
                t.key_path(env_key),
                t.key_path(file_key)
            ),
        );
    }
    let env = t.opt_str(env_key, errs);
    let file = t.opt_str(file_key, errs);
    match (env, file) {
        (Some(_), Some(_)) => {
            errs.push(
                t.key_path(env_key),
                format!("set only one of {env_key} and {file_key}"),
            );
            None
        }
        (Some(e), None) => Some(SecretLocator::Env(e)),
        (None, Some(f)) => Some(SecretLocator::File(PathBuf::from(f))),
        (None, None) => {
            if required {
                errs.push(
                    t.key_path(env_key),
                    format!("{what} is required: set {env_key} or {file_key}"),
                );
            }
            None
        }
    }
}

fn qlik_section(mut t: Table<'_>, errs: &mut Errors) -> Option<QlikConfig> {
    let url = t
        .req_str("tenant_url", errs)
        .and_then(|u| match reqwest::Url::parse(&u) {
            Ok(url) if url.scheme() == "https" => Some(url),
            Ok(url) if url.scheme() == "http" && is_loopback(&url) => Some(url),
            Ok(url) if url.scheme() == "http" => {
                errs.push(
                    t.key_path("tenant_url"),
                    "must use https (http is allowed only for a loopback host)",
                );
                None
            }
            Ok(_) => {
                errs.push(t.key_path("tenant_url"), "must be an https:// URL");
                None
            }
            Err(e) => {
                errs.push(t.key_path("tenant_url"), format!("not a valid URL: {e}"));
                None
            }
        });
    let has_key = t.has("api_key_env") || t.has("api_key_file") || t.has("api_key");
    let auth = match t.get("oauth") {
        Some(v) => {
            if has_key {
                errs.push(
                    t.key_path("oauth"),
                    "set either an API key (api_key_env/api_key_file) or [qlik.oauth], not both",
                );
            }
            t.allow(&["api_key_env", "api_key_file", "api_key"]);
            Table::new("qlik.oauth", v, errs).and_then(|mut o| {
                let client_id = o.req_str("client_id", errs);
                let secret = locator(
                    &mut o,
                    "the OAuth client secret",
                    "client_secret_env",
                    "client_secret_file",
                    "client_secret",
                    true,
                    errs,
                );
                let scope = o.opt_str("scope", errs);
                o.finish(errs);
                Some(QlikAuth::OAuth {
                    client_id: client_id?,
                    client_secret: secret?,
                    scope,
                })
            })
        }
        None => locator(
            &mut t,
            "the Qlik API key",
            "api_key_env",
            "api_key_file",
            "api_key",
            true,
            errs,
        )
        .map(QlikAuth::ApiKey),
    };
    let request_timeout = t
        .opt_duration("request_timeout", errs)
        .unwrap_or(Duration::from_secs(30));
    let max_attempts = t.opt_u64("max_attempts", 1..=10, errs).unwrap_or(5) as u32;
    let write_budget_per_min = t
        .opt_u64("write_budget_per_min", 0..=100_000, errs)
        .unwrap_or(100) as u32;
    let max_response_bytes = t
        .opt_u64("max_response_bytes", MAX_RESPONSE_BYTES_RANGE, errs)
        .unwrap_or(crate::qlik::client::DEFAULT_MAX_RESPONSE_BYTES);
    t.finish(errs);
    Some(QlikConfig {
        tenant_url: url?,
        auth: auth?,
        request_timeout,
        max_attempts,
        write_budget_per_min,
        max_response_bytes,
    })
}

/// The documented range of `qlik.max_response_bytes`: 64 KiB to 256 MiB.
pub const MAX_RESPONSE_BYTES_RANGE: std::ops::RangeInclusive<u64> = 65_536..=268_435_456;

fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host_str() {
        Some("localhost") => true,
        Some(h) => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

fn source(mut t: Table<'_>, base: &Path, errs: &mut Errors) -> Option<SourceConfig> {
    let kind = t.req_str("type", errs)?;
    let out = match kind.as_str() {
        "aws_secrets_manager" => Some(SourceConfig::AwsSecretsManager {
            region: t.opt_str("region", errs),
            endpoint_url: t.opt_str("endpoint_url", errs),
        }),
        "file" => t.req_str("path", errs).map(|p| SourceConfig::File {
            path: resolve(base, &p),
        }),
        other => {
            errs.push(
                t.key_path("type"),
                format!(
                    "unknown source type {other:?} (expected \"aws_secrets_manager\" or \"file\")"
                ),
            );
            t.allow(&["region", "endpoint_url", "path"]);
            None
        }
    };
    t.finish(errs);
    out
}

fn job(
    mut t: Table<'_>,
    sources: &BTreeMap<String, SourceConfig>,
    errs: &mut Errors,
) -> Option<JobConfig> {
    let name = t.req_str("name", errs).and_then(|n| {
        if n.len() <= 64
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            Some(n)
        } else {
            errs.push(
                t.key_path("name"),
                "use 1 to 64 characters from A-Z, a-z, 0-9, '-', '_' and '.'",
            );
            None
        }
    });
    let connections = match (t.get("connection"), t.get("connections")) {
        (Some(_), Some(_)) => {
            errs.push(
                t.key_path("connections"),
                "set either connection or connections, not both",
            );
            None
        }
        (Some(v), None) => connection_ref(t.key_path("connection"), v, errs).map(|c| vec![c]),
        (None, Some(Value::Array(items))) if !items.is_empty() => {
            let refs: Vec<_> = items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    connection_ref(format!("{}[{i}]", t.key_path("connections")), v, errs)
                })
                .collect();
            let mut seen = std::collections::BTreeSet::new();
            for (i, r) in refs.iter().enumerate() {
                if let Some(r) = r
                    && !seen.insert(r.key())
                {
                    errs.push(
                        format!("{}[{i}]", t.key_path("connections")),
                        "duplicate connection",
                    );
                }
            }
            refs.into_iter().collect::<Option<Vec<_>>>()
        }
        (None, Some(_)) => {
            errs.push(
                t.key_path("connections"),
                "expected a non-empty array of { id = \"…\" } or { name = \"…\", space = \"…\" }",
            );
            None
        }
        (None, None) => {
            errs.push(
                t.key_path("connection"),
                "is required: { id = \"…\" } or { name = \"…\", space = \"…\" } (or connections = [ … ] for one secret feeding many connections)",
            );
            None
        }
    };
    let spec = job_spec(&mut t, errs);
    let source = t.req_str("source", errs).and_then(|s| {
        if sources.contains_key(&s) {
            Some(s)
        } else {
            let known: Vec<_> = sources.keys().map(String::as_str).collect();
            errs.push(
                t.key_path("source"),
                format!(
                    "no source named {s:?} (defined: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            );
            None
        }
    });
    let secret_id = t.req_str("secret", errs);
    let stage = t.opt_str("version_stage", errs);
    let version_id = t.opt_str("version_id", errs);
    let version = match (stage, version_id) {
        (Some(_), Some(_)) => {
            errs.push(
                t.key_path("version_id"),
                "set either version_stage or version_id, not both",
            );
            VersionSelector::default()
        }
        (Some(s), None) => VersionSelector::Stage(s),
        (None, Some(v)) => VersionSelector::Id(v),
        (None, None) => VersionSelector::default(),
    };
    let schedule = t.opt_str("schedule", errs).and_then(|s| {
        match croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Required)
            .build()
            .parse(&s)
        {
            Ok(_) => Some(s),
            Err(e) => {
                errs.push(
                    t.key_path("schedule"),
                    format!(
                        "not a 6-field cron expression with seconds (e.g. \"0 */15 * * * *\"): {e}"
                    ),
                );
                None
            }
        }
    });
    let timezone = t
        .opt_str("timezone", errs)
        .and_then(|tz| match tz.parse::<chrono_tz::Tz>() {
            Ok(tz) => Some(tz),
            Err(_) => {
                errs.push(
                    t.key_path("timezone"),
                    format!("unknown time zone {tz:?} (use an IANA name such as \"Europe/Paris\")"),
                );
                None
            }
        })
        .unwrap_or(chrono_tz::UTC);
    let jitter = t.opt_duration("jitter", errs).unwrap_or_default();
    let run_on_start = t.opt_bool("run_on_start", errs).unwrap_or(false);
    let force = t.opt_bool("force", errs).unwrap_or(false);
    let max_age = t
        .opt_duration("max_age", errs)
        .unwrap_or(Duration::from_secs(25 * 3600));
    t.finish(errs);
    let spec = spec?;
    Some(JobConfig {
        name: name?,
        connections: connections?,
        connector: spec.datasource.clone(),
        spec: Arc::new(spec),
        source: source?,
        secret: SecretRef {
            id: secret_id?,
            version,
        },
        schedule,
        timezone,
        jitter,
        run_on_start,
        force,
        max_age,
    })
}

fn connection_ref(path: String, v: &Value, errs: &mut Errors) -> Option<ConnectionRef> {
    let mut c = Table::new(path, v, errs)?;
    let id = c.opt_str("id", errs);
    let name = c.opt_str("name", errs);
    let space = c.opt_str("space", errs);
    let r = match (id, name) {
        (Some(_), Some(_)) => {
            errs.push(c.key_path("id"), "set either id or name, not both");
            None
        }
        (Some(id), None) => {
            if space.is_some() {
                errs.push(c.key_path("space"), "space goes with name, not with id");
            }
            Some(ConnectionRef::Id(id))
        }
        (None, Some(name)) => Some(ConnectionRef::Name { name, space }),
        (None, None) => {
            errs.push(c.path.clone(), "needs id or name");
            None
        }
    };
    c.finish(errs);
    r
}

fn string_list(t: &mut Table<'_>, key: &'static str, errs: &mut Errors) -> Option<Vec<String>> {
    match t.get(key)? {
        Value::Array(items) => {
            let mut out = Vec::new();
            for (i, v) in items.iter().enumerate() {
                match v.as_str() {
                    Some(s) if !s.is_empty() => out.push(s.to_owned()),
                    _ => errs.push(
                        format!("{}[{i}]", t.key_path(key)),
                        "expected a property name",
                    ),
                }
            }
            Some(out)
        }
        other => {
            errs.push(
                t.key_path(key),
                format!("expected an array of property names, found {}", kind(other)),
            );
            None
        }
    }
}

/// connector / scheme / generic properties / fields / file and header options / separate
/// credentials → the job's [`BuildSpec`].
fn job_spec(t: &mut Table<'_>, errs: &mut Errors) -> Option<BuildSpec> {
    let connector = t.req_str("connector", errs);
    let scheme_name = t.opt_str("scheme", errs);
    let datasource = t.opt_str("datasource", errs);
    let text_props = string_list(t, "properties", errs);
    let file_props = string_list(t, "file_properties", errs);
    let mut fields = BTreeMap::new();
    let fields_value = t.get("fields");
    if let Some(v) = fields_value
        && let Some(ft) = Table::new(t.key_path("fields"), v, errs)
    {
        for (prop, key) in sorted(v) {
            match key {
                Value::String(k) if !k.is_empty() => {
                    fields.insert(prop.clone(), k.clone());
                }
                other => errs.push(
                    format!("{}.{prop}", ft.path),
                    format!(
                        "expected the name of a key in the secret, found {}",
                        kind(other)
                    ),
                ),
            }
        }
    }
    let mut spec = match connector.as_deref() {
        None => None,
        Some("generic") => {
            if scheme_name.is_some() {
                errs.push(
                    t.key_path("scheme"),
                    "generic connectors have no schemes; list properties instead",
                );
            }
            let datasource = datasource.or_else(|| {
                errs.push(
                    t.key_path("datasource"),
                    "is required with connector = \"generic\": the connection's datasourceID",
                );
                None
            });
            let text_props = text_props.unwrap_or_default();
            let file_props = file_props.unwrap_or_default();
            if text_props.is_empty() && file_props.is_empty() {
                errs.push(
                    t.key_path("properties"),
                    "is required with connector = \"generic\": the credential property names to write (see `qlik-rotator describe-connector`)",
                );
            }
            datasource.map(|d| BuildSpec::generic(&d, &text_props, &file_props, &fields))
        }
        Some(id) => {
            for key in ["datasource", "properties", "file_properties"] {
                if t.has(key) {
                    errs.push(t.key_path(key), "is only used with connector = \"generic\"");
                }
            }
            match Connector::lookup(id) {
                None => {
                    errs.push(
                        t.key_path("connector"),
                        format!("unknown connector {id:?} (see `qlik-rotator connectors`, or use connector = \"generic\")"),
                    );
                    None
                }
                Some(c) => match c.scheme(scheme_name.as_deref()) {
                    Some(scheme) => Some(BuildSpec::from_catalogue(&c, scheme, &fields)),
                    None => {
                        let names: Vec<_> = c.family.schemes.iter().map(|s| s.name).collect();
                        errs.push(
                            t.key_path("scheme"),
                            format!(
                                "connector {:?} has no scheme {:?} (expected one of: {})",
                                c.id,
                                scheme_name.as_deref().unwrap_or(""),
                                names.join(", ")
                            ),
                        );
                        None
                    }
                },
            }
        }
    };
    if let Some(s) = &spec {
        for prop in fields.keys() {
            if !s.props.iter().any(|p| &p.name == prop) {
                let props: Vec<_> = s.props.iter().map(|p| p.name.as_str()).collect();
                errs.push(
                    format!("{}.{prop}", t.key_path("fields")),
                    format!(
                        "{prop:?} is not a credential property of scheme {:?} (expected one of: {})",
                        s.scheme,
                        props.join(", ")
                    ),
                );
            }
        }
    }
    let file_encoding = t
        .opt_str("file_encoding", errs)
        .and_then(|e| match e.as_str() {
            "raw" => Some(FileEncoding::Raw),
            "base64" => Some(FileEncoding::Base64),
            other => {
                errs.push(
                    t.key_path("file_encoding"),
                    format!("expected \"raw\" or \"base64\", found {other:?}"),
                );
                None
            }
        });
    let file_name = t.opt_str("file_name", errs);
    let header = t.opt_str("header", errs);
    let separate = t
        .opt_str("separate_credentials", errs)
        .and_then(|m| match m.as_str() {
            "patch" => Some(SeparateMode::Patch),
            "data_credentials" => Some(SeparateMode::DataCredentials),
            other => {
                errs.push(
                    t.key_path("separate_credentials"),
                    format!("expected \"patch\" or \"data_credentials\", found {other:?}"),
                );
                None
            }
        });
    let credentials_name = t.opt_str("credentials_name", errs);
    let credential = t.opt_str("credential", errs);
    if let Some(s) = spec.as_mut() {
        let has_files = s
            .props
            .iter()
            .any(|p| matches!(p.kind, PropKind::File { .. }));
        let has_header = s.props.iter().any(|p| p.kind == PropKind::Header);
        if (file_encoding.is_some() || file_name.is_some()) && !has_files {
            errs.push(
                t.key_path(if file_name.is_some() {
                    "file_name"
                } else {
                    "file_encoding"
                }),
                format!("scheme {:?} has no file credential", s.scheme),
            );
        }
        if has_header && header.is_none() {
            errs.push(t.key_path("header"), format!("is required by scheme {:?}: the name of the queryHeaders entry holding the token (e.g. \"Authorization\")", s.scheme));
        }
        if header.is_some() && !has_header {
            errs.push(
                t.key_path("header"),
                format!("scheme {:?} writes no header", s.scheme),
            );
        }
        if separate == Some(SeparateMode::DataCredentials) {
            let has = |n: &str| {
                s.props
                    .iter()
                    .any(|p| p.name == n && p.kind == PropKind::Text)
            };
            if !(has("username") && has("password")) {
                errs.push(
                    t.key_path("separate_credentials"),
                    format!(
                        "data_credentials needs a username/password scheme; scheme {:?} has none",
                        s.scheme
                    ),
                );
            }
        }
        if credentials_name.is_some() && separate != Some(SeparateMode::Patch) {
            errs.push(
                t.key_path("credentials_name"),
                "goes with separate_credentials = \"patch\"",
            );
        }
        if credential.is_some() && separate != Some(SeparateMode::DataCredentials) {
            errs.push(
                t.key_path("credential"),
                "goes with separate_credentials = \"data_credentials\"",
            );
        }
        s.file_encoding = file_encoding.unwrap_or_default();
        s.file_name = file_name;
        s.header = header;
        s.separate = separate;
        s.credentials_name = credentials_name;
        s.credential = credential;
    }
    spec
}

fn daemon_section(mut t: Table<'_>, base: &Path, errs: &mut Errors) -> DaemonConfig {
    let state_dir = t
        .opt_str("state_dir", errs)
        .map(|p| resolve(base, &p))
        .unwrap_or_else(|| resolve(base, "state"));
    let max_concurrent_rotations = t
        .opt_u64("max_concurrent_rotations", 1..=1024, errs)
        .unwrap_or(4) as usize;
    let shutdown_grace_period = t
        .opt_duration("shutdown_grace_period", errs)
        .unwrap_or(Duration::from_secs(30));
    let max_attempts_per_run = t.opt_u64("max_attempts_per_run", 1..=10, errs).unwrap_or(3) as u32;
    t.finish(errs);
    DaemonConfig {
        state_dir,
        max_concurrent_rotations,
        shutdown_grace_period,
        max_attempts_per_run,
    }
}

fn metrics_section(mut t: Table<'_>, base: &Path, errs: &mut Errors) -> Option<MetricsConfig> {
    let listen = match t.opt_str("listen", errs) {
        None => Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
        Some(s) => match s.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                errs.push(
                    t.key_path("listen"),
                    format!("expected an address such as \"127.0.0.1:9464\", found {s:?}"),
                );
                None
            }
        },
    };
    let admin_token_file = t
        .opt_str("admin_token_file", errs)
        .map(|p| resolve(base, &p));
    t.finish(errs);
    Some(MetricsConfig {
        listen: listen?,
        admin_token_file,
    })
}

#[cfg(test)]
mod tests;
