//! AWS Systems Manager Parameter Store source (`type = "aws_ssm"`, through `aws-sdk-ssm`).
//!
//! A job's `secret` is either
//! - **a parameter name** (`/prod/qlik/finance-sql`, or its ARN): `GetParameter` with
//!   decryption; the value is the secret, usually a JSON object (a `SecureString`), and the
//!   version is the parameter's `Version`. `version_id = "N"` reads `name:N`, and
//!   `version_stage = "LABEL"` reads the parameter label `name:LABEL`; or
//! - **a path ending in `/`** (`/prod/qlik/finance-sql/`): one parameter per field.
//!   `GetParametersByPath` (not recursive, with decryption) reads the parameters directly
//!   below the path, and each becomes a field named by its name below the path: parameter
//!   `/prod/qlik/finance-sql/password` is field `password`. `[jobs.fields]` maps a Qlik
//!   property to such a name (`fields = { password = "db-password" }`), exactly as it maps
//!   properties to JSON keys for the other sources. The version is the list of
//!   `name=version` pairs, sorted (or its SHA-256 when that list is long), so a new version
//!   of any one parameter is a change. A path cannot pin versions.
//!
//! [`SecretSource::fetch_many`] reads parameter names in `GetParameters` batches of at most
//! [`BATCH_SIZE`] and falls back to `GetParameter` per name for every name the batch lists as
//! `InvalidParameters` (or does not answer), so each job still gets its own precise error.
//!
//! Errors are classified from the AWS error code, as for Secrets Manager; messages carry the
//! code and AWS's message (escaped, capped), never a value.

use std::{collections::HashMap, fmt, path::Path};

use aws_sdk_ssm::{
    Client,
    config::http::HttpResponse,
    error::{ProvideErrorMetadata, SdkError},
    types::Parameter,
};
use secrecy::SecretString;
use sha2::{Digest, Sha256};

use super::{
    SecretPayload, SecretRef, SecretSource, SecretValue, SourceError, SourceFactory,
    VersionSelector,
    aws::{AwsService, Class},
};
use crate::{
    text,
    walk::{Errors, Table, aws_region, base_url},
};

/// Names per `GetParameters` call (the API's limit).
pub const BATCH_SIZE: usize = 10;
/// The most parameters read below one path (a credential has a handful of fields).
pub const MAX_PARAMETERS_PER_PATH: usize = 50;
/// The largest parameter value accepted (advanced parameters hold at most 8 KiB).
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// The longest `name=version` list kept as a path's version before it is hashed.
const MAX_VERSION_LIST: usize = 256;

/// `[sources.NAME] type = "aws_ssm"`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsSsmConfig {
    /// `region`: overrides the AWS default chain's region.
    pub region: Option<String>,
    /// `endpoint_url`: overrides `AWS_ENDPOINT_URL_SSM` and the default endpoint.
    pub endpoint_url: Option<String>,
}

impl AwsSsmConfig {
    /// The factory on a given loader (tests pass one with fixed credentials): `region` and
    /// `endpoint_url` over it, then the Secrets Manager source's timeouts and retry policy.
    pub async fn build_with(&self, loader: aws_config::ConfigLoader) -> AwsSsm {
        let sdk_config =
            super::aws::sdk_config(loader, self.region.as_deref(), self.endpoint_url.as_deref())
                .await;
        let config = aws_sdk_ssm::config::Builder::from(&sdk_config)
            .timeout_config(super::aws::default_timeout_config())
            .retry_config(super::aws::default_retry_config())
            .build();
        AwsSsm::from_client(Client::from_conf(config))
    }
}

impl SourceFactory for AwsSsmConfig {
    const TYPE: &'static str = "aws_ssm";
    const KEYS: &'static [&'static str] = &["region", "endpoint_url"];
    type Source = AwsSsm;

    /// `region` and `endpoint_url`, both optional (as for `aws_secrets_manager`).
    fn from_table(t: &mut Table<'_>, _base_dir: &Path, errs: &mut Errors) -> Option<Self> {
        let region = aws_region(t, "region", errs);
        let endpoint_url = base_url(t, "endpoint_url", errs).map(|(raw, _)| raw);
        Some(AwsSsmConfig {
            region,
            endpoint_url,
        })
    }

    async fn build(&self) -> AwsSsm {
        self.build_with(aws_config::defaults(aws_config::BehaviorVersion::latest()))
            .await
    }
}

/// SSM Parameter Store.
#[derive(Clone)]
pub struct AwsSsm {
    client: Client,
}

impl fmt::Debug for AwsSsm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsSsm")
            .field("region", &self.client.config().region())
            .finish_non_exhaustive()
    }
}

/// How a ref is read.
enum Target {
    /// `GetParameter(s)` of this name (with `:version` / `:label` when pinned).
    Name(String),
    /// `GetParametersByPath` of this path (no trailing `/`).
    Path(String),
}

/// Checks a ref and says how to read it.
fn target(secret: &SecretRef) -> Result<Target, SourceError> {
    let invalid = |message: &str| SourceError::Invalid {
        id: secret.id.clone(),
        message: message.to_owned(),
    };
    let id = secret.id.as_str();
    if id.is_empty() || id.len() > 2048 || id.chars().any(|c| c.is_control() || c == ' ') {
        return Err(invalid(
            "not a valid SSM parameter name (1 to 2048 characters, no spaces or control characters)",
        ));
    }
    if let Some(path) = id.strip_suffix('/') {
        if !id.starts_with('/') || path.contains("//") {
            return Err(invalid(
                "a parameter path (one parameter per field) starts with '/' and has no empty segment, e.g. \"/prod/db/\"",
            ));
        }
        if secret.version != VersionSelector::default() {
            return Err(invalid(
                "a parameter path (one parameter per field) cannot pin a version: remove version_id / version_stage",
            ));
        }
        return Ok(Target::Path(
            if path.is_empty() { "/" } else { path }.to_owned(),
        ));
    }
    let selector = match &secret.version {
        VersionSelector::Stage(s) if s == "AWSCURRENT" => String::new(),
        VersionSelector::Id(v) if !v.is_empty() && v.chars().all(|c| c.is_ascii_digit()) => {
            format!(":{v}")
        }
        VersionSelector::Id(_) => {
            return Err(invalid(
                "version_id must be an SSM parameter version number (digits)",
            ));
        }
        VersionSelector::Stage(label)
            if label.len() <= 100
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) =>
        {
            format!(":{label}")
        }
        VersionSelector::Stage(_) => {
            return Err(invalid(
                "version_stage must be an SSM parameter label (letters, digits, '.', '_', '-')",
            ));
        }
    };
    Ok(Target::Name(format!("{id}{selector}")))
}

impl AwsSsm {
    /// A client from the standard AWS configuration chain (`AWS_ENDPOINT_URL_SSM` and
    /// `AWS_REGION` are honoured), with the timeouts and retries of the Secrets Manager source.
    pub async fn from_env() -> Self {
        AwsSsmConfig::default().build().await
    }

    /// Wraps an existing client as it is.
    pub fn from_client(client: Client) -> Self {
        AwsSsm { client }
    }

    async fn get_one(&self, secret: &SecretRef, name: &str) -> Result<SecretValue, SourceError> {
        let out = self
            .client
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| classify(secret, &e))?;
        let p = out.parameter().ok_or_else(|| SourceError::Invalid {
            id: secret.id.clone(),
            message: "the GetParameter answer has no Parameter".to_owned(),
        })?;
        value_of(secret, p)
    }

    async fn get_path(&self, secret: &SecretRef, path: &str) -> Result<SecretValue, SourceError> {
        let mut below = PathFields::new(path);
        let mut next: Option<String> = None;
        loop {
            let out = self
                .client
                .get_parameters_by_path()
                .path(path)
                .recursive(false)
                .with_decryption(true)
                .max_results(10)
                .set_next_token(next.take())
                .send()
                .await
                .map_err(|e| classify(secret, &e))?;
            for p in out.parameters() {
                below.add(secret, p)?;
            }
            match out.next_token() {
                Some(t) if !t.is_empty() => next = Some(t.to_owned()),
                _ => break,
            }
        }
        below.into_value(secret)
    }

    /// One `GetParameters` call for up to [`BATCH_SIZE`] names: per name, its answer, or
    /// `None` when the batch did not answer it (listed as invalid, missing, or the call
    /// failed other than by being unavailable).
    async fn get_batch(
        &self,
        names: &[&str],
    ) -> Result<
        HashMap<String, Parameter>,
        SdkError<aws_sdk_ssm::operation::get_parameters::GetParametersError, HttpResponse>,
    > {
        let out = self
            .client
            .get_parameters()
            .set_names(Some(names.iter().map(|n| (*n).to_owned()).collect()))
            .with_decryption(true)
            .send()
            .await?;
        let mut answered = HashMap::new();
        for p in out.parameters() {
            let key = format!(
                "{}{}",
                p.name().unwrap_or_default(),
                p.selector().unwrap_or_default()
            );
            answered.insert(key, p.clone());
        }
        if !out.invalid_parameters().is_empty() {
            tracing::debug!(
                invalid = out.invalid_parameters().len(),
                "GetParameters listed invalid parameters; reading them one by one"
            );
        }
        Ok(answered)
    }
}

/// The value of a parameter: present, non-empty, at most [`MAX_VALUE_BYTES`].
fn checked_value(secret: &SecretRef, p: &Parameter) -> Result<String, SourceError> {
    let invalid = |message: &str| SourceError::Invalid {
        id: secret.id.clone(),
        message: message.to_owned(),
    };
    match p.value() {
        None => Err(invalid("the parameter has no Value")),
        Some("") => Err(invalid("the parameter value is empty")),
        Some(v) if v.len() > MAX_VALUE_BYTES => Err(invalid(&format!(
            "the parameter value is larger than {MAX_VALUE_BYTES} bytes"
        ))),
        Some(v) => Ok(v.to_owned()),
    }
}

/// A parameter as a secret: its value, its version (positive).
fn value_of(secret: &SecretRef, p: &Parameter) -> Result<SecretValue, SourceError> {
    let value = checked_value(secret, p)?;
    if p.version() <= 0 {
        return Err(SourceError::Invalid {
            id: secret.id.clone(),
            message: "the parameter has no positive Version".to_owned(),
        });
    }
    if let VersionSelector::Id(v) = &secret.version
        && v.parse::<i64>().ok() != Some(p.version())
    {
        return Err(SourceError::Invalid {
            id: secret.id.clone(),
            message: format!(
                "asked for version {v}, SSM answered with version {}",
                p.version()
            ),
        });
    }
    Ok(SecretValue {
        version: p.version().to_string(),
        payload: SecretPayload::Text(SecretString::from(value)),
        // GetParameter(s): `LastModifiedDate`, when this version was written.
        created: p.last_modified_date().map(|d| d.secs()),
    })
}

impl SecretSource for AwsSsm {
    fn kind(&self) -> &'static str {
        "aws_ssm"
    }

    async fn fetch(&self, secret: &SecretRef) -> Result<SecretValue, SourceError> {
        let value = match target(secret)? {
            Target::Name(name) => self.get_one(secret, &name).await?,
            Target::Path(path) => self.get_path(secret, &path).await?,
        };
        tracing::debug!(secret_id = %text::printable(&secret.id, 200), version = %value.version, "read secret from SSM Parameter Store");
        Ok(value)
    }

    /// Names in `GetParameters` batches of [`BATCH_SIZE`] (each distinct name asked once);
    /// paths, names the batch did not answer, and names of a failed batch one by one (a
    /// batch that failed as unavailable gives that error to each of its names).
    async fn fetch_many(&self, secrets: &[SecretRef]) -> Vec<Result<SecretValue, SourceError>> {
        let mut out: Vec<Option<Result<SecretValue, SourceError>>> =
            secrets.iter().map(|_| None).collect();
        // Distinct names, in first-seen order, with the refs that ask for each.
        let mut names: Vec<String> = Vec::new();
        let mut askers: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, s) in secrets.iter().enumerate() {
            match target(s) {
                Ok(Target::Name(n)) => {
                    let entry = askers.entry(n.clone()).or_default();
                    if entry.is_empty() {
                        names.push(n);
                    }
                    entry.push(i);
                }
                Ok(Target::Path(_)) => {}
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        for chunk in names.chunks(BATCH_SIZE) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            match self.get_batch(&refs).await {
                Ok(answered) => {
                    for name in chunk {
                        if let Some(p) = answered.get(name) {
                            for &i in &askers[name] {
                                out[i] = Some(value_of(&secrets[i], p));
                            }
                        }
                    }
                }
                Err(e) => {
                    for name in chunk {
                        for &i in &askers[name] {
                            let err = classify(&secrets[i], &e);
                            if err.is_retriable() {
                                out[i] = Some(Err(err));
                            }
                        }
                    }
                }
            }
        }
        // What the batches left: paths, invalid or unanswered names, failed batches.
        let mut results = Vec::with_capacity(secrets.len());
        for (i, slot) in out.into_iter().enumerate() {
            results.push(match slot {
                Some(r) => r,
                None => self.fetch(&secrets[i]).await,
            });
        }
        results
    }
}

/// The parameters directly below a path, gathered page by page into one JSON object.
struct PathFields {
    /// The path with its trailing `/`.
    prefix: String,
    fields: serde_json::Map<String, serde_json::Value>,
    /// `(field, version)` of each parameter.
    versions: Vec<(String, i64)>,
    /// The newest `LastModifiedDate` (seconds).
    newest: Option<i64>,
}

impl PathFields {
    fn new(path: &str) -> Self {
        let prefix = if path == "/" {
            "/".to_owned()
        } else {
            format!("{path}/")
        };
        PathFields {
            prefix,
            fields: serde_json::Map::new(),
            versions: Vec::new(),
            newest: None,
        }
    }

    /// Adds one answered parameter: it must be directly below the path, answered once, and
    /// at most [`MAX_PARAMETERS_PER_PATH`] of them.
    fn add(&mut self, secret: &SecretRef, p: &Parameter) -> Result<(), SourceError> {
        let invalid = |message: String| SourceError::Invalid {
            id: secret.id.clone(),
            message,
        };
        let name = p.name().unwrap_or_default();
        let Some(field) = name
            .strip_prefix(&self.prefix)
            .filter(|f| !f.is_empty() && !f.contains('/') && !f.chars().any(text::is_unsafe))
        else {
            return Err(invalid(format!(
                "GetParametersByPath answered with parameter {} outside the path",
                text::quoted(name, 200)
            )));
        };
        let value = checked_value(secret, p)?;
        if self.fields.insert(field.to_owned(), value.into()).is_some() {
            return Err(invalid(format!(
                "parameter {} was answered twice",
                text::quoted(field, 200)
            )));
        }
        self.versions.push((field.to_owned(), p.version()));
        if let Some(t) = p.last_modified_date().map(|d| d.secs()) {
            self.newest = Some(self.newest.map_or(t, |n| n.max(t)));
        }
        if self.fields.len() > MAX_PARAMETERS_PER_PATH {
            return Err(invalid(format!(
                "more than {MAX_PARAMETERS_PER_PATH} parameters below the path"
            )));
        }
        Ok(())
    }

    /// The secret: the fields as a JSON object, its version the sorted `field=version` list
    /// (hashed when long). Not found when no parameter is directly below the path.
    fn into_value(mut self, secret: &SecretRef) -> Result<SecretValue, SourceError> {
        if self.fields.is_empty() {
            return Err(SourceError::NotFound {
                id: secret.id.clone(),
                detail: ": no parameter directly below this path".to_owned(),
            });
        }
        self.versions.sort();
        let list = (self.versions.iter())
            .map(|(f, v)| format!("{f}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let version = if list.len() <= MAX_VERSION_LIST {
            list
        } else {
            format!(
                "sha256:{}",
                &hex::encode(Sha256::digest(list.as_bytes()))[..16]
            )
        };
        let json = serde_json::Value::Object(self.fields).to_string();
        Ok(SecretValue {
            version,
            payload: SecretPayload::Text(SecretString::from(json)),
            // A path is many parameters: the newest change among them.
            created: self.newest,
        })
    }
}

/// SSM, for [`super::aws::classify_sdk_error`].
const SSM: AwsService = AwsService {
    name: "SSM",
    class_of_code,
};

/// SSM's own error codes (the ones every AWS service shares are classified in `aws`).
fn class_of_code(code: &str) -> Option<Class> {
    Some(match code {
        "ParameterNotFound" | "ParameterVersionNotFound" | "ParameterVersionLabelNotFound" => {
            Class::NotFound
        }
        "InvalidKeyId" | "KMSAccessDeniedException" => Class::AccessDenied,
        "InvalidFilterKey" | "InvalidNextToken" | "InvalidParameter" | "InvalidParameters" => {
            Class::Invalid
        }
        "TooManyUpdates" => Class::Unavailable,
        _ => return None,
    })
}

/// Maps an SDK error to a [`SourceError`] (see [`super::aws::classify_sdk_error`]); a
/// parameter not found names the version or label asked for.
fn classify<E>(secret: &SecretRef, err: &SdkError<E, HttpResponse>) -> SourceError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let (class, message) = match super::aws::classify_sdk_error(secret, err, &SSM) {
        Ok(classified) => classified,
        Err(problem) => return problem,
    };
    let id = secret.id.clone();
    match class {
        Class::NotFound => SourceError::NotFound {
            id,
            detail: format!(
                "{}: {message}",
                match &secret.version {
                    VersionSelector::Id(v) => format!(" (version {})", text::quoted(v, 40)),
                    VersionSelector::Stage(s) if s != "AWSCURRENT" =>
                        format!(" (label {})", text::quoted(s, 100)),
                    VersionSelector::Stage(_) => String::new(),
                }
            ),
        },
        Class::AccessDenied => SourceError::AccessDenied { id, message },
        Class::Invalid => SourceError::Invalid { id, message },
        Class::Unavailable => SourceError::Unavailable {
            id,
            message: text::cap(&message, 600).into_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_ssm::{error::ErrorMetadata, operation::get_parameter::GetParameterError};
    use aws_smithy_types::body::SdkBody;

    use super::*;

    fn r(id: &str, version: VersionSelector) -> SecretRef {
        SecretRef {
            id: id.into(),
            version,
        }
    }

    #[test]
    fn targets() {
        let cur = VersionSelector::default();
        assert!(matches!(target(&r("/a/b", cur.clone())).unwrap(), Target::Name(n) if n == "/a/b"));
        assert!(
            matches!(target(&r("/a/b", VersionSelector::Id("3".into()))).unwrap(), Target::Name(n) if n == "/a/b:3")
        );
        assert!(
            matches!(target(&r("/a/b", VersionSelector::Stage("blue".into()))).unwrap(), Target::Name(n) if n == "/a/b:blue")
        );
        assert!(
            matches!(target(&r("/a/b/", cur.clone())).unwrap(), Target::Path(p) if p == "/a/b")
        );
        for bad in [
            r("", cur.clone()),
            r("a b", cur.clone()),
            r("a/", cur.clone()),
            r("/a//b/", cur.clone()),
            r("/a/", VersionSelector::Id("2".into())),
            r("/a", VersionSelector::Id("x".into())),
            r("/a", VersionSelector::Stage("a:b".into())),
        ] {
            let err = target(&bad).err().expect("refused");
            assert_eq!(err.error_type(), "secret_invalid", "{bad:?}");
        }
    }

    #[test]
    fn error_codes_are_classified_and_escaped() {
        for (code, status, want) in [
            ("ParameterNotFound", 400, "secret_not_found"),
            ("ParameterVersionNotFound", 400, "secret_not_found"),
            ("AccessDeniedException", 400, "secret_access_denied"),
            ("InvalidKeyId", 400, "secret_access_denied"),
            ("ThrottlingException", 400, "secret_source_unavailable"),
            ("InternalServerError", 500, "secret_source_unavailable"),
            ("SomethingNew", 403, "secret_access_denied"),
            ("SomethingNew", 400, "secret_invalid"),
        ] {
            let meta = ErrorMetadata::builder()
                .code(code)
                .message("bad\n\u{1b}[31m thing")
                .build();
            let err: SdkError<GetParameterError, HttpResponse> = SdkError::service_error(
                GetParameterError::generic(meta),
                HttpResponse::new(status.try_into().unwrap(), SdkBody::empty()),
            );
            let e = classify(&r("/a", VersionSelector::default()), &err);
            assert_eq!(e.error_type(), want, "{code}");
            let s = e.to_string();
            assert!(s.contains(code) && !s.contains('\u{1b}'), "{s}");
        }
    }

    #[test]
    fn parameters_are_checked() {
        let cur = r("/a", VersionSelector::default());
        let p = Parameter::builder()
            .name("/a")
            .value("CANARY-v")
            .version(3)
            .build();
        let v = value_of(&cur, &p).unwrap();
        assert_eq!(v.version, "3");
        assert!(!format!("{v:?}").contains("CANARY"));
        let pinned = r("/a", VersionSelector::Id("2".into()));
        assert_eq!(
            value_of(&pinned, &p).unwrap_err().error_type(),
            "secret_invalid"
        );
        for bad in [
            Parameter::builder().name("/a").version(3).build(),
            Parameter::builder().name("/a").value("").version(3).build(),
            Parameter::builder()
                .name("/a")
                .value("x")
                .version(0)
                .build(),
            Parameter::builder()
                .name("/a")
                .value("x".repeat(MAX_VALUE_BYTES + 1))
                .version(1)
                .build(),
        ] {
            assert_eq!(
                value_of(&cur, &bad).unwrap_err().error_type(),
                "secret_invalid"
            );
        }
    }
}
