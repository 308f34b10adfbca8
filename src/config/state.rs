//! `[state]`: which state backend keeps the applied versions, the history of attempts and the
//! job leases. The directory of the local backend stays `daemon.state_dir`.
//!
//! ```toml
//! [state]
//! backend = "sqlite"            # default; or "dynamodb" (several replicas)
//! history_retention = "90d"     # attempts older than this are pruned (hourly)
//! # dynamodb only:
//! table = "qlik-rotator-state"  # required
//! lease_ttl = "30s"             # 5 s to 10 min
//! region = "eu-west-1"          # optional; else the AWS default chain
//! ```

use std::time::Duration;

use super::walk::{Errors, Table};

/// The shortest and longest lease a shared backend may use.
pub const RANGE_LEASE_TTL: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(5)..=Duration::from_secs(600);
/// How long the history may be kept: a day to ten years.
pub const RANGE_HISTORY_RETENTION: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(86_400)..=Duration::from_secs(3650 * 86_400);

/// `[state]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateConfig {
    /// The backend and its settings.
    pub backend: BackendConfig,
    /// `history_retention`: attempts older than this are pruned (default 90 days).
    pub history_retention: Duration,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            backend: BackendConfig::Sqlite,
            history_retention: Duration::from_secs(90 * 86_400),
        }
    }
}

/// `state.backend`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendConfig {
    /// SQLite in `<daemon.state_dir>/state.db` (one replica).
    Sqlite,
    /// A DynamoDB table shared by several replicas.
    DynamoDb(DynamoDbConfig),
}

impl BackendConfig {
    /// How often the daemon checks that the backend answers (readiness): a third of the lease
    /// TTL (1 s to 10 s) for a shared table, every 30 s for the local database.
    pub fn health_interval(&self) -> Duration {
        match self {
            BackendConfig::Sqlite => Duration::from_secs(30),
            BackendConfig::DynamoDb(d) => {
                (d.lease_ttl / 3).clamp(Duration::from_secs(1), Duration::from_secs(10))
            }
        }
    }
}

/// The settings of `backend = "dynamodb"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamoDbConfig {
    /// `table`.
    pub table: String,
    /// `lease_ttl` (default 30 s): how long a replica holds a job without renewing it.
    pub lease_ttl: Duration,
    /// `region` (default: the AWS configuration chain).
    pub region: Option<String>,
}

/// Reads `[state]`, collecting every error with its key.
pub fn state_section(mut t: Table<'_>, errs: &mut Errors) -> Option<StateConfig> {
    let backend = t.opt_str("backend", errs);
    let history_retention = t
        .opt_duration("history_retention", RANGE_HISTORY_RETENTION, errs)
        .unwrap_or(StateConfig::default().history_retention);
    let dynamo_keys = ["table", "lease_ttl", "region"];
    let backend = match backend.as_deref() {
        None | Some("sqlite") => {
            for key in dynamo_keys {
                if t.has(key) {
                    errs.push(
                        t.key_path(key),
                        "applies to backend = \"dynamodb\" only (the backend is \"sqlite\")",
                    );
                }
            }
            t.allow(&dynamo_keys);
            Some(BackendConfig::Sqlite)
        }
        Some("dynamodb") => {
            let table = t.req_str("table", errs).and_then(|name| {
                let ok = crate::state::dynamodb::is_table_name(&name);
                if !ok {
                    errs.push(
                        t.key_path("table"),
                        "expected a DynamoDB table name: 3 to 255 of A-Z, a-z, 0-9, '_', '-', '.'",
                    );
                }
                ok.then_some(name)
            });
            let lease_ttl = t
                .opt_duration("lease_ttl", RANGE_LEASE_TTL, errs)
                .unwrap_or(Duration::from_secs(30));
            let region = t.opt_str("region", errs).and_then(|r| {
                let ok = r.len() <= 64
                    && r.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
                if !ok {
                    errs.push(
                        t.key_path("region"),
                        "expected an AWS region name such as \"eu-west-1\"",
                    );
                }
                ok.then_some(r)
            });
            let table = table?;
            Some(BackendConfig::DynamoDb(DynamoDbConfig {
                table,
                lease_ttl,
                region,
            }))
        }
        Some(_) => {
            t.allow(&dynamo_keys);
            errs.push(
                t.key_path("backend"),
                "expected \"sqlite\" (the default) or \"dynamodb\"",
            );
            None
        }
    };
    t.finish(errs);
    Some(StateConfig {
        backend: backend?,
        history_retention,
    })
}
