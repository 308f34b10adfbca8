//! Configuration tests: the example loads, overrides apply, every error is listed with its key.

use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn errors(text: &str) -> Vec<String> {
    load_str(text, Path::new("/etc/qr"), &env(&[]))
        .unwrap_err()
        .0
        .iter()
        .map(ToString::to_string)
        .collect()
}

const MINIMAL: &str = r#"
[qlik]
tenant_url = "https://acme.eu.qlikcloud.com"
api_key_env = "QLIK_API_KEY"
[sources.aws]
type = "aws_secrets_manager"
[[jobs]]
name = "a"
connection = { id = "c1" }
connector = "mssql"
source = "aws"
secret = "prod/a"
"#;

#[test]
fn the_example_config_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.toml");
    let cfg = load(&path, &env(&[])).unwrap();
    assert_eq!(cfg.jobs.len(), 3);
    assert_eq!(
        cfg.qlik.auth,
        QlikAuth::ApiKey(SecretLocator::Env("QLIK_API_KEY".into()))
    );
    let s3 = cfg.job("sales-s3").unwrap();
    assert_eq!(s3.spec.props[0].name, "accessKey");
    assert_eq!(s3.spec.props[0].key, "aws_access_key_id");
    assert_eq!(s3.jitter, Duration::from_secs(30));
    assert_eq!(
        cfg.job("finance-sqlserver").unwrap().connections,
        [ConnectionRef::Name {
            name: "Finance SQL".into(),
            space: Some("5f8e9a0b1c2d3e4f5a6b7c8d".into())
        }]
    );
    assert_eq!(
        cfg.job("finance-sqlserver").unwrap().timezone,
        chrono_tz::Europe::Paris
    );
    assert_eq!(
        cfg.sources["local"],
        SourceConfig::File {
            path: Path::new(env!("CARGO_MANIFEST_DIR")).join("config/secrets")
        }
    );
}

#[test]
fn defaults() {
    let cfg = load_str(MINIMAL, Path::new("/etc/qr"), &env(&[])).unwrap();
    assert_eq!(cfg.qlik.request_timeout, Duration::from_secs(30));
    assert_eq!(cfg.qlik.max_attempts, 5);
    assert_eq!(cfg.qlik.write_budget_per_min, 100);
    assert_eq!(
        cfg.jobs[0].secret.version,
        VersionSelector::Stage("AWSCURRENT".into())
    );
    assert_eq!(cfg.jobs[0].spec.scheme, "password");
    assert_eq!(cfg.daemon.state_dir, Path::new("/etc/qr/state"));
    assert_eq!(cfg.metrics.listen.to_string(), "127.0.0.1:9464");
    assert!(cfg.jobs[0].schedule.is_none());
}

#[test]
fn environment_overrides_any_key() {
    let cfg = load_str(
        MINIMAL,
        Path::new("/"),
        &env(&[
            ("QLIK_ROTATOR__QLIK__TENANT_URL", "http://127.0.0.1:8080"),
            ("QLIK_ROTATOR__QLIK__MAX_ATTEMPTS", "2"),
            ("QLIK_ROTATOR__DAEMON__STATE_DIR", "/tmp/st"),
            ("UNRELATED", "x"),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.qlik.tenant_url.as_str(), "http://127.0.0.1:8080/");
    assert_eq!(cfg.qlik.max_attempts, 2);
    assert_eq!(cfg.daemon.state_dir, Path::new("/tmp/st"));
}

#[test]
fn every_error_is_reported_with_its_key_path() {
    let text = r#"
[qlik]
tenant_url = "http://acme.eu.qlikcloud.com"
api_key = "inline-is-refused"
max_attempts = 99
colour = "blue"
[sources.aws]
type = "aws_secrets_manager"
[sources.vault]
type = "hashicorp"
[[jobs]]
name = "ok-1"
connection = { id = "c1" }
connector = "mssql"
source = "aws"
secret = "s"
[[jobs]]
name = "bad name!"
connection = { id = "c2", name = "x" }
connector = "mssql"
source = "aws"
secret = "s"
[[jobs]]
name = "ok-1"
connection = { id = "c3" }
connector = "foo"
source = "nowhere"
secret = "s"
version_stage = "AWSCURRENT"
version_id = "v1"
schedule = "every day"
timezone = "Mars/Olympus"
jitter = "soon"
[[jobs]]
name = "s3"
connection = { id = "c4" }
connector = "File_AmazonS3ConnectorV2"
source = "aws"
[jobs.fields]
password = "pw"
[metrics]
listen = "nine-four-six-four"
"#;
    assert_eq!(
        errors(text),
        [
            "qlik.tenant_url: must use https (http is allowed only for a loopback host)",
            "qlik.api_key: the Qlik API key is never accepted inline in the file; use qlik.api_key_env or qlik.api_key_file",
            "qlik.api_key_env: the Qlik API key is required: set api_key_env or api_key_file",
            "qlik.max_attempts: expected a whole number from 1 to 10, found 99",
            "qlik.colour: unknown key (expected one of: api_key, api_key_env, api_key_file, max_attempts, max_response_bytes, oauth, request_timeout, tenant_url, write_budget_per_min)",
            "sources.vault.type: unknown source type \"hashicorp\" (expected \"aws_secrets_manager\" or \"file\")",
            "jobs[1].name: use 1 to 64 characters from A-Z, a-z, 0-9, '-', '_' and '.'",
            "jobs[1].connection.id: set either id or name, not both",
            "jobs[2].connector: unknown connector \"foo\" (see `qlik-rotator connectors`, or use connector = \"generic\")",
            "jobs[2].source: no source named \"nowhere\" (defined: aws)",
            "jobs[2].version_id: set either version_stage or version_id, not both",
            "jobs[2].schedule: not a 6-field cron expression with seconds (e.g. \"0 */15 * * * *\"): Invalid pattern: Pattern must have 6 or 7 fields when seconds are required and years are optional.",
            "jobs[2].timezone: unknown time zone \"Mars/Olympus\" (use an IANA name such as \"Europe/Paris\")",
            "jobs[2].jitter: expected a duration such as \"30s\", \"5m\" or \"1h\", found \"soon\"",
            "jobs[3].fields.password: \"password\" is not a credential property of scheme \"access_key\" (expected one of: accessKey, secretKey)",
            "jobs[3].secret: is required",
            "metrics.listen: expected an address such as \"127.0.0.1:9464\", found \"nine-four-six-four\"",
        ]
    );
}

#[test]
fn duplicate_names_and_missing_sections() {
    let text = format!(
        "{MINIMAL}\n[[jobs]]\nname = \"a\"\nconnection = {{ id = \"c2\" }}\nconnector = \"gbq\"\nsource = \"aws\"\nsecret = \"s\"\n"
    );
    assert_eq!(
        errors(&text),
        ["jobs[1].name: duplicate job name \"a\" (also jobs[0])"]
    );
    assert_eq!(
        errors("[daemon]\nstate_dir = \"x\"\n"),
        [
            "qlik: is required (the [qlik] table with tenant_url and credentials)",
            "jobs: at least one [[jobs]] entry is required"
        ]
    );
    assert_eq!(errors("this is = = not toml").len(), 1);
    assert!(errors("this is = = not toml")[0].starts_with("<file>: not valid TOML"));
}

#[test]
fn oauth_and_secret_locators() {
    let text = MINIMAL.replace(
        "api_key_env = \"QLIK_API_KEY\"",
        "[qlik.oauth]\nclient_id = \"cid\"\nclient_secret_file = \"/run/secrets/cs\"\nscope = \"user_default\"",
    );
    let cfg = load_str(&text, Path::new("/"), &env(&[])).unwrap();
    assert_eq!(
        cfg.qlik.auth,
        QlikAuth::OAuth {
            client_id: "cid".into(),
            client_secret: SecretLocator::File("/run/secrets/cs".into()),
            scope: Some("user_default".into())
        }
    );
    let both = MINIMAL.replace(
        "api_key_env = \"QLIK_API_KEY\"",
        "api_key_env = \"K\"\n[qlik.oauth]\nclient_id = \"cid\"\nclient_secret = \"inline\"",
    );
    assert_eq!(
        errors(&both),
        [
            "qlik.oauth: set either an API key (api_key_env/api_key_file) or [qlik.oauth], not both",
            "qlik.oauth.client_secret: the OAuth client secret is never accepted inline in the file; use qlik.oauth.client_secret_env or qlik.oauth.client_secret_file",
            "qlik.oauth.client_secret_env: the OAuth client secret is required: set client_secret_env or client_secret_file",
        ]
    );
    let loc = SecretLocator::Env("K".into());
    assert!(loc.read(&env(&[])).unwrap_err().contains("K is not set"));
    assert!(
        loc.read(&env(&[("K", "  ")]))
            .unwrap_err()
            .contains("is empty")
    );
    use secrecy::ExposeSecret;
    assert_eq!(
        loc.read(&env(&[("K", "key\n")])).unwrap().expose_secret(),
        "key"
    );
}

#[test]
fn loopback_http_is_allowed() {
    for url in [
        "http://127.0.0.1:9000",
        "http://localhost",
        "http://[::1]:80",
    ] {
        let text = MINIMAL.replace("https://acme.eu.qlikcloud.com", url);
        assert!(load_str(&text, Path::new("/"), &env(&[])).is_ok(), "{url}");
    }
}

#[test]
fn jobs_with_equal_specs_share_one() {
    let text = format!(
        "{MINIMAL}
[[jobs]]
name = \"b\"
connection = {{ id = \"c2\" }}
connector = \"mssql\"
source = \"aws\"
secret = \"prod/b\"
[[jobs]]
name = \"c\"
connection = {{ id = \"c3\" }}
connector = \"mssql\"
source = \"aws\"
secret = \"prod/c\"
[jobs.fields]
password = \"pw\"
"
    );
    let cfg = load_str(&text, Path::new("/etc/qr"), &env(&[])).unwrap();
    let [a, b, c] = [0, 1, 2].map(|i| &cfg.jobs[i].spec);
    assert!(Arc::ptr_eq(a, b), "same connector, no overrides: one spec");
    assert!(!Arc::ptr_eq(a, c), "a field override is a spec of its own");
    let password_key = |spec: &Arc<crate::connectors::BuildSpec>| {
        let prop = spec.props.iter().find(|p| p.name == "password").unwrap();
        prop.key.clone()
    };
    assert_eq!(password_key(c), "pw");
    assert_eq!(password_key(a), "password");
}

#[test]
fn max_response_bytes_has_a_default_and_a_documented_range() {
    let cfg = load_str(MINIMAL, Path::new("/etc/qr"), &env(&[])).unwrap();
    assert_eq!(cfg.qlik.max_response_bytes, 4 * 1024 * 1024);
    let with = |v: &str| {
        MINIMAL.replace(
            "api_key_env = \"QLIK_API_KEY\"",
            &format!("api_key_env = \"QLIK_API_KEY\"\nmax_response_bytes = {v}"),
        )
    };
    let cfg = load_str(&with("65536"), Path::new("/etc/qr"), &env(&[])).unwrap();
    assert_eq!(cfg.qlik.max_response_bytes, 65_536);
    for bad in ["0", "65535", "268435457", "\"4MiB\"", "-1"] {
        let errs = errors(&with(bad));
        assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
        assert!(
            errs[0].starts_with(
                "qlik.max_response_bytes: expected a whole number from 65536 to 268435456, found"
            ),
            "{bad}: {errs:?}"
        );
    }
}
