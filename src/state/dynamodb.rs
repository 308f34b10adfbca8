//! The DynamoDB state backend (`[state] backend = "dynamodb"`): several replicas share one
//! table, and per-job leases with fencing counters make each due rotation happen once.
//!
//! # Table design
//!
//! One table, two string keys `pk` (partition) and `sk` (sort), on-demand capacity, TTL on the
//! attribute `ttl` (deploy/aws/state-table.yaml). Three kinds of item:
//!
//! | item | `pk` | `sk` | other attributes |
//! |---|---|---|---|
//! | applied version | `state` | the state key | `connection_id` S, `applied_version` S, `applied_at` N, `checked_at` N, `failed_version` S (optional: a version that failed verify or its canary) |
//! | lease | `lease` | the job name | `owner` S, `expires_at` N (Unix s), `fence` N |
//! | attempt | `history` | `<at_ms, 20 digits>#<16 hex>` | `at_ms` N, `job` S, `connection` S, `outcome` S, `stage` S, `error_type` S, `secret_version` S, `duration_ms` N, `ttl` N |
//!
//! Applied versions and leases are each one partition, read with strongly consistent
//! `Query`/`GetItem`: a replica that has just taken a lease over sees the last record of the
//! replica it replaced. Attempts sort by time, so `history` is one `Query` newest first
//! (filters on job and connection are applied by DynamoDB); `ttl` lets DynamoDB delete them
//! after the retention, and [`StateBackend::prune_history`] deletes them explicitly too.
//! Only attempts carry `ttl`: a lease item must never vanish, or its fencing counter would
//! start again at 1 and a stale holder's fence could become current again. For the same reason
//! a lease is released by setting its expiry to 0, never by deleting it.
//!
//! # Leases and fences
//!
//! - **acquire**: `UpdateItem` conditioned on `attribute_not_exists(pk) OR expires_at < :now`
//!   sets the owner and the expiry and adds 1 to `fence` (a lapsed lease taken again by its
//!   own owner gets a new fence too, so a run of its that outlived the lease stays refused).
//!   When the condition fails, DynamoDB returns the item (`ReturnValuesOnConditionCheckFailure`):
//!   another owner's live lease is `Ok(None)` after this one call; this owner's live lease is
//!   renewed by `UpdateItem` conditioned on `owner = :me AND fence = :fence` (same fence).
//!   A replica refused a lease remembers until when it is held and does not ask again before
//!   then (a lease released early is taken by the others only at its original expiry).
//! - **record** / **touch** with a lease: one `TransactWriteItems` whose `ConditionCheck`
//!   requires `owner = :me AND fence = :fence` on the lease item; a lease that moved on makes
//!   the whole write fail with [`StateError::LeaseLost`].
//!
//! Expiry compares the callers' clocks (`now` is passed in): replicas need clocks within a
//! small fraction of the lease TTL of each other (NTP).
//!
//! # Trust
//!
//! Everything read from the table is checked: types, sizes ([`MAX_FIELD_CHARS`]), numbers in
//! range. A malformed applied-version or attempt item is skipped with a warning (an applied
//! version read as absent means one more, idempotent PATCH of the current version, after
//! which the item is rewritten); a malformed lease item is an error, since nobody could take
//! it over. Names and AWS messages are escaped ([`crate::text`]) before they are logged or put
//! in an error. Nothing here ever sees a secret value: only version ids.
//!
//! Every call has a connect, attempt and operation timeout ([`default_timeout_config`]): a
//! replica that cannot reach the table gets an error within [`OPERATION_TIMEOUT`] and stops
//! rotating rather than wait.

use std::{
    collections::{BTreeMap, HashMap},
    error::Error as StdError,
    fmt,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use aws_sdk_dynamodb::{
    Client,
    config::{http::HttpResponse, retry::RetryConfig, timeout::TimeoutConfig},
    error::{ProvideErrorMetadata, SdkError},
    operation::{transact_write_items::TransactWriteItemsError, update_item::UpdateItemError},
    types::{
        AttributeValue, ConditionCheck, DeleteRequest, KeyType, Put, ReturnValue,
        ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TableStatus, TransactWriteItem,
        Update, WriteRequest,
    },
};

use super::{
    Attempt, CHECKED_AT_GRANULARITY_SECS, HistoryQuery, JobState, Lease, StateBackend, StateError,
};
use crate::text;

/// TCP connect timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Timeout of one HTTP attempt.
pub const OPERATION_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// Timeout of a whole operation, retries included: well under half the default lease TTL
/// (30 s), so a renewal that fails leaves time to stop before the lease lapses.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(6);
/// Attempts per operation (the SDK's standard retry strategy).
pub const MAX_ATTEMPTS: u32 = 3;

/// Attempts of a transaction that DynamoDB cancels for a conflicting request.
const TRANSACTION_ATTEMPTS: u32 = 4;

/// The longest string accepted from an item (names, version ids, owner ids, labels).
pub const MAX_FIELD_CHARS: usize = 1024;
/// The most attempts one [`StateBackend::history`] call returns (also when `limit` is 0).
pub const MAX_HISTORY_ROWS: usize = 10_000;
/// The most pages one `Query` loop reads (1 MB each at most, by DynamoDB's rules).
const MAX_PAGES: usize = 10_000;

/// The table's partition key (a string).
pub const PARTITION_KEY: &str = "pk";
/// The table's sort key (a string).
pub const SORT_KEY: &str = "sk";
/// The TTL attribute (on attempt items only).
pub const TTL_ATTRIBUTE: &str = "ttl";
/// Every IAM action the backend calls on the table (deploy/aws/iam-policy.json grants
/// exactly these, on the table's ARN only). Transactions need no action of their own, only
/// those of their parts (`PutItem`, `UpdateItem`, `ConditionCheckItem`).
pub const IAM_ACTIONS: &[&str] = &[
    "dynamodb:DescribeTable",
    "dynamodb:GetItem",
    "dynamodb:Query",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:ConditionCheckItem",
    "dynamodb:BatchWriteItem",
];

const PK_STATE: &str = "state";
const PK_LEASE: &str = "lease";
const PK_HISTORY: &str = "history";

/// How long printed names and messages from outside may get.
const SHOWN_CHARS: usize = 128;

/// The timeouts every DynamoDB client of the backend gets.
pub fn default_timeout_config() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(OPERATION_ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build()
}

/// The retry policy every DynamoDB client of the backend gets: standard, 3 attempts.
pub fn default_retry_config() -> RetryConfig {
    RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS)
}

/// Whether `name` is a valid DynamoDB table name: 3–255 of `a-z A-Z 0-9 _ - .`.
pub fn is_table_name(name: &str) -> bool {
    (3..=255).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// The DynamoDB state backend (see the module docs).
pub struct DynamoState {
    client: Client,
    table: String,
    history_retention: Duration,
    closed: AtomicBool,
    /// Per state key, the last time this process saw its version current (the later of
    /// `applied_at` and `checked_at`, from its own reads and writes): a touch within
    /// [`CHECKED_AT_GRANULARITY_SECS`] of it sends nothing.
    seen_current: Mutex<HashMap<String, i64>>,
    /// Per job, until when another owner's lease was live when last seen: no request is sent
    /// for it before then (it cannot be taken earlier), so N replicas cost one conditional
    /// write per lease period for a job they do not run, not one per run.
    held_elsewhere: Mutex<HashMap<String, (i64, String)>>,
}

impl fmt::Debug for DynamoState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynamoState")
            .field("table", &self.table)
            .field("region", &self.client.config().region())
            .finish_non_exhaustive()
    }
}

impl DynamoState {
    /// A backend on `table` from the standard AWS configuration chain (environment, profiles,
    /// IRSA/web identity, container and instance metadata; `AWS_ENDPOINT_URL_DYNAMODB` and
    /// `AWS_REGION` are honoured), `region` overriding the chain's region, with
    /// [`default_timeout_config`] and [`default_retry_config`].
    pub async fn connect(table: &str, region: Option<&str>, history_retention: Duration) -> Self {
        let loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        let sdk_config = crate::secrets::aws::sdk_config(loader, region, None).await;
        let config = aws_sdk_dynamodb::config::Builder::from(&sdk_config)
            .timeout_config(default_timeout_config())
            .retry_config(default_retry_config())
            .build();
        Self::from_client(Client::from_conf(config), table, history_retention)
    }

    /// Wraps an existing client as it is (its timeouts and retry policy are kept).
    pub fn from_client(client: Client, table: &str, history_retention: Duration) -> Self {
        DynamoState {
            client,
            table: table.to_owned(),
            history_retention,
            closed: AtomicBool::new(false),
            seen_current: Mutex::default(),
            held_elsewhere: Mutex::default(),
        }
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    fn seen(&self, key: &str) -> Option<i64> {
        self.seen_current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .copied()
    }

    fn remember(&self, key: &str, at: i64) {
        self.seen_current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key.to_owned(), at);
    }

    fn open(&self) -> Result<(), StateError> {
        if self.closed.load(Ordering::Acquire) {
            Err(StateError::Closed)
        } else {
            Ok(())
        }
    }

    fn err<E>(&self, op: Op, err: &SdkError<E, HttpResponse>) -> StateError
    where
        E: ProvideErrorMetadata + StdError + 'static,
    {
        classify(&self.table, op, err)
    }

    fn malformed(&self, op: Op, what: String) -> StateError {
        StateError::Backend {
            backend: "dynamodb",
            action: op.action,
            message: format!("table {}: {what}", text::quoted(&self.table, SHOWN_CHARS)),
        }
    }

    /// A strongly consistent read of one item.
    async fn get_item(
        &self,
        op: Op,
        pk: &str,
        sk: &str,
    ) -> Result<Option<HashMap<String, AttributeValue>>, StateError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, s(pk))
            .key(SORT_KEY, s(sk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.err(op, &e))?;
        Ok(out.item)
    }

    /// Every item of one partition (strongly consistent), key order, oldest page first.
    async fn query_all(
        &self,
        op: Op,
        pk: &str,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, StateError> {
        let mut items = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        for _ in 0..MAX_PAGES {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(pk))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| self.err(op, &e))?;
            items.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(items),
            }
        }
        Err(self.malformed(
            op,
            format!("partition {pk:?} has more than {MAX_PAGES} pages"),
        ))
    }

    /// `record`/`touch` under a lease: the lease's `ConditionCheck` plus one write, in one
    /// transaction. `Ok(false)` when only the write's own condition failed.
    async fn transact_under_lease(
        &self,
        op: Op,
        lease: &Lease,
        write: TransactWriteItem,
    ) -> Result<bool, StateError> {
        let check = self.lease_check(op, lease)?;
        let mut attempt = 0;
        let err = loop {
            attempt += 1;
            let result = self
                .client
                .transact_write_items()
                .transact_items(check.clone())
                .transact_items(write.clone())
                .send()
                .await;
            let err = match result {
                Ok(_) => return Ok(true),
                Err(err) => err,
            };
            // Another request on the same items at the same moment (a replica trying to take
            // the lease): DynamoDB cancels with TransactionConflict; the write is tried again.
            if !is_transaction_conflict(&err) || attempt >= TRANSACTION_ATTEMPTS {
                break err;
            }
            tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
        };
        self.canceled_under_lease(op, lease, &err).await
    }

    /// The `ConditionCheck` that `lease` is still held: its owner and fence are the item's.
    fn lease_check(&self, op: Op, lease: &Lease) -> Result<TransactWriteItem, StateError> {
        let check = ConditionCheck::builder()
            .table_name(&self.table)
            .key(PARTITION_KEY, s(PK_LEASE))
            .key(SORT_KEY, s(&lease.job))
            .condition_expression("#o = :me AND #f = :fence")
            .expression_attribute_names("#o", "owner")
            .expression_attribute_names("#f", "fence")
            .expression_attribute_values(":me", s(&lease.owner))
            .expression_attribute_values(":fence", n(lease.fence))
            .build()
            .map_err(|e| self.malformed(op, format!("cannot build the request: {e}")))?;
        Ok(TransactWriteItem::builder().condition_check(check).build())
    }

    /// What a failed transaction under `lease` means: the lease lost (its check failed),
    /// `Ok(false)` (only the write's own condition failed), or the error itself.
    async fn canceled_under_lease(
        &self,
        op: Op,
        lease: &Lease,
        err: &SdkError<TransactWriteItemsError, HttpResponse>,
    ) -> Result<bool, StateError> {
        let canceled = err.as_service_error().and_then(|e| match e {
            TransactWriteItemsError::TransactionCanceledException(c) => Some(c),
            _ => None,
        });
        let Some(canceled) = canceled else {
            return Err(self.err(op, err));
        };
        let failed = |i: usize| {
            canceled
                .cancellation_reasons()
                .get(i)
                .and_then(|r| r.code())
                == Some("ConditionalCheckFailed")
        };
        if failed(0) {
            return Err(StateError::LeaseLost {
                job: text::printable(&lease.job, SHOWN_CHARS),
                fence: lease.fence,
            });
        }
        if failed(1) {
            return Ok(false);
        }
        if canceled.cancellation_reasons().is_empty() {
            // Without reasons (some emulators), the lease item says which condition failed.
            let current = self.current_lease(op, &lease.job).await?;
            if current
                .as_ref()
                .is_none_or(|l| l.owner != lease.owner || l.fence != lease.fence)
            {
                return Err(StateError::LeaseLost {
                    job: text::printable(&lease.job, SHOWN_CHARS),
                    fence: lease.fence,
                });
            }
            return Ok(false);
        }
        Err(self.err(op, err))
    }

    /// The lease item of `job` as it is now (strongly consistent); an error when malformed.
    async fn current_lease(&self, op: Op, job: &str) -> Result<Option<Lease>, StateError> {
        match self.get_item(op, PK_LEASE, job).await? {
            None => Ok(None),
            Some(item) => parse_lease(job, &item)
                .map(Some)
                .map_err(|why| self.malformed(op, malformed_lease(job, &why))),
        }
    }

    /// The first step of `acquire_lease`: takes a free or lapsed lease, adding 1 to the fence.
    /// When the lease is held, the item as it was (DynamoDB returns it with the failed
    /// condition; read again when an emulator does not).
    async fn take(
        &self,
        job: &str,
        owner: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<Taken, StateError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, s(PK_LEASE))
            .key(SORT_KEY, s(job))
            .update_expression("SET #o = :me, #e = :exp ADD #f :one")
            .condition_expression("attribute_not_exists(pk) OR #e < :now")
            .expression_attribute_names("#o", "owner")
            .expression_attribute_names("#e", "expires_at")
            .expression_attribute_names("#f", "fence")
            .expression_attribute_values(":me", s(owner))
            .expression_attribute_values(":exp", n(expires_at))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":one", n(1))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(out) => Ok(Taken::Yes(out.attributes.unwrap_or_default())),
            Err(e) => {
                if let Some(UpdateItemError::ConditionalCheckFailedException(c)) =
                    e.as_service_error()
                {
                    return Ok(Taken::Held(c.item.clone()));
                }
                // An item whose `fence` or `expires_at` is not a number fails the write
                // (DynamoDB: ValidationException; moto: a 500): name the malformed field.
                if e.as_service_error().is_some() {
                    self.current_lease(OP_ACQUIRE, job).await?;
                }
                Err(self.err(OP_ACQUIRE, &e))
            }
        }
    }

    /// The second step of `acquire_lease`: moves the expiry of a live lease this owner holds
    /// (same fence). `None` when it changed hands meanwhile.
    async fn renew(&self, held: &Lease, expires_at: i64) -> Result<Option<Item>, StateError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, s(PK_LEASE))
            .key(SORT_KEY, s(&held.job))
            .update_expression("SET #e = :exp")
            .condition_expression("#o = :me AND #f = :fence")
            .expression_attribute_names("#o", "owner")
            .expression_attribute_names("#e", "expires_at")
            .expression_attribute_names("#f", "fence")
            .expression_attribute_values(":me", s(&held.owner))
            .expression_attribute_values(":fence", n(held.fence))
            .expression_attribute_values(":exp", n(expires_at))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match result {
            Ok(out) => Ok(out.attributes),
            Err(e) if is_condition_failed(&e) => Ok(None),
            Err(e) => Err(self.err(OP_ACQUIRE, &e)),
        }
    }

    fn lease_from(
        &self,
        job: &str,
        owner: &str,
        item: &HashMap<String, AttributeValue>,
    ) -> Result<Lease, StateError> {
        let lease = parse_lease(job, item).map_err(|why| {
            self.malformed(
                OP_ACQUIRE,
                format!(
                    "the lease item of job {} is malformed after the write ({why})",
                    text::quoted(job, SHOWN_CHARS)
                ),
            )
        })?;
        if lease.owner != owner {
            return Err(self.malformed(
                OP_ACQUIRE,
                format!(
                    "the lease of job {} names owner {} after this replica took it",
                    text::quoted(job, SHOWN_CHARS),
                    text::quoted(&lease.owner, SHOWN_CHARS)
                ),
            ));
        }
        Ok(lease)
    }
}

#[async_trait::async_trait]
impl StateBackend for DynamoState {
    fn kind(&self) -> &'static str {
        "dynamodb"
    }

    async fn load(&self) -> Result<BTreeMap<String, JobState>, StateError> {
        let items = self.query_all(OP_LOAD, PK_STATE).await?;
        let mut out = BTreeMap::new();
        let mut skipped = 0_usize;
        for item in &items {
            let key = get_s(item, "sk");
            match key
                .clone()
                .and_then(|k| parse_state(item).map(|st| (k, st)))
            {
                Ok((key, state)) => {
                    out.insert(key.to_owned(), state);
                }
                Err(why) => {
                    skipped += 1;
                    tracing::warn!(
                        table = %text::printable(&self.table, SHOWN_CHARS),
                        key = %key.map_or_else(|_| "(unreadable)".to_owned(), |k| text::quoted(k, SHOWN_CHARS)),
                        reason = %why,
                        "skipping a malformed applied-version item in the DynamoDB state table"
                    );
                }
            }
        }
        if skipped > 0 {
            tracing::warn!(
                skipped,
                "malformed applied-version items were treated as absent"
            );
        }
        Ok(out)
    }

    async fn get(&self, key: &str) -> Result<Option<JobState>, StateError> {
        let Some(item) = self.get_item(OP_GET, PK_STATE, key).await? else {
            return Ok(None);
        };
        match parse_state(&item) {
            Ok(state) => {
                self.remember(key, state.applied_at.max(state.checked_at));
                Ok(Some(state))
            }
            Err(why) => {
                tracing::warn!(
                    table = %text::printable(&self.table, SHOWN_CHARS),
                    key = %text::quoted(key, SHOWN_CHARS),
                    reason = %why,
                    "a malformed applied-version item in the DynamoDB state table is treated as absent"
                );
                Ok(None)
            }
        }
    }

    async fn record(
        &self,
        key: &str,
        state: JobState,
        lease: Option<&Lease>,
    ) -> Result<(), StateError> {
        self.open()?;
        for (name, value) in [
            ("connection_id", &state.connection_id),
            ("applied_version", &state.applied_version),
            (
                "failed_version",
                state.failed_version.as_ref().unwrap_or(&String::new()),
            ),
        ] {
            if value.chars().count() > MAX_FIELD_CHARS {
                return Err(self.malformed(
                    OP_RECORD,
                    format!("refusing to store a {name} longer than {MAX_FIELD_CHARS} characters"),
                ));
            }
        }
        let mut item = HashMap::new();
        item.insert(PARTITION_KEY.to_owned(), s(PK_STATE));
        item.insert(SORT_KEY.to_owned(), s(key));
        item.insert("connection_id".to_owned(), s(&state.connection_id));
        item.insert("applied_version".to_owned(), s(&state.applied_version));
        item.insert("applied_at".to_owned(), n(state.applied_at));
        item.insert("checked_at".to_owned(), n(state.checked_at));
        if let Some(failed) = &state.failed_version {
            item.insert("failed_version".to_owned(), s(failed));
        }
        match lease {
            None => {
                self.client
                    .put_item()
                    .table_name(&self.table)
                    .set_item(Some(item))
                    .send()
                    .await
                    .map_err(|e| self.err(OP_RECORD, &e))?;
            }
            Some(lease) => {
                let put = Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(item))
                    .build()
                    .map_err(|e| {
                        self.malformed(OP_RECORD, format!("cannot build the request: {e}"))
                    })?;
                let write = TransactWriteItem::builder().put(put).build();
                self.transact_under_lease(OP_RECORD, lease, write).await?;
            }
        }
        self.remember(key, state.applied_at.max(state.checked_at));
        Ok(())
    }

    async fn touch(&self, key: &str, now: i64, lease: Option<&Lease>) -> Result<(), StateError> {
        self.open()?;
        let threshold = now.saturating_sub(CHECKED_AT_GRANULARITY_SECS);
        // The runner has just read the key (`get`): most runs find it recent and send nothing.
        if self.seen(key).is_some_and(|at| at > threshold) {
            return Ok(());
        }
        let names = [("#a", "applied_at"), ("#c", "checked_at")];
        let condition = "attribute_exists(pk) AND #a <= :th AND #c <= :th";
        match lease {
            None => {
                let result = self
                    .client
                    .update_item()
                    .table_name(&self.table)
                    .key(PARTITION_KEY, s(PK_STATE))
                    .key(SORT_KEY, s(key))
                    .update_expression("SET #c = :now")
                    .condition_expression(condition)
                    .expression_attribute_names(names[0].0, names[0].1)
                    .expression_attribute_names(names[1].0, names[1].1)
                    .expression_attribute_values(":now", n(now))
                    .expression_attribute_values(":th", n(threshold))
                    .send()
                    .await;
                match result {
                    Ok(_) => self.remember(key, now),
                    // Recent already (or gone): the next `get` tells.
                    Err(e) if is_condition_failed(&e) => {}
                    Err(e) => return Err(self.err(OP_TOUCH, &e)),
                }
                Ok(())
            }
            Some(lease) => {
                let update = Update::builder()
                    .table_name(&self.table)
                    .key(PARTITION_KEY, s(PK_STATE))
                    .key(SORT_KEY, s(key))
                    .update_expression("SET #c = :now")
                    .condition_expression(condition)
                    .expression_attribute_names(names[0].0, names[0].1)
                    .expression_attribute_names(names[1].0, names[1].1)
                    .expression_attribute_values(":now", n(now))
                    .expression_attribute_values(":th", n(threshold))
                    .build()
                    .map_err(|e| {
                        self.malformed(OP_TOUCH, format!("cannot build the request: {e}"))
                    })?;
                let write = TransactWriteItem::builder().update(update).build();
                if self.transact_under_lease(OP_TOUCH, lease, write).await? {
                    self.remember(key, now);
                }
                Ok(())
            }
        }
    }

    async fn append_history(&self, attempt: &Attempt) -> Result<(), StateError> {
        self.open()?;
        // Cut so the `…[N more characters]` mark still fits under the read limit.
        let capped = |v: &str| text::cap(v, MAX_FIELD_CHARS - 40).into_owned();
        let at_ms = attempt.at_ms.max(0);
        let ttl =
            at_ms / 1000 + i64::try_from(self.history_retention.as_secs()).unwrap_or(i64::MAX / 2);
        let mut item = HashMap::new();
        item.insert(PARTITION_KEY.to_owned(), s(PK_HISTORY));
        item.insert(
            "sk".to_owned(),
            s(&format!(
                "{}#{:016x}",
                history_sort_prefix(at_ms),
                rand::random::<u64>()
            )),
        );
        item.insert("at_ms".to_owned(), n(at_ms));
        item.insert("job".to_owned(), s(&capped(&attempt.job)));
        item.insert("connection".to_owned(), s(&capped(&attempt.connection)));
        item.insert("outcome".to_owned(), s(&capped(&attempt.outcome)));
        for (name, value) in [
            ("stage", &attempt.stage),
            ("error_type", &attempt.error_type),
            ("secret_version", &attempt.secret_version),
        ] {
            if let Some(v) = value {
                item.insert(name.to_owned(), s(&capped(v)));
            }
        }
        item.insert("duration_ms".to_owned(), n(attempt.duration_ms));
        item.insert(TTL_ATTRIBUTE.to_owned(), n(ttl));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .map_err(|e| self.err(OP_APPEND, &e))?;
        Ok(())
    }

    async fn history(&self, query: &HistoryQuery) -> Result<Vec<Attempt>, StateError> {
        let limit = match query.limit {
            0 => MAX_HISTORY_ROWS,
            l => l.min(MAX_HISTORY_ROWS),
        };
        let mut filters = Vec::new();
        let mut names = HashMap::new();
        let mut values = HashMap::new();
        values.insert(":pk".to_owned(), s(PK_HISTORY));
        let mut key_condition = "pk = :pk".to_owned();
        if let Some(since) = query.since_ms {
            key_condition.push_str(" AND sk >= :since");
            values.insert(":since".to_owned(), s(&history_sort_prefix(since.max(0))));
        }
        if let Some(job) = &query.job {
            filters.push("#job = :job");
            names.insert("#job".to_owned(), "job".to_owned());
            values.insert(":job".to_owned(), s(job));
        }
        if let Some(conn) = &query.connection {
            filters.push("#conn = :conn");
            names.insert("#conn".to_owned(), "connection".to_owned());
            values.insert(":conn".to_owned(), s(conn));
        }
        let mut out = Vec::new();
        let mut skipped = 0_usize;
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        for _ in 0..MAX_PAGES {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression(&key_condition)
                .set_filter_expression((!filters.is_empty()).then(|| filters.join(" AND ")))
                .set_expression_attribute_names((!names.is_empty()).then(|| names.clone()))
                .set_expression_attribute_values(Some(values.clone()))
                .scan_index_forward(false)
                .limit(i32::try_from(limit.clamp(25, 1000)).unwrap_or(1000))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| self.err(OP_HISTORY, &e))?;
            for item in page.items.unwrap_or_default() {
                match parse_attempt(&item) {
                    Ok(a) => out.push(a),
                    Err(why) => {
                        skipped += 1;
                        tracing::warn!(
                            table = %text::printable(&self.table, SHOWN_CHARS),
                            reason = %why,
                            "skipping a malformed history item in the DynamoDB state table"
                        );
                    }
                }
                if out.len() >= limit {
                    return Ok(out);
                }
            }
            match page.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => break,
            }
        }
        if skipped > 0 {
            tracing::warn!(skipped, "malformed history items were left out");
        }
        Ok(out)
    }

    async fn prune_history(&self, before_ms: i64) -> Result<u64, StateError> {
        self.open()?;
        let mut deleted = 0_u64;
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        for _ in 0..MAX_PAGES {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND sk < :before")
                .expression_attribute_values(":pk", s(PK_HISTORY))
                .expression_attribute_values(":before", s(&history_sort_prefix(before_ms.max(0))))
                .projection_expression("pk, sk")
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| self.err(OP_PRUNE, &e))?;
            let keys: Vec<_> = page
                .items
                .unwrap_or_default()
                .into_iter()
                .filter_map(|item| {
                    let sk = item.get("sk")?.as_s().ok()?.clone();
                    Some(sk)
                })
                .collect();
            for chunk in keys.chunks(25) {
                let mut requests: Vec<WriteRequest> = chunk
                    .iter()
                    .filter_map(|sk| {
                        DeleteRequest::builder()
                            .key(PARTITION_KEY, s(PK_HISTORY))
                            .key(SORT_KEY, s(sk))
                            .build()
                            .ok()
                            .map(|d| WriteRequest::builder().delete_request(d).build())
                    })
                    .collect();
                let mut sent = requests.len() as u64;
                for round in 0..5 {
                    let out = self
                        .client
                        .batch_write_item()
                        .request_items(&self.table, requests)
                        .send()
                        .await
                        .map_err(|e| self.err(OP_PRUNE, &e))?;
                    requests = out
                        .unprocessed_items
                        .and_then(|mut m| m.remove(&self.table))
                        .unwrap_or_default();
                    if requests.is_empty() {
                        break;
                    }
                    if round == 4 {
                        sent -= requests.len() as u64;
                        tracing::warn!(
                            left = requests.len(),
                            "DynamoDB left some history deletions unprocessed; the next prune (or the TTL) takes them"
                        );
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50 << round)).await;
                }
                deleted += sent;
            }
            match page.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => break,
            }
        }
        Ok(deleted)
    }

    async fn acquire_lease(
        &self,
        job: &str,
        owner: &str,
        ttl: Duration,
        now: i64,
    ) -> Result<Option<Lease>, StateError> {
        self.open()?;
        let held_until = |until: Option<(i64, String)>| {
            let mut map = self
                .held_elsewhere
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match until {
                Some(t) => map.insert(job.to_owned(), t),
                None => map.remove(job),
            }
        };
        if let Some((until, holder)) = held_until(None)
            && now <= until
            && holder != owner
        {
            held_until(Some((until, holder)));
            return Ok(None);
        }
        let ttl_secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX / 4);
        let expires_at = now.saturating_add(ttl_secs);
        // One call in the common cases: a free or lapsed lease is taken, a live one of another
        // owner is refused (the failed condition returns the item, so no second read).
        let old = match self.take(job, owner, now, expires_at).await? {
            Taken::Yes(item) => {
                let lease = self.lease_from(job, owner, &item)?;
                tracing::debug!(
                    job = %text::printable(job, SHOWN_CHARS),
                    owner = %text::printable(owner, SHOWN_CHARS),
                    fence = lease.fence,
                    "took the lease"
                );
                return Ok(Some(lease));
            }
            Taken::Held(Some(item)) => Some(
                parse_lease(job, &item)
                    .map_err(|why| self.malformed(OP_ACQUIRE, malformed_lease(job, &why)))?,
            ),
            Taken::Held(None) => self.current_lease(OP_ACQUIRE, job).await?,
        };
        match old {
            // Live and this owner's: renew it, same fence.
            Some(held) if held.owner == owner => match self.renew(&held, expires_at).await? {
                Some(item) => self.lease_from(job, owner, &item).map(Some),
                None => Ok(None),
            },
            // Another owner's live lease: not worth asking again before it lapses.
            Some(other) => {
                held_until(Some((other.expires_at, other.owner)));
                Ok(None)
            }
            // Gone between the two reads: next time.
            None => Ok(None),
        }
    }

    async fn release_lease(&self, lease: &Lease) -> Result<(), StateError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, s(PK_LEASE))
            .key(SORT_KEY, s(&lease.job))
            .update_expression("SET #e = :zero")
            .condition_expression("#o = :me AND #f = :fence")
            .expression_attribute_names("#o", "owner")
            .expression_attribute_names("#e", "expires_at")
            .expression_attribute_names("#f", "fence")
            .expression_attribute_values(":me", s(&lease.owner))
            .expression_attribute_values(":fence", n(lease.fence))
            .expression_attribute_values(":zero", n(0))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // Someone else holds it now: nothing of ours to give up.
            Err(e) if is_condition_failed(&e) => Ok(()),
            Err(e) => Err(self.err(OP_RELEASE, &e)),
        }
    }

    async fn health(&self) -> Result<(), StateError> {
        let out = self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .map_err(|e| self.err(OP_HEALTH, &e))?;
        let Some(table) = out.table else {
            return Err(self.malformed(OP_HEALTH, "DescribeTable returned no table".to_owned()));
        };
        match table.table_status() {
            Some(TableStatus::Active) => {}
            status => {
                return Err(self.malformed(
                    OP_HEALTH,
                    format!(
                        "the table is not ACTIVE (status {})",
                        status.map_or_else(
                            || "unknown".to_owned(),
                            |s| text::quoted(s.as_str(), SHOWN_CHARS)
                        )
                    ),
                ));
            }
        }
        let key_of = |kind: KeyType| {
            table
                .key_schema()
                .iter()
                .find(|k| *k.key_type() == kind)
                .map(|k| k.attribute_name().to_owned())
        };
        let type_of = |name: &str| {
            table
                .attribute_definitions()
                .iter()
                .find(|d| d.attribute_name() == name)
                .map(|d| d.attribute_type().clone())
        };
        let ok = table.key_schema().len() == 2
            && key_of(KeyType::Hash).as_deref() == Some(PARTITION_KEY)
            && key_of(KeyType::Range).as_deref() == Some(SORT_KEY)
            && type_of(PARTITION_KEY) == Some(ScalarAttributeType::S)
            && type_of(SORT_KEY) == Some(ScalarAttributeType::S);
        if !ok {
            let shown: Vec<String> = table
                .key_schema()
                .iter()
                .map(|k| {
                    format!(
                        "{} {}",
                        text::quoted(k.attribute_name(), SHOWN_CHARS),
                        k.key_type().as_str()
                    )
                })
                .collect();
            return Err(self.malformed(
                OP_HEALTH,
                format!(
                    "wrong key schema [{}]: expected partition key \"pk\" (S) and sort key \"sk\" (S), as deploy/aws/state-table.yaml creates",
                    shown.join(", ")
                ),
            ));
        }
        Ok(())
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

/// What an operation does, for errors: the action label and the IAM action it needs.
#[derive(Debug, Clone, Copy)]
struct Op {
    action: &'static str,
    iam: &'static str,
}

const OP_LOAD: Op = Op {
    action: "reading the applied versions",
    iam: "dynamodb:Query",
};
const OP_GET: Op = Op {
    action: "reading an applied version",
    iam: "dynamodb:GetItem",
};
const OP_RECORD: Op = Op {
    action: "recording an applied version",
    iam: "dynamodb:PutItem and dynamodb:ConditionCheckItem",
};
const OP_TOUCH: Op = Op {
    action: "touching an applied version",
    iam: "dynamodb:UpdateItem and dynamodb:ConditionCheckItem",
};
const OP_APPEND: Op = Op {
    action: "appending to the history",
    iam: "dynamodb:PutItem",
};
const OP_HISTORY: Op = Op {
    action: "listing the history",
    iam: "dynamodb:Query",
};
const OP_PRUNE: Op = Op {
    action: "pruning the history",
    iam: "dynamodb:Query and dynamodb:BatchWriteItem",
};
const OP_ACQUIRE: Op = Op {
    action: "acquiring a lease",
    iam: "dynamodb:UpdateItem and dynamodb:GetItem",
};
const OP_RELEASE: Op = Op {
    action: "releasing a lease",
    iam: "dynamodb:UpdateItem",
};
const OP_HEALTH: Op = Op {
    action: "checking the table",
    iam: "dynamodb:DescribeTable",
};

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: impl fmt::Display) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// The sort-key prefix of an attempt at `at_ms` (fixed width, so text order is time order).
fn history_sort_prefix(at_ms: i64) -> String {
    format!("{at_ms:020}")
}

fn is_condition_failed<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> bool {
    err.as_service_error()
        .and_then(ProvideErrorMetadata::code)
        .is_some_and(|c| c == "ConditionalCheckFailedException")
}

type Item = HashMap<String, AttributeValue>;

fn get_s<'a>(item: &'a Item, name: &'static str) -> Result<&'a str, String> {
    match item.get(name) {
        None => Err(format!("{name}: missing")),
        Some(AttributeValue::S(v)) if v.chars().count() <= MAX_FIELD_CHARS => Ok(v),
        Some(AttributeValue::S(_)) => {
            Err(format!("{name}: longer than {MAX_FIELD_CHARS} characters"))
        }
        Some(_) => Err(format!("{name}: expected a string")),
    }
}

fn opt_s(item: &Item, name: &'static str) -> Result<Option<String>, String> {
    match item.get(name) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(_) => get_s(item, name).map(|v| Some(v.to_owned())),
    }
}

fn get_n<T: std::str::FromStr>(item: &Item, name: &'static str) -> Result<T, String> {
    match item.get(name) {
        None => Err(format!("{name}: missing")),
        Some(AttributeValue::N(v)) => v
            .parse()
            .map_err(|_| format!("{name}: not a number in range")),
        Some(_) => Err(format!("{name}: expected a number")),
    }
}

fn parse_state(item: &Item) -> Result<JobState, String> {
    Ok(JobState {
        connection_id: get_s(item, "connection_id")?.to_owned(),
        applied_version: get_s(item, "applied_version")?.to_owned(),
        applied_at: get_n(item, "applied_at")?,
        checked_at: match item.get("checked_at") {
            None => 0,
            Some(_) => get_n(item, "checked_at")?,
        },
        failed_version: opt_s(item, "failed_version")?,
    })
}

fn malformed_lease(job: &str, why: &str) -> String {
    format!(
        "the lease item of job {} is malformed ({why}); nobody can take it over until it is fixed",
        text::quoted(job, SHOWN_CHARS)
    )
}

/// What the first step of `acquire_lease` found.
enum Taken {
    /// Taken: the item after the write.
    Yes(Item),
    /// Held by someone (maybe this owner): the item before, when DynamoDB returned it.
    Held(Option<Item>),
}

fn parse_lease(job: &str, item: &Item) -> Result<Lease, String> {
    let owner = get_s(item, "owner")?;
    if owner.is_empty() {
        return Err("owner: empty".to_owned());
    }
    Ok(Lease {
        job: job.to_owned(),
        owner: owner.to_owned(),
        fence: get_n(item, "fence")?,
        expires_at: get_n(item, "expires_at")?,
    })
}

fn parse_attempt(item: &Item) -> Result<Attempt, String> {
    Ok(Attempt {
        at_ms: get_n(item, "at_ms")?,
        job: get_s(item, "job")?.to_owned(),
        connection: get_s(item, "connection")?.to_owned(),
        outcome: get_s(item, "outcome")?.to_owned(),
        stage: opt_s(item, "stage")?,
        error_type: opt_s(item, "error_type")?,
        secret_version: opt_s(item, "secret_version")?,
        duration_ms: get_n(item, "duration_ms")?,
    })
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

/// Maps an SDK error to [`StateError::Backend`], naming the table and, when access was
/// denied, the IAM action the call needs. Uses error codes, AWS messages (escaped) and
/// transport errors only.
fn classify<E>(table: &str, op: Op, err: &SdkError<E, HttpResponse>) -> StateError
where
    E: ProvideErrorMetadata + StdError + 'static,
{
    let shown_table = text::quoted(table, SHOWN_CHARS);
    let message = match err {
        SdkError::ServiceError(ctx) => {
            let service = ctx.err();
            let status = ctx.raw().status().as_u16();
            let code = service.code().unwrap_or(match status {
                // Without a code (a proxy, or an emulator's non-JSON body) the status decides.
                401 | 403 => "AccessDeniedException",
                404 => "ResourceNotFoundException",
                _ => "an error without an AWS error code",
            });
            let aws = service
                .message()
                .map(|m| m.split_whitespace().collect::<Vec<_>>().join(" "))
                .filter(|m| !m.is_empty())
                .map(|m| format!(": {}", text::printable(&m, text::MAX_REMOTE_TEXT)))
                .unwrap_or_default();
            let code_shown = text::printable(code, SHOWN_CHARS);
            match code {
                "ResourceNotFoundException" => format!(
                    "table {shown_table} not found ({code_shown}{aws}); create it (deploy/aws/state-table.yaml) in the configured region"
                ),
                "AccessDeniedException"
                | "UnrecognizedClientException"
                | "InvalidSignatureException"
                | "MissingAuthenticationTokenException"
                | "ExpiredTokenException" => format!(
                    "access denied on table {shown_table} ({code_shown}{aws}); the replica's IAM role needs {} on the table's ARN (deploy/aws/iam-policy.json)",
                    op.iam
                ),
                _ => format!("table {shown_table}: {code_shown}{aws}"),
            }
        }
        SdkError::TimeoutError(_) => format!(
            "table {shown_table}: the request to DynamoDB timed out (operation timeout {OPERATION_TIMEOUT:?})"
        ),
        SdkError::DispatchFailure(failure) => {
            let kind = if failure.is_timeout() {
                "timed out"
            } else if failure.is_io() {
                "could not connect"
            } else {
                "failed"
            };
            let chain = failure
                .as_connector_error()
                .map(|e| error_chain(e))
                .unwrap_or_default();
            format!(
                "table {shown_table}: the request to DynamoDB {kind}: {}",
                text::printable(&chain, text::MAX_REMOTE_TEXT)
            )
        }
        SdkError::ResponseError(_) => {
            format!("table {shown_table}: DynamoDB sent a response that could not be read")
        }
        other => format!(
            "table {shown_table}: {}",
            text::printable(&error_chain(other), text::MAX_REMOTE_TEXT)
        ),
    };
    StateError::Backend {
        backend: "dynamodb",
        action: op.action,
        message,
    }
}

/// A transaction canceled only because another one touched the same items at that moment
/// (`TransactionConflict`, no failed condition): worth trying again.
fn is_transaction_conflict(err: &SdkError<TransactWriteItemsError, HttpResponse>) -> bool {
    err.as_service_error().is_some_and(|e| match e {
        TransactWriteItemsError::TransactionCanceledException(c) => {
            let codes = || c.cancellation_reasons().iter().filter_map(|r| r.code());
            codes().any(|c| c == "TransactionConflict")
                && !codes().any(|c| c == "ConditionalCheckFailed")
        }
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_names_only_granted_actions_and_every_action_is_used() {
        let ops = [
            OP_LOAD, OP_GET, OP_RECORD, OP_TOUCH, OP_APPEND, OP_HISTORY, OP_PRUNE, OP_ACQUIRE,
            OP_RELEASE, OP_HEALTH,
        ];
        let named: std::collections::BTreeSet<&str> =
            ops.iter().flat_map(|op| op.iam.split(" and ")).collect();
        let granted: std::collections::BTreeSet<&str> = IAM_ACTIONS.iter().copied().collect();
        assert_eq!(named, granted);
    }

    #[test]
    fn table_names() {
        assert!(is_table_name("qlik-rotator-state"));
        assert!(is_table_name("a.b_c-1"));
        assert!(!is_table_name("ab"));
        assert!(!is_table_name("has space"));
        assert!(!is_table_name("arn:aws:dynamodb:eu-west-1:1:table/x"));
        assert!(!is_table_name(&"x".repeat(256)));
    }

    #[test]
    fn history_sort_keys_sort_by_time() {
        let a = history_sort_prefix(999);
        let b = history_sort_prefix(1_000);
        let c = history_sort_prefix(1_764_560_000_000);
        assert!(a < b && b < c, "{a} {b} {c}");
        assert_eq!(a.len(), c.len());
    }

    #[test]
    fn hostile_items_are_refused_with_the_field() {
        let mut item = Item::new();
        item.insert("connection_id".into(), s("c"));
        item.insert("applied_version".into(), AttributeValue::N("1".into()));
        item.insert("applied_at".into(), n(1));
        assert_eq!(
            parse_state(&item).unwrap_err(),
            "applied_version: expected a string"
        );
        item.insert(
            "applied_version".into(),
            s(&"v".repeat(MAX_FIELD_CHARS + 1)),
        );
        assert!(parse_state(&item).unwrap_err().contains("longer than"));
        item.insert("applied_version".into(), s("v1"));
        item.insert("applied_at".into(), AttributeValue::N("1e400".into()));
        assert_eq!(
            parse_state(&item).unwrap_err(),
            "applied_at: not a number in range"
        );
        let mut lease = Item::new();
        lease.insert("owner".into(), s("me"));
        lease.insert("fence".into(), AttributeValue::N("-1".into()));
        lease.insert("expires_at".into(), n(5));
        assert_eq!(
            parse_lease("j", &lease).unwrap_err(),
            "fence: not a number in range"
        );
    }
}
