//! Schema migrations, embedded in the binary and applied in one transaction at connect.

use sqlx::postgres::PgConnection;
use sqlx::Connection;

use crate::postgres::map_pg;
use crate::sql::{
    pending_migrations, Migrations, CURRENT_VERSION, MIGRATIONS_TABLE, RECORD_VERSION,
};
use crate::time::now_millis;
use crate::StoreError;

/// Every schema version, in order. Append; never edit a released one.
const MIGRATIONS: Migrations = &[
    (1, include_str!("../../migrations/postgres/0001_init.sql")),
    (2, include_str!("../../migrations/postgres/0002_cancel.sql")),
    (
        3,
        include_str!("../../migrations/postgres/0003_credits.sql"),
    ),
    (
        4,
        include_str!("../../migrations/postgres/0004_preview.sql"),
    ),
    (
        5,
        include_str!("../../migrations/postgres/0005_submit_triggers.sql"),
    ),
];

/// Key of the advisory lock that serialises migrations: API nodes and workers starting together
/// on a new database must not both apply version 1. (Any constant; this one spells "fluxd".)
const MIGRATION_LOCK: i64 = 0x66_6c75_7864;

/// The schema version this build writes.
pub(crate) fn newest() -> i64 {
    crate::sql::newest(MIGRATIONS)
}

/// Brings the schema (in the connection's `search_path`) to the newest version. PostgreSQL's DDL
/// is transactional: a migration applies whole or not at all.
pub(crate) async fn migrate(conn: &mut PgConnection) -> Result<(), StoreError> {
    let mut tx = conn.begin().await.map_err(map_pg)?;
    // No call time limit here: waiting for another process's migration, or a migration of a
    // large table, may take longer (`SET LOCAL`: this transaction only).
    sqlx::query("SET LOCAL statement_timeout = 0")
        .execute(&mut *tx)
        .await
        .map_err(map_pg)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(map_pg)?;
    sqlx::raw_sql(MIGRATIONS_TABLE)
        .execute(&mut *tx)
        .await
        .map_err(map_pg)?;
    let current: Option<i64> = sqlx::query_scalar(CURRENT_VERSION)
        .fetch_one(&mut *tx)
        .await
        .map_err(map_pg)?;
    for (version, sql) in pending_migrations(MIGRATIONS, current)? {
        sqlx::raw_sql(*sql)
            .execute(&mut *tx)
            .await
            .map_err(map_pg)?;
        sqlx::query(RECORD_VERSION)
            .bind(version)
            .bind(now_millis())
            .execute(&mut *tx)
            .await
            .map_err(map_pg)?;
        tracing::info!(version, "applied store migration");
    }
    tx.commit().await.map_err(map_pg)
}
