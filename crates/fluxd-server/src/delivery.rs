//! Where clients download images from. By default the image URL is fluxd's own signed URL,
//! `<public url>/v1/images/<task id>.<ext>?exp=&sig=` (see [`crate::signing`]), and whichever API
//! node it reaches streams the object out of the blob store. With [`Delivery::Presigned`] it is
//! the object store's own presigned GET URL instead, valid as long (`--result-url-ttl`), so image
//! bytes never pass through the API nodes — as the reference API hands out links to its delivery
//! host.

use std::time::SystemTime;

use fluxd_store::StoreError;
use uuid::Uuid;

use crate::state::AppState;

/// Blob keys of generated images start with this; the rest is the file name in the URLs.
pub const SAMPLES_PREFIX: &str = "samples/";

/// How image URLs are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Delivery {
    /// fluxd's signed URL, served by the API nodes.
    #[default]
    Signed,
    /// The object store's presigned URL (needs an S3 blob store).
    Presigned,
}

pub use fluxd_store::image_content_type as content_type;

/// The blob key of the image file `<task id>.<ext>` (or a preview's, `<task id>-preview.jpeg`).
pub fn sample_key(file: &str) -> String {
    format!("{SAMPLES_PREFIX}{file}")
}

/// What ends a preview's file stem: `<task id>-preview.jpeg` beside the task's image.
const PREVIEW_SUFFIX: &str = "-preview";

/// The blob key of a running task's preview: one per task, each preview replacing the last,
/// served and signed like its image.
pub fn preview_key(task_id: Uuid) -> String {
    sample_key(&format!("{task_id}{PREVIEW_SUFFIX}.jpeg"))
}

/// Whether `stem` names a file fluxd writes: a task id, or a task id's preview. Nothing else is
/// signed or served, so no name can walk the blob store.
pub fn known_stem(stem: &str) -> bool {
    let id = stem.strip_suffix(PREVIEW_SUFFIX).unwrap_or(stem);
    Uuid::parse_str(id).is_ok()
}

/// A URL to download the image stored under `sample_key`, valid for the configured lifetime
/// from `now`, made the way `delivery` says.
pub async fn sample_url(
    state: &AppState,
    delivery: Delivery,
    sample_key: &str,
    now: SystemTime,
) -> Result<String, StoreError> {
    match delivery {
        Delivery::Signed => Ok(signed_url(state, sample_key, now)),
        Delivery::Presigned => {
            state
                .blobs()
                .presigned_get(sample_key, state.config().result_url_ttl)
                .await
        }
    }
}

/// fluxd's own signed URL of the image under `sample_key` (never fails: signing is local).
pub fn signed_url(state: &AppState, sample_key: &str, now: SystemTime) -> String {
    let file = sample_key
        .strip_prefix(SAMPLES_PREFIX)
        .unwrap_or(sample_key);
    let query = state
        .signer()
        .sign(file, now, state.config().result_url_ttl);
    format!("{}/v1/images/{file}?{query}", state.config().public_url)
}

/// The blob key behind an image URL of either kind: both end their path in `<task id>.<ext>`.
/// None for anything else, so a payload never makes fluxd sign a name it did not write.
pub fn sample_key_of_url(url: &str) -> Option<String> {
    let path = url.split(['?', '#']).next()?;
    let file = path.rsplit('/').next()?;
    let (stem, ext) = file.rsplit_once('.')?;
    if !known_stem(stem) {
        return None;
    }
    content_type(ext).map(|_| sample_key(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_back_from_both_kinds_of_url() {
        let id = "0190f1c2-0000-7000-8000-000000000001";
        let signed = format!("https://img.example.com/v1/images/{id}.jpeg?exp=1&sig=ab");
        assert_eq!(
            sample_key_of_url(&signed),
            Some(format!("samples/{id}.jpeg"))
        );
        let presigned = format!(
            "http://127.0.0.1:9000/bucket/prefix/samples/{id}.png?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        );
        assert_eq!(
            sample_key_of_url(&presigned),
            Some(format!("samples/{id}.png"))
        );
        let preview = format!("https://img.example.com/v1/images/{id}-preview.jpeg?exp=1&sig=ab");
        assert_eq!(
            sample_key_of_url(&preview),
            Some(format!("samples/{id}-preview.jpeg"))
        );
        for other in [
            "https://x/v1/images/../../etc/passwd",
            &format!("https://x/v1/images/{id}-other.jpeg"),
            "https://x/v1/images/notauuid.jpeg?exp=1",
            &format!("https://x/v1/images/{id}.gif"),
            "",
        ] {
            assert_eq!(sample_key_of_url(other), None, "{other}");
        }
    }
}
