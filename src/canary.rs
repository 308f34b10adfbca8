//! The canary: proof that Qlik can *use* a new credential, by reloading an app that reads
//! through the rotated connection(s).
//!
//! After PATCH + verify, `POST /api/v1/reloads {appId}` queues a reload, then
//! `GET /api/v1/reloads/{id}` is polled with a capped exponential backoff until the reload
//! reaches a final status or `canary_timeout` passes. Every call goes through the
//! [`QlikClient`], so the write gate, the retry policy (429 with `Retry-After`, 5xx) and the
//! response-body cap apply.
//!
//! Sources: `@qlik/api` `reloads.d.ts` (`queueReload` → 201 `Reload`, errors 400 | 401 | 403 |
//! 429 | 500; `getReload` → 200 `Reload`; `Status` = `QUEUED | RELOADING | CANCELING` active,
//! `SUCCEEDED | FAILED | CANCELED | EXCEEDED_LIMIT` final; `errorCode`/`errorMessage` when
//! FAILED) and <https://qlik.dev/apis/rest/reloads/>; the `log` summary format is qlik.dev
//! changelog 167 (<https://qlik.dev/changelog/167-changes-to-reload-log/>).
//!
//! Nothing from the answer is trusted: the reload must name the app queued and the reload id
//! Qlik gave at queueing (ids compared exactly), the status must be one of the seven, and any
//! text (error code, message, log) is redacted of the secret just written, escaped and capped
//! before it is printed.

use std::time::Duration;

use backon::BackoffBuilder;

use crate::{
    qlik::{QlikClient, QlikError, model::Reload},
    text::{self, Redactor},
};

/// The first wait between polls; doubles up to [`POLL_MAX`].
pub const POLL_FIRST: Duration = Duration::from_millis(500);
/// The longest wait between two polls.
pub const POLL_MAX: Duration = Duration::from_secs(30);
/// Longest error code printed (characters).
const MAX_CODE: usize = 64;
/// Longest error message or log excerpt printed (characters).
const MAX_MESSAGE: usize = 300;
/// Longest id printed (characters).
const MAX_ID: usize = 80;

/// A final status other than `SUCCEEDED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalFailure {
    /// `FAILED`.
    Failed,
    /// `CANCELED`.
    Canceled,
    /// `EXCEEDED_LIMIT`.
    ExceededLimit,
}

impl FinalFailure {
    /// Qlik's status text.
    pub fn status(self) -> &'static str {
        match self {
            FinalFailure::Failed => "FAILED",
            FinalFailure::Canceled => "CANCELED",
            FinalFailure::ExceededLimit => "EXCEEDED_LIMIT",
        }
    }
}

/// What a reload's status says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Active,
    Succeeded,
    Final(FinalFailure),
}

fn parse_status(s: &str) -> Option<Status> {
    Some(match s {
        "QUEUED" | "RELOADING" | "CANCELING" => Status::Active,
        "SUCCEEDED" => Status::Succeeded,
        "FAILED" => Status::Final(FinalFailure::Failed),
        "CANCELED" => Status::Final(FinalFailure::Canceled),
        "EXCEEDED_LIMIT" => Status::Final(FinalFailure::ExceededLimit),
        _ => return None,
    })
}

/// Why the canary did not prove the credential. Every text field is already redacted,
/// escaped and capped.
#[derive(Debug, thiserror::Error)]
pub enum CanaryError {
    /// The reload could not be queued (after the client's retries: a 429 that outlasted
    /// them, 400, 403, 5xx, transport).
    #[error("the canary reload of app {app} could not be queued: {source}")]
    Queue {
        /// The app id.
        app: String,
        /// Why.
        source: QlikError,
    },
    /// A status poll failed (after the client's retries).
    #[error("the canary reload {reload} of app {app} could not be read: {source}")]
    Poll {
        /// The app id.
        app: String,
        /// The reload id.
        reload: String,
        /// Why.
        source: QlikError,
    },
    /// The reload ended in a final status other than `SUCCEEDED`.
    #[error(
        "the canary reload {reload} of app {app} ended {}{}{}",
        status.status(),
        code.as_ref().map(|c| format!(" [{c}]")).unwrap_or_default(),
        message.as_ref().map(|m| format!(": {m}")).unwrap_or_default()
    )]
    Ended {
        /// The app id.
        app: String,
        /// The reload id.
        reload: String,
        /// The status.
        status: FinalFailure,
        /// `errorCode` (sanitised).
        code: Option<String>,
        /// `errorMessage`, else an excerpt of `log` (sanitised).
        message: Option<String>,
    },
    /// No final status within `canary_timeout`.
    #[error(
        "the canary reload {reload} of app {app} reached no final status within {}s (last status {last})",
        timeout.as_secs()
    )]
    Timeout {
        /// The app id.
        app: String,
        /// The reload id.
        reload: String,
        /// The configured timeout.
        timeout: Duration,
        /// The last status seen (sanitised).
        last: String,
    },
    /// The answer is about another app or another reload, or its status is not one of the
    /// seven: nothing is trusted from it.
    #[error("{0}; nothing is trusted from that answer")]
    BadAnswer(String),
}

impl CanaryError {
    /// A stable, low-cardinality label (one per final status, timeout, queue and poll error,
    /// hostile answer).
    pub fn error_type(&self) -> &'static str {
        match self {
            CanaryError::Queue { source, .. } if source.status() == Some(429) => {
                "canary_rate_limited"
            }
            CanaryError::Queue { .. } => "canary_queue",
            CanaryError::Poll { .. } => "canary_poll",
            CanaryError::Ended { status, .. } => match status {
                FinalFailure::Failed => "canary_reload_failed",
                FinalFailure::Canceled => "canary_reload_canceled",
                FinalFailure::ExceededLimit => "canary_reload_exceeded_limit",
            },
            CanaryError::Timeout { .. } => "canary_timeout",
            CanaryError::BadAnswer(_) => "canary_bad_answer",
        }
    }
}

/// A canary reload that succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanaryProof {
    /// The app reloaded.
    pub app: String,
    /// The reload id Qlik gave.
    pub reload: String,
}

/// The waits between polls: 0.5 s, 1 s, 2 s, … capped at [`POLL_MAX`] (no jitter: one poller
/// per run).
fn poll_delays() -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(POLL_FIRST)
        .with_max_delay(POLL_MAX)
        .with_factor(2.0)
        .without_max_times()
        .build()
}

/// Reloads `app` and waits (at most `timeout`) for a final status. `written` holds the
/// values just PATCHed, scrubbed from anything Qlik's answer echoes.
///
/// # Errors
/// [`CanaryError`].
pub async fn run(
    client: &QlikClient,
    app: &str,
    timeout: Duration,
    written: &Redactor,
) -> Result<CanaryProof, CanaryError> {
    let app_shown = text::printable(app, MAX_ID);
    let deadline = tokio::time::Instant::now() + timeout;
    let queued = client
        .queue_reload(app)
        .await
        .map_err(|source| CanaryError::Queue {
            app: app_shown.clone(),
            source,
        })?;
    check_ids(app, None, &queued)?;
    let reload_id = queued.id.clone();
    let reload_shown = text::printable(&reload_id, MAX_ID);
    let mut last = checked_status(&queued)?;
    let mut reload = queued;
    let mut delays = poll_delays();
    loop {
        match last {
            Status::Succeeded => {
                return Ok(CanaryProof {
                    app: app.to_owned(),
                    reload: reload_id,
                });
            }
            Status::Final(status) => {
                return Err(ended(app_shown, reload_shown, status, &reload, written));
            }
            Status::Active => {}
        }
        let delay = delays.next().unwrap_or(POLL_MAX);
        let now = tokio::time::Instant::now();
        if now + delay > deadline {
            // Sleep out the remaining time and try once more only if it fits.
            if now >= deadline {
                return Err(timed_out(app_shown, reload_shown, timeout, &reload));
            }
            tokio::time::sleep_until(deadline).await;
        } else {
            tokio::time::sleep(delay).await;
        }
        // Each poll is bounded by the client's request timeout and retry policy.
        reload = match client.get_reload(&reload_id).await {
            Err(source) => {
                return Err(CanaryError::Poll {
                    app: app_shown,
                    reload: reload_shown,
                    source,
                });
            }
            Ok(r) => r,
        };
        check_ids(app, Some(&reload_id), &reload)?;
        last = checked_status(&reload)?;
        if matches!(last, Status::Active) && tokio::time::Instant::now() >= deadline {
            return Err(timed_out(app_shown, reload_shown, timeout, &reload));
        }
    }
}

/// The answer must be about `app` and (once known) about reload `id`; a queued reload must
/// carry a usable id.
fn check_ids(app: &str, id: Option<&str>, got: &Reload) -> Result<(), CanaryError> {
    if got.app_id != app {
        return Err(CanaryError::BadAnswer(format!(
            "asked to reload app {} but the answer is about app {}",
            text::printable(app, MAX_ID),
            text::quoted(&got.app_id, MAX_ID)
        )));
    }
    match id {
        Some(id) if got.id != id => Err(CanaryError::BadAnswer(format!(
            "polled reload {} but the answer is about reload {}",
            text::printable(id, MAX_ID),
            text::quoted(&got.id, MAX_ID)
        ))),
        None if !usable_id(&got.id) => Err(CanaryError::BadAnswer(format!(
            "the queued reload has no usable id ({})",
            text::quoted(&got.id, MAX_ID)
        ))),
        _ => Ok(()),
    }
}

/// 1 to 64 characters of `A-Za-z0-9-_` (Qlik's reload ids are 24 hex digits).
fn usable_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn checked_status(r: &Reload) -> Result<Status, CanaryError> {
    parse_status(&r.status).ok_or_else(|| {
        CanaryError::BadAnswer(format!(
            "reload {} has status {}, which is none of the seven documented ones",
            text::printable(&r.id, MAX_ID),
            text::quoted(&r.status, 40)
        ))
    })
}

fn sanitized(s: &str, max: usize, written: &Redactor) -> String {
    let redacted = written.redact(s);
    text::printable(&redacted, max)
}

fn ended(
    app: String,
    reload: String,
    status: FinalFailure,
    r: &Reload,
    written: &Redactor,
) -> CanaryError {
    let message = r
        .error_message
        .as_deref()
        .filter(|m| !m.is_empty())
        .or(r.log.as_deref().filter(|l| !l.is_empty()))
        .map(|m| sanitized(m, MAX_MESSAGE, written));
    CanaryError::Ended {
        app,
        reload,
        status,
        code: r
            .error_code
            .as_deref()
            .filter(|c| !c.is_empty())
            .map(|c| sanitized(c, MAX_CODE, written)),
        message,
    }
}

fn timed_out(app: String, reload: String, timeout: Duration, last: &Reload) -> CanaryError {
    CanaryError::Timeout {
        app,
        reload,
        timeout,
        last: text::printable(&last.status, 40),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_wait_half_a_second_then_double_up_to_thirty_seconds() {
        let ms: Vec<u128> = poll_delays().take(9).map(|d| d.as_millis()).collect();
        assert_eq!(
            ms,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
    }

    #[test]
    fn only_the_seven_documented_statuses_are_known() {
        for s in ["QUEUED", "RELOADING", "CANCELING"] {
            assert_eq!(parse_status(s), Some(Status::Active), "{s}");
        }
        assert_eq!(parse_status("SUCCEEDED"), Some(Status::Succeeded));
        for s in ["FAILED", "CANCELED", "EXCEEDED_LIMIT"] {
            assert!(matches!(parse_status(s), Some(Status::Final(_))), "{s}");
        }
        for s in ["succeeded", "SUCCEEDED ", "", "DONE"] {
            assert_eq!(parse_status(s), None, "{s:?}");
        }
    }
}
