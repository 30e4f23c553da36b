//! Moving a deployment from one store to another (`fluxd store copy`): every row of every table,
//! as stored, and the blobs the rows name.
//!
//! Backend-neutral: a source is read through a [`Snapshot`] (one read-only transaction, so the
//! copy is of one moment even if something still writes), in pages of typed [`Record`]s; a
//! target takes them through [`StoreCopy::import`], inserting each row unless a row with its key
//! is already there. Both backends store the same columns with the same values (see the
//! migrations), so a record moves unchanged: ids, key hashes, statuses, attempts, leases and
//! times to the millisecond. [`copy`] runs the whole thing and counts what it did; running it
//! again copies nothing new.

mod records;
mod run;
pub(crate) mod sql;

use async_trait::async_trait;

pub use records::{
    BalanceRow, KeyRow, PriceRow, Record, RecordKind, SecretRow, TaskRow, TenantRow, WebhookRow,
};
pub use run::{copy, CopyReport, Counts};

use crate::url::DatabaseUrl;
use crate::{PostgresStore, Result, SqliteStore, Store, StoreError};

/// Records read per page (and imported per transaction).
pub const PAGE: u32 = 500;

/// What importing one record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Imported {
    /// The row was not in the target and is now.
    Copied,
    /// A row with the same key was already there; it was left as it is.
    AlreadyThere,
}

/// A consistent, read-only view of a source store, read kind by kind
/// ([`RecordKind::ALL`]'s order, which is the order foreign keys need) in pages.
#[async_trait]
pub trait Snapshot: Send {
    /// The next page of at most `limit` records, all of one kind; empty once every kind has
    /// been read.
    async fn next_page(&mut self, limit: u32) -> Result<Vec<Record>>;

    /// What identifies the database (see [`StoreCopy::identity`]).
    async fn identity(&mut self) -> Result<String>;
}

/// A store that records can be copied into.
#[async_trait]
pub trait StoreCopy: Store {
    /// Inserts each record unless a row with its key (id, name) is there already, in one
    /// transaction, and says which it did for each, in order. Records must come in
    /// [`RecordKind::ALL`]'s order across calls (a task after its key).
    async fn import(&self, records: &[Record]) -> Result<Vec<Imported>>;

    /// Text that is the same for two handles on the same database and differs otherwise (the
    /// SQLite file's canonical path; the PostgreSQL server, database and schema), to refuse a
    /// copy onto itself.
    async fn identity(&self) -> Result<String>;
}

/// Opens a read-only snapshot of the store at `url`, which must exist and be at this build's
/// schema version (a copy never migrates its source: it does not write to it at all).
pub async fn open_snapshot(url: &DatabaseUrl) -> Result<Box<dyn Snapshot>> {
    match url {
        DatabaseUrl::Sqlite(path) => Ok(Box::new(crate::sqlite::copy::open_snapshot(path).await?)),
        DatabaseUrl::Postgres(url) => {
            Ok(Box::new(crate::postgres::copy::open_snapshot(url).await?))
        }
    }
}

/// Opens (creating and migrating, as any command does) the store at `url` to copy into.
pub async fn open_target(url: &DatabaseUrl) -> Result<Box<dyn StoreCopy>> {
    Ok(match url {
        DatabaseUrl::Sqlite(path) => Box::new(SqliteStore::open(path).await?),
        DatabaseUrl::Postgres(url) => Box::new(PostgresStore::connect(url).await?),
    })
}

/// Every record of the store at `url`, in [`RecordKind::ALL`]'s order and each kind's key order:
/// a dump to compare two stores by.
pub async fn dump(url: &DatabaseUrl) -> Result<Vec<Record>> {
    let mut snapshot = open_snapshot(url).await?;
    let mut all = Vec::new();
    loop {
        let page = snapshot.next_page(PAGE).await?;
        if page.is_empty() {
            return Ok(all);
        }
        all.extend(page);
    }
}

/// Where a [`Snapshot`] is: the kind being read and the key of its last record read, for the
/// next page query (keyset paging: each page starts after the last key, whatever was inserted
/// elsewhere meanwhile).
#[derive(Debug, Default)]
pub(crate) struct Pager {
    /// Index into [`RecordKind::ALL`].
    kind: usize,
    cursor: (String, String),
}

impl Pager {
    /// The kind to read next and the cursor to read after; None once every kind is read.
    pub(crate) fn next(&self) -> Option<(RecordKind, (String, String))> {
        RecordKind::ALL
            .get(self.kind)
            .map(|kind| (*kind, self.cursor.clone()))
    }

    /// Takes the page read for [`Pager::next`]: a page with records is the answer (the cursor
    /// moves past it); an empty one means that kind is done and the next is to be read.
    pub(crate) fn take(&mut self, page: Vec<Record>) -> Option<Vec<Record>> {
        match page.last() {
            Some(last) => {
                self.cursor = last.cursor();
                Some(page)
            }
            None => {
                self.kind += 1;
                self.cursor = Default::default();
                None
            }
        }
    }
}

/// A source at another schema version than this build's cannot be read as this build reads.
pub(crate) fn check_source_version(current: Option<i64>, supported: i64) -> Result<()> {
    match current {
        Some(version) if version == supported => Ok(()),
        Some(found) if found > supported => Err(StoreError::SchemaTooNew { found, supported }),
        Some(found) => Err(StoreError::Invalid(format!(
            "the source database is at schema version {found}, this build's is {supported}: \
             open it once with this build (e.g. `fluxd webhooks list` on it) to migrate it, then copy"
        ))),
        None => Err(StoreError::Invalid(
            "the source database has no fluxd schema".into(),
        )),
    }
}
