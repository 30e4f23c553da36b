//! Schema migrations, embedded in the binary and applied in one transaction at open.

use sqlx::sqlite::SqliteConnection;
use sqlx::Connection;

use crate::sql::{
    pending_migrations, Migrations, CURRENT_VERSION, MIGRATIONS_TABLE, RECORD_VERSION,
};
use crate::sqlite::map_sqlx;
use crate::time::now_millis;
use crate::StoreError;

/// Every schema version, in order. Append; never edit a released one.
const MIGRATIONS: Migrations = &[
    (1, include_str!("../../migrations/sqlite/0001_init.sql")),
    (2, include_str!("../../migrations/sqlite/0002_key_load.sql")),
    (
        3,
        include_str!("../../migrations/sqlite/0003_shared_secrets.sql"),
    ),
    (4, include_str!("../../migrations/sqlite/0004_cancel.sql")),
    (5, include_str!("../../migrations/sqlite/0005_credits.sql")),
    (6, include_str!("../../migrations/sqlite/0006_preview.sql")),
];

/// The schema version this build writes.
pub(crate) fn newest() -> i64 {
    crate::sql::newest(MIGRATIONS)
}

/// Brings the schema to the newest version. `BEGIN IMMEDIATE` takes the write lock first, so two
/// processes opening the same new file cannot both apply a migration.
pub(crate) async fn migrate(conn: &mut SqliteConnection) -> Result<(), StoreError> {
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(map_sqlx)?;
    sqlx::raw_sql(MIGRATIONS_TABLE)
        .execute(&mut *tx)
        .await
        .map_err(map_sqlx)?;
    let current: Option<i64> = sqlx::query_scalar(CURRENT_VERSION)
        .fetch_one(&mut *tx)
        .await
        .map_err(map_sqlx)?;
    for (version, sql) in pending_migrations(MIGRATIONS, current)? {
        sqlx::raw_sql(*sql)
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        sqlx::query(RECORD_VERSION)
            .bind(version)
            .bind(now_millis())
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        tracing::info!(version, "applied store migration");
    }
    tx.commit().await.map_err(map_sqlx)
}
