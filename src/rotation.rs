//! One rotation of one job: fetch the secret → read the connection → build the credential-only
//! patch → PATCH → verify with a follow-up GET. Returns a [`Report`]; never panics on bad input.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{
    config::{ConnectionRef, JobConfig},
    connectors::{self, BuildError, BuildSpec, Mismatch},
    metrics::Metrics,
    qlik::{DataConnection, QlikClient, QlikError},
    secrets::{AnySource, SecretSource, SourceError},
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
}

impl RotationError {
    /// The stage the error belongs to.
    pub fn stage(&self) -> Stage {
        match self {
            RotationError::Fetch(_) | RotationError::UnknownSource(_) => Stage::Fetch,
            RotationError::Resolve(_) | RotationError::NoUpdatePrivilege(_) => Stage::Resolve,
            RotationError::Build(_) => Stage::Build,
            RotationError::Apply(_) => Stage::Apply,
            RotationError::VerifyGet(_) | RotationError::Verify(_) => Stage::Verify,
        }
    }

    /// A stable, low-cardinality label.
    pub fn error_type(&self) -> &'static str {
        match self {
            RotationError::Fetch(e) => e.error_type(),
            RotationError::UnknownSource(_) => "config",
            RotationError::Resolve(e) | RotationError::Apply(e) | RotationError::VerifyGet(e) => {
                e.error_type()
            }
            RotationError::NoUpdatePrivilege(_) => "no_update_privilege",
            RotationError::Build(e) => e.error_type(),
            RotationError::Verify(_) => "verify_mismatch",
        }
    }

    /// Whether another attempt in the same run may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            RotationError::Fetch(e) => e.is_retriable(),
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
            Outcome::Failed(e) | Outcome::VerifyFailed(e) => Some(e),
            _ => None,
        }
    }
}

/// What one run did.
#[derive(Debug)]
pub struct Report {
    /// Job name.
    pub job: String,
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
    /// One human line: `sales-s3: rotated (connection …, secret version …)` or
    /// `sales-s3: failed at apply [forbidden]: …`.
    pub fn line(&self) -> String {
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
                format!(
                    "{}: rotated and verified (connection {conn}, secret version {version}{detail})",
                    self.job
                )
            }
            Outcome::Unchanged => format!(
                "{}: unchanged (secret version {version} already applied; nothing sent)",
                self.job
            ),
            Outcome::Planned(_) => format!("{}: planned (connection {conn})", self.job),
            Outcome::Failed(e) | Outcome::VerifyFailed(e) => format!(
                "{}: {} at {} [{}]: {e}",
                self.job,
                self.outcome.label(),
                e.stage().as_str(),
                e.error_type()
            ),
        }
    }
}

/// Per-run options.
#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    /// Build and return the masked patch; send nothing.
    pub plan_only: bool,
    /// The secret version last applied to this connection; equal → `Unchanged`.
    pub last_applied: Option<String>,
    /// Rotate even when the version equals `last_applied`.
    pub force: bool,
    /// A fresh-enough copy of the connection (from pre-flight or the previous verify GET),
    /// used instead of a GET before the PATCH.
    pub known: Option<DataConnection>,
}

/// Runs rotations. Shared by the CLI and the daemon.
#[derive(Debug)]
pub struct Rotator {
    client: Arc<QlikClient>,
    sources: HashMap<String, Arc<AnySource>>,
    resolved: Mutex<HashMap<String, String>>,
    metrics: Option<Arc<Metrics>>,
}

impl Rotator {
    /// A rotator over a Qlik client and the configured sources.
    pub fn new(client: Arc<QlikClient>, sources: HashMap<String, Arc<AnySource>>) -> Self {
        Rotator {
            client,
            sources,
            resolved: Mutex::new(HashMap::new()),
            metrics: None,
        }
    }

    /// Records secret reads and in-flight rotations in `metrics` (run outcomes are recorded
    /// by the caller, once per run, with [`Metrics::record`]).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The Qlik client.
    pub fn client(&self) -> &Arc<QlikClient> {
        &self.client
    }

    /// Finds and reads the job's connection. A name is resolved once to the id, which is used
    /// from then on.
    ///
    /// # Errors
    /// [`QlikError`] from the lookup or GET.
    pub async fn read_connection(&self, job: &JobConfig) -> Result<DataConnection, QlikError> {
        match &job.connection {
            ConnectionRef::Id(id) => self.client.get_connection(id).await,
            ConnectionRef::Name { name, space } => {
                let cached = self
                    .resolved
                    .lock()
                    .expect("resolved lock")
                    .get(&job.name)
                    .cloned();
                if let Some(id) = cached {
                    return self.client.get_connection(&id).await;
                }
                let conn = self.client.find_connection(name, space.as_deref()).await?;
                self.resolved
                    .lock()
                    .expect("resolved lock")
                    .insert(job.name.clone(), conn.id.clone());
                Ok(conn)
            }
        }
    }

    /// Runs one job once.
    pub async fn run(&self, job: &JobConfig, opts: RunOptions) -> Report {
        let started = Instant::now();
        let mut report = Report {
            job: job.name.clone(),
            connection_id: match &job.connection {
                ConnectionRef::Id(id) => Some(id.clone()),
                ConnectionRef::Name { .. } => None,
            },
            secret_version: None,
            outcome: Outcome::Unchanged,
            duration: Duration::ZERO,
            after: None,
            verified: None,
        };
        let in_flight = self.metrics.as_ref().map(|m| m.start_rotation());
        report.outcome = self.run_inner(job, opts, &mut report).await;
        report.duration = started.elapsed();
        drop(in_flight);
        match &report.outcome {
            Outcome::Failed(e) | Outcome::VerifyFailed(e) => tracing::warn!(
                job = %job.name,
                outcome = report.outcome.label(),
                stage = e.stage().as_str(),
                error_type = e.error_type(),
                error = %e,
                "Rotation failed."
            ),
            other => tracing::info!(
                job = %job.name,
                outcome = other.label(),
                connection = report.connection_id.as_deref().unwrap_or(""),
                secret_version = report.secret_version.as_deref().unwrap_or(""),
                duration_ms = report.duration.as_millis() as u64,
                "Rotation finished."
            ),
        }
        report
    }

    async fn run_inner(&self, job: &JobConfig, opts: RunOptions, report: &mut Report) -> Outcome {
        // 1. The secret first: an unchanged version costs no Qlik call at all.
        let Some(source) = self.sources.get(&job.source) else {
            return Outcome::Failed(RotationError::UnknownSource(job.source.clone()));
        };
        let fetched = source.fetch(&job.secret).await;
        if let Some(m) = &self.metrics {
            m.secret_fetch(source.kind(), fetched.is_ok());
        }
        let secret = match fetched {
            Ok(s) => s,
            Err(e) => return Outcome::Failed(e.into()),
        };
        report.secret_version = Some(secret.version.clone());
        if !(opts.plan_only || opts.force || job.force)
            && opts.last_applied.as_deref() == Some(secret.version.as_str())
        {
            return Outcome::Unchanged;
        }

        // 2. The connection as it is now.
        let before = match opts.known {
            Some(conn) => conn,
            None => match self.read_connection(job).await {
                Ok(c) => c,
                Err(e) => return Outcome::Failed(RotationError::Resolve(e)),
            },
        };
        report.connection_id = Some(before.id.clone());

        // 3. The credential-only patch (pure).
        let spec = BuildSpec {
            connector: job.connector.clone(),
            scheme: job.scheme,
            fields: job.fields.clone(),
        };
        let plan = match connectors::build(&before, &spec, &secret) {
            Ok(p) => p,
            Err(e) => return Outcome::Failed(e.into()),
        };
        drop(secret);
        if opts.plan_only {
            return Outcome::Planned(plan.doc.masked());
        }
        if !before.privileges.is_empty() && !before.has_privilege("update") {
            return Outcome::Failed(RotationError::NoUpdatePrivilege(before.id.clone()));
        }

        // 4. Apply.
        if let Err(e) = self.client.patch_connection(&before.id, &plan.doc).await {
            return Outcome::Failed(RotationError::Apply(e));
        }
        drop(plan.doc);

        // 5. Verify.
        let after = match self.client.get_connection(&before.id).await {
            Ok(c) => c,
            Err(e) => return Outcome::VerifyFailed(RotationError::VerifyGet(e)),
        };
        let mismatches = connectors::verify(&before, &after, &plan.expect);
        if mismatches.is_empty() {
            report.verified = Some(Verified {
                unchanged_properties: before
                    .properties
                    .keys()
                    .filter(|k| !plan.expect.written.contains(k))
                    .count(),
                confirmed_credentials: plan
                    .expect
                    .written
                    .iter()
                    .filter(|w| after.properties.contains_key(*w))
                    .cloned()
                    .collect(),
                updated: (before.updated.clone(), after.updated.clone()),
            });
            report.after = Some(after);
            Outcome::Rotated
        } else {
            Outcome::VerifyFailed(RotationError::Verify(mismatches))
        }
    }
}
