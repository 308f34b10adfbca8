use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::state::{LOCK_FILE, StateStore};

fn st(v: &str) -> JobState {
    JobState {
        connection_id: "c1".into(),
        applied_version: v.into(),
        applied_at: 1,
        checked_at: 0,
    }
}

fn attempt(at_ms: i64, job: &str, outcome: &str) -> Attempt {
    Attempt {
        at_ms,
        job: job.into(),
        connection: "c1".into(),
        outcome: outcome.into(),
        stage: (outcome == "failed").then(|| "apply".into()),
        error_type: (outcome == "failed").then(|| "http_503".into()),
        secret_version: Some("v1".into()),
        duration_ms: 12,
    }
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[tokio::test]
async fn records_survive_a_reopen_and_the_file_is_0600_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("nested");
    let a = SqliteBackend::open(&state).unwrap();
    assert!(a.load().await.unwrap().is_empty());
    a.record("job-a", st("v1"), None).await.unwrap();
    a.record("job-b", st("v7"), None).await.unwrap();
    a.record("job-a", st("v2"), None).await.unwrap();
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join(DB_FILE)), 0o600);
    assert_eq!(mode(&state.join("state.db-wal")), 0o600);
    a.close().await;
    assert!(matches!(
        a.record("j", st("v"), None).await,
        Err(StateError::Closed)
    ));
    let b = SqliteBackend::open(&state).unwrap();
    let all = b.load().await.unwrap();
    assert_eq!(all["job-a"].applied_version, "v2");
    assert_eq!(all["job-b"].applied_version, "v7");
    assert_eq!(all.len(), 2);
    let mode: String = b
        .inner()
        .conn
        .as_ref()
        .unwrap()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn a_second_open_is_refused_with_the_pid_until_the_first_closes() {
    let dir = tempfile::tempdir().unwrap();
    let a = SqliteBackend::open(dir.path()).unwrap();
    let err = SqliteBackend::open(dir.path()).unwrap_err();
    assert!(err.is_in_use(), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("in use by pid {}", std::process::id())),
        "{err}"
    );
    a.close().await;
    SqliteBackend::open(dir.path()).unwrap();
}

#[tokio::test]
async fn every_lease_is_granted_at_once_with_fence_0() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteBackend::open(dir.path()).unwrap();
    let l = s
        .acquire_lease("j", "me", Duration::from_secs(30), 1000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((l.fence, l.expires_at, l.owner.as_str()), (0, 1030, "me"));
    // A second owner too: one process owns the directory.
    assert!(
        s.acquire_lease("j", "other", Duration::from_secs(30), 1000)
            .await
            .unwrap()
            .is_some()
    );
    s.record("j", st("v1"), Some(&l)).await.unwrap();
    s.close().await;
    assert!(matches!(
        s.acquire_lease("j", "me", Duration::from_secs(1), 0).await,
        Err(StateError::Closed)
    ));
}

#[tokio::test]
async fn touch_writes_checked_at_at_most_hourly() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteBackend::open(dir.path()).unwrap();
    s.record(
        "j",
        JobState {
            applied_at: 1000,
            ..st("v1")
        },
        None,
    )
    .await
    .unwrap();
    s.touch("j", 1060, None).await.unwrap();
    assert_eq!(s.get("j").await.unwrap().unwrap().checked_at, 0);
    s.touch("j", 4600, None).await.unwrap();
    s.touch("unknown", 99_999, None).await.unwrap();
    s.touch("j", i64::MIN, None).await.unwrap();
    s.close().await;
    let s = SqliteBackend::open(dir.path()).unwrap();
    assert_eq!(s.get("j").await.unwrap().unwrap().checked_at, 4600);
    assert!(s.get("unknown").await.unwrap().is_none());
}

#[tokio::test]
async fn history_is_newest_first_filtered_limited_and_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteBackend::open(dir.path()).unwrap();
    for (at, job, outcome) in [
        (1000, "a", "rotated"),
        (2000, "b", "failed"),
        (3000, "a", "unchanged"),
        (3000, "a", "failed"),
    ] {
        s.append_history(&attempt(at, job, outcome)).await.unwrap();
    }
    let q = |job: Option<&str>, since_ms, limit| HistoryQuery {
        job: job.map(Into::into),
        connection: None,
        since_ms,
        limit,
    };
    let all = s.history(&q(None, None, 100)).await.unwrap();
    let seen: Vec<_> = all.iter().map(|a| (a.at_ms, a.outcome.as_str())).collect();
    // Same time: the later insert first.
    assert_eq!(
        seen,
        [
            (3000, "failed"),
            (3000, "unchanged"),
            (2000, "failed"),
            (1000, "rotated")
        ]
    );
    assert_eq!(all[2], attempt(2000, "b", "failed"));
    assert_eq!(s.history(&q(Some("a"), None, 100)).await.unwrap().len(), 3);
    assert_eq!(s.history(&q(None, Some(2000), 100)).await.unwrap().len(), 3);
    assert_eq!(s.history(&q(Some("a"), None, 1)).await.unwrap().len(), 1);
    let mut by_conn = q(None, None, 100);
    by_conn.connection = Some("nope".into());
    assert!(s.history(&by_conn).await.unwrap().is_empty());
    assert_eq!(s.prune_history(2000).await.unwrap(), 1);
    assert_eq!(s.prune_history(2000).await.unwrap(), 0);
    assert_eq!(s.history(&q(None, None, 100)).await.unwrap().len(), 3);
    // The read-only reader sees the same, while the writer holds the lock.
    let r = HistoryReader::open(dir.path()).unwrap().unwrap();
    assert_eq!(r.history(&q(None, None, 100)).unwrap().len(), 3);
}

/// Another program holds the database's write lock: the write fails (after the busy timeout),
/// memory keeps the record and the attempt, and a flush after the lock goes writes both.
#[tokio::test]
async fn a_failed_write_keeps_memory_and_flush_retries() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteBackend::open(dir.path()).unwrap();
    let other = Connection::open(dir.path().join(DB_FILE)).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let err = s.record("j", st("v1"), None).await.unwrap_err();
    assert!(err.to_string().contains("locked"), "{err}");
    assert!(s.is_dirty());
    assert_eq!(s.get("j").await.unwrap().unwrap().applied_version, "v1");
    assert!(s.append_history(&attempt(1, "j", "rotated")).await.is_err());
    assert!(s.flush().await.is_err());
    other.execute_batch("COMMIT").unwrap();
    drop(other);
    s.flush().await.unwrap();
    assert!(!s.is_dirty());
    s.close().await;
    let s = SqliteBackend::open(dir.path()).unwrap();
    assert_eq!(s.get("j").await.unwrap().unwrap().applied_version, "v1");
    let q = HistoryQuery {
        limit: 10,
        ..HistoryQuery::default()
    };
    assert_eq!(s.history(&q).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_corrupt_database_is_refused_with_the_fix_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join(DB_FILE);
    let garbage = b"this is not an SQLite database, just 64 bytes of text..........".repeat(64);
    fs::write(&db, &garbage).unwrap();
    fs::set_permissions(&db, fs::Permissions::from_mode(0o600)).unwrap();
    let err = SqliteBackend::open(dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StateError::Database { .. }), "{msg}");
    assert!(msg.contains("is not a usable state database"), "{msg}");
    assert!(msg.contains(".corrupt"), "{msg}");
    assert!(
        !msg.contains("just 64 bytes"),
        "never quotes the file: {msg}"
    );
    assert_eq!(fs::read(&db).unwrap(), garbage, "left as it was");
    // The lock went with the failed open.
    let err = HistoryReader::open(dir.path()).unwrap_err();
    assert!(matches!(err, StateError::Database { .. }), "{err}");
}

#[tokio::test]
async fn a_database_from_a_newer_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    SqliteBackend::open(dir.path()).unwrap().close().await;
    let c = Connection::open(dir.path().join(DB_FILE)).unwrap();
    c.pragma_update(None, "user_version", 99).unwrap();
    drop(c);
    let err = SqliteBackend::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("schema version 99"), "{err}");
}

#[tokio::test]
async fn state_json_is_imported_once_then_renamed() {
    let dir = tempfile::tempdir().unwrap();
    let json = StateStore::open(dir.path()).unwrap();
    json.record("a", st("v1")).unwrap();
    json.record("b@x", st("v2")).unwrap();
    json.close();
    let s = SqliteBackend::open(dir.path()).unwrap();
    let all = s.load().await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all["b@x"], st("v2"));
    assert!(!dir.path().join(STATE_FILE).exists());
    assert!(dir.path().join(IMPORTED_FILE).exists());
    s.record("a", st("v3"), None).await.unwrap();
    s.close().await;
    // A restored state.json is not imported again.
    fs::copy(dir.path().join(IMPORTED_FILE), dir.path().join(STATE_FILE)).unwrap();
    let s = SqliteBackend::open(dir.path()).unwrap();
    assert_eq!(s.get("a").await.unwrap().unwrap().applied_version, "v3");
    assert!(dir.path().join(STATE_FILE).exists(), "left alone, ignored");
}

#[tokio::test]
async fn a_corrupt_state_json_imports_nothing_and_is_renamed() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(STATE_FILE), b"{\"jobs\": {garbage").unwrap();
    fs::set_permissions(
        dir.path().join(STATE_FILE),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let s = SqliteBackend::open(dir.path()).unwrap();
    assert!(s.load().await.unwrap().is_empty());
    assert!(dir.path().join(CORRUPT_JSON_FILE).exists());
    assert!(!dir.path().join(STATE_FILE).exists());
    s.close().await;
    let names: BTreeSet<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names.contains(LOCK_FILE) && names.contains(DB_FILE),
        "{names:?}"
    );
}

#[tokio::test]
async fn over_long_rows_are_ignored_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteBackend::open(dir.path()).unwrap();
    s.record("ok", st("v1"), None).await.unwrap();
    s.record("long", st(&"v".repeat(5000)), None).await.unwrap();
    s.close().await;
    let s = SqliteBackend::open(dir.path()).unwrap();
    let all = s.load().await.unwrap();
    assert_eq!(all.keys().collect::<Vec<_>>(), ["ok"]);
}

#[tokio::test]
async fn history_reader_without_a_database_says_none() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        HistoryReader::open(&dir.path().join("missing"))
            .unwrap()
            .is_none()
    );
    assert!(HistoryReader::open(dir.path()).unwrap().is_none());
}
