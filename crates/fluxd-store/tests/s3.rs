//! Blobs on a real S3-compatible server (SeaweedFS, started by `scripts/services/s3.sh`, which
//! `scripts/test.sh` runs and which exports `FLUXD_TEST_S3_URL` and the `AWS_*` variables):
//! round trips, multipart streaming of files bigger than a part, prefixes, and presigned URLs
//! that work until they expire.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::Bytes;
use fluxd_store::conformance::test_s3_url as s3_url;
use fluxd_store::{BlobStore, StoreError};
use futures_util::StreamExt;

/// One plain HTTP/1.1 GET of an `http://` URL: the status, the head and the body.
fn http_get(url: &str) -> (u16, String, Vec<u8>) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (authority, target) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut stream = TcpStream::connect(authority).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status");
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, head, body)
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n").expect("size");
        let size = std::str::from_utf8(&raw[..line_end]).expect("hex");
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("0"), 16).expect("hex");
        raw = &raw[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

#[tokio::test]
async fn blobs_round_trip_on_s3() -> Result<(), StoreError> {
    let Some(url) = s3_url("round-trip") else {
        return Ok(());
    };
    let blobs = BlobStore::from_url(&url)?;
    assert!(blobs.can_presign());
    blobs
        .put(
            "samples/a.jpeg",
            Bytes::from_static(b"jpeg"),
            Some("image/jpeg"),
        )
        .await?;
    assert_eq!(
        blobs.get("samples/a.jpeg").await?,
        Bytes::from_static(b"jpeg")
    );
    let stream = blobs.get_stream("samples/a.jpeg").await?;
    assert_eq!(stream.size, 4);
    let chunks: Vec<_> = stream.chunks.collect().await;
    let joined: Vec<u8> = chunks.into_iter().collect::<Result<Vec<_>, _>>()?.concat();
    assert_eq!(joined, b"jpeg");
    // The prefix is where the keys live: the bucket without it sees them below it.
    let (bucket, prefix) = url
        .strip_prefix("s3://")
        .and_then(|r| r.split_once('/'))
        .expect("s3://bucket/prefix");
    let whole_bucket = BlobStore::from_url(&format!("s3://{bucket}"))?;
    assert_eq!(
        whole_bucket
            .get(&format!("{prefix}/samples/a.jpeg"))
            .await?,
        Bytes::from_static(b"jpeg")
    );
    blobs.delete("samples/a.jpeg").await?;
    assert!(matches!(
        blobs.get("samples/a.jpeg").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        blobs.get_stream("samples/a.jpeg").await,
        Err(StoreError::NotFound(_))
    ));
    // Deleting what is gone succeeds (retention sweeps repeat after a crash).
    blobs.delete("samples/a.jpeg").await?;
    Ok(())
}

#[tokio::test]
async fn big_files_stream_through_multipart_uploads() -> Result<(), StoreError> {
    let Some(url) = s3_url("multipart") else {
        return Ok(());
    };
    let blobs = BlobStore::from_url(&url)?;
    let dir = tempfile::tempdir().map_err(|e| StoreError::Invalid(e.to_string()))?;
    let io = |e: std::io::Error| StoreError::Invalid(e.to_string());
    // 20 MiB: three parts of the 8 MiB upload chunk, the last one short; a pattern that shows
    // any misplaced byte.
    let data: Vec<u8> = (0..20usize << 20).map(|i| (i % 251) as u8).collect();
    let src = dir.path().join("in.bin");
    std::fs::write(&src, &data).map_err(io)?;
    blobs.put_file("loras/big.safetensors", &src).await?;
    let out = dir.path().join("out.bin");
    blobs.get_to_file("loras/big.safetensors", &out).await?;
    assert!(std::fs::read(&out).map_err(io)? == data, "bytes differ");
    // An empty file is an object too (a multipart upload of no parts).
    std::fs::write(&src, b"").map_err(io)?;
    blobs.put_file("loras/empty", &src).await?;
    assert!(blobs.get("loras/empty").await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn presigned_urls_download_until_they_expire() -> Result<(), StoreError> {
    let Some(url) = s3_url("presigned") else {
        return Ok(());
    };
    let blobs = BlobStore::from_url(&url)?;
    blobs
        .put(
            "samples/p.png",
            Bytes::from_static(b"png bytes"),
            Some("image/png"),
        )
        .await?;
    let link = blobs
        .presigned_get("samples/p.png", Duration::from_secs(600))
        .await?;
    let link_owned = link.clone();
    let (status, head, body) = tokio::task::spawn_blocking(move || http_get(&link_owned))
        .await
        .expect("join");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, b"png bytes");
    // The type given at upload comes back with the object.
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: image/png"),
        "{head}"
    );
    // Tampering with the signed query fails.
    let tampered = link.replacen("X-Amz-Expires=600", "X-Amz-Expires=6000", 1);
    assert_ne!(tampered, link, "{link}");
    let (status, _, _) = tokio::task::spawn_blocking(move || http_get(&tampered))
        .await
        .expect("join");
    assert_eq!(status, 403);
    // A URL past its expiry is refused by the server.
    let short = blobs
        .presigned_get("samples/p.png", Duration::from_secs(1))
        .await?;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, _, _) = tokio::task::spawn_blocking(move || http_get(&short))
        .await
        .expect("join");
    assert_eq!(status, 403);
    Ok(())
}
