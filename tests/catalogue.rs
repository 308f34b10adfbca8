//! The whole connector catalogue end to end, over real HTTP: for every `datasourceID` (gateway
//! variants included) and every scheme, a seeded simulator connection with old credentials,
//! the connector's api-specs, a file-vault secret, and a config job → one rotation, then the
//! stored connection, the PATCH body and the outcome are checked. Also: README's connector
//! table is the generated one.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use base64::Engine as _;
use qlik_rotator::{
    config::load_str,
    connectors::{CATALOGUE, Connector, PropKind, Scheme, catalogue::markdown_table},
    metrics::Metrics,
    rotation::{Outcome, RunOptions},
};
use qlik_sim::{
    SeedConnection, SimConfig, Simulator,
    examples::{Example, example},
};
use serde_json::{Value, json};

const API_KEY: &str = "sim-api-key";

/// One row of the table: a datasourceID and a scheme of its family.
struct Case {
    id: String,
    scheme: &'static Scheme,
    example: Example,
    job: String,
    connection: String,
}

/// Every (datasourceID, scheme) of the catalogue, DG_ variants included.
fn cases() -> Vec<(String, &'static Scheme)> {
    let mut out = Vec::new();
    for id in Connector::all_ids() {
        let connector = Connector::lookup(&id).expect("catalogue id");
        for scheme in connector.family.schemes {
            out.push((id.clone(), scheme));
        }
    }
    out
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "string",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
        Value::Null => "null",
    }
}

/// The api-specs of a datasourceID: every property any of its examples stores, every
/// credential property and constant of every scheme, each with its JSON type.
fn api_specs(id: &str) -> Value {
    let connector = Connector::lookup(id).unwrap();
    let mut props = serde_json::Map::new();
    for scheme in connector.family.schemes {
        let ex = example(id, scheme.name).unwrap();
        for (name, value) in ex.properties.as_object().unwrap() {
            props.insert(name.clone(), json!({"type": json_type(value)}));
        }
        for p in scheme.props {
            let t = if p.kind == PropKind::Text {
                "string"
            } else {
                "array"
            };
            props.insert(p.name.to_owned(), json!({"type": t}));
        }
        for (name, value) in scheme.constants {
            props.insert(
                (*name).to_owned(),
                json!({"type": json_type(&value.to_json())}),
            );
        }
    }
    // Qlik's documented shape (S11): JSON Schema, names under connectionProperties.properties.
    qlik_sim::api_specs("sim", "1.0.0", Value::Object(props))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The secret's field `key` as text (strings as-is, other JSON as JSON).
fn field(secret: &Value, key: &str) -> Option<String> {
    secret.get(key).map(|v| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// What `/connectionProperties/<name>` must hold after the rotation (`None`: untouched).
fn expected_value(case: &Case, name: &str, old: &Value) -> Option<Value> {
    let ex = &case.example;
    let secret_text = ex.secret.to_string();
    let p = case.scheme.props.iter().find(|p| p.name == name)?;
    match p.kind {
        PropKind::Text => field(&ex.secret, p.key).map(Value::String),
        PropKind::File { default_name } => {
            let value = match field(&ex.secret, p.key) {
                Some(v) if ex.file_base64 => v.trim().to_owned(),
                Some(v) => b64(v.as_bytes()),
                None if p.whole_secret => b64(secret_text.as_bytes()),
                None => return None,
            };
            Some(json!([{"name": default_name, "value": value}]))
        }
        PropKind::Header => {
            let token = field(&ex.secret, p.key)?;
            let mut headers = old.clone();
            for h in headers.as_array_mut().unwrap() {
                if h["name"] == "Authorization" {
                    h["value"] = json!(token);
                    h["encrypt"] = json!(true);
                }
            }
            Some(headers)
        }
    }
}

fn config_text(sim: &Simulator, vault: &std::path::Path, cases: &[Case]) -> String {
    let mut text = format!(
        "[qlik]\ntenant_url = \"{}\"\napi_key_env = \"QLIK_API_KEY\"\nwrite_budget_per_min = 0\n\n\
         [sources.vault]\ntype = \"file\"\npath = \"{}\"\n",
        sim.base_url(),
        vault.display()
    );
    for c in cases {
        text.push_str(&format!(
            "\n[[jobs]]\nname = \"{}\"\nconnection = {{ id = \"{}\" }}\nconnector = \"{}\"\n\
             scheme = \"{}\"\nsource = \"vault\"\nsecret = \"{}\"\n",
            c.job, c.connection, c.id, c.scheme.name, c.job
        ));
        if c.scheme.props.iter().any(|p| p.kind == PropKind::Header) {
            text.push_str("header = \"Authorization\"\n");
        }
        if c.example.file_base64 {
            text.push_str("file_encoding = \"base64\"\n");
        }
    }
    text
}

#[tokio::test]
async fn every_connector_and_scheme_rotates_end_to_end() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let vault = dir.path().join("vault");
    std::fs::create_dir_all(&vault).unwrap();

    let mut table = Vec::new();
    let mut specs_done = BTreeSet::new();
    for (id, scheme) in cases() {
        let ex = example(&id, scheme.name)
            .unwrap_or_else(|| panic!("no example for {id} / {}", scheme.name));
        if specs_done.insert(id.clone()) {
            sim.add_data_source_spec(&id, api_specs(&id));
        }
        let job = format!("{id}-{}", scheme.name);
        let connection = sim.add_connection(SeedConnection::new(
            format!("{id} {}", scheme.name),
            id.clone(),
            ex.properties.clone(),
        ));
        std::fs::write(vault.join(format!("{job}.json")), ex.secret.to_string()).unwrap();
        table.push(Case {
            id,
            scheme,
            example: ex,
            job,
            connection,
        });
    }
    // 29 ids + 7 gateway variants = 36, plus the second schemes of snowflake and DG_snowflake,
    // the two extra REST schemes, the second SFTP scheme and the password scheme of the Data
    // Integration Snowflake target.
    assert_eq!(table.len(), 42);
    // The connectors added with a public source are among them.
    for (id, scheme) in [("sfdc", "password"), ("reptgt_qdisnowflake", "password")] {
        assert!(
            table.iter().any(|c| c.id == id && c.scheme.name == scheme),
            "{id} / {scheme} not covered"
        );
    }

    let input: HashMap<String, String> = HashMap::from([("QLIK_API_KEY".into(), API_KEY.into())]);
    let cfg = load_str(&config_text(&sim, &vault, &table), dir.path(), &input)
        .unwrap_or_else(|e| panic!("config: {e}"));
    let rotator = qlik_rotator::app::rotator(&cfg, &input).await.unwrap();

    for case in &table {
        let what = format!("{} / {}", case.id, case.scheme.name);
        let job = cfg.job(&case.job).unwrap();
        let reports = rotator.run(job, RunOptions::default()).await;
        assert_eq!(reports.len(), 1, "{what}");
        assert!(
            matches!(reports[0].outcome, Outcome::Rotated),
            "{what}: {:?}",
            reports[0].outcome
        );

        // The stored connection holds exactly the new credentials and the scheme's
        // constants; everything else is as seeded.
        let stored = sim.stored(&case.connection).unwrap()["connectionProperties"].clone();
        let old = case.example.properties.as_object().unwrap();
        let mut names: BTreeSet<&String> = old.keys().collect();
        names.extend(stored.as_object().unwrap().keys());
        let constants: BTreeMap<&str, Value> = case
            .scheme
            .constants
            .iter()
            .map(|(k, v)| (*k, v.to_json()))
            .collect();
        for name in names {
            let before = old.get(name).cloned().unwrap_or(Value::Null);
            let want = constants
                .get(name.as_str())
                .cloned()
                .or_else(|| expected_value(case, name, &before))
                .unwrap_or(before);
            assert_eq!(stored[name], want, "{what}: property {name}");
        }
        for (name, value) in &constants {
            assert_eq!(&stored[name], value, "{what}: constant {name}");
        }

        // The PATCH touched only the scheme's credential paths and constants.
        let patches: Vec<_> = sim
            .requests()
            .into_iter()
            .filter(|r| r.method == "PATCH" && r.path.ends_with(&case.connection))
            .collect();
        assert_eq!(patches.len(), 1, "{what}");
        assert_eq!(patches[0].status, 204, "{what}: {}", patches[0].body);
        let body: Value = serde_json::from_str(&patches[0].body).unwrap();
        let allowed: Vec<&str> = case
            .scheme
            .props
            .iter()
            .map(|p| p.name)
            .chain(constants.keys().copied())
            .collect();
        for op in body.as_array().unwrap() {
            let path = op["path"].as_str().unwrap();
            let prop = path
                .strip_prefix("/connectionProperties/")
                .and_then(|p| p.split('/').next())
                .unwrap_or_else(|| panic!("{what}: {path}"));
            assert!(
                allowed.contains(&prop),
                "{what}: {path} is not a credential path"
            );
            assert!(
                matches!(op["op"].as_str(), Some("add" | "replace")),
                "{what}: {op}"
            );
        }
    }

    // The api-specs check ran: each datasourceID's specs were read (once, then cached).
    let spec_reads: BTreeSet<String> = sim
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/api-specs"))
        .map(|r| r.path)
        .collect();
    assert_eq!(spec_reads.len(), specs_done.len());
}

#[test]
fn readme_holds_the_generated_connector_table() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let begin = "<!-- connectors:begin -->";
    let end = "<!-- connectors:end -->";
    assert_eq!(readme.matches(begin).count(), 1, "one {begin} marker");
    assert_eq!(readme.matches(end).count(), 1, "one {end} marker");
    let inner = readme
        .split_once(begin)
        .and_then(|(_, rest)| rest.split_once(end))
        .map(|(inner, _)| inner)
        .expect("markers in order");
    assert_eq!(
        inner.trim(),
        markdown_table().trim(),
        "README.md's connector table is stale; paste the output of markdown_table() between the markers"
    );
    // Every datasourceID appears in the table.
    for id in Connector::all_ids() {
        assert!(
            inner.contains(&format!("`{id}`")),
            "{id} missing from README"
        );
    }
    assert!(CATALOGUE.iter().all(|f| inner.contains(f.title)));
}

#[test]
fn connectors_command_names_a_source_for_every_family() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qlik-rotator"))
        .arg("connectors")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    for family in CATALOGUE {
        // The line after the family's title line is its source line.
        let title = format!("\n{} — ", family.title);
        let at = stdout
            .find(&title)
            .unwrap_or_else(|| panic!("{} missing", family.title));
        let source_line = stdout[at + 1..].lines().nth(1).unwrap();
        assert_eq!(
            source_line,
            format!("  source: {}", family.sources_text()),
            "{}",
            family.title
        );
    }
    assert!(stdout.contains(
        "  source: QlikProfessionalServices/ansible-qlikcloud-collection plugins/modules/data_connection.py@13547698"
    ));
    assert!(stdout.contains(
        "scheme password: daniepett/terraform-provider-qlik pkg/resources/data_connection.go@2da98e62"
    ));
    assert_eq!(stdout.matches("\n  source: ").count(), CATALOGUE.len());
}

// === adversarial inputs for the connectors added with a public source ===

/// The canary: a unique secret string that must appear in no output.
const CANARY: &str = "CANARY-conn-7f3a9c";

/// What one failing run left behind.
struct Failed {
    sim: Simulator,
    error_type: String,
    message: String,
    outputs: String,
}

/// Registers the api-specs of `ds` and seeds a connection `target` of `ds` holding the example
/// properties of `scheme`; returns its id.
fn seed_example(sim: &Simulator, ds: &str, scheme: &str) -> String {
    let ex = example(ds, scheme).unwrap();
    sim.add_data_source_spec(ds, api_specs(ds));
    sim.add_connection(SeedConnection::new(
        "target".to_owned(),
        ds.to_owned(),
        ex.properties.clone(),
    ))
}

/// The library's rotator, with metrics, for one job `j` on `connection` (connector
/// `connector`, `scheme`) whose vault secret is `secret`.
struct OneJob {
    /// Holds the vault; removed on drop.
    _dir: tempfile::TempDir,
    cfg: qlik_rotator::config::Config,
    rotator: qlik_rotator::rotation::Rotator,
    metrics: std::sync::Arc<Metrics>,
}

async fn one_job(
    sim: &Simulator,
    connection: &str,
    connector: &str,
    scheme: &str,
    secret: &str,
) -> OneJob {
    let dir = tempfile::tempdir().unwrap();
    let vault = dir.path().join("vault");
    std::fs::create_dir_all(&vault).unwrap();
    std::fs::write(vault.join("s.json"), secret).unwrap();
    let text = format!(
        "[qlik]\ntenant_url = \"{}\"\napi_key_env = \"QLIK_API_KEY\"\nwrite_budget_per_min = 0\n\n\
         [sources.vault]\ntype = \"file\"\npath = \"{}\"\n\n\
         [[jobs]]\nname = \"j\"\nconnection = {{ id = \"{connection}\" }}\nconnector = \"{connector}\"\n\
         scheme = \"{scheme}\"\nsource = \"vault\"\nsecret = \"s\"\n",
        sim.base_url(),
        vault.display()
    );
    let input: HashMap<String, String> = HashMap::from([("QLIK_API_KEY".into(), API_KEY.into())]);
    let cfg = load_str(&text, dir.path(), &input).unwrap_or_else(|e| panic!("config: {e}"));
    let metrics = std::sync::Arc::new(Metrics::new());
    let rotator = qlik_rotator::app::rotator(&cfg, &input)
        .await
        .unwrap()
        .with_metrics(metrics.clone());
    OneJob {
        _dir: dir,
        cfg,
        rotator,
        metrics,
    }
}

/// Seeds the example connection of `seed_id`/`scheme`, writes `secret` as the vault file and
/// runs one job with connector `job_id` and `scheme`; the run must fail.
async fn run_failing(seed_id: &str, job_id: &str, scheme: &str, secret: &str) -> Failed {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let seed_scheme = Connector::lookup(seed_id)
        .unwrap()
        .family
        .schemes
        .iter()
        .find(|s| example(seed_id, s.name).is_some())
        .unwrap()
        .name;
    let connection = seed_example(&sim, seed_id, seed_scheme);
    if job_id != seed_id {
        sim.add_data_source_spec(job_id, api_specs(job_id));
    }
    let OneJob {
        _dir,
        cfg,
        rotator,
        metrics,
    } = one_job(&sim, &connection, job_id, scheme, secret).await;
    let job = cfg.job("j").unwrap();
    metrics.register_jobs([job]);
    let reports = rotator.run(job, RunOptions::default()).await;
    assert_eq!(reports.len(), 1);
    let report = &reports[0];
    let err = match &report.outcome {
        Outcome::Failed(e) => e,
        other => panic!("{job_id} / {scheme}: expected a failure, got {other:?}"),
    };
    let planned = rotator
        .run(
            job,
            RunOptions {
                plan_only: true,
                ..RunOptions::default()
            },
        )
        .await;
    let outputs = format!(
        "{}\n{report:?}\n{err}\n{err:?}\n{}\n{planned:?}\n{:?}",
        report.line(),
        metrics.render(),
        sim.requests()
    );
    Failed {
        error_type: err.error_type().to_owned(),
        message: err.to_string(),
        sim,
        outputs,
    }
}

/// Nothing was PATCHed, and the canary appears in no output.
fn assert_nothing_sent_and_no_canary(f: &Failed) {
    let patches: Vec<_> = f
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET")
        .collect();
    assert!(patches.is_empty(), "sent: {patches:?}");
    assert!(!f.outputs.contains(CANARY), "canary leaked: {}", f.outputs);
}

#[tokio::test]
async fn salesforce_secret_without_security_token_sends_nothing() {
    let secret = json!({"username": "integration@acme.example", "password": CANARY}).to_string();
    let f = run_failing("sfdc", "sfdc", "password", &secret).await;
    assert_eq!(f.error_type, "missing_field");
    assert!(
        f.message.starts_with(
            "the secret has no field \"security_token\" (needed for Qlik property \"sftoken\"); its keys are \"password\", \"username\""
        ),
        "{}",
        f.message
    );
    assert_nothing_sent_and_no_canary(&f);
}

#[tokio::test]
async fn salesforce_secret_with_an_empty_password_sends_nothing() {
    let secret = json!({"username": "integration@acme.example", "password": "",
                        "security_token": CANARY})
    .to_string();
    let f = run_failing("sfdc", "sfdc", "password", &secret).await;
    assert_eq!(f.error_type, "empty_field");
    assert!(f.message.contains("\"password\""), "{}", f.message);
    assert!(f.message.contains("\"SFpassword\""), "{}", f.message);
    assert_nothing_sent_and_no_canary(&f);
}

#[tokio::test]
async fn salesforce_job_on_a_sql_server_connection_sends_nothing() {
    let secret = json!({"username": "u", "password": CANARY, "security_token": CANARY}).to_string();
    let f = run_failing("mssql", "sfdc", "password", &secret).await;
    assert!(
        matches!(f.error_type.as_str(), "wrong_connector"),
        "{}: {}",
        f.error_type,
        f.message
    );
    assert!(f.message.contains("\"mssql\""), "{}", f.message);
    assert_nothing_sent_and_no_canary(&f);
}

#[tokio::test]
async fn snowflake_target_password_secret_that_is_not_json_sends_nothing() {
    let f = run_failing(
        "reptgt_qdisnowflake",
        "reptgt_qdisnowflake",
        "password",
        CANARY,
    )
    .await;
    assert_eq!(f.error_type, "secret_not_json", "{}", f.message);
    assert_nothing_sent_and_no_canary(&f);
}

#[tokio::test]
async fn snowflake_target_password_secret_with_control_characters_is_sent_escaped_and_never_printed()
 {
    // A password with a newline, a tab and an escape character is a valid secret: it is sent
    // JSON-escaped in the PATCH body, stored as is, and printed nowhere.
    let password = format!("{CANARY}\n\t\u{1b}[31m");
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let connection = seed_example(&sim, "reptgt_qdisnowflake", "password");
    let OneJob {
        _dir,
        cfg,
        rotator,
        metrics,
    } = one_job(
        &sim,
        &connection,
        "reptgt_qdisnowflake",
        "password",
        &json!({"username": "SVC_LOAD", "password": password}).to_string(),
    )
    .await;
    let job = cfg.job("j").unwrap();
    let reports = rotator.run(job, RunOptions::default()).await;
    assert!(
        matches!(reports[0].outcome, Outcome::Rotated),
        "{:?}",
        reports[0].outcome
    );
    let stored = sim.stored(&connection).unwrap()["connectionProperties"].clone();
    assert_eq!(stored["password"], json!(password));
    assert!(stored.get("authentication_mode").is_none());
    let outputs = format!(
        "{}\n{:?}\n{}",
        reports[0].line(),
        reports[0],
        metrics.render()
    );
    assert!(!outputs.contains(CANARY), "canary leaked: {outputs}");
}

#[test]
fn salesforce_config_errors_name_the_key() {
    let text = r#"
[qlik]
tenant_url = "https://acme.eu.qlikcloud.com"
api_key_env = "QLIK_API_KEY"
[sources.local]
type = "file"
path = "vault"
[[jobs]]
name = "sf"
connection = { id = "5f0c2a9e-4b7d-4c1e-9a53-2b8f0d7e1a01" }
connector = "sfdc"
scheme = "oauth"
source = "local"
secret = "sf"
[[jobs]]
name = "sf-gw"
connection = { id = "5f0c2a9e-4b7d-4c1e-9a53-2b8f0d7e1a02" }
connector = "DG_sfdc"
source = "local"
secret = "sf"
"#;
    let input: HashMap<String, String> = HashMap::new();
    let errs: Vec<String> = load_str(text, std::path::Path::new("/etc/qr"), &input)
        .unwrap_err()
        .0
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert_eq!(
        errs[0],
        "jobs[0].scheme: connector \"sfdc\" has no such scheme (expected one of: password)"
    );
    // No public source shows a gateway variant of Salesforce: DG_sfdc is not in the catalogue.
    // (Config errors never quote a string value, so the unknown id itself is not repeated.)
    assert!(
        errs[1].starts_with("jobs[1].connector: unknown connector"),
        "{}",
        errs[1]
    );
}

/// The simulator's list of secret properties (which GET hides and which count as credentials
/// for the July-2026 PATCH rules) covers every secret the catalogue writes. Lives here, not in
/// `qlik-sim`, because the simulator imports nothing from the product.
#[test]
fn every_catalogue_secret_is_hidden_by_the_simulator_and_counts_as_a_credential() {
    use qlik_sim::props::{
        CREDENTIAL_IDENTITIES, SECRET_FILE_ARRAYS, SECRET_SCALARS, is_credential_prop,
    };
    for family in CATALOGUE {
        for scheme in family.schemes {
            for p in scheme.props {
                match p.kind {
                    PropKind::Text if CREDENTIAL_IDENTITIES.contains(&p.name) => {}
                    PropKind::Text => assert!(
                        SECRET_SCALARS.contains(&p.name),
                        "{}: {} is not hidden",
                        family.title,
                        p.name
                    ),
                    PropKind::File { .. } => assert!(
                        SECRET_FILE_ARRAYS.contains(&p.name),
                        "{}: {} is not hidden",
                        family.title,
                        p.name
                    ),
                    // Encrypted queryHeaders entries are hidden per entry.
                    PropKind::Header => assert_eq!(p.name, "queryHeaders"),
                }
                if p.kind != PropKind::Header {
                    assert!(is_credential_prop(p.name), "{}", p.name);
                }
            }
        }
    }
}
