//! The build phase: turn a validated [`Config`] into one [`App`] (the Qlik client, the secret
//! sources, the state store, the metrics). May do I/O (reading the API key file, loading the
//! AWS configuration, locking the state directory); sends nothing to Qlik.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use crate::{
    config::{Config, ConfigInput, QlikAuth, QlikConfig, SecretLocator},
    metrics::Metrics,
    qlik::{ClientSettings, Credentials, Origin, QlikClient, RetryPolicy},
    rotation::Rotator,
    secrets::{self, AnySource},
    state::{SqliteBackend, StateBackend, dynamodb::DynamoState},
};

/// Why the build phase failed. Names the config key, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A credential the rotator itself needs could not be read.
    #[error("{key}: {message}")]
    Credential {
        /// The config key that points to it (`qlik.api_key_env`, `tenants.prod.api_key_env`).
        key: String,
        /// What went wrong.
        message: String,
    },
    /// The HTTP client could not be created.
    #[error("cannot create the HTTP client: {0}")]
    Client(String),
    /// The state directory cannot be used (in use by another process, unsafe permissions,
    /// not writable, a symbolic link as state file, a corrupt database).
    #[error("daemon.state_dir: {0}")]
    State(#[from] crate::state::StateError),
    /// A file a `[sources.NAME]` table names (token, secret id, JWT, CA) cannot be used
    /// ([`secrets::check_all`]); each error names its key.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Source(Vec<crate::config::ConfigError>),
}

/// Everything a command needs, built once: the rotator (Qlik client and secret sources), the
/// state store (its directory locked by this process) and the metrics.
#[derive(Debug)]
pub struct App {
    /// The rotator: Qlik client (with its shared write budget) and the secret sources.
    pub rotator: Arc<Rotator>,
    /// The state backend (`[state] backend`; its directory or table owned by this process or
    /// shared through leases).
    pub state: Arc<dyn StateBackend>,
    /// This process's lease owner id (`host-pid-random`).
    pub owner: String,
    /// How long a job lease lasts without renewal.
    pub lease_ttl: std::time::Duration,
    /// The metrics (served by `run`; kept but not served by one-shot commands).
    pub metrics: Arc<Metrics>,
}

impl App {
    /// The build phase. The state directory comes first: nothing is built, let alone sent,
    /// when this process cannot record what it applies.
    ///
    /// # Errors
    /// [`BuildError`], naming the config key.
    pub async fn build(cfg: &Config, input: &dyn ConfigInput) -> Result<App, BuildError> {
        let (state, lease_ttl) = state_backend(cfg).await?;
        secrets::check_all(&cfg.sources).map_err(BuildError::Source)?;
        let metrics = Arc::new(Metrics::with_options(
            crate::metrics::PerJob {
                duration_histogram: cfg.metrics.per_job_duration_histogram,
                unchanged: cfg.metrics.per_job_unchanged,
                rotated: cfg.metrics.per_job_rotated,
            },
            cfg.multi_tenant,
        ));
        metrics.set_state_writable(true);
        metrics.register_tenants(cfg.tenants.iter().map(|t| &*t.name));
        let clients = tenant_clients(cfg, input, Some(&metrics))?;
        let rotator = Rotator::with_clients(clients, cfg.multi_tenant, sources(cfg).await)
            .with_metrics(metrics.clone());
        Ok(App {
            rotator: Arc::new(rotator),
            state,
            owner: owner_id(),
            lease_ttl,
            metrics,
        })
    }
}

/// The lease of a local backend: granted at once and never contested, so its length only
/// shows in logs.
pub const LOCAL_LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// Opens the state backend `[state] backend` names, and its lease length.
///
/// # Errors
/// [`BuildError::State`].
pub async fn state_backend(
    cfg: &Config,
) -> Result<(Arc<dyn StateBackend>, std::time::Duration), BuildError> {
    use crate::config::state::BackendConfig;
    match &cfg.state.backend {
        BackendConfig::Sqlite => Ok((
            Arc::new(SqliteBackend::open(cfg.daemon.state_dir.clone())?),
            LOCAL_LEASE_TTL,
        )),
        // A client only: nothing is called until the first run (readiness and
        // `check-config --online` call DescribeTable).
        BackendConfig::DynamoDb(d) => Ok((
            Arc::new(
                DynamoState::connect(&d.table, d.region.as_deref(), cfg.state.history_retention)
                    .await,
            ),
            d.lease_ttl,
        )),
    }
}

/// This process's lease owner id: `<host>-<pid>-<random>`, host cut to 64 safe characters.
pub fn owner_id() -> String {
    use rand::Rng;
    let host: String = std::env::var("HOSTNAME")
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        .take(64)
        .collect();
    let host = if host.is_empty() {
        "local".into()
    } else {
        host
    };
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        rand::rng().random::<u32>()
    )
}

/// The load phase for a command: loads and validates; prints every error to stderr on failure.
///
/// # Errors
/// The exit code to use.
pub fn load(
    path: &std::path::Path,
    input: &dyn ConfigInput,
) -> Result<Config, std::process::ExitCode> {
    crate::config::load(path, input).map_err(|errs| {
        crate::telemetry::fatal(
            &format!(
                "{} is not a valid configuration",
                crate::text::Escaped(&path.display().to_string())
            ),
            &errs.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
        );
        std::process::ExitCode::from(crate::exit::EXIT_USAGE)
    })
}

/// Where the rotator's Qlik credentials come from, for a hint: `$QLIK_API_KEY
/// (qlik.api_key_env)`, `the file /run/secrets/qlik-api-key (qlik.api_key_file)` or `the OAuth
/// client "id" (qlik.oauth)`; of the first tenant (the only one with `[qlik]`).
pub fn identity(cfg: &Config) -> String {
    tenant_identity(&cfg.tenants[0])
}

/// [`identity`] of one tenant, its keys under its table (`tenants.prod.api_key_env`).
pub fn tenant_identity(t: &QlikConfig) -> String {
    let table = &t.table;
    match &t.auth {
        QlikAuth::ApiKey(SecretLocator::Env(n)) if crate::text::looks_like_variable(n) => {
            format!("the API key in ${n} ({table}.api_key_env)")
        }
        QlikAuth::ApiKey(SecretLocator::Env(_)) => {
            format!("the API key in the variable {table}.api_key_env names")
        }
        QlikAuth::ApiKey(SecretLocator::File(p)) => format!(
            "the API key in the file {} ({table}.api_key_file)",
            crate::text::printable(&p.display().to_string(), 300)
        ),
        QlikAuth::OAuth { client_id, .. } => format!(
            "the OAuth client {} ({table}.oauth)",
            crate::text::quoted(client_id, 200)
        ),
    }
}

/// Builds the Qlik client of the first tenant (the only one with `[qlik]`); see
/// [`tenant_client`].
///
/// # Errors
/// [`BuildError`] when the API key or client secret cannot be read.
pub fn qlik_client(cfg: &Config, input: &dyn ConfigInput) -> Result<QlikClient, BuildError> {
    tenant_client(&cfg.tenants[0], input)
}

/// Builds the Qlik client of one tenant: its own credentials, token cache, read and write
/// budgets and 429 pause, and its own identity in the hints of its errors.
///
/// # Errors
/// [`BuildError`] when the API key or client secret cannot be read (naming the tenant's key).
pub fn tenant_client(t: &QlikConfig, input: &dyn ConfigInput) -> Result<QlikClient, BuildError> {
    let key = |k: &str| format!("{}.{k}", t.table);
    let credentials = match &t.auth {
        QlikAuth::ApiKey(loc) => {
            Credentials::ApiKey(loc.read(input).map_err(|message| BuildError::Credential {
                key: match loc {
                    SecretLocator::Env(_) => key("api_key_env"),
                    SecretLocator::File(_) => key("api_key_file"),
                },
                message,
            })?)
        }
        QlikAuth::OAuth {
            client_id,
            client_secret,
            scope,
        } => Credentials::OAuth {
            client_id: client_id.clone(),
            client_secret: client_secret
                .read(input)
                .map_err(|message| BuildError::Credential {
                    key: match client_secret {
                        SecretLocator::Env(_) => key("oauth.client_secret_env"),
                        SecretLocator::File(_) => key("oauth.client_secret_file"),
                    },
                    message,
                })?,
            scope: scope.clone(),
        },
    };
    Ok(QlikClient::new(ClientSettings {
        tenant_url: t.tenant_url.clone(),
        credentials,
        request_timeout: t.request_timeout,
        retry: RetryPolicy {
            max_attempts: t.max_attempts,
            ..RetryPolicy::default()
        },
        write_budget_per_min: t.write_budget_per_min,
        read_budget_per_min: t.read_budget_per_min,
        max_response_bytes: t.max_response_bytes,
    })
    .map_err(|e| BuildError::Client(e.to_string()))?
    .with_origin(Origin {
        identity: tenant_identity(t),
        table: t.table.clone(),
    }))
}

/// One client per tenant ([`tenant_client`]), each reporting its requests to `metrics` (with
/// a `tenant` label when the configuration declares `[tenants.NAME]`).
///
/// # Errors
/// [`BuildError`] for the first tenant whose credential cannot be read.
pub fn tenant_clients(
    cfg: &Config,
    input: &dyn ConfigInput,
    metrics: Option<&Arc<Metrics>>,
) -> Result<BTreeMap<Arc<str>, Arc<QlikClient>>, BuildError> {
    let mut clients = BTreeMap::new();
    for t in &cfg.tenants {
        let mut client = tenant_client(t, input)?;
        if let Some(m) = metrics {
            let tenant = cfg.multi_tenant.then(|| t.name.clone());
            client = client.with_observer(Arc::new(
                crate::events::Events::new(m.clone()).for_tenant(tenant),
            ));
        }
        clients.insert(t.name.clone(), Arc::new(client));
    }
    Ok(clients)
}

/// Builds every configured secret source (each source's factory lives in its file in
/// `secrets/`).
pub async fn sources(cfg: &Config) -> HashMap<String, Arc<AnySource>> {
    secrets::build_all(&cfg.sources).await
}

/// Builds the rotator: Qlik client plus sources.
///
/// # Errors
/// [`BuildError`] when a credential cannot be read.
pub async fn rotator(cfg: &Config, input: &dyn ConfigInput) -> Result<Rotator, BuildError> {
    let clients = tenant_clients(cfg, input, None)?;
    secrets::check_all(&cfg.sources).map_err(BuildError::Source)?;
    Ok(Rotator::with_clients(
        clients,
        cfg.multi_tenant,
        sources(cfg).await,
    ))
}
