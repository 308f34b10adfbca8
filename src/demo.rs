//! `qlik-rotator demo`: a full rotation cycle against the built-in simulated tenant and a local
//! file vault, using the same configuration loader, client, builders and verification as a
//! real deployment. Needs no network, credentials or setup.
//!
//! The simulated tenant is `qlik-sim`'s demo tenant ([`qlik_sim::simulate::demo_tenant`]).
//! Built without the `sim` feature, the command says so and exits 64.

use std::process::ExitCode;
#[cfg(feature = "sim")]
use std::{collections::HashMap, path::PathBuf, sync::Arc};

#[cfg(feature = "sim")]
use base64::Engine as _;
#[cfg(feature = "sim")]
use qlik_sim::{SimConfig, Simulator, simulate::demo_tenant};
#[cfg(feature = "sim")]
use rand::{Rng, distr::Alphanumeric};
#[cfg(feature = "sim")]
use serde_json::{Value, json};

#[cfg(feature = "sim")]
use crate::{
    app, config,
    rotation::{Outcome, Report, RunOptions},
};

/// The configuration the demo runs with.
pub const DEMO_CONFIG: &str = include_str!("../config/demo.toml");
/// The configuration of the canary and rollback steps (its `vault` is swapped for an
/// in-memory vault that keeps old versions).
pub const DEMO_CANARY_CONFIG: &str = include_str!("../config/demo-canary.toml");

#[cfg(feature = "sim")]
const S3_ID: &str = "0b6a7c6e-3f0e-4d8e-9a1b-5c2d3e4f5a61";
#[cfg(feature = "sim")]
const SQL_ID: &str = "d34cee8d-8e7b-4fee-ab40-1c1c428c0cf9";
#[cfg(feature = "sim")]
const GBQ_ID: &str = "7d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6";
#[cfg(feature = "sim")]
const API_KEY: &str = "sim-api-key";
/// The demo tenant's data sources (crates/qlik-sim/sim-tenant.json `sources`).
#[cfg(feature = "sim")]
const SQL_SOURCE: &str = "sql.acme.internal";

#[cfg(feature = "sim")]
fn random(n: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

/// A connection id and the (property, value) pairs its secret holds.
#[cfg(feature = "sim")]
type Expected = (String, Vec<(&'static str, String)>);

#[cfg(feature = "sim")]
struct Demo {
    sim: Simulator,
    dir: PathBuf,
    /// What each job's secret holds, to check the simulator received exactly that.
    expected: HashMap<&'static str, Expected>,
}

#[cfg(feature = "sim")]
impl Demo {
    async fn start() -> std::io::Result<Demo> {
        let sim = Simulator::start(SimConfig::default()).await?;
        let tenant = demo_tenant();
        // The tenant's api-specs are in Qlik's documented JSON Schema shape (fact sheet §2.8);
        // every job is checked against them before anything is sent.
        tenant.install(&sim);
        let sql_id = SQL_ID.to_owned();

        let dir = std::env::temp_dir().join(format!("qlik-rotator-demo-{}", std::process::id()));
        let vault = dir.join("vault").join("qlik");
        std::fs::create_dir_all(&vault)?;
        let access = format!("AKIA{}", random(16).to_uppercase());
        let secret_key = random(40);
        let user = format!("svc_finance_{}", random(4).to_lowercase());
        let password = random(24);
        let key_file = json!({
            "type": "service_account",
            "project_id": "acme-warehouse",
            "private_key_id": random(16),
            "private_key": format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", random(64)),
            "client_email": "qlik-reader@acme-warehouse.iam.gserviceaccount.com"
        })
        .to_string();
        std::fs::write(
            vault.join("sales-s3.json"),
            json!({"aws_access_key_id": access, "aws_secret_access_key": secret_key}).to_string(),
        )?;
        std::fs::write(
            vault.join("finance-sql.json"),
            json!({"username": user, "password": password}).to_string(),
        )?;
        std::fs::write(vault.join("bigquery.json"), &key_file)?;
        let mut expected = HashMap::new();
        expected.insert(
            "sales-s3",
            (
                S3_ID.to_owned(),
                vec![("accessKey", access), ("secretKey", secret_key)],
            ),
        );
        expected.insert(
            "finance-sqlserver",
            (sql_id, vec![("username", user), ("password", password)]),
        );
        expected.insert(
            "warehouse-bigquery",
            (
                GBQ_ID.to_owned(),
                vec![(
                    "KeyFilePath",
                    base64::engine::general_purpose::STANDARD.encode(key_file.as_bytes()),
                )],
            ),
        );
        Ok(Demo { sim, dir, expected })
    }

    /// Whether the simulator's stored connection holds exactly the vault's new values.
    fn holds_new_credentials(&self, job: &str) -> bool {
        let Some((id, fields)) = self.expected.get(job) else {
            return false;
        };
        let Some(stored) = self.sim.stored(id) else {
            return false;
        };
        let props = &stored["connectionProperties"];
        fields.iter().all(|(prop, want)| match &props[*prop] {
            Value::String(s) => s == want,
            Value::Array(files) => files.first().and_then(|f| f["value"].as_str()) == Some(want),
            _ => false,
        })
    }
}

#[cfg(feature = "sim")]
fn print_report(r: &Report) {
    crate::outln!("  {}", r.line());
}

/// Runs the demo; exit 0 when every connection was rotated and verified.
#[cfg(feature = "sim")]
pub async fn run() -> ExitCode {
    let demo = match Demo::start().await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: cannot start the demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = run_cycle(&demo).await;
    let _ = std::fs::remove_dir_all(&demo.dir);
    demo.sim.shutdown().await;
    code
}

#[cfg(feature = "sim")]
async fn run_cycle(demo: &Demo) -> ExitCode {
    let (cfg, rotator) = match setup(demo).await {
        Ok(built) => built,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::FAILURE;
        }
    };
    print_header(demo, &cfg);
    step_plan(&cfg, &rotator).await;
    let (verified, versions) = step_rotate(demo, &cfg, &rotator).await;
    let held = step_proof(demo, &cfg);
    step_again(demo, &cfg, &rotator, &versions).await;
    let as_designed = match step_canary(demo).await {
        Ok(n) => n,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::FAILURE;
        }
    };

    let total = cfg.jobs.len();
    crate::outln!(
        "\nResult: {verified} of {total} connection(s) rotated and verified; {held} of {total} hold the new credentials."
    );
    crate::outln!(
        "Canary and rollback: {as_designed} of {CANARY_CASES} outcome(s) as designed (rotated and proven, canary_failed, rolled_back)."
    );
    if verified == total && held == total && as_designed == CANARY_CASES {
        crate::outln!(
            "Next: copy config/example.toml, point it at your tenant and vault, and run `qlik-rotator plan -c <file>`."
        );
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Per job: the secret version applied to its connection (for the change-detection step).
#[cfg(feature = "sim")]
type Applied = HashMap<String, HashMap<String, String>>;

/// The embedded config pointed at the simulator, and the rotator built from it.
#[cfg(feature = "sim")]
async fn setup(demo: &Demo) -> Result<(config::Config, Arc<crate::rotation::Rotator>), String> {
    let input: HashMap<String, String> = [
        (
            "QLIK_ROTATOR__QLIK__TENANT_URL".to_owned(),
            demo.sim.base_url(),
        ),
        ("QLIK_ROTATOR_DEMO_API_KEY".to_owned(), API_KEY.to_owned()),
    ]
    .into();
    let cfg = config::load_str(DEMO_CONFIG, &demo.dir, &input)
        .map_err(|e| format!("the embedded demo configuration is invalid: {e}"))?;
    let rotator = app::rotator(&cfg, &input)
        .await
        .map_err(|e| e.to_string())?;
    Ok((cfg, Arc::new(rotator)))
}

#[cfg(feature = "sim")]
fn print_header(demo: &Demo, cfg: &config::Config) {
    crate::outln!("qlik-rotator demo");
    crate::outln!("  simulated Qlik tenant: {}", demo.sim.base_url());
    crate::outln!(
        "  local file vault:      {}",
        demo.dir.join("vault").display()
    );
    crate::outln!(
        "  jobs: {}",
        cfg.jobs
            .iter()
            .map(|j| j.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// Step 1: the masked PATCH of each job; nothing sent.
#[cfg(feature = "sim")]
async fn step_plan(cfg: &config::Config, rotator: &crate::rotation::Rotator) {
    crate::outln!(
        "\n1. plan: the credential-only PATCH each job would send (values masked, nothing sent)"
    );
    for job in &cfg.jobs {
        let opts = RunOptions {
            plan_only: true,
            ..RunOptions::default()
        };
        for r in &rotator.run(job, opts).await {
            match &r.outcome {
                Outcome::Planned(doc) => {
                    crate::outln!(
                        "  {} → PATCH /api/v1/data-connections/{}",
                        job.name,
                        r.connection_id.as_deref().unwrap_or("?")
                    );
                    crate::outln!("    {doc}");
                    for w in &r.warnings {
                        crate::outln!("    warning: {w}");
                    }
                }
                _ => print_report(r),
            }
        }
    }
}

/// Step 2: each job rotated for real; returns how many were verified and the versions applied.
#[cfg(feature = "sim")]
async fn step_rotate(
    demo: &Demo,
    cfg: &config::Config,
    rotator: &crate::rotation::Rotator,
) -> (usize, Applied) {
    crate::outln!("\n2. rotate: fetch → PATCH → verify GET");
    demo.sim.clear_requests();
    let mut versions = Applied::new();
    let mut verified = 0;
    for job in &cfg.jobs {
        let reports = rotator.run(job, RunOptions::default()).await;
        rotator.finish_run(job, &reports);
        for r in &reports {
            print_report(r);
            if matches!(r.outcome, Outcome::Rotated) {
                verified += 1;
            }
            if let Some(v) = &r.secret_version {
                versions.insert(
                    job.name.clone(),
                    HashMap::from([(r.connection_key.clone(), v.clone())]),
                );
            }
        }
    }
    (verified, versions)
}

/// Step 3: what the tenant received and holds; returns how many jobs' connections hold the
/// new credentials.
#[cfg(feature = "sim")]
fn step_proof(demo: &Demo, cfg: &config::Config) -> usize {
    crate::outln!("\n3. proof: what the tenant received and now holds");
    let requests = demo.sim.requests();
    let patches: Vec<_> = requests.iter().filter(|r| r.method == "PATCH").collect();
    let bare_arrays = patches
        .iter()
        .all(|r| serde_json::from_str::<Value>(&r.body).is_ok_and(|v| v.is_array()));
    let statuses: std::collections::BTreeSet<String> =
        patches.iter().map(|r| r.status.to_string()).collect();
    crate::outln!(
        "  {} PATCH request(s), all answered {}, every body a bare JSON Patch array: {}",
        patches.len(),
        statuses.into_iter().collect::<Vec<_>>().join("/"),
        if bare_arrays { "yes" } else { "NO" }
    );
    let mut held = 0;
    for job in &cfg.jobs {
        let ok = demo.holds_new_credentials(&job.name);
        held += usize::from(ok);
        crate::outln!(
            "  {}: the tenant stores the vault's new credentials: {}",
            job.name,
            if ok { "yes" } else { "NO" }
        );
    }
    held
}

/// Step 4: the same versions again: every job `unchanged`, no request sent.
#[cfg(feature = "sim")]
async fn step_again(
    demo: &Demo,
    cfg: &config::Config,
    rotator: &crate::rotation::Rotator,
    versions: &Applied,
) {
    crate::outln!("\n4. run again with the same secret versions (change detection)");
    demo.sim.clear_requests();
    for job in &cfg.jobs {
        let opts = RunOptions {
            last_applied: versions.get(&job.name).cloned().unwrap_or_default(),
            ..RunOptions::default()
        };
        rotator.run(job, opts).await.iter().for_each(print_report);
    }
    crate::outln!(
        "  requests sent to the tenant: {}",
        demo.sim.requests().len()
    );
}

/// The canary and rollback cases of step 5.
#[cfg(feature = "sim")]
const CANARY_CASES: usize = 3;

/// The password the simulator's stored connection `id` holds.
#[cfg(feature = "sim")]
fn stored_password(demo: &Demo, id: &str) -> Option<String> {
    let stored = demo.sim.stored(id)?;
    stored["connectionProperties"]["password"]
        .as_str()
        .map(str::to_owned)
}

/// The world of step 5: the canary configuration, its rotator and the in-memory vault.
#[cfg(feature = "sim")]
struct CanaryWorld {
    cfg: config::Config,
    rotator: crate::rotation::Rotator,
    vault: Arc<crate::secrets::AnySource>,
}

#[cfg(feature = "sim")]
impl CanaryWorld {
    /// Loads the embedded canary configuration against the demo tenant, with a vault in memory.
    fn new(demo: &Demo) -> Result<Self, String> {
        use crate::secrets::{AnySource, fixed::FixedSource};
        let input: HashMap<String, String> = [
            (
                "QLIK_ROTATOR__QLIK__TENANT_URL".to_owned(),
                demo.sim.base_url(),
            ),
            ("QLIK_ROTATOR_DEMO_API_KEY".to_owned(), API_KEY.to_owned()),
        ]
        .into();
        let cfg = config::load_str(DEMO_CANARY_CONFIG, &demo.dir, &input)
            .map_err(|e| format!("the embedded demo canary configuration is invalid: {e}"))?;
        let client = Arc::new(app::qlik_client(&cfg, &input).map_err(|e| e.to_string())?);
        let vault = Arc::new(AnySource::Fixed(FixedSource::new()));
        let rotator = crate::rotation::Rotator::new(
            client,
            HashMap::from([("vault".to_owned(), vault.clone())]),
        );
        Ok(Self {
            cfg,
            rotator,
            vault,
        })
    }

    /// Writes a new version of secret `id` to the vault; returns the version.
    fn put(&self, id: &str, value: &Value) -> String {
        match &*self.vault {
            crate::secrets::AnySource::Fixed(f) => f.put(id, value.to_string()),
            _ => unreachable!("the demo vault is in memory"),
        }
    }

    /// The job `name` of the canary configuration.
    fn job(&self, name: &str) -> Result<&config::JobConfig, String> {
        self.cfg
            .job(name)
            .ok_or_else(|| format!("the demo canary configuration has no job {name}"))
    }

    /// Runs `job` once, records the run and prints its reports.
    async fn run(&self, job: &config::JobConfig, opts: RunOptions) -> Vec<Report> {
        let reports = self.rotator.run(job, opts).await;
        self.rotator.finish_run(job, &reports);
        reports.iter().for_each(print_report);
        reports
    }
}

/// Step 5: canaries and rollback, with an in-memory vault that keeps versions. Returns how
/// many of the three cases ended as designed: a credential the database accepts is rotated
/// and proven by a reload; a credential the bucket does not accept is `canary_failed`
/// (verify alone passes it: Qlik never returns secrets); a credential the database rejects
/// is rolled back to the last verified version, verified and proven again.
#[cfg(feature = "sim")]
async fn step_canary(demo: &Demo) -> Result<usize, String> {
    crate::outln!(
        "\n5. canary and rollback: a reload of an app that reads through the connection proves Qlik can use the credential"
    );
    let world = CanaryWorld::new(demo)?;
    let (sql, s3) = (world.job("finance-sqlserver")?, world.job("sales-s3")?);
    // A simulated reload reaches its final status at the first poll (0.5 s after queueing).
    demo.sim.set_reload_steps(Some(0));
    let user = format!("svc_finance_{}", random(4).to_lowercase());
    let good = random(24);
    let (a, v1, last_applied) = canary_accepted(demo, &world, sql, &user, &good).await;
    let b = canary_rejected_by_the_bucket(&world, s3).await;
    let c = canary_rolled_back(demo, &world, sql, (&user, &good), &v1, last_applied).await;
    Ok([a, b, c].into_iter().filter(|ok| *ok).count())
}

/// Step 5a: the DBA sets a new password on the database and writes it to the vault. Returns
/// whether it ended as designed, the version written and the versions now last applied.
#[cfg(feature = "sim")]
async fn canary_accepted(
    demo: &Demo,
    world: &CanaryWorld,
    sql: &config::JobConfig,
    user: &str,
    good: &str,
) -> (bool, String, HashMap<String, String>) {
    let v1 = world.put(
        "qlik/finance-sql",
        &json!({"username": user, "password": good}),
    );
    let mut accepted = serde_json::Map::new();
    accepted.insert("username".into(), json!(user));
    accepted.insert("password".into(), json!(good));
    demo.sim.set_source_accepts(SQL_SOURCE, vec![accepted]);
    crate::outln!(
        "  a. {SQL_SOURCE} now accepts a new password, written to the vault as version {v1}"
    );
    let reports = world.run(sql, RunOptions::default()).await;
    let mut last_applied = HashMap::new();
    if let [r] = reports.as_slice()
        && matches!(r.outcome, Outcome::Rotated)
        && r.canary.is_some()
    {
        last_applied.insert(r.connection_key.clone(), v1.clone());
        crate::outln!(
            "     → as designed: rotated, and proven: Qlik reloaded Finance Reporting through the connection with the new credential"
        );
        return (true, v1, last_applied);
    }
    crate::outln!("     → NOT as designed: expected rotated and proven by a canary reload");
    (false, v1, last_applied)
}

/// Step 5b: a vault secret the bucket does not accept (a mistyped key): verify passes, the
/// reload fails. Returns whether it ended as designed.
#[cfg(feature = "sim")]
async fn canary_rejected_by_the_bucket(world: &CanaryWorld, s3: &config::JobConfig) -> bool {
    let v = world.put(
        "qlik/sales-s3",
        &json!({
            "aws_access_key_id": format!("AKIA{}", random(16).to_uppercase()),
            "aws_secret_access_key": random(40),
        }),
    );
    crate::outln!(
        "  b. the vault holds an S3 key (version {v}) that the bucket s3://acme-sales does not accept"
    );
    let reports = world.run(s3, RunOptions::default()).await;
    if let [r] = reports.as_slice()
        && matches!(r.outcome, Outcome::CanaryFailed(_))
    {
        crate::outln!(
            "     → as designed: canary_failed. Verify alone would have called it rotated (Qlik never returns secrets); the reload of Sales Dashboard failed, so the rotator alerts instead"
        );
        return true;
    }
    crate::outln!("     → NOT as designed: expected canary_failed");
    false
}

/// Step 5c: a password the database rejects, with rollback = true and `v1` the last verified.
/// Returns whether it ended as designed.
#[cfg(feature = "sim")]
async fn canary_rolled_back(
    demo: &Demo,
    world: &CanaryWorld,
    sql: &config::JobConfig,
    (user, good): (&str, &str),
    v1: &str,
    last_applied: HashMap<String, String>,
) -> bool {
    let v2 = world.put(
        "qlik/finance-sql",
        &json!({"username": user, "password": format!("{good}-typo")}),
    );
    crate::outln!(
        "  c. the vault's version {v2} holds a password {SQL_SOURCE} rejects; rollback = true, last verified version {v1}"
    );
    let opts = RunOptions {
        last_applied,
        ..RunOptions::default()
    };
    let reports = world.run(sql, opts).await;
    let holds_v1 = stored_password(demo, SQL_ID).as_deref() == Some(good);
    if let [r] = reports.as_slice()
        && matches!(r.outcome, Outcome::RolledBack { .. })
        && r.canary.is_some()
        && holds_v1
    {
        crate::outln!(
            "     → as designed: rolled_back. Version {v2} failed its canary; version {v1} was put back, verified and proven by a reload; the tenant holds version {v1}: yes"
        );
        return true;
    }
    crate::outln!(
        "     → NOT as designed: expected rolled_back to version {v1} (the tenant holds it: {})",
        if holds_v1 { "yes" } else { "no" }
    );
    false
}

/// Without the simulator: says so and exits 64.
#[cfg(not(feature = "sim"))]
pub async fn run() -> ExitCode {
    eprintln!("error: {}", crate::simulate::not_built_in("demo"));
    ExitCode::from(crate::commands::EXIT_USAGE)
}
