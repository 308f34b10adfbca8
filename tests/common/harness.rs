//! Shared helpers: a seeded simulated tenant, config files, and running the real binary.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use qlik_sim::{RecordedRequest, SeedConnection, SimConfig, Simulator};
use serde_json::{Value, json};

use super::moto::Moto;

/// The simulator's default API key.
pub const API_KEY: &str = "sim-api-key";
/// Fixed ids of the seeded connections.
pub const S3_ID: &str = "11111111-1111-4111-8111-111111111111";
/// SQL Server connection id (looked up by name "Finance SQL" in space "finance").
pub const SQL_ID: &str = "22222222-2222-4222-8222-222222222222";
/// BigQuery connection id.
pub const GBQ_ID: &str = "33333333-3333-4333-8333-333333333333";

/// Starts a simulator with one S3, one SQL Server and one BigQuery connection.
pub async fn tenant(cfg: SimConfig) -> Simulator {
    let sim = Simulator::start(cfg).await.expect("simulator starts");
    let mut s3 = SeedConnection::new(
        "Sales S3",
        "File_AmazonS3ConnectorV2",
        json!({"region": "eu-west-1", "bucketName": "sales", "accessKey": "AKIAOLD", "secretKey": "old-secret"}),
    );
    s3.id = Some(S3_ID.into());
    s3.space = Some("sales".into());
    sim.add_connection(s3);
    let mut sql = SeedConnection::new(
        "Finance SQL",
        "mssql",
        json!({"host": "sql.internal", "port": 1433, "database": "fin", "username": "old_user", "password": "old-pass"}),
    );
    sql.id = Some(SQL_ID.into());
    sql.space = Some("finance".into());
    sim.add_connection(sql);
    let mut gbq = SeedConnection::new(
        "Warehouse BQ",
        "gbq",
        json!({"OAuthMechanism": "0", "Catalog": "wh", "KeyFilePath": [{"name": "old.json", "value": "b2xk"}]}),
    );
    gbq.id = Some(GBQ_ID.into());
    sim.add_connection(gbq);
    sim
}

/// Requests with this method.
pub fn with_method(sim: &Simulator, method: &str) -> Vec<RecordedRequest> {
    sim.requests()
        .into_iter()
        .filter(|r| r.method == method)
        .collect()
}

/// A stored connection property, as a string.
pub fn stored_prop(sim: &Simulator, id: &str, prop: &str) -> Value {
    sim.stored(id).expect("stored connection")["connectionProperties"][prop].clone()
}

/// Writes `text` as `<dir>/config.toml`.
pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// The `[qlik]` section for a simulator, with the API key read from `QLIK_API_KEY`.
pub fn qlik_section(sim: &Simulator) -> String {
    format!(
        "[qlik]\ntenant_url = \"{}\"\napi_key_env = \"QLIK_API_KEY\"\n",
        sim.base_url()
    )
}

/// The three standard jobs, reading from source `src`.
pub fn three_jobs(src: &str) -> String {
    format!(
        r#"
[[jobs]]
name = "sales-s3"
connection = {{ id = "{S3_ID}" }}
connector = "File_AmazonS3ConnectorV2"
source = "{src}"
secret = "qlik/sales-s3"

[[jobs]]
name = "finance-sql"
connection = {{ name = "Finance SQL", space = "finance" }}
connector = "mssql"
source = "{src}"
secret = "qlik/finance-sql"

[[jobs]]
name = "warehouse-bq"
connection = {{ id = "{GBQ_ID}" }}
connector = "gbq"
source = "{src}"
secret = "qlik/bigquery"
"#
    )
}

/// Environment for the binary to reach moto through the AWS default chain.
pub fn aws_env(moto: &Moto) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL_SECRETS_MANAGER", moto.endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

/// What a run of the binary produced.
#[derive(Debug)]
pub struct CliOutput {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error (logs).
    pub stderr: String,
}

/// A `Command` for the real binary with a clean environment (PATH only) plus `env`.
pub fn command(args: &[&str], env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qlik-rotator"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null());
    cmd
}

/// Runs the binary to completion (off the async runtime's threads).
pub async fn run_cli(args: &[&str], env: &[(String, String)]) -> CliOutput {
    let mut cmd = command(args, env);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run qlik-rotator"))
        .await
        .expect("join");
    CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Polls `check` every 50 ms until it holds or `timeout` passes.
pub async fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check()
}

/// `KEY=value` pairs from string slices.
pub fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The value of the first sample of `name` whose labels include every `labels` pair.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// GETs `http://addr/path` and returns (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    match reqwest::get(format!("http://{addr}{path}")).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

/// Pipes `text` through `promtool check metrics`; panics with a clear message if promtool is
/// missing (CI installs Debian's `prometheus` package).
pub fn promtool_check_metrics(text: &str) -> (bool, String) {
    use std::io::Write;
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = child.unwrap_or_else(|e| {
        panic!("promtool is required ({e}): apt-get install -y --no-install-recommends prometheus")
    });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Sends SIGTERM to a child process.
pub fn sigterm(child: &std::process::Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}
