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

/// The jobs by the secret they read.
#[derive(Debug, Default)]
pub struct SecretIndex {
    /// Name (and, for an ARN, the name without its suffix) → job indexes.
    by_name: HashMap<String, Vec<usize>>,
    /// Each indexed job's secret id.
    ids: Vec<String>,
}

impl SecretIndex {
    /// Indexes `jobs` (by position) whose source `keep` accepts (the SQS consumer keeps the
    /// jobs of Secrets Manager sources only; the admin route and `--secret` keep every job).
    pub fn new<'a>(
        jobs: impl IntoIterator<Item = &'a JobConfig>,
        mut keep: impl FnMut(&JobConfig) -> bool,
    ) -> Self {
        let mut index = SecretIndex::default();
        for (i, job) in jobs.into_iter().enumerate() {
            index.ids.push(job.secret.id.clone());
            if !keep(job) {
                continue;
            }
            let (arn, name) = split_arn(&job.secret.id);
            let mut keys = vec![name];
            if arn.is_some() && strip_suffix(name) != name {
                keys.push(strip_suffix(name));
            }
            for k in keys {
                index.by_name.entry(k.to_owned()).or_default().push(i);
            }
        }
        index
    }

    /// The indexes of the jobs whose secret is `id`, ascending, without repeats.
    pub fn jobs_for(&self, id: &str) -> Vec<usize> {
        let (arn, name) = split_arn(id);
        let mut out: Vec<usize> = [Some(name), arn.map(|_| strip_suffix(name))]
            .into_iter()
            .flatten()
            .filter_map(|k| self.by_name.get(k))
            .flatten()
            .copied()
            .filter(|&i| same_secret(&self.ids[i], id))
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
        let all = SecretIndex::new(&cfg.jobs, |_| true);
        assert_eq!(all.jobs_for("app/db"), [0, 1, 2]);
        assert_eq!(all.jobs_for(ARN), [0, 1, 2]);
        assert_eq!(all.jobs_for("other"), [3]);
        assert!(all.jobs_for("app").is_empty());
        assert!(all.jobs_for("").is_empty());
        let aws = SecretIndex::new(&cfg.jobs, |j| j.source == "aws");
        assert_eq!(aws.jobs_for(ARN), [0, 1]);
        assert_eq!(
            aws.jobs_for("arn:aws:secretsmanager:us-east-1:123456789012:secret:app/db-XyZ789"),
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
