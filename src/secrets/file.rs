//! Local file source. (Being implemented.)

use super::{SecretRef, SecretSource, SecretValue, SourceError};

/// A directory of `<secret-id>.json` files.
#[derive(Debug)]
pub struct FileSource {}

impl SecretSource for FileSource {
    fn kind(&self) -> &'static str {
        "file"
    }

    async fn fetch(&self, secret: &SecretRef) -> Result<SecretValue, SourceError> {
        Err(SourceError::Unavailable {
            id: secret.id.clone(),
            message: "not implemented".into(),
        })
    }
}

impl FileSource {
    /// A source over `dir`.
    pub fn new(_dir: impl Into<std::path::PathBuf>) -> Self {
        FileSource {}
    }
}
