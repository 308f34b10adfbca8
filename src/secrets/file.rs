//! Local file source, for development and the demo.
//!
//! Secret id `prod/qlik/sales` is the file `<dir>/prod/qlik/sales.json`. The file has a single
//! version: the first 16 hex characters of the SHA-256 of its content, so editing the file makes
//! a new version. Ids that could leave `dir` (`..`, absolute paths, backslashes) are refused.

use std::{
    io,
    path::{Path, PathBuf},
};

use secrecy::{SecretBox, SecretString};
use sha2::{Digest, Sha256};

use super::{
    SecretPayload, SecretRef, SecretSource, SecretValue, SourceError, SourceFactory,
    VersionSelector,
};
use crate::walk::{Errors, Table, resolve};

/// `[sources.NAME] type = "file"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileConfig {
    /// `path`: the directory of `<secret-id>.json` files; a relative path resolves against the
    /// configuration file's directory.
    pub path: PathBuf,
}

impl SourceFactory for FileConfig {
    const TYPE: &'static str = "file";
    const KEYS: &'static [&'static str] = &["path"];
    type Source = FileSource;

    /// `path`, required.
    fn from_table(t: &mut Table<'_>, base_dir: &Path, errs: &mut Errors) -> Option<Self> {
        t.req_str("path", errs).map(|p| FileConfig {
            path: resolve(base_dir, &p),
        })
    }

    /// Nothing is read yet: a missing directory shows as `secret_not_found` per job, as a
    /// vault without the secret would.
    async fn build(&self) -> FileSource {
        FileSource::new(self.path.clone())
    }
}

/// A directory of `<secret-id>.json` files.
#[derive(Debug, Clone)]
pub struct FileSource {
    dir: PathBuf,
}

impl FileSource {
    /// A source reading `<dir>/<secret-id>.json`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileSource { dir: dir.into() }
    }

    /// The directory secrets are read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file that holds secret `id`, or why `id` is not acceptable.
    ///
    /// # Errors
    /// [`SourceError::Invalid`] for an empty id, an absolute path, a backslash, `..`, a NUL
    /// byte, or an empty or `.` path component.
    pub fn path_of(&self, id: &str) -> Result<PathBuf, SourceError> {
        let invalid = |why: &str| SourceError::Invalid {
            id: id.to_owned(),
            message: format!("not a valid file source secret id: {why}"),
        };
        if id.is_empty() {
            return Err(invalid("it is empty"));
        }
        if id.starts_with('/') {
            return Err(invalid("absolute paths are not allowed"));
        }
        if id.contains('\\') {
            return Err(invalid("backslashes are not allowed"));
        }
        if id.contains("..") {
            return Err(invalid("'..' is not allowed"));
        }
        if id.contains('\0') {
            return Err(invalid("NUL bytes are not allowed"));
        }
        let mut path = self.dir.clone();
        for component in id.split('/') {
            if component.is_empty() || component == "." {
                return Err(invalid("empty and '.' path components are not allowed"));
            }
            path.push(component);
        }
        let mut file_name = path.file_name().unwrap_or_default().to_os_string();
        file_name.push(".json");
        path.set_file_name(file_name);
        Ok(path)
    }
}

/// The version of a file's content: the first 16 hex characters of its SHA-256.
pub fn content_version(content: &[u8]) -> String {
    let digest = Sha256::digest(content);
    hex::encode(&digest[..8])
}

impl SecretSource for FileSource {
    fn kind(&self) -> &'static str {
        "file"
    }

    async fn fetch(&self, secret: &SecretRef) -> Result<SecretValue, SourceError> {
        let path = self.path_of(&secret.id)?;
        let id = || secret.id.clone();
        let bytes = tokio::fs::read(&path).await.map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => SourceError::NotFound {
                id: id(),
                detail: format!(" (no file {})", path.display()),
            },
            io::ErrorKind::PermissionDenied => SourceError::AccessDenied {
                id: id(),
                message: format!("cannot read {}: {e}", path.display()),
            },
            _ => SourceError::Unavailable {
                id: id(),
                message: format!("cannot read {}: {e}", path.display()),
            },
        })?;
        if bytes.is_empty() {
            return Err(SourceError::Invalid {
                id: id(),
                message: format!("{} is empty", path.display()),
            });
        }
        let version = content_version(&bytes);
        let wanted = match &secret.version {
            VersionSelector::Stage(stage) if stage == "AWSCURRENT" => true,
            VersionSelector::Id(v) => *v == version,
            VersionSelector::Stage(_) => false,
        };
        if !wanted {
            let asked = match &secret.version {
                VersionSelector::Stage(stage) => format!("version stage {stage:?}"),
                VersionSelector::Id(v) => format!("version id {v:?}"),
            };
            return Err(SourceError::NotFound {
                id: id(),
                detail: format!(
                    " ({asked}: the file source only has the current version, {version:?})"
                ),
            });
        }
        let payload = match String::from_utf8(bytes) {
            Ok(text) => SecretPayload::Text(SecretString::from(text)),
            Err(e) => SecretPayload::Binary(SecretBox::new(Box::new(e.into_bytes()))),
        };
        tracing::debug!(secret_id = %secret.id, %version, "read secret from file");
        // The file's mtime: when the current version was written. Read after the content;
        // a file replaced in between shows the newer time, never an older one.
        let created = tokio::fs::metadata(&path)
            .await
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_secs()).ok());
        Ok(SecretValue {
            version,
            payload,
            created,
        })
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn write(dir: &Path, rel: &str, content: &[u8]) {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    fn at(id: &str, version: VersionSelector) -> SecretRef {
        SecretRef {
            id: id.into(),
            version,
        }
    }

    #[tokio::test]
    async fn reads_nested_id_and_versions_by_content_hash() {
        let tmp = tempfile::tempdir().unwrap();
        let src = FileSource::new(tmp.path());
        write(tmp.path(), "prod/qlik/sales.json", br#"{"password":"one"}"#);

        let v1 = src
            .fetch(&SecretRef::current("prod/qlik/sales"))
            .await
            .unwrap();
        assert_eq!(v1.version.len(), 16);
        assert!(v1.version.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(v1.version, content_version(br#"{"password":"one"}"#));
        assert_eq!(
            v1.fields()
                .unwrap()
                .get("password")
                .unwrap()
                .expose_secret(),
            "one"
        );
        assert!(matches!(v1.payload, SecretPayload::Text(_)));

        // Same content, same version; edited content, new version.
        let again = src
            .fetch(&SecretRef::current("prod/qlik/sales"))
            .await
            .unwrap();
        assert_eq!(again.version, v1.version);
        write(tmp.path(), "prod/qlik/sales.json", br#"{"password":"two"}"#);
        let v2 = src
            .fetch(&SecretRef::current("prod/qlik/sales"))
            .await
            .unwrap();
        assert_ne!(v2.version, v1.version);
        assert_eq!(
            v2.fields()
                .unwrap()
                .get("password")
                .unwrap()
                .expose_secret(),
            "two"
        );

        // By id: only the current hash exists.
        let by_id = src
            .fetch(&at(
                "prod/qlik/sales",
                VersionSelector::Id(v2.version.clone()),
            ))
            .await
            .unwrap();
        assert_eq!(by_id.version, v2.version);
        let err = src
            .fetch(&at(
                "prod/qlik/sales",
                VersionSelector::Id(v1.version.clone()),
            ))
            .await
            .unwrap_err();
        assert_eq!(err.error_type(), "secret_not_found");
        assert!(
            err.to_string().contains("only has the current version"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn other_stages_are_not_found() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "a.json", b"{}");
        let src = FileSource::new(tmp.path());
        for stage in ["AWSPREVIOUS", "AWSPENDING", "awscurrent"] {
            let err = src
                .fetch(&at("a", VersionSelector::Stage(stage.into())))
                .await
                .unwrap_err();
            assert!(matches!(err, SourceError::NotFound { .. }), "{err:?}");
            let text = err.to_string();
            assert!(text.contains(stage), "{text}");
            assert!(text.contains("only has the current version"), "{text}");
        }
    }

    #[tokio::test]
    async fn missing_file_is_not_found() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "prod.json", b"{}");
        let src = FileSource::new(tmp.path());
        // `prod.json` is a file: `prod.json/x` hits ENOTDIR, also "not found".
        for id in ["nope", "prod/nope", "prod.json/x", "prod/qlik"] {
            let err = src.fetch(&SecretRef::current(id)).await.unwrap_err();
            assert_eq!(err.error_type(), "secret_not_found", "{id}: {err:?}");
            assert!(!err.is_retriable());
        }
    }

    #[tokio::test]
    async fn traversal_and_odd_ids_are_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        let inner = tmp.path().join("inner");
        write(tmp.path(), "outside.json", b"{\"k\":\"CANARY-outside\"}");
        std::fs::create_dir_all(&inner).unwrap();
        let src = FileSource::new(&inner);
        for id in [
            "../outside",
            "a/../../outside",
            "..",
            "a/..",
            "/etc/passwd",
            "a\\b",
            "..\\outside",
            "",
            "a//b",
            "./a",
            "a/",
            "a\0b",
        ] {
            let err = src.fetch(&SecretRef::current(id)).await.unwrap_err();
            assert!(
                matches!(err, SourceError::Invalid { .. }),
                "{id:?} gave {err:?}"
            );
            assert_eq!(err.error_type(), "secret_invalid");
        }
    }

    #[tokio::test]
    async fn binary_and_empty_files() {
        let tmp = tempfile::tempdir().unwrap();
        let bytes = [0xff_u8, 0xfe, 0x00, 0x01, 0x80];
        write(tmp.path(), "bin.json", &bytes);
        write(tmp.path(), "empty.json", b"");
        let src = FileSource::new(tmp.path());

        let v = src.fetch(&SecretRef::current("bin")).await.unwrap();
        match &v.payload {
            SecretPayload::Binary(b) => assert_eq!(b.expose_secret().as_slice(), &bytes),
            SecretPayload::Text(_) => panic!("expected binary"),
        }
        assert_eq!(v.version, content_version(&bytes));

        let err = src.fetch(&SecretRef::current("empty")).await.unwrap_err();
        assert_eq!(err.error_type(), "secret_invalid");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn unreadable_file_is_access_denied() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "locked.json", b"{}");
        let path = tmp.path().join("locked.json");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
        // root ignores file permissions; the mapping can only be observed as another user.
        if std::fs::read(&path).is_ok() {
            return;
        }
        let err = FileSource::new(tmp.path())
            .fetch(&SecretRef::current("locked"))
            .await
            .unwrap_err();
        assert_eq!(err.error_type(), "secret_access_denied");
    }

    #[tokio::test]
    async fn a_directory_in_place_of_the_file_is_unavailable() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("d.json")).unwrap();
        let err = FileSource::new(tmp.path())
            .fetch(&SecretRef::current("d"))
            .await
            .unwrap_err();
        assert_eq!(err.error_type(), "secret_source_unavailable", "{err:?}");
    }

    #[tokio::test]
    async fn secret_content_never_appears_in_output() {
        let tmp = tempfile::tempdir().unwrap();
        let canary = "CANARY-file-5521";
        write(
            tmp.path(),
            "c.json",
            format!("{{\"password\":\"{canary}\"}}").as_bytes(),
        );
        let src = FileSource::new(tmp.path());
        let v = src.fetch(&SecretRef::current("c")).await.unwrap();
        let err = src
            .fetch(&at("c", VersionSelector::Stage("AWSPREVIOUS".into())))
            .await
            .unwrap_err();
        let out = format!("{v:?} {err} {err:?} {src:?}");
        assert!(!out.contains(canary), "{out}");
    }
}
