//! The one per-request retry policy of the Qlik client: which [`QlikError`]s are tried again
//! (the classifier), how long to wait in between (`Retry-After`, else exponential backoff
//! through `backon` with jitter), and the single loop every request goes through (the data
//! API calls and the OAuth token request alike).

use std::{future::Future, time::Duration};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use rand::Rng;

use super::{client::RequestObserver, error::QlikError, gate::WriteGate};

/// The wait after a 429 that carries no (usable) `Retry-After`. Assumed: Qlik documents
/// `Retry-After` on 429 but no default.
pub const RATE_LIMITED_DEFAULT_WAIT: Duration = Duration::from_secs(1);

/// Retry bounds for retriable failures (429, 5xx, timeouts, connection errors).
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Total attempts per request, including the first (`qlik.max_attempts`).
    pub max_attempts: u32,
    /// First backoff delay; doubles each attempt, then jittered to 50–100 %.
    pub base_delay: Duration,
    /// Cap on one backoff delay (before jitter).
    pub max_delay: Duration,
    /// A `Retry-After` longer than this is not waited for: the request fails instead.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// The classifier: whether the same request may succeed when sent again. Retried: 429,
    /// 5xx, timeouts and dropped connections. Final: 3xx (never followed), 4xx other than
    /// 429, oversized and undecodable bodies, token and lookup failures.
    pub fn should_retry(error: &QlikError) -> bool {
        match error {
            QlikError::Status { status, .. } => *status == 429 || (500..=599).contains(status),
            QlikError::Transport { .. } => true,
            QlikError::Token(_)
            | QlikError::Decode { .. }
            | QlikError::NameNotFound { .. }
            | QlikError::NameAmbiguous { .. }
            | QlikError::Space { .. }
            | QlikError::Redirect { .. }
            | QlikError::TooLarge { .. } => false,
        }
    }

    /// The schedule of one logical request (its attempt count and backoff sequence).
    pub fn schedule(&self) -> Schedule<'_> {
        Schedule {
            policy: self,
            attempt: 0,
            backoff: ExponentialBuilder::default()
                .with_min_delay(self.base_delay)
                .with_max_delay(self.max_delay)
                .with_factor(2.0)
                .without_max_times()
                .build(),
        }
    }
}

/// Where one request stands in its [`RetryPolicy`]: how many attempts failed so far, and the
/// backoff for the next wait.
#[derive(Debug)]
pub struct Schedule<'a> {
    policy: &'a RetryPolicy,
    attempt: u32,
    backoff: ExponentialBackoff,
}

impl Schedule<'_> {
    /// Attempts that failed so far.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Records one failed attempt and says how long to wait before the next one, or `None`
    /// when the request fails now: the error is final, the attempts are used up, or the
    /// server's `Retry-After` exceeds `max_retry_after`. A `Retry-After` wins over the
    /// backoff; a 429 without one waits [`RATE_LIMITED_DEFAULT_WAIT`].
    pub fn next_delay(&mut self, error: &QlikError) -> Option<Duration> {
        self.attempt += 1;
        // The backoff advances on every failure, so the n-th retry's backoff is always
        // base × 2ⁿ⁻¹ (capped), whatever the earlier waits were.
        let backoff = self.backoff.next().unwrap_or(self.policy.max_delay);
        if !RetryPolicy::should_retry(error) || self.attempt >= self.policy.max_attempts {
            return None;
        }
        match error.retry_after() {
            Some(ra) if ra > self.policy.max_retry_after => None,
            Some(ra) => Some(ra),
            None if error.status() == Some(429) => Some(RATE_LIMITED_DEFAULT_WAIT),
            None => Some(backoff.mul_f64(rand::rng().random_range(0.5..=1.0))),
        }
    }
}

/// What the retry loop needs to know about a request besides its attempts.
pub struct Request<'a> {
    /// HTTP method, for the log.
    pub method: &'static str,
    /// Endpoint template, for the log.
    pub endpoint: &'static str,
    /// The gate of this request's tier (Tier 1 reads, Tier 2 writes): a 429 pauses it for
    /// every caller of that tier instead of this request sleeping (Qlik blocks the whole tier
    /// while a `Retry-After` runs). The attempt itself acquires the gate.
    pub gate: Option<&'a WriteGate>,
    /// Told of every 429.
    pub observer: Option<&'a dyn RequestObserver>,
}

/// Runs `attempt` until it succeeds or the policy says stop; returns the last error then.
/// Between attempts it waits the policy's delay: a 429 on a gated request pauses the gate
/// (the next attempt's `acquire` waits), anything else sleeps.
///
/// # Errors
/// The last attempt's [`QlikError`].
pub async fn run<T, F, Fut>(
    policy: &RetryPolicy,
    request: &Request<'_>,
    mut attempt: F,
) -> Result<T, QlikError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, QlikError>>,
{
    let mut schedule = policy.schedule();
    loop {
        let err = match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let Some(delay) = schedule.next_delay(&err) else {
            return Err(err);
        };
        let rate_limited = err.status() == Some(429);
        if rate_limited && let Some(o) = request.observer {
            o.rate_limited();
        }
        tracing::warn!(
            method = request.method,
            endpoint = request.endpoint,
            attempt = schedule.attempt(),
            error_type = err.error_type(),
            delay_ms = delay.as_millis() as u64,
            "Qlik request failed; retrying."
        );
        match request.gate {
            // Qlik blocks the whole tier: hold back every caller of it, not only this one.
            Some(gate) if rate_limited => gate.pause(delay),
            _ => tokio::time::sleep(delay).await,
        }
    }
}

#[cfg(test)]
mod tests;
