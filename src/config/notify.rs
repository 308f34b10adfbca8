//! `[[notify]]`: webhooks told about rotation outcomes (optional, any number).
//!
//! ```toml
//! [[notify]]
//! url = "https://hooks.example.com/qlik-rotator"   # https; http only for a loopback host
//! # url_file = "/run/secrets/slack-webhook-url"    # instead of url, when the URL is a secret
//! format = "json"                                  # or "slack" (an incoming-webhook body)
//! on = ["failed", "verify_failed", "canary_failed", "rolled_back"]   # the default; "rotated" optional
//! timeout = "5s"                                   # per attempt, 1 s to 60 s
//! retries = 3                                      # after the first attempt, 0 to 10
//! headers_from_file = "/run/secrets/hook-headers"  # optional: `Name: value` lines (an auth header)
//! ```
//!
//! Header values are secrets: they are read from the file when the configuration is loaded,
//! kept as [`SecretString`] and never printed; errors name the key and the line, never the
//! value. The URL itself must not carry a user name or password; a URL that is a secret (a
//! Slack incoming webhook's) goes in `url_file`.

use std::{path::Path, time::Duration};

use secrecy::SecretString;
use serde_json::Value;

use super::walk::{Errors, Table, kind, resolve};

/// The outcomes a webhook can be told about.
pub const NOTIFY_OUTCOMES: [&str; 5] = [
    "failed",
    "verify_failed",
    "canary_failed",
    "rolled_back",
    "rotated",
];
/// `on` when absent: every outcome that needs a person.
pub const DEFAULT_ON: [&str; 4] = ["failed", "verify_failed", "canary_failed", "rolled_back"];
/// `timeout` when absent.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// `retries` when absent.
pub const DEFAULT_RETRIES: u32 = 3;
/// The longest `headers_from_file` read (bytes).
pub const MAX_HEADERS_FILE: u64 = 16 * 1024;
/// The most headers in `headers_from_file`.
pub const MAX_HEADERS: usize = 16;
/// Headers the client sets itself (or that would change the request's framing).
const RESERVED_HEADERS: [&str; 6] = [
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "te",
];

/// The body's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyFormat {
    /// A JSON object with the outcome's fields.
    Json,
    /// A Slack incoming-webhook body: `{"text": …}`.
    Slack,
}

/// One `[[notify]]` table. Its `Debug` shows the URL's scheme, host and port only.
#[derive(Clone)]
pub struct NotifyConfig {
    /// `url` (validated: https, or http for a loopback host; no user info).
    pub url: reqwest::Url,
    /// `format`.
    pub format: NotifyFormat,
    /// `on`: outcome labels from [`NOTIFY_OUTCOMES`].
    pub on: Vec<&'static str>,
    /// `timeout`: one attempt's limit.
    pub timeout: Duration,
    /// `retries`: attempts after the first (on a transport error, a timeout, 429 or 5xx).
    pub retries: u32,
    /// The wait before the first retry; doubles each time (1 s; not a config key, tests
    /// shorten it).
    pub retry_delay: Duration,
    /// Headers read from `headers_from_file` (name, secret value).
    pub headers: Vec<(String, SecretString)>,
}

impl std::fmt::Debug for NotifyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyConfig")
            .field("url", &self.target())
            .field("format", &self.format)
            .field("on", &self.on)
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

impl NotifyConfig {
    /// Where the webhook goes, for logs: scheme, host and port only (a webhook's path often
    /// carries its token).
    pub fn target(&self) -> String {
        let host = self.url.host_str().unwrap_or("?");
        match self.url.port() {
            Some(p) => format!("{}://{host}:{p}", self.url.scheme()),
            None => format!("{}://{host}", self.url.scheme()),
        }
    }
}

/// Reads the `[[notify]]` array (`value` is whatever `notify` holds).
pub fn notify_section(value: &Value, base_dir: &Path, errs: &mut Errors) -> Vec<NotifyConfig> {
    let Value::Array(items) = value else {
        errs.push(
            "notify",
            format!(
                "expected an array of tables ([[notify]]), found {}",
                kind(value)
            ),
        );
        return Vec::new();
    };
    items
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let t = Table::new(format!("notify[{i}]"), v, errs)?;
            one(t, base_dir, errs)
        })
        .collect()
}

fn one(mut t: Table<'_>, base_dir: &Path, errs: &mut Errors) -> Option<NotifyConfig> {
    let url = notify_url(&mut t, base_dir, errs);
    let format = match t.opt_str("format", errs).as_deref() {
        None | Some("json") => Some(NotifyFormat::Json),
        Some("slack") => Some(NotifyFormat::Slack),
        Some(_) => {
            errs.push(
                t.key_path("format"),
                "unknown format (expected \"json\" or \"slack\")",
            );
            None
        }
    };
    let on = match t.get("on") {
        None => Some(DEFAULT_ON.to_vec()),
        Some(v) => on_list(v, &t.key_path("on"), errs),
    };
    let timeout = t
        .opt_duration(
            "timeout",
            Duration::from_secs(1)..=Duration::from_secs(60),
            errs,
        )
        .unwrap_or(DEFAULT_TIMEOUT);
    let retries = t
        .opt_u64("retries", 0..=10, errs)
        .map_or(DEFAULT_RETRIES, |n| n as u32);
    let headers = match t.opt_str("headers_from_file", errs) {
        None => Some(Vec::new()),
        Some(p) => match read_headers(&resolve(base_dir, &p)) {
            Ok(h) => Some(h),
            Err(why) => {
                errs.push(t.key_path("headers_from_file"), why);
                None
            }
        },
    };
    t.finish(errs);
    Some(NotifyConfig {
        url: url?,
        format: format?,
        on: on?,
        timeout,
        retries,
        retry_delay: Duration::from_secs(1),
        headers: headers?,
    })
}

/// The webhook URL of one `[[notify]]` table, from `url` or `url_file`, checked.
fn notify_url(t: &mut Table<'_>, base_dir: &Path, errs: &mut Errors) -> Option<reqwest::Url> {
    // `url`, or `url_file` for a URL that is itself a secret (a Slack webhook's path is its
    // token).
    let inline = t.opt_str("url", errs);
    let from_file = t.opt_str("url_file", errs);
    let (key, raw) = match (inline, from_file) {
        (Some(u), None) => ("url", Some(u)),
        (None, Some(p)) => match read_url_file(&resolve(base_dir, &p)) {
            Ok(u) => ("url_file", Some(u)),
            Err(why) => {
                errs.push(t.key_path("url_file"), why);
                ("url_file", None)
            }
        },
        (Some(_), Some(_)) => {
            errs.push(t.key_path("url_file"), "give url or url_file, not both");
            ("url", None)
        }
        (None, None) => {
            if !t.has("url") && !t.has("url_file") {
                errs.push(
                    t.key_path("url"),
                    "is required (or url_file: a file holding the URL)",
                );
            }
            ("url", None)
        }
    };
    raw.and_then(|raw| match check_url(&raw) {
        Ok(u) => Some(u),
        Err(why) => {
            errs.push(t.key_path(key), why);
            None
        }
    })
}

fn on_list(v: &Value, path: &str, errs: &mut Errors) -> Option<Vec<&'static str>> {
    let expected = format!("expected a list of outcomes from {NOTIFY_OUTCOMES:?}");
    let Value::Array(items) = v else {
        errs.push(path, format!("{expected}, found {}", kind(v)));
        return None;
    };
    let mut out = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        match item
            .as_str()
            .and_then(|s| NOTIFY_OUTCOMES.iter().find(|o| **o == s))
        {
            Some(o) if !out.contains(o) => out.push(*o),
            Some(_) => {}
            None => {
                errs.push(
                    format!("{path}[{i}]"),
                    format!("unknown outcome; {expected}"),
                );
                ok = false;
            }
        }
    }
    if ok && out.is_empty() {
        errs.push(path, format!("is empty; {expected}"));
        ok = false;
    }
    ok.then_some(out)
}

/// https (http only for a loopback host), a host, no user name or password, no fragment.
/// Errors never quote the value (a webhook URL's path is often its secret).
fn check_url(raw: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(raw).map_err(|e| {
        format!("not a valid URL ({e}); expected e.g. https://hooks.example.com/qlik-rotator")
    })?;
    let loopback = crate::walk::is_loopback(&url);
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => return Err("must use https (http is allowed only for a loopback host)".into()),
        _ => return Err("must be an https:// URL".into()),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("must name a host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "must not contain a user name or password (put an auth header in headers_from_file)"
                .into(),
        );
    }
    if url.fragment().is_some() {
        return Err("must not contain a fragment (#…)".into());
    }
    Ok(url)
}

/// The URL in a file (one line; surrounding white space ignored). Errors never quote it.
fn read_url_file(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| {
        format!(
            "cannot read {}: {}",
            crate::text::printable(&path.display().to_string(), 200),
            e.kind()
        )
    })?;
    let mut text = String::new();
    file.take(4097)
        .read_to_string(&mut text)
        .map_err(|_| "is not UTF-8 text".to_owned())?;
    if text.len() > 4096 {
        return Err("is larger than 4096 bytes".into());
    }
    let url = text.trim();
    if url.is_empty() || url.contains(char::is_whitespace) {
        return Err("must hold one URL on one line".into());
    }
    Ok(url.to_owned())
}

/// `Name: value` lines; blank lines and `#` comments skipped. Errors name the line, never
/// its value.
fn read_headers(path: &Path) -> Result<Vec<(String, SecretString)>, String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| {
        format!(
            "cannot read {}: {}",
            crate::text::printable(&path.display().to_string(), 200),
            e.kind()
        )
    })?;
    let mut text = String::new();
    file.take(MAX_HEADERS_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|_| "is not UTF-8 text".to_owned())?;
    if text.len() as u64 > MAX_HEADERS_FILE {
        return Err(format!("is larger than {MAX_HEADERS_FILE} bytes"));
    }
    let mut out: Vec<(String, SecretString)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let at = format!("line {}", n + 1);
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("{at}: expected `Name: value`"))?;
        let name = name.trim();
        if name.is_empty() || reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(format!("{at}: not a valid header name"));
        }
        if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{at}: header {name} is set by the rotator and cannot be given"
            ));
        }
        let value = value.trim();
        if value.is_empty() || !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(format!(
                "{at}: the value of {name} is empty or not printable ASCII"
            ));
        }
        if out.len() == MAX_HEADERS {
            return Err(format!("has more than {MAX_HEADERS} headers"));
        }
        out.push((name.to_owned(), SecretString::from(value.to_owned())));
    }
    Ok(out)
}
