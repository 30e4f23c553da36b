//! Shared secrets: created once by whichever process asks first, read by all.

use sqlx::sqlite::SqliteConnection;

use crate::secret::{self, SharedSecret};
use crate::sqlite::map_sqlx;
use crate::time::now_millis;
use crate::StoreError;

/// Runs on the single writer, so the insert (if none is stored yet) and the read that follows
/// see the same row; another process's writer is kept out by SQLite's write lock.
pub(super) async fn get_or_create(
    conn: &mut SqliteConnection,
    name: String,
    fresh: String,
) -> Result<SharedSecret, StoreError> {
    sqlx::query(
        "INSERT INTO shared_secrets (name, value, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(&name)
    .bind(fresh)
    .bind(now_millis())
    .execute(&mut *conn)
    .await
    .map_err(map_sqlx)?;
    let stored: String = sqlx::query_scalar("SELECT value FROM shared_secrets WHERE name = $1")
        .bind(&name)
        .fetch_one(conn)
        .await
        .map_err(map_sqlx)?;
    secret::decode(&name, &stored)
}
