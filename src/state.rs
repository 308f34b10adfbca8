//! Persistent state: the last secret version successfully applied to each job's connection.
//!
//! Stored as JSON in `<state_dir>/state.json`, written atomically (temp file, fsync, rename,
//! fsync of the directory). Every write is a read-modify-write under an exclusive lock on
//! `<state_dir>/state.lock`, so the daemon and a one-shot `rotate` never interleave writes and
//! never lose each other's updates. Never holds a secret value: only version ids.

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

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
}

impl JobState {
    /// Whether this record is about `conn` (a job re-pointed at another connection id starts
    /// fresh; a name-based job keeps its record).
    pub fn applies_to(&self, conn: &crate::config::ConnectionRef) -> bool {
        match conn {
            crate::config::ConnectionRef::Id(id) => *id == self.connection_id,
            crate::config::ConnectionRef::Name { .. } => true,
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    #[serde(default)]
    format: u32,
    #[serde(default)]
    jobs: BTreeMap<String, JobState>,
}

/// Errors writing state. Reading never fails: a missing or corrupt file is a fresh start.
#[derive(Debug, thiserror::Error)]
#[error("state file {path}: {source}")]
pub struct StateError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// The state store.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
    /// The last parsed content, keyed by the file's (modification time, length), so repeated
    /// reads of an unchanged file cost one `stat` instead of a parse.
    cache: std::sync::Arc<std::sync::Mutex<Option<Cached>>>,
}

type FileStamp = (std::time::SystemTime, u64);
type Cached = (FileStamp, BTreeMap<String, JobState>);

fn stamp(path: &Path) -> Option<FileStamp> {
    let meta = fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// How stale a `checked_at` may get before an unchanged run rewrites it: state writes stay
/// rare for unchanged secrets, and a restart still sees a last success within this margin.
pub const CHECKED_AT_GRANULARITY_SECS: i64 = 3600;

impl StateStore {
    /// A store in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StateStore {
            dir: dir.into(),
            cache: Default::default(),
        }
    }

    fn file(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// Reads every job's state. A missing file is empty; an unreadable or corrupt one is
    /// logged and treated as empty (the next write replaces it). An unchanged file is not
    /// parsed again.
    pub fn load(&self) -> BTreeMap<String, JobState> {
        let path = self.file();
        let Some(now) = stamp(&path) else {
            return read_file(&path);
        };
        let mut cache = self.cache.lock().expect("state cache lock");
        if let Some((at, map)) = cache.as_ref()
            && *at == now
        {
            return map.clone();
        }
        let map = read_file(&path);
        *cache = Some((now, map.clone()));
        map
    }

    /// Records that a run found `job`'s applied version still current, at most once per
    /// [`CHECKED_AT_GRANULARITY_SECS`].
    ///
    /// # Errors
    /// [`StateError`] when the file cannot be written.
    pub fn touch(&self, job: &str, now: i64) -> Result<(), StateError> {
        match self.load().get(job) {
            Some(st) if now - st.applied_at.max(st.checked_at) >= CHECKED_AT_GRANULARITY_SECS => {
                let mut st = st.clone();
                st.checked_at = now;
                self.record(job, st)
            }
            _ => Ok(()),
        }
    }

    /// The state of one job.
    pub fn get(&self, job: &str) -> Option<JobState> {
        self.load().remove(job)
    }

    /// Records a verified rotation for `job`.
    ///
    /// # Errors
    /// [`StateError`] when the directory, lock or file cannot be written.
    pub fn record(&self, job: &str, state: JobState) -> Result<(), StateError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StateError { path, source }
        };
        fs::create_dir_all(&self.dir).map_err(err(&self.dir))?;
        let lock_path = self.dir.join("state.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(err(&lock_path))?;
        lock.lock().map_err(err(&lock_path))?;
        // Re-read under the lock so another process's update is kept.
        let path = self.file();
        let mut jobs = read_file(&path);
        jobs.insert(job.to_owned(), state);
        let body = serde_json::to_vec_pretty(&StateFile {
            format: 1,
            jobs: jobs.clone(),
        })
        .expect("state serialises");
        let tmp = self
            .dir
            .join(format!(".state.json.{}.tmp", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            // Make the rename itself durable.
            File::open(&self.dir)?.sync_all()
        };
        let result = write().map_err(err(&path));
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        } else if let Some(at) = stamp(&path) {
            *self.cache.lock().expect("state cache lock") = Some((at, jobs));
        }
        let _ = lock.unlock();
        result
    }
}

fn read_file(path: &Path) -> BTreeMap<String, JobState> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return BTreeMap::new(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "Cannot read the state file; starting fresh.");
            return BTreeMap::new();
        }
    };
    match serde_json::from_slice::<StateFile>(&bytes) {
        Ok(s) => s.jobs,
        Err(e) => {
            tracing::warn!(
                path = %path.display(),
                error = %e,
                "The state file is corrupt; starting fresh (every job will rotate once)."
            );
            BTreeMap::new()
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
        }
    }

    #[test]
    fn round_trip_and_merge() {
        let dir = tempfile::tempdir().unwrap();
        let a = StateStore::new(dir.path().join("nested"));
        assert!(a.load().is_empty());
        a.record("job-a", st("v1")).unwrap();
        // A second store (another process) keeps job-a's entry.
        let b = StateStore::new(dir.path().join("nested"));
        b.record("job-b", st("v7")).unwrap();
        a.record("job-a", st("v2")).unwrap();
        let all = b.load();
        assert_eq!(all["job-a"].applied_version, "v2");
        assert_eq!(all["job-b"].applied_version, "v7");
        // No temp files are left behind.
        let names: Vec<_> = fs::read_dir(dir.path().join("nested"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn touch_rewrites_checked_at_at_most_hourly() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateStore::new(dir.path());
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
        // Another process's write is seen (the cache follows the file).
        StateStore::new(dir.path()).record("k", st("v2")).unwrap();
        assert_eq!(s.get("k").unwrap().applied_version, "v2");
    }

    #[test]
    fn corrupt_file_is_a_fresh_start_and_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("state.json"), b"{not json").unwrap();
        let s = StateStore::new(dir.path());
        assert!(s.load().is_empty());
        s.record("j", st("v1")).unwrap();
        assert_eq!(s.get("j").unwrap().applied_version, "v1");
    }

    #[test]
    fn concurrent_writers_never_lose_updates() {
        let dir = tempfile::tempdir().unwrap();
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let s = StateStore::new(dir.path());
                std::thread::spawn(move || {
                    for n in 0..10 {
                        s.record(&format!("job-{i}"), st(&format!("v{n}"))).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let all = StateStore::new(dir.path()).load();
        assert_eq!(all.len(), 8);
        assert!(all.values().all(|s| s.applied_version == "v9"));
    }
}
