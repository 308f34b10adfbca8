//! The state of each job: `qlik-rotator status` and the admin API's `GET /jobs`,
//! `GET /jobs/{name}` share [`JobStatus`], built by [`job_status`] from the job's config, the
//! applied versions and its newest attempts (the audit trail).
//!
//! The command (in [`crate::history`]) reads the state store without taking the daemon's lock,
//! so it works while the daemon runs, with SQLite and DynamoDB alike. Nothing is sent to Qlik and
//! no vault is read. Every text field is escaped ([`text::printable`]) and capped: job names
//! come from the config file, versions and connection ids from the vault and the state store.
//! No secret value is known here: only version ids and times.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{
    config::{Config, ConnectionRef, JobConfig, Target},
    state::{Attempt, JobState},
    text,
};

/// The most characters of one text field.
const MAX_FIELD: usize = 256;

/// How many of a job's newest attempts are read to find its last attempt, last success and
/// last error (an error older than that many attempts is not shown; the state's applied
/// version and time still are).
pub const ATTEMPTS_PER_JOB: usize = 500;

/// A scheduled tick counts as missed when no attempt followed it within the job's jitter plus
/// this margin (a run takes seconds; the margin absorbs a busy rotation slot).
pub const MISSED_MARGIN_SECS: i64 = 300;

/// A point in time, in both forms scripts want.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stamp {
    /// RFC 3339, UTC, seconds.
    pub at: String,
    /// Unix milliseconds.
    pub at_ms: i64,
}

impl Stamp {
    /// The stamp of `at_ms` (Unix milliseconds).
    pub fn from_ms(at_ms: i64) -> Self {
        Stamp {
            at: time(at_ms),
            at_ms,
        }
    }
}

fn time(at_ms: i64) -> String {
    DateTime::from_timestamp_millis(at_ms).map_or_else(
        || at_ms.to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}

/// The last attempt on a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastAttempt {
    /// When it ended.
    #[serde(flatten)]
    pub when: Stamp,
    /// Its outcome label (`rotated`, `unchanged`, `failed`, `verify_failed`, …).
    pub outcome: String,
    /// The secret version it read (an id, never a value).
    pub secret_version: Option<String>,
}

/// The last failed attempt on a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastError {
    /// When it ended.
    #[serde(flatten)]
    pub when: Stamp,
    /// Its outcome label.
    pub outcome: String,
    /// The stage that failed (`fetch`, `patch`, `verify`, …).
    pub stage: Option<String>,
    /// The low-cardinality error type of the metrics.
    pub error_type: Option<String>,
}

/// The last success on a connection: an attempt that rotated or found the version current,
/// or (when the audit trail has none) what the state's applied version says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastSuccess {
    /// When.
    #[serde(flatten)]
    pub when: Stamp,
    /// `rotated` or `unchanged`.
    pub outcome: String,
    /// `attempts` (the audit trail) or `state` (the applied version's record).
    pub from: &'static str,
}

/// One connection of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionStatus {
    /// The connection as configured (its id, or `space/name`; `tenant:…` for a connection in
    /// another tenant than its job's).
    pub connection: String,
    /// Its tenant (`default` for the one `[qlik]` table).
    pub tenant: String,
    /// Its id, when a run resolved it.
    pub connection_id: Option<String>,
    /// The newest attempt.
    pub last_attempt: Option<LastAttempt>,
    /// The newest success.
    pub last_success: Option<LastSuccess>,
    /// The newest failure (it may be older than the last success).
    pub last_error: Option<LastError>,
    /// The secret version last applied and verified (an id, never a value).
    pub applied_version: Option<String>,
    /// When it was applied.
    pub applied_at: Option<Stamp>,
    /// A version that failed verification or its canary and is not applied again until the
    /// vault's version changes.
    pub failed_version: Option<String>,
}

/// One job. New fields may be added (within `qlik-rotator.status/v1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobStatus {
    /// The job's name.
    pub job: String,
    /// The connector (`datasourceID`).
    pub connector: String,
    /// What starts its runs: `schedule`, `at_start` (`run_on_start`), `events` (`[events]`
    /// delivers its secret's changes); empty when it runs only on demand.
    pub triggers: Vec<&'static str>,
    /// The cron schedule (6 fields, with seconds), if any.
    pub schedule: Option<String>,
    /// Its time zone.
    pub timezone: String,
    /// The next scheduled run (before jitter).
    pub next_due: Option<Stamp>,
    /// The next run in words: a time, `at start`, `event-driven` or `on demand only`.
    pub due: String,
    /// A scheduled tick after the job's last attempt that left no attempt within the job's
    /// jitter plus [`MISSED_MARGIN_SECS`] (the daemon was down, the job skipped, or another
    /// replica did not run it); `None` when none or never attempted.
    pub missed_tick: Option<Stamp>,
    /// When the secret version last read was created in its vault, when known.
    pub secret_created: Option<Stamp>,
    /// The credential's own age in seconds (now − `secret_created`), when known.
    pub credential_age_seconds: Option<i64>,
    /// Whether a run of the job is in progress (the daemon only; `None` elsewhere).
    pub running: Option<bool>,
    /// Whether every connection passed pre-flight (the daemon only; `None` elsewhere).
    pub preflight_ok: Option<bool>,
    /// One entry per configured connection, in config order.
    pub connections: Vec<ConnectionStatus>,
}

/// What [`job_status`] needs besides the job.
#[derive(Debug, Clone, Copy)]
pub struct Known<'a> {
    /// Every state key's record.
    pub state: &'a BTreeMap<String, JobState>,
    /// The job's newest attempts, newest first.
    pub attempts: &'a [Attempt],
    /// `[events]` delivers the job's secret changes.
    pub event_driven: bool,
    /// When its secret version was created (Unix seconds), when known.
    pub secret_created: Option<i64>,
    /// Now.
    pub now: DateTime<Utc>,
}

fn field(s: &str) -> String {
    text::printable(s, MAX_FIELD)
}

fn is_success(outcome: &str) -> bool {
    matches!(outcome, "rotated" | "unchanged")
}

/// The status of `job` from what is known about it.
pub fn job_status(job: &JobConfig, k: Known<'_>) -> JobStatus {
    let connections: Vec<ConnectionStatus> = (job.connections.iter())
        .map(|c| connection_status(job, c, &k))
        .collect();
    let last_attempt_ms = (k.attempts.iter()).map(|a| a.at_ms).max();
    let due = due(job, k.event_driven, last_attempt_ms, k.now);
    let now_s = k.now.timestamp();
    // A creation time in the future (clock skew, a hostile source) gives no age.
    let created = k.secret_created.filter(|c| *c > 0 && *c <= now_s + 300);
    JobStatus {
        job: field(&job.name),
        connector: field(job.connector()),
        triggers: due.triggers,
        schedule: job.schedule.as_deref().map(field),
        timezone: job.timezone.name().to_owned(),
        next_due: due.next,
        due: due.text,
        missed_tick: due.missed,
        secret_created: created.map(|c| Stamp::from_ms(c.saturating_mul(1000))),
        credential_age_seconds: created.map(|c| now_s.saturating_sub(c).max(0)),
        running: None,
        preflight_ok: None,
        connections,
    }
}

fn connection_status(job: &JobConfig, conn: &Target, k: &Known<'_>) -> ConnectionStatus {
    let state = (k.state.get(&job.state_key(conn))).filter(|s| s.applies_to(conn));
    let key = conn.key();
    let ours = |a: &&Attempt| {
        job.connections.len() == 1
            || a.connection == key
            || state.is_some_and(|s| s.connection_id == a.connection)
    };
    let mine: Vec<&Attempt> = k.attempts.iter().filter(ours).collect();
    let newest = |pick: &dyn Fn(&Attempt) -> bool| -> Option<&Attempt> {
        (mine.iter().copied())
            .filter(|a| pick(a))
            .max_by_key(|a| a.at_ms)
    };
    let last_attempt = newest(&|_| true).map(|a| LastAttempt {
        when: Stamp::from_ms(a.at_ms),
        outcome: field(&a.outcome),
        secret_version: a.secret_version.as_deref().map(field),
    });
    let last_error = newest(&|a| !is_success(&a.outcome)).map(|a| LastError {
        when: Stamp::from_ms(a.at_ms),
        outcome: field(&a.outcome),
        stage: a.stage.as_deref().map(field),
        error_type: a.error_type.as_deref().map(field),
    });
    let from_attempts = newest(&|a| is_success(&a.outcome)).map(|a| LastSuccess {
        when: Stamp::from_ms(a.at_ms),
        outcome: field(&a.outcome),
        from: "attempts",
    });
    let from_state = state.and_then(|s| {
        let at = s.last_known_current(k.now.timestamp())?;
        Some(LastSuccess {
            when: Stamp::from_ms(at.saturating_mul(1000)),
            outcome: if at == s.applied_at {
                "rotated"
            } else {
                "unchanged"
            }
            .to_owned(),
            from: "state",
        })
    });
    let last_success = match (from_attempts, from_state) {
        (Some(a), Some(s)) if s.when.at_ms > a.when.at_ms => Some(s),
        (Some(a), _) => Some(a),
        (None, s) => s,
    };
    let connection_id = state
        .map(|s| s.connection_id.clone())
        .or_else(|| matches!(conn.conn, ConnectionRef::Id(_)).then(|| key.clone()))
        .or_else(|| mine.first().map(|a| a.connection.clone()))
        .filter(|id| !id.is_empty());
    ConnectionStatus {
        connection: field(&key),
        tenant: conn.tenant.to_string(),
        connection_id: connection_id.as_deref().map(field),
        last_attempt,
        last_success,
        last_error,
        applied_version: state.map(|s| field(&s.applied_version)),
        applied_at: state
            .filter(|s| s.applied_at > 0)
            .map(|s| Stamp::from_ms(s.applied_at.saturating_mul(1000))),
        failed_version: state.and_then(|s| s.failed_version.as_deref().map(field)),
    }
}

struct Due {
    triggers: Vec<&'static str>,
    next: Option<Stamp>,
    text: String,
    missed: Option<Stamp>,
}

/// When `job` runs next, in words and as a time, and a scheduled tick missed since its last
/// attempt (`last_attempt_ms`).
fn due(
    job: &JobConfig,
    event_driven: bool,
    last_attempt_ms: Option<i64>,
    now: DateTime<Utc>,
) -> Due {
    let mut triggers = Vec::new();
    let mut next = None;
    let mut missed = None;
    if let Some(cron) = job.schedule.as_deref().and_then(parse_cron) {
        triggers.push("schedule");
        let local = now.with_timezone(&job.timezone);
        next = (cron.find_next_occurrence(&local, false).ok())
            .map(|t| Stamp::from_ms(t.timestamp_millis()));
        let jitter = i64::try_from(job.jitter.as_secs()).unwrap_or(i64::MAX);
        let settled = now
            - chrono::Duration::seconds(
                jitter.saturating_add(MISSED_MARGIN_SECS).min(366 * 86_400),
            );
        let prev = cron
            .find_previous_occurrence(&settled.with_timezone(&job.timezone), true)
            .ok()
            .map(|t| t.timestamp_millis());
        if let (Some(prev), Some(last)) = (prev, last_attempt_ms)
            && prev > last
        {
            missed = Some(Stamp::from_ms(prev));
        }
    }
    if job.run_on_start {
        triggers.push("at_start");
    }
    if event_driven {
        triggers.push("events");
    }
    let mut words: Vec<String> = Vec::new();
    if let Some(n) = &next {
        words.push(if job.jitter.is_zero() {
            n.at.clone()
        } else {
            format!("{} (+ up to {}s jitter)", n.at, job.jitter.as_secs())
        });
    }
    if job.run_on_start {
        words.push("at start".to_owned());
    }
    if event_driven {
        words.push("event-driven".to_owned());
    }
    let text = if words.is_empty() {
        "on demand only".to_owned()
    } else {
        words.join("; ")
    };
    Due {
        triggers,
        next,
        text,
        missed,
    }
}

fn parse_cron(s: &str) -> Option<croner::Cron> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .build()
        .parse(s)
        .ok()
}

/// Whether `[events]` delivers the changes of `job`'s secret (an SQS consumer runs the jobs
/// of Secrets Manager sources).
pub fn event_driven(cfg: &Config, job: &JobConfig) -> bool {
    cfg.events.is_some()
        && cfg.sources.get(&job.source).map(|s| s.kind()) == Some("aws_secrets_manager")
}

/// The `--output json` document body: `{"generated_at": …, "jobs": [...]}`.
pub fn to_json(jobs: &[JobStatus], now: DateTime<Utc>) -> serde_json::Value {
    serde_json::json!({
        "generated_at": Stamp::from_ms(now.timestamp_millis()),
        "jobs": jobs,
    })
}

fn age(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn or_dash(s: Option<String>) -> String {
    s.unwrap_or_else(|| "-".to_owned())
}

/// The table: a header, then one aligned line per connection.
pub fn table(jobs: &[JobStatus]) -> Vec<String> {
    const HEADER: [&str; 8] = [
        "JOB",
        "CONNECTION",
        "LAST ATTEMPT",
        "LAST SUCCESS",
        "LAST ERROR",
        "VERSION",
        "CREDENTIAL AGE",
        "NEXT DUE",
    ];
    let mut cells: Vec<[String; 8]> = vec![HEADER.map(str::to_owned)];
    for j in jobs {
        for c in &j.connections {
            let due = match &j.missed_tick {
                Some(m) => format!("{} (missed {})", j.due, m.at),
                None => j.due.clone(),
            };
            let connection = match c.tenant.as_str() {
                crate::config::DEFAULT_TENANT => c.connection.clone(),
                t => format!("{} (tenant {t})", c.connection),
            };
            cells.push([
                j.job.clone(),
                connection,
                or_dash(
                    c.last_attempt
                        .as_ref()
                        .map(|a| format!("{} {}", a.when.at, a.outcome)),
                ),
                or_dash(c.last_success.as_ref().map(|s| s.when.at.clone())),
                or_dash(c.last_error.as_ref().map(|e| {
                    format!(
                        "{} {}/{}",
                        e.when.at,
                        e.stage.as_deref().unwrap_or("-"),
                        e.error_type.as_deref().unwrap_or("-")
                    )
                })),
                or_dash(c.applied_version.clone()),
                or_dash(j.credential_age_seconds.map(age)),
                due,
            ]);
        }
    }
    align(&cells)
}

/// Aligned columns, two spaces apart (the last column unpadded).
fn align<const N: usize>(cells: &[[String; N]]) -> Vec<String> {
    let mut widths = [0usize; N];
    for row in cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    (cells.iter())
        .map(|row| {
            let mut line = String::new();
            for (i, (c, w)) in row.iter().zip(widths).enumerate() {
                line.push_str(c);
                if i + 1 < N {
                    line.extend(std::iter::repeat_n(' ', w - c.chars().count() + 2));
                }
            }
            line
        })
        .collect()
}

#[cfg(test)]
mod tests;
