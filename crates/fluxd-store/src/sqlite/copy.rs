//! [`StoreCopy`] for [`SqliteStore`], and a read-only snapshot of an SQLite file to copy from.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::ConnectOptions;

use crate::copy::sql::{insert_record, page_query};
use crate::copy::{check_source_version, Imported, Pager, Record, Snapshot, StoreCopy};
use crate::sql::CURRENT_VERSION;
use crate::sqlite::{map_sqlx, migrate, SqliteStore};
use crate::{Result, StoreError};

/// An SQLite file opened read-only (the driver cannot write through it), inside one read
/// transaction: WAL keeps its view fixed while others write.
pub(crate) struct SqliteSnapshot {
    conn: SqliteConnection,
    path: PathBuf,
    pager: Pager,
}

/// Opens the snapshot of the database at `path`, which must exist.
pub(crate) async fn open_snapshot(path: &Path) -> Result<SqliteSnapshot> {
    if !path.is_file() {
        return Err(StoreError::NotFound(format!(
            "SQLite database {}",
            path.display()
        )));
    }
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .create_if_missing(false)
        .connect()
        .await
        .map_err(map_sqlx)?;
    // Deferred: the first read below takes the snapshot every later page reads.
    sqlx::raw_sql("BEGIN")
        .execute(&mut conn)
        .await
        .map_err(map_sqlx)?;
    let version: Option<i64> = sqlx::query_scalar(CURRENT_VERSION)
        .fetch_one(&mut conn)
        .await
        .map_err(|err| match map_sqlx(err) {
            StoreError::Database(_) => {
                StoreError::Invalid(format!("{} is not a fluxd database", path.display()))
            }
            other => other,
        })?;
    check_source_version(version, migrate::newest())?;
    Ok(SqliteSnapshot {
        conn,
        path: path.to_path_buf(),
        pager: Pager::default(),
    })
}

#[async_trait]
impl Snapshot for SqliteSnapshot {
    async fn next_page(&mut self, limit: u32) -> Result<Vec<Record>> {
        while let Some((kind, cursor)) = self.pager.next() {
            let rows = page_query!(kind, cursor, limit)
                .fetch_all(&mut self.conn)
                .await
                .map_err(map_sqlx)?;
            let page = rows.iter().map(|row| Record::read(kind, row));
            if let Some(page) = self.pager.take(page.collect::<Result<_>>()?) {
                return Ok(page);
            }
        }
        Ok(Vec::new())
    }

    async fn identity(&mut self) -> Result<String> {
        file_identity(&self.path)
    }
}

/// The canonical path of the database file.
fn file_identity(path: &Path) -> Result<String> {
    let path = std::fs::canonicalize(path).map_err(StoreError::io)?;
    Ok(format!("sqlite:{}", path.display()))
}

#[async_trait]
impl StoreCopy for SqliteStore {
    async fn import(&self, records: &[Record]) -> Result<Vec<Imported>> {
        let records = records.to_vec();
        // One write of the single writer: all of the page commits, or none of it.
        self.writer
            .write(move |c| {
                Box::pin(async move {
                    let mut done = Vec::with_capacity(records.len());
                    for record in &records {
                        let inserted = insert_record!(record)
                            .execute(&mut *c)
                            .await
                            .map_err(map_sqlx)?
                            .rows_affected();
                        done.push(if inserted == 0 {
                            Imported::AlreadyThere
                        } else {
                            Imported::Copied
                        });
                    }
                    Ok(done)
                })
            })
            .await
    }

    async fn identity(&self) -> Result<String> {
        let file: String =
            sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
                .fetch_one(&self.reads)
                .await
                .map_err(map_sqlx)?;
        file_identity(Path::new(&file))
    }
}
