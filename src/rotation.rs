//! One rotation of one job: fetch the secret → read the connection → build the credential-only
//! patch → PATCH → verify with a follow-up GET. Returns a [`Report`]; never panics on bad input.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use secrecy::{ExposeSecret, SecretString};

use crate::{
    config::{ConnectionRef, JobConfig, Target},
    connectors::{
        self, BuildError, Mismatch, SeparateMode,
        specs::{printable, quoted},
    },
    events::{
        Events, RotationFailed, RotationFinished, RotationRetried, RotationStarted, RunFinished,
        SecretFetched, SpecWarning, VerifyWarning,
    },
    metrics::Metrics,
    qlik::{
        DataConnection, QlikClient, QlikError,
        model::{CredentialUpdate, DataCredential},
    },
    secrets::{
        AnySource, Prefetched, SecretFields, SecretRef, SecretSource, SecretValue, SourceError,
        VersionSelector,
    },
    text::Redactor,
};

/// Where in a rotation something went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reading the secret from the vault.
    Fetch,
    /// Finding and reading the connection (name → id, GET, privileges).
    Resolve,
    /// Building the patch (connector check, secret fields).
    Build,
    /// Sending the PATCH.
    Apply,
    /// The follow-up GET and comparison.
    Verify,
    /// The canary reload of an app that reads through the connection.
    Canary,
}

impl Stage {
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Fetch => "fetch",
            Stage::Resolve => "resolve",
            Stage::Build => "build",
            Stage::Apply => "apply",
            Stage::Verify => "verify",
            Stage::Canary => "canary",
        }
    }
}

/// Why a rotation failed. Messages name jobs, connections, properties and keys, never values.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// The vault could not return the secret.
    #[error(transparent)]
    Fetch(#[from] SourceError),
    /// The connection could not be found or read.
    #[error(transparent)]
    Resolve(QlikError),
    /// The caller may read but not update the connection.
    #[error(
        "connection {0} does not grant the update privilege to this identity; nothing was sent"
    )]
    NoUpdatePrivilege(String),
    /// No patch could be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The PATCH failed.
    #[error(transparent)]
    Apply(QlikError),
    /// The verify GET failed.
    #[error("the PATCH was accepted, but the verify GET failed: {0}")]
    VerifyGet(QlikError),
    /// The verify GET shows something other than what was patched.
    #[error("verification failed: {}", .0.join("; "))]
    Verify(Vec<Mismatch>),
    /// The job's source is not configured (cannot happen with a validated config).
    #[error("source {0:?} is not configured")]
    UnknownSource(String),
    /// The secret could not be read (shared by every connection of a fan-out job).
    #[error("{message}")]
    Fetched {
        /// The source error's message.
        message: String,
        /// Its label.
        error_type: &'static str,
        /// Whether retrying may help.
        retriable: bool,
    },
    /// A GET answered with another connection (or credential) than the one asked for. Before
    /// the PATCH nothing is sent; after it, the rotation is not verified.
    #[error("{message}")]
    WrongConnection {
        /// Resolve (before the PATCH) or verify (after it).
        stage: Stage,
        /// What was asked for and what came back (ids and names, escaped).
        message: String,
    },
    /// The connection as read carries no usable `updated` timestamp, so a PATCH could never be
    /// verified: nothing is sent.
    #[error(
        "{what} {id} shows no valid `updated` timestamp, so a rotation could not be verified; nothing was sent"
    )]
    Unverifiable {
        /// `connection` or `credential`.
        what: &'static str,
        /// Its id (escaped).
        id: String,
    },
    /// A separate-credentials connection has no credential to update.
    #[error(
        "connection {0} uses separate credentials but names no credential (qCredentialsID is empty); set credential = \"<name>\" in the job"
    )]
    NoCredential(String),
    /// The canary reload did not succeed (shared by every connection the run wrote).
    #[error("{message}")]
    Canary {
        /// The [`crate::canary::CanaryError`]'s message (sanitised).
        message: String,
        /// Its label.
        error_type: &'static str,
    },
    /// The secret version failed its canary (or verify) before and was rolled back; it is
    /// not applied again until the vault's version changes.
    #[error(
        "secret version {0} failed verification or its canary reload before and was rolled back; it is not applied again until the vault holds a new version"
    )]
    KnownBad(String),
}

impl RotationError {
    /// The stage the error belongs to.
    pub fn stage(&self) -> Stage {
        match self {
            RotationError::Fetch(_)
            | RotationError::UnknownSource(_)
            | RotationError::Fetched { .. } => Stage::Fetch,
            RotationError::Resolve(_)
            | RotationError::NoUpdatePrivilege(_)
            | RotationError::NoCredential(_)
            | RotationError::Unverifiable { .. } => Stage::Resolve,
            RotationError::WrongConnection { stage, .. } => *stage,
            RotationError::Build(_) => Stage::Build,
            RotationError::Apply(_) => Stage::Apply,
            RotationError::VerifyGet(_) | RotationError::Verify(_) => Stage::Verify,
            RotationError::Canary { .. } | RotationError::KnownBad(_) => Stage::Canary,
        }
    }

    /// A stable, low-cardinality label.
    pub fn error_type(&self) -> &'static str {
        match self {
            RotationError::Fetch(e) => e.error_type(),
            RotationError::UnknownSource(_) => "config",
            RotationError::Fetched { error_type, .. } => error_type,
            RotationError::NoCredential(_) => "no_credential",
            RotationError::WrongConnection { .. } => "wrong_connection",
            RotationError::Unverifiable { .. } => "unverifiable",
            RotationError::Resolve(e) | RotationError::Apply(e) | RotationError::VerifyGet(e) => {
                e.error_type()
            }
            RotationError::NoUpdatePrivilege(_) => "no_update_privilege",
            RotationError::Build(e) => e.error_type(),
            RotationError::Verify(_) => "verify_mismatch",
            RotationError::Canary { error_type, .. } => error_type,
            RotationError::KnownBad(_) => "known_bad_version",
        }
    }

    /// Whether another attempt in the same run may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            RotationError::Fetch(e) => e.is_retriable(),
            RotationError::Fetched { retriable, .. } => *retriable,
            RotationError::Resolve(e) | RotationError::Apply(e) | RotationError::VerifyGet(e) => {
                e.is_retriable()
            }
            _ => false,
        }
    }
}

/// The result of one run of one job.
#[derive(Debug)]
pub enum Outcome {
    /// Patched and verified.
    Rotated,
    /// The secret version was already applied; nothing was sent to Qlik.
    Unchanged,
    /// `plan`: the masked patch that would be sent.
    Planned(serde_json::Value),
    /// Failed before or during the PATCH.
    Failed(RotationError),
    /// The PATCH was accepted but verification found a mismatch.
    VerifyFailed(RotationError),
    /// Patched and verified, but the canary reload did not succeed: Qlik cannot use the
    /// credential.
    CanaryFailed(RotationError),
    /// Verify or the canary failed (`cause`); the last verified version (`restored`) was
    /// applied again, verified and, with a canary, proven by a reload.
    RolledBack {
        /// Why the new version was rolled back.
        cause: RotationError,
        /// The secret version restored.
        restored: String,
    },
}

impl Outcome {
    /// The metrics label (`rotated`, `unchanged`, `planned`, `failed`, `verify_failed`).
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Rotated => "rotated",
            Outcome::Unchanged => "unchanged",
            Outcome::Planned(_) => "planned",
            Outcome::Failed(_) => "failed",
            Outcome::VerifyFailed(_) => "verify_failed",
            Outcome::CanaryFailed(_) => "canary_failed",
            Outcome::RolledBack { .. } => "rolled_back",
        }
    }

    /// Whether the run counts as a success.
    pub fn is_success(&self) -> bool {
        matches!(
            self,
            Outcome::Rotated | Outcome::Unchanged | Outcome::Planned(_)
        )
    }

    /// The error, if the run failed.
    pub fn error(&self) -> Option<&RotationError> {
        match self {
            Outcome::Failed(e) | Outcome::VerifyFailed(e) | Outcome::CanaryFailed(e) => Some(e),
            Outcome::RolledBack { cause, .. } => Some(cause),
            _ => None,
        }
    }
}

/// What one run did for one connection.
#[derive(Debug)]
pub struct Report {
    /// Job name.
    pub job: String,
    /// The connection as configured ([`ConnectionRef::key`]).
    pub connection_key: String,
    /// Whether the job feeds several connections (lines then name the connection).
    pub fanout: bool,
    /// The connection's tenant, when the configuration declares `[tenants.NAME]` tables
    /// (lines, log events and notifications then name it); `None` with `[qlik]`.
    pub tenant: Option<Arc<str>>,
    /// The connection id, once resolved.
    pub connection_id: Option<String>,
    /// The secret version read (not secret).
    pub secret_version: Option<String>,
    /// The result.
    pub outcome: Outcome,
    /// Wall time of the run.
    pub duration: Duration,
    /// The connection as read after a verified rotation (for the next run's comparison).
    pub after: Option<DataConnection>,
    /// What verification established, after a successful rotation.
    pub verified: Option<Verified>,
    /// Doubts that did not block the run: api-specs types we cannot know to be right for a
    /// catalogue connector, and verify rules we cannot source (names and types only).
    pub warnings: Vec<String>,
    /// The canary reload that proved this connection's new credential (when the job has one).
    pub canary: Option<crate::canary::CanaryProof>,
    /// The values this run wrote (to scrub them from the canary's answers); never printed.
    pub written: Option<Redactor>,
}

/// What a successful verification checked (no values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Non-credential properties compared and found unchanged.
    pub unchanged_properties: usize,
    /// Credential properties the GET shows, confirmed to hold the new value (e.g. `username`).
    pub confirmed_credentials: Vec<String>,
    /// `updated` before and after the PATCH.
    pub updated: (Option<String>, Option<String>),
}

impl Report {
    /// `job`, or `job[connection]` for a job feeding several connections; with tenants,
    /// followed by ` (tenant NAME)`.
    pub fn label(&self) -> String {
        let label = if self.fanout {
            format!("{}[{}]", self.job, self.connection_key)
        } else {
            self.job.clone()
        };
        match &self.tenant {
            Some(t) => format!("{label} (tenant {t})"),
            None => label,
        }
    }

    /// Emits this connection's outcome: [`RotationFinished`] or [`RotationFailed`], and hands
    /// it to the webhooks when there are any (`[[notify]]`).
    pub fn emit(&self, events: &Events) {
        if events.notifies() {
            events.notify(self.notification());
        }
        match &self.outcome {
            Outcome::Failed(e)
            | Outcome::VerifyFailed(e)
            | Outcome::CanaryFailed(e)
            | Outcome::RolledBack { cause: e, .. } => events.emit(RotationFailed {
                job: &self.job,
                connection: &self.connection_key,
                outcome: self.outcome.label(),
                stage: e.stage().as_str(),
                error_type: e.error_type(),
                error: &e.to_string(),
            }),
            other => events.emit(RotationFinished {
                job: &self.job,
                connection: self.connection_id.as_deref().unwrap_or(""),
                outcome: other.label(),
                secret_version: self.secret_version.as_deref().unwrap_or(""),
                duration: self.duration,
            }),
        }
    }

    /// The outcome for the webhooks: ids, labels and version ids, no message, no value.
    pub fn notification(&self) -> crate::notify::Notification {
        let error = self.outcome.error();
        crate::notify::Notification {
            job: self.job.clone(),
            connection: self
                .connection_id
                .clone()
                .unwrap_or_else(|| self.connection_key.clone()),
            outcome: self.outcome.label(),
            stage: error.map(|e| e.stage().as_str()),
            error_type: error.map(RotationError::error_type),
            secret_version: self.secret_version.clone(),
            restored_version: match &self.outcome {
                Outcome::RolledBack { restored, .. } => Some(restored.clone()),
                _ => None,
            },
            time: chrono::Utc::now(),
        }
    }

    /// `, 1 warning: …` (empty without warnings).
    pub fn warnings_text(&self) -> String {
        match self.warnings.len() {
            0 => String::new(),
            1 => format!(", 1 warning: {}", self.warnings[0]),
            n => format!(", {n} warnings: {}", self.warnings.join("; ")),
        }
    }

    /// One human line: `sales-s3: rotated (connection …, secret version …)` or
    /// `sales-s3: failed at apply [forbidden]: …`. Control characters from outside (Qlik's
    /// answers, vault versions) are escaped, so the line cannot be split or forged.
    pub fn line(&self) -> String {
        crate::text::escape(&self.unescaped_line()).into_owned()
    }

    fn unescaped_line(&self) -> String {
        let label = self.label();
        let conn = self.connection_id.as_deref().unwrap_or("?");
        let version = self.secret_version.as_deref().unwrap_or("?");
        match &self.outcome {
            Outcome::Rotated => {
                let detail = self
                    .verified
                    .as_ref()
                    .map(|v| {
                        let mut d = format!(
                            "; {} other properties unchanged, updated {} -> {}",
                            v.unchanged_properties,
                            v.updated.0.as_deref().unwrap_or("?"),
                            v.updated.1.as_deref().unwrap_or("?")
                        );
                        if !v.confirmed_credentials.is_empty() {
                            d.push_str(&format!(
                                ", GET shows the new {}",
                                v.confirmed_credentials.join(", ")
                            ));
                        }
                        d
                    })
                    .unwrap_or_default();
                let proven = match &self.canary {
                    Some(p) => format!(
                        ", proven by canary reload {} of app {}",
                        crate::text::printable(&p.reload, 80),
                        crate::text::printable(&p.app, 80)
                    ),
                    None => String::new(),
                };
                format!(
                    "{}: rotated and verified{proven}{} (connection {conn}, secret version {version}{detail})",
                    label,
                    self.warnings_text()
                )
            }
            Outcome::Unchanged => format!(
                "{}: unchanged (secret version {version} already applied; nothing sent)",
                label
            ),
            Outcome::Planned(_) => format!("{}: planned (connection {conn})", self.job),
            Outcome::Failed(e) | Outcome::VerifyFailed(e) | Outcome::CanaryFailed(e) => format!(
                "{}: {} at {} [{}]: {e}{}",
                label,
                self.outcome.label(),
                e.stage().as_str(),
                e.error_type(),
                self.warnings_text()
            ),
            Outcome::RolledBack { cause, restored } => {
                let proven = match &self.canary {
                    Some(p) => format!(
                        ", proven by canary reload {}",
                        crate::text::printable(&p.reload, 80)
                    ),
                    None => String::new(),
                };
                format!(
                    "{}: rolled_back to secret version {restored} (verified{proven}) after version {version} failed at {} [{}]: {cause}",
                    label,
                    cause.stage().as_str(),
                    cause.error_type()
                )
            }
        }
    }
}

/// Per-run options.
#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    /// Build and return the masked patch; send nothing.
    pub plan_only: bool,
    /// Per connection key: the secret version last applied; equal → `Unchanged`.
    pub last_applied: HashMap<String, String>,
    /// Rotate even when the version equals the last applied one.
    pub force: bool,
    /// Per connection key: a fresh-enough copy of the connection (from pre-flight or the
    /// previous verify GET), used instead of a GET before the PATCH.
    pub known: HashMap<String, DataConnection>,
    /// Only these connection keys (a retry of the failed ones); `None` = all.
    pub only: Option<Vec<String>>,
    /// The job's secret, read ahead with the other jobs due at the same time
    /// ([`crate::triggers::prefetch`]); `None` reads it now.
    pub secret: Option<Prefetched>,
    /// Per connection key: a secret version that failed verification or its canary before
    /// (state's `failed_version`); equal to the vault's version → not applied again.
    pub failed_versions: HashMap<String, String>,
}

/// Runs rotations. Shared by the CLI and the daemon.
#[derive(Debug)]
pub struct Rotator {
    /// One client per tenant (its own token cache, budgets and 429 pause).
    clients: BTreeMap<Arc<str>, Arc<QlikClient>>,
    /// Whether the configuration declares `[tenants.NAME]` (reports then name the tenant).
    multi_tenant: bool,
    sources: HashMap<String, Arc<AnySource>>,
    resolved: Mutex<HashMap<String, String>>,
    /// Space names resolved to ids through the spaces API (a job's `space` given by name), so
    /// the identity check compares the answer's space id with the id the name stands for.
    resolved_spaces: Mutex<HashMap<String, String>>,
    api_specs: tokio::sync::Mutex<HashMap<String, Option<serde_json::Value>>>,
    events: Events,
}

impl Rotator {
    /// A rotator over one Qlik client (the `[qlik]` tenant) and the configured sources.
    pub fn new(client: Arc<QlikClient>, sources: HashMap<String, Arc<AnySource>>) -> Self {
        let clients = BTreeMap::from([(Arc::from(crate::config::DEFAULT_TENANT), client)]);
        Self::with_clients(clients, false, sources)
    }

    /// A rotator over one Qlik client per tenant; `multi_tenant` when they come from
    /// `[tenants.NAME]` tables (reports then name the tenant).
    ///
    /// # Panics
    /// When `clients` is empty.
    pub fn with_clients(
        clients: BTreeMap<Arc<str>, Arc<QlikClient>>,
        multi_tenant: bool,
        sources: HashMap<String, Arc<AnySource>>,
    ) -> Self {
        assert!(!clients.is_empty(), "a rotator needs a Qlik client");
        Rotator {
            clients,
            multi_tenant,
            sources,
            resolved: Mutex::new(HashMap::new()),
            resolved_spaces: Mutex::new(HashMap::new()),
            api_specs: tokio::sync::Mutex::new(HashMap::new()),
            events: Events::log_only(),
        }
    }

    /// Counts the events of every run in `metrics` as well as logging them (without, events
    /// only log). Run outcomes are emitted by the caller, once per run after its last attempt,
    /// with [`Rotator::finish_run`].
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.events = Events::new(metrics);
        self
    }

    /// Where this rotator's events go.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Emits the outcome of a finished run of `job` (after its last attempt): one
    /// [`RotationFinished`] or [`RotationFailed`] per connection, then one [`RunFinished`]
    /// (duration and timestamps; not for `plan`, which sends nothing).
    pub fn finish_run<'a>(&self, job: &JobConfig, reports: impl IntoIterator<Item = &'a Report>) {
        let reports: Vec<&Report> = reports.into_iter().collect();
        for r in &reports {
            r.emit(&self.events);
        }
        let ran: Vec<&&Report> = reports
            .iter()
            .filter(|r| !matches!(r.outcome, Outcome::Planned(_)))
            .collect();
        if ran.is_empty() {
            return;
        }
        self.events.emit(RunFinished {
            job: &job.name,
            connector: job.connector(),
            duration: ran.iter().map(|r| r.duration).max().unwrap_or_default(),
            connections: ran.len(),
            success: ran.iter().all(|r| r.outcome.is_success()),
        });
    }

    /// Emits [`RotationRetried`] for a failed `report` that its run tries again after `delay`.
    pub fn retrying(&self, report: &Report, attempt: u32, delay: Duration) {
        if let Some(e) = report.outcome.error() {
            self.events.emit(RotationRetried {
                job: &report.job,
                connection: &report.connection_key,
                attempt,
                stage: e.stage().as_str(),
                error_type: e.error_type(),
                error: &e.to_string(),
                delay,
            });
        }
    }

    /// The secret source configured as `name`.
    pub fn source(&self, name: &str) -> Option<&Arc<AnySource>> {
        self.sources.get(name)
    }

    /// The Qlik client of the first tenant (the only one with `[qlik]`).
    pub fn client(&self) -> &Arc<QlikClient> {
        self.clients
            .values()
            .next()
            .expect("a rotator has a client")
    }

    /// The Qlik client of `tenant`. A rotator over a single client serves every tenant with
    /// it (tests, the demo).
    ///
    /// # Panics
    /// When several clients were built and none is `tenant`'s: a validated configuration
    /// names only tenants it declares, and the build phase builds each of them.
    pub fn client_for(&self, tenant: &str) -> &Arc<QlikClient> {
        match self.clients.get(tenant) {
            Some(c) => c,
            None if self.clients.len() == 1 => self.client(),
            None => panic!("no Qlik client for tenant {tenant:?}"),
        }
    }

    /// Every tenant's client, by tenant name.
    pub fn clients(&self) -> &BTreeMap<Arc<str>, Arc<QlikClient>> {
        &self.clients
    }

    /// Whether the configuration declares `[tenants.NAME]` tables.
    pub fn multi_tenant(&self) -> bool {
        self.multi_tenant
    }

    /// Finds and reads one of the job's connections. A name is resolved once to the id,
    /// which is used from then on.
    ///
    /// # Errors
    /// [`QlikError`] from the lookup or GET.
    pub async fn read_connection(
        &self,
        job: &JobConfig,
        conn: &Target,
    ) -> Result<DataConnection, QlikError> {
        let client = self.client_for(&conn.tenant);
        match &conn.conn {
            ConnectionRef::Id(id) => client.get_connection(id).await,
            ConnectionRef::Name { name, space } => {
                let cache_key = format!("{}\u{0}{}", job.name, conn.key());
                let cached = self
                    .resolved
                    .lock()
                    .expect("resolved lock")
                    .get(&cache_key)
                    .cloned();
                if let Some(id) = cached {
                    return client.get_connection(&id).await;
                }
                let found = match (client.find_connection(name, space.as_deref()).await, space) {
                    (Err(QlikError::NameNotFound { .. }), Some(wanted)) => {
                        // Not found in a space of that id: `space` may be a space *name*.
                        // Resolved through the spaces API, once (the id found is cached).
                        let id = self.space_id(&conn.tenant, name, wanted).await?;
                        client.find_connection(name, Some(&id)).await?
                    }
                    (
                        Err(QlikError::NameAmbiguous {
                            name: n,
                            status,
                            problem,
                            ..
                        }),
                        None,
                    ) => {
                        return Err(QlikError::NameAmbiguous {
                            candidates: self.candidate_spaces(&conn.tenant, &n).await,
                            name: n,
                            status,
                            problem,
                        });
                    }
                    (other, _) => other?,
                };
                self.resolved
                    .lock()
                    .expect("resolved lock")
                    .insert(cache_key, found.id.clone());
                Ok(found)
            }
        }
    }

    /// The spaces holding a connection named `name` (for an ambiguous name), each
    /// `"space name" (id "…")`, escaped, at most [`crate::qlik::error::MAX_CANDIDATES`] plus
    /// "and N more". Best effort: empty when the listing fails (the error stays ambiguous).
    async fn candidate_spaces(&self, tenant: &str, name: &str) -> Vec<String> {
        let client = self.client_for(tenant);
        use crate::{qlik::error::MAX_CANDIDATES, qlik::listing, text::quoted};
        let limits = listing::Limits::default();
        let Ok(conns) = listing::all_connections(client, None, limits).await else {
            return Vec::new();
        };
        let mut ids: Vec<Option<String>> = (conns.into_iter())
            .filter(|c| c.name == name)
            .map(|c| c.space)
            .collect();
        ids.sort();
        ids.dedup();
        let spaces = listing::all_spaces(client, limits)
            .await
            .unwrap_or_default();
        let mut out: Vec<String> = (ids.iter().take(MAX_CANDIDATES))
            .map(|id| match id {
                None => "(a personal space)".to_owned(),
                Some(id) => match spaces.iter().find(|s| &s.id == id) {
                    Some(s) if !s.name.is_empty() => {
                        format!("{} (id {})", quoted(&s.name, 120), quoted(id, 120))
                    }
                    _ => format!("id {}", quoted(id, 120)),
                },
            })
            .collect();
        if ids.len() > MAX_CANDIDATES {
            out.push(format!("and {} more", ids.len() - MAX_CANDIDATES));
        }
        out
    }

    /// The id of the space a job names by `wanted` (an id or a name), for a lookup of the
    /// connection `name` that found nothing in a space of id `wanted`. An unknown or ambiguous
    /// space is [`QlikError::Space`]; when `wanted` is a space id, the lookup's
    /// [`QlikError::NameNotFound`] stands.
    async fn space_id(&self, tenant: &str, name: &str, wanted: &str) -> Result<String, QlikError> {
        use crate::qlik::listing::{self, DiscoverError};
        let not_found = || QlikError::NameNotFound {
            name: name.to_owned(),
            space: Some(wanted.to_owned()),
        };
        let client = self.client_for(tenant);
        let spaces = match listing::all_spaces(client, listing::Limits::default()).await {
            Ok(s) => s,
            Err(DiscoverError::Qlik(e)) => return Err(e),
            Err(e) => {
                return Err(QlikError::Decode {
                    method: "GET",
                    endpoint: "/api/v1/spaces",
                    message: e.to_string(),
                });
            }
        };
        match listing::resolve_space(&spaces, wanted) {
            Ok(id) if id == wanted => Err(not_found()),
            Ok(id) => {
                self.resolved_spaces
                    .lock()
                    .expect("resolved spaces lock")
                    .insert(format!("{tenant}\u{0}{wanted}"), id.clone());
                Ok(id)
            }
            Err(e @ DiscoverError::AmbiguousSpace { .. }) => Err(QlikError::Space {
                message: format!("{e} (job connection {})", crate::text::quoted(name, 120)),
                ambiguous: true,
            }),
            Err(e) => Err(QlikError::Space {
                message: format!("{} not found: {e}", crate::text::quoted(name, 120)),
                ambiguous: false,
            }),
        }
    }

    /// The connector's api-specs in `tenant`, fetched once per tenant and `datasourceID` and
    /// cached (`None` when the tenant has none).
    ///
    /// # Errors
    /// [`QlikError`] when they cannot be read (not cached, so a later run tries again).
    pub async fn api_specs(
        &self,
        tenant: &str,
        datasource: &str,
    ) -> Result<Option<serde_json::Value>, QlikError> {
        let key = format!("{tenant}\u{0}{datasource}");
        let mut cache = self.api_specs.lock().await;
        if let Some(v) = cache.get(&key) {
            return Ok(v.clone());
        }
        let v = self.client_for(tenant).get_api_specs(datasource).await?;
        cache.insert(key, v.clone());
        Ok(v)
    }

    /// Checks what the job writes against its connector's api-specs. Generic jobs require
    /// api-specs; catalogue jobs are checked when the tenant has them. Returns the warnings
    /// (each logged and counted in `spec_warnings_total`).
    ///
    /// # Errors
    /// [`RotationError`] naming every mismatch; nothing is sent.
    pub async fn check_specs(
        &self,
        job: &JobConfig,
        tenant: &str,
    ) -> Result<Vec<String>, RotationError> {
        let specs = self
            .api_specs(tenant, &job.spec.datasource)
            .await
            .map_err(RotationError::Resolve)?;
        let warnings = match specs {
            Some(specs) => connectors::check_against_api_specs(&job.spec, &specs)?,
            None if job.spec.is_generic() => {
                return Err(RotationError::Build(BuildError::SpecMismatch(vec![
                    format!(
                        "the tenant has no api-specs for {:?}, which a generic job needs to check its properties",
                        job.spec.datasource
                    ),
                ])));
            }
            None => Vec::new(),
        };
        for w in &warnings {
            self.events.emit(SpecWarning {
                job: &job.name,
                connector_type: &job.spec.datasource,
                warning: w,
            });
        }
        Ok(warnings)
    }

    fn verify_warning(&self, job: &JobConfig, rule: &'static str, message: &str) {
        self.events.emit(VerifyWarning {
            job: &job.name,
            rule,
            warning: message,
        });
    }

    /// Forgets a name → id resolution (after a GET by that id answered with another name).
    fn forget_resolved(&self, job: &JobConfig, conn: &Target) {
        let cache_key = format!("{}\u{0}{}", job.name, conn.key());
        self.resolved
            .lock()
            .expect("resolved lock")
            .remove(&cache_key);
    }

    /// Runs one job once: reads the secret once, then rotates each connection it feeds.
    /// Returns one report per connection; the caller emits the outcomes with
    /// [`Rotator::finish_run`] once the run (with its retries) is over.
    pub async fn run(&self, job: &JobConfig, mut opts: RunOptions) -> Vec<Report> {
        let started = Instant::now();
        let fanout = job.connections.len() > 1;
        let selected: Vec<&Target> = job
            .connections
            .iter()
            .filter(|c| opts.only.as_ref().is_none_or(|o| o.contains(&c.key())))
            .collect();
        let in_flight = self.events.emit(RotationStarted {
            job: &job.name,
            connections: selected.len(),
        });

        // 1. The secret, once: an unchanged version costs no Qlik call at all. A value read
        // ahead for this run (with the other jobs due at the same time) is used as is.
        let held = self.fetch_once(job, opts.secret.take()).await;
        let mut reports = match held.as_ref().map(|h| secret_of(h)) {
            Err(e) => failed_reports(job, &selected, fanout, self.multi_tenant, e),
            Ok(Err(e)) => failed_reports(job, &selected, fanout, self.multi_tenant, &e),
            Ok(Ok(secret)) => {
                self.rotate_selected(job, &selected, fanout, secret, &mut opts)
                    .await
            }
        };
        drop(in_flight);
        let elapsed = started.elapsed();
        for r in &mut reports {
            r.duration = elapsed;
        }
        reports
    }

    /// The job's secret, read once (or the value read ahead for this run), and the
    /// `SecretFetched` event. An error only when the job's source is not configured.
    async fn fetch_once(
        &self,
        job: &JobConfig,
        prefetched: Option<Prefetched>,
    ) -> Result<Prefetched, RotationError> {
        let Some(source) = self.sources.get(&job.source) else {
            return Err(RotationError::UnknownSource(job.source.clone()));
        };
        let held = match prefetched {
            Some(prefetched) => prefetched,
            None => Arc::new(source.fetch(&job.secret).await),
        };
        self.events.emit(SecretFetched {
            job: &job.name,
            source: source.kind(),
            error_type: held.as_ref().as_ref().err().map(SourceError::error_type),
            created: held.as_ref().as_ref().ok().and_then(|v| v.created),
        });
        Ok(held)
    }

    /// Rotates each selected connection to `secret` (unless unchanged or known bad), then
    /// proves the rotated ones by the canary and rolls back the failed ones.
    async fn rotate_selected(
        &self,
        job: &JobConfig,
        selected: &[&Target],
        fanout: bool,
        secret: &SecretValue,
        opts: &mut RunOptions,
    ) -> Vec<Report> {
        let mut reports = Vec::new();
        for conn in selected {
            let mut r = fresh_report(job, conn, fanout, self.multi_tenant);
            r.secret_version = Some(secret.version.clone());
            let key = conn.key();
            let unchanged = opts.last_applied.get(&key) == Some(&secret.version);
            let known_bad = opts.failed_versions.get(&key) == Some(&secret.version);
            r.outcome = if unchanged && !(opts.plan_only || opts.force || job.force) {
                Outcome::Unchanged
            } else if known_bad && !(opts.plan_only || opts.force) {
                Outcome::Failed(RotationError::KnownBad(crate::text::printable(
                    &secret.version,
                    80,
                )))
            } else {
                let known = opts.known.remove(&key);
                self.rotate_connection(job, conn, secret, known, opts.plan_only, &mut r)
                    .await
            };
            reports.push(r);
        }
        if !opts.plan_only {
            self.prove(job, &mut reports).await;
            self.roll_back(job, selected, &secret.version, opts, &mut reports)
                .await;
        }
        reports
    }

    /// The canary: one reload of the job's `canary_app` for every connection this run
    /// rotated (a fan-out job's connections share it). `rotated` stays only when the reload
    /// succeeded; otherwise each of them becomes `canary_failed`.
    async fn prove(&self, job: &JobConfig, reports: &mut [Report]) {
        let Some(app) = &job.canary_app else { return };
        let rotated: Vec<usize> = (reports.iter().enumerate())
            .filter(|(_, r)| matches!(r.outcome, Outcome::Rotated))
            .map(|(i, _)| i)
            .collect();
        if rotated.is_empty() {
            return;
        }
        let mut written = Redactor::new();
        for &i in &rotated {
            if let Some(w) = &reports[i].written {
                written = written.merged(w);
            }
        }
        let client = self.client_for(&job.tenant);
        match crate::canary::run(client, app, job.canary_timeout, &written).await {
            Ok(proof) => {
                for &i in &rotated {
                    reports[i].canary = Some(proof.clone());
                }
            }
            Err(e) => {
                let (message, error_type) = (e.to_string(), e.error_type());
                for &i in &rotated {
                    reports[i].outcome = Outcome::CanaryFailed(RotationError::Canary {
                        message: message.clone(),
                        error_type,
                    });
                }
            }
        }
    }

    /// Rollback (`rollback = true`): each connection whose verify or canary failed gets the
    /// last verified version again (from state, fetched from the vault by version id; for
    /// Secrets Manager also `AWSPREVIOUS` when it is that version), verified and proven by the
    /// canary. Never a version other than the last verified one; none recorded → no rollback.
    async fn roll_back(
        &self,
        job: &JobConfig,
        selected: &[&Target],
        failed_version: &str,
        opts: &RunOptions,
        reports: &mut [Report],
    ) {
        if !job.rollback {
            return;
        }
        let mut agains: Vec<Report> = Vec::new();
        let mut meta = Vec::new();
        for (i, r) in reports.iter_mut().enumerate() {
            if let Some((again, last)) = self
                .roll_back_one(job, selected, failed_version, opts, r)
                .await
            {
                agains.push(again);
                meta.push((i, last));
            }
        }
        if agains.is_empty() {
            return;
        }
        self.prove(job, &mut agains).await;
        for (again, (i, last)) in agains.into_iter().zip(meta) {
            settle_rollback(&mut reports[i], again, &last);
        }
    }

    /// Rolls `r`'s connection back when its verify or canary failed and a verified version
    /// other than `failed_version` is recorded: returns the new attempt's report (not yet
    /// proven) and the version it restored. Anything that prevents it is a warning on `r`.
    async fn roll_back_one(
        &self,
        job: &JobConfig,
        selected: &[&Target],
        failed_version: &str,
        opts: &RunOptions,
        r: &mut Report,
    ) -> Option<(Report, String)> {
        if !matches!(
            r.outcome,
            Outcome::VerifyFailed(_) | Outcome::CanaryFailed(_)
        ) {
            return None;
        }
        let last = opts
            .last_applied
            .get(&r.connection_key)
            .filter(|v| !v.is_empty());
        let Some(last) = last else {
            r.warnings.push(
                "rollback = true, but no verified version is recorded for this connection: nothing to roll back to".to_owned(),
            );
            return None;
        };
        if last == failed_version {
            r.warnings.push(format!(
                "rollback = true, but the failed version {} is the last verified one: never rolling back past it",
                crate::text::printable(last, 80)
            ));
            return None;
        }
        let conn = selected.iter().find(|c| c.key() == r.connection_key)?;
        let old = match self.fetch_version(job, last).await {
            Ok(v) => v,
            Err(message) => {
                r.warnings.push(format!(
                    "rollback to secret version {} failed: {message}",
                    crate::text::printable(last, 80)
                ));
                return None;
            }
        };
        let mut again = fresh_report(job, conn, r.fanout, self.multi_tenant);
        again.secret_version = Some(old.version.clone());
        again.outcome = self
            .rotate_connection(job, conn, &old, None, false, &mut again)
            .await;
        Some((again, last.clone()))
    }

    /// The job's secret at exactly `version` (by version id; for Secrets Manager, also the
    /// `AWSPREVIOUS` stage when it holds that version). Errors are messages without values.
    async fn fetch_version(&self, job: &JobConfig, version: &str) -> Result<SecretValue, String> {
        let source = self
            .sources
            .get(&job.source)
            .ok_or_else(|| format!("source {:?} is not configured", job.source))?;
        let by_id = SecretRef {
            id: job.secret.id.clone(),
            version: VersionSelector::Id(version.to_owned()),
        };
        let first = match source.fetch(&by_id).await {
            Ok(v) => Ok(v),
            Err(e) if source.kind() == "aws_secrets_manager" => {
                let previous = SecretRef {
                    id: job.secret.id.clone(),
                    version: VersionSelector::Stage("AWSPREVIOUS".to_owned()),
                };
                source.fetch(&previous).await.map_err(|_| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        }?;
        if first.version != version {
            return Err(format!(
                "the vault answered version {} instead",
                crate::text::printable(&first.version, 80)
            ));
        }
        Ok(first)
    }

    async fn rotate_connection(
        &self,
        job: &JobConfig,
        conn: &Target,
        secret: &SecretValue,
        known: Option<DataConnection>,
        plan_only: bool,
        report: &mut Report,
    ) -> Outcome {
        // 2. The connection as it is now, and proof that it is the one asked for.
        let before = match self.resolve_connection(job, conn, known).await {
            Ok(c) => c,
            Err(e) => return Outcome::Failed(e),
        };
        report.connection_id = Some(before.id.clone());
        let client = self.client_for(&conn.tenant);
        if before.separate_credentials && job.spec.separate == Some(SeparateMode::DataCredentials) {
            return self
                .rotate_data_credential(client, job, &before, secret, plan_only, report)
                .await;
        }

        // 3. The credential-only patch (pure), checked against the connector's api-specs.
        let plan = match connectors::build(&before, &job.spec, secret) {
            Ok(p) => p,
            Err(e) => {
                // A missing field lists the key names the secret has (names only).
                let keys = secret
                    .fields()
                    .map(|f| f.keys().map(str::to_owned).collect::<Vec<_>>());
                let e = match keys {
                    Ok(keys) => e.with_key_names(keys.iter().map(String::as_str)),
                    Err(_) => e,
                };
                return Outcome::Failed(e.into());
            }
        };
        match self.check_specs(job, &conn.tenant).await {
            Ok(warnings) => report.warnings.extend(warnings),
            Err(e) => return Outcome::Failed(e),
        }
        if plan_only {
            return Outcome::Planned(plan.doc.masked());
        }
        if let Err(e) = check_writable(&before) {
            return Outcome::Failed(e);
        }

        // 4. Apply.
        if let Err(e) = client.patch_connection(&before.id, &plan.doc).await {
            return Outcome::Failed(RotationError::Apply(e));
        }
        // The values just written stay in play for the verify GET's error text.
        let written = plan.doc.redactor();
        drop(plan.doc);
        report.written = Some(written.clone());

        // 5. Verify: the same connection, `updated` advanced, nothing else changed.
        self.verify_connection(client, job, &before, &plan.expect, &written, report)
            .await
    }

    /// Step 2 of [`Self::rotate_connection`]: the connection as it is now (`known` when the
    /// caller already read it), proven to be the one asked for.
    async fn resolve_connection(
        &self,
        job: &JobConfig,
        conn: &Target,
        known: Option<DataConnection>,
    ) -> Result<DataConnection, RotationError> {
        let before = match known {
            Some(c) => c,
            None => self
                .read_connection(job, conn)
                .await
                .map_err(RotationError::Resolve)?,
        };
        // A space given by name is checked as the id it was resolved to.
        let resolved_space = match &conn.conn {
            ConnectionRef::Name {
                name,
                space: Some(space),
            } => (self.resolved_spaces.lock().expect("resolved spaces lock"))
                .get(&format!("{}\u{0}{space}", conn.tenant))
                .map(|id| ConnectionRef::Name {
                    name: name.clone(),
                    space: Some(id.clone()),
                }),
            _ => None,
        };
        if let Err(message) = check_identity(resolved_space.as_ref().unwrap_or(conn), &before) {
            self.forget_resolved(job, conn);
            return Err(RotationError::WrongConnection {
                stage: Stage::Resolve,
                message,
            });
        }
        Ok(before)
    }

    /// Step 5 of [`Self::rotate_connection`]: the verify GET (redacting what was `written`)
    /// shows the same connection, `updated` advanced and nothing else changed.
    async fn verify_connection(
        &self,
        client: &QlikClient,
        job: &JobConfig,
        before: &DataConnection,
        expect: &connectors::Expectation,
        written: &Redactor,
        report: &mut Report,
    ) -> Outcome {
        let after = match client.get_connection_redacting(&before.id, written).await {
            Ok(c) => c,
            Err(e) => return Outcome::VerifyFailed(RotationError::VerifyGet(e)),
        };
        if let Err(failed) = verify_same_id(
            "connection",
            &before.id,
            &after.id,
            after.id_field.as_deref(),
        ) {
            return failed;
        }
        let verification = connectors::verify(before, &after, expect);
        if !verification.failures.is_empty() {
            return Outcome::VerifyFailed(RotationError::Verify(verification.failures));
        }
        for (rule, message) in &verification.warnings {
            self.verify_warning(job, rule, message);
            report.warnings.push(message.clone());
        }
        report.verified = Some(verified_connection(before, &after, expect));
        report.after = Some(after);
        Outcome::Rotated
    }

    /// Separate credentials through `PUT /api/v1/data-credentials/{id}`, verified with the
    /// data-credentials GET: the same credential, metadata unchanged, `updated` advanced.
    async fn rotate_data_credential(
        &self,
        client: &QlikClient,
        job: &JobConfig,
        conn: &DataConnection,
        secret: &SecretValue,
        plan_only: bool,
        report: &mut Report,
    ) -> Outcome {
        let (username, password) = match credential_login(job, secret) {
            Ok(login) => login,
            Err(e) => return Outcome::Failed(e),
        };
        let before = match self.resolve_credential(client, job, conn).await {
            Ok(c) => c,
            Err(e) => return Outcome::Failed(e),
        };
        let update = CredentialUpdate {
            id: before.id.clone(),
            name: before.name.clone(),
            q_type: before.q_type.clone(),
            datasource_id: before.datasource_id.clone(),
            username,
            password,
        };
        if plan_only {
            return Outcome::Planned(serde_json::json!({
                "PUT": format!("/api/v1/data-credentials/{}", before.id),
                "body": update.masked()
            }));
        }
        if connectors::parse_time(&before.updated).is_none() {
            return Outcome::Failed(RotationError::Unverifiable {
                what: "credential",
                id: printable(&before.id, 80),
            });
        }
        if let Err(e) = client.put_credential(&update).await {
            return Outcome::Failed(RotationError::Apply(e));
        }
        let written = update.redactor();
        drop(update);
        report.written = Some(written.clone());
        self.verify_credential(client, &before, &written, report)
            .await
    }

    /// The data credential to rotate: by the job's credential name, else by the connection's
    /// `credentialsId`; proven to be the one asked for.
    async fn resolve_credential(
        &self,
        client: &QlikClient,
        job: &JobConfig,
        conn: &DataConnection,
    ) -> Result<DataCredential, RotationError> {
        let (lookup, by_name) = match (&job.spec.credential, &conn.credentials_id) {
            (Some(name), _) => (name.clone(), true),
            (None, Some(id)) if !id.is_empty() => (id.clone(), false),
            _ => {
                return Err(RotationError::NoCredential(conn.id.clone()));
            }
        };
        let before = client
            .get_credential(&lookup, by_name)
            .await
            .map_err(RotationError::Resolve)?;
        let asked = if by_name {
            same_name("credential", &lookup, &before.name, None, None)
                .and_then(|()| check_id_field("credential", &before.id, before.id_field.as_deref()))
        } else {
            same_id(
                "credential",
                &lookup,
                &before.id,
                before.id_field.as_deref(),
            )
        };
        if let Err(message) = asked {
            return Err(RotationError::WrongConnection {
                stage: Stage::Resolve,
                message,
            });
        }
        Ok(before)
    }

    /// The verify GET of a data credential after its PUT (redacting what was `written`): the
    /// same credential, name, type and data source unchanged, `updated` advanced.
    async fn verify_credential(
        &self,
        client: &QlikClient,
        before: &DataCredential,
        written: &Redactor,
        report: &mut Report,
    ) -> Outcome {
        let after = match client
            .get_credential_redacting(&before.id, false, written)
            .await
        {
            Ok(c) => c,
            Err(e) => return Outcome::VerifyFailed(RotationError::VerifyGet(e)),
        };
        if let Err(failed) = verify_same_id(
            "credential",
            &before.id,
            &after.id,
            after.id_field.as_deref(),
        ) {
            return failed;
        }
        let mut mismatches = Vec::new();
        if after.name != before.name {
            mismatches.push("credential qName changed".to_owned());
        }
        if after.q_type != before.q_type || after.datasource_id != before.datasource_id {
            mismatches.push("credential qType/datasourceID changed".to_owned());
        }
        if let Some(m) = connectors::updated_rule(&before.updated, &after.updated, "credential ") {
            mismatches.push(m);
        }
        if mismatches.is_empty() {
            report.verified = Some(Verified {
                unchanged_properties: 0,
                confirmed_credentials: Vec::new(),
                updated: (before.updated.clone(), after.updated.clone()),
            });
            Outcome::Rotated
        } else {
            Outcome::VerifyFailed(RotationError::Verify(mismatches))
        }
    }
}

/// The value of a fetched secret, or the fetch error as the run reports it.
fn secret_of(held: &Prefetched) -> Result<&SecretValue, RotationError> {
    match &**held {
        Ok(value) => Ok(value),
        Err(e) => Err(RotationError::Fetched {
            message: e.to_string(),
            error_type: e.error_type(),
            retriable: e.is_retriable(),
        }),
    }
}

/// One `failed` report per selected connection when the secret could not be read.
fn failed_reports(
    job: &JobConfig,
    selected: &[&Target],
    fanout: bool,
    multi_tenant: bool,
    e: &RotationError,
) -> Vec<Report> {
    let msg = e.to_string();
    let (error_type, retriable) = (e.error_type(), e.is_retriable());
    selected
        .iter()
        .map(|conn| {
            let mut r = fresh_report(job, conn, fanout, multi_tenant);
            r.outcome = Outcome::Failed(RotationError::Fetched {
                message: msg.clone(),
                error_type,
                retriable,
            });
            r
        })
        .collect()
}

/// The end of a rollback of `r` to version `last`: `rolled_back` when the attempt `again`
/// was rotated (and proven), otherwise a warning saying why it failed.
fn settle_rollback(r: &mut Report, again: Report, last: &str) {
    if matches!(again.outcome, Outcome::Rotated) {
        let cause = match std::mem::replace(&mut r.outcome, Outcome::Unchanged) {
            Outcome::VerifyFailed(e) | Outcome::CanaryFailed(e) => e,
            other => {
                r.outcome = other;
                return;
            }
        };
        r.outcome = Outcome::RolledBack {
            cause,
            restored: crate::text::printable(last, 80),
        };
        r.canary = again.canary;
        r.after = again.after;
        r.verified = again.verified;
    } else {
        r.warnings.push(format!(
            "rollback to secret version {} failed: {}",
            crate::text::printable(last, 80),
            again
                .outcome
                .error()
                .map_or_else(|| again.outcome.label().to_owned(), ToString::to_string)
        ));
    }
}

/// An empty report for one connection of `job`.
fn fresh_report(job: &JobConfig, conn: &Target, fanout: bool, multi_tenant: bool) -> Report {
    Report {
        job: job.name.clone(),
        connection_key: conn.key(),
        fanout,
        tenant: multi_tenant.then(|| conn.tenant.clone()),
        connection_id: match &conn.conn {
            ConnectionRef::Id(id) => Some(id.clone()),
            ConnectionRef::Name { .. } => None,
        },
        secret_version: None,
        outcome: Outcome::Unchanged,
        duration: Duration::ZERO,
        after: None,
        verified: None,
        warnings: Vec::new(),
        canary: None,
        written: None,
    }
}

/// Before a PATCH: the `update` privilege (when the GET lists privileges) and a baseline
/// `updated`; without one, a 204 that applied nothing could not be told apart.
fn check_writable(before: &DataConnection) -> Result<(), RotationError> {
    if !before.privileges.is_empty() && !before.has_privilege("update") {
        return Err(RotationError::NoUpdatePrivilege(before.id.clone()));
    }
    if connectors::parse_time(&before.updated).is_none() {
        return Err(RotationError::Unverifiable {
            what: "connection",
            id: printable(&before.id, 80),
        });
    }
    Ok(())
}

/// What a verified connection rotation proved: the properties left alone, the credentials the
/// GET confirmed, and `updated` before and after.
fn verified_connection(
    before: &DataConnection,
    after: &DataConnection,
    expect: &connectors::Expectation,
) -> Verified {
    Verified {
        unchanged_properties: before
            .properties
            .keys()
            .filter(|k| !expect.written.contains(k))
            .count(),
        confirmed_credentials: expect
            .written
            .iter()
            .filter(|w| expect.digests.contains_key(*w) || expect.file_names.contains_key(*w))
            .filter(|w| after.properties.contains_key(*w))
            .cloned()
            .collect(),
        updated: (before.updated.clone(), after.updated.clone()),
    }
}

/// The username and password of a data credential, from the secret fields the job maps them
/// to (the property name itself when unmapped), in that order.
fn credential_login(
    job: &JobConfig,
    secret: &SecretValue,
) -> Result<(SecretString, SecretString), RotationError> {
    let fields = secret.fields().map_err(BuildError::NotFields)?;
    match (
        credential_field(job, &fields, "username"),
        credential_field(job, &fields, "password"),
    ) {
        (Ok(u), Ok(p)) => Ok((u, p)),
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

/// One non-empty string field of a data credential's secret, for property `prop`.
fn credential_field(
    job: &JobConfig,
    fields: &SecretFields,
    prop: &str,
) -> Result<SecretString, RotationError> {
    let key = job
        .spec
        .props
        .iter()
        .find(|p| p.name == prop)
        .map_or(prop, |p| p.key.as_str());
    match fields.text(key) {
        Ok(Some(v)) if !v.expose_secret().is_empty() => Ok(v.clone()),
        Ok(Some(_)) => Err(BuildError::EmptyField {
            property: prop.to_owned(),
            key: key.to_owned(),
        }
        .into()),
        Ok(None) => Err(BuildError::MissingField {
            property: prop.to_owned(),
            key: key.to_owned(),
        }
        .with_key_names(fields.keys())
        .into()),
        Err(found) => Err(BuildError::WrongJsonType {
            property: prop.to_owned(),
            key: key.to_owned(),
            found,
            want: "a JSON string",
        }
        .into()),
    }
}

/// Proves that a connection read for `asked` is that connection: by id, the returned `qID`
/// (and `id`, when present) is the id asked for; by name, the returned `qName` is the name
/// (and `space` the space, when one was given). Messages escape what came from outside.
///
/// # Errors
/// The message for [`RotationError::WrongConnection`].
pub fn check_identity(asked: &ConnectionRef, got: &DataConnection) -> Result<(), String> {
    match asked {
        ConnectionRef::Id(id) => same_id("connection", id, &got.id, got.id_field.as_deref()),
        ConnectionRef::Name { name, space } => {
            same_name(
                "connection",
                name,
                &got.name,
                space.as_deref(),
                Some(got.space.as_deref().unwrap_or("")),
            )?;
            check_id_field("connection", &got.id, got.id_field.as_deref())
        }
    }
}

/// Ids are UUIDs, compared without regard to ASCII case.
/// [`same_id`] on the verify GET: a mismatch is a `verify_failed` outcome.
fn verify_same_id(
    what: &str,
    asked: &str,
    got: &str,
    id_field: Option<&str>,
) -> Result<(), Outcome> {
    same_id(what, asked, got, id_field).map_err(|message| {
        Outcome::VerifyFailed(RotationError::WrongConnection {
            stage: Stage::Verify,
            message,
        })
    })
}

fn same_id(what: &str, asked: &str, got: &str, id_field: Option<&str>) -> Result<(), String> {
    if got.is_empty() || !got.eq_ignore_ascii_case(asked) {
        return Err(format!(
            "asked for {what} {} but the GET answered with {what} {}; nothing is trusted from that answer",
            printable(asked, 80),
            quoted(got, 80)
        ));
    }
    check_id_field(what, got, id_field)
}

/// The undocumented `id` field (shown in Qlik's examples) must agree with `qID` when present.
fn check_id_field(what: &str, q_id: &str, id_field: Option<&str>) -> Result<(), String> {
    match id_field {
        Some(id) if !id.eq_ignore_ascii_case(q_id) => Err(format!(
            "the GET answered with {what} qID {} but id {}; nothing is trusted from that answer",
            printable(q_id, 80),
            quoted(id, 80)
        )),
        _ => Ok(()),
    }
}

fn same_name(
    what: &str,
    asked: &str,
    got: &str,
    space: Option<&str>,
    got_space: Option<&str>,
) -> Result<(), String> {
    if got != asked {
        return Err(format!(
            "asked for the {what} named {} but the GET answered with one named {}; nothing is trusted from that answer",
            quoted(asked, 120),
            quoted(got, 120)
        ));
    }
    if let Some(space) = space
        && got_space != Some(space)
    {
        return Err(format!(
            "asked for the {what} named {} in space {} but the GET answered with one in space {}; nothing is trusted from that answer",
            quoted(asked, 120),
            printable(space, 80),
            quoted(got_space.unwrap_or(""), 80)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Stage;

    /// `rotation_retries_total{stage}` is pre-created for every stage label, so a new stage
    /// must be added there too.
    #[test]
    fn every_stage_label_is_pre_created_in_the_metrics() {
        let all = [
            Stage::Fetch,
            Stage::Resolve,
            Stage::Build,
            Stage::Apply,
            Stage::Verify,
            Stage::Canary,
        ];
        // A new variant fails to compile here until it is listed above.
        for s in all {
            match s {
                Stage::Fetch
                | Stage::Resolve
                | Stage::Build
                | Stage::Apply
                | Stage::Verify
                | Stage::Canary => {}
            }
        }
        let labels: Vec<&str> = all.iter().map(|s| s.as_str()).collect();
        assert_eq!(labels, crate::metrics::STAGES);
    }
}
