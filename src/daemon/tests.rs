//! The scheduling core on paused tokio time: no network, no real clock. The daemon runs
//! with [`Fake`], a runner that records when each run starts and holds its rotation slot for
//! a fixed time; the tests drive the tick handler ([`Daemon::on_tick`]), triggers and the
//! drain directly, as tokio-cron-scheduler and the signal handler would.
use std::{collections::HashMap, path::Path, sync::Mutex};

use tokio::{sync::Semaphore, time::Instant};

use super::*;
use crate::config::ConnectionRef;

/// One run the fake runner was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Run {
    job: String,
    force: bool,
    /// Whether the caller brought a slot (a dispatch does, a trigger does not).
    with_permit: bool,
    /// When it started (it had a slot), from the fake's creation.
    at: Duration,
}

/// A runner without I/O: `slots` rotation slots, each run holds one for `hold`.
struct Fake {
    limit: Arc<Semaphore>,
    cancel: CancellationToken,
    metrics: Arc<Metrics>,
    hold: Duration,
    t0: Instant,
    runs: Mutex<Vec<Run>>,
}

impl Fake {
    fn new(slots: usize, hold: Duration) -> Arc<Fake> {
        Arc::new(Fake {
            limit: Arc::new(Semaphore::new(slots)),
            cancel: CancellationToken::new(),
            metrics: Arc::new(Metrics::new()),
            hold,
            t0: Instant::now(),
            runs: Mutex::new(Vec::new()),
        })
    }

    fn runs(&self) -> Vec<Run> {
        self.runs.lock().unwrap().clone()
    }

    /// (job, start second) of every run so far.
    fn starts(&self) -> Vec<(String, u64)> {
        (self.runs().into_iter())
            .map(|r| (r.job, r.at.as_secs()))
            .collect()
    }
}

impl RunJobs for Fake {
    type Permit = tokio::sync::OwnedSemaphorePermit;

    fn slot(&self, _job: &JobRuntime) -> impl Future<Output = Option<Self::Permit>> + Send {
        let (limit, cancel) = (self.limit.clone(), self.cancel.clone());
        async move {
            tokio::select! {
                p = limit.acquire_owned() => p.ok(),
                () = cancel.cancelled() => None,
            }
        }
    }

    fn run(
        &self,
        job: &JobRuntime,
        force: bool,
        permit: Option<Self::Permit>,
        _secret: Option<crate::triggers::Prefetched>,
    ) -> impl Future<Output = bool> + Send {
        let with_permit = permit.is_some();
        let slot = self.slot(job);
        let job = job.cfg().name.clone();
        async move {
            let Some(_slot) = (match permit {
                Some(p) => Some(p),
                None => slot.await,
            }) else {
                return false;
            };
            self.runs.lock().unwrap().push(Run {
                job,
                force,
                with_permit,
                at: self.t0.elapsed(),
            });
            tokio::time::sleep(self.hold).await;
            true
        }
    }

    fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

/// Jobs from `[[jobs]]` lines: (name, extra TOML lines of the job).
fn job_configs(jobs: &[(&str, &str)]) -> Vec<JobConfig> {
    let mut text = String::from(
        "[qlik]\ntenant_url = \"https://t.eu.qlikcloud.com\"\napi_key_env = \"K\"\n\
         [sources.f]\ntype = \"file\"\npath = \"/v\"\n",
    );
    for (i, (name, extra)) in jobs.iter().enumerate() {
        text.push_str(&format!(
            "[[jobs]]\nname = \"{name}\"\nconnection = {{ id = \"00000000-0000-4000-8000-{i:012}\" }}\n\
             connector = \"mssql\"\nsource = \"f\"\nsecret = \"s{i}\"\n{extra}\n"
        ));
    }
    crate::config::load_str(&text, Path::new("/"), &HashMap::new())
        .expect("valid config")
        .jobs
}

/// A daemon over `jobs` (as [`job_configs`]) and `runner`, pre-flight passed.
fn daemon(jobs: &[(&str, &str)], runner: &Arc<Fake>) -> Arc<Daemon<Fake>> {
    let jobs = job_configs(jobs).into_iter().map(JobRuntime::ungated);
    Arc::new(Daemon::with_runner(jobs, runner.clone(), |_| false))
}

/// The schedule group of job `name`.
fn group_of(d: &Daemon<Fake>, name: &str) -> Arc<ScheduleGroup> {
    (d.schedule_groups().into_iter())
        .find(|g| g.jobs.iter().any(|j| j.cfg().name == name))
        .expect("the job has a schedule")
}

async fn wait(secs: u64) {
    tokio::time::sleep(Duration::from_secs(secs)).await;
}

const EVERY_5_MIN: &str = "schedule = \"0 */5 * * * *\"";

#[test]
fn one_group_per_schedule_and_time_zone() {
    let fake = Fake::new(1, Duration::ZERO);
    let paris = "schedule = \"0 */5 * * * *\"\ntimezone = \"Europe/Paris\"";
    let d = daemon(
        &[
            ("a", EVERY_5_MIN),
            ("b", EVERY_5_MIN),
            ("c", paris),
            ("d", "schedule = \"0 0 3 * * *\""),
            ("e", "run_on_start = true"),
        ],
        &fake,
    );
    let groups: Vec<(String, Vec<String>)> = (d.schedule_groups().iter())
        .map(|g| {
            let jobs = g.jobs.iter().map(|j| j.cfg().name.clone()).collect();
            (g.schedule.clone(), jobs)
        })
        .collect();
    let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        groups,
        [
            ("0 */5 * * * * (Europe/Paris)".to_owned(), names(&["c"])),
            ("0 */5 * * * * (UTC)".to_owned(), names(&["a", "b"])),
            ("0 0 3 * * * (UTC)".to_owned(), names(&["d"])),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_tick_starts_its_group_after_each_jitter_one_slot_at_a_time() {
    let fake = Fake::new(1, Duration::from_secs(4));
    let jitter = format!("{EVERY_5_MIN}\njitter = \"10s\"");
    let d = daemon(
        &[("a", &jitter), ("b", &jitter), ("c", &jitter), ("x", "")],
        &fake,
    );
    d.on_tick(&group_of(&d, "a"));
    wait(100).await;
    let runs = fake.runs();
    let mut jobs: Vec<&str> = runs.iter().map(|r| r.job.as_str()).collect();
    jobs.sort_unstable();
    assert_eq!(jobs, ["a", "b", "c"], "the group's jobs, each once");
    assert!(runs.iter().all(|r| r.with_permit && !r.force), "{runs:?}");
    // One slot, each run holds it 4 s: starts are at least 4 s apart; the first waits for
    // its own jitter only (at most 10 s), the last starts by 10 s + 2 × 4 s.
    for w in runs.windows(2) {
        assert!(w[1].at >= w[0].at + Duration::from_secs(4), "{runs:?}");
    }
    assert!(runs[0].at <= Duration::from_secs(10), "{runs:?}");
    assert!(runs[2].at <= Duration::from_secs(18), "{runs:?}");
}

#[tokio::test(start_paused = true)]
async fn a_tick_while_its_group_is_still_dispatching_is_skipped() {
    // One slot, runs of 60 s: b waits for a's slot, so the group is still dispatching when
    // the next tick comes 1 s later.
    let fake = Fake::new(1, Duration::from_secs(60));
    let d = daemon(&[("a", EVERY_5_MIN), ("b", EVERY_5_MIN)], &fake);
    let group = group_of(&d, "a");
    d.on_tick(&group);
    wait(1).await;
    d.on_tick(&group);
    wait(129).await;
    assert_eq!(fake.starts(), [("a".into(), 0), ("b".into(), 60)]);
    // Once the dispatch is over, the next tick runs the group again.
    d.on_tick(&group);
    wait(200).await;
    assert_eq!(
        fake.starts(),
        [
            ("a".into(), 0),
            ("b".into(), 60),
            ("a".into(), 130),
            ("b".into(), 190)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn groups_dispatch_independently_within_the_shared_slots() {
    let fake = Fake::new(2, Duration::from_secs(30));
    let daily = "schedule = \"0 0 3 * * *\"";
    let d = daemon(
        &[("a", EVERY_5_MIN), ("b", EVERY_5_MIN), ("c", daily)],
        &fake,
    );
    d.on_tick(&group_of(&d, "a"));
    d.on_tick(&group_of(&d, "c"));
    wait(100).await;
    // Two slots for three jobs: the third start waits for the first slot to free up.
    let mut secs: Vec<u64> = fake.starts().into_iter().map(|(_, s)| s).collect();
    secs.sort_unstable();
    assert_eq!(secs, [0, 0, 30]);
}

#[tokio::test(start_paused = true)]
async fn after_stop_a_tick_starts_nothing_and_a_dispatch_in_progress_stops() {
    let fake = Fake::new(1, Duration::from_secs(60));
    let d = daemon(&[("a", EVERY_5_MIN), ("b", EVERY_5_MIN)], &fake);
    let group = group_of(&d, "a");
    d.on_tick(&group);
    wait(10).await;
    // b is waiting for a's slot when the daemon stops: it never starts.
    d.stop_starting();
    assert!(!d.is_ready());
    d.on_tick(&group);
    wait(300).await;
    assert_eq!(fake.starts(), [("a".into(), 0)]);
}

#[tokio::test(start_paused = true)]
async fn run_on_start_jobs_start_at_once_without_their_jitter() {
    let fake = Fake::new(4, Duration::from_secs(1));
    let extra = "run_on_start = true\njitter = \"1h\"";
    let d = daemon(&[("a", extra), ("b", extra), ("c", "")], &fake);
    d.start_on_start();
    wait(1).await;
    let mut starts = fake.starts();
    starts.sort();
    assert_eq!(starts, [("a".into(), 0), ("b".into(), 0)]);
}

#[tokio::test(start_paused = true)]
async fn a_trigger_during_a_scheduled_run_goes_to_the_runner_forced_and_without_a_slot() {
    // The runner, not the daemon, refuses a second run of a job still running (`Runner`
    // holds a lock per job); the daemon passes the trigger on at once.
    let fake = Fake::new(2, Duration::from_secs(60));
    let d = daemon(&[("a", EVERY_5_MIN)], &fake);
    d.on_tick(&group_of(&d, "a"));
    wait(5).await;
    assert!(matches!(d.trigger("a", true), Triggered::Started));
    wait(1).await;
    let runs = fake.runs();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(runs[0].with_permit && !runs[0].force);
    assert!(!runs[1].with_permit && runs[1].force);
    assert_eq!(
        runs[1].at,
        Duration::from_secs(5),
        "a trigger starts at once"
    );
    // An unknown job, and any job once the daemon stops, is refused without a run.
    assert!(matches!(d.trigger("nope", false), Triggered::UnknownJob));
    d.stop_starting();
    assert!(matches!(d.trigger("a", false), Triggered::ShuttingDown));
    wait(100).await;
    assert_eq!(fake.runs().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn drain_waits_for_runs_in_flight_up_to_the_grace_period() {
    // A run of 10 s started at 0: stopping at 1 s waits 9 s more, within a 30 s grace.
    let fake = Fake::new(1, Duration::from_secs(10));
    let d = daemon(&[("a", EVERY_5_MIN)], &fake);
    d.on_tick(&group_of(&d, "a"));
    wait(1).await;
    d.stop_starting();
    let t = Instant::now();
    assert!(d.drain(Duration::from_secs(30)).await);
    assert_eq!(t.elapsed(), Duration::from_secs(9));

    // A run of 1 h: the drain gives up after exactly the grace period.
    let fake = Fake::new(1, Duration::from_secs(3600));
    let d = daemon(&[("a", EVERY_5_MIN)], &fake);
    d.on_tick(&group_of(&d, "a"));
    wait(1).await;
    d.stop_starting();
    let t = Instant::now();
    assert!(!d.drain(Duration::from_secs(30)).await);
    assert_eq!(t.elapsed(), Duration::from_secs(30));
}

#[test]
fn the_last_success_carried_over_is_the_oldest_and_needs_every_connection() {
    let job = job_configs(&[("a", "")]).remove(0);
    let mut two = job.clone();
    two.connections.push(Target::new(
        ConnectionRef::Name {
            name: "second".into(),
            space: None,
        },
        job.tenant.clone(),
    ));
    let one_known = |c: &Target| matches!(c.conn, ConnectionRef::Id(_)).then_some(1_000);
    assert_eq!(carried_last_success(&job, one_known), Some(1_000));
    // A connection never applied: no last success (the job is stale until it runs).
    assert_eq!(carried_last_success(&two, one_known), None);
    let both = |c: &Target| {
        Some(if matches!(c.conn, ConnectionRef::Id(_)) {
            1_000
        } else {
            500
        })
    };
    assert_eq!(carried_last_success(&two, both), Some(500));
}

/// Runs [`stagger`] over `delays` with `slots` rotation slots; each started job holds its
/// slot for `hold`. Returns (job, start offset) in start order.
async fn starts(delays: &[u64], slots: usize, hold: Duration) -> Vec<(usize, Duration)> {
    let t0 = Instant::now();
    let limit = Arc::new(Semaphore::new(slots));
    let log = Arc::new(Mutex::new(Vec::new()));
    let tracker = TaskTracker::new();
    stagger(
        delays.iter().map(|s| Duration::from_secs(*s)).collect(),
        &CancellationToken::new(),
        || {
            let l = limit.clone();
            async move { l.acquire_owned().await.ok() }
        },
        |i, permit| {
            log.lock().unwrap().push((i, t0.elapsed()));
            tracker.spawn(async move {
                tokio::time::sleep(hold).await;
                drop(permit);
            });
        },
    )
    .await;
    tracker.close();
    tracker.wait().await;
    Arc::try_unwrap(log).unwrap().into_inner().unwrap()
}

#[tokio::test(start_paused = true)]
async fn jobs_start_in_order_of_their_jitter_delay_and_not_before_it() {
    let got = starts(&[30, 0, 5, 5, 1], 10, Duration::ZERO).await;
    let secs: Vec<(usize, u64)> = got.iter().map(|(i, d)| (*i, d.as_secs())).collect();
    assert_eq!(secs, [(1, 0), (4, 1), (2, 5), (3, 5), (0, 30)]);
}

#[tokio::test(start_paused = true)]
async fn a_job_waits_for_a_free_rotation_slot() {
    // Two slots, each run holds its slot 10 s: jobs start in pairs, 10 s apart.
    let got = starts(&[0, 0, 0, 0, 0], 2, Duration::from_secs(10)).await;
    let secs: Vec<u64> = got.iter().map(|(_, d)| d.as_secs()).collect();
    assert_eq!(secs, [0, 0, 10, 10, 20]);
}

#[tokio::test(start_paused = true)]
async fn cancelling_stops_starting_jobs_even_during_a_delay() {
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(7)).await;
        c.cancel();
    });
    let mut started = Vec::new();
    stagger(
        [0, 5, 60, 3600].map(Duration::from_secs).to_vec(),
        &cancel,
        || async { Some(()) },
        |i, ()| started.push(i),
    )
    .await;
    assert_eq!(started, [0, 1]);
}

#[tokio::test(start_paused = true)]
async fn a_closed_slot_source_ends_the_dispatch() {
    let mut started = Vec::new();
    let mut given = 0;
    stagger(
        vec![Duration::ZERO; 4],
        &CancellationToken::new(),
        || {
            given += 1;
            std::future::ready((given <= 2).then_some(()))
        },
        |i, ()| started.push(i),
    )
    .await;
    assert_eq!(started, [0, 1]);
}
