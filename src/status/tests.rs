use std::{collections::HashMap, path::Path};

use super::*;

const C1: &str = "00000000-0000-4000-8000-000000000001";
const C2: &str = "00000000-0000-4000-8000-000000000002";

fn job(name: &str, extra: &str) -> JobConfig {
    let text = format!(
        "[qlik]\ntenant_url = \"https://t.eu.qlikcloud.com\"\napi_key_env = \"K\"\n\
         [sources.f]\ntype = \"file\"\npath = \"/v\"\n\
         [[jobs]]\nname = \"{name}\"\nconnector = \"mssql\"\nsource = \"f\"\nsecret = \"s\"\n{extra}\n"
    );
    crate::config::load_str(&text, Path::new("/"), &HashMap::new())
        .expect("valid config")
        .jobs
        .remove(0)
}

fn one(extra: &str) -> JobConfig {
    job("j", &format!("connection = {{ id = \"{C1}\" }}\n{extra}"))
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn attempt(at_ms: i64, connection: &str, outcome: &str) -> Attempt {
    Attempt {
        at_ms,
        job: "j".into(),
        connection: connection.into(),
        outcome: outcome.into(),
        stage: (outcome != "rotated" && outcome != "unchanged").then(|| "patch".into()),
        error_type: (outcome != "rotated" && outcome != "unchanged").then(|| "forbidden".into()),
        secret_version: Some("v1".into()),
        duration_ms: 5,
    }
}

fn status(
    job: &JobConfig,
    state: &BTreeMap<String, JobState>,
    attempts: &[Attempt],
    now: DateTime<Utc>,
) -> JobStatus {
    job_status(
        job,
        Known {
            state,
            attempts,
            event_driven: false,
            secret_created: None,
            now,
        },
    )
}

#[test]
fn the_next_due_time_follows_the_schedule_in_its_time_zone() {
    let now = at("2026-12-01T10:20:00Z");
    let j = one("schedule = \"0 0 * * * *\"\ntimezone = \"Asia/Kolkata\"");
    let s = status(&j, &BTreeMap::new(), &[], now);
    // Kolkata is UTC+5:30: its full hours fall at :30 UTC.
    assert_eq!(s.next_due.unwrap().at, "2026-12-01T10:30:00Z");
    assert_eq!(s.due, "2026-12-01T10:30:00Z");
    assert_eq!(s.triggers, ["schedule"]);
    assert_eq!(s.timezone, "Asia/Kolkata");
    assert!(
        s.missed_tick.is_none(),
        "never attempted: nothing to call missed"
    );

    let j = one("schedule = \"0 0 * * * *\"\njitter = \"5m\"\nrun_on_start = true");
    let s = status(&j, &BTreeMap::new(), &[], now);
    assert_eq!(
        s.due,
        "2026-12-01T11:00:00Z (+ up to 300s jitter); at start"
    );
    assert_eq!(s.triggers, ["schedule", "at_start"]);
}

#[test]
fn without_a_schedule_the_due_time_says_what_the_config_means() {
    let now = at("2026-12-01T10:20:00Z");
    let s = status(&one("run_on_start = true"), &BTreeMap::new(), &[], now);
    assert_eq!((s.due.as_str(), s.next_due.is_none()), ("at start", true));
    let s = status(&one(""), &BTreeMap::new(), &[], now);
    assert_eq!(s.due, "on demand only");
    assert!(s.triggers.is_empty());
    let s = job_status(
        &one(""),
        Known {
            state: &BTreeMap::new(),
            attempts: &[],
            event_driven: true,
            secret_created: None,
            now,
        },
    );
    assert_eq!(
        (s.due.as_str(), s.triggers.as_slice()),
        ("event-driven", ["events"].as_slice())
    );
}

#[test]
fn a_tick_without_an_attempt_after_it_is_reported_missed() {
    let now = at("2026-12-01T10:20:00Z");
    let j = one("schedule = \"0 0 * * * *\"");
    let ms = |s: &str| at(s).timestamp_millis();
    // Last attempt at 08:00:05: the 09:00 and 10:00 ticks left none; 10:00 is the last one
    // older than the margin.
    let s = status(
        &j,
        &BTreeMap::new(),
        &[attempt(ms("2026-12-01T08:00:05Z"), C1, "unchanged")],
        now,
    );
    assert_eq!(s.missed_tick.unwrap().at, "2026-12-01T10:00:00Z");
    // An attempt after the last tick: nothing missed.
    let s = status(
        &j,
        &BTreeMap::new(),
        &[attempt(ms("2026-12-01T10:00:03Z"), C1, "unchanged")],
        now,
    );
    assert!(s.missed_tick.is_none());
    // Within the margin (+ jitter) the 10:00 tick is not missed yet; 09:00 then is.
    let early = at("2026-12-01T10:03:00Z");
    let s = status(
        &j,
        &BTreeMap::new(),
        &[attempt(ms("2026-12-01T09:00:01Z"), C1, "rotated")],
        early,
    );
    assert!(s.missed_tick.is_none(), "{:?}", s.missed_tick);
}

#[test]
fn last_attempt_success_and_error_come_from_the_newest_attempts() {
    let now = at("2026-12-01T10:20:00Z");
    let t = now.timestamp_millis();
    let attempts = [
        attempt(t - 1000, C1, "unchanged"),
        attempt(t - 5000, C1, "failed"),
        attempt(t - 9000, C1, "rotated"),
    ];
    let mut state = BTreeMap::new();
    state.insert(
        "j".to_owned(),
        JobState {
            connection_id: C1.into(),
            applied_version: "v1".into(),
            applied_at: now.timestamp() - 3600,
            checked_at: 0,
            failed_version: Some("v0".into()),
        },
    );
    let s = status(&one(""), &state, &attempts, now);
    let c = &s.connections[0];
    assert_eq!(c.connection_id.as_deref(), Some(C1));
    let a = c.last_attempt.as_ref().unwrap();
    assert_eq!((a.outcome.as_str(), a.when.at_ms), ("unchanged", t - 1000));
    let e = c.last_error.as_ref().unwrap();
    assert_eq!(
        (e.stage.as_deref(), e.error_type.as_deref()),
        (Some("patch"), Some("forbidden"))
    );
    assert_eq!(e.when.at_ms, t - 5000);
    let ok = c.last_success.as_ref().unwrap();
    assert_eq!((ok.from, ok.when.at_ms), ("attempts", t - 1000));
    assert_eq!(c.applied_version.as_deref(), Some("v1"));
    assert_eq!(c.failed_version.as_deref(), Some("v0"));

    // Without attempts (pruned), the state's record says when it was last known current.
    let s = status(&one(""), &state, &[], now);
    let ok = s.connections[0].last_success.as_ref().unwrap();
    assert_eq!((ok.from, ok.outcome.as_str()), ("state", "rotated"));
    assert!(s.connections[0].last_error.is_none() && s.connections[0].last_attempt.is_none());
}

#[test]
fn a_job_with_several_connections_splits_its_attempts_by_connection() {
    let now = at("2026-12-01T10:20:00Z");
    let t = now.timestamp_millis();
    let j = job(
        "j",
        &format!("connections = [{{ id = \"{C1}\" }}, {{ id = \"{C2}\" }}]"),
    );
    let attempts = [
        attempt(t - 10, C2, "failed"),
        attempt(t - 20, C1, "rotated"),
    ];
    let s = status(&j, &BTreeMap::new(), &attempts, now);
    assert_eq!(s.connections.len(), 2);
    assert_eq!(
        s.connections[0].last_attempt.as_ref().unwrap().outcome,
        "rotated"
    );
    assert!(s.connections[0].last_error.is_none());
    assert_eq!(
        s.connections[1].last_attempt.as_ref().unwrap().outcome,
        "failed"
    );
    assert!(s.connections[1].last_success.is_none());
}

#[test]
fn hostile_text_is_escaped_and_capped_and_implausible_times_give_no_age() {
    let now = at("2026-12-01T10:20:00Z");
    let mut a = attempt(now.timestamp_millis(), C1, "failed\u{1b}[2J");
    a.secret_version = Some(format!("v\n{}", "x".repeat(10_000)));
    a.error_type = Some("\u{7}bell".into());
    let s = job_status(
        &one(""),
        Known {
            state: &BTreeMap::new(),
            attempts: &[a],
            event_driven: false,
            secret_created: Some(now.timestamp() + 86_400),
            now,
        },
    );
    let json = serde_json::to_string(&s).unwrap();
    assert!(
        !json.contains('\u{1b}') && !json.contains('\u{7}'),
        "{json}"
    );
    let v = s.connections[0]
        .last_attempt
        .as_ref()
        .unwrap()
        .secret_version
        .clone()
        .unwrap();
    assert!(
        !v.contains('\n') && v.chars().count() <= MAX_FIELD + 8,
        "{}",
        v.len()
    );
    assert!(s.credential_age_seconds.is_none() && s.secret_created.is_none());
    let lines = table(&[s]);
    assert!(
        lines.iter().all(|l| !l.chars().any(char::is_control)),
        "{lines:?}"
    );

    let s = job_status(
        &one(""),
        Known {
            state: &BTreeMap::new(),
            attempts: &[],
            event_driven: false,
            secret_created: Some(now.timestamp() - 3 * 86_400),
            now,
        },
    );
    assert_eq!(s.credential_age_seconds, Some(3 * 86_400));
    assert!(table(&[s])[1].contains("  3d  "));
}

#[test]
fn each_connection_names_its_tenant_and_the_table_shows_a_named_one() {
    let now = at("2026-12-01T10:00:00Z");
    let single = status(&one(""), &BTreeMap::new(), &[], now);
    assert_eq!(single.connections[0].tenant, "default");
    assert!(!table(&[single])[1].contains("(tenant "));
    let text = format!(
        "[tenants.prod]\ntenant_url = \"https://p.eu.qlikcloud.com\"\napi_key_env = \"K\"\n\
         [tenants.test]\ntenant_url = \"https://t.eu.qlikcloud.com\"\napi_key_env = \"K\"\n\
         [sources.f]\ntype = \"file\"\npath = \"/v\"\n\
         [[jobs]]\nname = \"j\"\ntenant = \"prod\"\nconnector = \"mssql\"\nsource = \"f\"\nsecret = \"s\"\n\
         connections = [{{ id = \"{C1}\" }}, {{ id = \"{C2}\", tenant = \"test\" }}]\n"
    );
    let job = crate::config::load_str(&text, Path::new("/"), &HashMap::new())
        .expect("valid config")
        .jobs
        .remove(0);
    let s = status(&job, &BTreeMap::new(), &[], now);
    let tenants: Vec<&str> = s.connections.iter().map(|c| c.tenant.as_str()).collect();
    assert_eq!(tenants, ["prod", "test"]);
    let lines = table(&[s]);
    assert!(
        lines[1].contains(&format!("{C1} (tenant prod)")),
        "{lines:?}"
    );
    assert!(lines[2].contains("(tenant test)"), "{lines:?}");
}
