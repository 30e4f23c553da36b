//! Blobs (images, LoRA files) behind `object_store`: local files by default, any other object
//! store (S3, ...) by handing in its client.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::StoreError;

/// Named byte blobs. Keys are `/`-separated relative paths such as `samples/<task id>.jpeg`.
#[derive(Clone, Debug)]
pub struct BlobStore {
    inner: Arc<dyn ObjectStore>,
}

impl BlobStore {
    /// Wraps any object store (S3 and friends plug in here).
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self { inner }
    }

    /// Blobs as files under `dir`, created if missing.
    pub fn local(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(StoreError::io)?;
        let files = LocalFileSystem::new_with_prefix(dir)?;
        Ok(Self::new(Arc::new(files)))
    }

    /// Stores `bytes` under `key`, replacing what was there.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        self.inner
            .put(&parse_key(key)?, PutPayload::from_bytes(bytes))
            .await?;
        Ok(())
    }

    /// The blob under `key`; [`StoreError::NotFound`] if there is none.
    pub async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        Ok(self.inner.get(&parse_key(key)?).await?.bytes().await?)
    }

    /// Deletes the blob under `key`. Deleting a missing blob succeeds, so retention sweeps can be
    /// repeated after a crash.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self.inner.delete(&parse_key(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }
}

/// Keys are checked, not cleaned: `..`, empty segments and the like are refused rather than
/// silently rewritten into some other key.
fn parse_key(key: &str) -> Result<ObjectPath, StoreError> {
    if key.is_empty() {
        return Err(StoreError::Invalid("empty blob key".into()));
    }
    ObjectPath::parse(key).map_err(|err| StoreError::Invalid(format!("blob key {key:?}: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_blobs_round_trip_and_delete_is_idempotent() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(StoreError::io)?;
        let blobs = BlobStore::local(dir.path().join("blobs"))?;
        blobs
            .put("samples/a.jpeg", Bytes::from_static(b"jpeg bytes"))
            .await?;
        assert_eq!(
            blobs.get("samples/a.jpeg").await?,
            Bytes::from_static(b"jpeg bytes")
        );
        assert!(dir.path().join("blobs/samples/a.jpeg").is_file());
        blobs
            .put("samples/a.jpeg", Bytes::from_static(b"v2"))
            .await?;
        assert_eq!(
            blobs.get("samples/a.jpeg").await?,
            Bytes::from_static(b"v2")
        );
        blobs.delete("samples/a.jpeg").await?;
        assert!(matches!(
            blobs.get("samples/a.jpeg").await,
            Err(StoreError::NotFound(_))
        ));
        blobs.delete("samples/a.jpeg").await?;
        Ok(())
    }

    #[tokio::test]
    async fn keys_that_escape_the_directory_are_refused() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(StoreError::io)?;
        let blobs = BlobStore::local(dir.path())?;
        for key in ["", "../x", "a//b", "a/../b"] {
            let put = blobs.put(key, Bytes::from_static(b"x")).await;
            assert!(
                matches!(put, Err(StoreError::Invalid(_))),
                "{key:?}: {put:?}"
            );
        }
        Ok(())
    }
}
