//! Persistent state: the last secret version successfully applied to each job's connection.
//!
//! Stored as JSON in `<state_dir>/state.json`. Never holds a secret value: only version ids.
//!
//! One process owns a state directory at a time: [`StateStore::open`] takes an exclusive lock
//! on `<state_dir>/state.lock` (a `flock`, released by the kernel when the process dies, so a
//! stale lock from a crashed process never blocks a restart) and writes its pid into the file,
//! so a second daemon or a one-shot `rotate` on the same directory is refused with
//! "in use by pid N" before it sends anything.
//!
//! Because the owner is the only writer, the applied versions live in memory and the file is
//! their durable copy: a write that fails (full disk, read-only volume) loses nothing while the
//! process runs, so a version is never applied twice because the file could not be written.
//!
//! The directory is hostile ground (anyone who can write to it could mark versions as applied):
//! - it is created `0700` and the state file `0600` whatever the umask; a group- or
//!   world-writable directory or state file is refused at open, with the `chmod` that fixes it;
//! - writes go to a new temp file with an unpredictable name, created exclusively (never
//!   through an existing file or symbolic link), then fsync, rename over `state.json` and fsync
//!   of the directory;
//! - `state.json` and `state.lock` are never opened through a symbolic link, and a
//!   `state.json` that is a link, a directory or another special file is refused;
//! - the file is read with a size cap, and a parse error is reported by line and column only,
//!   never quoting the file's contents.

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::{Read, Write},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
};

use serde::{Deserialize, Serialize};

pub mod backend;
pub mod dynamodb;
pub mod sqlite;
pub use backend::{Attempt, HistoryQuery, Lease, StateBackend};
pub use sqlite::SqliteBackend;

/// What is remembered about one job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobState {
    /// The connection the version was applied to.
    pub connection_id: String,
    /// The secret version last applied and verified.
    pub applied_version: String,
    /// When (Unix seconds).
    pub applied_at: i64,
    /// The last time a run found this version still current (Unix seconds; 0 = never).
    #[serde(default)]
    pub checked_at: i64,
    /// A secret version that failed verification or its canary reload on this connection
    /// (and was rolled back, or left failed): not applied again until the vault's version
    /// changes. Optional, so older state files and backends without it read as `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_version: Option<String>,
}

impl JobState {
    /// Whether this record is about `conn` (a job re-pointed at another connection id starts
    /// fresh; a name-based job keeps its record).
    pub fn applies_to(&self, conn: &crate::qlik::model::ConnectionRef) -> bool {
        match conn {
            crate::qlik::model::ConnectionRef::Id(id) => *id == self.connection_id,
            crate::qlik::model::ConnectionRef::Name { .. } => true,
        }
    }

    /// The last time this record says the connection was known current (applied or checked),
    /// or `None` when that time is not plausible: not positive, or later than `now` (a clock
    /// jump or a hand-edited file must not make a job look fresh for years).
    pub fn last_known_current(&self, now: i64) -> Option<i64> {
        let at = self.applied_at.max(self.checked_at);
        (at > 0 && at <= now.saturating_add(CLOCK_SKEW_SECS)).then_some(at)
    }
}

/// How far in the future a recorded time may be (clock skew between restarts) before it is
/// ignored.
const CLOCK_SKEW_SECS: i64 = 300;

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    #[serde(default)]
    format: u32,
    #[serde(default)]
    jobs: BTreeMap<String, JobState>,
}

/// The largest state file read (a state entry is ~200 bytes, so this is ~300,000 jobs). A
/// larger file is treated as corrupt: a fresh start.
pub const MAX_STATE_BYTES: u64 = 64 << 20;

/// The state file's name inside the state directory.
pub const STATE_FILE: &str = "state.json";
/// The lock file's name inside the state directory.
pub const LOCK_FILE: &str = "state.lock";

/// Why the state directory cannot be used, or a write failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Another process holds the directory's lock.
    #[error(
        "state directory {} is in use by {}: another qlik-rotator (a daemon or a one-shot rotate) holds {}; stop it first, or ask the running daemon (POST /jobs/{{name}}/rotate)",
        dir.display(),
        pid.map_or_else(|| "another process (pid unknown)".to_owned(), |p| format!("pid {p}")),
        dir.join(LOCK_FILE).display()
    )]
    InUse {
        /// The state directory.
        dir: PathBuf,
        /// The pid written in the lock file by its holder, when readable.
        pid: Option<u32>,
    },
    /// The directory or state file can be written by other users.
    #[error(
        "{} is group- or world-writable (mode {mode:04o}): anyone who can write it can mark secret versions as applied and suppress rotations; fix it with: chmod {fix} {}",
        path.display(),
        path.display()
    )]
    Permissions {
        /// The offending path.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// The mode to set.
        fix: &'static str,
    },
    /// A symbolic link where a regular file must be.
    #[error(
        "{} is a symbolic link; the rotator never follows links in its state directory: remove it (it is recreated as a regular file)",
        path.display()
    )]
    Symlink {
        /// The link.
        path: PathBuf,
    },
    /// Not a directory / not a regular file.
    #[error("{} is not a {expected}", path.display())]
    WrongType {
        /// The path.
        path: PathBuf,
        /// What it should be.
        expected: &'static str,
    },
    /// An I/O error, with what was being done.
    #[error("{} ({action}): {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The state database cannot be used as one: not SQLite, damaged, or written by a newer
    /// qlik-rotator. Never replaced silently: it holds the audit trail.
    #[error("{} {detail}: {fix}", path.display())]
    Database {
        /// The database file.
        path: PathBuf,
        /// What is wrong (escaped; never a stored value).
        detail: String,
        /// What to do about it.
        fix: String,
    },
    /// The store was closed (the daemon is shutting down).
    #[error("the state store is closed")]
    Closed,
    /// The lease on a job moved to another owner (its fence is no longer current): this
    /// replica must not PATCH or record for the job.
    #[error("the lease on job {job} is no longer held by this replica (fence {fence} is stale)")]
    LeaseLost {
        /// The job.
        job: String,
        /// The stale fence.
        fence: u64,
    },
    /// A database backend failed (SQLite, DynamoDB), with what was being done. The message
    /// never quotes stored values.
    #[error("state backend {backend} ({action}): {message}")]
    Backend {
        /// `"sqlite"`, `"dynamodb"`.
        backend: &'static str,
        /// What was being done.
        action: &'static str,
        /// The cause, escaped.
        message: String,
    },
}

impl StateError {
    /// Whether another process holds the lock (a condition that clears by itself, unlike a
    /// bad directory).
    pub fn is_in_use(&self) -> bool {
        matches!(self, StateError::InUse { .. })
    }
}

pub(crate) fn io_err(
    path: &Path,
    action: &'static str,
) -> impl FnOnce(std::io::Error) -> StateError {
    let path = path.to_path_buf();
    move |source| StateError::Io {
        path,
        action,
        source,
    }
}

#[derive(Debug)]
struct Inner {
    jobs: BTreeMap<String, JobState>,
    /// Memory holds changes the file does not.
    dirty: bool,
    /// The locked `state.lock`; `None` once closed.
    lock: Option<File>,
}

/// The state store: exclusive owner of a state directory while it lives (see the module docs).
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
    inner: Arc<Mutex<Inner>>,
}

/// How stale a `checked_at` may get before an unchanged run rewrites it: state writes stay
/// rare for unchanged secrets, and a restart still sees a last success within this margin.
pub const CHECKED_AT_GRANULARITY_SECS: i64 = 3600;

impl StateStore {
    /// Opens `dir` for exclusive use: creates it (mode 0700) when missing, refuses a group- or
    /// world-writable directory, takes the lock (writing this process's pid into it), proves
    /// the directory writable with a probe file, and reads `state.json`.
    ///
    /// A missing, corrupt or oversized `state.json` is a fresh start (logged); one that is a
    /// symbolic link, not a regular file, unreadable or writable by others is an error.
    ///
    /// # Errors
    /// [`StateError`]: [`StateError::InUse`] when another process holds the lock, otherwise
    /// a directory that cannot be used safely.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StateError> {
        let dir = dir.into();
        let lock = lock_dir(&dir)?;
        let jobs = read_state(&dir.join(STATE_FILE))?;
        Ok(StateStore {
            dir,
            inner: Arc::new(Mutex::new(Inner {
                jobs,
                dirty: false,
                lock: Some(lock),
            })),
        })
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every job's state (as read at open, plus what was recorded since).
    pub fn load(&self) -> BTreeMap<String, JobState> {
        self.inner().jobs.clone()
    }

    /// The state of one job.
    pub fn get(&self, job: &str) -> Option<JobState> {
        self.inner().jobs.get(job).cloned()
    }

    /// Whether memory holds changes the file does not (a write failed).
    pub fn is_dirty(&self) -> bool {
        self.inner().dirty
    }

    /// Records that a run found `job`'s applied version still current, at most once per
    /// [`CHECKED_AT_GRANULARITY_SECS`].
    ///
    /// # Errors
    /// [`StateError`] when the file cannot be written (memory keeps the change).
    pub fn touch(&self, job: &str, now: i64) -> Result<(), StateError> {
        let mut inner = self.inner();
        let Some(st) = inner.jobs.get_mut(job) else {
            return Ok(());
        };
        if now.saturating_sub(st.applied_at.max(st.checked_at)) < CHECKED_AT_GRANULARITY_SECS {
            return Ok(());
        }
        st.checked_at = now;
        self.write(&mut inner)
    }

    /// Records a verified rotation for `job`. The record is kept in memory even when the write
    /// fails, so this process never applies the same version again.
    ///
    /// # Errors
    /// [`StateError`] when the file cannot be written.
    pub fn record(&self, job: &str, state: JobState) -> Result<(), StateError> {
        let mut inner = self.inner();
        if inner.lock.is_none() {
            return Err(StateError::Closed);
        }
        inner.jobs.insert(job.to_owned(), state);
        self.write(&mut inner)
    }

    /// Writes memory to the file if a previous write failed.
    ///
    /// # Errors
    /// [`StateError`] when the file still cannot be written.
    pub fn flush(&self) -> Result<(), StateError> {
        let mut inner = self.inner();
        if inner.dirty {
            self.write(&mut inner)
        } else {
            Ok(())
        }
    }

    /// Releases the lock; later writes fail with [`StateError::Closed`]. Also happens when the
    /// last clone is dropped (or the process ends).
    pub fn close(&self) {
        self.inner().lock = None;
    }

    fn write(&self, inner: &mut Inner) -> Result<(), StateError> {
        if inner.lock.is_none() {
            return Err(StateError::Closed);
        }
        inner.dirty = true;
        #[derive(Serialize)]
        struct Out<'a> {
            format: u32,
            jobs: &'a BTreeMap<String, JobState>,
        }
        let body = serde_json::to_vec_pretty(&Out {
            format: 1,
            jobs: &inner.jobs,
        })
        .expect("state serialises");
        let result = self.write_file(&self.dir.join(STATE_FILE), &body);
        result?;
        inner.dirty = false;
        Ok(())
    }

    fn write_file(&self, path: &Path, body: &[u8]) -> Result<(), StateError> {
        let (mut f, tmp) = create_temp(&self.dir, ".tmp")
            .map_err(io_err(&self.dir, "cannot create a temporary state file"))?;
        let written = f
            .write_all(body)
            .and_then(|()| f.sync_all())
            .and_then(|()| fs::rename(&tmp, path))
            // Make the rename itself durable.
            .and_then(|()| File::open(&self.dir)?.sync_all());
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(path, "cannot write")(e));
        }
        Ok(())
    }
}

/// Takes a state directory for this process: creates it (mode 0700) when missing, refuses a
/// group- or world-writable one, takes the `flock` on `state.lock` (writing this process's pid
/// into it) and proves the directory writable with a probe file. Shared by every local store.
///
/// # Errors
/// [`StateError::InUse`] when another process holds the lock, otherwise a directory that
/// cannot be used safely.
pub(crate) fn lock_dir(dir: &Path) -> Result<File, StateError> {
    let dir = dir.to_path_buf();
    match fs::metadata(&dir) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err(&dir, "cannot create the state directory"))?,
        Err(e) => return Err(io_err(&dir, "cannot read the state directory")(e)),
    }
    // The directory itself may be a link (systemd's DynamicUser makes
    // /var/lib/<name> a link to /var/lib/private/<name>); what it points to is checked.
    let meta = fs::metadata(&dir).map_err(io_err(&dir, "cannot read the state directory"))?;
    if !meta.is_dir() {
        return Err(StateError::WrongType {
            path: dir,
            expected: "directory",
        });
    }
    check_mode(&dir, &meta, "700")?;

    let lock_path = dir.join(LOCK_FILE);
    let mut lock = open_or_create(&lock_path)?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            return Err(StateError::InUse {
                pid: read_pid(&mut lock),
                dir,
            });
        }
        Err(fs::TryLockError::Error(e)) => {
            return Err(io_err(&lock_path, "cannot lock")(e));
        }
    }
    lock.set_len(0)
        .and_then(|()| lock.write_all(format!("{}\n", std::process::id()).as_bytes()))
        .map_err(io_err(&lock_path, "cannot write the lock file"))?;

    // Prove the directory takes new files now, not at the first rotation.
    let (probe, probe_path) =
        create_temp(&dir, ".probe").map_err(io_err(&dir, "the state directory is not writable"))?;
    drop(probe);
    fs::remove_file(&probe_path).map_err(io_err(&probe_path, "cannot remove"))?;
    Ok(lock)
}

/// Refuses group/world-writable modes.
pub(crate) fn check_mode(
    path: &Path,
    meta: &fs::Metadata,
    fix: &'static str,
) -> Result<(), StateError> {
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(StateError::Permissions {
            path: path.to_path_buf(),
            mode,
            fix,
        });
    }
    Ok(())
}

/// Creates `<dir>/.state.json.<random>.<suffix>` exclusively (`O_CREAT|O_EXCL`: never through an
/// existing file or symbolic link), mode 0600 whatever the umask.
fn create_temp(dir: &Path, suffix: &str) -> std::io::Result<(File, PathBuf)> {
    use rand::Rng;
    let mut last = None;
    for _ in 0..8 {
        let name = format!(".state.json.{:016x}{suffix}", rand::rng().random::<u64>());
        let path = dir.join(name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => return Ok((f, path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("eight attempts were made"))
}

/// Opens an existing regular file without following a symbolic link: the file's identity
/// before and after the open must agree (so a link swapped in between is noticed).
pub(crate) fn open_no_follow(path: &Path, write: bool) -> Result<Option<File>, StateError> {
    let before = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path, "cannot read")(e)),
    };
    if before.file_type().is_symlink() {
        return Err(StateError::Symlink {
            path: path.to_path_buf(),
        });
    }
    if !before.is_file() {
        return Err(StateError::WrongType {
            path: path.to_path_buf(),
            expected: "regular file",
        });
    }
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map_err(io_err(path, "cannot open"))?;
    let after = file.metadata().map_err(io_err(path, "cannot read"))?;
    if (after.dev(), after.ino()) != (before.dev(), before.ino()) {
        return Err(StateError::Symlink {
            path: path.to_path_buf(),
        });
    }
    Ok(Some(file))
}

/// The lock file: created 0600, or an existing regular file (never a link).
fn open_or_create(path: &Path) -> Result<File, StateError> {
    match OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(f) => Ok(f),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => open_no_follow(path, true)?
            .ok_or_else(|| {
                io_err(path, "cannot open the lock file")(std::io::Error::from(
                    std::io::ErrorKind::NotFound,
                ))
            }),
        Err(e) => Err(io_err(path, "the state directory is not writable")(e)),
    }
}

/// The pid written by the lock's holder (digits only; anything else is unknown).
fn read_pid(lock: &mut File) -> Option<u32> {
    let mut buf = [0u8; 16];
    let mut n = 0;
    while n < buf.len() {
        match lock.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    std::str::from_utf8(&buf[..n])
        .ok()?
        .trim_end_matches('\n')
        .parse()
        .ok()
        .filter(|p| *p > 0)
}

/// Why a `state.json` that exists could not be used (its text is never quoted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonProblem {
    /// Larger than [`MAX_STATE_BYTES`].
    TooLarge,
    /// Not the expected JSON: where, and what kind of error (serde's classification).
    Corrupt {
        /// Line (1-based).
        line: usize,
        /// Column (1-based).
        column: usize,
        /// `syntax`, `data`, `eof`, `io`.
        kind: String,
    },
}

impl std::fmt::Display for JsonProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JsonProblem::TooLarge => write!(f, "larger than {MAX_STATE_BYTES} bytes"),
            JsonProblem::Corrupt { line, column, kind } => {
                write!(
                    f,
                    "not valid ({kind} error at line {line}, column {column})"
                )
            }
        }
    }
}

/// Reads a `state.json` with every rule of the module docs: `Ok(None)` when there is none,
/// `Ok(Some(Err(_)))` when it is too large or corrupt; an error for a link, a special file,
/// unsafe permissions or an I/O failure.
///
/// # Errors
/// [`StateError`].
#[allow(clippy::type_complexity)]
pub fn read_json(
    path: &Path,
) -> Result<Option<Result<BTreeMap<String, JobState>, JsonProblem>>, StateError> {
    let Some(file) = open_no_follow(path, false)? else {
        return Ok(None);
    };
    let meta = file.metadata().map_err(io_err(path, "cannot read"))?;
    check_mode(path, &meta, "600")?;
    if meta.len() > MAX_STATE_BYTES {
        return Ok(Some(Err(JsonProblem::TooLarge)));
    }
    let mut bytes = Vec::new();
    file.take(MAX_STATE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err(path, "cannot read"))?;
    if bytes.len() as u64 > MAX_STATE_BYTES {
        // (It grew after the size check.)
        return Ok(Some(Err(JsonProblem::TooLarge)));
    }
    Ok(Some(match serde_json::from_slice::<StateFile>(&bytes) {
        Ok(s) => Ok(s.jobs),
        // Only the position and the kind: serde's message can quote the file's text.
        Err(e) => Err(JsonProblem::Corrupt {
            line: e.line(),
            column: e.column(),
            kind: format!("{:?}", e.classify()).to_lowercase(),
        }),
    }))
}

/// Reads `state.json`; see [`StateStore::open`].
pub(crate) fn read_state(path: &Path) -> Result<BTreeMap<String, JobState>, StateError> {
    match read_json(path)? {
        None => Ok(BTreeMap::new()),
        Some(Ok(jobs)) => Ok(jobs),
        Some(Err(JsonProblem::TooLarge)) => {
            tracing::warn!(
                path = %path.display(),
                limit_bytes = MAX_STATE_BYTES,
                "The state file is larger than the limit; starting fresh (every job will rotate once)."
            );
            Ok(BTreeMap::new())
        }
        Some(Err(JsonProblem::Corrupt { line, column, kind })) => {
            tracing::warn!(
                path = %path.display(),
                line,
                column,
                kind,
                "The state file is corrupt; starting fresh (every job will rotate once)."
            );
            Ok(BTreeMap::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(v: &str) -> JobState {
        JobState {
            connection_id: "c1".into(),
            applied_version: v.into(),
            applied_at: 1,
            checked_at: 0,
            failed_version: None,
        }
    }

    #[test]
    fn round_trip_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let a = StateStore::open(dir.path().join("nested")).unwrap();
        assert!(a.load().is_empty());
        a.record("job-a", st("v1")).unwrap();
        a.record("job-b", st("v7")).unwrap();
        a.record("job-a", st("v2")).unwrap();
        a.close();
        let b = StateStore::open(dir.path().join("nested")).unwrap();
        let all = b.load();
        assert_eq!(all["job-a"].applied_version, "v2");
        assert_eq!(all["job-b"].applied_version, "v7");
        // No temp or probe files are left behind.
        let names: Vec<_> = fs::read_dir(dir.path().join("nested"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            names.iter().all(|n| n == STATE_FILE || n == LOCK_FILE),
            "{names:?}"
        );
    }

    #[test]
    fn touch_rewrites_checked_at_at_most_hourly() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateStore::open(dir.path()).unwrap();
        s.record(
            "j",
            JobState {
                applied_at: 1000,
                ..st("v1")
            },
        )
        .unwrap();
        s.touch("j", 1000 + 60).unwrap();
        assert_eq!(
            s.get("j").unwrap().checked_at,
            0,
            "within the hour: no write"
        );
        s.touch("j", 1000 + 3600).unwrap();
        assert_eq!(s.get("j").unwrap().checked_at, 4600);
        s.touch("unknown", 99_999).unwrap();
        assert!(s.get("unknown").is_none());
        s.close();
        assert_eq!(
            StateStore::open(dir.path())
                .unwrap()
                .get("j")
                .unwrap()
                .checked_at,
            4600,
            "the touch reached the file"
        );
    }

    #[test]
    fn touch_with_hostile_timestamps_does_not_overflow() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateStore::open(dir.path()).unwrap();
        for (applied_at, checked_at) in [(i64::MIN, i64::MIN), (i64::MAX, 0), (0, i64::MAX)] {
            s.record(
                "j",
                JobState {
                    applied_at,
                    checked_at,
                    failed_version: None,
                    ..st("v1")
                },
            )
            .unwrap();
            s.touch("j", i64::MAX).unwrap();
            s.touch("j", i64::MIN).unwrap();
        }
    }

    #[test]
    fn last_known_current_ignores_implausible_times() {
        let at = |applied_at, checked_at| JobState {
            applied_at,
            checked_at,
            ..st("v")
        };
        assert_eq!(at(100, 200).last_known_current(1000), Some(200));
        assert_eq!(at(0, 0).last_known_current(1000), None);
        assert_eq!(at(i64::MIN, -5).last_known_current(1000), None);
        assert_eq!(at(i64::MAX, 0).last_known_current(1000), None);
        assert_eq!(at(1200, 0).last_known_current(1000), Some(1200), "skew");
        assert_eq!(at(0, 1000 + 301).last_known_current(1000), None);
    }

    #[test]
    fn corrupt_file_is_a_fresh_start_and_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(STATE_FILE), b"{not json").unwrap();
        fs::set_permissions(
            dir.path().join(STATE_FILE),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let s = StateStore::open(dir.path()).unwrap();
        assert!(s.load().is_empty());
        s.record("j", st("v1")).unwrap();
        assert_eq!(s.get("j").unwrap().applied_version, "v1");
        let text = fs::read_to_string(dir.path().join(STATE_FILE)).unwrap();
        assert!(text.contains("\"v1\""), "{text}");
    }

    #[test]
    fn a_failed_write_keeps_the_record_in_memory_and_flush_retries() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateStore::open(dir.path()).unwrap();
        // A non-empty directory where state.json belongs: rename fails, even for root.
        fs::create_dir_all(dir.path().join(STATE_FILE).join("x")).unwrap();
        assert!(s.record("j", st("v1")).is_err());
        assert!(s.is_dirty());
        assert_eq!(s.get("j").unwrap().applied_version, "v1");
        assert!(s.flush().is_err());
        fs::remove_dir_all(dir.path().join(STATE_FILE)).unwrap();
        s.flush().unwrap();
        assert!(!s.is_dirty());
        assert!(
            fs::read_to_string(dir.path().join(STATE_FILE))
                .unwrap()
                .contains("\"v1\"")
        );
    }

    #[test]
    fn a_second_open_is_refused_until_the_first_closes() {
        let dir = tempfile::tempdir().unwrap();
        let a = StateStore::open(dir.path()).unwrap();
        let err = StateStore::open(dir.path()).unwrap_err();
        assert!(err.is_in_use(), "{err}");
        assert!(
            err.to_string()
                .contains(&format!("in use by pid {}", std::process::id())),
            "{err}"
        );
        a.close();
        assert!(matches!(a.record("j", st("v")), Err(StateError::Closed)));
        StateStore::open(dir.path()).unwrap();
    }
}
