//! Webhook notifications (`[[notify]]`): the outcome of each connection's run, sent to the
//! configured webhooks as generic JSON or a Slack incoming-webhook body.
//!
//! Fed from the outcome events ([`crate::rotation::Report::emit`] hands each outcome to
//! [`crate::events::Events::notify`]). Rotations never wait on a webhook: outcomes go into a
//! bounded queue ([`QUEUE`]); when it is full the notification is dropped and counted
//! (`notifications_total{result="dropped"}`). One task drains the queue and delivers to every
//! webhook whose `on` list has the outcome.
//!
//! Delivery: a POST with a per-attempt `timeout`; a transport error, a timeout, 429 or 5xx is
//! retried `retries` times with a doubling wait; a redirect is not followed (counted failed);
//! another 4xx is not retried. The answer's body is never read.
//!
//! The payload holds names, ids, labels, the secret's *version id* and the time: never a
//! secret value, and no error message (a message can quote what a server answered). Log lines
//! name the webhook by scheme, host and port only: a webhook URL's path is often its token.

use std::{sync::Arc, time::Duration};

use chrono::SecondsFormat;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::{
    config::notify::{NotifyConfig, NotifyFormat},
    events::{Events, NotificationDelivered},
    metrics::Metrics,
};

/// Notifications waiting to be sent; more are dropped (and counted).
pub const QUEUE: usize = 1024;
/// Longest id or name put in a payload (characters).
const MAX_FIELD: usize = 200;

/// One outcome to tell the webhooks about: a plain value declared with the events (which
/// queue it, [`Events::notify`]); its payloads are built here.
pub use crate::events::Notification;

/// The payloads (an inherent impl may live in any module of the crate: the type is declared in
/// [`crate::events`], below this module, so that `events` need not import `notify`).
impl Notification {
    /// The generic JSON body.
    pub fn json(&self) -> Value {
        let p = |s: &str| crate::text::printable(s, MAX_FIELD);
        json!({
            "source": "qlik-rotator",
            "job": p(&self.job),
            "connection_id": p(&self.connection),
            "outcome": self.outcome,
            "stage": self.stage,
            "error_type": self.error_type,
            "secret_version": self.secret_version.as_deref().map(p),
            "restored_version": self.restored_version.as_deref().map(p),
            "time": self.time.to_rfc3339_opts(SecondsFormat::Millis, true),
        })
    }

    /// A Slack incoming-webhook body: `{"text": …}` with `&`, `<`, `>` escaped as Slack asks.
    pub fn slack(&self) -> Value {
        let p = |s: &str| slack_escape(&crate::text::printable(s, MAX_FIELD));
        let mut text = format!(
            "qlik-rotator: job `{}`, connection `{}`: *{}*",
            p(&self.job),
            p(&self.connection),
            self.outcome
        );
        if let Some(stage) = self.stage {
            text.push_str(&format!(" at {stage}"));
        }
        if let Some(e) = self.error_type {
            text.push_str(&format!(" [{e}]"));
        }
        if let Some(v) = &self.secret_version {
            text.push_str(&format!(", secret version `{}`", p(v)));
        }
        if let Some(v) = &self.restored_version {
            text.push_str(&format!(", restored version `{}`", p(v)));
        }
        text.push_str(&format!(
            " ({})",
            self.time.to_rfc3339_opts(SecondsFormat::Secs, true)
        ));
        json!({ "text": text })
    }
}

/// `&`, `<` and `>` as Slack's message formatting asks (they delimit links and mentions).
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The sending end: cheap to clone; [`Notifier::notify`] never waits.
#[derive(Debug, Clone)]
pub struct Notifier {
    tx: mpsc::Sender<Notification>,
    events: Events,
    /// Outcomes some webhook listens for: only those are queued (a cycle of 10,000
    /// `unchanged` runs must not fill the queue).
    wanted: Arc<Vec<&'static str>>,
}

impl Notifier {
    /// Starts the delivery task for `targets` with a queue of `capacity`; counts in `metrics`
    /// (registering `notifications_total`) when given. The task ends when every [`Notifier`]
    /// is dropped.
    ///
    /// # Errors
    /// The HTTP client could not be built (TLS set-up).
    pub fn spawn(
        targets: Vec<NotifyConfig>,
        metrics: Option<Arc<Metrics>>,
        capacity: usize,
    ) -> Result<(Notifier, tokio::task::JoinHandle<()>), reqwest::Error> {
        let events = match metrics {
            Some(m) => {
                m.register_notify();
                Events::new(m)
            }
            None => Events::log_only(),
        };
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("qlik-rotator/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let mut wanted: Vec<&'static str> = targets.iter().flat_map(|t| t.on.clone()).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let task = tokio::spawn(drain(rx, client, targets, events.clone()));
        Ok((
            Notifier {
                tx,
                events,
                wanted: Arc::new(wanted),
            },
            task,
        ))
    }

    /// Queues `n` for delivery when some webhook listens for its outcome; drops and counts it
    /// when the queue is full.
    pub fn notify(&self, n: Notification) {
        if !self.wanted.contains(&n.outcome) {
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(n)) = self.tx.try_send(n) {
            self.events.emit(NotificationDelivered {
                target: "-",
                job: &n.job,
                outcome: n.outcome,
                result: "dropped",
                attempts: 0,
                error_type: Some("queue_full"),
            });
        }
    }
}

impl crate::events::NotificationSink for Notifier {
    fn notify(&self, n: Notification) {
        Notifier::notify(self, n);
    }
}

async fn drain(
    mut rx: mpsc::Receiver<Notification>,
    client: reqwest::Client,
    targets: Vec<NotifyConfig>,
    events: Events,
) {
    while let Some(n) = rx.recv().await {
        for t in targets.iter().filter(|t| t.on.contains(&n.outcome)) {
            let body = match t.format {
                NotifyFormat::Json => n.json(),
                NotifyFormat::Slack => n.slack(),
            };
            let (result, attempts, error_type) = match deliver(&client, t, &body).await {
                Ok(attempts) => ("sent", attempts, None),
                Err((attempts, e)) => ("failed", attempts, Some(e)),
            };
            events.emit(NotificationDelivered {
                target: &t.target(),
                job: &n.job,
                outcome: n.outcome,
                result,
                attempts,
                error_type,
            });
        }
    }
}

/// POSTs `body` to `t`, retrying as configured. `Ok(attempts)` on a 2xx; else the attempts
/// made and a stable error label.
async fn deliver(
    client: &reqwest::Client,
    t: &NotifyConfig,
    body: &Value,
) -> Result<u32, (u32, &'static str)> {
    let mut delay = t.retry_delay;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut req = client.post(t.url.clone()).timeout(t.timeout).json(body);
        for (name, value) in &t.headers {
            match reqwest::header::HeaderValue::from_str(value.expose_secret()) {
                Ok(mut v) => {
                    v.set_sensitive(true);
                    req = req.header(name.as_str(), v);
                }
                Err(_) => return Err((attempt, "bad_header")),
            }
        }
        // Errors are reduced to labels: reqwest's messages quote the URL (and so a token).
        let (retriable, error_type) = match req.send().await {
            Ok(resp) => {
                let status = resp.status();
                drop(resp);
                if status.is_success() {
                    return Ok(attempt);
                }
                if status.is_redirection() {
                    (false, "redirect_refused")
                } else if status.as_u16() == 429 {
                    (true, "http_429")
                } else if status.is_server_error() {
                    (true, "http_5xx")
                } else {
                    (false, "http_4xx")
                }
            }
            Err(e) if e.is_timeout() => (true, "timeout"),
            Err(_) => (true, "transport"),
        };
        if !retriable || attempt > t.retries {
            return Err((attempt, error_type));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(60));
    }
}
