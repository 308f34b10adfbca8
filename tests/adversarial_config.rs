//! Adversarial configuration suite: every section of the file (and the environment overrides)
//! fed what a hurried operator or an attacker would write. One test per case; each runs the
//! real binary (`check-config`, `check-config --online` and `rotate --all`) against the
//! in-process simulator with a file vault, `RUST_LOG=trace`, and asserts:
//! - exit 64 and the key path named in the message;
//! - no request reached the tenant (so no PATCH; no Basic auth sent by `user:pw@` URLs);
//! - no canary (the API key, every vault secret, and whatever the case pasted into the file)
//!   in stdout or stderr.
//!
//! A control test proves the base configuration does rotate (three PATCHes, canaries sent),
//! so a case can only pass because its mutation was refused.

mod common;

use common::harness::*;
use qlik_sim::{SimConfig, Simulator};

/// Part of every canary: the API key, the vault secrets and the pasted values all contain it.
const MARK: &str = "3b9e71";
/// A canary with characters no variable name has.
const CANARY: &str = "CANARY-cfg-3b9e71";
/// A canary that is a valid environment-variable name.
const CANARY_NAME: &str = "CANARYcfg3b9e71";
/// The tenant accepts only this key.
const API_KEY_CANARY: &str = "CANARY-api-key-3b9e71";

struct World {
    sim: Simulator,
    dir: tempfile::TempDir,
}

/// A seeded tenant and a vault whose every secret value is a canary.
async fn world() -> World {
    let sim = tenant(SimConfig {
        api_keys: vec![API_KEY_CANARY.into()],
        ..SimConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let vault = dir.path().join("vault").join("qlik");
    std::fs::create_dir_all(&vault).unwrap();
    std::fs::write(
        vault.join("sales-s3.json"),
        format!(r#"{{"accessKey":"AKIA-{CANARY}","secretKey":"s3-{CANARY}"}}"#),
    )
    .unwrap();
    std::fs::write(
        vault.join("finance-sql.json"),
        format!(r#"{{"username":"svc","password":"pw-{CANARY}"}}"#),
    )
    .unwrap();
    std::fs::write(
        vault.join("bigquery.json"),
        format!(
            r#"{{"key_file":{{"type":"service_account","project_id":"wh","private_key":"{CANARY}","client_email":"r@wh.iam.gserviceaccount.com"}}}}"#
        ),
    )
    .unwrap();
    World { sim, dir }
}

/// A valid configuration: the simulator, a file vault, three jobs (S3 by id, SQL Server by
/// name and space, BigQuery by id).
fn base(sim: &Simulator) -> String {
    format!(
        "[qlik]\ntenant_url = \"{}\"\napi_key_env = \"QLIK_API_KEY\"\n\
         [sources.v]\ntype = \"file\"\npath = \"vault\"\n\
         [daemon]\nstate_dir = \"state\"\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n{}",
        sim.base_url(),
        three_jobs("v")
    )
}

fn base_env(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut e = env(&[("QLIK_API_KEY", API_KEY_CANARY), ("RUST_LOG", "trace")]);
    e.extend(env(extra));
    e
}

fn assert_no_canary(out: &CliOutput) {
    for text in [&out.stdout, &out.stderr] {
        assert!(
            !text.contains(MARK) && !text.contains("CANARY"),
            "canary leaked: {out:?}"
        );
    }
}

/// Runs `check-config`, `check-config --online` and `rotate --all` on the mutated base
/// configuration; each must exit 64, name `key`, leak nothing; the tenant sees no request.
async fn refused_with_env(
    key: &str,
    extra_env: &[(&str, &str)],
    mutate: impl FnOnce(String, &Simulator) -> String,
) {
    let w = world().await;
    let text = mutate(base(&w.sim), &w.sim);
    let path = write_config(w.dir.path(), &text);
    let config = path.to_str().unwrap();
    let env = base_env(extra_env);
    for args in [
        vec!["check-config", "-c", config],
        vec!["check-config", "--online", "-c", config],
        vec!["--log-format", "json", "rotate", "-c", config, "--all"],
    ] {
        let out = run_cli(&args, &env).await;
        assert_eq!(out.code, 64, "{args:?}: {out:?}");
        if args[0] == "--log-format" {
            // Under --log-format json the fatal error is one JSON line, its details the keys.
            assert!(
                fatal_json_names(&out.stderr, key),
                "{args:?}: no fatal JSON line naming {key} in\n{}",
                out.stderr
            );
        } else {
            assert!(
                out.stderr.contains(&format!("  {key}: ")),
                "{args:?}: key {key} not named in\n{}",
                out.stderr
            );
        }
        assert_no_canary(&out);
    }
    assert!(
        w.sim.requests().is_empty(),
        "the tenant was contacted: {:?}",
        w.sim.requests()
    );
    assert!(with_method(&w.sim, "PATCH").is_empty());
}

/// Whether `stderr` has a fatal JSON error line (`"fatal": true`) whose message or details
/// start with `key: `, and every line of it is JSON.
fn fatal_json_names(stderr: &str, key: &str) -> bool {
    let mut named = false;
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            return false;
        };
        if v["fatal"] == true {
            let prefix = format!("{key}: ");
            let details = v["details"].as_array().cloned().unwrap_or_default();
            named |= v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(&prefix))
                || details
                    .iter()
                    .any(|d| d.as_str().is_some_and(|d| d.starts_with(&prefix)));
        }
    }
    named
}

async fn refused(key: &str, mutate: impl FnOnce(String, &Simulator) -> String) {
    refused_with_env(key, &[], mutate).await;
}

/// `text` with `from` replaced by `to`; `from` must occur.
fn swap(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} not in the base config");
    text.replacen(from, to, 1)
}

/// `text` with the `api_key_env = "QLIK_API_KEY"` line of `[qlik]` replaced by `lines`.
fn api_key_as(text: &str, lines: &str) -> String {
    swap(text, "api_key_env = \"QLIK_API_KEY\"", lines)
}

/// Adds `line` right after the header line `header` (e.g. `[qlik]`).
fn add_to(text: &str, header: &str, line: &str) -> String {
    swap(text, &format!("{header}\n"), &format!("{header}\n{line}\n"))
}

/// Adds `line` to the first job (after its name).
fn add_to_job0(text: &str, line: &str) -> String {
    swap(
        text,
        "name = \"sales-s3\"\n",
        &format!("name = \"sales-s3\"\n{line}\n"),
    )
}

/// Appends a fourth job.
fn add_job(text: &str, body: &str) -> String {
    format!(
        "{text}\n[[jobs]]\nname = \"extra\"\n{body}\nsource = \"v\"\nsecret = \"qlik/sales-s3\"\n"
    )
}

macro_rules! refused {
    ($name:ident, $key:expr, $mutate:expr) => {
        #[tokio::test]
        async fn $name() {
            refused($key, $mutate).await;
        }
    };
    ($name:ident, $key:expr, env = $env:expr, $mutate:expr) => {
        #[tokio::test]
        async fn $name() {
            refused_with_env($key, $env, $mutate).await;
        }
    };
}

// === Control ===

/// The base configuration rotates all three connections: the harness sees PATCHes and the
/// canaries reach the tenant, so the refusals below are not vacuous.
#[tokio::test]
async fn control_the_base_config_rotates_three_connections() {
    let w = world().await;
    let path = write_config(w.dir.path(), &base(&w.sim));
    let out = run_cli(
        &["rotate", "-c", path.to_str().unwrap(), "--all"],
        &base_env(&[]),
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(with_method(&w.sim, "PATCH").len(), 3);
    assert_eq!(
        stored_prop(&w.sim, S3_ID, "secretKey"),
        format!("s3-{CANARY}")
    );
    // The product logs at debug/trace too (the wire-level crates are capped at info).
    assert!(
        out.stderr.contains("DEBUG") || out.stderr.contains("TRACE"),
        "trace logging is on: {}",
        out.stderr
    );
    assert_no_canary(&out);
}

// === TOML syntax: line, column and key, never the line ===

refused!(
    toml_unterminated_string_holding_a_secret,
    "qlik.api_key_env",
    |t, _| api_key_as(&t, &format!("api_key_env = \"{CANARY}"))
);
refused!(
    toml_secret_pasted_on_a_line_of_its_own,
    "jobs[0]",
    |t, _| add_to_job0(&t, CANARY)
);
refused!(toml_unquoted_secret_value, "jobs[1].secret", |t, _| swap(
    &t,
    "secret = \"qlik/finance-sql\"",
    &format!("secret = {CANARY}")
));
refused!(toml_text_after_a_string, "qlik.tenant_url", |t, s| swap(
    &t,
    &format!("tenant_url = \"{}\"", s.base_url()),
    &format!("tenant_url = \"{}\" {CANARY}", s.base_url())
));
refused!(toml_duplicate_key, "qlik.api_key_env", |t, _| add_to(
    &t,
    "[qlik]",
    &format!("api_key_env = \"{CANARY_NAME}\"")
));
refused!(toml_invalid_escape, "jobs[0].secret", |t, _| swap(
    &t,
    "secret = \"qlik/sales-s3\"",
    &format!("secret = \"\\q{CANARY}\"")
));
// The parser notices the missing `}` on the next line, so that line's key is named.
refused!(toml_unclosed_inline_table, "jobs[0].connector", |t, _| {
    swap(
        &t,
        &format!("connection = {{ id = \"{S3_ID}\" }}"),
        &format!("connection = {{ id = \"{CANARY}\""),
    )
});

// === [qlik] secret locators ===

refused!(api_key_env_holding_a_jwt, "qlik.api_key_env", |t, _| {
    api_key_as(
        &t,
        &format!("api_key_env = \"eyJhbGciOiJIUzI1NiJ9.{CANARY}\""),
    )
});
refused!(
    api_key_env_starting_with_a_digit,
    "qlik.api_key_env",
    |t, _| api_key_as(&t, &format!("api_key_env = \"9{CANARY_NAME}\""))
);
refused!(api_key_env_longer_than_256, "qlik.api_key_env", |t, _| {
    api_key_as(
        &t,
        &format!("api_key_env = \"K{}\"", CANARY_NAME.repeat(20)),
    )
});
refused!(api_key_file_with_a_newline, "qlik.api_key_file", |t, _| {
    api_key_as(&t, &format!("api_key_file = \"/run/{CANARY}\\nsecond\""))
});
refused!(
    api_key_file_with_a_terminal_escape,
    "qlik.api_key_file",
    |t, _| api_key_as(&t, &format!("api_key_file = \"\\u001b]0;{CANARY}\\u0007\""))
);
refused!(
    api_key_file_longer_than_4096,
    "qlik.api_key_file",
    |t, _| api_key_as(
        &t,
        &format!("api_key_file = \"/{}{CANARY}\"", "d/".repeat(2100))
    )
);
refused!(api_key_inline, "qlik.api_key", |t, _| api_key_as(
    &t,
    &format!("api_key = \"{CANARY}\"")
));
refused!(
    api_key_env_and_file_both,
    "qlik.api_key_env",
    |t, _| add_to(&t, "[qlik]", "api_key_file = \"/run/secrets/qlik\"")
);
refused!(api_key_missing, "qlik.api_key_env", |t, _| swap(
    &t,
    "api_key_env = \"QLIK_API_KEY\"\n",
    ""
));
refused!(
    oauth_client_secret_env_holding_a_secret,
    "qlik.oauth.client_secret_env",
    |t, _| api_key_as(
        &t,
        &format!("[qlik.oauth]\nclient_id = \"cid\"\nclient_secret_env = \"{CANARY}\"")
    )
);
refused!(
    oauth_client_secret_inline,
    "qlik.oauth.client_secret",
    |t, _| api_key_as(
        &t,
        &format!("[qlik.oauth]\nclient_id = \"cid\"\nclient_secret = \"{CANARY}\"")
    )
);
refused!(
    oauth_client_secret_file_with_control_characters,
    "qlik.oauth.client_secret_file",
    |t, _| api_key_as(
        &t,
        &format!("[qlik.oauth]\nclient_id = \"cid\"\nclient_secret_file = \"/run/\\t{CANARY}\"")
    )
);
refused!(oauth_and_api_key_both, "qlik.oauth", |t, _| api_key_as(
    &t,
    "api_key_env = \"QLIK_API_KEY\"\n[qlik.oauth]\nclient_id = \"cid\"\nclient_secret_env = \"CS\""
));
refused!(oauth_without_client_id, "qlik.oauth.client_id", |t, _| {
    api_key_as(&t, "[qlik.oauth]\nclient_secret_env = \"CS\"")
});

// === [qlik] tenant_url ===

fn with_tenant_url(t: &str, s: &Simulator, url: &str) -> String {
    swap(
        t,
        &format!("tenant_url = \"{}\"", s.base_url()),
        &format!("tenant_url = \"{url}\""),
    )
}

refused!(
    tenant_url_with_user_and_password,
    "qlik.tenant_url",
    |t, s| {
        let url = s
            .base_url()
            .replace("http://", &format!("http://admin:{CANARY}@"));
        with_tenant_url(&t, s, &url)
    }
);
refused!(tenant_url_with_a_user_name, "qlik.tenant_url", |t, s| {
    let url = s
        .base_url()
        .replace("http://", &format!("http://{CANARY}@"));
    with_tenant_url(&t, s, &url)
});
refused!(tenant_url_with_a_query, "qlik.tenant_url", |t, s| {
    let url = format!("{}/?api_key={CANARY}", s.base_url());
    with_tenant_url(&t, s, &url)
});
refused!(tenant_url_with_a_fragment, "qlik.tenant_url", |t, s| {
    let url = format!("{}/#{CANARY}", s.base_url());
    with_tenant_url(&t, s, &url)
});
refused!(tenant_url_with_the_api_path, "qlik.tenant_url", |t, s| {
    let url = format!("{}/api/v1", s.base_url());
    with_tenant_url(&t, s, &url)
});
refused!(
    tenant_url_with_the_collection_path,
    "qlik.tenant_url",
    |t, s| {
        let url = format!("{}/api/v1/data-connections", s.base_url());
        with_tenant_url(&t, s, &url)
    }
);
refused!(
    tenant_url_http_to_a_remote_host,
    "qlik.tenant_url",
    |t, s| with_tenant_url(&t, s, "http://acme.eu.qlikcloud.com")
);
refused!(tenant_url_not_a_url, "qlik.tenant_url", |t, s| {
    with_tenant_url(&t, s, CANARY)
});
refused!(tenant_url_other_scheme, "qlik.tenant_url", |t, s| {
    with_tenant_url(&t, s, &format!("ftp://acme.eu.qlikcloud.com/{CANARY}"))
});
refused!(tenant_url_missing, "qlik.tenant_url", |t, s| swap(
    &t,
    &format!("tenant_url = \"{}\"\n", s.base_url()),
    ""
));

// === [sources] ===

fn aws_source(t: &str, line: &str) -> String {
    swap(
        t,
        "[daemon]",
        &format!("[sources.aws]\ntype = \"aws_secrets_manager\"\n{line}\n[daemon]"),
    )
}

refused!(
    source_endpoint_with_credentials,
    "sources.aws.endpoint_url",
    |t, _| aws_source(
        &t,
        &format!("endpoint_url = \"http://testing:{CANARY}@127.0.0.1:5000\"")
    )
);
refused!(
    source_endpoint_with_a_query,
    "sources.aws.endpoint_url",
    |t, _| aws_source(
        &t,
        &format!(
            "endpoint_url = \"https://secretsmanager.eu-west-1.amazonaws.com/?X-Amz-Security-Token={CANARY}\""
        )
    )
);
refused!(
    source_endpoint_with_a_path,
    "sources.aws.endpoint_url",
    |t, _| aws_source(&t, "endpoint_url = \"https://proxy.internal/aws\"")
);
refused!(
    source_endpoint_http_to_a_remote_host,
    "sources.aws.endpoint_url",
    |t, _| aws_source(
        &t,
        "endpoint_url = \"http://secretsmanager.eu-west-1.amazonaws.com\""
    )
);
refused!(
    source_region_holding_a_secret,
    "sources.aws.region",
    |t, _| aws_source(&t, &format!("region = \"{CANARY}\""))
);
refused!(source_unknown_type, "sources.v.type", |t, _| swap(
    &t,
    "type = \"file\"",
    &format!("type = \"{CANARY}\"")
));
refused!(source_path_with_a_newline, "sources.v.path", |t, _| swap(
    &t,
    "path = \"vault\"",
    &format!("path = \"vault\\n{CANARY}\"")
));
refused!(source_file_without_path, "sources.v.path", |t, _| swap(
    &t,
    "path = \"vault\"\n",
    ""
));

// === [[jobs]] connections ===

fn job0_connection(t: &str, conn: &str) -> String {
    swap(
        t,
        &format!("connection = {{ id = \"{S3_ID}\" }}"),
        &format!("connection = {conn}"),
    )
}

fn job1_connection(t: &str, conn: &str) -> String {
    swap(
        t,
        "connection = { name = \"Finance SQL\", space = \"finance\" }",
        &format!("connection = {conn}"),
    )
}

refused!(connection_id_dot_dot, "jobs[0].connection.id", |t, _| {
    job0_connection(&t, "{ id = \"..\" }")
});
refused!(connection_id_dot, "jobs[0].connection.id", |t, _| {
    job0_connection(&t, "{ id = \".\" }")
});
refused!(connection_id_not_a_uuid, "jobs[0].connection.id", |t, _| {
    job0_connection(&t, &format!("{{ id = \"{CANARY}\" }}"))
});
refused!(
    connection_id_with_a_traversal,
    "jobs[0].connection.id",
    |t, _| job0_connection(&t, &format!("{{ id = \"{S3_ID}/../{SQL_ID}\" }}"))
);
refused!(
    connection_id_percent_encoded_dots,
    "jobs[0].connection.id",
    |t, _| job0_connection(&t, "{ id = \"%2e%2e\" }")
);
refused!(
    connection_id_with_a_query,
    "jobs[0].connection.id",
    |t, _| job0_connection(&t, &format!("{{ id = \"{S3_ID}?type=connectionname\" }}"))
);
refused!(
    connection_name_dot_dot,
    "jobs[1].connection.name",
    |t, _| job1_connection(&t, "{ name = \"..\", space = \"finance\" }")
);
refused!(
    connection_name_with_a_terminal_escape,
    "jobs[1].connection.name",
    |t, _| job1_connection(
        &t,
        &format!("{{ name = \"Finance\\u001b[2J{CANARY}\", space = \"finance\" }}")
    )
);
refused!(
    connection_name_too_long,
    "jobs[1].connection.name",
    |t, _| job1_connection(
        &t,
        &format!("{{ name = \"{}\", space = \"finance\" }}", "n".repeat(300))
    )
);
refused!(
    connection_space_dot_dot,
    "jobs[1].connection.space",
    |t, _| job1_connection(&t, "{ name = \"Finance SQL\", space = \"..\" }")
);
refused!(
    connection_space_too_long,
    "jobs[1].connection.space",
    |t, _| job1_connection(
        &t,
        &format!(
            "{{ name = \"Finance SQL\", space = \"{}\" }}",
            "s".repeat(65)
        )
    )
);
refused!(
    connection_id_and_name_both,
    "jobs[0].connection.id",
    |t, _| job0_connection(&t, &format!("{{ id = \"{S3_ID}\", name = \"Sales S3\" }}"))
);

// === Two jobs, one connection ===

refused!(second_job_on_the_same_id, "jobs[3].connection", |t, _| {
    add_job(
        &t,
        &format!("connection = {{ id = \"{S3_ID}\" }}\nconnector = \"File_AmazonS3ConnectorV2\""),
    )
});
refused!(
    second_job_on_the_same_id_in_upper_case,
    "jobs[3].connection",
    |t, _| add_job(
        &t,
        &format!(
            "connection = {{ id = \"{}\" }}\nconnector = \"File_AmazonS3ConnectorV2\"",
            S3_ID.to_uppercase()
        )
    )
);
refused!(
    second_job_on_the_same_name_and_space,
    "jobs[3].connection",
    |t, _| add_job(
        &t,
        "connection = { name = \"Finance SQL\", space = \"finance\" }\nconnector = \"mssql\""
    )
);
refused!(
    second_job_reaching_a_connection_through_fan_out,
    "jobs[3].connections[1]",
    |t, _| add_job(
        &t,
        &format!(
            "connections = [{{ id = \"{GBQ_ID}\" }}, {{ id = \"{S3_ID}\" }}]\nconnector = \"File_AmazonS3ConnectorV2\""
        )
    )
);
refused!(
    the_same_connection_twice_in_one_fan_out_job,
    "jobs[3].connections[1]",
    |t, _| add_job(
        &t,
        "connections = [{ id = \"44444444-4444-4444-8444-444444444444\" }, { id = \"44444444-4444-4444-8444-444444444444\" }]\nconnector = \"mssql\""
    )
);
refused!(
    only_one_of_two_jobs_opting_in_to_share,
    "jobs[3].connection",
    |t, _| add_job(
        &t,
        &format!(
            "connection = {{ id = \"{S3_ID}\" }}\nconnector = \"File_AmazonS3ConnectorV2\"\nallow_shared_connection = true"
        )
    )
);

// === [[jobs]] other keys ===

refused!(job_secret_with_a_newline, "jobs[0].secret", |t, _| swap(
    &t,
    "secret = \"qlik/sales-s3\"",
    &format!("secret = \"qlik/sales-s3\\n{CANARY}\"")
));
refused!(
    job_connector_holding_a_secret,
    "jobs[0].connector",
    |t, _| swap(
        &t,
        "connector = \"File_AmazonS3ConnectorV2\"",
        &format!("connector = \"{CANARY}\"")
    )
);
refused!(job_source_holding_a_secret, "jobs[0].source", |t, _| swap(
    &t,
    "source = \"v\"",
    &format!("source = \"{CANARY}\"")
));
refused!(job_timezone_holding_a_secret, "jobs[0].timezone", |t, _| {
    add_to_job0(&t, &format!("timezone = \"{CANARY}\""))
});
refused!(
    job_schedule_with_illegal_characters,
    "jobs[0].schedule",
    |t, _| add_to_job0(&t, &format!("schedule = \"{CANARY} * * * * *\""))
);
refused!(
    job_header_with_a_control_character,
    "jobs[0].header",
    |t, _| add_to_job0(
        &t,
        &format!("header = \"Authorization: Bearer {CANARY}\\r\\n\"")
    )
);
refused!(job_scheme_holding_a_secret, "jobs[0].scheme", |t, _| {
    add_to_job0(&t, &format!("scheme = \"{CANARY}\""))
});
refused!(job_name_holding_a_secret, "jobs[0].name", |t, _| swap(
    &t,
    "name = \"sales-s3\"",
    &format!("name = \"{CANARY}!\"")
));
refused!(job_name_duplicated, "jobs[1].name", |t, _| swap(
    &t,
    "name = \"finance-sql\"",
    "name = \"sales-s3\""
));
refused!(
    job_unknown_key_holding_a_secret,
    "jobs[0].password",
    |t, _| add_to_job0(&t, &format!("password = \"{CANARY}\""))
);
refused!(
    job_version_stage_and_id_both,
    "jobs[0].version_id",
    |t, _| add_to_job0(&t, "version_stage = \"AWSCURRENT\"\nversion_id = \"v1\"")
);
refused!(
    job_file_encoding_holding_a_secret,
    "jobs[2].file_encoding",
    |t, _| swap(
        &t,
        "secret = \"qlik/bigquery\"",
        &format!("secret = \"qlik/bigquery\"\nfile_encoding = \"{CANARY}\"")
    )
);

// === Numbers and durations out of range ===

refused!(request_timeout_zero, "qlik.request_timeout", |t, _| add_to(
    &t,
    "[qlik]",
    "request_timeout = \"0s\""
));
refused!(
    request_timeout_u64_max_seconds,
    "qlik.request_timeout",
    |t, _| add_to(
        &t,
        "[qlik]",
        &format!("request_timeout = \"{}s\"", u64::MAX)
    )
);
refused!(max_attempts_zero, "qlik.max_attempts", |t, _| add_to(
    &t,
    "[qlik]",
    "max_attempts = 0"
));
refused!(
    max_attempts_holding_a_secret,
    "qlik.max_attempts",
    |t, _| add_to(&t, "[qlik]", &format!("max_attempts = \"{CANARY}\""))
);
refused!(
    write_budget_negative,
    "qlik.write_budget_per_min",
    |t, _| add_to(&t, "[qlik]", "write_budget_per_min = -1")
);
refused!(
    jitter_u64_max_seconds,
    "jobs[0].jitter",
    |t, _| add_to_job0(&t, &format!("jitter = \"{}\"", u64::MAX))
);
refused!(jitter_longer_than_an_hour, "jobs[0].jitter", |t, _| {
    add_to_job0(&t, "jitter = \"2h\"")
});
refused!(max_age_u64_max_seconds, "jobs[0].max_age", |t, _| {
    add_to_job0(&t, &format!("max_age = \"{}s\"", u64::MAX))
});
refused!(max_age_zero, "jobs[0].max_age", |t, _| add_to_job0(
    &t,
    "max_age = \"0s\""
));
refused!(
    max_concurrent_rotations_zero,
    "daemon.max_concurrent_rotations",
    |t, _| add_to(&t, "[daemon]", "max_concurrent_rotations = 0")
);
refused!(
    max_attempts_per_run_eleven,
    "daemon.max_attempts_per_run",
    |t, _| add_to(&t, "[daemon]", "max_attempts_per_run = 11")
);
refused!(
    shutdown_grace_period_zero,
    "daemon.shutdown_grace_period",
    |t, _| add_to(&t, "[daemon]", "shutdown_grace_period = \"0s\"")
);
refused!(
    shutdown_grace_period_overflowing,
    "daemon.shutdown_grace_period",
    |t, _| add_to(
        &t,
        "[daemon]",
        &format!("shutdown_grace_period = \"{}d\"", u64::MAX)
    )
);

// === [daemon] and [metrics] ===

refused!(state_dir_with_a_newline, "daemon.state_dir", |t, _| swap(
    &t,
    "state_dir = \"state\"",
    &format!("state_dir = \"state\\n{CANARY}\"")
));
refused!(listen_holding_a_secret, "metrics.listen", |t, _| swap(
    &t,
    "listen = \"127.0.0.1:0\"",
    &format!("listen = \"{CANARY}\"")
));
refused!(
    admin_token_file_with_a_newline,
    "metrics.admin_token_file",
    |t, _| add_to(
        &t,
        "[metrics]",
        &format!("admin_token_file = \"/run/\\n{CANARY}\"")
    )
);
refused!(admin_token_inline, "metrics.admin_token", |t, _| add_to(
    &t,
    "[metrics]",
    &format!("admin_token = \"{CANARY}\"")
));
refused!(
    per_job_histogram_not_a_boolean,
    "metrics.per_job_duration_histogram",
    |t, _| add_to(
        &t,
        "[metrics]",
        &format!("per_job_duration_histogram = \"{CANARY}\"")
    )
);
refused!(
    per_job_histogram_as_a_number,
    "metrics.per_job_duration_histogram",
    |t, _| add_to(&t, "[metrics]", "per_job_duration_histogram = 1")
);
refused!(
    per_job_unchanged_not_a_boolean,
    "metrics.per_job_unchanged",
    |t, _| add_to(
        &t,
        "[metrics]",
        &format!("per_job_unchanged = \"{CANARY}\"")
    )
);
refused!(
    per_job_unchanged_misspelt,
    "metrics.per_job_unchanged_total",
    |t, _| add_to(&t, "[metrics]", "per_job_unchanged_total = true")
);
refused!(
    per_job_rotated_not_a_boolean,
    "metrics.per_job_rotated",
    |t, _| add_to(&t, "[metrics]", &format!("per_job_rotated = \"{CANARY}\""))
);
refused!(
    per_job_rotated_misspelt,
    "metrics.per_job_rotation",
    |t, _| add_to(&t, "[metrics]", "per_job_rotation = true")
);
refused!(
    per_job_histogram_misspelt,
    "metrics.per_job_histogram",
    |t, _| add_to(&t, "[metrics]", "per_job_histogram = true")
);

// === Environment overrides get the same checks ===

refused!(
    override_tenant_url_with_credentials,
    "qlik.tenant_url",
    env = &[(
        "QLIK_ROTATOR__QLIK__TENANT_URL",
        "http://admin:CANARY-cfg-3b9e71@127.0.0.1:9"
    )],
    |t, _| t
);
refused!(
    override_request_timeout_zero,
    "qlik.request_timeout",
    env = &[("QLIK_ROTATOR__QLIK__REQUEST_TIMEOUT", "0s")],
    |t, _| t
);
refused!(
    override_api_key_env_holding_a_secret,
    "qlik.api_key_env",
    env = &[("QLIK_ROTATOR__QLIK__API_KEY_ENV", CANARY)],
    |t, _| t
);

// === Valid shape, but what it names is missing: check-config exits 64, rotate 64 or 78 ===

/// `check-config` checks that every variable and file the configuration names exists (without
/// reading a value out): it exits 64 naming `key`. `rotate --all` stops at the build phase:
/// 78 (credentials missing at run time) for the Qlik API key or OAuth secret, 64 for a
/// source's file; it names `key`, never an unconventional variable name or the file, and
/// contacts nothing.
async fn refused_at_build(key: &str, mutate: impl FnOnce(String) -> String) {
    let w = world().await;
    let path = write_config(w.dir.path(), &mutate(base(&w.sim)));
    let config = path.to_str().unwrap();
    // Before: check-config said OK (exit 0) while the variable or file did not exist.
    let out = run_cli(&["check-config", "-c", config], &base_env(&[])).await;
    assert_eq!(out.code, 64, "{out:?}");
    assert!(
        out.stderr.contains(&format!("  {key}: ")),
        "{key} not named: {out:?}"
    );
    assert!(out.stdout.is_empty(), "{out:?}");
    assert_no_canary(&out);
    let out = run_cli(&["rotate", "-c", config, "--all"], &base_env(&[])).await;
    let expected = if key.starts_with("qlik.") { 78 } else { 64 };
    assert_eq!(out.code, expected, "{out:?}");
    assert!(
        out.stderr.contains(&format!("error: {key}: ")),
        "{key} not named: {out:?}"
    );
    assert_no_canary(&out);
    assert!(w.sim.requests().is_empty());
}

#[tokio::test]
async fn api_key_env_naming_an_unset_variable() {
    refused_at_build("qlik.api_key_env", |t| {
        api_key_as(&t, &format!("api_key_env = \"{CANARY_NAME}\""))
    })
    .await;
}

#[tokio::test]
async fn api_key_file_that_does_not_exist() {
    refused_at_build("qlik.api_key_file", |t| {
        api_key_as(&t, &format!("api_key_file = \"/nonexistent/{CANARY}\""))
    })
    .await;
}

#[tokio::test]
async fn oauth_client_secret_env_naming_an_unset_variable() {
    refused_at_build("qlik.oauth.client_secret_env", |t| {
        api_key_as(
            &t,
            &format!("[qlik.oauth]\nclient_id = \"cid\"\nclient_secret_env = \"{CANARY_NAME}\""),
        )
    })
    .await;
}

// === [sources] of type "vault" and "aws_ssm" ===

/// `[sources.bao]` (type "vault") with `lines`, before `[daemon]`.
fn vault_source(t: &str, lines: &str) -> String {
    swap(
        t,
        "[daemon]",
        &format!("[sources.bao]\ntype = \"vault\"\n{lines}\n[daemon]"),
    )
}

const VAULT_OK: &str = "address = \"https://vault.internal:8200\"\nauth = \"approle\"\nrole_id = \"r\"\nsecret_id_file = \"sid\"";

refused!(vault_without_address, "sources.bao.address", |t, _| {
    vault_source(&t, "auth = \"token\"\ntoken_file = \"tok\"")
});
refused!(vault_without_auth, "sources.bao.auth", |t, _| {
    vault_source(&t, "address = \"https://vault.internal\"")
});
refused!(vault_unknown_auth_method, "sources.bao.auth", |t, _| {
    vault_source(
        &t,
        &format!("address = \"https://vault.internal\"\nauth = \"{CANARY}\""),
    )
});
refused!(
    vault_approle_without_role_id,
    "sources.bao.role_id",
    |t, _| {
        vault_source(
            &t,
            "address = \"https://vault.internal\"\nauth = \"approle\"\nsecret_id_file = \"sid\"",
        )
    }
);
refused!(vault_kubernetes_without_role, "sources.bao.role", |t, _| {
    vault_source(
        &t,
        "address = \"https://vault.internal\"\nauth = \"kubernetes\"",
    )
});
refused!(
    vault_token_file_given_with_approle,
    "sources.bao.token_file",
    |t, _| vault_source(&t, &format!("{VAULT_OK}\ntoken_file = \"tok\""))
);
refused!(
    vault_address_with_credentials,
    "sources.bao.address",
    |t, _| vault_source(
        &t,
        &VAULT_OK.replace(
            "https://vault.internal:8200",
            &format!("https://root:{CANARY}@vault.internal:8200")
        )
    )
);
refused!(
    vault_address_plain_http_to_a_remote_host,
    "sources.bao.address",
    |t, _| vault_source(
        &t,
        &VAULT_OK.replace("https://vault.internal:8200", "http://vault.internal:8200")
    )
);
refused!(
    vault_mount_escaping_with_dotdot,
    "sources.bao.mount",
    |t, _| { vault_source(&t, &format!("{VAULT_OK}\nmount = \"../sys\"")) }
);
refused!(
    vault_namespace_holding_a_secret,
    "sources.bao.namespace",
    |t, _| vault_source(&t, &format!("{VAULT_OK}\nnamespace = \"a b {CANARY}\""))
);
refused!(vault_timeout_zero, "sources.bao.timeout", |t, _| {
    vault_source(&t, &format!("{VAULT_OK}\ntimeout = \"0s\""))
});
refused!(ssm_region_holding_a_secret, "sources.ssm.region", |t, _| {
    swap(
        &t,
        "[daemon]",
        &format!("[sources.ssm]\ntype = \"aws_ssm\"\nregion = \"{CANARY}\"\n[daemon]"),
    )
});
refused!(
    ssm_endpoint_with_credentials,
    "sources.ssm.endpoint_url",
    |t, _| swap(
        &t,
        "[daemon]",
        &format!(
            "[sources.ssm]\ntype = \"aws_ssm\"\nendpoint_url = \"http://k:{CANARY}@127.0.0.1:5000\"\n[daemon]"
        ),
    )
);

#[tokio::test]
async fn vault_token_file_that_does_not_exist() {
    refused_at_build("sources.bao.token_file", |t| {
        vault_source(
            &t,
            &format!(
                "address = \"https://vault.internal\"\nauth = \"token\"\ntoken_file = \"/nonexistent/{CANARY}\""
            ),
        )
    })
    .await;
}

#[tokio::test]
async fn vault_secret_id_file_that_is_a_directory() {
    refused_at_build("sources.bao.secret_id_file", |t| {
        vault_source(&t, VAULT_OK.replace("\"sid\"", "\"vault\"").as_str())
    })
    .await;
}

#[tokio::test]
async fn vault_ca_file_that_is_not_a_certificate() {
    refused_at_build("sources.bao.ca_file", |t| {
        vault_source(
            &t,
            "address = \"https://vault.internal\"\nauth = \"kubernetes\"\nrole = \"r\"\n\
             jwt_file = \"vault/qlik/sales-s3.json\"\nca_file = \"config.toml\"",
        )
    })
    .await;
}
