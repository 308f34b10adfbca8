//! `[events] type = "sqs"`: long-polls an SQS queue fed by an EventBridge rule on Secrets
//! Manager events, and runs the jobs whose secret changed.
//!
//! # The events (sources)
//! Every EventBridge event is an envelope `{"version", "id", "detail-type", "source",
//! "account", "time", "region", "resources": [...], "detail": {...}}` (EventBridge Events
//! Reference, "Event structure"). Secrets Manager events have `source = "aws.secretsmanager"`;
//! those used here:
//! - **CloudTrail API calls**, `detail-type = "AWS API Call via CloudTrail"`, `detail.eventSource
//!   = "secretsmanager.amazonaws.com"` (Secrets Manager User Guide, "Match Secrets Manager events
//!   with EventBridge" and "AWS CloudTrail entries for Secrets Manager"): `detail.eventName` one
//!   of `PutSecretValue`, `UpdateSecret`, `UpdateSecretVersionStage`, `RotateSecret`; the
//!   secret is `detail.requestParameters.secretId` (a name or an ARN, as the caller gave it),
//!   else `detail.responseElements.arn` (`aRN` in events before February 2024, same guide). A
//!   call CloudTrail records with `detail.errorCode` changed nothing: it is rejected
//!   (`failed_call`).
//! - **Rotation**, `detail-type = "AWS Service Event via CloudTrail"` ("AWS CloudTrail entries
//!   for Secrets Manager", log entries for rotation), `detail.eventName = "RotationSucceeded"`;
//!   the secret is `detail.additionalEventData.SecretId` (assumed from the guide's rotation
//!   entries; medium confidence), else `detail.requestParameters.secretId`, else the
//!   envelope's first `resources` ARN.
//! - **`Secret Label Updated`** (Secrets Manager User Guide, "Secret event notifications"): the
//!   native event when a staging label other than AWSPENDING/AWSPREVIOUS moves; the secret is
//!   the first `resources` ARN, else `detail.name`.
//!
//! The rule in `deploy/aws/events.yaml` forwards exactly these.
//!
//! # Handling
//! A received batch (up to `max_messages`) is handled together: each message is parsed
//! ([`parse_message`]); the jobs its secret maps to ([`super::SecretIndex`]) are run once for
//! the whole batch, their secrets read in one batch ([`super::prefetch`]), through the runner
//! (change detection applies: a duplicate or replay costs one secret read). Then, per message:
//! - every job rotated or was unchanged → `DeleteMessage` (`deleted`);
//! - a job failed or could not run → the message stays; it reappears after the queue's
//!   visibility timeout, and after the queue's `maxReceiveCount` SQS moves it to the DLQ
//!   (`failed`);
//! - no job uses the secret → deleted (`unmatched`);
//! - not a usable event (too large, not JSON, not a Secrets Manager event, an unknown event,
//!   no or a malformed secret id) → deleted (`rejected`, with a reason).
//!
//! The message body is never logged; the event name and the secret id are, escaped.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use aws_sdk_sqs::{
    Client,
    config::{retry::RetryConfig, timeout::TimeoutConfig},
    error::ProvideErrorMetadata,
    types::{Message, QueueAttributeName},
};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::{
    config::events::SqsConfig,
    events::{EventDlqDepth, EventMessage, EventQueueFailed, EventReceived, Events},
    text,
};

/// The largest body read (SQS's own limit is 256 KiB); a larger one is rejected unparsed.
pub const MAX_BODY: usize = 256 * 1024;
/// The longest event name shown in a log line.
const MAX_SHOWN: usize = 64;
/// Wait after a failed receive: doubles from 1 s up to this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How often the DLQ depth is read.
pub const DLQ_EVERY: Duration = Duration::from_secs(60);

/// The CloudTrail API calls that change a secret's value or its labels.
pub const API_CALLS: [&str; 4] = [
    "PutSecretValue",
    "UpdateSecret",
    "UpdateSecretVersionStage",
    "RotateSecret",
];

/// Why a message was deleted unused (`event_messages_rejected_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Larger than [`MAX_BODY`] (or no body at all).
    TooLarge,
    /// Not JSON.
    NotJson,
    /// JSON, but not an EventBridge event from Secrets Manager.
    NotSecretsManager,
    /// A Secrets Manager event this consumer does not act on.
    UnknownEvent,
    /// A CloudTrail record of a call that failed (`errorCode`): nothing changed.
    FailedCall,
    /// No secret id where the event keeps it.
    NoSecret,
    /// A secret id that cannot be one (empty, too long, control characters).
    BadSecretId,
}

impl Reject {
    /// Every reason, for pre-created series.
    pub const ALL: [Reject; 7] = [
        Reject::TooLarge,
        Reject::NotJson,
        Reject::NotSecretsManager,
        Reject::UnknownEvent,
        Reject::FailedCall,
        Reject::NoSecret,
        Reject::BadSecretId,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Reject::TooLarge => "too_large",
            Reject::NotJson => "not_json",
            Reject::NotSecretsManager => "not_secretsmanager",
            Reject::UnknownEvent => "unknown_event",
            Reject::FailedCall => "failed_call",
            Reject::NoSecret => "no_secret",
            Reject::BadSecretId => "bad_secret_id",
        }
    }
}

/// A usable event: its name and the secret it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretEvent {
    /// `PutSecretValue`, `RotationSucceeded`, `Secret Label Updated`, …
    pub name: String,
    /// The secret id (name or ARN), checked with [`super::valid_secret_id`].
    pub secret_id: String,
}

/// Parses one message body. Pure; never panics; the error says why, never what the body held.
///
/// # Errors
/// [`Reject`].
pub fn parse_message(body: &str) -> Result<SecretEvent, (Reject, String)> {
    if body.len() > MAX_BODY {
        return Err((Reject::TooLarge, String::new()));
    }
    let v: Value = serde_json::from_str(body).map_err(|_| (Reject::NotJson, String::new()))?;
    let str_at = |v: &Value, path: &[&str]| -> Option<String> {
        path.iter()
            .try_fold(v, |v, k| v.get(k))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    if str_at(&v, &["source"]).as_deref() != Some("aws.secretsmanager")
        || !v.get("detail").is_some_and(Value::is_object)
    {
        return Err((Reject::NotSecretsManager, String::new()));
    }
    let detail_type = str_at(&v, &["detail-type"]).unwrap_or_default();
    let first_resource = || {
        v.get("resources")
            .and_then(Value::as_array)
            .and_then(|r| r.first())
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let shown = |s: &str| text::printable(s, MAX_SHOWN);
    let (name, id) = match detail_type.as_str() {
        "AWS API Call via CloudTrail" => {
            let name = str_at(&v, &["detail", "eventName"]).unwrap_or_default();
            if !API_CALLS.contains(&name.as_str())
                || str_at(&v, &["detail", "eventSource"]).as_deref()
                    != Some("secretsmanager.amazonaws.com")
            {
                return Err((Reject::UnknownEvent, shown(&name)));
            }
            if v["detail"].get("errorCode").is_some_and(|c| !c.is_null()) {
                return Err((Reject::FailedCall, name));
            }
            let id = str_at(&v, &["detail", "requestParameters", "secretId"])
                .or_else(|| str_at(&v, &["detail", "responseElements", "arn"]))
                .or_else(|| str_at(&v, &["detail", "responseElements", "aRN"]));
            (name, id)
        }
        "AWS Service Event via CloudTrail" => {
            let name = str_at(&v, &["detail", "eventName"]).unwrap_or_default();
            if name != "RotationSucceeded" {
                return Err((Reject::UnknownEvent, shown(&name)));
            }
            let id = str_at(&v, &["detail", "additionalEventData", "SecretId"])
                .or_else(|| str_at(&v, &["detail", "requestParameters", "secretId"]))
                .or_else(first_resource);
            (name, id)
        }
        "Secret Label Updated" => {
            let id = first_resource().or_else(|| str_at(&v, &["detail", "name"]));
            (detail_type.clone(), id)
        }
        other => return Err((Reject::UnknownEvent, shown(other))),
    };
    let Some(id) = id else {
        return Err((Reject::NoSecret, name));
    };
    if !super::valid_secret_id(&id) {
        return Err((Reject::BadSecretId, name));
    }
    Ok(SecretEvent {
        name,
        secret_id: id,
    })
}

/// What the consumer needs of the daemon: the jobs a secret maps to, and a way to run them.
#[async_trait::async_trait]
pub trait EventTarget: Send + Sync {
    /// The jobs (by index) of Secrets Manager sources whose secret is `secret_id`.
    fn jobs_for_event(&self, secret_id: &str) -> Vec<usize>;

    /// Runs `jobs` now (their secrets read in one batch); for each, whether it ended well
    /// (every connection rotated or unchanged). A job that could not run counts as failed.
    async fn run_now(&self, jobs: &[usize]) -> Vec<bool>;
}

/// The SQS consumer.
#[derive(Debug, Clone)]
pub struct SqsConsumer {
    client: Client,
    cfg: SqsConfig,
}

/// A message of a batch that names jobs: deleted once they all succeed.
struct Pending {
    receipt: String,
    event: String,
    secret: String,
    jobs: Vec<usize>,
}

impl SqsConsumer {
    /// The client from the AWS default chain (`AWS_ENDPOINT_URL_SQS`, `AWS_REGION`, …) with
    /// the table's `region` and `endpoint_url` over it; timeouts fit the long poll.
    pub async fn build(cfg: &SqsConfig) -> Self {
        Self::build_with(
            cfg,
            aws_config::defaults(aws_config::BehaviorVersion::latest()),
        )
        .await
    }

    /// [`Self::build`] on a given loader (tests pass fixed credentials).
    pub async fn build_with(cfg: &SqsConfig, loader: aws_config::ConfigLoader) -> Self {
        let sdk = crate::secrets::aws::sdk_config(
            loader,
            cfg.region.as_deref(),
            cfg.endpoint_url.as_deref(),
        )
        .await;
        let conf = aws_sdk_sqs::config::Builder::from(&sdk)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(cfg.wait_time + Duration::from_secs(10))
                    .build(),
            )
            .retry_config(RetryConfig::standard().with_max_attempts(3))
            .build();
        SqsConsumer {
            client: Client::from_conf(conf),
            cfg: cfg.clone(),
        }
    }

    /// Polls until `cancel`; each batch is handled before the next receive.
    pub async fn run(
        self,
        target: Arc<dyn EventTarget>,
        events: Events,
        cancel: CancellationToken,
    ) {
        if let Some(m) = events.metrics() {
            m.register_events(&Reject::ALL.map(Reject::label));
        }
        tracing::info!(queue = %text::printable(&self.cfg.queue_url, 256), "Consuming secret change events.");
        let dlq = self.dlq_url().await;
        let mut next_dlq_check = tokio::time::Instant::now();
        let mut backoff = Duration::from_secs(1);
        loop {
            if let Some(dlq) = &dlq
                && tokio::time::Instant::now() >= next_dlq_check
            {
                next_dlq_check = tokio::time::Instant::now() + DLQ_EVERY;
                if let Some(n) = self.depth(dlq).await {
                    events.emit(EventDlqDepth(n));
                }
            }
            let receive = self
                .client
                .receive_message()
                .queue_url(&self.cfg.queue_url)
                .wait_time_seconds(self.cfg.wait_time.as_secs() as i32)
                .max_number_of_messages(self.cfg.max_messages as i32)
                .send();
            let received = tokio::select! {
                r = receive => r,
                () = cancel.cancelled() => return,
            };
            let messages = match received {
                Ok(out) => {
                    backoff = Duration::from_secs(1);
                    out.messages.unwrap_or_default()
                }
                Err(e) => {
                    events.emit(EventQueueFailed {
                        operation: "ReceiveMessage",
                        error: &error_text(&e),
                        retry_in: backoff,
                    });
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = cancel.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            if !messages.is_empty() {
                self.handle(messages, target.as_ref(), &events).await;
            }
        }
    }

    /// Handles one received batch (see the module docs).
    pub async fn handle(&self, messages: Vec<Message>, target: &dyn EventTarget, events: &Events) {
        let mut pending = Vec::new();
        for m in messages {
            if let Some(p) = self.triage(m, target, events).await {
                pending.push(p);
            }
        }
        if !pending.is_empty() {
            self.run_pending(pending, target, events).await;
        }
    }

    /// One received message: rejected or unmatched ones are deleted and counted here; one
    /// that names jobs is returned, to be run with the rest of its batch.
    async fn triage(
        &self,
        m: Message,
        target: &dyn EventTarget,
        events: &Events,
    ) -> Option<Pending> {
        events.emit(EventReceived);
        // Cannot be deleted without one; SQS always sends one.
        let receipt = m.receipt_handle?;
        let parsed = match m.body.as_deref() {
            None => Err((Reject::TooLarge, String::new())),
            Some(body) => parse_message(body),
        };
        let event = match parsed {
            Ok(e) => e,
            Err((reason, name)) => {
                self.delete(&receipt, events).await;
                events.emit(EventMessage {
                    result: "rejected",
                    reason: Some(reason.label()),
                    event: &text::printable(&name, MAX_SHOWN),
                    secret: "",
                    jobs: 0,
                    failed: 0,
                });
                return None;
            }
        };
        let secret = text::printable(&event.secret_id, 256);
        let jobs = target.jobs_for_event(&event.secret_id);
        if jobs.is_empty() {
            self.delete(&receipt, events).await;
            events.emit(EventMessage {
                result: "unmatched",
                reason: None,
                event: &event.name,
                secret: &secret,
                jobs: 0,
                failed: 0,
            });
            return None;
        }
        Some(Pending {
            receipt,
            event: event.name,
            secret,
            jobs,
        })
    }

    /// Runs the jobs of a batch's messages once (each job once however many messages name
    /// it), then deletes each message whose jobs all succeeded.
    async fn run_pending(&self, pending: Vec<Pending>, target: &dyn EventTarget, events: &Events) {
        let all: Vec<usize> = pending
            .iter()
            .flat_map(|p| p.jobs.iter().copied())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let ok = target.run_now(&all).await;
        for p in pending {
            let failed = p
                .jobs
                .iter()
                .filter(|j| {
                    all.binary_search(j)
                        .ok()
                        .and_then(|at| ok.get(at))
                        .is_none_or(|ok| !ok)
                })
                .count();
            if failed == 0 {
                self.delete(&p.receipt, events).await;
            }
            events.emit(EventMessage {
                result: if failed == 0 { "deleted" } else { "failed" },
                reason: None,
                event: &p.event,
                secret: &p.secret,
                jobs: p.jobs.len(),
                failed,
            });
        }
    }

    async fn delete(&self, receipt: &str, events: &Events) {
        let sent = self
            .client
            .delete_message()
            .queue_url(&self.cfg.queue_url)
            .receipt_handle(receipt)
            .send()
            .await;
        if let Err(e) = sent {
            events.emit(EventQueueFailed {
                operation: "DeleteMessage",
                error: &error_text(&e),
                retry_in: Duration::ZERO,
            });
        }
    }

    /// The URL of the queue's DLQ (from its `RedrivePolicy`), if it has one and it can be read.
    async fn dlq_url(&self) -> Option<String> {
        let attrs = self
            .client
            .get_queue_attributes()
            .queue_url(&self.cfg.queue_url)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .send()
            .await
            .ok()?
            .attributes?;
        let policy: Value =
            serde_json::from_str(attrs.get(&QueueAttributeName::RedrivePolicy)?).ok()?;
        let arn = policy.get("deadLetterTargetArn")?.as_str()?;
        // arn:aws:sqs:<region>:<account>:<name>
        let parts: Vec<&str> = arn.split(':').collect();
        let [_, _, "sqs", _, account, name] = parts.as_slice() else {
            return None;
        };
        self.client
            .get_queue_url()
            .queue_name(*name)
            .queue_owner_aws_account_id(*account)
            .send()
            .await
            .ok()?
            .queue_url
    }

    /// `ApproximateNumberOfMessages` of `queue`.
    async fn depth(&self, queue: &str) -> Option<i64> {
        self.client
            .get_queue_attributes()
            .queue_url(queue)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .ok()?
            .attributes?
            .get(&QueueAttributeName::ApproximateNumberOfMessages)?
            .parse()
            .ok()
    }
}

/// An SDK error as escaped text: the AWS code and message, or the error chain.
fn error_text<E: ProvideErrorMetadata + std::error::Error + 'static>(
    e: &aws_sdk_sqs::error::SdkError<E, aws_sdk_sqs::config::http::HttpResponse>,
) -> String {
    let text = match (e.code(), e.message()) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.to_owned(),
        _ => {
            let mut parts = vec![e.to_string()];
            let mut next = std::error::Error::source(e);
            while let Some(s) = next {
                parts.push(s.to_string());
                next = s.source();
            }
            parts.join(": ")
        }
    };
    text::printable(&text, 512)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(detail_type: &str, detail: Value) -> String {
        serde_json::json!({
            "version": "0", "id": "e1", "detail-type": detail_type,
            "source": "aws.secretsmanager", "account": "123456789012",
            "time": "2026-11-30T10:00:00Z", "region": "us-east-1",
            "resources": ["arn:aws:secretsmanager:us-east-1:123456789012:secret:res-AbC123"],
            "detail": detail,
        })
        .to_string()
    }

    fn api(name: &str, params: Value) -> String {
        envelope(
            "AWS API Call via CloudTrail",
            serde_json::json!({"eventSource": "secretsmanager.amazonaws.com", "eventName": name, "requestParameters": params}),
        )
    }

    #[test]
    fn each_supported_event_names_its_secret() {
        for name in API_CALLS {
            let e = parse_message(&api(name, serde_json::json!({"secretId": "app/db"}))).unwrap();
            assert_eq!((e.name.as_str(), e.secret_id.as_str()), (name, "app/db"));
        }
        let e = parse_message(&envelope(
            "AWS API Call via CloudTrail",
            serde_json::json!({"eventSource": "secretsmanager.amazonaws.com", "eventName": "UpdateSecret",
                "requestParameters": null, "responseElements": {"aRN": "arn:x:secret:y"}}),
        ))
        .unwrap();
        assert_eq!(e.secret_id, "arn:x:secret:y");
        let e = parse_message(&envelope(
            "AWS Service Event via CloudTrail",
            serde_json::json!({"eventName": "RotationSucceeded", "additionalEventData": {"SecretId": "arn:rot"}}),
        ))
        .unwrap();
        assert_eq!(
            (e.name.as_str(), e.secret_id.as_str()),
            ("RotationSucceeded", "arn:rot")
        );
        let e = parse_message(&envelope(
            "AWS Service Event via CloudTrail",
            serde_json::json!({"eventName": "RotationSucceeded"}),
        ))
        .unwrap();
        assert!(e.secret_id.ends_with(":secret:res-AbC123"));
        let e = parse_message(&envelope(
            "Secret Label Updated",
            serde_json::json!({"name": "res", "labelUpdated": "AWSCURRENT", "versionId": "v"}),
        ))
        .unwrap();
        assert!(e.secret_id.ends_with(":secret:res-AbC123"));
    }

    /// Hostile message bodies (some holding `canary`) and the reason each is rejected for.
    fn hostile_cases(canary: &str) -> Vec<(String, Reject)> {
        vec![
            ("x".repeat(MAX_BODY + 1), Reject::TooLarge),
            (format!("not json {canary}"), Reject::NotJson),
            ("[".repeat(10_000), Reject::NotJson),
            (
                format!("{{\"password\":\"{canary}\"}}"),
                Reject::NotSecretsManager,
            ),
            ("[]".into(), Reject::NotSecretsManager),
            (
                serde_json::json!({"source": "aws.s3", "detail": {}}).to_string(),
                Reject::NotSecretsManager,
            ),
            (
                serde_json::json!({"source": "aws.secretsmanager", "detail": "x"}).to_string(),
                Reject::NotSecretsManager,
            ),
            (
                api("GetSecretValue", serde_json::json!({"secretId": "a"})),
                Reject::UnknownEvent,
            ),
            (
                api("DeleteSecret", serde_json::json!({"secretId": "a"})),
                Reject::UnknownEvent,
            ),
            (
                envelope("Odd\nType", serde_json::json!({})),
                Reject::UnknownEvent,
            ),
            (
                envelope(
                    "AWS Service Event via CloudTrail",
                    serde_json::json!({"eventName": "RotationFailed"}),
                ),
                Reject::UnknownEvent,
            ),
            (
                envelope(
                    "AWS API Call via CloudTrail",
                    serde_json::json!({"eventSource": "evil.example", "eventName": "PutSecretValue", "requestParameters": {"secretId": "a"}}),
                ),
                Reject::UnknownEvent,
            ),
            (
                envelope(
                    "AWS API Call via CloudTrail",
                    serde_json::json!({"eventSource": "secretsmanager.amazonaws.com", "eventName": "PutSecretValue", "errorCode": "AccessDenied", "requestParameters": {"secretId": "a"}}),
                ),
                Reject::FailedCall,
            ),
            (
                api("PutSecretValue", serde_json::json!({})),
                Reject::NoSecret,
            ),
            (
                api("PutSecretValue", serde_json::json!({"secretId": 42})),
                Reject::NoSecret,
            ),
            (
                api("PutSecretValue", serde_json::json!({"secretId": ""})),
                Reject::BadSecretId,
            ),
            (
                api(
                    "PutSecretValue",
                    serde_json::json!({"secretId": "a\u{1b}[2Jb"}),
                ),
                Reject::BadSecretId,
            ),
            (
                api(
                    "PutSecretValue",
                    serde_json::json!({"secretId": "a".repeat(5000)}),
                ),
                Reject::BadSecretId,
            ),
        ]
    }

    #[test]
    fn hostile_messages_are_rejected_with_a_reason() {
        let canary = "CANARY-sqs-body-5521";
        let cases = hostile_cases(canary);
        println!("{} cases", cases.len());
        for (body, want) in cases {
            let (got, shown) = parse_message(&body).unwrap_err();
            assert_eq!(got, want, "{}", &body[..body.len().min(200)]);
            assert!(!shown.contains(canary) && !shown.contains('\n'), "{shown}");
        }
    }
}
