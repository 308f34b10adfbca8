//! Config primitives: walking an untyped config tree while collecting every error with its
//! path ([`ConfigError`], [`Errors`], [`Table`]), durations, URLs and the AWS region.
//!
//! Its own module, low in the layering (it needs only [`crate::text`]), so that the modules
//! below [`crate::config`] (each secret source reads its `[sources.NAME]` table with it, `cli`
//! parses durations) need not import `config`. `config::walk` is the same module.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::{Map, Value};

/// One configuration problem, located by its key path (`jobs[2].connector`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Key path, e.g. `qlik.tenant_url` or `jobs[2].connector`.
    pub path: String,
    /// What is wrong. Never contains a secret value.
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    /// Control characters are escaped and the path is capped: key names come from the file
    /// (`[sources."\u001b…"]`) and must not drive the terminal.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}",
            printable(&self.path, 200),
            printable(&self.message, 2000)
        )
    }
}

/// `s` with control, bidi and separator characters escaped (`\u{1b}`), cut to `max`
/// characters (then `…`): the crate's one escaping helper.
pub use crate::text::printable;

/// Collects errors.
#[derive(Debug, Default)]
pub struct Errors(pub Vec<ConfigError>);

impl Errors {
    /// Records an error at `path`.
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }
}

/// A table being read; remembers which keys were consumed so the rest can be reported.
pub struct Table<'a> {
    /// Path of this table.
    pub path: String,
    map: &'a Map<String, Value>,
    known: Vec<&'static str>,
}

impl<'a> Table<'a> {
    /// Wraps `value` (which must be a table) at `path`; reports an error otherwise.
    pub fn new(path: impl Into<String>, value: &'a Value, errs: &mut Errors) -> Option<Self> {
        let path = path.into();
        match value {
            Value::Object(map) => Some(Table {
                path,
                map,
                known: Vec::new(),
            }),
            other => {
                errs.push(path, format!("expected a table, found {}", kind(other)));
                None
            }
        }
    }

    /// Full path of `key` in this table.
    pub fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// The raw value under `key`, marking the key as known.
    pub fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.known.push(key);
        self.map.get(key)
    }

    /// Marks keys as known without reading them.
    pub fn allow(&mut self, keys: &[&'static str]) {
        self.known.extend_from_slice(keys);
    }

    /// Whether `key` is present.
    pub fn has(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    /// An optional string. Empty strings, control characters and more than
    /// [`MAX_STRING_LEN`] bytes are refused (without quoting the value).
    pub fn opt_str(&mut self, key: &'static str, errs: &mut Errors) -> Option<String> {
        match self.get(key)? {
            Value::String(s) if s.trim().is_empty() => {
                errs.push(self.key_path(key), "must not be empty");
                None
            }
            Value::String(s) => match check_text(s, MAX_STRING_LEN) {
                Ok(()) => Some(s.clone()),
                Err(why) => {
                    errs.push(self.key_path(key), why);
                    None
                }
            },
            other => {
                errs.push(
                    self.key_path(key),
                    format!("expected a string, found {}", kind(other)),
                );
                None
            }
        }
    }

    /// A required string.
    pub fn req_str(&mut self, key: &'static str, errs: &mut Errors) -> Option<String> {
        if !self.has(key) {
            self.known.push(key);
            errs.push(self.key_path(key), "is required");
            return None;
        }
        self.opt_str(key, errs)
    }

    /// An optional unsigned integer within `range` (strings from environment overrides parse).
    pub fn opt_u64(
        &mut self,
        key: &'static str,
        range: std::ops::RangeInclusive<u64>,
        errs: &mut Errors,
    ) -> Option<u64> {
        let v = self.get(key)?;
        let n = match v {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        match n {
            Some(n) if range.contains(&n) => Some(n),
            Some(_) | None => {
                errs.push(
                    self.key_path(key),
                    format!(
                        "expected a whole number from {} to {}, found {}",
                        range.start(),
                        range.end(),
                        shown(v)
                    ),
                );
                None
            }
        }
    }

    /// An optional boolean (strings `true`/`false` from environment overrides parse).
    pub fn opt_bool(&mut self, key: &'static str, errs: &mut Errors) -> Option<bool> {
        let v = self.get(key)?;
        match v {
            Value::Bool(b) => Some(*b),
            Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
            Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
            other => {
                errs.push(
                    self.key_path(key),
                    format!("expected true or false, found {}", shown(other)),
                );
                None
            }
        }
    }

    /// An optional duration such as `"30s"`, `"5m"`, `"1h"`, `"250ms"`, within `range`
    /// (every duration key has a documented range: see the README configuration table).
    pub fn opt_duration(
        &mut self,
        key: &'static str,
        range: std::ops::RangeInclusive<Duration>,
        errs: &mut Errors,
    ) -> Option<Duration> {
        let v = self.get(key)?;
        match v.as_str().and_then(parse_duration) {
            Some(d) if range.contains(&d) => Some(d),
            parsed => {
                errs.push(
                    self.key_path(key),
                    format!(
                        "expected a duration from {} to {} (such as \"30s\", \"5m\" or \"1h\"), found {}",
                        format_duration(*range.start()),
                        format_duration(*range.end()),
                        match parsed {
                            Some(d) => format_duration(d),
                            None => shown(v),
                        }
                    ),
                );
                None
            }
        }
    }

    /// Reports every key that no reader asked for.
    pub fn finish(self, errs: &mut Errors) {
        for key in self.map.keys() {
            if !self.known.iter().any(|k| k == key) {
                let mut known = self.known.clone();
                known.sort_unstable();
                known.dedup();
                errs.push(
                    self.key_path(key),
                    format!(
                        "unknown key{} (expected one of: {})",
                        crate::text::did_you_mean(key, known.iter().copied()),
                        known.join(", ")
                    ),
                );
            }
        }
    }
}

/// Parses `"30s"`, `"5m"`, `"1h"`, `"250ms"`, `"1d"`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "ms" => return Some(Duration::from_millis(n)),
        "" | "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

/// A short description of a value's type.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a table",
    }
}

/// Longest string value accepted anywhere (paths are capped at 4096 bytes by the OS; nothing
/// in a configuration needs more).
pub const MAX_STRING_LEN: usize = 4096;

/// Why `s` is not acceptable text for a configuration value: control characters (a pasted
/// multi-line secret, terminal escapes) or more than `max` bytes. Never quotes `s`.
pub fn check_text(s: &str, max: usize) -> Result<(), String> {
    if s.len() > max {
        return Err(format!("is longer than {max} bytes"));
    }
    if s.chars().any(char::is_control) {
        return Err("must not contain control characters (newlines, tabs, escapes)".to_owned());
    }
    Ok(())
}

/// A value for an error message. The rule: numbers and booleans are shown as written; a
/// string is never shown, whatever the key, because any string key could have received a
/// pasted secret. Messages say what the value must look like instead.
pub fn shown(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::String(_) => "text (not shown)".to_owned(),
        other => kind(other).to_owned(),
    }
}

/// `250ms`, `30s`, `5m`, `1h`, `366d`: the largest unit that divides the duration.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    match s {
        0 => "0s".to_owned(),
        s if s % 86400 == 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The optional key `key` as an AWS region name (`a-z`, `0-9` and `-`, at most 32
/// characters), for the tables of AWS-backed sources and the `[events]` queue.
pub fn aws_region(t: &mut Table<'_>, key: &'static str, errs: &mut Errors) -> Option<String> {
    t.opt_str(key, errs).and_then(|r| {
        let ok = r.len() <= 32
            && r.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !ok {
            errs.push(
                t.key_path(key),
                "expected an AWS region name such as \"eu-west-1\" (a-z, 0-9 and '-', at most 32 characters)",
            );
        }
        ok.then_some(r)
    })
}

/// A base URL (`qlik.tenant_url`, `sources.*.endpoint_url`): https (http only for a loopback
/// host), a host, no user name or password, no path beyond `/`, no query, no fragment. The
/// client appends `/api/v1/…` itself, so a path would be doubled; credentials in the URL would
/// be sent as Basic auth and printed with the URL. Errors never quote the value.
pub fn base_url(
    t: &mut Table<'_>,
    key: &'static str,
    errs: &mut Errors,
) -> Option<(String, reqwest::Url)> {
    let raw = t.opt_str(key, errs)?;
    let url = match reqwest::Url::parse(&raw) {
        Ok(u) => u,
        Err(e) => {
            errs.push(
                t.key_path(key),
                format!("not a valid URL ({e}); expected e.g. https://acme.eu.qlikcloud.com"),
            );
            return None;
        }
    };
    let mut problems = Vec::new();
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        "http" => problems.push("must use https (http is allowed only for a loopback host)"),
        _ => problems.push("must be an https:// URL"),
    }
    if url.host_str().is_none_or(str::is_empty) {
        problems.push("must name a host");
    }
    if !url.username().is_empty() || url.password().is_some() {
        problems.push(
            "must not contain a user name or password (user:password@ is refused; credentials go in *_env/*_file keys)",
        );
    }
    if url.path() != "/" && !url.path().is_empty() {
        problems.push(
            "must not contain a path (such as /api/v1): give the base URL only, the rotator adds the API paths",
        );
    }
    if url.query().is_some() {
        problems.push("must not contain a query (?…)");
    }
    if url.fragment().is_some() {
        problems.push("must not contain a fragment (#…)");
    }
    if problems.is_empty() {
        Some((raw, url))
    } else {
        for p in problems {
            errs.push(t.key_path(key), p);
        }
        None
    }
}

/// Whether `url` names this host (`localhost` or a loopback address).
pub(crate) fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host_str() {
        Some("localhost") => true,
        Some(h) => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// `p`, resolved against `base` (the configuration file's directory) when relative.
pub fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() { p } else { base.join(p) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("12"), Some(Duration::from_secs(12)));
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("5 weeks"), None);
        assert_eq!(parse_duration("-1s"), None);
    }
}
