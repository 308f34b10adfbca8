//! Triggers by secret: run the jobs that use a secret when that secret changes, rather than
//! waiting for their schedule.
//!
//! - [`SecretIndex`] maps a Secrets Manager id (a name, a full ARN, or a partial ARN without
//!   the 6-character suffix Secrets Manager appends to every ARN) to the jobs whose `secret`
//!   is that secret. It serves the SQS consumer ([`sqs`]), the admin route
//!   `POST /secrets/{id}/rotate` and `rotate --secret ID`.
//! - [`prefetch`] reads the secrets of several jobs due together with one
//!   [`SecretSource::fetch_many`] per source (Secrets Manager: `BatchGetSecretValue`, 20 ids a
//!   call), so each job's run starts with its value in hand. The value serves that run's first
//!   attempt only: nothing is cached across runs, and a retry reads the vault again.
//!
//! Change detection still applies to every run started here, so a duplicate, a replay or an
//! event for a version already applied costs one secret read and no Qlik call.

pub mod sqs;

use std::{collections::HashMap, sync::Arc};

use crate::{
    config::JobConfig,
    rotation::Rotator,
    secrets::{SecretRef, SecretSource},
};

use crate::secrets::aws::{split_arn, strip_suffix};
pub use crate::secrets::{Prefetched, aws::same_secret};

/// The longest secret id accepted from outside (a Secrets Manager ARN is at most ~2,048
/// characters; a name at most 512).
pub const MAX_SECRET_ID: usize = 2048;

/// Whether `id` may be a secret id at all: 1 to [`MAX_SECRET_ID`] bytes, no control
/// characters (it came from outside and is printed).
pub fn valid_secret_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_SECRET_ID && !id.chars().any(char::is_control)
}

/// The jobs by the secret they read: one `(hash of a lookup key, job index)` pair per key,
/// sorted, and no string copied (16 bytes a key; two `String` maps cost ~110 bytes a job,
/// 2.2 MiB of the daemon's idle memory at 10,000 jobs). A hash only narrows the search: each
/// candidate is confirmed against the job's own secret id with [`same_secret`].
#[derive(Debug, Default)]
pub struct SecretIndex {
    /// Lookup key hash → job index: the name and, for an ARN, the name without its suffix.
    entries: Vec<(u64, usize)>,
}

/// The hash of a lookup key (deterministic; keys come from the configuration).
fn key_hash(key: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(key)
}

/// The lookup keys of a secret id: its name, and for an ARN the name without its suffix.
fn lookup_keys(id: &str) -> impl Iterator<Item = &str> {
    let (arn, name) = split_arn(id);
    let stripped = (arn.is_some() && strip_suffix(name) != name).then(|| strip_suffix(name));
    std::iter::once(name).chain(stripped)
}

impl SecretIndex {
    /// Indexes `jobs` (by position) whose source `keep` accepts (the SQS consumer keeps the
    /// jobs of Secrets Manager sources only; the admin route and `--secret` keep every job).
    pub fn new<'a>(
        jobs: impl IntoIterator<Item = &'a JobConfig>,
        mut keep: impl FnMut(&JobConfig) -> bool,
    ) -> Self {
        let mut entries = Vec::new();
        for (i, job) in jobs.into_iter().enumerate() {
            if keep(job) {
                entries.extend(lookup_keys(&job.secret.id).map(|k| (key_hash(k), i)));
            }
        }
        entries.sort_unstable();
        entries.dedup();
        entries.shrink_to_fit();
        SecretIndex { entries }
    }

    /// The indexes of the jobs whose secret is `id`, ascending, without repeats;
    /// `secret_of(i)` is job `i`'s secret id (the jobs the index was built from).
    pub fn jobs_for<'a>(&self, id: &str, secret_of: impl Fn(usize) -> &'a str) -> Vec<usize> {
        let mut out: Vec<usize> = lookup_keys(id)
            .flat_map(|k| {
                let h = key_hash(k);
                let from = self.entries.partition_point(|e| e.0 < h);
                let to = self.entries.partition_point(|e| e.0 <= h);
                self.entries[from..to].iter().map(|e| e.1)
            })
            .filter(|&i| same_secret(secret_of(i), id))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// Reads the secrets of `jobs` ahead of their runs: one [`SecretSource::fetch_many`] per
/// source over the distinct (id, version) pairs. Returns one entry per job, in order: `None`
/// when its source is unknown (the run reports it).
pub async fn prefetch(rotator: &Rotator, jobs: &[&JobConfig]) -> Vec<Option<Prefetched>> {
    let mut out: Vec<Option<Prefetched>> = vec![None; jobs.len()];
    // source → (distinct refs, (job, position of its ref)).
    type Group = (Vec<SecretRef>, Vec<(usize, usize)>);
    let mut groups: HashMap<&str, Group> = HashMap::new();
    for (i, job) in jobs.iter().enumerate() {
        let (refs, slots) = groups.entry(job.source.as_str()).or_default();
        let at = match refs.iter().position(|r| *r == job.secret) {
            Some(at) => at,
            None => {
                refs.push(job.secret.clone());
                refs.len() - 1
            }
        };
        slots.push((i, at));
    }
    for (source, (refs, slots)) in groups {
        let Some(src) = rotator.source(source) else {
            continue;
        };
        let values: Vec<Prefetched> = src
            .fetch_many(&refs)
            .await
            .into_iter()
            .map(Arc::new)
            .collect();
        if values.len() != refs.len() {
            // A source broke the contract: let each run read its own secret.
            tracing::warn!(
                source,
                "A batch read returned the wrong number of results; reading one by one."
            );
            continue;
        }
        for (job, at) in slots {
            out[job] = Some(values[at].clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:app/db-AbC123";

    #[test]
    fn the_index_finds_the_jobs_of_a_secret_and_filters_by_source() {
        let job = |i: usize, source: &str, secret: &str| {
            format!(
                "[[jobs]]\nname = \"j{i}\"\nconnection = {{ id = \"00000000-0000-4000-8000-00000000000{i}\" }}\n\
                 connector = \"mssql\"\nsource = \"{source}\"\nsecret = \"{secret}\"\n"
            )
        };
        let text = format!(
            "[qlik]\ntenant_url = \"https://t.example\"\napi_key_env = \"K\"\n\
             [sources.aws]\ntype = \"aws_secrets_manager\"\n[sources.f]\ntype = \"file\"\npath = \"v\"\n{}{}{}{}",
            job(0, "aws", "app/db"),
            job(1, "aws", ARN),
            job(2, "f", "app/db"),
            job(3, "aws", "other"),
        );
        let input = HashMap::from([("K".to_owned(), "k".to_owned())]);
        let cfg = crate::config::load_str(&text, std::path::Path::new("/"), &input).unwrap();
        let secret_of = |i: usize| cfg.jobs[i].secret.id.as_str();
        let all = SecretIndex::new(&cfg.jobs, |_| true);
        assert_eq!(all.jobs_for("app/db", secret_of), [0, 1, 2]);
        assert_eq!(all.jobs_for(ARN, secret_of), [0, 1, 2]);
        assert_eq!(all.jobs_for("other", secret_of), [3]);
        assert!(all.jobs_for("app", secret_of).is_empty());
        assert!(all.jobs_for("", secret_of).is_empty());
        let aws = SecretIndex::new(&cfg.jobs, |j| j.source == "aws");
        assert_eq!(aws.jobs_for(ARN, secret_of), [0, 1]);
        assert_eq!(
            aws.jobs_for(
                "arn:aws:secretsmanager:us-east-1:123456789012:secret:app/db-XyZ789",
                secret_of
            ),
            [0],
            "another secret of the same name (recreated): only the job naming it by name"
        );
    }

    #[test]
    fn secret_ids_from_outside_are_bounded() {
        assert!(valid_secret_id(ARN));
        assert!(!valid_secret_id(""));
        assert!(!valid_secret_id("a\nb"));
        assert!(!valid_secret_id("a\u{7f}"));
        assert!(!valid_secret_id(&"a".repeat(MAX_SECRET_ID + 1)));
    }
}
