//! [`copy`]: the whole move, page by page, blobs before the records that name them, with counts.

use std::collections::BTreeMap;
use std::fmt;

use futures_util::{stream, StreamExt, TryStreamExt};

use super::{Imported, Record, RecordKind, Snapshot, StoreCopy, PAGE};
use crate::{BlobCopy, BlobStore, Result, StoreError};

/// Blobs copied at once.
const BLOBS_IN_FLIGHT: usize = 4;

/// How many of one kind were copied and how many the target had already.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Not in the target before, and now there.
    pub copied: u64,
    /// Already in the target (left as they were).
    pub already_there: u64,
}

/// What a copy did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Per kind of record (every kind is present, zeros included).
    pub records: BTreeMap<RecordKind, Counts>,
    /// Blobs (images and LoRA files), when they were copied.
    pub blobs: Option<Counts>,
    /// Bytes of the blobs copied.
    pub blob_bytes: u64,
    /// Keys of blobs that records name but the source does not have (nothing to copy).
    pub missing_blobs: Vec<String>,
}

impl CopyReport {
    fn new(with_blobs: bool) -> Self {
        Self {
            records: RecordKind::ALL.map(|k| (k, Counts::default())).into(),
            blobs: with_blobs.then(Counts::default),
            ..Self::default()
        }
    }

    /// Whether anything at all was copied (a second run copies nothing).
    pub fn copied_anything(&self) -> bool {
        self.records.values().any(|c| c.copied > 0) || self.blobs.is_some_and(|c| c.copied > 0)
    }
}

impl fmt::Display for CopyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<20} {:>10} {:>14}", "", "copied", "already there")?;
        for (kind, counts) in &self.records {
            writeln!(
                f,
                "{:<20} {:>10} {:>14}",
                kind.label(),
                counts.copied,
                counts.already_there
            )?;
        }
        match self.blobs {
            Some(counts) => writeln!(
                f,
                "{:<20} {:>10} {:>14}   ({} bytes copied)",
                "blobs", counts.copied, counts.already_there, self.blob_bytes
            )?,
            None => writeln!(f, "blobs: not copied (the target uses the same blob store)")?,
        }
        for key in &self.missing_blobs {
            writeln!(f, "missing in the source (not copied): blob {key}")?;
        }
        if self.copied_anything() {
            write!(f, "copied")
        } else {
            write!(f, "nothing new to copy: the target already has everything")
        }
    }
}

/// Copies every record of `source` into `target` (`extra` first: records that live outside the
/// source database, such as a data directory's URL signing key), and with `blobs` =
/// `(from, to)` every blob the records name, each before the page of records that names it, so
/// a copied record never points to a missing blob. Records already in the target are left
/// alone, so an interrupted copy can be run again and a second run copies nothing.
/// `progress` sees the report after every page. A target that is the source's own database is
/// refused before anything is read.
pub async fn copy(
    source: &mut dyn Snapshot,
    target: &dyn StoreCopy,
    blobs: Option<(&BlobStore, &BlobStore)>,
    extra: Vec<Record>,
    progress: &mut (dyn FnMut(&CopyReport) + Send),
) -> Result<CopyReport> {
    if source.identity().await? == target.identity().await? {
        return Err(StoreError::Invalid(
            "the source and the target are the same database: nothing to copy".into(),
        ));
    }
    let mut report = CopyReport::new(blobs.is_some());
    let mut page = extra;
    page.sort_by_key(Record::kind);
    loop {
        if page.is_empty() {
            page = source.next_page(PAGE).await?;
            if page.is_empty() {
                return Ok(report);
            }
        }
        if let Some((from, to)) = blobs {
            copy_blobs(&page, from, to, &mut report).await?;
        }
        let done = target.import(&page).await?;
        for (record, imported) in page.iter().zip(done) {
            count(report.records.entry(record.kind()).or_default(), imported);
        }
        progress(&report);
        page = Vec::new();
    }
}

fn count(counts: &mut Counts, imported: Imported) {
    match imported {
        Imported::Copied => counts.copied += 1,
        Imported::AlreadyThere => counts.already_there += 1,
    }
}

/// Copies the blobs the records of `page` name.
async fn copy_blobs(
    page: &[Record],
    from: &BlobStore,
    to: &BlobStore,
    report: &mut CopyReport,
) -> Result<()> {
    let results: Vec<(String, BlobCopy)> = stream::iter(page.iter().filter_map(Record::blob))
        .map(|(key, sha256)| async move {
            let done = from.copy_to(key, to, sha256).await;
            done.map(|done| (key.to_owned(), done))
                .map_err(|err| blob_error(key, err))
        })
        .buffer_unordered(BLOBS_IN_FLIGHT)
        .try_collect()
        .await?;
    let counts = report.blobs.get_or_insert_with(Counts::default);
    for (key, done) in results {
        match done {
            BlobCopy::Copied(bytes) => {
                counts.copied += 1;
                report.blob_bytes += bytes;
            }
            BlobCopy::AlreadyThere => counts.already_there += 1,
            BlobCopy::Missing => {
                tracing::warn!(blob = %key, "a record names a blob the source does not have");
                report.missing_blobs.push(key);
            }
        }
    }
    Ok(())
}

/// Says which blob failed, keeping the error's kind (retryable or not).
fn blob_error(key: &str, err: StoreError) -> StoreError {
    tracing::error!(blob = %key, error = %err, "copying a blob failed");
    err
}
