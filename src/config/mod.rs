//! Configuration: a TOML file plus `QLIK_ROTATOR__SECTION__KEY` environment overrides,
//! validated in one pure pass that reports every error with its key path.
//!
//! Loading is phase one of the lifecycle: no network, no secrets read. Secret *locations*
//! (`*_env`, `*_file`) are validated here; their contents are read in the build phase by
//! [`SecretLocator::read`].

pub mod events;
pub mod notify;
mod split;
pub mod state;
/// The config primitives, a module of their own (`crate::walk`) so that the modules below
/// `config` (the secret sources, `cli`) can use them; the old path keeps working.
pub use crate::walk;

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
use walk::{Errors, Table, base_url, kind, resolve};

/// `[sources.NAME]`: declared with the sources, one variant per file in `secrets/`.
pub use crate::secrets::SourceConfig;
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
    /// A message that names neither the variable, the file nor the content: the caller
    /// prefixes the config key. A locator is a value of a `*_env` / `*_file` key, and a secret
    /// pasted there by mistake would otherwise be echoed ("environment variable eyJ… is not
    /// set").
    pub fn read(&self, input: &dyn ConfigInput) -> Result<SecretString, String> {
        if let Err(why) = self.check() {
            return Err(why.to_owned());
        }
        let raw = match self {
            SecretLocator::Env(name) => input
                .var(name)
                .ok_or_else(|| "the environment variable it names is not set".to_owned())?,
            SecretLocator::File(path) => std::fs::read_to_string(path).map_err(|e| {
                format!(
                    "the file it names cannot be read ({})",
                    std::io::Error::from(e.kind())
                )
            })?,
        };
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(format!("{} is empty", self.describe()));
        }
        Ok(SecretString::from(trimmed.to_owned()))
    }

    /// `the environment variable it names` / `the file it names`, for messages (never the
    /// name itself, see [`SecretLocator::read`]).
    pub fn describe(&self) -> String {
        match self {
            SecretLocator::Env(_) => "the environment variable it names".to_owned(),
            SecretLocator::File(_) => "the file it names".to_owned(),
        }
    }

    /// Whether the locator has the shape of a variable name or a path.
    ///
    /// # Errors
    /// What the value must look like (never the value).
    pub fn check(&self) -> Result<(), &'static str> {
        match self {
            SecretLocator::Env(name) if is_env_name(name) => Ok(()),
            SecretLocator::Env(_) => Err(ENV_NAME_RULE),
            SecretLocator::File(path) => match path.to_str() {
                Some(p) if is_path(p) => Ok(()),
                _ => Err(PATH_RULE),
            },
        }
    }
}

/// What a `*_env` value must look like.
pub const ENV_NAME_RULE: &str = "must be the name of an environment variable \
     ([A-Za-z_][A-Za-z0-9_]*, at most 256 characters), not the secret itself; \
     the value is not shown";

/// What a path value must look like.
pub const PATH_RULE: &str = "must be a file path (no control characters or newlines, at most \
     4096 bytes), not the secret itself; the value is not shown";

/// `[A-Za-z_][A-Za-z0-9_]*`, at most 256 characters.
pub fn is_env_name(s: &str) -> bool {
    s.len() <= 256
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Non-empty, no control characters, at most 4096 bytes.
pub fn is_path(s: &str) -> bool {
    !s.trim().is_empty() && walk::check_text(s, 4096).is_ok()
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

/// One Qlik tenant: `[qlik]` (the tenant named [`DEFAULT_TENANT`]) or a `[tenants.NAME]`.
#[derive(Debug, Clone)]
pub struct QlikConfig {
    /// The tenant's name: the `NAME` of `[tenants.NAME]`, or [`DEFAULT_TENANT`] for `[qlik]`.
    pub name: Arc<str>,
    /// The table it was read from (`qlik` or `tenants.NAME`), the prefix of its keys in
    /// messages (`tenants.prod.api_key_env`).
    pub table: String,
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
    /// Tier 1 reads per minute for this identity (`read_budget_per_min`, default 1,000; 0 =
    /// unlimited).
    pub read_budget_per_min: u32,
    /// The largest response body read from Qlik (`max_response_bytes`, default 4 MiB, from
    /// 64 KiB to 256 MiB); a longer one fails with `response_too_large`.
    pub max_response_bytes: u64,
}

/// How a job names its connection (in [`crate::qlik::model`], so that [`crate::state`], below
/// `config`, can use it).
pub use crate::qlik::model::ConnectionRef;

/// The name of the one tenant a `[qlik]` table configures.
pub const DEFAULT_TENANT: &str = "default";

/// Longest tenant name (a metrics label value and a key prefix).
pub const MAX_TENANT_NAME: usize = 32;

/// What a tenant name must look like.
pub const TENANT_NAME_RULE: &str = "a tenant name is 1 to 32 characters from a-z, 0-9, '-' and '_', starting with a letter or digit";

/// `[a-z0-9][a-z0-9_-]{0,31}`: the `NAME` of `[tenants.NAME]` (a label value, a key prefix and
/// part of state keys, so bounded and plain).
pub fn is_tenant_name(s: &str) -> bool {
    s.len() <= MAX_TENANT_NAME
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'))
}

/// One connection of a job, in its tenant. Dereferences to its [`ConnectionRef`]; its
/// [`Target::key`] carries the tenant when that is not the job's own, so the keys of one job
/// (state, reports, retries) stay distinct across tenants (connection ids and names are only
/// unique within a tenant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The connection.
    pub conn: ConnectionRef,
    /// Its tenant (the connection's `tenant`, else the job's).
    pub tenant: Arc<str>,
    /// Whether the tenant is not the job's own (set by validation).
    pub foreign: bool,
}

impl Target {
    /// A connection in the job's own tenant.
    pub fn new(conn: ConnectionRef, tenant: Arc<str>) -> Self {
        Target {
            conn,
            tenant,
            foreign: false,
        }
    }

    /// The key for state and reports: [`ConnectionRef::key`], prefixed with `tenant:` for a
    /// connection outside the job's tenant.
    pub fn key(&self) -> String {
        if self.foreign {
            format!("{}:{}", self.tenant, self.conn.key())
        } else {
            self.conn.key()
        }
    }

    /// What makes two targets the same connection: the tenant and [`ConnectionRef::identity`].
    pub fn identity(&self) -> (&str, Option<&str>, String) {
        let (space, rest) = self.conn.identity();
        (&self.tenant, space, rest)
    }
}

/// A target equals a reference to its connection (whatever the tenant).
impl PartialEq<ConnectionRef> for Target {
    fn eq(&self, other: &ConnectionRef) -> bool {
        self.conn == *other
    }
}

impl std::ops::Deref for Target {
    type Target = ConnectionRef;
    fn deref(&self) -> &ConnectionRef {
        &self.conn
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.foreign {
            write!(f, "{} in tenant {}", self.conn, self.tenant)
        } else {
            self.conn.fmt(f)
        }
    }
}

/// `[[jobs]]`.
#[derive(Debug, Clone)]
pub struct JobConfig {
    /// Unique job name (metrics label, CLI selector).
    pub name: String,
    /// The job's tenant (`tenant`; with `[qlik]`, or a single `[tenants.NAME]`, that one).
    pub tenant: Arc<str>,
    /// The connections (one, or several fed by the same secret), each in its tenant.
    pub connections: Vec<Target>,
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
    /// `allow_shared_connection`: this job may PATCH a connection another job also patches
    /// (each must say so; otherwise two jobs on one connection are a config error).
    pub allow_shared_connection: bool,
    /// `canary_app`: an app (id) that reads through the job's connections; after PATCH +
    /// verify it is reloaded, and only a `SUCCEEDED` reload makes the outcome `rotated`.
    pub canary_app: Option<String>,
    /// `canary_timeout`: how long the canary reload may take to reach a final status.
    pub canary_timeout: Duration,
    /// `rollback`: when verify or the canary fails, re-apply the last verified version.
    pub rollback: bool,
    /// `version_stage = "AWSPENDING"` (Secrets Manager only): the job takes part in the AWS
    /// rotation protocol. Its scheduled runs read `AWSCURRENT` (`secret.version` holds that);
    /// `POST /secrets/{id}/test?version=…` applies the pending version, verifies it and runs
    /// the canary, so a rotation Lambda's testSecret step can wait on the proof.
    pub pending_test: bool,
}

/// `[daemon]`.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Where state (last applied versions) is kept.
    pub state_dir: PathBuf,
    /// How many rotations may run at once in each tenant (one tenant with `[qlik]`).
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
    /// Bearer token file enabling the read-only `GET /jobs`, `GET /jobs/{name}` and
    /// `GET /runs/{id}` (the admin token reads too).
    pub read_token_file: Option<PathBuf>,
    /// Adds the per-job duration histogram (14 series per job; off by default).
    pub per_job_duration_histogram: bool,
    /// Counts `unchanged` per job in `rotations_total` too (one series per job; off by
    /// default: it is counted per connector).
    pub per_job_unchanged: bool,
    /// Counts `rotated` per job in `rotations_total` too (one series per job; off by default:
    /// it is counted per connector).
    pub per_job_rotated: bool,
}

/// A validated configuration: what the rest of the crate sees.
#[derive(Debug, Clone)]
pub struct Config {
    /// The tenants, by name: the one `[qlik]` (named [`DEFAULT_TENANT`]) or the
    /// `[tenants.NAME]` tables.
    pub tenants: Vec<QlikConfig>,
    /// Whether the file declares `[tenants.NAME]` tables (then series carry a `tenant` label
    /// and reports name the tenant); `false` for `[qlik]`, whose output is as before tenants.
    pub multi_tenant: bool,
    /// `[sources.*]`.
    pub sources: BTreeMap<String, SourceConfig>,
    /// `[[jobs]]`.
    pub jobs: Vec<JobConfig>,
    /// `[daemon]`.
    pub daemon: DaemonConfig,
    /// `[metrics]`.
    pub metrics: MetricsConfig,
    /// `[state]`.
    pub state: state::StateConfig,
    /// `[events]` (optional): the change-event source ([`events::EventsConfig`]).
    pub events: Option<events::EventsConfig>,
    /// `[[notify]]` (optional): webhooks told about outcomes ([`notify::NotifyConfig`]).
    pub notify: Vec<notify::NotifyConfig>,
}

impl JobConfig {
    /// The connector (`datasourceID`), for labels and messages: the spec's (no copy per job).
    pub fn connector(&self) -> &str {
        &self.spec.datasource
    }

    /// The state-file key of one of the job's connections: the job name for a single
    /// connection, `job@connection` for a job feeding several (the connection's
    /// [`Target::key`], with its tenant when that is not the job's).
    pub fn state_key(&self, conn: &Target) -> String {
        if self.connections.len() == 1 {
            self.name.clone()
        } else {
            format!("{}@{}", self.name, conn.key())
        }
    }
}

impl Config {
    /// The tenant named `name`.
    pub fn tenant(&self, name: &str) -> Option<&QlikConfig> {
        self.tenants.iter().find(|t| &*t.name == name)
    }

    /// Why `raw` names no tenant of this file, for an error at a key or flag: `names no
    /// tenant; did you mean "prod"? (defined: prod, test)` (the wording of the `tenant` keys).
    pub fn unknown_tenant(&self, raw: &str) -> String {
        let names: Vec<&str> = self.tenants.iter().map(|t| &*t.name).collect();
        let tenants = TenantNames {
            names: &names,
            multi: self.multi_tenant,
        };
        tenants.unknown(raw)
    }

    /// The job named `name`.
    pub fn job(&self, name: &str) -> Option<&JobConfig> {
        self.jobs.iter().find(|j| j.name == name)
    }

    /// Valid but risky settings, each with its key: shown by `check-config` and logged when
    /// the daemon starts.
    pub fn warnings(&self) -> Vec<ConfigError> {
        let mut out = Vec::new();
        if self.metrics.admin_token_file.is_some() && !self.metrics.listen.ip().is_loopback() {
            out.push(ConfigError {
                path: "metrics.listen".into(),
                message: format!(
                    "the admin API (POST /jobs/{{name}}/rotate, enabled by metrics.admin_token_file) \
                     listens on {}, which is reachable from other hosts; anyone who gets the \
                     token can trigger rotations. Listen on 127.0.0.1, or restrict access with \
                     a firewall or network policy",
                    self.metrics.listen
                ),
            });
        }
        out
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
    if let Some(split) = split::split(text)
        && let Some(result) = load_split(&split, base_dir, &overrides)
    {
        return result;
    }
    let tree =
        parse(text, Some(overrides)).map_err(|e| ConfigErrors(vec![syntax_error(text, &e)]))?;
    validate(&tree, base_dir)
}

/// TOML text (plus environment overrides) as an untyped tree.
fn parse(
    text: &str,
    overrides: Option<HashMap<String, String>>,
) -> Result<Value, config::ConfigError> {
    let mut builder = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml));
    if let Some(overrides) = overrides {
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .source(Some(overrides)),
        );
    }
    builder.build().and_then(|c| c.try_deserialize())
}

/// A `[[jobs]]` entry whose own text did not parse: the whole document is parsed instead, for
/// the error and its position.
struct Unparsed;

/// Loads a [`split::Split`] document: the rest with the overrides, then each `[[jobs]]` entry
/// on its own, turned into its [`JobConfig`] before the next is parsed. `None` when the full
/// parse must decide (a syntax error anywhere, or `jobs` set outside the entries).
fn load_split(
    split: &split::Split<'_>,
    base_dir: &Path,
    overrides: &HashMap<String, String>,
) -> Option<Result<Config, ConfigErrors>> {
    let rest = parse(&split.rest, Some(overrides.clone())).ok()?;
    if rest.get("jobs").is_some() {
        return None;
    }
    validate_with(&rest, base_dir, |root, sources, errs| {
        root.allow(&["jobs"]);
        let mut jobs = Jobs::default();
        for (i, text) in split.jobs.iter().enumerate() {
            let tree = parse(text, None).map_err(|_| Unparsed)?;
            let item = match tree
                .get("jobs")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
            {
                Some([item]) => item,
                _ => return Err(Unparsed),
            };
            jobs.add(i, item, sources, errs);
        }
        Ok(jobs)
    })
    .ok()
}

/// A TOML syntax error as line, column and (where the line is a `key = …` of the schema) key
/// path, plus the parser's description. Never the line's text: it may hold a pasted secret
/// (`api_key = "…` with a missing quote quotes the key in the parser's own message).
fn syntax_error(text: &str, e: &config::ConfigError) -> ConfigError {
    let toml_err = match e {
        config::ConfigError::FileParse { cause, .. } => cause.downcast_ref::<toml::de::Error>(),
        _ => None,
    };
    let Some(err) = toml_err else {
        // Not a TOML syntax error (a float or date that does not fit, or an override): the
        // cause can quote the value, so it is not shown.
        return ConfigError {
            path: "<file>".into(),
            message: "not valid TOML: a value cannot be read (check numbers and dates)".into(),
        };
    };
    let offset = err.span().map_or(0, |s| s.start).min(text.len());
    let before = &text[..offset];
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..offset].chars().count() + 1;
    let line = text[line_start..].lines().next().unwrap_or("");
    let path = toml_key_path(&text[..line_start], line).unwrap_or_else(|| "<file>".into());
    // The parser's description is a fixed phrase ("invalid basic string, expected `\"`"); if a
    // future version quoted the input, any word of the line found in it hides it.
    let described = err.message().trim().replace('\n', "; ");
    let echoes = line
        .split(|c: char| c.is_whitespace() || "=\"'[]{},".contains(c))
        .any(|w| w.chars().count() >= 4 && described.contains(w));
    let described = if echoes || walk::check_text(&described, 200).is_err() {
        "syntax error".to_owned()
    } else {
        described
    };
    ConfigError {
        path,
        message: format!("not valid TOML at line {line_no}, column {column}: {described}"),
    }
}

/// The schema key path of `line` (`qlik.api_key`, `jobs[2].secret`), from the table headers in
/// `before` and the key the line starts with. Only names the schema knows are given back:
/// anything else (a pasted secret on a line of its own parses as a key) yields the table or
/// nothing.
fn toml_key_path(before: &str, line: &str) -> Option<String> {
    const SECTIONS: &[&str] = &["qlik", "qlik.oauth", "daemon", "metrics", "events", "state"];
    let clean = |h: &str| -> String { h.chars().filter(|c| !c.is_whitespace()).collect() };
    let mut table: Option<String> = Some(String::new());
    let mut jobs = 0usize;
    let mut header = |raw: &str, table: &mut Option<String>| {
        let h = raw.trim();
        if let Some(inner) = h.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let inner = clean(inner);
            *table = (inner == "jobs").then(|| {
                jobs += 1;
                format!("jobs[{}]", jobs - 1)
            });
        } else if let Some(inner) = h.strip_prefix('[').and_then(|r| r.split(']').next()) {
            let inner = clean(inner);
            *table = if SECTIONS.contains(&inner.as_str()) {
                Some(inner)
            } else if inner == "jobs.fields" && jobs > 0 {
                Some(format!("jobs[{}].fields", jobs - 1))
            } else if let Some(name) = inner.strip_prefix("sources.")
                && is_identifier(name)
            {
                Some(format!("sources.{name}"))
            } else if let Some(name) = inner.strip_prefix("tenants.")
                && is_tenant_name(name.strip_suffix(".oauth").unwrap_or(name))
            {
                Some(format!("tenants.{name}"))
            } else {
                None
            };
        }
    };
    for l in before.lines() {
        if l.trim_start().starts_with('[') {
            header(l, &mut table);
        }
    }
    if line.trim_start().starts_with('[') {
        return None;
    }
    let table = table?;
    let key = line
        .split('=')
        .next()
        .map(str::trim)
        .filter(|k| KNOWN_KEYS.contains(k) || SourceConfig::keys().any(|s| s == *k));
    if table.ends_with(".fields") {
        // Keys there are Qlik property names, not the schema's.
        return Some(table);
    }
    match (table.is_empty(), key) {
        (true, Some(k)) => Some(k.to_owned()),
        (false, Some(k)) => Some(format!("{table}.{k}")),
        (true, None) => None,
        (false, None) => Some(table),
    }
}

/// Every key name of the schema (for locating syntax errors without quoting the file); the
/// keys of `[sources.NAME]` tables come from [`SourceConfig::keys`].
const KNOWN_KEYS: &[&str] = &[
    "qlik",
    "tenants",
    "tenant",
    "tenant_url",
    "api_key",
    "api_key_env",
    "api_key_file",
    "oauth",
    "client_id",
    "client_secret",
    "client_secret_env",
    "client_secret_file",
    "scope",
    "request_timeout",
    "max_attempts",
    "write_budget_per_min",
    "read_budget_per_min",
    "max_response_bytes",
    "sources",
    "type",
    "jobs",
    "name",
    "connection",
    "connections",
    "id",
    "space",
    "connector",
    "scheme",
    "datasource",
    "properties",
    "file_properties",
    "fields",
    "file_encoding",
    "file_name",
    "header",
    "separate_credentials",
    "credentials_name",
    "credential",
    "source",
    "secret",
    "version_stage",
    "version_id",
    "schedule",
    "timezone",
    "jitter",
    "run_on_start",
    "force",
    "max_age",
    "allow_shared_connection",
    "canary_app",
    "canary_timeout",
    "rollback",
    "daemon",
    "state_dir",
    "max_concurrent_rotations",
    "shutdown_grace_period",
    "max_attempts_per_run",
    "metrics",
    "listen",
    "admin_token_file",
    "read_token_file",
    "per_job_duration_histogram",
    "per_job_unchanged",
    "per_job_rotated",
    "state",
    "backend",
    "table",
    "lease_ttl",
    "region",
    "history_retention",
    "events",
    "queue_url",
    "endpoint_url",
    "wait_time",
    "max_messages",
    "notify",
    "url",
    "url_file",
    "format",
    "on",
    "timeout",
    "retries",
    "headers_from_file",
];

/// `[A-Za-z0-9_-]{1,64}`: names of sources and the like.
fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Validates an untyped configuration tree.
///
/// # Errors
/// Every problem found, each with its key path.
pub fn validate(tree: &Value, base_dir: &Path) -> Result<Config, ConfigErrors> {
    match validate_with(tree, base_dir, jobs_from_tree) {
        Ok(result) => result,
        Err(never) => match never {},
    }
}

/// The valid `[[jobs]]` entries so far.
#[derive(Default)]
struct Jobs {
    jobs: Vec<JobConfig>,
    /// The `jobs[i]` index of each valid job (invalid ones are left out of `jobs`).
    index: Vec<usize>,
    /// Equal specs are shared: most jobs of a large config use a catalogue connector as is.
    specs: Vec<Arc<BuildSpec>>,
}

impl Jobs {
    /// Validates entry `jobs[i]`.
    fn add(
        &mut self,
        i: usize,
        item: &Value,
        sources: &BTreeMap<String, SourceConfig>,
        errs: &mut Errors,
    ) {
        if let Some(mut job) =
            Table::new(format!("jobs[{i}]"), item, errs).and_then(|t| job(t, sources, errs))
        {
            self.index.push(i);
            match self.specs.iter().find(|s| ***s == *job.spec) {
                Some(shared) => job.spec = shared.clone(),
                None if self.specs.len() < 64 => self.specs.push(job.spec.clone()),
                None => {}
            }
            self.jobs.push(job);
        }
    }
}

/// The `[[jobs]]` entries of a whole tree.
fn jobs_from_tree(
    root: &mut Table<'_>,
    sources: &BTreeMap<String, SourceConfig>,
    errs: &mut Errors,
) -> Result<Jobs, std::convert::Infallible> {
    let mut jobs = Jobs::default();
    match root.get("jobs") {
        Some(Value::Array(items)) if items.is_empty() => {
            errs.push("jobs", "at least one [[jobs]] entry is required");
        }
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                jobs.add(i, item, sources, errs);
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
    Ok(jobs)
}

/// [`validate`], with the `[[jobs]]` entries from `entries` (given the root table, so it can
/// read or allow `jobs`); an error of `entries` stops the validation.
fn validate_with<E>(
    tree: &Value,
    base_dir: &Path,
    entries: impl FnOnce(
        &mut Table<'_>,
        &BTreeMap<String, SourceConfig>,
        &mut Errors,
    ) -> Result<Jobs, E>,
) -> Result<Result<Config, ConfigErrors>, E> {
    let mut errs = Errors::default();
    let empty = Value::Object(Default::default());
    let mut root = match Table::new("", tree, &mut errs) {
        Some(root) => root,
        None => return Ok(Err(ConfigErrors(errs.0))),
    };
    let tenants = tenants_section(&mut root, &mut errs);

    let sources = sources_section(root.get("sources"), base_dir, &mut errs);
    let Jobs {
        mut jobs,
        index: job_index,
        ..
    } = entries(&mut root, &sources, &mut errs)?;
    if let Some((tenants, multi)) = &tenants {
        let names: Vec<&str> = tenants.iter().map(|t| &*t.name).collect();
        assign_tenants(&mut jobs, &job_index, &names, *multi, &mut errs);
    }
    duplicate_job_names(&jobs, &job_index, &mut errs);
    shared_connections(&jobs, &job_index, &mut errs);

    let daemon = Table::new("daemon", root.get("daemon").unwrap_or(&empty), &mut errs)
        .map(|t| daemon_section(t, base_dir, &mut errs));
    let metrics = Table::new("metrics", root.get("metrics").unwrap_or(&empty), &mut errs)
        .and_then(|t| metrics_section(t, base_dir, &mut errs));
    let state = Table::new("state", root.get("state").unwrap_or(&empty), &mut errs)
        .and_then(|t| state::state_section(t, &mut errs));
    let events_cfg = root
        .get("events")
        .and_then(|v| Table::new("events", v, &mut errs))
        .and_then(|t| events::events_section(t, &mut errs));
    let notify_cfg = root
        .get("notify")
        .map(|v| notify::notify_section(v, base_dir, &mut errs))
        .unwrap_or_default();
    root.finish(&mut errs);

    Ok(match (tenants, daemon, metrics, state) {
        (Some((tenants, multi_tenant)), Some(daemon), Some(metrics), Some(state))
            if errs.0.is_empty() =>
        {
            Ok(Config {
                tenants,
                multi_tenant,
                sources,
                jobs,
                daemon,
                metrics,
                state,
                events: events_cfg,
                notify: notify_cfg,
            })
        }
        _ => Err(ConfigErrors(errs.0)),
    })
}

/// `[qlik]` (one tenant, named [`DEFAULT_TENANT`]) or `[tenants.NAME]` tables (several), not
/// both: the tenants sorted by name, and whether they came from `[tenants.NAME]`.
fn tenants_section(root: &mut Table<'_>, errs: &mut Errors) -> Option<(Vec<QlikConfig>, bool)> {
    match (root.get("qlik"), root.get("tenants")) {
        (Some(_), Some(_)) => {
            errs.push(
                "tenants",
                "set either [qlik] (one tenant) or [tenants.<name>] tables (several), not both; \
                 move [qlik] into a [tenants.<name>] table",
            );
            None
        }
        (Some(v), None) => Table::new("qlik", v, errs)
            .and_then(|t| qlik_section(t, DEFAULT_TENANT, errs))
            .map(|q| (vec![q], false)),
        (None, Some(v)) => {
            Table::new("tenants", v, errs)?;
            let mut out = Vec::new();
            let mut ok = true;
            for (name, value) in sorted(v) {
                let path = format!("tenants.{name}");
                if !is_tenant_name(name) {
                    errs.push(
                        walk::printable(&path, 80),
                        format!("bad tenant name: {TENANT_NAME_RULE}"),
                    );
                    ok = false;
                    continue;
                }
                match Table::new(path, value, errs).and_then(|t| qlik_section(t, name, errs)) {
                    Some(q) => out.push(q),
                    None => ok = false,
                }
            }
            if out.is_empty() && ok {
                errs.push(
                    "tenants",
                    "declares no tenant: add a [tenants.<name>] table with tenant_url and credentials",
                );
            }
            (ok && !out.is_empty()).then_some((out, true))
        }
        (None, None) => {
            errs.push(
                "qlik",
                "is required (the [qlik] table with tenant_url and credentials)",
            );
            None
        }
    }
}

/// Gives each job and connection its tenant: the job's `tenant` (required when there are
/// several tenants), a connection's own `tenant` otherwise the job's. Names an unknown tenant
/// with the known ones; refuses a `canary_app` on a job reaching into another tenant (the app
/// lives in one tenant and cannot read another's connections) and two connections of a job
/// with one key.
fn assign_tenants(
    jobs: &mut [JobConfig],
    index: &[usize],
    names: &[&str],
    multi: bool,
    errs: &mut Errors,
) {
    let tenants = TenantNames { names, multi };
    for (n, job) in jobs.iter_mut().enumerate() {
        let at = format!("jobs[{}]", index[n]);
        let tenant = if job.tenant.is_empty() {
            match names {
                [only] => Some(Arc::from(*only)),
                _ => {
                    errs.push(
                        format!("{at}.tenant"),
                        format!(
                            "is required: this file declares several tenants {}",
                            tenants.known()
                        ),
                    );
                    None
                }
            }
        } else {
            tenants.check(&job.tenant, format!("{at}.tenant"), errs)
        };
        let Some(tenant) = tenant else { continue };
        job.tenant = tenant.clone();
        assign_connection_tenants(job, &at, &tenant, &tenants, errs);
    }
}

/// The tenant names a file declares, to check a `tenant` key against.
struct TenantNames<'a> {
    names: &'a [&'a str],
    multi: bool,
}

impl TenantNames<'_> {
    /// The known tenants, for an error message.
    fn known(&self) -> String {
        if self.multi {
            format!("(defined: {})", self.names.join(", "))
        } else {
            format!(
                "(this file has one tenant, [qlik], named {DEFAULT_TENANT:?}; declare [tenants.<name>] tables for several)"
            )
        }
    }

    /// `raw` when it names a declared tenant; else an error at `path` (with "did you mean").
    fn check(&self, raw: &str, path: String, errs: &mut Errors) -> Option<Arc<str>> {
        if self.names.contains(&raw) {
            return Some(Arc::from(raw));
        }
        errs.push(path, self.unknown(raw));
        None
    }

    /// Why `raw` names no tenant, with "did you mean" and the known tenants.
    fn unknown(&self, raw: &str) -> String {
        format!(
            "names no tenant{} {}",
            crate::text::did_you_mean(raw, self.names.iter().copied()),
            self.known()
        )
    }
}

/// Gives each connection of `job` (at `at`, in `tenant`) its tenant: its own `tenant`, else
/// the job's; then refuses a `canary_app` on a job reaching into another tenant and two
/// connections with one key.
fn assign_connection_tenants(
    job: &mut JobConfig,
    at: &str,
    tenant: &Arc<str>,
    tenants: &TenantNames<'_>,
    errs: &mut Errors,
) {
    // As written (a duplicate there is already reported by `connection_list`).
    let raw: Vec<(String, (Option<String>, String))> = (job.connections.iter())
        .map(|t| {
            let (space, rest) = t.conn.identity();
            (t.tenant.to_string(), (space.map(str::to_owned), rest))
        })
        .collect();
    let many = job.connections.len() > 1;
    for (c, target) in job.connections.iter_mut().enumerate() {
        let path = if many {
            format!("{at}.connections[{c}].tenant")
        } else {
            format!("{at}.connection.tenant")
        };
        if target.tenant.is_empty() {
            target.tenant = tenant.clone();
        } else if let Some(t) = tenants.check(&target.tenant, path, errs) {
            target.foreign = t != *tenant;
            target.tenant = t;
        }
    }
    let foreign = job.connections.iter().any(|t| t.foreign);
    if foreign && job.canary_app.is_some() {
        errs.push(
            format!("{at}.canary_app"),
            "a canary app lives in one tenant and reads only its connections: a job with \
             canary_app keeps every connection in the job's tenant",
        );
    }
    let mut keys = std::collections::BTreeMap::new();
    for (c, target) in job.connections.iter().enumerate() {
        if let Some(first) = keys.insert(target.key(), c)
            && raw[first] != raw[c]
        {
            errs.push(
                format!("{at}.connections[{c}]"),
                "duplicate connection (its key, tenant:id or tenant:space/name, is another's)",
            );
        }
    }
}

/// `[sources.NAME]` tables, each read by its source's file (see [`SourceConfig::from_table`]).
fn sources_section(
    value: Option<&Value>,
    base_dir: &Path,
    errs: &mut Errors,
) -> BTreeMap<String, SourceConfig> {
    let mut sources = BTreeMap::new();
    if let Some(v) = value
        && Table::new("sources", v, errs).is_some()
    {
        for (name, value) in sorted(v) {
            let path = format!("sources.{name}");
            if let Some(src) = Table::new(path, value, errs)
                .and_then(|t| SourceConfig::from_table(t, base_dir, errs))
            {
                sources.insert(name.clone(), src);
            }
        }
    }
    sources
}

/// Job names are unique (metrics label, CLI selector, state key).
fn duplicate_job_names(jobs: &[JobConfig], index: &[usize], errs: &mut Errors) {
    let mut seen = BTreeMap::new();
    for (i, j) in jobs.iter().enumerate() {
        if let Some(first) = seen.insert(j.name.clone(), index[i]) {
            errs.push(
                format!("jobs[{}].name", index[i]),
                format!("duplicate job name {:?} (also jobs[{first}])", j.name),
            );
        }
    }
}

/// Two jobs that PATCH one connection (same id, or same name in the same space) race each other
/// and leave whichever secret ran last: refused unless both set `allow_shared_connection`.
/// (The same connection twice within one job is refused in [`job`].) A name and an id that
/// resolve to the same connection cannot be seen here, without the network.
fn shared_connections(jobs: &[JobConfig], index: &[usize], errs: &mut Errors) {
    let mut first: HashMap<(&str, Option<&str>, String), usize> = HashMap::new();
    for (n, job) in jobs.iter().enumerate() {
        for (c, conn) in job.connections.iter().enumerate() {
            let Some(&m) = first.get(&conn.identity()) else {
                first.insert(conn.identity(), n);
                continue;
            };
            let other = &jobs[m];
            if m == n || (job.allow_shared_connection && other.allow_shared_connection) {
                continue;
            }
            let at = if job.connections.len() == 1 {
                format!("jobs[{}].connection", index[n])
            } else {
                format!("jobs[{}].connections[{c}]", index[n])
            };
            errs.push(
                at,
                format!(
                    "job {:?} patches the same connection as job {:?} (jobs[{}]); one connection \
                     gets one job, or set allow_shared_connection = true on both",
                    job.name, other.name, index[m]
                ),
            );
        }
    }
}

fn sorted(v: &Value) -> Vec<(&String, &Value)> {
    v.as_object()
        .map(|m| m.iter().collect())
        .unwrap_or_default()
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
    let env = located(t, env_key, errs, is_env_name, ENV_NAME_RULE);
    let file = located(t, file_key, errs, is_path, PATH_RULE);
    match (env, file) {
        (Some(_), Some(_)) => {
            errs.push(
                t.key_path(env_key),
                format!("set only one of {env_key} and {file_key}"),
            );
            None
        }
        (Some(Some(e)), None) => Some(SecretLocator::Env(e)),
        (None, Some(Some(f))) => Some(SecretLocator::File(PathBuf::from(f))),
        (Some(None), None) | (None, Some(None)) => None,
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

/// A `*_env` / `*_file` value: `None` when absent, `Some(None)` when present but unusable (the
/// error says what it must look like, never what it was).
fn located(
    t: &mut Table<'_>,
    key: &'static str,
    errs: &mut Errors,
    valid: fn(&str) -> bool,
    rule: &'static str,
) -> Option<Option<String>> {
    match t.get(key)? {
        Value::String(s) if valid(s) => Some(Some(s.clone())),
        _ => {
            errs.push(t.key_path(key), rule);
            Some(None)
        }
    }
}

fn qlik_section(mut t: Table<'_>, name: &str, errs: &mut Errors) -> Option<QlikConfig> {
    let table = t.path.clone();
    let url = if t.has("tenant_url") {
        base_url(&mut t, "tenant_url", errs).map(|(_, u)| u)
    } else {
        t.req_str("tenant_url", errs);
        None
    };
    let has_key = t.has("api_key_env") || t.has("api_key_file") || t.has("api_key");
    let auth = match t.get("oauth") {
        Some(v) => {
            if has_key {
                errs.push(
                    t.key_path("oauth"),
                    format!(
                        "set either an API key (api_key_env/api_key_file) or [{}], not both",
                        t.key_path("oauth")
                    ),
                );
            }
            t.allow(&["api_key_env", "api_key_file", "api_key"]);
            Table::new(t.key_path("oauth"), v, errs).and_then(|mut o| {
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
        .opt_duration("request_timeout", RANGE_REQUEST_TIMEOUT, errs)
        .unwrap_or(Duration::from_secs(30));
    let max_attempts = t.opt_u64("max_attempts", 1..=10, errs).unwrap_or(5) as u32;
    let write_budget_per_min = t
        .opt_u64("write_budget_per_min", 0..=100_000, errs)
        .unwrap_or(100) as u32;
    let read_budget_per_min =
        t.opt_u64("read_budget_per_min", 0..=100_000, errs)
            .unwrap_or(u64::from(crate::qlik::gate::TIER1_PER_MIN)) as u32;
    let max_response_bytes = t
        .opt_u64("max_response_bytes", MAX_RESPONSE_BYTES_RANGE, errs)
        .unwrap_or(crate::qlik::client::DEFAULT_MAX_RESPONSE_BYTES);
    t.finish(errs);
    Some(QlikConfig {
        name: Arc::from(name),
        table,
        tenant_url: url?,
        auth: auth?,
        request_timeout,
        max_attempts,
        write_budget_per_min,
        read_budget_per_min,
        max_response_bytes,
    })
}

/// The documented range of `qlik.max_response_bytes`: 64 KiB to 256 MiB.
pub const MAX_RESPONSE_BYTES_RANGE: std::ops::RangeInclusive<u64> = 65_536..=268_435_456;

/// `qlik.request_timeout`: 0s would fail every request; beyond 10 minutes a hung tenant holds
/// a rotation (and a write-budget slot) for longer than any schedule tolerates.
pub const RANGE_REQUEST_TIMEOUT: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(600);
/// `jobs[].jitter`: up to one hour (a longer delay pushes runs past the next schedule).
pub const RANGE_JITTER: std::ops::RangeInclusive<Duration> =
    Duration::ZERO..=Duration::from_secs(3600);
/// `jobs[].max_age`: 1 minute to 400 days (exported as whole seconds; the staleness alert
/// needs a finite, positive age).
pub const RANGE_MAX_AGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(60)..=Duration::from_secs(400 * 86400);
/// `jobs[].canary_timeout`: 1 second to 2 hours (a reload queued behind others may wait; a
/// longer wait holds the job's run).
pub const RANGE_CANARY_TIMEOUT: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(7200);
/// `daemon.shutdown_grace_period`: 1 second to 1 hour (a PATCH + verify in flight needs a
/// moment; service managers kill long before an hour).
pub const RANGE_SHUTDOWN_GRACE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(3600);

/// One `[[jobs]]` table → [`JobConfig`]: each key is read by a named step below, in the order
/// the errors are reported. Pure over the parsed table (no I/O), so any parse path can call it.
fn job(
    mut t: Table<'_>,
    sources: &BTreeMap<String, SourceConfig>,
    errs: &mut Errors,
) -> Option<JobConfig> {
    let name = job_name(&mut t, errs);
    let tenant = t.opt_str("tenant", errs).unwrap_or_default();
    let connections = job_connections(&mut t, errs);
    let spec = job_spec(&mut t, errs);
    let source = job_source(&mut t, sources, errs);
    let secret_id = t.req_str("secret", errs);
    let version = version_selector(&mut t, errs);
    let schedule = job_schedule(&mut t, errs);
    let timezone = job_timezone(&mut t, errs);
    let jitter = t
        .opt_duration("jitter", RANGE_JITTER, errs)
        .unwrap_or_default();
    let run_on_start = t.opt_bool("run_on_start", errs).unwrap_or(false);
    let force = t.opt_bool("force", errs).unwrap_or(false);
    let allow_shared_connection = t.opt_bool("allow_shared_connection", errs).unwrap_or(false);
    let max_age = t
        .opt_duration("max_age", RANGE_MAX_AGE, errs)
        .unwrap_or(Duration::from_secs(25 * 3600));
    let canary_app = t.opt_str("canary_app", errs).and_then(|a| {
        if is_uuid(&a) {
            Some(a)
        } else {
            errs.push(
                t.key_path("canary_app"),
                "must be an app id (a UUID, as Qlik Cloud app ids are)",
            );
            None
        }
    });
    let canary_timeout = t
        .opt_duration("canary_timeout", RANGE_CANARY_TIMEOUT, errs)
        .unwrap_or(Duration::from_secs(600));
    let rollback = t.opt_bool("rollback", errs).unwrap_or(false);
    let pending_test = matches!(&version, VersionSelector::Stage(s) if s == "AWSPENDING");
    let version = if pending_test {
        pending_checks(
            &t,
            source.as_deref(),
            sources,
            canary_app.is_some(),
            rollback,
            errs,
        );
        VersionSelector::Stage("AWSCURRENT".to_owned())
    } else {
        version
    };
    t.finish(errs);
    let spec = spec?;
    Some(JobConfig {
        name: name?,
        tenant: Arc::from(tenant),
        connections: connections?,
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
        allow_shared_connection,
        canary_app,
        canary_timeout,
        rollback,
        pending_test,
    })
}

/// `version_stage = "AWSPENDING"` needs a Secrets Manager source (the stage is its), a
/// `canary_app` (the proof the test endpoint answers with) and `rollback = true` (a pending
/// version that fails its test must not stay on the connection).
fn pending_checks(
    t: &Table<'_>,
    source: Option<&str>,
    sources: &BTreeMap<String, SourceConfig>,
    canary: bool,
    rollback: bool,
    errs: &mut Errors,
) {
    const WHY: &str = "version_stage = \"AWSPENDING\" (the AWS rotation protocol)";
    if let Some(src) = source.and_then(|s| sources.get(s))
        && !matches!(src, SourceConfig::AwsSecretsManager(_))
    {
        errs.push(
            t.key_path("version_stage"),
            format!("{WHY} needs an aws_secrets_manager source"),
        );
    }
    if !canary {
        errs.push(
            t.key_path("canary_app"),
            format!("{WHY} needs canary_app: the test endpoint answers with the canary's proof"),
        );
    }
    if !rollback {
        errs.push(
            t.key_path("rollback"),
            format!("{WHY} needs rollback = true: a pending version that fails its test must not stay on the connection"),
        );
    }
}

/// `name`: 1 to 64 characters from `A-Za-z0-9-_.` (a metrics label and a CLI selector).
fn job_name(t: &mut Table<'_>, errs: &mut Errors) -> Option<String> {
    t.req_str("name", errs).and_then(|n| {
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
    })
}

/// `connection = { … }` or `connections = [ … ]` (non-empty, no duplicates), not both.
fn job_connections(t: &mut Table<'_>, errs: &mut Errors) -> Option<Vec<Target>> {
    match (t.get("connection"), t.get("connections")) {
        (Some(_), Some(_)) => {
            errs.push(
                t.key_path("connections"),
                "set either connection or connections, not both",
            );
            None
        }
        (Some(v), None) => connection_ref(t.key_path("connection"), v, errs).map(|c| vec![c]),
        (None, Some(Value::Array(items))) if !items.is_empty() => {
            connection_list(&t.key_path("connections"), items, errs)
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
    }
}

/// The items of `connections` at `path`: each a valid reference, none twice.
fn connection_list(path: &str, items: &[Value], errs: &mut Errors) -> Option<Vec<Target>> {
    let refs: Vec<_> = items
        .iter()
        .enumerate()
        .map(|(i, v)| connection_ref(format!("{path}[{i}]"), v, errs))
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    for (i, r) in refs.iter().enumerate() {
        if let Some(r) = r
            && !seen.insert(r.identity())
        {
            errs.push(format!("{path}[{i}]"), "duplicate connection");
        }
    }
    refs.into_iter().collect::<Option<Vec<_>>>()
}

/// `source`: the name of a `[sources.NAME]` table.
fn job_source(
    t: &mut Table<'_>,
    sources: &BTreeMap<String, SourceConfig>,
    errs: &mut Errors,
) -> Option<String> {
    t.req_str("source", errs).and_then(|s| {
        if sources.contains_key(&s) {
            Some(s)
        } else {
            let known: Vec<_> = sources.keys().map(String::as_str).collect();
            errs.push(
                t.key_path("source"),
                format!(
                    "names no [sources.<name>] table{} (defined: {})",
                    crate::text::did_you_mean(&s, known.iter().copied()),
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            );
            None
        }
    })
}

/// `version_stage` or `version_id` (not both); `AWSCURRENT` by default.
fn version_selector(t: &mut Table<'_>, errs: &mut Errors) -> VersionSelector {
    let stage = t.opt_str("version_stage", errs);
    let version_id = t.opt_str("version_id", errs);
    match (stage, version_id) {
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
    }
}

/// `schedule`: a 6-field cron expression with seconds, checked by the scheduler's parser.
fn job_schedule(t: &mut Table<'_>, errs: &mut Errors) -> Option<String> {
    let s = t.opt_str("schedule", errs)?;
    match croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .build()
        .parse(&s)
    {
        Ok(_) => Some(s),
        Err(e) => {
            // Only croner's fixed-text errors are passed on: others quote the pattern.
            let detail = match e {
                croner::errors::CronError::InvalidPattern(_)
                | croner::errors::CronError::EmptyPattern => format!(": {e}"),
                _ => String::new(),
            };
            errs.push(
                t.key_path("schedule"),
                format!(
                    "not a 6-field cron expression with seconds (e.g. \"0 */15 * * * *\"){detail}"
                ),
            );
            None
        }
    }
}

/// `timezone`: an IANA name; UTC by default.
fn job_timezone(t: &mut Table<'_>, errs: &mut Errors) -> chrono_tz::Tz {
    t.opt_str("timezone", errs)
        .and_then(|tz| match tz.parse::<chrono_tz::Tz>() {
            Ok(tz) => Some(tz),
            Err(_) => {
                errs.push(
                    t.key_path("timezone"),
                    "unknown time zone (use an IANA name such as \"Europe/Paris\")",
                );
                None
            }
        })
        .unwrap_or(chrono_tz::UTC)
}

/// One `connection` / `connections[i]` table: the reference and its `tenant` as written
/// (empty when absent; checked against the tenants by [`assign_tenants`]).
fn connection_ref(path: String, v: &Value, errs: &mut Errors) -> Option<Target> {
    let mut c = Table::new(path, v, errs)?;
    let tenant = c.opt_str("tenant", errs).unwrap_or_default();
    let id = c.opt_str("id", errs);
    let name = c.opt_str("name", errs);
    let space = c.opt_str("space", errs);
    let id_ok = id.as_deref().is_none_or(|id| {
        is_uuid(id) || {
            errs.push(c.key_path("id"), ID_RULE);
            false
        }
    });
    let name_ok = name.as_deref().is_none_or(|n| {
        segment_ok(n, MAX_CONNECTION_NAME) || {
            errs.push(
                c.key_path("name"),
                format!(
                    "must be a connection name of at most {MAX_CONNECTION_NAME} bytes, not \".\" or \"..\""
                ),
            );
            false
        }
    });
    let space_ok = space.as_deref().is_none_or(|sp| {
        segment_ok(sp, MAX_SPACE_ID) || {
            errs.push(
                c.key_path("space"),
                format!("must be a space id of at most {MAX_SPACE_ID} bytes, not \".\" or \"..\""),
            );
            false
        }
    });
    let r = match (id, name) {
        (Some(_), Some(_)) => {
            errs.push(c.key_path("id"), "set either id or name, not both");
            None
        }
        (Some(id), None) => {
            if space.is_some() {
                errs.push(c.key_path("space"), "space goes with name, not with id");
            }
            id_ok.then_some(ConnectionRef::Id(id))
        }
        (None, Some(name)) => (name_ok && space_ok).then_some(ConnectionRef::Name { name, space }),
        (None, None) => {
            if !c.has("id") && !c.has("name") {
                errs.push(c.path.clone(), "needs id or name");
            }
            None
        }
    };
    c.finish(errs);
    r.map(|conn| Target::new(conn, Arc::from(tenant)))
}

/// What a connection id must look like.
const ID_RULE: &str = "must be a connection id: a UUID such as \"6f1c2a9e-4b7d-4c1e-9a53-2b8f0d7e1a11\" \
     (Qlik answers 400 to any other id); to name a connection, use { name = \"…\", space = \"…\" }";
/// Longest connection name accepted (bytes).
pub const MAX_CONNECTION_NAME: usize = 256;
/// Longest space id accepted (bytes); Qlik's are 24 hex digits.
pub const MAX_SPACE_ID: usize = 64;

/// `8-4-4-4-12` hex digits (either case): the form Qlik gives connection ids in. GET one
/// answers 400 when qID is not a valid UUID (qlik-api-facts.md §2).
pub fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// A value that goes into a URL path segment: not `.` or `..` (no URL can carry them: they
/// are removed even percent-encoded), no control characters, at most `max` bytes.
fn segment_ok(s: &str, max: usize) -> bool {
    !matches!(s.trim(), "." | "..") && walk::check_text(s, max).is_ok()
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
/// credentials → the job's [`BuildSpec`]. Each step is a pure function over the job's table;
/// errors come in the order the keys are read.
fn job_spec(t: &mut Table<'_>, errs: &mut Errors) -> Option<BuildSpec> {
    let connector = t.req_str("connector", errs);
    let scheme_name = t.opt_str("scheme", errs);
    let datasource = t.opt_str("datasource", errs);
    let text_props = string_list(t, "properties", errs);
    let file_props = string_list(t, "file_properties", errs);
    let fields = field_overrides(t, errs);
    let mut spec = match connector.as_deref() {
        None => None,
        Some("generic") => {
            let props = (text_props, file_props);
            generic_spec(t, scheme_name.is_some(), datasource, props, &fields, errs)
        }
        Some(id) => catalogue_spec(t, id, scheme_name.as_deref(), &fields, errs),
    };
    if let Some(s) = &spec {
        check_field_overrides(t, s, &fields, errs);
    }
    let options = SpecOptions::read(t, errs);
    if let Some(s) = spec.as_mut() {
        options.apply(t, s, errs);
    }
    spec
}

/// `[jobs.fields]`: Qlik property → key in the secret.
fn field_overrides(t: &mut Table<'_>, errs: &mut Errors) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    if let Some(v) = t.get("fields")
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
    fields
}

/// `connector = "generic"`: `datasource` and at least one of `properties` /
/// `file_properties` are required, `scheme` is refused.
fn generic_spec(
    t: &Table<'_>,
    has_scheme: bool,
    datasource: Option<String>,
    (text_props, file_props): (Option<Vec<String>>, Option<Vec<String>>),
    fields: &BTreeMap<String, String>,
    errs: &mut Errors,
) -> Option<BuildSpec> {
    if has_scheme {
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
    datasource.map(|d| BuildSpec::generic(&d, &text_props, &file_props, fields))
}

/// A catalogue connector `id` and its `scheme` (the connector's default when absent); the
/// generic-only keys are refused.
fn catalogue_spec(
    t: &Table<'_>,
    id: &str,
    scheme_name: Option<&str>,
    fields: &BTreeMap<String, String>,
    errs: &mut Errors,
) -> Option<BuildSpec> {
    for key in ["datasource", "properties", "file_properties"] {
        if t.has(key) {
            errs.push(t.key_path(key), "is only used with connector = \"generic\"");
        }
    }
    let Some(c) = Connector::lookup(id) else {
        let ids = crate::connectors::CATALOGUE
            .iter()
            .flat_map(|f| f.ids.iter().copied());
        errs.push(
            t.key_path("connector"),
            format!(
                "unknown connector{} (see `qlik-rotator connectors`, or use connector = \"generic\")",
                crate::text::did_you_mean(id, ids.chain(["generic"]))
            ),
        );
        return None;
    };
    match c.scheme(scheme_name) {
        Some(scheme) => Some(BuildSpec::from_catalogue(&c, scheme, fields)),
        None => {
            let names: Vec<_> = c.family.schemes.iter().map(|s| s.name).collect();
            errs.push(
                t.key_path("scheme"),
                format!(
                    "connector {:?} has no such scheme (expected one of: {})",
                    c.id,
                    names.join(", ")
                ),
            );
            None
        }
    }
}

/// Every `[jobs.fields]` entry must name a credential property of the chosen scheme.
fn check_field_overrides(
    t: &Table<'_>,
    spec: &BuildSpec,
    fields: &BTreeMap<String, String>,
    errs: &mut Errors,
) {
    for prop in fields.keys() {
        if !spec.props.iter().any(|p| &p.name == prop) {
            let props: Vec<_> = spec.props.iter().map(|p| p.name.as_str()).collect();
            errs.push(
                format!("{}.{prop}", t.key_path("fields")),
                format!(
                    "{prop:?} is not a credential property of scheme {:?} (expected one of: {})",
                    spec.scheme,
                    props.join(", ")
                ),
            );
        }
    }
}

/// The job's file, header and separate-credentials options, as read (before they are checked
/// against the scheme).
struct SpecOptions {
    file_encoding: Option<FileEncoding>,
    file_name: Option<String>,
    header: Option<String>,
    separate: Option<SeparateMode>,
    credentials_name: Option<String>,
    credential: Option<String>,
}

impl SpecOptions {
    /// Reads `file_encoding`, `file_name`, `header`, `separate_credentials`,
    /// `credentials_name` and `credential`.
    fn read(t: &mut Table<'_>, errs: &mut Errors) -> Self {
        let file_encoding = t
            .opt_str("file_encoding", errs)
            .and_then(|e| match e.as_str() {
                "raw" => Some(FileEncoding::Raw),
                "base64" => Some(FileEncoding::Base64),
                _ => {
                    errs.push(
                        t.key_path("file_encoding"),
                        "expected \"raw\" or \"base64\"",
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
                _ => {
                    errs.push(
                        t.key_path("separate_credentials"),
                        "expected \"patch\" or \"data_credentials\"",
                    );
                    None
                }
            });
        SpecOptions {
            file_encoding,
            file_name,
            header,
            separate,
            credentials_name: t.opt_str("credentials_name", errs),
            credential: t.opt_str("credential", errs),
        }
    }

    /// Checks the options against the scheme of `s` and writes them into it.
    fn apply(self, t: &Table<'_>, s: &mut BuildSpec, errs: &mut Errors) {
        self.check_files_and_header(t, s, errs);
        self.check_separate(t, s, errs);
        s.file_encoding = self.file_encoding.unwrap_or_default();
        s.file_name = self.file_name;
        s.header = self.header;
        s.separate = self.separate;
        s.credentials_name = self.credentials_name;
        s.credential = self.credential;
    }

    /// File options need a file credential; a header scheme needs `header`, and only a
    /// header scheme takes it.
    fn check_files_and_header(&self, t: &Table<'_>, s: &BuildSpec, errs: &mut Errors) {
        let has_files = s
            .props
            .iter()
            .any(|p| matches!(p.kind, PropKind::File { .. }));
        let has_header = s.props.iter().any(|p| p.kind == PropKind::Header);
        if (self.file_encoding.is_some() || self.file_name.is_some()) && !has_files {
            errs.push(
                t.key_path(if self.file_name.is_some() {
                    "file_name"
                } else {
                    "file_encoding"
                }),
                format!("scheme {:?} has no file credential", s.scheme),
            );
        }
        if has_header && self.header.is_none() {
            errs.push(t.key_path("header"), format!("is required by scheme {:?}: the name of the queryHeaders entry holding the token (e.g. \"Authorization\")", s.scheme));
        }
        if self.header.is_some() && !has_header {
            errs.push(
                t.key_path("header"),
                format!("scheme {:?} writes no header", s.scheme),
            );
        }
    }

    /// `data_credentials` needs a username/password scheme; `credentials_name` and
    /// `credential` go with their mode.
    fn check_separate(&self, t: &Table<'_>, s: &BuildSpec, errs: &mut Errors) {
        if self.separate == Some(SeparateMode::DataCredentials) {
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
        if self.credentials_name.is_some() && self.separate != Some(SeparateMode::Patch) {
            errs.push(
                t.key_path("credentials_name"),
                "goes with separate_credentials = \"patch\"",
            );
        }
        if self.credential.is_some() && self.separate != Some(SeparateMode::DataCredentials) {
            errs.push(
                t.key_path("credential"),
                "goes with separate_credentials = \"data_credentials\"",
            );
        }
    }
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
        .opt_duration("shutdown_grace_period", RANGE_SHUTDOWN_GRACE, errs)
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
                    "expected an IP address and port such as \"127.0.0.1:9464\"",
                );
                None
            }
        },
    };
    let admin_token_file = t
        .opt_str("admin_token_file", errs)
        .map(|p| resolve(base, &p));
    let read_token_file = t
        .opt_str("read_token_file", errs)
        .map(|p| resolve(base, &p));
    let per_job_duration_histogram = t
        .opt_bool("per_job_duration_histogram", errs)
        .unwrap_or(false);
    let per_job_unchanged = t.opt_bool("per_job_unchanged", errs).unwrap_or(false);
    let per_job_rotated = t.opt_bool("per_job_rotated", errs).unwrap_or(false);
    t.finish(errs);
    Some(MetricsConfig {
        listen: listen?,
        admin_token_file,
        read_token_file,
        per_job_duration_histogram,
        per_job_unchanged,
        per_job_rotated,
    })
}

#[cfg(test)]
mod tests;
