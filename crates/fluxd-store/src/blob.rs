//! Blobs (images, LoRA files) behind `object_store`: local files by default, any other object
//! store (S3, ...) by handing in its client.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

use crate::StoreError;

/// Bytes per part when streaming a file in (S3's minimum part is 5 MiB).
const CHUNK: usize = 8 << 20;
/// Parts uploaded at once.
const MAX_PARTS_IN_FLIGHT: usize = 4;

/// Named byte blobs. Keys are `/`-separated relative paths such as `samples/<task id>.jpeg`.
#[derive(Clone, Debug)]
pub struct BlobStore {
    inner: Arc<dyn ObjectStore>,
    /// For local blobs, their folder: writes are fsynced there before they count as done.
    local_root: Option<std::path::PathBuf>,
}

impl BlobStore {
    /// Wraps any object store (S3 and friends plug in here).
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            local_root: None,
        }
    }

    /// Blobs as files under `dir`, created if missing.
    pub fn local(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(StoreError::io)?;
        let files = LocalFileSystem::new_with_prefix(dir)?;
        Ok(Self {
            inner: Arc::new(files),
            local_root: Some(dir.to_path_buf()),
        })
    }

    /// Stores `bytes` under `key`, replacing what was there.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        self.inner
            .put(&parse_key(key)?, PutPayload::from_bytes(bytes))
            .await?;
        self.sync(key).await
    }

    /// Local files are renamed into place without an fsync by `object_store`; a result recorded
    /// as durable must not point to an image a power cut can lose, so the file and its folder are
    /// synced. (Object stores are durable once the put returns.)
    async fn sync(&self, key: &str) -> Result<(), StoreError> {
        let Some(root) = &self.local_root else {
            return Ok(());
        };
        let file = root.join(key);
        tokio::task::spawn_blocking(move || {
            std::fs::File::open(&file)?.sync_all()?;
            if let Some(dir) = file.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok::<(), std::io::Error>(())
        })
        .await
        .map_err(|e| StoreError::io(std::io::Error::other(e)))?
        .map_err(StoreError::io)
    }

    /// Stores the file at `path` under `key` in chunks (a multipart upload on object stores,
    /// a temporary file renamed into place locally), so a gigabyte LoRA never sits in memory.
    pub async fn put_file(&self, key: &str, path: &Path) -> Result<(), StoreError> {
        use tokio::io::AsyncReadExt;
        let mut file = tokio::fs::File::open(path).await.map_err(StoreError::io)?;
        let upload = self.inner.put_multipart(&parse_key(key)?).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, CHUNK);
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match file.read(&mut buf).await {
                Ok(n) => n,
                Err(err) => {
                    // Best effort: the failure to report is the read's.
                    let _ = writer.abort().await;
                    return Err(StoreError::io(err));
                }
            };
            if n == 0 {
                break;
            }
            writer.wait_for_capacity(MAX_PARTS_IN_FLIGHT).await?;
            writer.write(&buf[..n]);
        }
        writer.finish().await?;
        self.sync(key).await
    }

    /// Copies the blob under `key` to a new file at `path` as it streams in.
    pub async fn get_to_file(&self, key: &str, path: &Path) -> Result<(), StoreError> {
        use futures_util::StreamExt;
        use tokio::io::AsyncWriteExt;
        let mut stream = self.inner.get(&parse_key(key)?).await?.into_stream();
        let mut file = tokio::fs::File::create(path)
            .await
            .map_err(StoreError::io)?;
        while let Some(chunk) = stream.next().await {
            file.write_all(&chunk?).await.map_err(StoreError::io)?;
        }
        file.flush().await.map_err(StoreError::io)?;
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
    async fn files_stream_in_and_out_across_chunk_boundaries() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(StoreError::io)?;
        let blobs = BlobStore::local(dir.path().join("blobs"))?;
        // Two and a half chunks of a pattern that shows any misplaced byte.
        let data: Vec<u8> = (0..CHUNK * 5 / 2).map(|i| (i % 251) as u8).collect();
        let src = dir.path().join("in.bin");
        std::fs::write(&src, &data).map_err(StoreError::io)?;
        blobs.put_file("loras/big.safetensors", &src).await?;
        assert_eq!(
            blobs.get("loras/big.safetensors").await?,
            Bytes::from(data.clone())
        );
        let out = dir.path().join("out.bin");
        blobs.get_to_file("loras/big.safetensors", &out).await?;
        assert_eq!(std::fs::read(&out).map_err(StoreError::io)?, data);
        // An empty file is a blob too.
        std::fs::write(&src, b"").map_err(StoreError::io)?;
        blobs.put_file("loras/empty", &src).await?;
        assert!(blobs.get("loras/empty").await?.is_empty());
        let missing = blobs.get_to_file("loras/none", &out).await;
        assert!(
            matches!(missing, Err(StoreError::NotFound(_))),
            "{missing:?}"
        );
        Ok(())
    }

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
