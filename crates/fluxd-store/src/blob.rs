//! Blobs (images, LoRA files) behind `object_store`: local files by default, or an S3-compatible
//! bucket ([`BlobStore::from_url`]). Large blobs stream both ways, never held whole in memory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::signer::Signer;
use object_store::{
    Attribute, Attributes, BackoffConfig, ObjectStore, ObjectStoreExt, PutMultipartOptions,
    PutOptions, PutPayload, RetryConfig, WriteMultipart,
};

use crate::StoreError;

/// Bytes per part when streaming a file in (S3's minimum part is 5 MiB).
const CHUNK: usize = 8 << 20;
/// Parts uploaded at once.
const MAX_PARTS_IN_FLIGHT: usize = 4;
/// How long one object-store call keeps retrying a server that does not answer (or answers
/// 5xx) before it fails as [`StoreError::Unavailable`]. `object_store`'s default is 3 minutes,
/// which would hold an image download or a submit that long against a down bucket; a request
/// path answers 503 well before a client gives up, and a worker re-queues its task.
const RETRY_TIMEOUT: Duration = Duration::from_secs(20);
/// Retries of one call within [`RETRY_TIMEOUT`] (0.1 s doubling: about 3 s of waiting in all).
const MAX_RETRIES: usize = 5;

/// Named byte blobs. Keys are `/`-separated relative paths such as `samples/<task id>.jpeg`.
#[derive(Clone, Debug)]
pub struct BlobStore {
    inner: Arc<dyn ObjectStore>,
    /// Prepended to every key (the path of `s3://bucket/prefix`).
    prefix: Option<ObjectPath>,
    /// Makes presigned URLs, for the stores that have them (S3).
    signer: Option<Arc<dyn Signer>>,
    /// For local blobs, their folder: writes are fsynced there before they count as done.
    local_root: Option<PathBuf>,
}

/// A blob being read: its size, then its bytes as they arrive.
pub struct BlobStream {
    /// Length in bytes.
    pub size: u64,
    /// The content, chunk by chunk; a failure mid-way ends it with the error.
    pub chunks: BoxStream<'static, Result<Bytes, StoreError>>,
}

impl std::fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStream")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl BlobStore {
    /// Wraps any object store.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            prefix: None,
            signer: None,
            local_root: None,
        }
    }

    /// Blobs as files under `dir`, created if missing.
    pub fn local(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(StoreError::io)?;
        let files = LocalFileSystem::new_with_prefix(dir)?;
        Ok(Self {
            local_root: Some(dir.to_path_buf()),
            ..Self::new(Arc::new(files))
        })
    }

    /// The blob store a URL names: `file://DIR` (local files; `file:///abs/dir` or
    /// `file://relative/dir`) or `s3://bucket[/prefix]`, an S3-compatible bucket whose
    /// credentials, region and endpoint come from the standard `AWS_*` environment variables
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL` for
    /// MinIO/SeaweedFS/R2-style servers, `AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint), as
    /// `object_store` reads them. Nothing is contacted yet.
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        if let Some(dir) = url.strip_prefix("file://") {
            if dir.is_empty() {
                return Err(StoreError::Invalid(format!("{url:?} names no directory")));
            }
            return Self::local(dir);
        }
        if url.starts_with("s3://") {
            return Self::s3(url, AmazonS3Builder::from_env());
        }
        Err(StoreError::Invalid(format!(
            "blob store URL {url:?}: use file://DIR or s3://bucket/prefix"
        )))
    }

    /// The bucket of `url` (`s3://bucket[/prefix]`) through `builder`'s client settings.
    fn s3(url: &str, builder: AmazonS3Builder) -> Result<Self, StoreError> {
        let rest = url.strip_prefix("s3://").unwrap_or(url);
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(StoreError::Invalid(format!("{url:?} names no bucket")));
        }
        let prefix = prefix.trim_end_matches('/');
        let prefix = if prefix.is_empty() {
            None
        } else {
            Some(parse_key(prefix)?)
        };
        let retry = RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: MAX_RETRIES,
            retry_timeout: RETRY_TIMEOUT,
        };
        let s3 = builder
            .with_bucket_name(bucket)
            .with_retry(retry)
            .build()
            .map_err(|e| StoreError::Invalid(format!("S3 blob store {url:?}: {e}")))?;
        let s3 = Arc::new(s3);
        Ok(Self {
            prefix,
            signer: Some(s3.clone()),
            ..Self::new(s3)
        })
    }

    /// Whether [`BlobStore::presigned_get`] can work (S3 yes, local files no).
    pub fn can_presign(&self) -> bool {
        self.signer.is_some()
    }

    /// The object store's own URL that lets anyone GET the blob under `key` for `ttl` (an S3
    /// presigned URL), so the bytes need not pass through fluxd.
    pub async fn presigned_get(&self, key: &str, ttl: Duration) -> Result<String, StoreError> {
        let signer = self.signer.as_ref().ok_or_else(|| {
            StoreError::Invalid("presigned URLs need an S3 blob store (s3://...)".into())
        })?;
        let url = signer
            .signed_url(object_store::signer::Method::GET, &self.path(key)?, ttl)
            .await?;
        Ok(url.to_string())
    }

    /// The object path of `key`, below the prefix.
    fn path(&self, key: &str) -> Result<ObjectPath, StoreError> {
        let key = parse_key(key)?;
        Ok(match &self.prefix {
            Some(prefix) => prefix.parts().chain(key.parts()).collect(),
            None => key,
        })
    }

    /// Stores `bytes` under `key`, replacing what was there. `content_type` is kept with the
    /// object where the store keeps such metadata (S3: served back on a presigned GET).
    pub async fn put(
        &self,
        key: &str,
        bytes: Bytes,
        content_type: Option<&'static str>,
    ) -> Result<(), StoreError> {
        let mut attributes = Attributes::new();
        // Local files have no metadata (object_store refuses attributes there).
        if let (Some(content_type), None) = (content_type, &self.local_root) {
            attributes.insert(Attribute::ContentType, content_type.into());
        }
        let options = PutOptions {
            attributes,
            ..PutOptions::default()
        };
        self.inner
            .put_opts(&self.path(key)?, PutPayload::from_bytes(bytes), options)
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
        let upload = self.inner.put_multipart(&self.path(key)?).await?;
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
        use tokio::io::AsyncWriteExt;
        let mut stream = self.get_stream(key).await?.chunks;
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
        Ok(self.inner.get(&self.path(key)?).await?.bytes().await?)
    }

    /// The blob under `key` as a stream of chunks (to send on without holding it whole);
    /// [`StoreError::NotFound`] if there is none, known before the first chunk.
    pub async fn get_stream(&self, key: &str) -> Result<BlobStream, StoreError> {
        let found = self.inner.get(&self.path(key)?).await?;
        Ok(BlobStream {
            size: found.meta.size,
            chunks: found
                .into_stream()
                .map(|chunk| chunk.map_err(StoreError::from))
                .boxed(),
        })
    }

    /// Deletes the blob under `key`. Deleting a missing blob succeeds, so retention sweeps can be
    /// repeated after a crash.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self.inner.delete(&self.path(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }
}

/// What [`BlobStore::copy_to`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobCopy {
    /// The blob was copied, this many bytes.
    Copied(u64),
    /// The target already had a blob of that key and size.
    AlreadyThere,
    /// The source has no blob of that key.
    Missing,
}

impl BlobStore {
    /// Copies the blob under `key` into `target` under the same key, streamed in parts (never
    /// whole in memory), unless `target` already has one of the same size: object stores and
    /// `object_store`'s local files both make a blob appear whole or not at all, so one of the
    /// right size is a finished copy. With `sha256` (lowercase hex, as a fine-tune record states
    /// it) the bytes are checked on the way and a mismatch leaves nothing in `target`.
    pub async fn copy_to(
        &self,
        key: &str,
        target: &BlobStore,
        sha256: Option<&str>,
    ) -> Result<BlobCopy, StoreError> {
        use sha2::{Digest, Sha256};
        let from = self.path(key)?;
        let size = match self.inner.head(&from).await {
            Ok(meta) => meta.size,
            Err(object_store::Error::NotFound { .. }) => return Ok(BlobCopy::Missing),
            Err(err) => return Err(err.into()),
        };
        let to = target.path(key)?;
        match target.inner.head(&to).await {
            Ok(meta) if meta.size == size => return Ok(BlobCopy::AlreadyThere),
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(err) => return Err(err.into()),
        }
        let found = self.inner.get(&from).await?;
        let mut attributes = Attributes::new();
        if target.local_root.is_none() {
            // S3 serves this type back on a presigned GET: keep the source's, or the image's.
            let content_type = found
                .attributes
                .get(&Attribute::ContentType)
                .cloned()
                .or_else(|| {
                    let ext = key.rsplit_once('.').map_or("", |(_, ext)| ext);
                    image_content_type(ext).map(Into::into)
                });
            if let Some(content_type) = content_type {
                attributes.insert(Attribute::ContentType, content_type);
            }
        }
        let options = PutMultipartOptions {
            attributes,
            ..PutMultipartOptions::default()
        };
        let upload = target.inner.put_multipart_opts(&to, options).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, CHUNK);
        let mut hasher = Sha256::new();
        let mut copied = 0u64;
        let mut chunks = found.into_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(err) => {
                    // Best effort: the failure to report is the read's.
                    let _ = writer.abort().await;
                    return Err(err.into());
                }
            };
            writer.wait_for_capacity(MAX_PARTS_IN_FLIGHT).await?;
            hasher.update(&chunk);
            copied += chunk.len() as u64;
            writer.put(chunk);
        }
        if let Some(expected) = sha256 {
            let got = hex::encode(hasher.finalize());
            if !got.eq_ignore_ascii_case(expected) {
                let _ = writer.abort().await;
                return Err(StoreError::Corrupt(format!(
                    "blob {key}: SHA-256 {got}, its record says {expected}"
                )));
            }
        }
        writer.finish().await?;
        target.sync(key).await?;
        Ok(BlobCopy::Copied(copied))
    }
}

/// The media type of an image file extension the worker writes (`jpeg`, `png`).
pub fn image_content_type(ext: &str) -> Option<&'static str> {
    match ext {
        "jpeg" => Some("image/jpeg"),
        "png" => Some("image/png"),
        _ => None,
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
            .put("samples/a.jpeg", Bytes::from_static(b"jpeg bytes"), None)
            .await?;
        assert_eq!(
            blobs.get("samples/a.jpeg").await?,
            Bytes::from_static(b"jpeg bytes")
        );
        assert!(dir.path().join("blobs/samples/a.jpeg").is_file());
        blobs
            .put(
                "samples/a.jpeg",
                Bytes::from_static(b"v2"),
                Some("image/jpeg"),
            )
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
    async fn an_unreachable_bucket_is_a_retryable_failure() -> Result<(), StoreError> {
        // Nothing listens on port 1: every connection is refused, through all the retries.
        let builder = AmazonS3Builder::new()
            .with_endpoint("http://127.0.0.1:1")
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("key")
            .with_secret_access_key("secret");
        let blobs = BlobStore::s3("s3://bucket/prefix", builder)?;
        let got = blobs.get("samples/a.jpeg").await;
        assert!(
            matches!(&got, Err(err @ StoreError::Unavailable(_)) if err.is_retryable()),
            "{got:?}"
        );
        let put = blobs.put("samples/a.jpeg", Bytes::new(), None).await;
        assert!(matches!(put, Err(StoreError::Unavailable(_))), "{put:?}");
        // Presigning is local arithmetic: it needs no connection.
        let url = blobs
            .presigned_get("samples/a.jpeg", Duration::from_secs(600))
            .await?;
        assert!(
            url.starts_with("http://127.0.0.1:1/bucket/prefix/samples/a.jpeg?"),
            "{url}"
        );
        assert!(url.contains("X-Amz-Expires=600"), "{url}");
        Ok(())
    }

    #[test]
    fn blob_urls_are_checked() {
        for bad in [
            "",
            "blobs",
            "http://host/x",
            "file://",
            "s3://",
            "s3:///prefix",
            "s3://b/../x",
        ] {
            assert!(
                matches!(BlobStore::from_url(bad), Err(StoreError::Invalid(_))),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn file_urls_are_local_directories() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(StoreError::io)?;
        let url = format!("file://{}", dir.path().join("b").display());
        let blobs = BlobStore::from_url(&url)?;
        assert!(!blobs.can_presign());
        blobs
            .put("samples/x.png", Bytes::from_static(b"x"), Some("image/png"))
            .await?;
        assert!(dir.path().join("b/samples/x.png").is_file());
        assert!(matches!(
            blobs
                .presigned_get("samples/x.png", Duration::from_secs(1))
                .await,
            Err(StoreError::Invalid(_))
        ));
        Ok(())
    }

    #[tokio::test]
    async fn keys_that_escape_the_directory_are_refused() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(StoreError::io)?;
        let blobs = BlobStore::local(dir.path())?;
        for key in ["", "../x", "a//b", "a/../b"] {
            let put = blobs.put(key, Bytes::from_static(b"x"), None).await;
            assert!(
                matches!(put, Err(StoreError::Invalid(_))),
                "{key:?}: {put:?}"
            );
        }
        Ok(())
    }
}
