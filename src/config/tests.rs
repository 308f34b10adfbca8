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
connection = { id = "00000001-0000-4000-8000-000000000001" }
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
        cfg.tenants[0].auth,
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
        SourceConfig::File(crate::secrets::file::FileConfig {
            path: Path::new(env!("CARGO_MANIFEST_DIR")).join("config/secrets")
        })
    );
}

#[test]
fn defaults() {
    let cfg = load_str(MINIMAL, Path::new("/etc/qr"), &env(&[])).unwrap();
    assert_eq!(cfg.tenants[0].request_timeout, Duration::from_secs(30));
    assert_eq!(cfg.tenants[0].max_attempts, 5);
    assert_eq!(cfg.tenants[0].write_budget_per_min, 100);
    assert_eq!(cfg.tenants[0].read_budget_per_min, 1_000);
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
    assert_eq!(cfg.tenants[0].tenant_url.as_str(), "http://127.0.0.1:8080/");
    assert_eq!(cfg.tenants[0].max_attempts, 2);
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
connection = { id = "00000001-0000-4000-8000-000000000001" }
connector = "mssql"
source = "aws"
secret = "s"
[[jobs]]
name = "bad name!"
connection = { id = "00000002-0000-4000-8000-000000000002", name = "x" }
connector = "mssql"
source = "aws"
secret = "s"
[[jobs]]
name = "ok-1"
connection = { id = "00000003-0000-4000-8000-000000000003" }
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
connection = { id = "00000004-0000-4000-8000-000000000004" }
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
            "qlik.colour: unknown key (expected one of: api_key, api_key_env, api_key_file, max_attempts, max_response_bytes, oauth, read_budget_per_min, request_timeout, tenant_url, write_budget_per_min)",
            "sources.vault.type: unknown source type (expected \"aws_secrets_manager\", \"file\", \"vault\" or \"aws_ssm\")",
            "jobs[1].name: use 1 to 64 characters from A-Z, a-z, 0-9, '-', '_' and '.'",
            "jobs[1].connection.id: set either id or name, not both",
            "jobs[2].connector: unknown connector (see `qlik-rotator connectors`, or use connector = \"generic\")",
            "jobs[2].source: names no [sources.<name>] table (defined: aws)",
            "jobs[2].version_id: set either version_stage or version_id, not both",
            "jobs[2].schedule: not a 6-field cron expression with seconds (e.g. \"0 */15 * * * *\"): Invalid pattern: Pattern must have 6 or 7 fields when seconds are required and years are optional.",
            "jobs[2].timezone: unknown time zone (use an IANA name such as \"Europe/Paris\")",
            "jobs[2].jitter: expected a duration from 0s to 1h (such as \"30s\", \"5m\" or \"1h\"), found text (not shown)",
            "jobs[3].fields.password: \"password\" is not a credential property of scheme \"access_key\" (expected one of: accessKey, secretKey)",
            "jobs[3].secret: is required",
            "metrics.listen: expected an IP address and port such as \"127.0.0.1:9464\"",
        ]
    );
}

#[test]
fn duplicate_names_and_missing_sections() {
    let text = format!(
        "{MINIMAL}\n[[jobs]]\nname = \"a\"\nconnection = {{ id = \"00000002-0000-4000-8000-000000000002\" }}\nconnector = \"gbq\"\nsource = \"aws\"\nsecret = \"s\"\n"
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
        cfg.tenants[0].auth,
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
    assert_eq!(
        loc.read(&env(&[])).unwrap_err(),
        "the environment variable it names is not set"
    );
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

// A connector's schemes are checked here, at load (the catalogue lists them).
#[test]
fn an_unknown_scheme_is_a_config_error_listing_the_schemes() {
    let text = r#"
[qlik]
tenant_url = "https://acme.eu.qlikcloud.com"
api_key_env = "QLIK_API_KEY"
[sources.local]
type = "file"
path = "vault"
[[jobs]]
name = "sf"
connection = { id = "00000001-0000-4000-8000-000000000001" }
connector = "snowflake"
scheme = "oauth"
source = "local"
secret = "sf"
[[jobs]]
name = "api"
connection = { id = "00000002-0000-4000-8000-000000000002" }
connector = "rest"
scheme = "header"
source = "local"
secret = "api"
"#;
    assert_eq!(
        errors(text),
        [
            "jobs[0].scheme: connector \"snowflake\" has no such scheme (expected one of: password, key_pair)",
            "jobs[1].header: is required by scheme \"header\": the name of the queryHeaders entry holding the token (e.g. \"Authorization\")",
        ]
    );
}

#[test]
fn jobs_with_equal_specs_share_one() {
    let text = format!(
        "{MINIMAL}
[[jobs]]
name = \"b\"
connection = {{ id = \"00000002-0000-4000-8000-000000000002\" }}
connector = \"mssql\"
source = \"aws\"
secret = \"prod/b\"
[[jobs]]
name = \"c\"
connection = {{ id = \"00000003-0000-4000-8000-000000000003\" }}
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
    assert_eq!(cfg.tenants[0].max_response_bytes, 4 * 1024 * 1024);
    let with = |v: &str| {
        MINIMAL.replace(
            "api_key_env = \"QLIK_API_KEY\"",
            &format!("api_key_env = \"QLIK_API_KEY\"\nmax_response_bytes = {v}"),
        )
    };
    let cfg = load_str(&with("65536"), Path::new("/etc/qr"), &env(&[])).unwrap();
    assert_eq!(cfg.tenants[0].max_response_bytes, 65_536);
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

const CANARY: &str = "CANARY-7f3e9b1d";
const UUID_A: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const UUID_B: &str = "bbbbbbbb-0000-4000-8000-000000000002";

/// `MINIMAL` with `from` replaced by `to` (which must occur).
fn with(from: &str, to: &str) -> String {
    assert!(MINIMAL.contains(from), "{from}");
    MINIMAL.replacen(from, to, 1)
}

/// The errors of `text`, asserting that none of them quotes the canary.
fn errors_without_canary(text: &str) -> Vec<String> {
    let errs = errors(text);
    for e in &errs {
        assert!(!e.contains(CANARY), "canary leaked: {e}");
        assert!(!e.contains("7f3e9b1d"), "canary leaked: {e}");
    }
    errs
}

#[test]
fn a_toml_syntax_error_gives_line_column_and_key_but_never_the_line() {
    // An unterminated string: the parser's own report quotes the whole line.
    let text = with(
        "api_key_env = \"QLIK_API_KEY\"",
        &format!("api_key_env = \"{CANARY}"),
    );
    assert_eq!(
        errors_without_canary(&text),
        [
            "qlik.api_key_env: not valid TOML at line 4, column 31: invalid basic string, expected `\"`"
        ]
    );
    // A secret pasted on a line of its own inside [[jobs]] parses as a key: the table is named,
    // the "key" is not.
    let text = format!("{MINIMAL}{CANARY}\n");
    let errs = errors_without_canary(&text);
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with("jobs[0]: not valid TOML at line 13, column 16:"),
        "{errs:?}"
    );
    // A bare (unquoted) secret as a value, in the second job.
    let text = format!("{MINIMAL}[[jobs]]\nname = \"b\"\nsecret = {CANARY}-x\n");
    let errs = errors_without_canary(&text);
    assert!(
        errs[0].starts_with("jobs[1].secret: not valid TOML at line 15, column 10:"),
        "{errs:?}"
    );
    // A value after a complete string; a table header that is not in the schema.
    let text = format!("[x{CANARY}]\nsecret = \"a\" {CANARY}\n");
    let errs = errors_without_canary(&text);
    assert_eq!(
        errs,
        [
            "<file>: not valid TOML at line 2, column 14: unexpected key or value, expected newline, `#`"
        ]
    );
    // Without the fix the message was the parser's report, with the line in it.
    assert!(!errs[0].contains(" | "));
}

#[test]
fn a_syntax_error_on_a_source_key_names_the_key_from_the_source_file() {
    // `region`, `endpoint_url` and `path` are declared by the source files (SourceFactory::KEYS),
    // not in KNOWN_KEYS: the location still names them, and an unknown key still only the table.
    for (key, line) in [
        ("sources.aws.region", format!("region = \"{CANARY}")),
        (
            "sources.aws.endpoint_url",
            format!("endpoint_url = \"{CANARY}"),
        ),
        ("sources.aws.path", format!("path = \"{CANARY}")),
        ("sources.aws", format!("{CANARY}x = \"{CANARY}")),
    ] {
        let text = with(
            "type = \"aws_secrets_manager\"",
            &format!("type = \"aws_secrets_manager\"\n{line}"),
        );
        let errs = errors_without_canary(&text);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with(&format!("{key}: not valid TOML at line 7,")),
            "{key}: {errs:?}"
        );
    }
}

#[test]
fn secret_locators_must_look_like_a_name_or_a_path_and_are_never_shown() {
    for (from, to, key) in [
        (
            "api_key_env = \"QLIK_API_KEY\"",
            format!("api_key_env = \"eyJhbGciOiJFUzM4NCJ9.{CANARY}\""),
            "qlik.api_key_env",
        ),
        (
            "api_key_env = \"QLIK_API_KEY\"",
            format!("api_key_env = \"9{CANARY}\""),
            "qlik.api_key_env",
        ),
        (
            "api_key_env = \"QLIK_API_KEY\"",
            format!("api_key_env = \"A{}\"", "B".repeat(256)),
            "qlik.api_key_env",
        ),
        (
            "api_key_env = \"QLIK_API_KEY\"",
            format!("api_key_file = \"/run/{CANARY}\\nsecond line\""),
            "qlik.api_key_file",
        ),
        (
            "api_key_env = \"QLIK_API_KEY\"",
            format!("api_key_file = \"/{}{CANARY}\"", "a".repeat(4096)),
            "qlik.api_key_file",
        ),
        (
            "api_key_env = \"QLIK_API_KEY\"",
            format!("[qlik.oauth]\nclient_id = \"cid\"\nclient_secret_env = \"{CANARY}\""),
            "qlik.oauth.client_secret_env",
        ),
    ] {
        let errs = errors_without_canary(&with(from, &to));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with(&format!("{key}: must be ")), "{errs:?}");
        assert!(errs[0].contains("not the secret itself"), "{errs:?}");
    }
    // At read time, a locator that fails the shape check is not even looked up, and nothing
    // names the variable or the file.
    let bad = SecretLocator::Env(format!("eyJ.{CANARY}"));
    let err = bad
        .read(&env(&[(&format!("eyJ.{CANARY}"), "x")]))
        .unwrap_err();
    assert!(
        !err.contains(CANARY) && err.contains("environment variable"),
        "{err}"
    );
    let missing = SecretLocator::File(format!("/nonexistent/{CANARY}").into());
    let err = missing.read(&env(&[])).unwrap_err();
    assert!(
        !err.contains(CANARY) && err.contains("cannot be read"),
        "{err}"
    );
    assert!(!missing.describe().contains(CANARY));
    let unset = SecretLocator::Env(format!("V{}", CANARY.replace('-', "_")));
    let err = unset.read(&env(&[])).unwrap_err();
    assert!(!err.contains("7f3e9b1d"), "{err}");
}

#[test]
fn no_string_value_is_quoted_in_any_error() {
    // One pasted secret in every string key that is not a locator.
    let text = format!(
        r#"
[qlik]
tenant_url = "https://acme.eu.qlikcloud.com"
api_key_env = "QLIK_API_KEY"
request_timeout = "{CANARY}"
max_attempts = "{CANARY}"
[sources.aws]
type = "{CANARY}"
[sources.aws2]
type = "aws_secrets_manager"
region = "{CANARY}"
endpoint_url = "{CANARY}"
[[jobs]]
name = "{CANARY}!"
connection = {{ id = "{CANARY}" }}
connector = "{CANARY}"
source = "{CANARY}"
secret = "s"
schedule = "{CANARY} * * * * *"
timezone = "{CANARY}"
jitter = "{CANARY}"
max_age = "{CANARY}"
run_on_start = "{CANARY}"
[[jobs]]
name = "b"
connection = {{ name = "{CANARY}", space = ".." }}
connector = "mssql"
scheme = "{CANARY}"
source = "aws2"
secret = "s"
file_encoding = "{CANARY}"
separate_credentials = "{CANARY}"
[daemon]
max_concurrent_rotations = "{CANARY}"
shutdown_grace_period = "{CANARY}"
[metrics]
listen = "{CANARY}"
"#
    );
    let errs = errors_without_canary(&text);
    let keys: Vec<&str> = errs.iter().map(|e| e.split(':').next().unwrap()).collect();
    assert_eq!(
        keys,
        [
            "qlik.request_timeout",
            "qlik.max_attempts",
            "sources.aws.type",
            "sources.aws2.region",
            "sources.aws2.endpoint_url",
            "jobs[0].name",
            "jobs[0].connection.id",
            "jobs[0].connector",
            "jobs[0].source",
            "jobs[0].schedule",
            "jobs[0].timezone",
            "jobs[0].jitter",
            "jobs[0].run_on_start",
            "jobs[0].max_age",
            "jobs[1].connection.space",
            "jobs[1].scheme",
            "jobs[1].file_encoding",
            "jobs[1].separate_credentials",
            "daemon.max_concurrent_rotations",
            "daemon.shutdown_grace_period",
            "metrics.listen",
        ],
        "{errs:#?}"
    );
}

#[test]
fn urls_refuse_credentials_query_fragment_and_path_without_quoting_them() {
    let cases = [
        (
            format!("https://admin:{CANARY}@acme.eu.qlikcloud.com"),
            "must not contain a user name or password",
        ),
        (
            format!("https://{CANARY}@acme.eu.qlikcloud.com"),
            "must not contain a user name or password",
        ),
        (
            format!("http://admin:{CANARY}@127.0.0.1:9"),
            "must not contain a user name or password",
        ),
        (
            format!("https://acme.eu.qlikcloud.com/?key={CANARY}"),
            "must not contain a query",
        ),
        (
            format!("https://acme.eu.qlikcloud.com/#{CANARY}"),
            "must not contain a fragment",
        ),
        (
            "https://acme.eu.qlikcloud.com/api/v1".to_owned(),
            "must not contain a path",
        ),
        (
            "https://acme.eu.qlikcloud.com/api/v1/data-connections".to_owned(),
            "must not contain a path",
        ),
        (
            format!("ftp://acme.eu.qlikcloud.com/{CANARY}"),
            "must be an https:// URL",
        ),
        (CANARY.to_string(), "not a valid URL"),
    ];
    for (url, why) in &cases {
        // `text` is refused with an error at `key` that says `why`.
        let refused = |text: &str, key: &str| {
            let errs = errors_without_canary(text);
            assert!(
                errs.iter()
                    .any(|e| e.starts_with(&format!("{key}: ")) && e.contains(why)),
                "{url}: {errs:?}"
            );
        };
        refused(
            &with("https://acme.eu.qlikcloud.com", url),
            "qlik.tenant_url",
        );
        let endpoint = with(
            "type = \"aws_secrets_manager\"",
            &format!("type = \"aws_secrets_manager\"\nendpoint_url = \"{url}\""),
        );
        refused(&endpoint, "sources.aws.endpoint_url");
    }
    // A trailing slash is the base URL itself; a loopback endpoint over http is fine.
    let ok = with(
        "https://acme.eu.qlikcloud.com",
        "https://acme.eu.qlikcloud.com/",
    );
    assert!(load_str(&ok, Path::new("/"), &env(&[])).is_ok());
    let ok = with(
        "type = \"aws_secrets_manager\"",
        "type = \"aws_secrets_manager\"\nendpoint_url = \"http://127.0.0.1:5000\"\nregion = \"us-east-1\"",
    );
    let cfg = load_str(&ok, Path::new("/"), &env(&[])).unwrap();
    assert_eq!(
        cfg.sources["aws"],
        SourceConfig::AwsSecretsManager(crate::secrets::aws::AwsSecretsManagerConfig {
            region: Some("us-east-1".into()),
            endpoint_url: Some("http://127.0.0.1:5000".into())
        })
    );
}

#[test]
fn every_number_and_duration_has_a_range() {
    // (key, value, part of the error); `BIG` stands for u64::MAX. The key's table comes
    // from its first part.
    let cases: &[(&str, &str, &str)] = &[
        ("qlik.request_timeout", "\"0s\"", "from 1s to 10m"),
        ("qlik.request_timeout", "\"11m\"", "from 1s to 10m"),
        ("qlik.request_timeout", "\"999ms\"", "found 999ms"),
        ("qlik.max_attempts", "0", "from 1 to 10, found 0"),
        ("qlik.max_attempts", "11", "from 1 to 10, found 11"),
        ("qlik.max_attempts", "-1", "from 1 to 10, found -1"),
        ("qlik.max_attempts", "2.5", "from 1 to 10, found 2.5"),
        ("qlik.write_budget_per_min", "100001", "from 0 to 100000"),
        ("qlik.read_budget_per_min", "100001", "from 0 to 100000"),
        ("jobs[0].jitter", "\"BIGs\"", "from 0s to 1h"),
        ("jobs[0].jitter", "\"61m\"", "from 0s to 1h"),
        ("jobs[0].max_age", "\"BIG\"", "from 1m to 400d"),
        ("jobs[0].max_age", "\"0s\"", "from 1m to 400d"),
        ("jobs[0].max_age", "\"401d\"", "found 401d"),
        ("daemon.max_concurrent_rotations", "0", "from 1 to 1024"),
        ("daemon.max_concurrent_rotations", "1025", "from 1 to 1024"),
        ("daemon.max_attempts_per_run", "0", "from 1 to 10"),
        ("daemon.max_attempts_per_run", "11", "from 1 to 10"),
        ("daemon.shutdown_grace_period", "\"0s\"", "from 1s to 1h"),
        ("daemon.shutdown_grace_period", "\"2h\"", "from 1s to 1h"),
    ];
    println!("{} range cases", cases.len());
    let big = u64::MAX.to_string();
    for (key, value, why) in cases {
        let value = value.replace("BIG", &big);
        let table = match key.split('.').next().unwrap() {
            "jobs[0]" => "[[jobs]]",
            "qlik" => "[qlik]",
            "daemon" => "[daemon]",
            other => panic!("no table for {other}"),
        };
        let short = key.rsplit('.').next().unwrap();
        let text = insert(table, &format!("{short} = {value}"));
        let errs = errors(&text);
        assert!(
            errs.len() == 1
                && errs[0].starts_with(&format!("{key}: expected "))
                && errs[0].contains(why),
            "{key} = {value}: {errs:?}"
        );
    }
    // The bounds themselves are accepted.
    for (table, line) in [
        ("[qlik]", "request_timeout = \"1s\""),
        ("[qlik]", "request_timeout = \"10m\""),
        ("[[jobs]]", "jitter = \"0s\""),
        ("[[jobs]]", "jitter = \"1h\""),
        ("[[jobs]]", "max_age = \"1m\""),
        ("[[jobs]]", "max_age = \"400d\""),
        ("[daemon]", "shutdown_grace_period = \"1s\""),
        ("[daemon]", "shutdown_grace_period = \"1h\""),
    ] {
        let text = insert(table, line);
        assert!(load_str(&text, Path::new("/"), &env(&[])).is_ok(), "{line}");
    }
}

/// `MINIMAL` with `line` added to `table` (`[daemon]` is appended when missing).
fn insert(table: &str, line: &str) -> String {
    if MINIMAL.contains(table) {
        MINIMAL.replacen(table, &format!("{table}\n{line}"), 1)
    } else {
        format!("{MINIMAL}{table}\n{line}\n")
    }
}

#[test]
fn connection_ids_must_be_uuids_and_names_usable_as_a_path_segment() {
    let long = "n".repeat(257);
    let cases = [
        ("{ id = \"..\" }".to_string(), "jobs[0].connection.id"),
        ("{ id = \".\" }".to_string(), "jobs[0].connection.id"),
        ("{ id = \"c1\" }".to_string(), "jobs[0].connection.id"),
        (
            format!("{{ id = \"../{UUID_A}\" }}"),
            "jobs[0].connection.id",
        ),
        (
            format!("{{ id = \"{}\" }}", UUID_A.replace('-', "")),
            "jobs[0].connection.id",
        ),
        (
            format!("{{ id = \"{{{UUID_A}}}\" }}"),
            "jobs[0].connection.id",
        ),
        (
            format!("{{ id = \"{UUID_A}?x=1\" }}"),
            "jobs[0].connection.id",
        ),
        ("{ name = \"..\" }".to_string(), "jobs[0].connection.name"),
        (
            "{ name = \".\", space = \"s\" }".to_string(),
            "jobs[0].connection.name",
        ),
        (
            "{ name = \"a\\u0000b\" }".to_string(),
            "jobs[0].connection.name",
        ),
        (
            "{ name = \"a\\nb\" }".to_string(),
            "jobs[0].connection.name",
        ),
        (
            format!("{{ name = \"{long}\" }}"),
            "jobs[0].connection.name",
        ),
        (
            "{ name = \"x\", space = \"..\" }".to_string(),
            "jobs[0].connection.space",
        ),
        (
            format!("{{ name = \"x\", space = \"{}\" }}", "s".repeat(65)),
            "jobs[0].connection.space",
        ),
        (
            "{ name = \"x\", space = \"\\u001b[2J\" }".to_string(),
            "jobs[0].connection.space",
        ),
    ];
    for (conn, key) in &cases {
        let text = with(
            "connection = { id = \"00000001-0000-4000-8000-000000000001\" }",
            &format!("connection = {conn}"),
        );
        let errs = errors(&text);
        assert!(
            errs.len() == 1 && errs[0].starts_with(&format!("{key}: must ")),
            "{conn}: {errs:?}"
        );
        assert!(!errs[0].contains('\u{1b}') && !errs[0].contains("nnnnnnnn"));
    }
    // Upper-case hex is a UUID too; a name may hold '/', '?', '#', '%' (the client encodes).
    for conn in [
        format!("{{ id = \"{}\" }}", UUID_A.to_uppercase()),
        "{ name = \"a/b?c#d%2e%2e ..\", space = \"5f8e9a0b1c2d3e4f5a6b7c8d\" }".to_owned(),
    ] {
        let text = with(
            "connection = { id = \"00000001-0000-4000-8000-000000000001\" }",
            &format!("connection = {conn}"),
        );
        assert!(load_str(&text, Path::new("/"), &env(&[])).is_ok(), "{conn}");
    }
}

fn two_jobs(a: &str, b: &str) -> String {
    format!(
        "{}[[jobs]]\nname = \"b\"\n{b}\nconnector = \"mssql\"\nsource = \"aws\"\nsecret = \"prod/b\"\n",
        with(
            "connection = { id = \"00000001-0000-4000-8000-000000000001\" }",
            a
        )
    )
}

#[test]
fn two_jobs_on_one_connection_are_refused_unless_both_opt_in() {
    let by_id = format!("connection = {{ id = \"{UUID_A}\" }}");
    let by_id_upper = format!("connection = {{ id = \"{}\" }}", UUID_A.to_uppercase());
    let by_name = "connection = { name = \"Finance SQL\", space = \"fin\" }";
    let dup = |errs: Vec<String>| {
        assert_eq!(
            errs,
            [
                "jobs[1].connection: job \"b\" patches the same connection as job \"a\" (jobs[0]); one connection gets one job, or set allow_shared_connection = true on both"
            ]
        );
    };
    dup(errors(&two_jobs(&by_id, &by_id)));
    dup(errors(&two_jobs(&by_id, &by_id_upper)));
    dup(errors(&two_jobs(by_name, by_name)));
    // Within a fan-out job, and across a fan-out and a single job.
    let fan = format!(
        "connections = [{{ id = \"{UUID_B}\" }}, {{ id = \"{}\" }}]",
        UUID_A.to_uppercase()
    );
    let errs = errors(&two_jobs(&by_id, &fan));
    assert_eq!(
        errs,
        [
            "jobs[1].connections[1]: job \"b\" patches the same connection as job \"a\" (jobs[0]); one connection gets one job, or set allow_shared_connection = true on both"
        ]
    );
    let twice = format!(
        "connections = [{{ id = \"{UUID_A}\" }}, {{ id = \"{}\" }}]",
        UUID_A.to_uppercase()
    );
    assert_eq!(
        errors(&with(
            "connection = { id = \"00000001-0000-4000-8000-000000000001\" }",
            &twice
        )),
        ["jobs[0].connections[1]: duplicate connection"]
    );
    // One opt-in is not enough; both are.
    let opt = |c: &str| format!("{c}\nallow_shared_connection = true");
    assert_eq!(errors(&two_jobs(&by_id, &opt(&by_id))).len(), 1);
    let cfg = load_str(
        &two_jobs(&opt(&by_id), &opt(&by_id)),
        Path::new("/"),
        &env(&[]),
    )
    .unwrap();
    assert!(cfg.jobs.iter().all(|j| j.allow_shared_connection));
    // Same name in another space (or none) is another connection.
    let other = "connection = { name = \"Finance SQL\", space = \"sales\" }";
    assert!(load_str(&two_jobs(by_name, other), Path::new("/"), &env(&[])).is_ok());
    let none = "connection = { name = \"Finance SQL\" }";
    assert!(load_str(&two_jobs(by_name, none), Path::new("/"), &env(&[])).is_ok());
}

#[test]
fn a_public_admin_listener_is_a_warning() {
    let warn = |listen: &str, admin: bool| {
        let mut text = format!("{MINIMAL}[metrics]\nlisten = \"{listen}\"\n");
        if admin {
            text.push_str("admin_token_file = \"/run/secrets/admin\"\n");
        }
        load_str(&text, Path::new("/"), &env(&[]))
            .unwrap()
            .warnings()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    };
    let w = warn("0.0.0.0:9464", true);
    assert_eq!(w.len(), 1);
    assert!(w[0].starts_with("metrics.listen: the admin API"), "{w:?}");
    assert!(w[0].contains("0.0.0.0:9464"));
    assert_eq!(warn("[::]:9464", true).len(), 1);
    assert_eq!(warn("10.1.2.3:9464", true).len(), 1);
    assert!(warn("127.0.0.1:9464", true).is_empty());
    assert!(warn("[::1]:9464", true).is_empty());
    assert!(warn("0.0.0.0:9464", false).is_empty());
}

#[test]
fn key_names_from_the_file_are_printed_escaped() {
    let text =
        format!("{MINIMAL}[sources.\"\\u001b[31mred\"]\ntype = \"file\"\npath = \"v\"\nx = 1\n");
    let errs = errors(&text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("sources.\\u{1b}[31mred.x: unknown key"),
        "{errs:?}"
    );
}

/// The `[metrics]` of [`MINIMAL`] with `extra` in that table.
fn metrics_with(extra: &str) -> MetricsConfig {
    load_str(
        &format!("{MINIMAL}[metrics]\n{extra}"),
        Path::new("/"),
        &env(&[]),
    )
    .unwrap()
    .metrics
}

#[test]
fn per_job_success_counts_are_off_unless_enabled() {
    let load = metrics_with;
    let none = load("");
    assert!(!none.per_job_unchanged && !none.per_job_rotated);
    assert!(!load("per_job_unchanged = false\n").per_job_unchanged);
    let both = load("per_job_unchanged = true\n");
    assert!(both.per_job_unchanged && !both.per_job_duration_histogram && !both.per_job_rotated);
    let rotated = load("per_job_rotated = true\n");
    assert!(rotated.per_job_rotated && !rotated.per_job_unchanged);
    for key in ["per_job_unchanged", "per_job_rotated"] {
        for bad in ["\"yes\"", "1", "[true]"] {
            let errs = errors(&format!("{MINIMAL}[metrics]\n{key} = {bad}\n"));
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert!(errs[0].contains(&format!("metrics.{key}")), "{errs:?}");
        }
    }
}

#[test]
fn the_per_job_duration_histogram_is_off_unless_enabled() {
    let load = |extra: &str| metrics_with(extra).per_job_duration_histogram;
    assert!(!load(""));
    assert!(!load("per_job_duration_histogram = false\n"));
    assert!(load("per_job_duration_histogram = true\n"));
    assert_eq!(
        errors(&format!(
            "{MINIMAL}[metrics]\nper_job_duration_histogram = \"yes\"\n"
        ))
        .len(),
        1
    );
}

#[test]
fn state_defaults_to_sqlite_with_90_days_of_history() {
    let cfg = load_str(MINIMAL, Path::new("/etc/qr"), &env(&[])).unwrap();
    assert_eq!(cfg.state, state::StateConfig::default());
    assert_eq!(cfg.state.backend, state::BackendConfig::Sqlite);
    assert_eq!(
        cfg.state.history_retention,
        Duration::from_secs(90 * 86_400)
    );
    let text = format!("{MINIMAL}\n[state]\nbackend = \"sqlite\"\nhistory_retention = \"7d\"\n");
    let cfg = load_str(&text, Path::new("/etc/qr"), &env(&[])).unwrap();
    assert_eq!(cfg.state.history_retention, Duration::from_secs(7 * 86_400));
}

#[test]
fn state_dynamodb_reads_every_key() {
    let text = format!(
        "{MINIMAL}\n[state]\nbackend = \"dynamodb\"\ntable = \"qlik-rotator-state\"\nregion = \"eu-west-1\"\nlease_ttl = \"15s\"\nhistory_retention = \"30d\"\n"
    );
    let cfg = load_str(&text, Path::new("/etc/qr"), &env(&[])).unwrap();
    assert_eq!(
        cfg.state.backend,
        state::BackendConfig::DynamoDb(state::DynamoDbConfig {
            table: "qlik-rotator-state".into(),
            lease_ttl: Duration::from_secs(15),
            region: Some("eu-west-1".into()),
        })
    );
    assert_eq!(
        cfg.state.history_retention,
        Duration::from_secs(30 * 86_400)
    );
    // lease_ttl defaults to 30 s.
    let text = format!("{MINIMAL}\n[state]\nbackend = \"dynamodb\"\ntable = \"t-1\"\n");
    let cfg = load_str(&text, Path::new("/etc/qr"), &env(&[])).unwrap();
    assert!(
        matches!(&cfg.state.backend, state::BackendConfig::DynamoDb(d) if d.lease_ttl == Duration::from_secs(30) && d.region.is_none())
    );
}

#[test]
fn state_errors_name_their_keys() {
    let cases: &[(&str, &[&str])] = &[
        (
            "backend = \"redis\"",
            &["state.backend: expected \"sqlite\""],
        ),
        ("backend = 3", &["state.backend: expected a string"]),
        (
            "history_retention = \"1h\"",
            &["state.history_retention: expected a duration from"],
        ),
        ("history_retention = \"soon\"", &["state.history_retention"]),
        (
            "table = \"t\"",
            &["state.table: applies to backend = \"dynamodb\" only"],
        ),
        ("colour = \"blue\"", &["state.colour: unknown key"]),
        // DynamoDB: every key checked.
        ("backend = \"dynamodb\"", &["state.table: is required"]),
        (
            "backend = \"dynamodb\"\ntable = \"x\"\nlease_ttl = \"1s\"\nregion = \"EU WEST\"",
            &[
                "state.table: expected a DynamoDB table name",
                "state.lease_ttl: expected a duration from 5s",
                "state.region: expected an AWS region",
            ],
        ),
    ];
    println!("{} [state] error cases", cases.len());
    for (body, needles) in cases {
        let errs = errors(&format!("{MINIMAL}\n[state]\n{body}\n")).join("\n");
        for n in *needles {
            assert!(errs.contains(n), "{body:?}: missing {n:?} in\n{errs}");
        }
    }
}

/// Two tenants, `prod` (API key) and `test` (OAuth), and `jobs`.
fn tenants(jobs: &str) -> String {
    format!(
        r#"
[tenants.prod]
tenant_url = "https://prod.eu.qlikcloud.com"
api_key_env = "PROD_KEY"
write_budget_per_min = 50
[tenants.test]
tenant_url = "https://test.eu.qlikcloud.com"
[tenants.test.oauth]
client_id = "rotator"
client_secret_env = "TEST_SECRET"
[sources.aws]
type = "aws_secrets_manager"
{jobs}"#
    )
}

const UUID1: &str = "00000001-0000-4000-8000-000000000001";

#[test]
fn tenants_load_with_their_own_auth_budgets_and_jobs() {
    let text = tenants(&format!(
        r#"
[[jobs]]
name = "dwh"
tenant = "prod"
connections = [{{ id = "{UUID1}" }}, {{ id = "{UUID1}", tenant = "test" }}]
connector = "mssql"
source = "aws"
secret = "dwh"
"#
    ));
    let cfg = load_str(&text, Path::new("/"), &env(&[])).unwrap();
    assert!(cfg.multi_tenant);
    let names: Vec<&str> = cfg.tenants.iter().map(|t| &*t.name).collect();
    assert_eq!(names, ["prod", "test"]);
    let prod = cfg.tenant("prod").unwrap();
    assert_eq!(prod.table, "tenants.prod");
    assert_eq!(prod.write_budget_per_min, 50);
    assert_eq!(cfg.tenant("test").unwrap().write_budget_per_min, 100);
    assert!(matches!(
        cfg.tenant("test").unwrap().auth,
        QlikAuth::OAuth { .. }
    ));
    let job = cfg.job("dwh").unwrap();
    assert_eq!(&*job.tenant, "prod");
    // The same id in two tenants is two connections, with two keys.
    let keys: Vec<String> = job.connections.iter().map(Target::key).collect();
    assert_eq!(keys, [UUID1.to_owned(), format!("test:{UUID1}")]);
    assert_eq!(
        job.state_key(&job.connections[1]),
        format!("dwh@test:{UUID1}")
    );
    assert_eq!(
        job.connections[1].to_string(),
        format!("id {UUID1} in tenant test")
    );
}

#[test]
fn a_single_qlik_table_is_the_default_tenant_and_keeps_its_keys() {
    let cfg = load_str(MINIMAL, Path::new("/"), &env(&[])).unwrap();
    assert!(!cfg.multi_tenant);
    assert_eq!(&*cfg.tenants[0].name, DEFAULT_TENANT);
    assert_eq!(cfg.tenants[0].table, "qlik");
    let job = &cfg.jobs[0];
    assert_eq!(&*job.tenant, DEFAULT_TENANT);
    assert_eq!(job.connections[0].key(), UUID1);
    assert_eq!(job.connections[0].to_string(), format!("id {UUID1}"));
    // `tenant = "default"` is accepted; another name is not.
    let named = MINIMAL.replace("name = \"a\"", "name = \"a\"\ntenant = \"default\"");
    assert!(load_str(&named, Path::new("/"), &env(&[])).is_ok());
    let other = MINIMAL.replace("name = \"a\"", "name = \"a\"\ntenant = \"prod\"");
    let errs = errors(&other);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("jobs[0].tenant: names no tenant"),
        "{errs:?}"
    );
    assert!(errs[0].contains("[qlik], named \"default\""), "{errs:?}");
}

#[test]
fn one_tenant_table_is_every_job_s_tenant() {
    let one = MINIMAL.replace("[qlik]", "[tenants.prod]");
    let cfg = load_str(&one, Path::new("/"), &env(&[])).unwrap();
    assert!(cfg.multi_tenant);
    assert_eq!(&*cfg.jobs[0].tenant, "prod");
    assert_eq!(cfg.tenants[0].table, "tenants.prod");
}

#[test]
fn tenant_errors_name_the_key_and_the_tenants() {
    let job = |extra: &str, conn: &str| {
        format!(
            "[[jobs]]\nname = \"j\"\n{extra}\nconnection = {conn}\nconnector = \"mssql\"\nsource = \"aws\"\nsecret = \"s\"\n"
        )
    };
    let id = format!("{{ id = \"{UUID1}\" }}");
    // Several tenants and no `tenant`.
    let errs = errors(&tenants(&job("", &id)));
    assert_eq!(
        errs,
        ["jobs[0].tenant: is required: this file declares several tenants (defined: prod, test)"]
    );
    // An unknown tenant, with a suggestion.
    let errs = errors(&tenants(&job("tenant = \"prd\"", &id)));
    assert_eq!(
        errs,
        ["jobs[0].tenant: names no tenant; did you mean \"prod\"? (defined: prod, test)"]
    );
    // An unknown tenant on a connection.
    let conn = format!("{{ id = \"{UUID1}\", tenant = \"qa\" }}");
    let errs = errors(&tenants(&job("tenant = \"prod\"", &conn)));
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with("jobs[0].connection.tenant: names no tenant"),
        "{errs:?}"
    );
    // [qlik] and [tenants] together.
    let both = format!(
        "{MINIMAL}\n[tenants.prod]\ntenant_url = \"https://p.eu.qlikcloud.com\"\napi_key_env = \"K\"\n"
    );
    let errs = errors(&both);
    assert!(
        errs.iter()
            .any(|e| e
                .starts_with("tenants: set either [qlik] (one tenant) or [tenants.<name>] tables")),
        "{errs:?}"
    );
}

#[test]
fn tenant_names_and_tenant_tables_are_checked() {
    let job = |extra: &str, conn: &str| {
        format!(
            "[[jobs]]\nname = \"j\"\n{extra}\nconnection = {conn}\nconnector = \"mssql\"\nsource = \"aws\"\nsecret = \"s\"\n"
        )
    };
    let id = format!("{{ id = \"{UUID1}\" }}");
    // A bad name (upper case, too long, a dot is a nested table), escaped.
    for bad in [
        "Prod",
        "a-very-long-tenant-name-of-33-char",
        "_x",
        "t\\u001bx",
    ] {
        let text = tenants(&job("tenant = \"prod\"", &id))
            .replace("[tenants.test]", &format!("[tenants.\"{bad}\"]"))
            .replace(
                "[tenants.test.oauth]",
                &format!("[tenants.\"{bad}\".oauth]"),
            );
        let errs = errors(&text);
        assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
        assert!(
            errs[0].contains(": bad tenant name: a tenant name is 1 to 32"),
            "{errs:?}"
        );
        assert!(!errs[0].contains('\u{1b}'), "{errs:?}");
    }
    // A tenant's own keys are checked under its table.
    let text = tenants(&job("tenant = \"prod\"", &id)).replace(
        "write_budget_per_min = 50",
        "write_budget_per_min = -1\napi_key = \"x\"",
    );
    let errs = errors(&text);
    assert!(
        errs.iter()
            .any(|e| e.starts_with("tenants.prod.write_budget_per_min:")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e
                .starts_with("tenants.prod.api_key: the Qlik API key is never accepted inline")),
        "{errs:?}"
    );
    // No tenant at all.
    let errs = errors(&job("", &id).replace(
        "[[jobs]]",
        "[tenants]\n[sources.aws]\ntype = \"aws_secrets_manager\"\n[[jobs]]",
    ));
    assert!(
        errs.iter()
            .any(|e| e.starts_with("tenants: declares no tenant")),
        "{errs:?}"
    );
}

#[test]
fn a_cross_tenant_job_takes_no_canary_and_no_duplicate_keys() {
    let text = tenants(&format!(
        r#"
[[jobs]]
name = "dwh"
tenant = "prod"
connections = [{{ id = "{UUID1}" }}, {{ id = "{UUID1}", tenant = "prod" }}]
connector = "mssql"
source = "aws"
secret = "dwh"
"#
    ));
    let errs = errors(&text);
    assert!(
        errs.iter()
            .any(|e| e.starts_with("jobs[0].connections[1]: duplicate connection")),
        "{errs:?}"
    );
    let text = tenants(&format!(
        r#"
[[jobs]]
name = "dwh"
tenant = "prod"
connections = [{{ id = "{UUID1}" }}, {{ id = "{UUID1}", tenant = "test" }}]
connector = "mssql"
source = "aws"
secret = "dwh"
canary_app = "{UUID1}"
"#
    ));
    let errs = errors(&text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("jobs[0].canary_app: a canary app lives in one tenant"),
        "{errs:?}"
    );
    // Two jobs on one id in two tenants are two connections; in one tenant, shared.
    let two = |t2: &str| {
        tenants(&format!(
            "[[jobs]]\nname = \"a\"\ntenant = \"prod\"\nconnection = {{ id = \"{UUID1}\" }}\nconnector = \"mssql\"\nsource = \"aws\"\nsecret = \"a\"\n\
             [[jobs]]\nname = \"b\"\ntenant = \"{t2}\"\nconnection = {{ id = \"{UUID1}\" }}\nconnector = \"mssql\"\nsource = \"aws\"\nsecret = \"b\"\n"
        ))
    };
    assert!(load_str(&two("test"), Path::new("/"), &env(&[])).is_ok());
    let errs = errors(&two("prod"));
    assert!(
        errs[0].contains("patches the same connection as job \"a\""),
        "{errs:?}"
    );
}

#[test]
fn the_tenants_example_config_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example-tenants.toml");
    let cfg = load(&path, &env(&[])).unwrap();
    assert!(cfg.multi_tenant);
    assert_eq!(cfg.tenants.len(), 2);
    let warehouse = cfg.job("warehouse").unwrap();
    assert_eq!(&*warehouse.connections[1].tenant, "test");
    assert!(warehouse.connections[1].foreign);
    assert_eq!(&*cfg.job("sales-s3-prod").unwrap().tenant, "prod");
}
