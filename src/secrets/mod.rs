//! Secret sources: where the new credentials come from.
//!
//! A [`SecretSource`] turns a [`SecretRef`] (id + version selector) into a [`SecretValue`]: the
//! secret's payload, held in `secrecy` types, plus the version identifier the vault reports. The
//! version is what the daemon compares to decide whether a rotation is needed; it is never a
//! secret itself.
//!
//! Each source is one file holding its config, its factory and its implementation (vector's
//! `SecretBackends` is the model): the `[sources.NAME]` table is read by the file's config type
//! ([`SourceFactory::from_table`], called from the config walker), the build phase turns that
//! config into the source ([`SourceFactory::build`]; the AWS SDK client is made there), and the
//! source then only answers [`SecretSource::fetch`]. The closed set is [`SourceConfig`] (what
//! the config says) and [`AnySource`] (what was built), both dispatched by `match`:
//! - [`aws`]: AWS Secrets Manager through `aws-sdk-secretsmanager` (`type = "aws_secrets_manager"`).
//! - [`file`](mod@file): a directory of `<secret-id>.json` files, for development and the demo
//!   (`type = "file"`).
//! - [`fixed`]: in-memory secrets, for tests and benchmarks (not configurable).
//!
//! # Adding a source
//! 1. One new file `secrets/<name>.rs` with a config struct implementing [`SourceFactory`]
//!    (`TYPE`, `KEYS`, `from_table` validating its keys with the walker's `Table`, and the
//!    async `build` factory) and the source implementing [`SecretSource`]; its unit tests
//!    sit in the same file.
//! 2. `pub mod <name>;` and one line in the `secret_sources!` list below: that line is the
//!    variant of [`SourceConfig`] and [`AnySource`], and every `match` over them (type
//!    dispatch, build, `kind`, `fetch`) gets its arm from it.
//!
//! Nothing else changes: the config walker, the "unknown source type" message, the key names in
//! TOML syntax errors and the build phase ([`build_all`]) read the list.

pub mod aws;
pub mod aws_ssm;
pub mod file;
pub mod fixed;
pub mod vault;

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    future::Future,
    path::Path,
    sync::Arc,
};

use secrecy::{ExposeSecret, SecretBox, SecretString};

use crate::walk::{Errors, Table};

/// Which version of a secret to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionSelector {
    /// A staging label, `AWSCURRENT` by default.
    Stage(String),
    /// An exact version id.
    Id(String),
}

impl Default for VersionSelector {
    fn default() -> Self {
        VersionSelector::Stage("AWSCURRENT".to_owned())
    }
}

/// A pointer to a secret in a source. Not sensitive: ids and ARNs come from config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    /// The secret id (name or ARN for AWS; file stem for the file source).
    pub id: String,
    /// Which version to read.
    pub version: VersionSelector,
}

impl SecretRef {
    /// A reference to the current version of `id`.
    pub fn current(id: impl Into<String>) -> Self {
        SecretRef {
            id: id.into(),
            version: VersionSelector::default(),
        }
    }
}

/// The raw payload of a secret. Never printable.
pub enum SecretPayload {
    /// A `SecretString` (usually a JSON object).
    Text(SecretString),
    /// A `SecretBinary` (for example a key file).
    Binary(SecretBox<Vec<u8>>),
}

impl fmt::Debug for SecretPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretPayload::Text(_) => f.write_str("SecretPayload::Text([REDACTED])"),
            SecretPayload::Binary(_) => f.write_str("SecretPayload::Binary([REDACTED])"),
        }
    }
}

/// A secret as read from a source: its payload and the version the source reported.
#[derive(Debug)]
pub struct SecretValue {
    /// Version identifier (AWS `VersionId`, or a content hash for the file source).
    pub version: String,
    /// The payload.
    pub payload: SecretPayload,
    /// When this version was created, in Unix seconds, if the source says (Secrets Manager
    /// `CreatedDate`, SSM `LastModifiedDate`, Vault `created_time`, the file's mtime): the
    /// credential's own age, exported as `secret_created_timestamp_seconds`.
    pub created: Option<i64>,
}

impl SecretValue {
    /// A text secret.
    pub fn text(version: impl Into<String>, text: impl Into<String>) -> Self {
        SecretValue {
            version: version.into(),
            payload: SecretPayload::Text(SecretString::from(text.into())),
            created: None,
        }
    }

    /// Parses the payload as a JSON object and returns its top-level fields, each with its
    /// JSON type.
    ///
    /// Nothing is coerced: [`SecretFields::get`] and [`SecretFields::text`] give string fields
    /// only, so a number, `null`, boolean, array or object can never become a credential by
    /// accident (a number such as `123456789012345678901234567890` would otherwise turn into
    /// `1.2345678901234568e+29`). A non-string field is kept as its compact JSON text for the
    /// one place that may use it: a service-account key file given as a nested object
    /// ([`SecretFields::object_json`]).
    ///
    /// # Errors
    /// [`FieldsError`] when the payload is binary, not JSON, or not an object. The error never
    /// contains any part of the payload.
    pub fn fields(&self) -> Result<SecretFields, FieldsError> {
        let text = match &self.payload {
            SecretPayload::Text(t) => t.expose_secret(),
            SecretPayload::Binary(b) => {
                std::str::from_utf8(b.expose_secret()).map_err(|_| FieldsError::Binary)?
            }
        };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| FieldsError::NotJson {
                line: e.line(),
                column: e.column(),
            })?;
        let serde_json::Value::Object(map) = value else {
            return Err(FieldsError::NotObject);
        };
        let fields = map
            .into_iter()
            .map(|(k, v)| {
                let kind = json_kind(&v);
                let s = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, (kind, SecretString::from(s)))
            })
            .collect();
        Ok(SecretFields { fields })
    }

    /// The whole payload as secret bytes (text as UTF-8).
    pub fn raw_bytes(&self) -> SecretBox<Vec<u8>> {
        match &self.payload {
            SecretPayload::Text(t) => {
                SecretBox::new(Box::new(t.expose_secret().as_bytes().to_vec()))
            }
            SecretPayload::Binary(b) => SecretBox::new(Box::new(b.expose_secret().clone())),
        }
    }
}

/// The JSON type name of a value (`string`, `number`, `boolean`, `null`, `array`, `object`).
fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::String(_) => "string",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Null => "null",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// The top-level keys of a JSON secret. Values are secret; key names and JSON types are not.
pub struct SecretFields {
    /// Key → (JSON type, string value or compact JSON text).
    fields: BTreeMap<String, (&'static str, SecretString)>,
}

impl fmt::Debug for SecretFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretFields")
            .field("keys", &self.fields.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SecretFields {
    /// The string value under `key`; `None` when the key is missing or holds another JSON type
    /// (see [`SecretFields::text`] to tell the two apart).
    pub fn get(&self, key: &str) -> Option<&SecretString> {
        self.fields
            .get(key)
            .filter(|(kind, _)| *kind == "string")
            .map(|(_, v)| v)
    }

    /// The string value under `key`: `Ok(None)` when missing, `Err(json_type)` when the field
    /// holds a number, boolean, `null`, array or object (the type name only, never the value).
    ///
    /// # Errors
    /// The JSON type found, when it is not a string.
    pub fn text(&self, key: &str) -> Result<Option<&SecretString>, &'static str> {
        match self.fields.get(key) {
            None => Ok(None),
            Some(("string", v)) => Ok(Some(v)),
            Some((kind, _)) => Err(kind),
        }
    }

    /// The JSON type of the field under `key`, if present.
    pub fn json_type(&self, key: &str) -> Option<&'static str> {
        self.fields.get(key).map(|(kind, _)| *kind)
    }

    /// The compact JSON text of an object field (a service-account key file nested in the
    /// secret); `None` for a missing key or any other type.
    pub fn object_json(&self, key: &str) -> Option<&SecretString> {
        self.fields
            .get(key)
            .filter(|(kind, _)| *kind == "object")
            .map(|(_, v)| v)
    }

    /// The key names present (not their values).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.fields.keys().map(String::as_str)
    }
}

/// Why a secret payload could not be read as a JSON object. Never carries payload content.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FieldsError {
    /// Binary payload that is not UTF-8.
    #[error("the secret is binary, not a JSON object")]
    Binary,
    /// Not parseable as JSON.
    #[error("the secret is not valid JSON (parse error at line {line}, column {column})")]
    NotJson {
        /// 1-based line of the parse error.
        line: usize,
        /// 1-based column of the parse error.
        column: usize,
    },
    /// Valid JSON, but not an object.
    #[error("the secret is JSON but not an object of key/value pairs")]
    NotObject,
}

/// Why a source could not return a secret. Messages never contain secret material.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The secret (or the requested version) does not exist.
    #[error("secret {id:?} not found{detail}")]
    NotFound {
        /// Secret id.
        id: String,
        /// Extra context (e.g. the version asked for), starting with a separator, or empty.
        detail: String,
    },
    /// The source refused access (credentials, permissions, KMS).
    #[error("access to secret {id:?} denied: {message}")]
    AccessDenied {
        /// Secret id.
        id: String,
        /// The source's explanation (never the payload).
        message: String,
    },
    /// The source could not be reached or timed out; worth retrying.
    #[error("secret source unavailable while reading {id:?}: {message}")]
    Unavailable {
        /// Secret id.
        id: String,
        /// What went wrong.
        message: String,
    },
    /// The source cannot be asked as configured (no AWS region): a configuration error,
    /// not retried (exit 64 for a one-shot command).
    #[error("secret source not configured for reading {id:?}: {message}")]
    Unconfigured {
        /// Secret id.
        id: String,
        /// What is missing and how to set it.
        message: String,
    },
    /// The source's own credentials were not found (the AWS credential chain came back
    /// empty): not retried within a run (exit 78 for a one-shot command).
    #[error("no credentials for the secret source while reading {id:?}: {message}")]
    NoCredentials {
        /// Secret id.
        id: String,
        /// What was tried and how to set each.
        message: String,
    },
    /// The secret exists but its content is unusable (e.g. empty).
    #[error("secret {id:?} is unusable: {message}")]
    Invalid {
        /// Secret id.
        id: String,
        /// What is wrong (never the content).
        message: String,
    },
}

impl SourceError {
    /// Whether a later attempt may succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(self, SourceError::Unavailable { .. })
    }

    /// A stable, low-cardinality label for metrics.
    pub fn error_type(&self) -> &'static str {
        match self {
            SourceError::NotFound { .. } => "secret_not_found",
            SourceError::AccessDenied { .. } => "secret_access_denied",
            SourceError::Unavailable { .. } => "secret_source_unavailable",
            SourceError::Invalid { .. } => "secret_invalid",
            SourceError::Unconfigured { .. } => "secret_source_config",
            SourceError::NoCredentials { .. } => "secret_no_credentials",
        }
    }
}

/// A vault the rotator reads secrets from.
pub trait SecretSource: Send + Sync {
    /// The `source` label used in metrics (`aws_secrets_manager`, `file`, `fixed`).
    fn kind(&self) -> &'static str;

    /// Reads one secret.
    ///
    /// # Errors
    /// [`SourceError`], classified for retry.
    fn fetch(
        &self,
        secret: &SecretRef,
    ) -> impl Future<Output = Result<SecretValue, SourceError>> + Send;

    /// Reads several secrets, one result per ref in the same order. A source with a batch
    /// API (Secrets Manager `BatchGetSecretValue`, SSM `GetParameters`) overrides this and
    /// falls back to [`Self::fetch`] for ids the batch could not answer; the default reads
    /// them one by one.
    fn fetch_many(
        &self,
        secrets: &[SecretRef],
    ) -> impl Future<Output = Vec<Result<SecretValue, SourceError>>> + Send {
        async move {
            let mut out = Vec::with_capacity(secrets.len());
            for s in secrets {
                out.push(self.fetch(s).await);
            }
            out
        }
    }
}

/// What a configurable source adds to its [`SecretSource`] implementation: the
/// `[sources.NAME]` table it reads (load phase: pure, every error with its key path) and the
/// factory that makes the source from it (build phase: may do I/O, sends no request).
///
/// The config type is the factory (vector's `SecretBackend` config is its backend too); the
/// [`Self::Source`] it builds only does calls (STYLE principle 6).
pub trait SourceFactory: Sized {
    /// The `type = "…"` value that selects this source.
    const TYPE: &'static str;
    /// The keys its table may hold besides `type` (accepted when `type` is unknown, and
    /// named in TOML syntax errors).
    const KEYS: &'static [&'static str];
    /// The source the factory makes.
    type Source: SecretSource;

    /// Reads the table's keys (`type` is already read) and validates them. Unread keys are
    /// reported by the caller.
    fn from_table(t: &mut Table<'_>, base_dir: &Path, errs: &mut Errors) -> Option<Self>;

    /// Makes the source (build phase).
    fn build(&self) -> impl Future<Output = Self::Source> + Send;

    /// What the build phase checks before [`Self::build`]: the files the source will read
    /// (token, secret-id, CA files) exist and are usable. Each error is (key in the table,
    /// message), and the message quotes neither the file's name nor its content. Bad ones
    /// stop the start with exit 64 ([`check_all`]). None by default.
    fn check(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
}

/// Declares the configurable sources: each entry is one variant of [`SourceConfig`] (what
/// `[sources.NAME]` says) and of [`AnySource`] (what the build phase made of it), and the
/// `match`es over them are written here once. [`fixed::FixedSource`] is not configurable: it
/// is added to [`AnySource`] by hand.
macro_rules! secret_sources {
    ($( $(#[$doc:meta])* $variant:ident($config:ty), )+) => {
        /// `[sources.NAME]`: one variant per source file, selected by `type`.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum SourceConfig {
            $( $(#[$doc])* $variant($config), )+
        }

        impl SourceConfig {
            /// Every `type` value, in declaration order.
            pub const TYPES: &[&str] = &[$( <$config as SourceFactory>::TYPE ),+];

            /// Every key a `[sources.NAME]` table of some type may hold besides `type`.
            pub fn keys() -> impl Iterator<Item = &'static str> {
                [$( <$config as SourceFactory>::KEYS ),+].into_iter().flatten().copied()
            }

            /// The keys (besides `type`) a source of type `kind` reads; `None` for no such type.
            pub fn keys_of(kind: &str) -> Option<&'static [&'static str]> {
                $(
                    if kind == <$config as SourceFactory>::TYPE {
                        return Some(<$config as SourceFactory>::KEYS);
                    }
                )+
                None
            }

            /// The source's `type`.
            pub fn kind(&self) -> &'static str {
                match self {
                    $( SourceConfig::$variant(_) => <$config as SourceFactory>::TYPE, )+
                }
            }

            /// The table of a source of type `kind`; `None` when no source has that type.
            fn parse(
                kind: &str,
                t: &mut Table<'_>,
                base_dir: &Path,
                errs: &mut Errors,
            ) -> Option<Option<Self>> {
                $(
                    if kind == <$config as SourceFactory>::TYPE {
                        let parsed = <$config as SourceFactory>::from_table(t, base_dir, errs);
                        return Some(parsed.map(SourceConfig::$variant));
                    }
                )+
                None
            }

            /// The source's build-phase checks ([`SourceFactory::check`]).
            pub fn check(&self) -> Vec<(&'static str, String)> {
                match self {
                    $( SourceConfig::$variant(c) => c.check(), )+
                }
            }

            /// Makes the source (build phase).
            pub async fn build(&self) -> AnySource {
                match self {
                    $( SourceConfig::$variant(c) => AnySource::$variant(c.build().await), )+
                }
            }
        }

        /// The closed set of built sources, dispatched by `match`.
        #[derive(Debug)]
        pub enum AnySource {
            $( $(#[$doc])* $variant(<$config as SourceFactory>::Source), )+
            /// In-memory secrets (tests, benchmarks; not configurable).
            Fixed(fixed::FixedSource),
        }

        impl SecretSource for AnySource {
            fn kind(&self) -> &'static str {
                match self {
                    $( AnySource::$variant(s) => s.kind(), )+
                    AnySource::Fixed(s) => s.kind(),
                }
            }

            async fn fetch(&self, secret: &SecretRef) -> Result<SecretValue, SourceError> {
                match self {
                    $( AnySource::$variant(s) => s.fetch(secret).await, )+
                    AnySource::Fixed(s) => s.fetch(secret).await,
                }
            }

            async fn fetch_many(
                &self,
                secrets: &[SecretRef],
            ) -> Vec<Result<SecretValue, SourceError>> {
                match self {
                    $( AnySource::$variant(s) => s.fetch_many(secrets).await, )+
                    AnySource::Fixed(s) => s.fetch_many(secrets).await,
                }
            }
        }
    };
}

secret_sources! {
    /// AWS Secrets Manager (`type = "aws_secrets_manager"`).
    AwsSecretsManager(aws::AwsSecretsManagerConfig),
    /// A local directory of JSON files (`type = "file"`).
    File(file::FileConfig),
    /// HashiCorp Vault / OpenBao KV v2 (`type = "vault"`).
    Vault(vault::VaultConfig),
    /// AWS SSM Parameter Store (`type = "aws_ssm"`).
    AwsSsm(aws_ssm::AwsSsmConfig),
}

impl SourceConfig {
    /// Validates one `[sources.NAME]` table: its `type`, then the keys that type reads; every
    /// other key is reported as unknown.
    pub fn from_table(mut t: Table<'_>, base_dir: &Path, errs: &mut Errors) -> Option<Self> {
        let kind = t.req_str("type", errs)?;
        let out = match SourceConfig::parse(&kind, &mut t, base_dir, errs) {
            Some(parsed) => parsed,
            None => {
                errs.push(
                    t.key_path("type"),
                    format!(
                        "unknown source type (expected {})",
                        one_of(SourceConfig::TYPES)
                    ),
                );
                // Only `type` is wrong: the other keys are not reported as well.
                t.allow(&SourceConfig::keys().collect::<Vec<_>>());
                None
            }
        };
        t.finish(errs);
        out
    }
}

/// `"a"`, `"a" or "b"`, `"a", "b" or "c"`.
fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// A secret read ahead of its run (or why it could not be read): handed to one run only
/// ([`crate::triggers::prefetch`] reads them; [`crate::rotation`] uses them).
pub type Prefetched = Arc<Result<SecretValue, SourceError>>;

/// The build-phase checks of every configured source ([`SourceFactory::check`]): each error
/// with its full key path (`sources.NAME.key`). Run before [`build_all`]; a failure is a
/// configuration error (exit 64) and nothing is sent.
///
/// # Errors
/// Every failed check.
pub fn check_all(
    sources: &BTreeMap<String, SourceConfig>,
) -> Result<(), Vec<crate::walk::ConfigError>> {
    let mut errs = Errors::default();
    for (name, config) in sources {
        for (key, message) in config.check() {
            errs.push(format!("sources.{name}.{key}"), message);
        }
    }
    if errs.0.is_empty() {
        Ok(())
    } else {
        Err(errs.0)
    }
}

/// Builds every configured source (build phase), keyed by its `[sources.NAME]` name.
pub async fn build_all(
    sources: &BTreeMap<String, SourceConfig>,
) -> HashMap<String, Arc<AnySource>> {
    let mut out = HashMap::with_capacity(sources.len());
    for (name, config) in sources {
        out.insert(name.clone(), Arc::new(config.build().await));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_keep_json_types_and_never_coerce() {
        let v = SecretValue::text(
            "v1",
            r#"{"username":"svc","port":1433,"big":123456789012345678901234567890,
                "none":null,"flag":true,"list":["a"],"key_file":{"type":"service_account"}}"#,
        );
        let f = v.fields().unwrap();
        assert_eq!(f.get("username").unwrap().expose_secret(), "svc");
        assert_eq!(f.text("username").unwrap().unwrap().expose_secret(), "svc");
        for (key, kind) in [
            ("port", "number"),
            ("big", "number"),
            ("none", "null"),
            ("flag", "boolean"),
            ("list", "array"),
            ("key_file", "object"),
        ] {
            assert!(f.get(key).is_none(), "{key}");
            assert_eq!(f.text(key).unwrap_err(), kind, "{key}");
            assert_eq!(f.json_type(key), Some(kind), "{key}");
        }
        assert_eq!(
            f.object_json("key_file").unwrap().expose_secret(),
            r#"{"type":"service_account"}"#
        );
        assert!(f.object_json("port").is_none());
        assert!(f.get("password").is_none());
        assert!(f.text("password").unwrap().is_none());
        assert_eq!(
            f.keys().collect::<Vec<_>>(),
            [
                "big", "flag", "key_file", "list", "none", "port", "username"
            ]
        );
    }

    #[test]
    fn fields_errors_never_echo_the_payload() {
        let canary = "CANARY-not-json-7731";
        let err = SecretValue::text("v", canary).fields().unwrap_err();
        assert!(matches!(err, FieldsError::NotJson { .. }));
        assert!(!err.to_string().contains(canary));
        let err = SecretValue::text("v", format!("[\"{canary}\"]"))
            .fields()
            .unwrap_err();
        assert_eq!(err, FieldsError::NotObject);
        assert!(!format!("{err:?}").contains(canary));
    }

    #[test]
    fn a_panic_that_formats_secrets_does_not_carry_them() {
        let value = SecretValue::text("v1", r#"{"password":"CANARY-panic-77"}"#);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let fields = value.fields().unwrap();
            panic!(
                "unexpected state: {value:?} {fields:?} {:?}",
                fields.get("password")
            );
        }));
        let payload = result.unwrap_err();
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(message.contains("unexpected state"), "{message}");
        assert!(!message.contains("CANARY"), "{message}");
    }

    #[test]
    fn debug_output_is_redacted() {
        let v = SecretValue::text("v9", r#"{"password":"CANARY-dbg-1"}"#);
        let dbg = format!("{v:?} {:?}", v.fields().unwrap());
        assert!(!dbg.contains("CANARY-dbg-1"), "{dbg}");
        assert!(dbg.contains("password"));
        assert!(dbg.contains("v9"));
    }

    /// Walks `[sources.s]` = `table` through [`SourceConfig::from_table`].
    fn parse(table: serde_json::Value) -> (Option<SourceConfig>, Vec<String>) {
        let mut errs = Errors::default();
        let t = Table::new("sources.s", &table, &mut errs).unwrap();
        let out = SourceConfig::from_table(t, Path::new("/etc/qr"), &mut errs);
        (out, errs.0.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn each_type_reads_exactly_its_declared_keys() {
        // The walker lists the keys a reader asked for when it meets an unknown one: that
        // list must be `type` plus the type's KEYS, or the unknown-type and syntax-error
        // paths (which use KEYS) would disagree with the reader.
        for kind in SourceConfig::TYPES {
            let (_, errs) = parse(serde_json::json!({"type": kind, "zzz": 1}));
            let unknown: Vec<_> = errs
                .iter()
                .filter(|e| e.starts_with("sources.s.zzz: unknown key"))
                .collect();
            assert_eq!(unknown.len(), 1, "{kind}: {errs:?}");
            let listed = unknown[0]
                .split("expected one of: ")
                .nth(1)
                .unwrap()
                .trim_end_matches(')');
            let declared = SourceConfig::keys_of(kind).unwrap();
            let mut want: Vec<&str> = declared.iter().copied().chain(["type"]).collect();
            want.sort_unstable();
            assert_eq!(listed, want.join(", "), "{kind}");
        }
    }

    #[test]
    fn an_unknown_type_is_one_error_naming_every_type() {
        // Keys of every source are accepted with an unknown type: only `type` is wrong.
        let mut table = serde_json::Map::new();
        table.insert("type".into(), "hashicorp".into());
        for key in SourceConfig::keys() {
            table.insert(key.into(), "x".into());
        }
        let (out, errs) = parse(serde_json::Value::Object(table));
        assert!(out.is_none());
        assert_eq!(
            errs,
            [
                "sources.s.type: unknown source type (expected \"aws_secrets_manager\", \"file\", \"vault\" or \"aws_ssm\")"
            ]
        );
        let (out, errs) = parse(serde_json::json!({"region": "eu-west-1"}));
        assert!(out.is_none());
        assert_eq!(errs, ["sources.s.type: is required"]);
    }

    #[test]
    fn each_type_parses_into_its_variant() {
        let (out, errs) = parse(serde_json::json!({"type": "file", "path": "secrets"}));
        assert!(errs.is_empty(), "{errs:?}");
        let out = out.unwrap();
        assert_eq!(out.kind(), "file");
        assert_eq!(
            out,
            SourceConfig::File(file::FileConfig {
                path: "/etc/qr/secrets".into()
            })
        );
        let (out, errs) = parse(serde_json::json!({"type": "aws_secrets_manager"}));
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(
            out.unwrap(),
            SourceConfig::AwsSecretsManager(aws::AwsSecretsManagerConfig::default())
        );
    }

    #[test]
    fn type_lists_read_as_a_sentence() {
        assert_eq!(one_of(&[]), "");
        assert_eq!(one_of(&["a"]), "\"a\"");
        assert_eq!(one_of(&["a", "b"]), "\"a\" or \"b\"");
        assert_eq!(one_of(&["a", "b", "c"]), "\"a\", \"b\" or \"c\"");
    }

    #[tokio::test]
    async fn build_all_makes_each_configured_source_under_its_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("s.json"),
            r#"{"password":"CANARY-build-all"}"#,
        )
        .unwrap();
        let mut configs = BTreeMap::new();
        configs.insert(
            "local".to_owned(),
            SourceConfig::File(file::FileConfig {
                path: dir.path().to_owned(),
            }),
        );
        let built = build_all(&configs).await;
        assert_eq!(built.len(), 1);
        let src = &built["local"];
        assert!(matches!(**src, AnySource::File(_)), "{src:?}");
        assert_eq!(src.kind(), "file");
        let v = src.fetch(&SecretRef::current("s")).await.unwrap();
        assert!(v.fields().unwrap().get("password").is_some());
        assert!(!format!("{src:?} {v:?}").contains("CANARY"));
    }
}
