//! `fluxd store …`: the store as a whole. `copy` moves a deployment to another store (SQLite and
//! local files to PostgreSQL and S3, say), records and blobs, leaving the source as it was.

use std::path::Path;

use anyhow::{Context, Result};
use clap::Subcommand;
use fluxd_server::DataDir;
use fluxd_store::copy::{self, CopyReport, Record};
use fluxd_store::{BlobStore, DatabaseUrl};

use crate::location::StoreLocation;
use crate::serve::block_on;

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy every record (keys, fine-tunes, tasks in every status, the webhook outbox, the URL
    /// signing key) and every blob (images, LoRA files) of this store into another one,
    /// preserving ids, hashes, times and statuses. The source (--data-dir, or --database and
    /// --blobs) is only read. What the target already has is left alone, so an interrupted copy
    /// can be run again, and a second run copies nothing. Stop the deployment first: what it
    /// writes after the copy began is not copied.
    Copy(CopyArgs),
}

/// `fluxd store copy`.
#[derive(Debug, clap::Args)]
pub struct CopyArgs {
    /// The store to copy from.
    #[command(flatten)]
    pub from: StoreLocation,
    /// The database to copy into: `postgres://USER:PASSWORD@HOST:PORT/DATABASE` or
    /// `sqlite://PATH` (created and migrated if new). Prefer the environment variable (it may
    /// hold a password, which is never shown).
    #[arg(long, env = "FLUXD_TO_DATABASE_URL", hide_env_values = true)]
    pub to_database: DatabaseUrl,
    /// The blob store to copy into: `s3://bucket/prefix` (credentials and endpoint from the
    /// AWS_* variables) or `file://DIR`.
    #[arg(long, env = "FLUXD_TO_BLOBS_URL")]
    pub to_blobs: String,
}

pub fn run(cmd: StoreCommand) -> Result<()> {
    match cmd {
        StoreCommand::Copy(args) => block_on(copy_store(args)),
    }
}

async fn copy_store(args: CopyArgs) -> Result<()> {
    let from = &args.from;
    // The data directory is read, never created or written to; it is only needed for what the
    // flags do not name.
    let data = DataDir::existing(&from.data_dir);
    let data = if from.database.is_none() || from.blobs.is_none() {
        Some(data.with_context(|| {
            format!(
                "the data directory {} to copy from",
                from.data_dir.display()
            )
        })?)
    } else {
        data.ok()
    };
    let source_url = match (&from.database, &data) {
        (Some(url), _) => url.clone(),
        (None, Some(data)) => DatabaseUrl::Sqlite(data.sqlite_path()),
        (None, None) => anyhow::bail!("no source database"),
    };
    // The data directory's own database signs URLs with its key file: it becomes the target's
    // shared key, so that URLs handed out before the move keep verifying.
    let mut extra: Vec<Record> = Vec::new();
    if let Some(data) = data.as_ref().filter(|data| from.own_database(data)) {
        if let Some(secret) = fluxd_server::signing::key_file_as_shared_secret(data)
            .context("reading the URL signing key")?
        {
            extra.push(Record::Secret(secret));
        }
    }

    // Refused before the target is opened (which would migrate it); other spellings of one
    // database are caught by `copy::copy` itself.
    if let (DatabaseUrl::Sqlite(a), DatabaseUrl::Sqlite(b)) = (&source_url, &args.to_database) {
        let canonical = |p: &Path| std::fs::canonicalize(p).ok();
        anyhow::ensure!(
            a != b && (canonical(a).is_none() || canonical(a) != canonical(b)),
            "the source and the target are the same database ({source_url}): nothing to copy"
        );
    }
    let mut source = copy::open_snapshot(&source_url)
        .await
        .with_context(|| format!("opening {source_url} (read-only) to copy from"))?;
    let target = copy::open_target(&args.to_database)
        .await
        .with_context(|| format!("opening {} to copy into", args.to_database))?;

    let source_blobs_url = match (&from.blobs, &data) {
        (Some(url), _) => url.clone(),
        (None, Some(data)) => format!("file://{}", data.root().join("blobs").display()),
        (None, None) => anyhow::bail!("no source blob store"),
    };
    let same_blobs = same_blob_store(&source_blobs_url, &args.to_blobs);
    let blobs = if same_blobs {
        None
    } else {
        let from_blobs = BlobStore::from_url(&source_blobs_url)
            .with_context(|| format!("opening the blob store {source_blobs_url}"))?;
        let to_blobs = BlobStore::from_url(&args.to_blobs)
            .with_context(|| format!("opening the blob store {}", args.to_blobs))?;
        Some((from_blobs, to_blobs))
    };

    eprintln!(
        "copying {source_url} + {source_blobs_url} -> {} + {}",
        args.to_database, args.to_blobs
    );
    let spinner = indicatif::ProgressBar::new_spinner();
    let mut progress = |report: &CopyReport| spinner.set_message(summary(report));
    let copied = copy::copy(
        source.as_mut(),
        target.as_ref(),
        blobs.as_ref().map(|(from, to)| (from, to)),
        extra.clone(),
        &mut progress,
    )
    .await;
    spinner.finish_and_clear();
    let report = match copied {
        Ok(report) => report,
        Err(err) => {
            target.close().await;
            let hint = if err.is_retryable() {
                " (run the same command again to finish)"
            } else {
                ""
            };
            return Err(err).with_context(|| format!("copying{hint}"));
        }
    };
    println!("{report}");
    warn_if_signing_key_differs(target.as_ref(), &extra).await;
    target.close().await;
    Ok(())
}

/// One line for the spinner: records and blobs done so far.
fn summary(report: &CopyReport) -> String {
    let records: u64 = report
        .records
        .values()
        .map(|c| c.copied + c.already_there)
        .sum();
    let blobs = report.blobs.map_or(0, |c| c.copied + c.already_there);
    format!("{records} records, {blobs} blobs")
}

/// Whether two blob URLs name the same place (a folder under two spellings included): then
/// every blob is already there and none is read.
fn same_blob_store(a: &str, b: &str) -> bool {
    let place = |url: &str| match url.strip_prefix("file://") {
        Some(dir) => std::fs::canonicalize(Path::new(dir))
            .map(|p| format!("file://{}", p.display()))
            .unwrap_or_else(|_| url.to_owned()),
        None => url.trim_end_matches('/').to_owned(),
    };
    place(a) == place(b)
}

/// A target that already had another URL signing key keeps it (nothing is overwritten): URLs
/// signed by the source then stop verifying, which the operator should know.
async fn warn_if_signing_key_differs(target: &dyn fluxd_store::Store, extra: &[Record]) {
    for record in extra {
        let Record::Secret(secret) = record else {
            continue;
        };
        match target.shared_secret(&secret.name).await {
            Ok(value) if hex::encode(value) == secret.value => {}
            Ok(_) => eprintln!(
                "warning: the target already had its own {} key, which was kept: image URLs \
                 signed before the copy will not verify there",
                secret.name
            ),
            Err(err) => eprintln!(
                "warning: could not read back the {} key: {err}",
                secret.name
            ),
        }
    }
}
