//! In-memory secrets (`type = "fixed"` is not exposed in config; used by tests, the bench and
//! the demo's internals). Each `put` creates a new version, like a vault would.

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use secrecy::{ExposeSecret, SecretString};

use super::{SecretRef, SecretSource, SecretValue, SourceError, VersionSelector};

/// In-memory secret store with versions.
#[derive(Debug, Default)]
pub struct FixedSource {
    secrets: Mutex<HashMap<String, Vec<(String, SecretString)>>>,
    /// Secret reads so far (one per `fetch`), so tests can count them.
    reads: AtomicUsize,
}

impl FixedSource {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores a new current version of `id` and returns its version id (`v1`, `v2`, …).
    pub fn put(&self, id: &str, text: impl Into<String>) -> String {
        let mut map = self.secrets.lock().expect("fixed source lock");
        let versions = map.entry(id.to_owned()).or_default();
        let version = format!("v{}", versions.len() + 1);
        versions.push((version.clone(), SecretString::from(text.into())));
        version
    }

    /// How many secrets were read (one per fetch, batch reads included).
    pub fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }
}

impl SecretSource for FixedSource {
    fn kind(&self) -> &'static str {
        "fixed"
    }

    async fn fetch(&self, secret: &SecretRef) -> Result<SecretValue, SourceError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let map = self.secrets.lock().expect("fixed source lock");
        let not_found = |detail: String| SourceError::NotFound {
            id: secret.id.clone(),
            detail,
        };
        let versions = map
            .get(&secret.id)
            .ok_or_else(|| not_found(String::new()))?;
        let found = match &secret.version {
            VersionSelector::Stage(stage) if stage == "AWSCURRENT" => versions.last(),
            VersionSelector::Stage(stage) if stage == "AWSPREVIOUS" => versions.iter().rev().nth(1),
            VersionSelector::Stage(stage) => {
                return Err(not_found(format!(" (no version has stage {stage:?})")));
            }
            VersionSelector::Id(id) => versions.iter().find(|(v, _)| v == id),
        };
        let (version, text) = found.ok_or_else(|| not_found(" (no such version)".to_owned()))?;
        Ok(SecretValue::text(version.clone(), text.expose_secret()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn versions_and_stages() {
        let s = FixedSource::new();
        assert_eq!(s.put("a", "{\"k\":\"1\"}"), "v1");
        assert_eq!(s.put("a", "{\"k\":\"2\"}"), "v2");
        let cur = s.fetch(&SecretRef::current("a")).await.unwrap();
        assert_eq!(cur.version, "v2");
        let prev = s
            .fetch(&SecretRef {
                id: "a".into(),
                version: VersionSelector::Stage("AWSPREVIOUS".into()),
            })
            .await
            .unwrap();
        assert_eq!(prev.version, "v1");
        let by_id = s
            .fetch(&SecretRef {
                id: "a".into(),
                version: VersionSelector::Id("v1".into()),
            })
            .await
            .unwrap();
        assert_eq!(
            by_id.fields().unwrap().get("k").unwrap().expose_secret(),
            "1"
        );
        let err = s.fetch(&SecretRef::current("missing")).await.unwrap_err();
        assert_eq!(err.error_type(), "secret_not_found");
    }
}
