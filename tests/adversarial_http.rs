//! Adversarial suite: hostile Qlik responses × every stage that talks to Qlik.
//!
//! Each case runs the real binary (`rotate`, `RUST_LOG=trace`) against the simulator with one
//! [`Hostile`] fault (redirects, endless, slow and huge bodies, non-JSON bodies, control
//! characters, echoed secrets) at one stage (resolve GET by id or name, api-specs, PATCH,
//! verify GET, OAuth token, data-credentials GET/PUT and their verify GET). Every case asserts:
//!
//! - the clear error: exit 1, exactly one stdout line `job: failed at STAGE [ERROR_TYPE]: …`
//!   holding the expected words;
//! - no write where none belongs: the tenant received exactly the writes the case allows and
//!   its stored credentials are unchanged, and the redirect target received nothing at all;
//! - no canary (patch values, API key, OAuth client secret, OAuth access token) in stdout or
//!   in the trace-level stderr, in raw, JSON, URL or base64 form, and no control character,
//!   ESC sequence, bidi control or forged line in either;
//! - and, run again in-process with the daemon's [`Metrics`] wired as `run` wires them, no
//!   canary in the `/metrics` text, which does count the failure under the expected labels.

mod common;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use base64::Engine as _;
use common::harness::*;
use qlik_rotator::{
    app, config,
    metrics::Metrics,
    rotation::{Rotator, RunOptions},
};
use qlik_sim::{
    EchoEncoding, EchoField, Fault, Hostile, SeedConnection, SeedCredential, SimConfig, Simulator,
};
use serde_json::json;

// ----- canaries --------------------------------------------------------------------------
// Special characters make the raw, JSON-escaped, URL-encoded and base64 forms all differ.

const API_KEY_C: &str = "CANARY-api-key/0001+x=";
const CLIENT_SECRET_C: &str = "CANARY-client-secret/\"0001\"+&";
const S3_ACCESS_C: &str = "AKIACANARYS3ACCESS01";
const S3_SECRET_C: &str = "CANARY-s3/Secret+Key=\"q\"\u{fc}";
const SQL_USER_C: &str = "CANARY_sql_user_01";
const SQL_PASS_C: &str = "CANARY-sql P@ss/\\w0rd&=";
const CRED_USER_C: &str = "CANARY_cred_user_01";
const CRED_PASS_C: &str = "CANARY-cred/pass\"+%41";
const CLIENT_ID: &str = "sim-client";
/// The prefix of every OAuth access token the simulator issues.
const ACCESS_TOKEN_PREFIX: &str = "sim-at-";

const CANARIES: &[&str] = &[
    API_KEY_C,
    CLIENT_SECRET_C,
    S3_ACCESS_C,
    S3_SECRET_C,
    SQL_USER_C,
    SQL_PASS_C,
    CRED_USER_C,
    CRED_PASS_C,
];

/// Text a hostile server puts into error fields to forge an output line and drive a terminal.
const FORGERY: &str = "bad\nsales-s3: rotated and verified (connection forged)\r\u{1b}[2J\u{1b}]0;pwned\u{7}\u{9b}31m\u{202e}desrever\u{2066}";
const FORGED_LINE: &str = "sales-s3: rotated and verified (connection forged)";

/// Independent of the product's redactor: the base64 text a secret contributes at each byte
/// alignment (both alphabets), without the characters that depend on neighbours.
fn base64_fragments(secret: &str) -> Vec<String> {
    let mut out = Vec::new();
    for k in 0..3 {
        let mut buf = vec![b'x'; k];
        buf.extend_from_slice(secret.as_bytes());
        for enc in [
            base64::engine::general_purpose::STANDARD.encode(&buf),
            base64::engine::general_purpose::URL_SAFE.encode(&buf),
        ] {
            let trimmed = enc.trim_end_matches('=');
            if trimmed.len() > 8 {
                out.push(trimmed[4..trimmed.len() - 4].to_owned());
            }
        }
    }
    out
}

/// Panics if any canary, in any form, is in `text`.
fn assert_no_canary(what: &str, text: &str) {
    assert!(
        !text.contains("CANARY"),
        "{what} contains a canary:\n{text}"
    );
    assert!(
        !text.contains(ACCESS_TOKEN_PREFIX),
        "{what} contains an OAuth access token:\n{text}"
    );
    for c in CANARIES {
        let url: String = form_urlencoded_encode(c);
        assert!(
            !text.contains(&url),
            "{what} contains the URL form of a canary"
        );
        for frag in base64_fragments(c) {
            assert!(
                !text.contains(&frag),
                "{what} contains the base64 form of a canary ({frag}):\n{text}"
            );
        }
    }
}

fn form_urlencoded_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                (b as char).to_string()
            }
            b' ' => "+".to_owned(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// Panics on a control character, ESC sequence, C1 or bidi control, or a forged line.
fn assert_unforgeable(what: &str, text: &str) {
    let bad = text.chars().find(|c| {
        (c.is_control() && *c != '\n')
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
    });
    assert!(bad.is_none(), "{what} contains {bad:?}:\n{text}");
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with(FORGED_LINE) || l.trim_start().starts_with("sales-s3: rotated")),
        "{what} has a forged line:\n{text}"
    );
}

// ----- the world -------------------------------------------------------------------------

struct World {
    sim: Simulator,
    /// Where redirects point: records anything a client following them would send.
    target: Simulator,
    dir: tempfile::TempDir,
    config: PathBuf,
    text: String,
    cred: String,
    oauth: bool,
}

const SEP_ID: &str = "44444444-4444-4444-8444-444444444444";

fn vault(dir: &Path, id: &str, body: &serde_json::Value) {
    let p = dir.join("vault").join(format!("{id}.json"));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, body.to_string()).unwrap();
}

async fn world(oauth: bool, extra_qlik: &str) -> World {
    let sim = tenant(SimConfig {
        api_keys: vec![API_KEY_C.to_owned()],
        oauth_clients: vec![(CLIENT_ID.to_owned(), CLIENT_SECRET_C.to_owned())],
        ..SimConfig::default()
    })
    .await;
    let target = Simulator::start(SimConfig::default()).await.unwrap();
    let cred = sim.add_credential(SeedCredential::new(
        "sep-cred", "mssql", "old_user", "old_pass",
    ));
    sim.add_connection(
        SeedConnection::new("sep", "mssql", json!({"host": "h", "database": "d"}))
            .with_id(SEP_ID)
            .separate(),
    );
    sim.link_credential(SEP_ID, &cred);
    let dir = tempfile::tempdir().unwrap();
    vault(
        dir.path(),
        "qlik/sales-s3",
        &json!({"accessKey": S3_ACCESS_C, "secretKey": S3_SECRET_C}),
    );
    vault(
        dir.path(),
        "qlik/finance-sql",
        &json!({"username": SQL_USER_C, "password": SQL_PASS_C}),
    );
    vault(
        dir.path(),
        "qlik/sep",
        &json!({"username": CRED_USER_C, "password": CRED_PASS_C}),
    );
    let auth = if oauth {
        format!(
            "[qlik.oauth]\nclient_id = \"{CLIENT_ID}\"\nclient_secret_env = \"QLIK_CLIENT_SECRET\"\n"
        )
    } else {
        "api_key_env = \"QLIK_API_KEY\"\n".to_owned()
    };
    let text = format!(
        r#"[qlik]
tenant_url = "{base}"
request_timeout = "1s"
max_attempts = 1
write_budget_per_min = 0
{extra_qlik}
{auth}
[sources.v]
type = "file"
path = "vault"
[daemon]
state_dir = "state"

[[jobs]]
name = "sales-s3"
connection = {{ id = "{S3_ID}" }}
connector = "File_AmazonS3ConnectorV2"
source = "v"
secret = "qlik/sales-s3"

[[jobs]]
name = "finance-sql"
connection = {{ name = "Finance SQL", space = "finance" }}
connector = "mssql"
source = "v"
secret = "qlik/finance-sql"

[[jobs]]
name = "sep"
connection = {{ id = "{SEP_ID}" }}
connector = "mssql"
source = "v"
secret = "qlik/sep"
separate_credentials = "data_credentials"
"#,
        base = sim.base_url()
    );
    let config = write_config(dir.path(), &text);
    World {
        sim,
        target,
        dir,
        config,
        text,
        cred,
        oauth,
    }
}

impl World {
    fn input(&self) -> HashMap<String, String> {
        let mut m = HashMap::new();
        if self.oauth {
            m.insert("QLIK_CLIENT_SECRET".to_owned(), CLIENT_SECRET_C.to_owned());
        } else {
            m.insert("QLIK_API_KEY".to_owned(), API_KEY_C.to_owned());
        }
        m
    }

    fn env(&self) -> Vec<(String, String)> {
        let mut e: Vec<_> = self.input().into_iter().collect();
        e.push(("RUST_LOG".into(), "trace".into()));
        // The logger's own colours are escape sequences too: without them, any ESC in stderr
        // could only have come from outside.
        e.push(("NO_COLOR".into(), "1".into()));
        e
    }

    /// A `Location` on the redirect target, with a path and a query that must never be
    /// printed.
    fn location(&self) -> String {
        format!(
            "{}/api/v1/data-connections/{S3_ID}?leak=QUERY-MUST-NOT-PRINT",
            self.target.base_url()
        )
    }

    /// PATCHes and PUTs the tenant received.
    fn writes(&self) -> usize {
        self.sim
            .requests()
            .iter()
            .filter(|r| r.method == "PATCH" || r.method == "PUT")
            .count()
    }

    /// The tenant's stored credentials hold none of the new values.
    fn assert_nothing_applied(&self) {
        let s3 = self.sim.stored(S3_ID).unwrap().to_string();
        let sql = self.sim.stored(SQL_ID).unwrap().to_string();
        let cred = self.sim.stored_credential(&self.cred).unwrap().to_string();
        for stored in [s3, sql, cred] {
            assert!(
                !stored.contains("CANARY"),
                "a credential was applied: {stored}"
            );
        }
    }
}

// ----- stages ----------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Stage {
    /// GET one connection by id (job sales-s3).
    Get,
    /// GET one connection by name (job finance-sql).
    GetByName,
    /// GET the connector's api-specs (job sales-s3).
    ApiSpecs,
    /// The PATCH (job sales-s3).
    Patch,
    /// The verify GET after the PATCH (job sales-s3).
    VerifyGet,
    /// POST /oauth/token (job sales-s3, OAuth auth).
    Token,
    /// GET /api/v1/data-credentials/{id} (job sep).
    CredGet,
    /// PUT /api/v1/data-credentials/{id} (job sep).
    CredPut,
    /// The data-credentials verify GET after the PUT (job sep).
    CredVerifyGet,
}

impl Stage {
    fn job(self) -> &'static str {
        match self {
            Stage::GetByName => "finance-sql",
            Stage::CredGet | Stage::CredPut | Stage::CredVerifyGet => "sep",
            _ => "sales-s3",
        }
    }

    fn oauth(self) -> bool {
        matches!(self, Stage::Token)
    }

    /// `(label, rotation stage)` printed for a failure here.
    fn outcome(self) -> (&'static str, &'static str) {
        match self {
            Stage::Patch | Stage::CredPut => ("failed", "apply"),
            Stage::VerifyGet | Stage::CredVerifyGet => ("verify_failed", "verify"),
            _ => ("failed", "resolve"),
        }
    }

    /// Writes the tenant may have received: the one under attack, when it is the write.
    fn writes(self) -> usize {
        match self {
            Stage::Patch | Stage::CredPut | Stage::VerifyGet | Stage::CredVerifyGet => 1,
            _ => 0,
        }
    }

    /// `(method, path prefix)` of the request under attack, and how many earlier requests
    /// with the same method and prefix must pass first.
    fn target(self, w: &World) -> (&'static str, String, u32) {
        match self {
            Stage::Get => ("GET", format!("/api/v1/data-connections/{S3_ID}"), 0),
            Stage::GetByName => ("GET", "/api/v1/data-connections/Finance".to_owned(), 0),
            Stage::ApiSpecs => ("GET", "/api/v1/data-sources/".to_owned(), 0),
            Stage::Patch => ("PATCH", format!("/api/v1/data-connections/{S3_ID}"), 0),
            Stage::VerifyGet => ("GET", format!("/api/v1/data-connections/{S3_ID}"), 1),
            Stage::Token => ("POST", "/oauth/token".to_owned(), 0),
            Stage::CredGet => ("GET", format!("/api/v1/data-credentials/{}", w.cred), 0),
            Stage::CredPut => ("PUT", format!("/api/v1/data-credentials/{}", w.cred), 0),
            Stage::CredVerifyGet => ("GET", format!("/api/v1/data-credentials/{}", w.cred), 1),
        }
    }

    fn inject(self, w: &World, response: Hostile) {
        let (method, prefix, skip) = self.target(w);
        if skip > 0 {
            // A zero delay consumes the earlier requests unchanged.
            w.sim.inject(Fault::Delay {
                method: Some(method.into()),
                path_prefix: Some(prefix.clone()),
                delay: Duration::ZERO,
                times: skip,
            });
        }
        w.sim.inject(Fault::Hostile {
            method: Some(method.into()),
            path_prefix: Some(prefix),
            response,
            times: 100,
        });
    }
}

// ----- one case --------------------------------------------------------------------------

struct Case {
    stage: Stage,
    /// The hostile answer, built for a world (redirects need its target).
    response: fn(&World) -> Hostile,
    /// The `error_type` printed.
    error_type: &'static str,
    /// Words the printed line must hold.
    says: &'static [&'static str],
    /// Extra `[qlik]` keys.
    qlik: &'static str,
}

async fn run_case(case: Case) {
    let (label, stage) = case.stage.outcome();
    let job = case.stage.job();

    // 1. The binary, trace logging on.
    let w = world(case.stage.oauth(), case.qlik).await;
    case.stage.inject(&w, (case.response)(&w));
    let started = Instant::now();
    let out = run_cli(
        &["rotate", "-c", w.config.to_str().unwrap(), "--job", job],
        &w.env(),
    )
    .await;
    let took = started.elapsed();
    // 1, or 78 for a refused credential (401, OAuth) and 69 for an unreachable tenant.
    let code = qlik_rotator::commands::failure_exit(&[case.error_type]);
    assert_eq!(out.code, i32::from(code), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one line per job: {:?}", out.stdout);
    let prefix = format!("{job}: {label} at {stage} [{}]: ", case.error_type);
    assert!(
        lines[0].starts_with(&prefix),
        "expected {prefix:?}…, got {:?}",
        lines[0]
    );
    for word in case.says {
        assert!(
            lines[0].contains(word),
            "{word:?} missing from {:?}",
            lines[0]
        );
    }
    assert!(!out.stdout.contains("QUERY-MUST-NOT-PRINT"));
    assert!(!out.stderr.contains("QUERY-MUST-NOT-PRINT"));
    assert_no_canary("stdout", &out.stdout);
    assert_no_canary("stderr (RUST_LOG=trace)", &out.stderr);
    assert_unforgeable("stdout", &out.stdout);
    assert_unforgeable("stderr (RUST_LOG=trace)", &out.stderr);
    assert_eq!(w.writes(), case.stage.writes(), "{:?}", w.sim.requests());
    assert!(
        w.target.requests().is_empty(),
        "the redirect target received {:?}",
        w.target.requests()
    );
    if case.stage.writes() == 0 || !matches!(case.stage, Stage::VerifyGet | Stage::CredVerifyGet) {
        w.assert_nothing_applied();
    }
    // Bounded: one request timeout (1 s) plus process start, never the drip's length.
    assert!(took < Duration::from_secs(8), "took {took:?}");

    // 2. In-process with the daemon's metrics: nothing secret in /metrics.
    let w = world(case.stage.oauth(), case.qlik).await;
    case.stage.inject(&w, (case.response)(&w));
    let input = w.input();
    let cfg = config::load_str(&w.text, w.dir.path(), &input).expect("valid config");
    let metrics = Arc::new(Metrics::new());
    metrics.register_jobs(&cfg.jobs);
    let client = Arc::new(
        app::qlik_client(&cfg, &input)
            .unwrap()
            .with_observer(Arc::new(qlik_rotator::events::Events::new(metrics.clone()))),
    );
    let rotator = Rotator::new(client, app::sources(&cfg).await).with_metrics(metrics.clone());
    let job_cfg = cfg.job(job).unwrap();
    let started = Instant::now();
    let reports = rotator.run(job_cfg, RunOptions::default()).await;
    // One attempt, bounded by the 1 s request timeout whatever the server does.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?}");
    rotator.finish_run(job_cfg, &reports);
    let text = metrics.render();
    assert_eq!(
        metric(
            &text,
            "qlik_rotator_errors_total",
            &[
                ("rotation_job", job),
                ("stage", stage),
                ("error_type", case.error_type)
            ]
        ),
        Some(1.0),
        "{text}"
    );
    assert_no_canary("/metrics", &text);
    assert_unforgeable("/metrics", &text);
    assert!(w.target.requests().is_empty());
    let line = reports[0].line();
    assert_no_canary("report line", &line);
    assert_unforgeable("report line", &line);
}

// ----- hostile answers -------------------------------------------------------------------

/// A redirect with `status` to `World::location` (the redirect target).
fn redirect(w: &World, status: u16) -> Hostile {
    Hostile::Redirect {
        status,
        location: w.location(),
    }
}
fn redirect_307(w: &World) -> Hostile {
    redirect(w, 307)
}
fn redirect_308(w: &World) -> Hostile {
    redirect(w, 308)
}
fn redirect_302(w: &World) -> Hostile {
    redirect(w, 302)
}
fn redirect_303(w: &World) -> Hostile {
    redirect(w, 303)
}
fn endless_200(_: &World) -> Hostile {
    Hostile::EndlessBody { status: 200 }
}
fn endless_500(_: &World) -> Hostile {
    Hostile::EndlessBody { status: 500 }
}
fn huge_200(_: &World) -> Hostile {
    Hostile::HugeBody {
        status: 200,
        bytes: 5 * 1024 * 1024,
    }
}
fn huge_400(_: &World) -> Hostile {
    Hostile::HugeBody {
        status: 400,
        bytes: 32 * 1024 * 1024,
    }
}
fn slow_200(_: &World) -> Hostile {
    Hostile::SlowBody {
        status: 200,
        interval: Duration::from_millis(20),
    }
}
fn slow_400(_: &World) -> Hostile {
    Hostile::SlowBody {
        status: 400,
        interval: Duration::from_millis(20),
    }
}
fn html_502(_: &World) -> Hostile {
    Hostile::Body {
        status: 502,
        content_type: "text/html".into(),
        body: format!("<html><body>Bad gateway {FORGERY} {API_KEY_C} {S3_SECRET_C}</body></html>"),
    }
}
fn control_chars_400(_: &World) -> Hostile {
    Hostile::Body {
        status: 400,
        content_type: "application/json".into(),
        body: json!({"errors": [{"code": format!("E\r{FORGERY}"), "title": FORGERY, "detail": FORGERY, "status": 400}], "traceId": FORGERY}).to_string(),
    }
}
fn control_chars_401(_: &World) -> Hostile {
    Hostile::Body {
        status: 401,
        content_type: "application/json".into(),
        body: json!({"errors": [{"code": "OAUTH-1", "title": FORGERY, "detail": FORGERY, "status": "401"}]}).to_string(),
    }
}
/// The canaries in play in raw, JSON-escaped, URL-encoded and base64 form, in every field:
/// a server that echoes values this request did not even carry (the verify GET after a
/// write).
fn all_forms(canaries: &[&str]) -> Hostile {
    let mut forms = Vec::new();
    for c in canaries {
        let json = serde_json::to_string(c).unwrap();
        forms.push((*c).to_owned());
        forms.push(json[1..json.len() - 1].to_owned());
        forms.push(form_urlencoded_encode(c));
        forms.push(base64::engine::general_purpose::STANDARD.encode(c));
    }
    let text = forms.join(" ");
    Hostile::Body {
        status: 400,
        content_type: "application/json".into(),
        body: json!({"errors": [{"code": text, "title": text, "detail": text}], "traceId": text})
            .to_string(),
    }
}
/// What the sales-s3 job has in play: its two values and the API key.
fn all_forms_s3(_: &World) -> Hostile {
    all_forms(&[S3_ACCESS_C, S3_SECRET_C, API_KEY_C])
}
/// What the sep job has in play.
fn all_forms_cred(_: &World) -> Hostile {
    all_forms(&[CRED_USER_C, CRED_PASS_C, API_KEY_C])
}

/// A token that never expires (u64::MAX seconds): must not overflow the refresh deadline.
fn token_forever(_: &World) -> Hostile {
    Hostile::Body {
        status: 200,
        content_type: "application/json".into(),
        body: r#"{"access_token":"unknown-token-0001","token_type":"bearer","expires_in":18446744073709551615}"#.into(),
    }
}
/// A token that cannot be sent as a header (a newline would split the request).
fn token_with_newline(_: &World) -> Hostile {
    Hostile::Body {
        status: 200,
        content_type: "application/json".into(),
        body: json!({"access_token": "abc\r\nX-Injected: 1", "expires_in": 3600}).to_string(),
    }
}
/// A token of a megabyte.
fn token_huge(_: &World) -> Hostile {
    Hostile::Body {
        status: 200,
        content_type: "application/json".into(),
        body: json!({"access_token": "a".repeat(1 << 20), "expires_in": 3600}).to_string(),
    }
}
/// `access_token` of the wrong JSON type.
fn token_not_a_string(_: &World) -> Hostile {
    Hostile::Body {
        status: 200,
        content_type: "application/json".into(),
        body: r#"{"access_token":12345678901234567890,"expires_in":3600}"#.into(),
    }
}

macro_rules! echo {
    ($name:ident, $status:expr, $field:ident, $enc:ident) => {
        fn $name(_: &World) -> Hostile {
            Hostile::EchoSecrets {
                status: $status,
                field: EchoField::$field,
                encoding: EchoEncoding::$enc,
            }
        }
    };
}
echo!(echo_400_code_raw, 400, Code, Raw);
echo!(echo_400_title_json, 400, Title, Json);
echo!(echo_400_detail_url, 400, Detail, Url);
echo!(echo_400_detail_b64, 400, Detail, Base64);
echo!(echo_400_code_blob, 400, Code, Base64Blob);
echo!(echo_400_trace_raw, 400, TraceId, Raw);
echo!(echo_400_detail_raw, 400, Detail, Raw);
echo!(echo_400_title_b64, 400, Title, Base64);
echo!(echo_400_code_url, 400, Code, Url);
echo!(echo_400_detail_json, 400, Detail, Json);
echo!(echo_400_detail_blob, 400, Detail, Base64Blob);
echo!(echo_401_detail_raw, 401, Detail, Raw);
echo!(echo_401_title_json, 401, Title, Json);
echo!(echo_401_code_url, 401, Code, Url);
echo!(echo_401_detail_blob, 401, Detail, Base64Blob);
echo!(echo_401_trace_b64, 401, TraceId, Base64);
echo!(echo_403_detail_raw, 403, Detail, Raw);

const REDIRECT: &[&str] = &["redirects are not followed", "to http://127.0.0.1:"];
const TOO_LARGE: &[&str] = &["larger than 4194304 bytes", "qlik.max_response_bytes"];
const ERR_TOO_LARGE: &[&str] = &["error body is larger than 64 KiB"];
const NOT_JSON: &[&str] = &["not JSON", "not shown"];
const REDACTED: &[&str] = &["[REDACTED]"];

macro_rules! case {
    ($name:ident, $stage:ident, $resp:ident, $etype:expr, $says:expr) => {
        case!($name, $stage, $resp, $etype, $says, "");
    };
    ($name:ident, $stage:ident, $resp:ident, $etype:expr, $says:expr, $qlik:expr) => {
        #[tokio::test]
        async fn $name() {
            run_case(Case {
                stage: Stage::$stage,
                response: $resp,
                error_type: $etype,
                says: $says,
                qlik: $qlik,
            })
            .await;
        }
    };
}

// GET one connection by id (resolve).
case!(
    get_307_is_not_followed,
    Get,
    redirect_307,
    "redirect",
    REDIRECT
);
case!(
    get_308_cross_host_is_not_followed,
    Get,
    redirect_308,
    "redirect",
    REDIRECT
);
case!(
    get_302_is_not_followed,
    Get,
    redirect_302,
    "redirect",
    REDIRECT
);
case!(
    get_endless_body_is_capped,
    Get,
    endless_200,
    "response_too_large",
    TOO_LARGE
);
case!(
    get_announced_huge_body_is_refused,
    Get,
    huge_200,
    "response_too_large",
    TOO_LARGE
);
case!(
    get_dripping_body_is_cut_by_the_request_timeout,
    Get,
    slow_200,
    "timeout",
    &["timed out"]
);
case!(
    get_control_characters_cannot_forge_a_line,
    Get,
    control_chars_400,
    "bad_request",
    &["\\n", "\\u{1b}"]
);
case!(
    get_non_json_error_body_is_not_printed,
    Get,
    html_502,
    "server_error",
    NOT_JSON
);
case!(
    get_huge_error_body_is_not_read,
    Get,
    huge_400,
    "bad_request",
    ERR_TOO_LARGE
);
case!(
    get_endless_error_body_is_not_read,
    Get,
    endless_500,
    "server_error",
    ERR_TOO_LARGE
);
case!(
    get_echoed_api_key_in_detail_is_redacted,
    Get,
    echo_401_detail_raw,
    "unauthorized",
    REDACTED
);
case!(
    get_echoed_api_key_base64_blob_in_code_is_redacted,
    Get,
    echo_400_code_blob,
    "bad_request",
    REDACTED
);
case!(
    get_echoed_api_key_url_encoded_in_code_is_redacted,
    Get,
    echo_401_code_url,
    "unauthorized",
    REDACTED
);
case!(
    get_echoed_api_key_in_trace_id_is_redacted,
    Get,
    echo_401_trace_b64,
    "unauthorized",
    REDACTED
);
case!(
    get_small_configured_cap_applies,
    Get,
    huge_200,
    "response_too_large",
    &["larger than 65536 bytes"],
    "max_response_bytes = 65536"
);

// GET by name (resolve).
case!(
    get_by_name_307_is_not_followed,
    GetByName,
    redirect_307,
    "redirect",
    REDIRECT
);
case!(
    get_by_name_echoed_api_key_is_redacted,
    GetByName,
    echo_403_detail_raw,
    "forbidden",
    REDACTED
);
case!(
    get_by_name_endless_body_is_capped,
    GetByName,
    endless_200,
    "response_too_large",
    TOO_LARGE
);

// api-specs (resolve).
case!(
    api_specs_308_is_not_followed,
    ApiSpecs,
    redirect_308,
    "redirect",
    REDIRECT
);
case!(
    api_specs_endless_body_is_capped,
    ApiSpecs,
    endless_200,
    "response_too_large",
    TOO_LARGE
);
case!(
    api_specs_control_characters_are_escaped,
    ApiSpecs,
    control_chars_400,
    "bad_request",
    &["\\n"]
);
case!(
    api_specs_echoed_api_key_is_redacted,
    ApiSpecs,
    echo_400_title_json,
    "bad_request",
    REDACTED
);

// PATCH (apply): the credential body must never reach the redirect target.
case!(
    patch_307_does_not_resend_the_credentials,
    Patch,
    redirect_307,
    "redirect",
    REDIRECT
);
case!(
    patch_308_does_not_resend_the_credentials,
    Patch,
    redirect_308,
    "redirect",
    REDIRECT
);
case!(
    patch_302_is_not_followed,
    Patch,
    redirect_302,
    "redirect",
    REDIRECT
);
case!(
    patch_303_is_not_followed,
    Patch,
    redirect_303,
    "redirect",
    REDIRECT
);
case!(
    patch_endless_error_body_is_not_read,
    Patch,
    endless_500,
    "server_error",
    ERR_TOO_LARGE
);
case!(
    patch_huge_error_body_is_not_read,
    Patch,
    huge_400,
    "bad_request",
    ERR_TOO_LARGE
);
case!(
    patch_dripping_error_body_is_bounded,
    Patch,
    slow_400,
    "bad_request",
    &["no error details"]
);
case!(
    patch_control_characters_cannot_forge_a_line,
    Patch,
    control_chars_400,
    "bad_request",
    &["\\n", "\\u{202e}"]
);
case!(
    patch_non_json_error_body_is_not_printed,
    Patch,
    html_502,
    "server_error",
    NOT_JSON
);
case!(
    patch_echo_raw_in_code_is_redacted,
    Patch,
    echo_400_code_raw,
    "bad_request",
    REDACTED
);
case!(
    patch_echo_json_in_title_is_redacted,
    Patch,
    echo_400_title_json,
    "bad_request",
    REDACTED
);
case!(
    patch_echo_url_in_detail_is_redacted,
    Patch,
    echo_400_detail_url,
    "bad_request",
    REDACTED
);
case!(
    patch_echo_base64_in_detail_is_redacted,
    Patch,
    echo_400_detail_b64,
    "bad_request",
    REDACTED
);
case!(
    patch_echo_base64_blob_in_code_is_redacted,
    Patch,
    echo_400_code_blob,
    "bad_request",
    REDACTED
);
case!(
    patch_echo_raw_in_trace_id_is_redacted,
    Patch,
    echo_400_trace_raw,
    "bad_request",
    REDACTED
);
case!(
    patch_echo_raw_in_detail_is_redacted,
    Patch,
    echo_400_detail_raw,
    "bad_request",
    REDACTED
);
case!(
    patch_echo_base64_in_title_is_redacted,
    Patch,
    echo_400_title_b64,
    "bad_request",
    REDACTED
);
case!(
    patch_echo_url_in_code_is_redacted,
    Patch,
    echo_400_code_url,
    "bad_request",
    REDACTED
);
case!(
    patch_echo_json_in_detail_is_redacted,
    Patch,
    echo_400_detail_json,
    "bad_request",
    REDACTED
);
case!(
    patch_echo_base64_blob_in_detail_is_redacted,
    Patch,
    echo_400_detail_blob,
    "bad_request",
    REDACTED
);
case!(
    patch_every_form_of_every_secret_in_play_is_redacted,
    Patch,
    all_forms_s3,
    "bad_request",
    REDACTED
);

// Verify GET after the PATCH.
case!(
    verify_get_307_is_not_followed,
    VerifyGet,
    redirect_307,
    "redirect",
    REDIRECT
);
case!(
    verify_get_endless_body_is_capped,
    VerifyGet,
    endless_200,
    "response_too_large",
    TOO_LARGE
);
case!(
    verify_get_dripping_body_is_bounded,
    VerifyGet,
    slow_200,
    "timeout",
    &["timed out"]
);
case!(
    verify_get_echo_of_the_written_values_is_redacted,
    VerifyGet,
    all_forms_s3,
    "bad_request",
    REDACTED
);
case!(
    verify_get_control_characters_cannot_forge_a_line,
    VerifyGet,
    control_chars_400,
    "bad_request",
    &["\\n"]
);
case!(
    verify_get_echoed_api_key_is_redacted,
    VerifyGet,
    echo_401_detail_blob,
    "unauthorized",
    REDACTED
);

// OAuth token request (resolve: the first call needs a token).
case!(
    token_307_does_not_resend_the_client_secret,
    Token,
    redirect_307,
    "redirect",
    REDIRECT
);
case!(
    token_308_is_not_followed,
    Token,
    redirect_308,
    "redirect",
    REDIRECT
);
case!(
    token_echoed_client_secret_raw_is_redacted,
    Token,
    echo_401_detail_raw,
    "auth",
    REDACTED
);
case!(
    token_echoed_client_secret_json_is_redacted,
    Token,
    echo_401_title_json,
    "auth",
    REDACTED
);
case!(
    token_echoed_client_secret_url_is_redacted,
    Token,
    echo_401_code_url,
    "auth",
    REDACTED
);
case!(
    token_echoed_request_base64_blob_is_redacted,
    Token,
    echo_401_detail_blob,
    "auth",
    REDACTED
);
case!(
    token_echoed_client_secret_base64_in_trace_id_is_redacted,
    Token,
    echo_401_trace_b64,
    "auth",
    REDACTED
);
case!(
    token_huge_response_is_refused,
    Token,
    huge_200,
    "response_too_large",
    TOO_LARGE
);
case!(
    token_endless_response_is_capped,
    Token,
    endless_200,
    "response_too_large",
    TOO_LARGE
);
case!(
    token_non_json_error_body_is_not_printed,
    Token,
    html_502,
    "auth",
    NOT_JSON
);
case!(
    token_lifetime_of_u64_max_does_not_overflow,
    Token,
    token_forever,
    "unauthorized",
    &["HTTP 401"]
);
case!(
    token_with_a_newline_is_refused,
    Token,
    token_with_newline,
    "auth",
    &["not a usable bearer token"]
);
case!(
    token_of_a_megabyte_is_refused,
    Token,
    token_huge,
    "auth",
    &["not a usable bearer token"]
);
case!(
    token_of_the_wrong_type_is_refused,
    Token,
    token_not_a_string,
    "auth",
    &["not the documented JSON"]
);
case!(
    token_control_characters_cannot_forge_a_line,
    Token,
    control_chars_401,
    "auth",
    &["\\n"]
);

// Data credentials: GET, PUT, verify GET.
case!(
    cred_get_307_is_not_followed,
    CredGet,
    redirect_307,
    "redirect",
    REDIRECT
);
case!(
    cred_get_echoed_api_key_is_redacted,
    CredGet,
    echo_403_detail_raw,
    "forbidden",
    REDACTED
);
case!(
    cred_get_endless_body_is_capped,
    CredGet,
    endless_200,
    "response_too_large",
    TOO_LARGE
);
case!(
    cred_put_307_does_not_resend_the_credentials,
    CredPut,
    redirect_307,
    "redirect",
    REDIRECT
);
case!(
    cred_put_308_does_not_resend_the_credentials,
    CredPut,
    redirect_308,
    "redirect",
    REDIRECT
);
case!(
    cred_put_echo_raw_is_redacted,
    CredPut,
    echo_400_detail_raw,
    "bad_request",
    REDACTED
);
case!(
    cred_put_echo_json_is_redacted,
    CredPut,
    echo_400_detail_json,
    "bad_request",
    REDACTED
);
case!(
    cred_put_echo_base64_blob_is_redacted,
    CredPut,
    echo_400_detail_blob,
    "bad_request",
    REDACTED
);
case!(
    cred_put_control_characters_cannot_forge_a_line,
    CredPut,
    control_chars_400,
    "bad_request",
    &["\\n"]
);
case!(
    cred_verify_get_echo_of_the_written_values_is_redacted,
    CredVerifyGet,
    all_forms_cred,
    "bad_request",
    REDACTED
);
case!(
    cred_verify_get_308_is_not_followed,
    CredVerifyGet,
    redirect_308,
    "redirect",
    REDIRECT
);

// ----- beyond the rotation stages --------------------------------------------------------

/// The AWS SDK's HTTP client (aws-smithy-http-client over hyper) follows no redirect either:
/// a 307 from the Secrets Manager endpoint is an error, and the redirect target receives
/// nothing. Checked here, not assumed.
#[tokio::test]
async fn aws_sdk_does_not_follow_a_redirect_from_secrets_manager() {
    let w = world(false, "").await;
    let aws = Simulator::start(SimConfig::default()).await.unwrap();
    aws.inject(Fault::Hostile {
        method: Some("POST".into()),
        path_prefix: Some("/".into()),
        response: Hostile::Redirect {
            status: 307,
            location: w.location(),
        },
        times: 100,
    });
    let text = w.text.replace(
        "[sources.v]\ntype = \"file\"\npath = \"vault\"",
        &format!(
            "[sources.v]\ntype = \"aws_secrets_manager\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"",
            aws.base_url()
        ),
    );
    let config = write_config(w.dir.path(), &text);
    let mut env = w.env();
    env.extend(common::harness::env(&[
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]));
    let out = run_cli(
        &[
            "rotate",
            "-c",
            config.to_str().unwrap(),
            "--job",
            "sales-s3",
        ],
        &env,
    )
    .await;
    // secret_source_unavailable only: a dependency unavailable (69).
    assert_eq!(out.code, 69, "{out:?}");
    println!("{}", out.stdout);
    assert!(
        out.stdout.starts_with("sales-s3: failed at fetch ["),
        "{}",
        out.stdout
    );
    assert!(!aws.requests().is_empty(), "the SDK did reach the endpoint");
    assert!(
        aws.requests().iter().all(|r| r.status == 307),
        "{:?}",
        aws.requests()
    );
    assert!(
        w.target.requests().is_empty(),
        "the SDK followed the redirect: {:?}",
        w.target.requests()
    );
    assert!(w.sim.requests().is_empty(), "nothing reached Qlik");
    assert_no_canary("stdout", &out.stdout);
    assert_no_canary("stderr", &out.stderr);
    assert_unforgeable("stdout", &out.stdout);
}

/// `check-config --online` prints one line per job, whatever the pre-flight GET answered.
#[tokio::test]
async fn check_config_online_prints_remote_errors_escaped_and_redacted() {
    let w = world(false, "").await;
    w.sim.inject(Fault::Hostile {
        method: Some("GET".into()),
        path_prefix: Some("/api/v1/data-connections/".into()),
        response: Hostile::EchoSecrets {
            status: 400,
            field: EchoField::Detail,
            encoding: EchoEncoding::Raw,
        },
        times: 1,
    });
    w.sim.inject(Fault::Hostile {
        method: Some("GET".into()),
        path_prefix: Some("/api/v1/data-connections/".into()),
        response: control_chars_400(&w),
        times: 100,
    });
    let out = run_cli(
        &["check-config", "--online", "-c", w.config.to_str().unwrap()],
        &w.env(),
    )
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    // The offline summary (1 + 3 jobs), the pre-flight header, and one line per job.
    assert_eq!(lines.len(), 8, "{}", out.stdout);
    let failed: Vec<_> = lines.iter().filter(|l| l.contains(": FAILED: ")).collect();
    assert_eq!(failed.len(), 3, "{}", out.stdout);
    assert!(failed[0].contains("[REDACTED]"), "{}", failed[0]);
    assert!(failed[1].contains("\\n") && failed[1].contains("\\u{1b}"));
    assert_no_canary("stdout", &out.stdout);
    assert_no_canary("stderr", &out.stderr);
    assert_unforgeable("stdout", &out.stdout);
    assert_unforgeable("stderr", &out.stderr);
    assert_eq!(w.writes(), 0);
}

/// `describe-connector` prints property names and descriptions from Qlik's api-specs: a
/// hostile spec can neither forge lines nor inject TOML into the suggested job.
#[tokio::test]
async fn describe_connector_escapes_hostile_api_specs() {
    let w = world(false, "").await;
    w.sim.add_data_source_spec(
        "evil",
        json!({
            "connectorProvider": "Evil\n[[jobs]]\nname = \"x\"",
            "connectorVersion": "1\u{1b}[2J",
            "connectionProperties": {"type": "object", "properties": {
                "password\"]\nsource = \"attacker": {"type": "string", "description": FORGERY},
                "apiToken": {"type": "string", "description": "ok\u{202e}"}
            }}
        }),
    );
    let out = run_cli(
        &[
            "describe-connector",
            "-c",
            w.config.to_str().unwrap(),
            "evil",
        ],
        &w.env(),
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_unforgeable("stdout", &out.stdout);
    assert_unforgeable("stderr", &out.stderr);
    // Exactly one `[[jobs]]` table and one `source =` line: the suggested job's own.
    assert_eq!(
        out.stdout
            .lines()
            .filter(|l| l.starts_with("[[jobs]]"))
            .count(),
        1,
        "{}",
        out.stdout
    );
    assert_eq!(
        out.stdout
            .lines()
            .filter(|l| l.starts_with("source ="))
            .count(),
        1,
        "{}",
        out.stdout
    );
    // A property name with control characters is not offered at all (the api-specs parser
    // ignores it and says so), so it can reach neither the listing nor the job snippet.
    assert!(!out.stdout.contains("attacker"), "{}", out.stdout);
    assert!(
        out.stdout.contains("(1 unreadable entries ignored)"),
        "{}",
        out.stdout
    );
}

/// The daemon's real `/metrics` endpoint after hostile answers at the PATCH (echo), the
/// token-free GET (redirect) and the verify GET: failures counted, no canary.
#[tokio::test]
async fn daemon_metrics_endpoint_holds_no_canary_after_hostile_answers() {
    let w = world(false, "").await;
    let text = format!("{}\n[metrics]\nlisten = \"127.0.0.1:0\"\n", w.text);
    let cfg = config::load_str(&text, w.dir.path(), &w.input()).expect("valid config");
    let running = qlik_rotator::daemon::start(&cfg, &w.input())
        .await
        .expect("daemon starts");
    running.daemon.preflight_finished().await;
    // After pre-flight: every PATCH echoes its values, the data-credentials GET redirects.
    w.sim.inject(Fault::Hostile {
        method: Some("PATCH".into()),
        path_prefix: None,
        response: Hostile::EchoSecrets {
            status: 400,
            field: EchoField::Code,
            encoding: EchoEncoding::Base64Blob,
        },
        times: 100,
    });
    w.sim.inject(Fault::Hostile {
        method: Some("GET".into()),
        path_prefix: Some("/api/v1/data-credentials/".into()),
        response: redirect_307(&w),
        times: 100,
    });
    for job in ["sales-s3", "finance-sql", "sep"] {
        running.daemon.trigger(job, true);
    }
    let start = Instant::now();
    let scrape = loop {
        let body = http_get(running.addr, "/metrics").await.1;
        let done = ["sales-s3", "finance-sql", "sep"].iter().all(|job| {
            metric(
                &body,
                "qlik_rotator_rotations_total",
                &[("rotation_job", job), ("outcome", "failed")],
            )
            .unwrap_or(0.0)
                >= 1.0
        });
        if done {
            break body;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        metric(
            &scrape,
            "qlik_rotator_errors_total",
            &[
                ("rotation_job", "sep"),
                ("stage", "resolve"),
                ("error_type", "redirect")
            ]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{scrape}"
    );
    assert!(
        metric(
            &scrape,
            "qlik_rotator_errors_total",
            &[
                ("rotation_job", "sales-s3"),
                ("stage", "apply"),
                ("error_type", "bad_request")
            ]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{scrape}"
    );
    assert_no_canary("/metrics", &scrape);
    assert_unforgeable("/metrics", &scrape);
    assert!(w.target.requests().is_empty());
    w.assert_nothing_applied();
    running.shutdown().await;
}

/// `plan` prints the connection id and a PUT path that come from Qlik's GET: a forged id
/// cannot forge a line. (Whether such an id is accepted at all is the id check's business;
/// this only asserts what is printed.)
#[tokio::test]
async fn plan_output_escapes_ids_from_qlik() {
    let w = world(false, "").await;
    let forged = format!("{S3_ID}\n{FORGED_LINE}\u{1b}[2J\u{202e}");
    w.sim.inject(Fault::Hostile {
        method: Some("GET".into()),
        path_prefix: Some(format!("/api/v1/data-connections/{S3_ID}")),
        response: Hostile::Body {
            status: 200,
            content_type: "application/json".into(),
            body: json!({
                "qID": forged, "qName": "Sales S3", "datasourceID": "File_AmazonS3ConnectorV2",
                "qType": "QvWebStorageProviderConnectorPackage.exe", "space": "sales",
                "updated": FORGERY, "privileges": ["read", "update"],
                "connectionProperties": {"region": "eu-west-1", "bucketName": "sales", "accessKey": "AKIAOLD"}
            })
            .to_string(),
        },
        times: 100,
    });
    for cmd in ["plan", "rotate"] {
        let out = run_cli(
            &[cmd, "-c", w.config.to_str().unwrap(), "--job", "sales-s3"],
            &w.env(),
        )
        .await;
        assert!(!out.stdout.is_empty(), "{cmd}: {out:?}");
        assert_unforgeable(cmd, &out.stdout);
        assert_unforgeable(cmd, &out.stderr);
        assert_no_canary(cmd, &out.stdout);
        assert_no_canary(cmd, &out.stderr);
    }
    assert!(w.target.requests().is_empty());
}

// ----- the read budget (Tier 1) ----------------------------------------------------------
// A simulator enforcing Tier 1 on a scaled window (5 GETs per 500 ms, i.e. 600 per minute),
// `n` SQL Server jobs by id, each with its own canary password. Every case asserts the clear
// outcome, the writes that belong (none for a job that failed before its PATCH), and no canary
// in any output.

/// A SQL Server password canary per job.
fn read_canary(i: usize) -> String {
    format!("{SQL_PASS_C}-{i:03}")
}

struct ReadWorld {
    sim: Simulator,
    dir: tempfile::TempDir,
    config: PathBuf,
    text: String,
    ids: Vec<String>,
}

impl ReadWorld {
    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("QLIK_API_KEY".into(), API_KEY_C.into()),
            ("RUST_LOG".into(), "debug".into()),
            ("NO_COLOR".into(), "1".into()),
        ]
    }

    fn input(&self) -> HashMap<String, String> {
        HashMap::from([("QLIK_API_KEY".to_owned(), API_KEY_C.to_owned())])
    }

    /// No output holds a canary: neither the API key nor any job's password.
    fn assert_clean(&self, what: &str, text: &str) {
        assert_no_canary(what, text);
        for i in 0..self.ids.len() {
            assert!(!text.contains(&read_canary(i)), "{what} holds a canary");
        }
    }

    /// The PATCHes connection `i` received.
    fn patches_of(&self, i: usize) -> usize {
        let path = format!("/api/v1/data-connections/{}", self.ids[i]);
        (self.sim.requests().iter())
            .filter(|r| r.method == "PATCH" && r.path == path)
            .count()
    }

    fn gets(&self) -> Vec<qlik_sim::RecordedRequest> {
        with_method(&self.sim, "GET")
    }
}

/// `n` jobs `r000…` against a simulator with `read_limit` GETs per 500 ms; `qlik` is added to
/// the `[qlik]` table (the read budget, attempts).
async fn read_world(n: usize, read_limit: Option<u32>, qlik: &str) -> ReadWorld {
    let sim = Simulator::start(SimConfig {
        api_keys: vec![API_KEY_C.to_owned()],
        read_limit_per_min: read_limit,
        rate_window: Duration::from_millis(500),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut jobs = String::new();
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("{:08x}-0000-4000-8000-{:012x}", 0x5eed_0000 + i, i);
        sim.add_connection(
            SeedConnection::new(
                format!("Read {i}"),
                "mssql",
                json!({"host": "sql.internal", "database": "d", "username": "old", "password": "old"}),
            )
            .with_id(&id),
        );
        vault(
            dir.path(),
            &format!("qlik/r{i:03}"),
            &json!({"username": SQL_USER_C, "password": read_canary(i)}),
        );
        jobs.push_str(&format!(
            "\n[[jobs]]\nname = \"r{i:03}\"\nconnection = {{ id = \"{id}\" }}\nconnector = \"mssql\"\nsource = \"v\"\nsecret = \"qlik/r{i:03}\"\n"
        ));
        ids.push(id);
    }
    let text = format!(
        "[qlik]\ntenant_url = \"{}\"\napi_key_env = \"QLIK_API_KEY\"\nrequest_timeout = \"5s\"\nwrite_budget_per_min = 0\n{qlik}\n\n[sources.v]\ntype = \"file\"\npath = \"vault\"\n[daemon]\nstate_dir = \"state\"\n{jobs}",
        sim.base_url()
    );
    let config = write_config(dir.path(), &text);
    ReadWorld {
        sim,
        dir,
        config,
        text,
        ids,
    }
}

/// Reads over the budget wait instead of drawing 429s: 8 rotations (a GET, api-specs and a
/// verify GET each) against Tier 1 enforced at 5 GETs per 500 ms (600 a minute), with
/// `read_budget_per_min = 300`: every job rotates, the simulator rejected nothing, and no
/// 500 ms window held more than 5 GETs. (The budget is half the scaled limit: the gate's
/// 2% margin is 1.2 s of a real minute but 10 ms of this window, less than loopback jitter on
/// a busy machine.)
#[tokio::test]
async fn reads_over_the_budget_wait_instead_of_429ing() {
    let w = read_world(8, Some(5), "read_budget_per_min = 300\nmax_attempts = 1").await;
    let out = run_cli(
        &["rotate", "-c", w.config.to_str().unwrap(), "--all"],
        &w.env(),
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    for i in 0..8 {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.starts_with(&format!("r{i:03}: rotated and verified"))),
            "{}",
            out.stdout
        );
        assert_eq!(w.patches_of(i), 1);
        assert_eq!(
            stored_prop(&w.sim, &w.ids[i], "password"),
            json!(read_canary(i))
        );
    }
    assert_eq!(w.sim.rejected(qlik_sim::limiter::Tier::Reads), 0);
    assert!(w.gets().iter().all(|r| r.status != 429));
    assert!(w.sim.reads_total() >= 16, "{}", w.sim.reads_total());
    assert!(w.sim.reads_in_window_max() <= 5);
    w.assert_clean("stdout", &out.stdout);
    w.assert_clean("stderr", &out.stderr);
}

/// The control for the case above (so it could fail): the same run without a read budget
/// draws 429s from the same simulator; the jobs whose GET was refused fail at resolve, clearly
/// and without a PATCH.
#[tokio::test]
async fn without_a_read_budget_the_same_reads_draw_429s() {
    let w = read_world(8, Some(5), "read_budget_per_min = 0\nmax_attempts = 1").await;
    let out = run_cli(
        &["rotate", "-c", w.config.to_str().unwrap(), "--all"],
        &w.env(),
    )
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(w.sim.rejected(qlik_sim::limiter::Tier::Reads) > 0);
    let mut refused = 0;
    for i in 0..8 {
        let prefix = format!("r{i:03}: failed at resolve [rate_limited]: ");
        if let Some(line) = out.stdout.lines().find(|l| l.starts_with(&prefix)) {
            refused += 1;
            assert!(line.contains("429"), "{line}");
            assert_eq!(w.patches_of(i), 0, "{line}");
        }
    }
    assert!(refused > 0, "{}", out.stdout);
    w.assert_clean("stdout", &out.stdout);
    w.assert_clean("stderr", &out.stderr);
}

/// A 429 on one read pauses every reader for its `Retry-After` (1 s), and not the writers:
/// five concurrent GETs, the first answered 429; no GET reaches the tenant within the second
/// after it, a PATCH sent meanwhile does, and every GET then succeeds.
#[tokio::test]
async fn a_429_on_a_read_pauses_every_reader_for_retry_after() {
    use qlik_rotator::qlik::{ClientSettings, Credentials, QlikClient, RetryPolicy};
    let w = read_world(5, None, "").await;
    let client = Arc::new(
        QlikClient::new(ClientSettings {
            tenant_url: w.sim.base_url().parse().unwrap(),
            credentials: Credentials::ApiKey(API_KEY_C.to_owned().into()),
            request_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            write_budget_per_min: 0,
            read_budget_per_min: 0,
            max_response_bytes: 4 * 1024 * 1024,
        })
        .unwrap(),
    );
    w.sim.inject(Fault::RateLimited {
        method: Some("GET".into()),
        path_prefix: None,
        retry_after_secs: 1,
        times: 1,
    });
    let first = client.get_connection(&w.ids[0]);
    let others = w.ids[1..].iter().map(|id| {
        let c = client.clone();
        let id = id.clone();
        async move {
            // Sent just after the first one was refused.
            tokio::time::sleep(Duration::from_millis(100)).await;
            c.get_connection(&id).await
        }
    });
    let write = {
        let c = client.clone();
        let id = w.ids[0].clone();
        async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            use qlik_rotator::qlik::model::{OpKind, PatchOp, PatchValue};
            let doc = qlik_rotator::qlik::PatchDocument {
                ops: vec![PatchOp {
                    op: OpKind::Replace,
                    path: "/connectionProperties/password".into(),
                    value: PatchValue::Secret(read_canary(0).into()),
                }],
            };
            c.patch_connection(&id, &doc).await
        }
    };
    let (first, others, write) = tokio::join!(first, futures_util::future::join_all(others), write);
    assert!(first.is_ok(), "{first:?}");
    assert!(others.iter().all(Result::is_ok), "{others:?}");
    assert!(write.is_ok(), "{write:?}");
    let reqs = w.sim.requests();
    let refused = reqs.iter().find(|r| r.status == 429).expect("one 429").at;
    let patch = reqs
        .iter()
        .find(|r| r.method == "PATCH")
        .expect("the PATCH")
        .at;
    assert!(
        patch.duration_since(refused) < Duration::from_millis(900),
        "writes not paused"
    );
    let gets: Vec<_> = reqs.iter().filter(|r| r.method == "GET").collect();
    assert_eq!(gets.len(), 6, "five GETs and one retry");
    for g in gets.iter().filter(|r| r.at > refused) {
        assert!(
            g.at.duration_since(refused) >= Duration::from_millis(950),
            "a GET reached the tenant {:?} after the 429",
            g.at.duration_since(refused)
        );
    }
    assert_eq!(client.gates().read.pauses(), 1);
    assert_eq!(client.gates().write.pauses(), 0);
    let shown = format!("{first:?} {others:?} {write:?}");
    assert_no_canary("results", &shown);
}

/// One `rotate --job r000` against a GET answered 429 with this `Retry-After`.
async fn hostile_retry_after(value: &str) -> (ReadWorld, CliOutput, Duration) {
    let w = read_world(1, None, "max_attempts = 2").await;
    w.sim.inject(Fault::Hostile {
        method: Some("GET".into()),
        path_prefix: Some("/api/v1/data-connections/".into()),
        response: Hostile::RetryAfter {
            value: value.to_owned(),
        },
        times: 1,
    });
    let started = Instant::now();
    let out = run_cli(
        &["rotate", "-c", w.config.to_str().unwrap(), "--job", "r000"],
        &w.env(),
    )
    .await;
    let took = started.elapsed();
    w.assert_clean("stdout", &out.stdout);
    w.assert_clean("stderr", &out.stderr);
    (w, out, took)
}

/// A `Retry-After` the client does not believe (negative, text, too large for a number) is
/// not a wait: the 1 s default applies, then the run goes on and rotates.
async fn assert_default_wait(value: &str) {
    let (w, out, took) = hostile_retry_after(value).await;
    assert_eq!(out.code, 0, "{value:?}: {out:?}");
    assert!(
        out.stdout.starts_with("r000: rotated and verified"),
        "{out:?}"
    );
    assert_eq!(w.patches_of(0), 1);
    let gets = w.gets();
    assert_eq!(gets[0].status, 429);
    let waited = gets[1].at.duration_since(gets[0].at);
    assert!(
        waited >= Duration::from_millis(950) && waited < Duration::from_secs(3),
        "{value:?}: waited {waited:?}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[tokio::test]
async fn hostile_retry_after_negative_waits_the_default() {
    assert_default_wait("-5").await;
}

#[tokio::test]
async fn hostile_retry_after_text_waits_the_default() {
    assert_default_wait("soon; rm -rf /").await;
}

#[tokio::test]
async fn hostile_retry_after_beyond_u64_waits_the_default() {
    assert_default_wait("184467440737095516160000").await;
}

/// A `Retry-After` beyond `max_retry_after` (120 s), as seconds or as a far date, is not
/// waited for: the read fails at once, clearly, with no PATCH, and the gate is not paused
/// for it (a second run right after goes through).
async fn assert_refused_wait(value: &str) {
    let (w, out, took) = hostile_retry_after(value).await;
    assert_eq!(out.code, 1, "{value:?}: {out:?}");
    assert!(
        out.stdout
            .starts_with("r000: failed at resolve [rate_limited]: "),
        "{out:?}"
    );
    assert!(out.stdout.contains("429"), "{out:?}");
    assert_eq!(w.patches_of(0), 0);
    assert_eq!(w.gets().len(), 1, "not retried");
    assert!(took < Duration::from_secs(5), "{value:?}: took {took:?}");
    let again = run_cli(
        &["rotate", "-c", w.config.to_str().unwrap(), "--job", "r000"],
        &w.env(),
    )
    .await;
    assert_eq!(again.code, 0, "{again:?}");
    w.assert_clean("stdout", &again.stdout);
}

#[tokio::test]
async fn hostile_retry_after_huge_is_not_waited_for() {
    assert_refused_wait("99999999999").await;
}

#[tokio::test]
async fn hostile_retry_after_far_date_is_not_waited_for() {
    assert_refused_wait("Fri, 31 Dec 9999 23:59:59 GMT").await;
}

/// Readiness does not wait for pre-flight: with 30 connections and Tier 1 enforced at 5 GETs
/// per 500 ms (pre-flight takes ~6 s under `read_budget_per_min = 300`), `/readyz` is 200 as
/// soon as the daemon started, while `preflight_pending` is still above zero; then the gauge
/// counts down to 0, every job passes, and the simulator rejected no read.
#[tokio::test]
async fn readiness_is_true_before_preflight_ends() {
    let w = read_world(30, Some(5), "read_budget_per_min = 300").await;
    let text = format!("{}\n[metrics]\nlisten = \"127.0.0.1:0\"\n", w.text);
    let cfg = config::load_str(&text, w.dir.path(), &w.input()).expect("valid config");
    let running = qlik_rotator::daemon::start(&cfg, &w.input())
        .await
        .expect("daemon starts");
    assert_eq!(http_get(running.addr, "/readyz").await.0, 200);
    assert!(running.daemon.is_ready());
    let early = http_get(running.addr, "/metrics").await.1;
    let pending = metric(&early, "qlik_rotator_preflight_pending", &[]).unwrap();
    assert!(pending > 0.0, "pre-flight already over: {pending}");
    // The gauge only goes down.
    let mut last = pending;
    let start = Instant::now();
    loop {
        let body = http_get(running.addr, "/metrics").await.1;
        let now = metric(&body, "qlik_rotator_preflight_pending", &[]).unwrap();
        assert!(now <= last, "{now} after {last}");
        last = now;
        if now == 0.0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.daemon.preflight_finished().await;
    let body = http_get(running.addr, "/metrics").await.1;
    assert_eq!(
        metric(&body, "qlik_rotator_jobs", &[("state", "scheduled")]),
        Some(30.0)
    );
    assert_eq!(w.sim.rejected(qlik_sim::limiter::Tier::Reads), 0);
    assert!(w.sim.reads_in_window_max() <= 5);
    assert_eq!(
        with_method(&w.sim, "PATCH").len(),
        0,
        "pre-flight writes nothing"
    );
    w.assert_clean("metrics", &body);
    assert!(running.shutdown().await);
}

/// The gauge with a failing connection: a pre-flight that fails (404) is done, not pending;
/// the job is counted as failing pre-flight, the others as scheduled.
#[tokio::test]
async fn preflight_pending_counts_failed_checks_as_done() {
    let w = read_world(3, None, "").await;
    w.sim.inject(Fault::Status {
        method: Some("GET".into()),
        path_prefix: Some(format!("/api/v1/data-connections/{}", w.ids[1])),
        status: 404,
        times: 1,
    });
    let text = format!("{}\n[metrics]\nlisten = \"127.0.0.1:0\"\n", w.text);
    let cfg = config::load_str(&text, w.dir.path(), &w.input()).expect("valid config");
    let running = qlik_rotator::daemon::start(&cfg, &w.input())
        .await
        .expect("daemon starts");
    running.daemon.preflight_finished().await;
    let body = http_get(running.addr, "/metrics").await.1;
    assert_eq!(
        metric(&body, "qlik_rotator_preflight_pending", &[]),
        Some(0.0)
    );
    assert_eq!(
        metric(&body, "qlik_rotator_jobs", &[("state", "preflight_failed")]),
        Some(1.0)
    );
    assert_eq!(
        metric(&body, "qlik_rotator_jobs", &[("state", "scheduled")]),
        Some(2.0)
    );
    assert_eq!(with_method(&w.sim, "PATCH").len(), 0);
    w.assert_clean("metrics", &body);
    assert!(running.shutdown().await);
}
