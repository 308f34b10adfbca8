//! Typed events: each [`Event::emit`] writes its log line and updates its metrics in one
//! place, so the logs and `/metrics` cannot disagree (vector's `internal_events` is the
//! model).
//!
//! Counting rules, one line per event:
//! - [`RotationFinished`] / [`RotationFailed`]: once per connection and run, after the run's
//!   last attempt. `rotations_total{outcome}` moves with each failure (`rotated` and
//!   `unchanged`: `rotations_rotated_total` / `rotations_unchanged_total{connector}` of the
//!   job's connector instead, and per job too with `metrics.per_job_rotated` /
//!   `per_job_unchanged`), and `errors_total` with each failure, so
//!   `sum(errors_total{rotation_job})` equals that job's `failed` + `verify_failed`.
//! - [`RotationRetried`]: a failed attempt that is tried again within the same run
//!   (`rotation_retries_total{stage}`); it is not an outcome.
//! - [`RunFinished`]: once per run of a job (the duration histogram and the timestamps).
//!
//! Events take plain values (names, labels, escaped text) and import nothing from the rotation
//! code: [`crate::rotation`] turns its reports into events. Without metrics (the one-shot
//! commands) an event only logs. No event carries a secret; text from outside (Qlik's answers,
//! vault versions, error messages) is escaped before it is logged.

use std::{sync::Arc, time::Duration};

use crate::{
    metrics::{InFlight, Metrics},
    qlik::client::RequestObserver,
    text::Escaped,
};

/// Something worth a log line and a metric.
pub trait Event {
    /// What emitting returns (a guard for [`RotationStarted`], else nothing).
    type Output;

    /// Writes the log line and, when there are `metrics`, updates them.
    fn emit(self, metrics: Option<&Metrics>) -> Self::Output;
}

/// Where [`Events::notify`] hands outcomes: the webhook queue ([`crate::notify::Notifier`]).
/// A trait, so that this module need not import `notify` (which emits events).
pub trait NotificationSink: std::fmt::Debug + Send + Sync {
    /// Queues `n` (never waits).
    fn notify(&self, n: Notification);
}

/// One outcome to tell the webhooks about (`[[notify]]`): plain values, no secret. The
/// payloads it becomes are built in [`crate::notify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The job's name.
    pub job: String,
    /// The connection's id (or its configured key when it was never resolved).
    pub connection: String,
    /// The outcome label (`failed`, `verify_failed`, `canary_failed`, `rolled_back`,
    /// `rotated`).
    pub outcome: &'static str,
    /// The stage that failed.
    pub stage: Option<&'static str>,
    /// The stable error label.
    pub error_type: Option<&'static str>,
    /// The secret version id read from the vault (an id, not a value).
    pub secret_version: Option<String>,
    /// For `rolled_back`: the version put back.
    pub restored_version: Option<String>,
    /// When the outcome was reached.
    pub time: chrono::DateTime<chrono::Utc>,
}

/// Where events go: the log always, the metrics when the process serves `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Events {
    metrics: Option<Arc<Metrics>>,
    /// Where outcomes are also sent (`[[notify]]`): set once by the daemon; clones share it.
    notifier: Arc<std::sync::OnceLock<Box<dyn NotificationSink>>>,
    /// The tenant of the Qlik client these events observe (the `tenant` label of its
    /// requests, with `[tenants.NAME]`).
    tenant: Option<Arc<str>>,
}

// === impl Events ===

impl Events {
    /// Events that log and count in `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Events {
            metrics: Some(metrics),
            notifier: Arc::default(),
            tenant: None,
        }
    }

    /// These events, observing a Qlik client of `tenant` (`None`: no `tenant` label).
    pub fn for_tenant(mut self, tenant: Option<Arc<str>>) -> Self {
        self.tenant = tenant;
        self
    }

    /// Sends every outcome to `notifier` as well (once; a second call is ignored and returns
    /// `false`).
    pub fn set_notifier(&self, notifier: impl NotificationSink + 'static) -> bool {
        self.notifier.set(Box::new(notifier)).is_ok()
    }

    /// Whether outcomes go to a notifier.
    pub fn notifies(&self) -> bool {
        self.notifier.get().is_some()
    }

    /// Queues an outcome for the webhooks (never waits; nothing without a notifier).
    pub fn notify(&self, n: Notification) {
        if let Some(notifier) = self.notifier.get() {
            notifier.notify(n);
        }
    }

    /// Events that only log (one-shot commands have no `/metrics`).
    pub fn log_only() -> Self {
        Events::default()
    }

    /// Emits `event`.
    pub fn emit<E: Event>(&self, event: E) -> E::Output {
        event.emit(self.metrics.as_deref())
    }

    /// The metrics, if any.
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }
}

/// The Qlik client reports each exchange here: requests are counted only (the client logs
/// each one itself, at debug), a 429 is a [`RateLimited`] event.
impl RequestObserver for Events {
    fn request(
        &self,
        method: &'static str,
        endpoint: &'static str,
        status: &str,
        elapsed: Duration,
    ) {
        if let Some(m) = &self.metrics {
            m.tenant_request(self.tenant.as_deref(), method, endpoint, status, elapsed);
        }
    }

    fn rate_limited(&self) {
        self.emit(RateLimited {
            tenant: self.tenant.as_deref(),
        });
    }
}

/// A run of a job starts: `rotations_in_flight` goes up until the returned guard is dropped.
#[derive(Debug)]
pub struct RotationStarted<'a> {
    /// Job name.
    pub job: &'a str,
    /// Connections the run will try.
    pub connections: usize,
}

/// Ends a rotation's time in `rotations_in_flight` when dropped.
#[derive(Debug)]
pub struct RotationGuard(#[allow(dead_code)] Option<InFlight>);

impl Event for RotationStarted<'_> {
    type Output = RotationGuard;

    fn emit(self, metrics: Option<&Metrics>) -> RotationGuard {
        tracing::debug!(
            job = %self.job,
            connections = self.connections,
            "Rotation started."
        );
        RotationGuard(metrics.map(Metrics::start_rotation))
    }
}

/// One connection's run ended well: `rotated`, `unchanged` or (in `plan`) `planned`.
#[derive(Debug)]
pub struct RotationFinished<'a> {
    /// Job name.
    pub job: &'a str,
    /// The connection id (from Qlik or the config; escaped when logged).
    pub connection: &'a str,
    /// `rotated`, `unchanged` (counted per connector) or `planned` (not counted).
    pub outcome: &'static str,
    /// The secret version read (not secret; escaped when logged).
    pub secret_version: &'a str,
    /// Wall time of the run.
    pub duration: Duration,
}

impl Event for RotationFinished<'_> {
    type Output = ();

    fn emit(self, metrics: Option<&Metrics>) {
        tracing::info!(
            job = %self.job,
            connection = %Escaped(self.connection),
            outcome = self.outcome,
            secret_version = %Escaped(self.secret_version),
            duration_ms = self.duration.as_millis() as u64,
            "Rotation finished."
        );
        if let Some(m) = metrics {
            m.count_outcome(self.job, self.outcome);
        }
    }
}

/// One connection's run failed after its last attempt: `failed` or `verify_failed`.
#[derive(Debug)]
pub struct RotationFailed<'a> {
    /// Job name.
    pub job: &'a str,
    /// The connection as configured.
    pub connection: &'a str,
    /// `failed` or `verify_failed`.
    pub outcome: &'static str,
    /// Where it failed (`fetch`, `resolve`, `build`, `apply`, `verify`).
    pub stage: &'static str,
    /// The stable error label.
    pub error_type: &'static str,
    /// The error's message (names and ids, never values; escaped when logged).
    pub error: &'a str,
}

impl Event for RotationFailed<'_> {
    type Output = ();

    fn emit(self, metrics: Option<&Metrics>) {
        tracing::warn!(
            job = %self.job,
            connection = %Escaped(self.connection),
            outcome = self.outcome,
            stage = self.stage,
            error_type = self.error_type,
            error = %Escaped(self.error),
            "Rotation failed."
        );
        if let Some(m) = metrics {
            m.count_outcome(self.job, self.outcome);
            m.count_error(self.job, self.stage, self.error_type);
        }
    }
}

/// A failed attempt that the run tries again after `delay`.
#[derive(Debug)]
pub struct RotationRetried<'a> {
    /// Job name.
    pub job: &'a str,
    /// The connection as configured.
    pub connection: &'a str,
    /// The attempt that failed (1 = the first).
    pub attempt: u32,
    /// Where it failed.
    pub stage: &'static str,
    /// The stable error label.
    pub error_type: &'static str,
    /// The error's message (escaped when logged).
    pub error: &'a str,
    /// The wait before the next attempt.
    pub delay: Duration,
}

impl Event for RotationRetried<'_> {
    type Output = ();

    fn emit(self, metrics: Option<&Metrics>) {
        tracing::info!(
            job = %self.job,
            connection = %Escaped(self.connection),
            attempt = self.attempt,
            stage = self.stage,
            error_type = self.error_type,
            error = %Escaped(self.error),
            delay_s = self.delay.as_secs(),
            "Rotation attempt failed; retrying."
        );
        if let Some(m) = metrics {
            m.count_retry(self.stage);
        }
    }
}

/// A run of a job ended (every connection has its outcome).
#[derive(Debug)]
pub struct RunFinished<'a> {
    /// Job name.
    pub job: &'a str,
    /// The job's connector (`rotation_duration_seconds{connector}`).
    pub connector: &'a str,
    /// The longest connection's wall time.
    pub duration: Duration,
    /// Connections with an outcome.
    pub connections: usize,
    /// Whether every connection ended well (sets the last success).
    pub success: bool,
}

impl Event for RunFinished<'_> {
    type Output = ();

    fn emit(self, metrics: Option<&Metrics>) {
        tracing::debug!(
            job = %self.job,
            connector = %self.connector,
            connections = self.connections,
            success = self.success,
            duration_ms = self.duration.as_millis() as u64,
            "Job run finished."
        );
        if let Some(m) = metrics {
            m.observe_run(self.job, self.connector, self.duration, self.success);
        }
    }
}

/// A webhook notification ended: `sent`, `failed` (after its retries, or refused) or
/// `dropped` (the queue was full). `notifications_total{result}`.
#[derive(Debug)]
pub struct NotificationDelivered<'a> {
    /// The webhook: scheme, host and port only (`-` when dropped before any).
    pub target: &'a str,
    /// The job the outcome is about.
    pub job: &'a str,
    /// The outcome notified.
    pub outcome: &'static str,
    /// `sent`, `failed` or `dropped`.
    pub result: &'static str,
    /// Attempts made.
    pub attempts: u32,
    /// The stable error label (`timeout`, `transport`, `http_5xx`, `http_429`, `http_4xx`,
    /// `redirect_refused`, `queue_full`, `bad_header`).
    pub error_type: Option<&'static str>,
}

impl Event for NotificationDelivered<'_> {
    type Output = ();

    fn emit(self, metrics: Option<&Metrics>) {
        if self.result == "sent" {
            tracing::info!(
                target_url = %Escaped(self.target),
                job = %self.job,
                outcome = self.outcome,
                attempts = self.attempts,
                "Notification sent."
            );
        } else {
            tracing::warn!(
                target_url = %Escaped(self.target),
                job = %self.job,
                outcome = self.outcome,
                result = self.result,
                attempts = self.attempts,
                error_type = self.error_type.unwrap_or(""),
                "Notification not delivered."
            );
        }
        if let Some(m) = metrics {
            m.notification(self.result);
        }
    }
}

/// A secret read from a source, or a failed read.
#[derive(Debug)]
pub struct SecretFetched<'a> {
    /// Job name.
    pub job: &'a str,
    /// The source's type (`file`, `aws_secrets_manager`, …).
    pub source: &'static str,
    /// `None` when read, else the error label.
    pub error_type: Option<&'static str>,
    /// When the version read was created (Unix seconds), if the source says.
    pub created: Option<i64>,
}

impl Event for SecretFetched<'_> {
    type Output = ();

    fn emit(self, metrics: Option<&Metrics>) {
        match self.error_type {
            None => tracing::debug!(job = %self.job, source = self.source, "Secret read."),
            Some(error_type) => tracing::info!(
                job = %self.job,
                source = self.source,
                error_type,
                "The secret could not be read."
            ),
        }
        if let Some(m) = metrics {
            m.secret_fetch(self.source, self.error_type.is_none());
            if let Some(t) = self.created {
                m.set_secret_created(self.job, t);
            }
        }
    }
}

/// Qlik answered HTTP 429 (the client waits and retries).
#[derive(Debug, Default)]
pub struct RateLimited<'a> {
    /// The client's tenant, with `[tenants.NAME]` (logged, and the metric's label).
    pub tenant: Option<&'a str>,
}

impl Event for RateLimited<'_> {
    type Output = ();

    fn emit(self, metrics: Option<&Metrics>) {
        match self.tenant {
            Some(tenant) => tracing::warn!(
                tenant,
                "Qlik answered 429 (rate limited); waiting before the tenant's next request."
            ),
            None => {
                tracing::warn!(
                    "Qlik answered 429 (rate limited); waiting before the next request."
                );
            }
        }
        if let Some(m) = metrics {
            m.tenant_rate_limited(self.tenant);
        }
    }
}

/// One connection's start-up pre-flight finished (passed, or failed with `error`).
#[derive(Debug)]
pub struct PreflightChecked<'a> {
    /// The job.
    pub job: &'a str,
    /// The connection (id or name, as configured and validated).
    pub connection: &'a str,
    /// Why it failed (escaped text), or `None` when it passed.
    pub error: Option<&'a str>,
    /// Connections still waiting for their pre-flight.
    pub pending: usize,
}

impl Event for PreflightChecked<'_> {
    type Output = ();

    fn emit(self, metrics: Option<&Metrics>) {
        match self.error {
            None => tracing::debug!(
                job = self.job,
                connection = %self.connection,
                pending = self.pending,
                "Pre-flight passed."
            ),
            Some(error) => tracing::error!(
                job = self.job,
                connection = %self.connection,
                error = %error,
                pending = self.pending,
                "Pre-flight failed; the connection is skipped until it passes."
            ),
        }
        if let Some(m) = metrics {
            m.set_preflight_pending(self.pending);
        }
    }
}

/// A reload of the configuration on SIGHUP ended: `ok` (applied), `invalid` (the file has
/// errors, each logged with its key; the running configuration stays) or `refused` (a
/// section other than `[[jobs]]` changed: that needs a restart).
#[derive(Debug)]
pub struct ConfigReloaded<'a> {
    /// `ok`, `invalid` or `refused`.
    pub result: &'static str,
    /// Why it was not applied: each error with its key (invalid), or the changed sections.
    pub errors: &'a [String],
    /// Jobs added, removed and changed (when applied).
    pub added: &'a [String],
    /// Jobs removed (their series dropped from /metrics).
    pub removed: &'a [String],
    /// Jobs whose settings changed.
    pub changed: &'a [String],
    /// The running configuration afterwards: its SHA-256 (16 hex digits) and load time.
    pub running: (&'a str, i64),
}

impl Event for ConfigReloaded<'_> {
    type Output = ();

    fn emit(self, metrics: Option<&Metrics>) {
        match self.result {
            "ok" => tracing::info!(
                added = ?self.added,
                removed = ?self.removed,
                changed = ?self.changed,
                sha256 = self.running.0,
                "Configuration reloaded (SIGHUP)."
            ),
            result => {
                for e in self.errors {
                    tracing::error!(result, "Configuration not reloaded: {e}");
                }
                tracing::warn!(
                    result,
                    sha256 = self.running.0,
                    "SIGHUP: the new configuration was not applied; the running one stays."
                );
            }
        }
        if let Some(m) = metrics {
            m.count_reload(self.result);
            m.set_config(self.running.0, self.running.1);
        }
    }
}

/// The daemon's coverage scan (`connections`/`coverage` logic, [`crate::discover`]) ended.
#[derive(Debug)]
pub struct CoverageScanned<'a> {
    /// The tenant scanned; only with `[tenants.NAME]` (the log field and the gauge's label).
    pub tenant: Option<&'a str>,
    /// Credential-bearing connections found.
    pub credential_bearing: usize,
    /// Of those, the ones no job manages.
    pub unmanaged: usize,
    /// Job references that match no connection.
    pub orphaned: usize,
    /// Why the scan failed (escaped text); the gauge keeps its last value.
    pub error: Option<&'a str>,
}

impl Event for CoverageScanned<'_> {
    type Output = ();

    fn emit(self, metrics: Option<&Metrics>) {
        if let Some(error) = self.error {
            tracing::warn!(
                tenant = self.tenant,
                error = %error,
                "Coverage scan failed; unmanaged_connections keeps its last value."
            );
            return;
        }
        if self.unmanaged > 0 || self.orphaned > 0 {
            tracing::warn!(
                tenant = self.tenant,
                credential_bearing = self.credential_bearing,
                unmanaged = self.unmanaged,
                orphaned = self.orphaned,
                "Coverage scan: connections without a job, or jobs without a connection (run `qlik-rotator coverage`)."
            );
        } else {
            tracing::info!(
                tenant = self.tenant,
                credential_bearing = self.credential_bearing,
                "Coverage scan: every credential-bearing connection has a job."
            );
        }
        if let Some(m) = metrics {
            m.set_unmanaged(
                self.tenant,
                i64::try_from(self.unmanaged).unwrap_or(i64::MAX),
            );
        }
    }
}

/// The start-up pre-flight of every connection is done (the daemon was ready before it).
#[derive(Debug)]
pub struct PreflightFinished {
    /// Connections checked.
    pub connections: usize,
    /// Of those, how many failed.
    pub failed: usize,
    /// From its start to its end.
    pub elapsed: Duration,
}

impl Event for PreflightFinished {
    type Output = ();

    fn emit(self, metrics: Option<&Metrics>) {
        tracing::info!(
            connections = self.connections,
            failed = self.failed,
            elapsed_ms = self.elapsed.as_millis() as u64,
            "Pre-flight finished."
        );
        if let Some(m) = metrics {
            m.set_preflight_pending(0);
        }
    }
}

/// A catalogue connector's api-specs disagree with what the job writes (rotated anyway).
#[derive(Debug)]
pub struct SpecWarning<'a> {
    /// Job name.
    pub job: &'a str,
    /// The job's `datasourceID`.
    pub connector_type: &'a str,
    /// What disagrees (names and types only).
    pub warning: &'a str,
}

impl Event for SpecWarning<'_> {
    type Output = ();

    fn emit(self, metrics: Option<&Metrics>) {
        tracing::warn!(
            job = %self.job,
            connector_type = %self.connector_type,
            warning = %Escaped(self.warning),
            "The connector's api-specs disagree with the catalogue; rotating anyway."
        );
        if let Some(m) = metrics {
            m.spec_warning(self.connector_type);
        }
    }
}

/// A verify rule without a published source found something (a warning, not a failure).
#[derive(Debug)]
pub struct VerifyWarning<'a> {
    /// Job name.
    pub job: &'a str,
    /// One of [`crate::connectors::VERIFY_WARNING_RULES`].
    pub rule: &'static str,
    /// What was found (names only).
    pub warning: &'a str,
}

impl Event for VerifyWarning<'_> {
    type Output = ();

    fn emit(self, metrics: Option<&Metrics>) {
        tracing::warn!(
            job = %self.job,
            rule = self.rule,
            warning = %Escaped(self.warning),
            "Verify found something it cannot judge; counted as a warning, not a failure."
        );
        if let Some(m) = metrics {
            m.verify_warning(self.rule);
        }
    }
}

/// When a state write failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateWriteWhen {
    /// Recording a job's applied version; the write is retried with backoff.
    AfterRun,
    /// A retry of an earlier failed write; the next one follows after the delay.
    Retry(Duration),
    /// The last write at shutdown.
    Shutdown,
}

/// The state file could not be written (`state_writable` drops to 0).
#[derive(Debug)]
pub struct StateWriteFailed<'a> {
    /// The job whose version was being recorded, if any.
    pub job: Option<&'a str>,
    /// The error's message (escaped when logged).
    pub error: &'a str,
    /// When.
    pub when: StateWriteWhen,
}

impl Event for StateWriteFailed<'_> {
    type Output = ();

    fn emit(self, metrics: Option<&Metrics>) {
        let error = Escaped(self.error);
        let job = self.job.unwrap_or("");
        match self.when {
            StateWriteWhen::AfterRun => tracing::error!(
                job,
                error = %error,
                "Cannot write the state file; the applied version is kept in memory (no re-apply) and the write is retried with backoff. A restart before it succeeds rotates this job once more."
            ),
            StateWriteWhen::Retry(delay) => tracing::warn!(
                error = %error,
                retry_in_s = delay.as_secs(),
                "Still cannot write the state file."
            ),
            StateWriteWhen::Shutdown => tracing::error!(
                error = %error,
                "Cannot write the state file at shutdown; the next start rotates the affected jobs once more."
            ),
        }
        if let Some(m) = metrics {
            m.state_write_failed();
        }
    }
}

/// A state write succeeded after failures (`state_writable` back to 1).
#[derive(Debug)]
pub struct StateWriteRecovered;

impl Event for StateWriteRecovered {
    type Output = ();

    fn emit(self, metrics: Option<&Metrics>) {
        tracing::info!("The state file is written again.");
        if let Some(m) = metrics {
            m.set_state_writable(true);
        }
    }
}

/// A message of the `[events]` queue was handled (see [`crate::triggers::sqs`]). Text from
/// the message (event name, secret id) arrives escaped; the body is never logged.
#[derive(Debug)]
pub struct EventMessage<'a> {
    /// `deleted`, `unmatched`, `rejected` or `failed` ([`crate::metrics::EVENT_RESULTS`]).
    pub result: &'static str,
    /// Why a `rejected` message was not used.
    pub reason: Option<&'static str>,
    /// The event's name (`PutSecretValue`, …; escaped), or empty.
    pub event: &'a str,
    /// The secret id the event names (escaped), or empty.
    pub secret: &'a str,
    /// Jobs run for it.
    pub jobs: usize,
    /// Of which failed (or did not run).
    pub failed: usize,
}

impl Event for EventMessage<'_> {
    type Output = ();

    fn emit(self, metrics: Option<&Metrics>) {
        let (event, secret) = (self.event, self.secret);
        match self.result {
            "deleted" => tracing::info!(
                event,
                secret,
                jobs = self.jobs,
                "Secret change event: its jobs ran; message deleted."
            ),
            "unmatched" => tracing::info!(
                event,
                secret,
                "Secret change event for a secret no job uses; message deleted."
            ),
            "failed" => tracing::warn!(
                event,
                secret,
                jobs = self.jobs,
                failed = self.failed,
                "Secret change event: a job failed; the message is left for redelivery (and, after the queue's redrive count, the DLQ)."
            ),
            _ => tracing::warn!(
                result = self.result,
                reason = self.reason.unwrap_or(""),
                event,
                secret,
                "Unusable message on the events queue; deleted."
            ),
        }
        if let Some(m) = metrics {
            m.event_message(self.result, self.reason);
        }
    }
}

/// A message arrived on the `[events]` queue (counted before it is handled).
#[derive(Debug)]
pub struct EventReceived;

impl Event for EventReceived {
    type Output = ();

    fn emit(self, metrics: Option<&Metrics>) {
        if let Some(m) = metrics {
            m.event_message("received", None);
        }
    }
}

/// A call on the `[events]` queue failed (`ReceiveMessage`, `DeleteMessage`).
#[derive(Debug)]
pub struct EventQueueFailed<'a> {
    /// The operation.
    pub operation: &'static str,
    /// The AWS error code or transport error (escaped).
    pub error: &'a str,
    /// The wait before the next receive (zero after a failed delete).
    pub retry_in: Duration,
}

impl Event for EventQueueFailed<'_> {
    type Output = ();

    fn emit(self, metrics: Option<&Metrics>) {
        tracing::warn!(
            operation = self.operation,
            error = %Escaped(self.error),
            retry_in_ms = self.retry_in.as_millis() as u64,
            "A call on the events queue failed."
        );
        if let Some(m) = metrics {
            m.event_receive_error();
        }
    }
}

/// The dead-letter queue of the `[events]` queue was read.
#[derive(Debug)]
pub struct EventDlqDepth(pub i64);

impl Event for EventDlqDepth {
    type Output = ();

    fn emit(self, metrics: Option<&Metrics>) {
        if self.0 > 0 {
            tracing::warn!(
                messages = self.0,
                "The events dead-letter queue holds messages whose jobs kept failing."
            );
        }
        if let Some(m) = metrics {
            m.set_event_dlq_messages(self.0);
        }
    }
}

/// Why a run (or its record) went ahead without this replica: the metric's `reason` label.
#[derive(Debug)]
pub enum LeaseSkipReason {
    /// Another replica holds the job's lease (`held_elsewhere`).
    HeldElsewhere,
    /// The lease moved to another replica during the run; its result was not recorded here
    /// (`lost`).
    Lost,
    /// The state backend could not grant the lease or read the applied versions
    /// (`backend_error`); the message is escaped when logged.
    BackendError(String),
}

impl LeaseSkipReason {
    /// The `reason` label.
    pub fn label(&self) -> &'static str {
        match self {
            LeaseSkipReason::HeldElsewhere => "held_elsewhere",
            LeaseSkipReason::Lost => "lost",
            LeaseSkipReason::BackendError(_) => "backend_error",
        }
    }
}

/// A job's run skipped (or its record dropped) for want of its lease
/// (`lease_skips_total{reason}`).
#[derive(Debug)]
pub struct LeaseSkipped<'a> {
    /// The job.
    pub job: &'a str,
    /// Why.
    pub reason: LeaseSkipReason,
}

impl Event for LeaseSkipped<'_> {
    type Output = ();

    fn emit(self, metrics: Option<&Metrics>) {
        let job = Escaped(self.job);
        let reason = self.reason.label();
        match &self.reason {
            LeaseSkipReason::HeldElsewhere => tracing::info!(
                job = %job,
                reason,
                "Another replica holds this job's lease; skipping this run here."
            ),
            LeaseSkipReason::Lost => tracing::warn!(
                job = %job,
                reason,
                "The lease on this job moved to another replica during the run; the result is not recorded here."
            ),
            LeaseSkipReason::BackendError(e) => tracing::error!(
                job = %job,
                reason,
                error = %Escaped(e),
                "The state backend cannot grant this job's lease or read its applied versions; skipping this run (nothing is sent)."
            ),
        }
        if let Some(m) = metrics {
            m.lease_skipped(reason);
        }
    }
}

/// One pass of the history retention (log only).
#[derive(Debug)]
pub struct HistoryPruned {
    /// `state.history_retention`.
    pub retention: Duration,
    /// How many attempts went, or why none could.
    pub result: Result<u64, String>,
}

impl Event for HistoryPruned {
    type Output = ();

    fn emit(self, _metrics: Option<&Metrics>) {
        let retention_days = self.retention.as_secs() / 86_400;
        match self.result {
            Ok(0) => tracing::debug!(retention_days, "No attempts older than the retention."),
            Ok(deleted) => tracing::info!(
                deleted,
                retention_days,
                "Pruned attempts older than the retention from the history."
            ),
            Err(e) => tracing::warn!(
                error = %Escaped(&e),
                "Could not prune the history; retried in an hour."
            ),
        }
    }
}

#[cfg(test)]
mod tests;
