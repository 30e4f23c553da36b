//! [`StoreCopy`] for [`PostgresStore`], and a read-only snapshot of a PostgreSQL database to
//! copy from.

use std::str::FromStr;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::ConnectOptions;

use crate::copy::sql::{insert_record, page_query};
use crate::copy::{check_source_version, Imported, Pager, Record, Snapshot, StoreCopy};
use crate::postgres::{map_pg, migrate, PostgresStore};
use crate::sql::CURRENT_VERSION;
use crate::url::DatabaseUrl;
use crate::{Result, StoreError};

/// What identifies a database: the server (its start time and port), the database and the
/// schema the `search_path` puts first.
const IDENTITY: &str = "SELECT concat_ws('/', pg_postmaster_start_time()::text, \
    COALESCE(inet_server_port(), 0)::text, current_database(), current_schema())";

/// One connection inside one `REPEATABLE READ READ ONLY` transaction: every page reads the
/// database as it was at the first, and PostgreSQL refuses any write through it.
pub(crate) struct PgSnapshot {
    conn: PgConnection,
    pager: Pager,
}

/// Opens the snapshot of the database at `url`.
pub(crate) async fn open_snapshot(url: &str) -> Result<PgSnapshot> {
    let options = PgConnectOptions::from_str(url).map_err(|err| {
        StoreError::Invalid(format!("database URL {}: {err}", DatabaseUrl::redact(url)))
    })?;
    let mut conn = options
        .application_name("fluxd store copy")
        .connect()
        .await
        .map_err(map_pg)?;
    sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut conn)
        .await
        .map_err(map_pg)?;
    let version: Option<i64> = sqlx::query_scalar(CURRENT_VERSION)
        .fetch_one(&mut conn)
        .await
        .map_err(|err| match map_pg(err) {
            StoreError::Database(_) => StoreError::Invalid(format!(
                "{} holds no fluxd schema (in its search_path)",
                DatabaseUrl::redact(url)
            )),
            other => other,
        })?;
    check_source_version(version, migrate::newest())?;
    Ok(PgSnapshot {
        conn,
        pager: Pager::default(),
    })
}

#[async_trait]
impl Snapshot for PgSnapshot {
    async fn next_page(&mut self, limit: u32) -> Result<Vec<Record>> {
        while let Some((kind, cursor)) = self.pager.next() {
            let rows = page_query!(kind, cursor, limit)
                .fetch_all(&mut self.conn)
                .await
                .map_err(map_pg)?;
            let page = rows.iter().map(|row| Record::read(kind, row));
            if let Some(page) = self.pager.take(page.collect::<Result<_>>()?) {
                return Ok(page);
            }
        }
        Ok(Vec::new())
    }

    async fn identity(&mut self) -> Result<String> {
        let id: String = sqlx::query_scalar(IDENTITY)
            .fetch_one(&mut self.conn)
            .await
            .map_err(map_pg)?;
        Ok(format!("postgres:{id}"))
    }
}

#[async_trait]
impl StoreCopy for PostgresStore {
    async fn import(&self, records: &[Record]) -> Result<Vec<Imported>> {
        let mut tx = self.db.pool().begin().await.map_err(map_pg)?;
        let mut done = Vec::with_capacity(records.len());
        for record in records {
            let inserted = insert_record!(record)
                .execute(&mut *tx)
                .await
                .map_err(map_pg)?
                .rows_affected();
            done.push(if inserted == 0 {
                Imported::AlreadyThere
            } else {
                Imported::Copied
            });
        }
        tx.commit().await.map_err(map_pg)?;
        Ok(done)
    }

    async fn identity(&self) -> Result<String> {
        let id: String = sqlx::query_scalar(IDENTITY)
            .fetch_one(self.db.pool())
            .await
            .map_err(map_pg)?;
        Ok(format!("postgres:{id}"))
    }
}
