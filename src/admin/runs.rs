//! The runs the admin triggers started, for `GET /runs/{id}`: a bounded in-memory table of
//! the most recent [`MAX_RUNS`] (the oldest evicted first; lost at restart).
//!
//! A run id is 128 random bits in hex: not guessable, though not a secret either (a reader
//! still needs the read or admin token). Each run holds, per job, its state (queued, running,
//! finished) and, once finished, the outcome of each connection: labels and version ids only,
//! never a secret value.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use serde::Serialize;

/// How many runs are kept.
pub const MAX_RUNS: usize = 1000;

/// Where a run (or one job of it) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Waiting for a rotation slot.
    Queued,
    /// Started.
    Running,
    /// Ended (or was skipped).
    Finished,
}

/// The outcome of one connection in a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunResult {
    /// The connection id (or its configured reference); empty when the job did not run.
    pub connection: String,
    /// The outcome label (`rotated`, `unchanged`, `failed`, …; `skipped` when the job did
    /// not run).
    pub outcome: String,
    /// The stage that failed, if one did.
    pub stage: Option<String>,
    /// The error type (for `skipped`: why, e.g. `already_running`).
    pub error_type: Option<String>,
    /// The secret version read (an id, never a value).
    pub secret_version: Option<String>,
}

impl RunResult {
    /// Whether this connection ended well.
    pub fn ok(&self) -> bool {
        matches!(self.outcome.as_str(), "rotated" | "unchanged")
    }
}

/// One job of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobRun {
    /// The job.
    pub job: String,
    /// Where it stands.
    pub state: RunState,
    /// Its connections' outcomes, once finished.
    pub connections: Vec<RunResult>,
}

/// A run as `GET /runs/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Run {
    /// Its id.
    pub id: String,
    /// `job` (`POST /jobs/{name}/rotate`) or `secret` (`POST /secrets/{id}/rotate`).
    pub trigger: &'static str,
    /// The job name or secret id asked for (escaped, capped).
    pub target: String,
    /// Rotate even when the applied version is current.
    pub force: bool,
    /// The whole run: queued until a job starts, finished once every job is.
    pub state: RunState,
    /// When it was accepted (RFC 3339).
    pub created_at: String,
    /// When its last job finished.
    pub finished_at: Option<String>,
    /// Every connection ended well (`None` until finished).
    pub ok: Option<bool>,
    /// Its jobs.
    pub jobs: Vec<JobRun>,
}

#[derive(Debug, Default)]
struct Table {
    runs: HashMap<String, Run>,
    order: VecDeque<String>,
}

/// The table of recent runs (shared by the admin listener and the daemon).
#[derive(Debug)]
pub struct Runs {
    cap: usize,
    table: Mutex<Table>,
}

impl Default for Runs {
    fn default() -> Self {
        Runs::new(MAX_RUNS)
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Whether `id` has the shape of a run id (32 lower-case hex digits).
pub fn valid_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Runs {
    /// A table keeping the `cap` most recent runs.
    pub fn new(cap: usize) -> Self {
        Runs {
            cap: cap.max(1),
            table: Mutex::new(Table::default()),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a run record (no jobs yet), evicting the oldest beyond the cap; returns its
    /// ticket.
    pub fn create(self: &Arc<Self>, trigger: &'static str, target: &str, force: bool) -> RunTicket {
        use rand::Rng;
        let id = format!("{:032x}", rand::rng().random::<u128>());
        let run = Run {
            id: id.clone(),
            trigger,
            target: crate::text::printable(target, 256),
            force,
            state: RunState::Queued,
            created_at: now(),
            finished_at: None,
            ok: None,
            jobs: Vec::new(),
        };
        let mut t = self.table();
        while t.order.len() >= self.cap {
            if let Some(old) = t.order.pop_front() {
                t.runs.remove(&old);
            }
        }
        t.order.push_back(id.clone());
        t.runs.insert(id.clone(), run);
        RunTicket {
            runs: self.clone(),
            id,
        }
    }

    /// A run by id (`None` when unknown or evicted).
    pub fn get(&self, id: &str) -> Option<Run> {
        self.table().runs.get(id).cloned()
    }

    /// How many runs are kept.
    pub fn len(&self) -> usize {
        self.table().order.len()
    }

    /// Whether no run is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn remove(&self, id: &str) {
        let mut t = self.table();
        if t.runs.remove(id).is_some() {
            t.order.retain(|i| i != id);
        }
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut Run)) {
        if let Some(run) = self.table().runs.get_mut(id) {
            f(run);
            settle(run);
        }
    }
}

/// The run's state and `ok` from its jobs'.
fn settle(run: &mut Run) {
    let all = |s: RunState| run.jobs.iter().all(|j| j.state == s);
    run.state = if run.jobs.is_empty() || all(RunState::Queued) {
        RunState::Queued
    } else if all(RunState::Finished) {
        RunState::Finished
    } else {
        RunState::Running
    };
    if run.state == RunState::Finished && run.finished_at.is_none() {
        run.finished_at = Some(now());
        run.ok = Some(
            (run.jobs.iter())
                .all(|j| !j.connections.is_empty() && j.connections.iter().all(RunResult::ok)),
        );
    }
}

/// The handle on one run that the daemon updates as its jobs go.
#[derive(Debug, Clone)]
pub struct RunTicket {
    runs: Arc<Runs>,
    id: String,
}

impl RunTicket {
    /// The run's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Adds `job`, queued (before its run is spawned).
    pub fn queued(&self, job: &str) {
        let job = crate::text::printable(job, 256);
        self.runs.update(&self.id, |r| {
            r.jobs.push(JobRun {
                job,
                state: RunState::Queued,
                connections: Vec::new(),
            });
        });
    }

    fn set(&self, job: &str, state: RunState, results: Vec<RunResult>) {
        let job = crate::text::printable(job, 256);
        self.runs.update(&self.id, |r| {
            if let Some(j) = r
                .jobs
                .iter_mut()
                .find(|j| j.job == job && j.state != RunState::Finished)
            {
                j.state = state;
                j.connections = results;
            }
        });
    }

    /// `job` started.
    pub fn running(&self, job: &str) {
        self.set(job, RunState::Running, Vec::new());
    }

    /// `job` finished with these outcomes (escaped here).
    pub fn finished(&self, job: &str, results: Vec<RunResult>) {
        let clean = |s: String| crate::text::printable(&s, 256);
        let results = (results.into_iter())
            .map(|r| RunResult {
                connection: clean(r.connection),
                outcome: clean(r.outcome),
                stage: r.stage.map(clean),
                error_type: r.error_type.map(clean),
                secret_version: r.secret_version.map(clean),
            })
            .collect();
        self.set(job, RunState::Finished, results);
    }

    /// Forgets the run (the trigger was refused: no such job, shutting down).
    pub fn discard(&self) {
        self.runs.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(outcome: &str) -> RunResult {
        RunResult {
            connection: "c".into(),
            outcome: outcome.into(),
            stage: None,
            error_type: None,
            secret_version: Some("v1".into()),
        }
    }

    #[test]
    fn a_run_goes_queued_running_finished_with_its_outcome() {
        let runs = Arc::new(Runs::new(10));
        let t = runs.create("secret", "app/db", false);
        assert!(valid_id(t.id()), "{}", t.id());
        assert_eq!(runs.get(t.id()).unwrap().state, RunState::Queued);
        t.queued("a");
        t.queued("b");
        t.running("a");
        assert_eq!(runs.get(t.id()).unwrap().state, RunState::Running);
        t.finished("a", vec![result("rotated")]);
        let r = runs.get(t.id()).unwrap();
        assert_eq!((r.state, r.ok), (RunState::Running, None));
        t.finished("b", vec![result("failed")]);
        let r = runs.get(t.id()).unwrap();
        assert_eq!((r.state, r.ok), (RunState::Finished, Some(false)));
        assert!(r.finished_at.is_some());
        assert_eq!(r.jobs[1].connections[0].outcome, "failed");
    }

    #[test]
    fn the_oldest_runs_are_evicted_beyond_the_cap() {
        let runs = Arc::new(Runs::new(3));
        let ids: Vec<String> = (0..5)
            .map(|i| runs.create("job", &format!("j{i}"), false).id().to_owned())
            .collect();
        assert_eq!(runs.len(), 3);
        assert!(runs.get(&ids[0]).is_none() && runs.get(&ids[1]).is_none());
        assert!(ids[2..].iter().all(|i| runs.get(i).is_some()));
        // A ticket of an evicted run updates nothing and does not come back.
        RunTicket {
            runs: runs.clone(),
            id: ids[0].clone(),
        }
        .queued("x");
        assert!(runs.get(&ids[0]).is_none());
        // A refused trigger's run goes again (the one its creation evicted stays evicted).
        let refused = runs.create("job", "j5", false);
        let id = refused.id().to_owned();
        refused.discard();
        assert!(runs.get(&id).is_none());
        assert_eq!(runs.len(), 2);
        assert_eq!(Runs::default().cap, MAX_RUNS);
    }

    #[test]
    fn ids_are_distinct_and_hostile_text_is_escaped() {
        let runs = Arc::new(Runs::new(100));
        let a = runs.create("job", "x\u{1b}[2J\n", true);
        let b = runs.create("job", "x", true);
        assert_ne!(a.id(), b.id());
        a.queued("x\u{1b}[2J\n");
        let mut bad = result("failed\u{7}");
        bad.error_type = Some("e\r".into());
        a.finished("x\u{1b}[2J\n", vec![bad]);
        let json = serde_json::to_string(&runs.get(a.id()).unwrap()).unwrap();
        assert!(!json.contains('\u{1b}') && !json.contains('\u{7}') && !json.contains('\r'));
        assert!(json.contains("\"state\":\"finished\""), "{json}");
        for bad in [
            "",
            "G0000000000000000000000000000000",
            &"a".repeat(33),
            "../../etc/passwd",
        ] {
            assert!(!valid_id(bad), "{bad}");
        }
    }
}
