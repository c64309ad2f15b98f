//! [`LocalDirObjectStore`]: objects as files under a directory, for the standalone mode. Writes
//! are atomic (a temporary file in the same directory, synced, then renamed over the target), so
//! a crash never leaves a half-written image under its key.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::future::BoxFuture;
use sha2::{Digest, Sha256};

use super::{
    ObjectData, ObjectStore, StoreError, StoredObject, content_type_for_key, validate_key,
};

/// Files under a root directory; the key is the relative path. The HTTP URL of a key is
/// `{base_url}/images/{key}` (the standalone process serves that route). The content type read
/// back is the one implied by the key's extension.
///
/// # Example
///
/// ```
/// use images::LocalDirObjectStore;
///
/// let dir = tempfile::tempdir().unwrap();
/// let store = LocalDirObjectStore::new(dir.path(), "http://127.0.0.1:8080/").unwrap();
/// assert_eq!(store.url_for("products/m/p/x.png"), "http://127.0.0.1:8080/images/products/m/p/x.png");
/// ```
#[derive(Debug, Clone)]
pub struct LocalDirObjectStore {
    root: PathBuf,
    base_url: String,
}

fn io_error<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.display().to_string(),
        source,
    }
}

/// Where objects are written before they are renamed into place (same filesystem as the
/// objects, so the rename is atomic); cleared when the store opens.
const INCOMING_DIR: &str = ".incoming";

impl LocalDirObjectStore {
    /// A store under `root` (created if missing) whose objects are served at
    /// `{base_url}/images/{key}`.
    pub fn new(root: impl AsRef<Path>, base_url: &str) -> Result<Self, StoreError> {
        let root = root.as_ref();
        std::fs::create_dir_all(root).map_err(io_error("create directory", root))?;
        let root = root.canonicalize().map_err(io_error("resolve", root))?;
        let base_url = base_url.trim_end_matches('/').to_owned();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(StoreError::Config(format!(
                "base_url {base_url:?} must be an http(s) URL"
            )));
        }
        // Objects are written under `.incoming/` and renamed into place; whatever is left there
        // was cut short by a crash (kill -9 mid-write) and belongs to no object.
        let incoming = root.join(INCOMING_DIR);
        match std::fs::remove_dir_all(&incoming) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(io_error("clear", &incoming)(error)),
        }
        std::fs::create_dir_all(&incoming).map_err(io_error("create directory", &incoming))?;
        Ok(Self { root, base_url })
    }

    /// The root directory (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The HTTP URL of `key`: `{base_url}/images/{key}`.
    pub fn url_for(&self, key: &str) -> String {
        format!("{}/images/{key}", self.base_url)
    }

    /// The file of `key`, after checking the key is safe.
    pub fn path_for(&self, key: &str) -> Result<PathBuf, StoreError> {
        validate_key(key).map_err(|reason| StoreError::InvalidKey {
            key: key.to_owned(),
            reason,
        })?;
        Ok(self.root.join(key))
    }

    async fn put_file(
        &self,
        key: &str,
        bytes: Bytes,
        content_type: &str,
    ) -> Result<StoredObject, StoreError> {
        let path = self.path_for(key)?;
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(io_error("create directory", &dir))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = self
            .root
            .join(INCOMING_DIR)
            .join(format!("{name}.tmp-{:016x}", rand::random::<u64>()));
        let size = bytes.len() as u64;
        let etag = hex::encode(Sha256::digest(&bytes));
        let written = async {
            let temp_for_write = temp.clone();
            // Write and fsync off the async threads, then rename into place.
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                use std::io::Write;
                let mut file = std::fs::File::create(&temp_for_write)?;
                file.write_all(&bytes)?;
                file.sync_all()
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(io_error("write", &temp))?;
            tokio::fs::rename(&temp, &path)
                .await
                .map_err(io_error("rename into", &path))
        }
        .await;
        if let Err(err) = written {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(err);
        }
        Ok(StoredObject {
            uri: self.uri(key),
            key: key.to_owned(),
            size,
            etag: Some(etag),
            content_type: content_type.to_owned(),
            url: Some(self.url_for(key)),
        })
    }

    async fn get_file(&self, key: &str) -> Result<Option<ObjectData>, StoreError> {
        let path = self.path_for(key)?;
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(Some(ObjectData {
                bytes: Bytes::from(bytes),
                content_type: content_type_for_key(key).to_owned(),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("read", &path)(e)),
        }
    }

    async fn delete_file(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path_for(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_error("delete", &path)(e)),
        }
        // Best effort: drop directories left empty, up to the root.
        let mut dir = path.parent();
        while let Some(d) = dir {
            if d == self.root || tokio::fs::remove_dir(d).await.is_err() {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    }

    async fn exists_file(&self, key: &str) -> Result<bool, StoreError> {
        let path = self.path_for(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(meta) => Ok(meta.is_file()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_error("stat", &path)(e)),
        }
    }

    async fn list_files(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        // Start at the deepest directory the prefix names, then filter by the full prefix.
        let start = prefix.rsplit_once('/').map_or("", |(dir, _)| dir);
        let mut pending = vec![(self.root.join(start), start.to_owned())];
        let mut keys = Vec::new();
        while let Some((dir, rel)) = pending.pop() {
            let mut entries = match tokio::fs::read_dir(&dir).await {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error("list", &dir)(e)),
            };
            while let Some(entry) = entries.next_entry().await.map_err(io_error("list", &dir))? {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue; // temporary files of writes in progress
                }
                let key = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                let file_type = entry
                    .file_type()
                    .await
                    .map_err(io_error("stat", &entry.path()))?;
                if file_type.is_dir() {
                    pending.push((entry.path(), key));
                } else if key.starts_with(prefix) {
                    keys.push(key);
                }
            }
        }
        keys.sort();
        Ok(keys)
    }
}

impl ObjectStore for LocalDirObjectStore {
    fn put<'a>(
        &'a self,
        key: &'a str,
        bytes: Bytes,
        content_type: &'a str,
    ) -> BoxFuture<'a, Result<StoredObject, StoreError>> {
        Box::pin(self.put_file(key, bytes, content_type))
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<ObjectData>, StoreError>> {
        Box::pin(self.get_file(key))
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.delete_file(key))
    }

    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.exists_file(key))
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        Box::pin(self.list_files(prefix))
    }

    fn uri(&self, key: &str) -> String {
        format!("file://{}/{key}", self.root.display())
    }

    fn http_url<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        Box::pin(async move { Ok(Some(self.url_for(key))) })
    }
}
