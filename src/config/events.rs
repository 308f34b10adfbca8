//! `[events]`: where change events for secrets come from (optional).
//!
//! Only `type = "sqs"` exists: an SQS queue fed by an EventBridge rule on Secrets Manager
//! events (see [`crate::triggers::sqs`] for the consumer and `deploy/aws/events.yaml` for the
//! plumbing). Without the table the daemon runs on its schedules alone.

use std::time::Duration;

use super::walk::{Errors, Table, aws_region, base_url};

/// The longest long poll SQS allows (`WaitTimeSeconds` ≤ 20, ReceiveMessage API reference).
pub const MAX_WAIT_TIME: Duration = Duration::from_secs(20);
/// The most messages one `ReceiveMessage` returns (`MaxNumberOfMessages` 1–10).
pub const MAX_MESSAGES: u64 = 10;

/// `[events]`: the configured event source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventsConfig {
    /// `type = "sqs"`.
    Sqs(SqsConfig),
}

/// `[events] type = "sqs"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqsConfig {
    /// `queue_url`: `https://sqs.<region>.amazonaws.com/<account>/<queue>` (http only for a
    /// loopback host).
    pub queue_url: String,
    /// `region`: overrides the AWS default chain's region.
    pub region: Option<String>,
    /// `endpoint_url`: overrides `AWS_ENDPOINT_URL_SQS` and the default endpoint.
    pub endpoint_url: Option<String>,
    /// `wait_time`: the long poll, 1 s to 20 s (default 20 s).
    pub wait_time: Duration,
    /// `max_messages`: messages per receive, 1 to 10 (default 10).
    pub max_messages: u32,
}

/// Reads `[events]`; `None` (with errors pushed) when it is invalid.
pub fn events_section(mut t: Table<'_>, errs: &mut Errors) -> Option<EventsConfig> {
    let kind = t.req_str("type", errs);
    let out = match kind.as_deref() {
        Some("sqs") => sqs(&mut t, errs).map(EventsConfig::Sqs),
        Some(_) => {
            errs.push(t.key_path("type"), "unknown events type (expected \"sqs\")");
            t.allow(&[
                "queue_url",
                "region",
                "endpoint_url",
                "wait_time",
                "max_messages",
            ]);
            None
        }
        None => {
            t.allow(&[
                "queue_url",
                "region",
                "endpoint_url",
                "wait_time",
                "max_messages",
            ]);
            None
        }
    };
    t.finish(errs);
    out
}

fn sqs(t: &mut Table<'_>, errs: &mut Errors) -> Option<SqsConfig> {
    let queue_url = t.req_str("queue_url", errs).and_then(|raw| {
        let checked = check_queue_url(&raw);
        if let Err(why) = &checked {
            errs.push(t.key_path("queue_url"), *why);
        }
        checked.ok().map(|()| raw)
    });
    let region = aws_region(t, "region", errs);
    let endpoint_url = base_url(t, "endpoint_url", errs).map(|(raw, _)| raw);
    let wait_time = t
        .opt_duration("wait_time", Duration::from_secs(1)..=MAX_WAIT_TIME, errs)
        .unwrap_or(MAX_WAIT_TIME);
    let max_messages = t
        .opt_u64("max_messages", 1..=MAX_MESSAGES, errs)
        .unwrap_or(MAX_MESSAGES) as u32;
    Some(SqsConfig {
        queue_url: queue_url?,
        region,
        endpoint_url,
        wait_time,
        max_messages,
    })
}

/// An SQS queue URL: https (http for a loopback host only), a host, no credentials, query
/// or fragment, and the path `/<12-digit account>/<queue name>` (1–80 of `A-Za-z0-9_-`, an
/// optional `.fifo`). Errors never quote the value.
fn check_queue_url(raw: &str) -> Result<(), &'static str> {
    const SHAPE: &str = "expected an SQS queue URL such as \
        \"https://sqs.eu-west-1.amazonaws.com/123456789012/qlik-rotator-events\"";
    let url = reqwest::Url::parse(raw).map_err(|_| SHAPE)?;
    let loopback = url.host_str().is_some_and(|h| {
        h == "localhost"
            || h.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => return Err("must use https (http is allowed only for a loopback host)"),
        _ => return Err(SHAPE),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(SHAPE);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain a user name or password");
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not contain a query (?…) or fragment (#…)");
    }
    let mut parts = url.path().trim_start_matches('/').split('/');
    let (Some(account), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(SHAPE);
    };
    let stem = name.strip_suffix(".fifo").unwrap_or(name);
    let account_ok = account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit());
    let name_ok = (1..=80).contains(&stem.len())
        && stem
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if account_ok && name_ok {
        Ok(())
    } else {
        Err(SHAPE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(table: serde_json::Value) -> (Option<EventsConfig>, Vec<String>) {
        let mut errs = Errors::default();
        let t = Table::new("events", &table, &mut errs).unwrap();
        let out = events_section(t, &mut errs);
        (out, errs.0.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn defaults_and_every_key() {
        let url = "https://sqs.eu-west-1.amazonaws.com/123456789012/qlik-rotator-events";
        let (out, errs) = parse(serde_json::json!({"type": "sqs", "queue_url": url}));
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(
            out.unwrap(),
            EventsConfig::Sqs(SqsConfig {
                queue_url: url.into(),
                region: None,
                endpoint_url: None,
                wait_time: Duration::from_secs(20),
                max_messages: 10,
            })
        );
        let (out, errs) = parse(serde_json::json!({
            "type": "sqs", "queue_url": "http://127.0.0.1:5000/123456789012/q.fifo",
            "region": "us-east-1", "endpoint_url": "http://127.0.0.1:5000",
            "wait_time": "1s", "max_messages": 3
        }));
        assert!(errs.is_empty(), "{errs:?}");
        let EventsConfig::Sqs(c) = out.unwrap();
        assert_eq!((c.wait_time, c.max_messages), (Duration::from_secs(1), 3));
    }

    #[test]
    fn every_bad_key_is_named() {
        let cases: &[(serde_json::Value, &str)] = &[
            (
                serde_json::json!({"queue_url": "https://x/123456789012/q"}),
                "events.type: is required",
            ),
            (
                serde_json::json!({"type": "kafka"}),
                "events.type: unknown events type",
            ),
            (
                serde_json::json!({"type": "sqs"}),
                "events.queue_url: is required",
            ),
            (
                serde_json::json!({"type": "sqs", "queue_url": "http://sqs.example/123456789012/q"}),
                "events.queue_url: must use https",
            ),
            (
                serde_json::json!({"type": "sqs", "queue_url": "https://sqs.example/q"}),
                "events.queue_url: expected an SQS queue URL",
            ),
            (
                serde_json::json!({"type": "sqs", "queue_url": "https://sqs.example/12345/q"}),
                "events.queue_url: expected an SQS queue URL",
            ),
            (
                serde_json::json!({"type": "sqs", "queue_url": "https://sqs.example/123456789012/q/x"}),
                "events.queue_url: expected an SQS queue URL",
            ),
            (
                serde_json::json!({"type": "sqs", "queue_url": "https://sqs.example/123456789012/q%0Aq"}),
                "events.queue_url: expected an SQS queue URL",
            ),
            (
                serde_json::json!({"type": "sqs", "queue_url": "https://u:CANARY-pw@sqs.example/123456789012/q"}),
                "events.queue_url: must not contain a user name",
            ),
            (
                serde_json::json!({"type": "sqs", "queue_url": "https://sqs.example/123456789012/q?x=1"}),
                "events.queue_url: must not contain a query",
            ),
            (
                serde_json::json!({"type": "sqs", "queue_url": "https://sqs.example/123456789012/q", "wait_time": "21s"}),
                "events.wait_time: expected a duration from 1s to 20s",
            ),
            (
                serde_json::json!({"type": "sqs", "queue_url": "https://sqs.example/123456789012/q", "max_messages": 11}),
                "events.max_messages: expected a whole number from 1 to 10",
            ),
            (
                serde_json::json!({"type": "sqs", "queue_url": "https://sqs.example/123456789012/q", "region": "EU WEST"}),
                "events.region: expected an AWS region name",
            ),
            (
                serde_json::json!({"type": "sqs", "queue_url": "https://sqs.example/123456789012/q", "endpoint_url": "ftp://x"}),
                "events.endpoint_url: must be an https:// URL",
            ),
            (
                serde_json::json!({"type": "sqs", "queue_url": "https://sqs.example/123456789012/q", "zzz": 1}),
                "events.zzz: unknown key",
            ),
        ];
        println!("{} cases", cases.len());
        for (table, want) in cases {
            let (out, errs) = parse(table.clone());
            // A bad optional key still yields a table, but the whole config fails on the error.
            let _ = out;
            assert!(
                errs.iter().any(|e| e.starts_with(want)),
                "{table}: {errs:?}"
            );
            assert!(!errs.iter().any(|e| e.contains("CANARY")), "{errs:?}");
        }
    }
}
