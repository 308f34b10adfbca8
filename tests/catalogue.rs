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
    rotation::{Outcome, RunOptions},
    sim::{
        SeedConnection, SimConfig, Simulator,
        examples::{Example, example},
    },
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
    qlik_rotator::sim::api_specs("sim", "1.0.0", Value::Object(props))
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
    // 28 ids + 7 gateway variants = 35, plus the second schemes of snowflake and DG_snowflake,
    // the two extra REST schemes and the second SFTP scheme.
    assert_eq!(table.len(), 40);

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
