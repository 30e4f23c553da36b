//! Schema migrations, embedded in the binary and applied in one transaction at open.

use sqlx::sqlite::SqliteConnection;
use sqlx::Connection;

use crate::sqlite::map_sqlx;
use crate::time::now_millis;
use crate::StoreError;

/// Every schema version, in order. Append; never edit a released one.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/sqlite/0001_init.sql")),
    (2, include_str!("../../migrations/sqlite/0002_key_load.sql")),
];

/// Brings the schema to the newest version. `BEGIN IMMEDIATE` takes the write lock first, so two
/// processes opening the same new file cannot both apply a migration.
pub(crate) async fn migrate(conn: &mut SqliteConnection) -> Result<(), StoreError> {
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(map_sqlx)?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS schema_migrations (\
            version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut *tx)
    .await
    .map_err(map_sqlx)?;
    let current: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM schema_migrations")
        .fetch_one(&mut *tx)
        .await
        .map_err(map_sqlx)?;
    let current = current.unwrap_or(0);
    let supported = MIGRATIONS.last().map_or(0, |(version, _)| *version);
    if current > supported {
        return Err(StoreError::SchemaTooNew {
            found: current,
            supported,
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(version, _)| *version > current) {
        sqlx::raw_sql(*sql)
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
            .bind(version)
            .bind(now_millis())
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        tracing::info!(version, "applied store migration");
    }
    tx.commit().await.map_err(map_sqlx)
}
