//! AWS Secrets Manager source (`GetSecretValue` through `aws-sdk-secretsmanager`).
//!
//! Every request names a version explicitly: `VersionStage` (default `AWSCURRENT`) or
//! `VersionId`. Besides being precise, this sidesteps emulators (moto) that answer a request
//! without a stage from a stale default version.
//!
//! Errors are classified into [`SourceError`] from the AWS error code; messages carry the code
//! and AWS's message, never the payload.
//!
//! Batches ([`SecretSource::fetch_many`]) use `BatchGetSecretValue` with a `SecretIdList` of at
//! most [`BATCH_MAX_IDS`] ids (the API's limit; it needs `secretsmanager:BatchGetSecretValue`
//! plus `GetSecretValue` on each secret). That API returns the `AWSCURRENT` version only, so a
//! ref with another stage or a version id is read with `GetSecretValue`; so is every id the
//! batch did not answer: an entry in `Errors`, an id missing from the answer, an entry that
//! does not say it is `AWSCURRENT`, or a failed call. An answer is matched to the id asked for
//! by name or ARN ([`same_secret`]); anything else in it is ignored.
//! [`AwsSecretsManager::api_calls`] counts the requests sent (each batch is one).

use std::{
    error::Error as StdError,
    fmt,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use aws_sdk_secretsmanager::{
    Client,
    config::{http::HttpResponse, retry::RetryConfig, timeout::TimeoutConfig},
    error::{ProvideErrorMetadata, SdkError},
    operation::get_secret_value::{GetSecretValueError, GetSecretValueOutput},
};
use secrecy::{SecretBox, SecretString};

use super::{
    SecretPayload, SecretRef, SecretSource, SecretValue, SourceError, SourceFactory,
    VersionSelector,
};
use crate::walk::{Errors, Table, aws_region, base_url};

/// `arn:aws:secretsmanager:<region>:<account>:secret:` and the name after it, for an ARN;
/// `(None, id)` for a name.
pub(crate) fn split_arn(id: &str) -> (Option<&str>, &str) {
    if id.starts_with("arn:")
        && let Some(at) = id.find(":secret:")
    {
        let (prefix, rest) = id.split_at(at + ":secret:".len());
        return (Some(prefix), rest);
    }
    (None, id)
}

/// The name without the `-XXXXXX` suffix Secrets Manager adds in ARNs (6 alphanumerics).
pub(crate) fn strip_suffix(name: &str) -> &str {
    match name.len().checked_sub(7) {
        Some(cut)
            if name.is_char_boundary(cut)
                && name.as_bytes()[cut] == b'-'
                && name.as_bytes()[cut + 1..]
                    .iter()
                    .all(u8::is_ascii_alphanumeric) =>
        {
            &name[..cut]
        }
        _ => name,
    }
}

/// Whether two Secrets Manager ids name the same secret: equal; or the same name, one of them
/// an ARN whose 6-character suffix is left out by the other (a name or a partial ARN). Two ARNs
/// must agree on partition, region and account.
pub fn same_secret(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    let ((pa, na), (pb, nb)) = (split_arn(a), split_arn(b));
    if let (Some(pa), Some(pb)) = (pa, pb)
        && pa != pb
    {
        return false;
    }
    na == nb || (pa.is_some() && strip_suffix(na) == nb) || (pb.is_some() && strip_suffix(nb) == na)
}

/// TCP connect timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of one HTTP attempt.
pub const OPERATION_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Timeout of a whole operation, retries included.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts per operation (the SDK's standard retry strategy).
pub const MAX_ATTEMPTS: u32 = 3;
/// Ids per `BatchGetSecretValue` call (the API's `SecretIdList` limit).
pub const BATCH_MAX_IDS: usize = 20;
/// Batch calls in flight at once for one [`SecretSource::fetch_many`].
pub const BATCH_CONCURRENCY: usize = 4;

/// The timeouts [`AwsSecretsManager::from_env`] sets on the client.
pub fn default_timeout_config() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(OPERATION_ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build()
}

/// The retry policy [`AwsSecretsManager::from_env`] sets on the client: standard, 3 attempts.
pub fn default_retry_config() -> RetryConfig {
    RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS)
}

/// The shared AWS configuration of `loader` with the optional `region` and `endpoint_url`
/// overrides of a config table applied (every AWS client of the rotator: Secrets Manager,
/// SSM, SQS, DynamoDB).
pub async fn sdk_config(
    mut loader: aws_config::ConfigLoader,
    region: Option<&str>,
    endpoint_url: Option<&str>,
) -> aws_config::SdkConfig {
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region.to_owned()));
    }
    if let Some(endpoint) = endpoint_url {
        loader = loader.endpoint_url(endpoint);
    }
    loader.load().await
}

/// `[sources.NAME] type = "aws_secrets_manager"`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsSecretsManagerConfig {
    /// `region`: overrides the AWS default chain's region.
    pub region: Option<String>,
    /// `endpoint_url`: overrides `AWS_ENDPOINT_URL_SECRETS_MANAGER` and the default endpoint.
    pub endpoint_url: Option<String>,
}

impl AwsSecretsManagerConfig {
    /// The factory on a given loader: `region` and `endpoint_url` are applied over it, then
    /// [`default_timeout_config`] and [`default_retry_config`]. Tests pass a loader with fixed
    /// credentials, so they never touch the process environment.
    pub async fn build_with(&self, loader: aws_config::ConfigLoader) -> AwsSecretsManager {
        let sdk_config =
            sdk_config(loader, self.region.as_deref(), self.endpoint_url.as_deref()).await;
        let config = aws_sdk_secretsmanager::config::Builder::from(&sdk_config)
            .timeout_config(default_timeout_config())
            .retry_config(default_retry_config())
            .build();
        AwsSecretsManager::from_client(Client::from_conf(config))
    }
}

impl SourceFactory for AwsSecretsManagerConfig {
    const TYPE: &'static str = "aws_secrets_manager";
    const KEYS: &'static [&'static str] = &["region", "endpoint_url"];
    type Source = AwsSecretsManager;

    /// `region` (an AWS region name) and `endpoint_url` (a base URL, see
    /// [`base_url`]); both optional.
    fn from_table(t: &mut Table<'_>, _base_dir: &Path, errs: &mut Errors) -> Option<Self> {
        let region = aws_region(t, "region", errs);
        // Read even when absent, so an unknown key's message lists it (before, a table
        // without it was told "expected one of: region, type").
        let endpoint_url = base_url(t, "endpoint_url", errs).map(|(raw, _)| raw);
        Some(AwsSecretsManagerConfig {
            region,
            endpoint_url,
        })
    }

    /// The standard AWS configuration chain ([`AwsSecretsManager::from_env`]) with this
    /// table's overrides.
    async fn build(&self) -> AwsSecretsManager {
        self.build_with(aws_config::defaults(aws_config::BehaviorVersion::latest()))
            .await
    }
}

/// `[a-z0-9-]{0,32}` (an AWS region name such as `eu-west-1`).
/// One id's answer from a batch: `None` when it must be read alone.
type Slot = Option<Result<SecretValue, SourceError>>;

/// AWS Secrets Manager.
#[derive(Clone)]
pub struct AwsSecretsManager {
    client: Client,
    /// Requests sent (`GetSecretValue` and `BatchGetSecretValue`, one per call).
    calls: Arc<AtomicU64>,
}

impl fmt::Debug for AwsSecretsManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsSecretsManager")
            .field("region", &self.client.config().region())
            .finish_non_exhaustive()
    }
}

impl AwsSecretsManager {
    /// A client from the standard AWS configuration chain (environment, profiles, IRSA/web
    /// identity, container and instance metadata; `AWS_ENDPOINT_URL_SECRETS_MANAGER` and
    /// `AWS_REGION` are honoured), with [`default_timeout_config`] and [`default_retry_config`]:
    /// what `[sources.NAME] type = "aws_secrets_manager"` without `region` or `endpoint_url`
    /// builds.
    pub async fn from_env() -> Self {
        AwsSecretsManagerConfig::default().build().await
    }

    /// Wraps an existing client as it is (its timeouts and retry policy are kept).
    pub fn from_client(client: Client) -> Self {
        AwsSecretsManager {
            client,
            calls: Arc::default(),
        }
    }

    /// How many requests this source has sent (`GetSecretValue` and `BatchGetSecretValue`
    /// calls; SDK retries of one call are not counted again).
    pub fn api_calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// One `BatchGetSecretValue` for up to [`BATCH_MAX_IDS`] ids of `AWSCURRENT`: one slot
    /// per id, `None` where the batch gave no usable answer (the caller reads it alone).
    async fn batch(&self, ids: &[&SecretRef]) -> Vec<Option<Result<SecretValue, SourceError>>> {
        let mut out: Vec<Option<Result<SecretValue, SourceError>>> =
            ids.iter().map(|_| None).collect();
        self.calls.fetch_add(1, Ordering::Relaxed);
        let request = self
            .client
            .batch_get_secret_value()
            .set_secret_id_list(Some({
                // Each id once (a repeated id is answered once; its other slots are read alone).
                let mut list: Vec<String> = Vec::with_capacity(ids.len());
                for r in ids {
                    if !list.contains(&r.id) {
                        list.push(r.id.clone());
                    }
                }
                list
            }));
        let output = match request.send().await {
            Ok(o) => o,
            Err(e) => {
                let code = e.code().unwrap_or("no error code");
                tracing::debug!(
                    ids = ids.len(),
                    code,
                    "BatchGetSecretValue failed; reading the secrets one by one."
                );
                return out;
            }
        };
        for entry in output.secret_values.unwrap_or_default() {
            let current = entry
                .version_stages
                .as_ref()
                .is_none_or(|stages| stages.iter().any(|s| s == "AWSCURRENT"));
            let slot = ids.iter().position(|r| {
                [entry.name.as_deref(), entry.arn.as_deref()]
                    .into_iter()
                    .flatten()
                    .any(|answered| same_secret(&r.id, answered))
            });
            let Some(slot) = slot.filter(|&i| out[i].is_none() && current) else {
                continue;
            };
            let value = value_from_output(
                ids[slot],
                GetSecretValueOutput::builder()
                    .set_version_id(entry.version_id)
                    .set_secret_string(entry.secret_string)
                    .set_secret_binary(entry.secret_binary)
                    .set_created_date(entry.created_date)
                    .build(),
            );
            // An unusable entry is read again alone, which reports it precisely.
            out[slot] = value.ok().map(Ok);
        }
        // Per-id `Errors` leave their slot empty: each such id is read alone.
        out
    }
}

impl SecretSource for AwsSecretsManager {
    fn kind(&self) -> &'static str {
        "aws_secrets_manager"
    }

    async fn fetch_many(&self, secrets: &[SecretRef]) -> Vec<Result<SecretValue, SourceError>> {
        use futures_util::StreamExt;
        let current = VersionSelector::default();
        let batchable: Vec<usize> = (0..secrets.len())
            .filter(|&i| secrets[i].version == current)
            .collect();
        let mut out: Vec<Option<Result<SecretValue, SourceError>>> =
            secrets.iter().map(|_| None).collect();
        if batchable.len() > 1 {
            let chunks: Vec<Vec<usize>> = batchable
                .chunks(BATCH_MAX_IDS)
                .map(<[usize]>::to_vec)
                .collect();
            let answers: Vec<(Vec<usize>, Vec<Slot>)> = futures_util::stream::iter(chunks)
                .map(|chunk: Vec<usize>| {
                    let refs: Vec<&SecretRef> = chunk.iter().map(|&i| &secrets[i]).collect();
                    async move {
                        let answer = self.batch(&refs).await;
                        (chunk, answer)
                    }
                })
                .buffered(BATCH_CONCURRENCY)
                .collect()
                .await;
            for (chunk, answer) in answers {
                for (&i, value) in chunk.iter().zip(answer) {
                    out[i] = value;
                }
            }
        }
        let mut results = Vec::with_capacity(secrets.len());
        for (secret, done) in secrets.iter().zip(out) {
            results.push(match done {
                Some(value) => value,
                None => self.fetch(secret).await,
            });
        }
        results
    }

    async fn fetch(&self, secret: &SecretRef) -> Result<SecretValue, SourceError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let request = self.client.get_secret_value().secret_id(&secret.id);
        let request = match &secret.version {
            VersionSelector::Stage(stage) => request.version_stage(stage),
            VersionSelector::Id(id) => request.version_id(id),
        };
        match request.send().await {
            Ok(output) => {
                let value = value_from_output(secret, output)?;
                tracing::debug!(secret_id = %secret.id, version = %value.version, "read secret from AWS Secrets Manager");
                Ok(value)
            }
            Err(err) => Err(classify(secret, &err)),
        }
    }
}

fn value_from_output(
    secret: &SecretRef,
    output: GetSecretValueOutput,
) -> Result<SecretValue, SourceError> {
    let invalid = |message: &str| SourceError::Invalid {
        id: secret.id.clone(),
        message: message.to_owned(),
    };
    let GetSecretValueOutput {
        version_id,
        secret_string,
        secret_binary,
        created_date,
        ..
    } = output;
    // GetSecretValue's `CreatedDate`: "The date and time that this version of the secret was
    // created" (the API reference), i.e. the version's, not the secret's.
    let created = created_date.map(|d| d.secs());
    let version = version_id
        .filter(|v| !v.is_empty())
        .ok_or_else(|| invalid("the response has no VersionId"))?;
    let payload = match (secret_string, secret_binary) {
        (Some(text), _) if !text.is_empty() => SecretPayload::Text(SecretString::from(text)),
        (_, Some(blob)) if !blob.as_ref().is_empty() => {
            SecretPayload::Binary(SecretBox::new(Box::new(blob.into_inner())))
        }
        (Some(_), _) | (_, Some(_)) => return Err(invalid("the secret value is empty")),
        (None, None) => {
            return Err(invalid(
                "the response has neither SecretString nor SecretBinary",
            ));
        }
    };
    Ok(SecretValue {
        version,
        payload,
        created,
    })
}

/// What kind of failure an AWS error stands for; each source words it with its own hints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    NotFound,
    AccessDenied,
    Invalid,
    Unavailable,
}

/// An AWS service whose errors [`classify_sdk_error`] classifies: its name in messages and
/// the error codes of its own (the codes every AWS service shares are in `common_class_of_code`).
pub(crate) struct AwsService {
    /// How messages name the service: "Secrets Manager", "SSM".
    pub name: &'static str,
    /// The class of one of the service's own error codes.
    pub class_of_code: fn(&str) -> Option<Class>,
}

/// Secrets Manager, for [`classify_sdk_error`].
const SECRETS_MANAGER: AwsService = AwsService {
    name: "Secrets Manager",
    class_of_code,
};

/// The error codes of authentication, validation, throttling and server failures that every
/// AWS (JSON protocol) service answers with.
fn common_class_of_code(code: &str) -> Option<Class> {
    Some(match code {
        "AccessDeniedException"
        | "AccessDenied"
        | "UnrecognizedClientException"
        | "InvalidClientTokenId"
        | "InvalidSignatureException"
        | "SignatureDoesNotMatch"
        | "IncompleteSignature"
        | "MissingAuthenticationToken"
        | "ExpiredToken"
        | "ExpiredTokenException"
        | "RequestExpired" => Class::AccessDenied,
        "ValidationException" => Class::Invalid,
        "InternalFailure"
        | "InternalServerError"
        | "ServiceUnavailable"
        | "ThrottlingException"
        | "Throttling"
        | "RequestLimitExceeded"
        | "RequestTimeout" => Class::Unavailable,
        _ => return None,
    })
}

/// Secrets Manager's own error codes.
fn class_of_code(code: &str) -> Option<Class> {
    Some(match code {
        "ResourceNotFoundException" => Class::NotFound,
        "DecryptionFailure" | "InvalidToken" => Class::AccessDenied,
        "InvalidRequestException" | "InvalidParameterException" => Class::Invalid,
        "InternalServiceError"
        | "ServiceUnavailableException"
        | "TooManyRequestsException"
        | "LimitExceededException"
        | "RequestTimeoutException" => Class::Unavailable,
        _ => return None,
    })
}

/// The class of an answer without a known error code.
fn class_of_status(status: u16) -> Class {
    match status {
        401 | 403 => Class::AccessDenied,
        404 => Class::NotFound,
        408 | 429 => Class::Unavailable,
        400..=499 => Class::Invalid,
        _ => Class::Unavailable,
    }
}

/// Classifies an SDK error of `service` from its error code (the service's own, then the
/// common ones), its HTTP status, or its transport failure; the message holds the code and the
/// AWS message (escaped, capped), never a response body. A setup problem (no credentials, no
/// region) is returned as the final [`SourceError`] at once.
pub(crate) fn classify_sdk_error<E>(
    secret: &SecretRef,
    err: &SdkError<E, HttpResponse>,
    service: &AwsService,
) -> Result<(Class, String), SourceError>
where
    E: ProvideErrorMetadata + StdError + 'static,
{
    if matches!(
        err,
        SdkError::DispatchFailure(_) | SdkError::ConstructionFailure(_)
    ) && let Some(problem) = setup_problem(secret, err, service.name)
    {
        return Err(problem);
    }
    let name = service.name;
    let status = err.raw_response().map(|r| r.status().as_u16());
    let cause = |e: &(dyn StdError + 'static)| crate::text::printable(&error_chain(e), MAX_CAUSE);
    Ok(match err {
        SdkError::ServiceError(ctx) => service_error(ctx.err(), status, service),
        SdkError::TimeoutError(_) => (Class::Unavailable, format!("request to {name} timed out")),
        SdkError::DispatchFailure(failure) => {
            let kind = if failure.is_timeout() {
                "timed out"
            } else if failure.is_io() {
                "connection failed"
            } else {
                "failed"
            };
            let chain = (failure.as_connector_error())
                .map(|e| cause(e))
                .unwrap_or_default();
            let message = with_cause(format!("request to {name} {kind}"), &chain);
            (Class::Unavailable, message)
        }
        SdkError::ResponseError(_) => (
            Class::Unavailable,
            format!(
                "unreadable response from {name}{}",
                status.map(|s| format!(" (HTTP {s})")).unwrap_or_default()
            ),
        ),
        SdkError::ConstructionFailure(_) => (
            Class::Invalid,
            with_cause(format!("could not build the {name} request"), &cause(err)),
        ),
        _ => (
            Class::Unavailable,
            with_cause(format!("{name} request failed"), &cause(err)),
        ),
    })
}

/// `message: cause`, or `message` alone when there is no cause.
fn with_cause(message: String, cause: &str) -> String {
    if cause.is_empty() {
        message
    } else {
        format!("{message}: {cause}")
    }
}

/// The class and message of an error the service answered: its code (else the HTTP status)
/// and its AWS message on one escaped, capped line.
fn service_error<E: ProvideErrorMetadata>(
    e: &E,
    status: Option<u16>,
    service: &AwsService,
) -> (Class, String) {
    let code = e.code();
    let class = code
        .and_then(|c| (service.class_of_code)(c).or_else(|| common_class_of_code(c)))
        .or(status.map(class_of_status))
        .unwrap_or(Class::Unavailable);
    let mut message = match (code, status) {
        (Some(code), _) => code.to_owned(),
        (None, Some(status)) => format!("HTTP {status} without an AWS error code"),
        (None, None) => "error without an AWS error code".to_owned(),
    };
    if let Some(m) = e.message() {
        // AWS (and moto) messages sometimes carry runs of spaces and newlines.
        let m = m.split_whitespace().collect::<Vec<_>>().join(" ");
        if !m.is_empty() {
            message.push_str(": ");
            message.push_str(&crate::text::printable(&m, MAX_CAUSE));
        }
    }
    (class, message)
}

fn selector_detail(selector: &VersionSelector) -> String {
    match selector {
        VersionSelector::Stage(stage) if stage == "AWSCURRENT" => String::new(),
        VersionSelector::Stage(stage) => format!(" (version stage {stage:?})"),
        VersionSelector::Id(id) => format!(" (version id {id:?})"),
    }
}

/// `a: b: c` from an error and its sources, skipping repeats.
fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if !text.is_empty() && parts.last() != Some(&text) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// What the default AWS credential chain tries, in order, and how to set each: the hint of
/// `secret_no_credentials`.
pub const CREDENTIAL_CHAIN_HINT: &str = "tried, in order: environment (set AWS_ACCESS_KEY_ID and \
     AWS_SECRET_ACCESS_KEY), profile (AWS_PROFILE in ~/.aws/credentials or ~/.aws/config), web \
     identity / IRSA (AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN, set by EKS for a service \
     account with eks.amazonaws.com/role-arn), container credentials (ECS task role) and the \
     EC2 instance role (instance metadata); set one of them";

/// Longest cause or AWS message shown in an error (characters).
const MAX_CAUSE: usize = 300;

/// A problem of the AWS client's setup rather than of the request: no credentials from the
/// default chain (→ [`SourceError::NoCredentials`], with what was tried) or no region (→
/// [`SourceError::Unconfigured`], a configuration error). Both are final within a run. The
/// cause is one escaped, capped line (never the SDK's multi-line dump). Shared with the SSM
/// source (`service` names the AWS service).
pub(crate) fn setup_problem(
    secret: &SecretRef,
    err: &(dyn StdError + 'static),
    service: &str,
) -> Option<SourceError> {
    let chain = error_chain(err);
    let cause = crate::text::printable(
        &chain.split_whitespace().collect::<Vec<_>>().join(" "),
        MAX_CAUSE,
    );
    let mut next = Some(err);
    let mut credentials = false;
    while let Some(e) = next {
        credentials |= e
            .downcast_ref::<aws_credential_types::provider::error::CredentialsError>()
            .is_some();
        next = e.source();
    }
    let lower = chain.to_ascii_lowercase();
    if lower.contains("missing region") || lower.contains("signing region") {
        return Some(SourceError::Unconfigured {
            id: secret.id.clone(),
            message: format!(
                "no AWS region for {service}: set region = \"…\" in the source's [sources.NAME] table, or AWS_REGION (or a region in the AWS profile); not retried ({cause})"
            ),
        });
    }
    if credentials || lower.contains("no providers in chain provided credentials") {
        return Some(SourceError::NoCredentials {
            id: secret.id.clone(),
            message: format!(
                "no AWS credentials for {service}: {CREDENTIAL_CHAIN_HINT} (cause: {cause})"
            ),
        });
    }
    None
}

/// Maps an SDK error to a [`SourceError`] (see [`classify_sdk_error`]), with what to check
/// when the secret is not found or access is denied.
fn classify(secret: &SecretRef, err: &SdkError<GetSecretValueError, HttpResponse>) -> SourceError {
    let (class, message) = match classify_sdk_error(secret, err, &SECRETS_MANAGER) {
        Ok(classified) => classified,
        Err(problem) => return problem,
    };
    let id = secret.id.clone();
    match class {
        Class::NotFound => SourceError::NotFound {
            id,
            detail: format!(
                "{}: {message} (check the job's `secret` (name or ARN), its version, and the source's region)",
                selector_detail(&secret.version)
            ),
        },
        Class::AccessDenied => SourceError::AccessDenied {
            id,
            message: format!(
                "{message} (the AWS identity needs secretsmanager:GetSecretValue on this secret, and kms:Decrypt on its KMS key)"
            ),
        },
        Class::Invalid => SourceError::Invalid { id, message },
        Class::Unavailable => SourceError::Unavailable { id, message },
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_secretsmanager::error::ErrorMetadata;
    use aws_smithy_types::body::SdkBody;

    use super::*;

    #[test]
    fn ids_match_by_arn_name_and_suffixless_arn() {
        const ARN: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:app/db-AbC123";
        let partial = "arn:aws:secretsmanager:us-east-1:123456789012:secret:app/db";
        for (a, b, same) in [
            (ARN, ARN, true),
            (ARN, "app/db", true),
            ("app/db", ARN, true),
            (ARN, partial, true),
            (partial, "app/db", true),
            ("app/db", "app/db", true),
            ("app/db", "app/dbx", false),
            ("app/db", "app/db-AbC123", false),
            (
                ARN,
                "arn:aws:secretsmanager:us-east-1:123456789012:secret:app/db-XyZ789",
                false,
            ),
            (
                ARN,
                "arn:aws:secretsmanager:eu-west-1:123456789012:secret:app/db-AbC123",
                false,
            ),
            (
                ARN,
                "arn:aws:secretsmanager:us-east-1:999999999999:secret:app/db",
                false,
            ),
            (ARN, "app", false),
            ("", "app/db", false),
        ] {
            assert_eq!(same_secret(a, b), same, "{a} ~ {b}");
            assert_eq!(same_secret(b, a), same, "{b} ~ {a}");
        }
        assert_eq!(strip_suffix("é-AbC123"), "é");
        assert_eq!(strip_suffix("ééé"), "ééé");
        assert_eq!(strip_suffix("-AbC12"), "-AbC12");
    }

    fn service_error(
        code: Option<&str>,
        status: u16,
    ) -> SdkError<GetSecretValueError, HttpResponse> {
        let mut meta = ErrorMetadata::builder().message("went   wrong\n here");
        if let Some(code) = code {
            meta = meta.code(code);
        }
        SdkError::service_error(
            GetSecretValueError::generic(meta.build()),
            HttpResponse::new(status.try_into().unwrap(), SdkBody::empty()),
        )
    }

    fn current() -> SecretRef {
        SecretRef::current("app/db")
    }

    #[test]
    fn service_error_codes_are_classified() {
        let cases = [
            ("ResourceNotFoundException", 400, "secret_not_found"),
            ("AccessDeniedException", 400, "secret_access_denied"),
            ("DecryptionFailure", 400, "secret_access_denied"),
            ("UnrecognizedClientException", 400, "secret_access_denied"),
            ("InvalidClientTokenId", 403, "secret_access_denied"),
            ("ExpiredTokenException", 400, "secret_access_denied"),
            ("InvalidSignatureException", 400, "secret_access_denied"),
            ("InvalidRequestException", 400, "secret_invalid"),
            ("InvalidParameterException", 400, "secret_invalid"),
            ("InternalServiceError", 500, "secret_source_unavailable"),
            ("ThrottlingException", 400, "secret_source_unavailable"),
            ("SomethingNew", 503, "secret_source_unavailable"),
            ("SomethingNew", 403, "secret_access_denied"),
            ("SomethingNew", 400, "secret_invalid"),
        ];
        for (code, status, expected) in cases {
            let err = classify(&current(), &service_error(Some(code), status));
            assert_eq!(err.error_type(), expected, "{code} {status}: {err}");
            assert_eq!(err.is_retriable(), expected == "secret_source_unavailable");
            let text = err.to_string();
            assert!(text.contains(code), "{text}");
            assert!(text.contains("went wrong here"), "{text}");
        }
    }

    #[test]
    fn missing_code_falls_back_to_http_status() {
        for (status, expected) in [
            (403, "secret_access_denied"),
            (404, "secret_not_found"),
            (429, "secret_source_unavailable"),
            (500, "secret_source_unavailable"),
        ] {
            let err = classify(&current(), &service_error(None, status));
            assert_eq!(err.error_type(), expected, "{status}: {err}");
            assert!(err.to_string().contains(&format!("HTTP {status}")), "{err}");
        }
    }

    #[test]
    fn not_found_names_the_selector_unless_default() {
        let err = classify(
            &SecretRef {
                id: "a".into(),
                version: VersionSelector::Stage("AWSPENDING".into()),
            },
            &service_error(Some("ResourceNotFoundException"), 400),
        );
        assert!(
            err.to_string()
                .starts_with(r#"secret "a" not found (version stage "AWSPENDING"): "#),
            "{err}"
        );
        let err = classify(
            &SecretRef::current("a"),
            &service_error(Some("ResourceNotFoundException"), 400),
        );
        assert!(
            err.to_string()
                .starts_with(r#"secret "a" not found: ResourceNotFoundException"#),
            "{err}"
        );
    }

    #[test]
    fn timeouts_are_unavailable() {
        let err: SdkError<GetSecretValueError, HttpResponse> = SdkError::timeout_error("slow");
        let err = classify(&current(), &err);
        assert_eq!(err.error_type(), "secret_source_unavailable");
        assert!(err.is_retriable());
        assert!(err.to_string().contains("timed out"), "{err}");
    }

    fn dispatch(
        cause: Box<dyn StdError + Send + Sync>,
    ) -> SdkError<GetSecretValueError, HttpResponse> {
        SdkError::dispatch_failure(aws_sdk_secretsmanager::error::ConnectorError::other(
            cause, None,
        ))
    }

    #[test]
    fn no_credentials_says_what_was_tried_in_one_capped_line_and_is_final() {
        // What the default chain returns when nothing provides credentials, with a
        // multi-line cause as the IMDS provider gives.
        let cause = aws_credential_types::provider::error::CredentialsError::not_loaded(
            "failed to load IMDS session token:\n  dispatch failure\n".repeat(40),
        );
        let err = classify(&current(), &dispatch(Box::new(cause)));
        assert_eq!(err.error_type(), "secret_no_credentials");
        assert!(!err.is_retriable());
        let text = err.to_string();
        for hint in [
            "AWS_ACCESS_KEY_ID",
            "AWS_PROFILE",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "ECS task role",
            "EC2 instance role",
        ] {
            assert!(text.contains(hint), "{hint}: {text}");
        }
        assert!(!text.contains('\n'), "one line: {text}");
        assert!(text.chars().count() < 1200, "capped: {}", text.len());
    }

    #[test]
    fn access_denied_and_not_found_say_what_to_check() {
        let err = classify(
            &current(),
            &service_error(Some("AccessDeniedException"), 400),
        );
        assert_eq!(err.error_type(), "secret_access_denied");
        assert!(
            err.to_string()
                .contains("needs secretsmanager:GetSecretValue on this secret, and kms:Decrypt"),
            "{err}"
        );
        let err = classify(
            &current(),
            &service_error(Some("ResourceNotFoundException"), 400),
        );
        assert!(
            err.to_string()
                .contains("check the job's `secret` (name or ARN)"),
            "{err}"
        );
    }

    #[test]
    fn hostile_aws_messages_and_causes_are_escaped_and_capped() {
        let hostile = format!("evil\u{1b}[31m\r\nline {}", "x".repeat(5000));
        let meta = ErrorMetadata::builder()
            .code("ThrottlingException")
            .message(&hostile)
            .build();
        let err = SdkError::service_error(
            GetSecretValueError::generic(meta),
            HttpResponse::new(400.try_into().unwrap(), SdkBody::empty()),
        );
        let dispatched = dispatch(hostile.clone().into());
        for err in [
            classify(&current(), &err),
            classify(&current(), &dispatched),
        ] {
            assert_eq!(err.error_type(), "secret_source_unavailable", "{err}");
            let text = err.to_string();
            assert!(text.contains("evil"), "{text}");
            assert!(!text.chars().any(char::is_control), "escaped: {text:?}");
            assert!(text.chars().count() < 1000, "capped: {}", text.len());
        }
        assert!(
            classify(&current(), &dispatched)
                .to_string()
                .contains("request to Secrets Manager failed: "),
            "the transport cause is kept"
        );
    }

    #[test]
    fn codes_every_aws_service_shares_are_classified_for_each_service() {
        let ssm = AwsService {
            name: "SSM",
            class_of_code: |_| None,
        };
        for (code, class) in [
            ("ExpiredTokenException", Class::AccessDenied),
            ("ValidationException", Class::Invalid),
            ("RequestLimitExceeded", Class::Unavailable),
            // Secrets Manager's own codes mean nothing to another service: its status decides.
            ("ResourceNotFoundException", Class::Invalid),
            ("DecryptionFailure", Class::Invalid),
        ] {
            let got = classify_sdk_error(&current(), &service_error(Some(code), 400), &ssm);
            assert_eq!(got.map(|(c, _)| c).ok(), Some(class), "{code}");
        }
        let slow: SdkError<GetSecretValueError, HttpResponse> = SdkError::timeout_error("slow");
        let got = classify_sdk_error(&current(), &slow, &ssm);
        assert_eq!(got.unwrap().1, "request to SSM timed out");
    }

    #[test]
    fn a_missing_region_is_a_configuration_error_not_retried() {
        let err = classify(
            &current(),
            &dispatch("Invalid Configuration: Missing Region".into()),
        );
        assert_eq!(err.error_type(), "secret_source_config");
        assert!(!err.is_retriable());
        assert!(
            err.to_string()
                .contains("[sources.NAME] table, or AWS_REGION"),
            "{err}"
        );
        // An ordinary connection failure stays retriable.
        let err = classify(&current(), &dispatch("connection refused".into()));
        assert_eq!(err.error_type(), "secret_source_unavailable");
        assert!(err.is_retriable());
    }

    fn output()
    -> aws_sdk_secretsmanager::operation::get_secret_value::builders::GetSecretValueOutputBuilder
    {
        GetSecretValueOutput::builder().version_id("v-1")
    }

    #[test]
    fn output_payloads() {
        let v = value_from_output(&current(), output().secret_string("s").build()).unwrap();
        assert_eq!(v.version, "v-1");
        assert!(matches!(v.payload, SecretPayload::Text(_)));
        let v = value_from_output(
            &current(),
            output()
                .secret_binary(aws_sdk_secretsmanager::primitives::Blob::new(vec![1, 2]))
                .build(),
        )
        .unwrap();
        assert!(matches!(v.payload, SecretPayload::Binary(_)));

        let err = value_from_output(&current(), output().build()).unwrap_err();
        assert_eq!(err.error_type(), "secret_invalid");
        assert!(err.to_string().contains("neither"), "{err}");
        let err = value_from_output(&current(), output().secret_string("").build()).unwrap_err();
        assert_eq!(err.error_type(), "secret_invalid");
        let err = value_from_output(
            &current(),
            GetSecretValueOutput::builder().secret_string("x").build(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("VersionId"), "{err}");
    }
}
