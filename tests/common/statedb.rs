//! Reads a state directory's SQLite database the way an operator would (read-only, beside a
//! running daemon), for assertions.

use std::path::Path;

/// Every applied row (`key connection_id applied_version applied_at checked_at`), every
/// attempt, and the raw bytes of `state.db` and its WAL (lossily as text), so a test can assert
/// a job was recorded and that no secret value reached the files. Empty when there is no
/// database.
pub fn dump(state_dir: &Path) -> String {
    dump_file(&state_dir.join("state.db"))
}

/// [`dump`] of one database file.
pub fn dump_file(db: &Path) -> String {
    let db = db.to_path_buf();
    let mut out = String::new();
    if !db.exists() {
        return out;
    }
    let Ok(conn) = rusqlite::Connection::open_with_flags(
        &db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NOFOLLOW,
    ) else {
        return out;
    };
    // (Not migrated yet: nothing recorded.)
    let Ok(mut stmt) = conn
        .prepare("SELECT key, connection_id, applied_version, applied_at, checked_at FROM applied")
    else {
        return out;
    };
    let rows = stmt
        .query_map([], |r| {
            Ok(format!(
                "applied \"{}\" {} {} {} {}\n",
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?
            ))
        })
        .unwrap();
    for r in rows {
        out.push_str(&r.unwrap());
    }
    drop(stmt);
    let mut stmt = conn
        .prepare(
            "SELECT at_ms, job, connection, outcome, stage, error_type, secret_version FROM attempts ORDER BY id",
        )
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok(format!(
                "attempt {} job={} {} {} {:?} {:?} {:?}\n",
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, Option<String>>(5)?,
                r.get::<_, Option<String>>(6)?
            ))
        })
        .unwrap();
    for r in rows {
        out.push_str(&r.unwrap());
    }
    drop(stmt);
    drop(conn);
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    for file in [db.clone(), wal.into()] {
        if let Ok(bytes) = std::fs::read(file) {
            out.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    out
}

/// How many attempts the history holds for `job` with `outcome`.
pub fn attempts(state_dir: &Path, job: &str, outcome: &str) -> usize {
    let conn = rusqlite::Connection::open_with_flags(
        state_dir.join("state.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    conn.query_row(
        "SELECT count(*) FROM attempts WHERE job = ?1 AND outcome = ?2",
        [job, outcome],
        |r| r.get::<_, i64>(0),
    )
    .unwrap() as usize
}

/// Holds the database's write lock from another connection (as another program would) until
/// dropped: every write of the rotator fails after its busy timeout.
pub struct WriteBlocker(rusqlite::Connection);

impl WriteBlocker {
    /// Takes the lock (`BEGIN EXCLUSIVE`).
    pub fn hold(state_dir: &Path) -> WriteBlocker {
        let c = rusqlite::Connection::open(state_dir.join("state.db")).unwrap();
        c.execute_batch("BEGIN EXCLUSIVE").unwrap();
        WriteBlocker(c)
    }
}

/// Sets every applied row's times (the rotator must not run).
pub fn set_times(state_dir: &Path, applied_at: i64, checked_at: i64) {
    let c = rusqlite::Connection::open(state_dir.join("state.db")).unwrap();
    c.execute(
        "UPDATE applied SET applied_at = ?1, checked_at = ?2",
        [applied_at, checked_at],
    )
    .unwrap();
}

/// One applied row's `checked_at`.
pub fn checked_at(state_dir: &Path, key: &str) -> i64 {
    let c = rusqlite::Connection::open(state_dir.join("state.db")).unwrap();
    c.query_row(
        "SELECT checked_at FROM applied WHERE key = ?1",
        [key],
        |r| r.get(0),
    )
    .unwrap()
}
