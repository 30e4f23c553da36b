//! Tenants and API keys.

use sqlx::sqlite::{SqliteConnection, SqlitePool};
use uuid::Uuid;

use crate::apikey::{self, KeyMaterial};
use crate::sql::records::{self, key_columns};
use crate::sql::rows;
use crate::sqlite::map_sqlx;
use crate::time::now_millis;
use crate::{KeyInfo, KeyRecord, NewKey, StoreError, DEFAULT_MAX_ACTIVE_TASKS};

/// Creates the tenant row on first use; tenants have no other life of their own yet.
pub(super) async fn ensure_tenant(
    conn: &mut SqliteConnection,
    tenant: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO tenants (id, created_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING")
        .bind(tenant)
        .bind(now)
        .execute(conn)
        .await
        .map_err(map_sqlx)?;
    Ok(())
}

pub(super) async fn create(
    conn: &mut SqliteConnection,
    tenant: String,
    label: Option<String>,
    material: KeyMaterial,
) -> Result<NewKey, StoreError> {
    let now = now_millis();
    ensure_tenant(conn, &tenant, now).await?;
    let key_id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO api_keys (id, tenant, label, prefix, key_hash, max_active_tasks, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(key_id.to_string())
    .bind(&tenant)
    .bind(label)
    .bind(&material.prefix)
    .bind(&material.hash)
    .bind(rows::int(DEFAULT_MAX_ACTIVE_TASKS))
    .bind(now)
    .execute(conn)
    .await
    .map_err(map_sqlx)?;
    Ok(NewKey {
        key_id,
        tenant,
        key: material.key,
        prefix: material.prefix,
    })
}

pub(super) async fn authenticate(
    pool: &SqlitePool,
    key: &str,
) -> Result<Option<KeyInfo>, StoreError> {
    let Some(prefix) = apikey::lookup_prefix(key) else {
        return Ok(None);
    };
    let candidates = sqlx::query(
        "SELECT id, tenant, key_hash, max_active_tasks FROM api_keys \
         WHERE prefix = $1 AND revoked_at IS NULL",
    )
    .bind(prefix)
    .fetch_all(pool)
    .await
    .map_err(map_sqlx)?;
    records::matching_key(&candidates, key)
}

pub(super) async fn revoke(conn: &mut SqliteConnection, key_id: Uuid) -> Result<bool, StoreError> {
    let done =
        sqlx::query("UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
            .bind(key_id.to_string())
            .bind(now_millis())
            .execute(conn)
            .await
            .map_err(map_sqlx)?;
    Ok(done.rows_affected() > 0)
}

pub(super) async fn set_max_active_tasks(
    conn: &mut SqliteConnection,
    key_id: Uuid,
    max: u32,
) -> Result<bool, StoreError> {
    let done = sqlx::query("UPDATE api_keys SET max_active_tasks = $2 WHERE id = $1")
        .bind(key_id.to_string())
        .bind(rows::int(max))
        .execute(conn)
        .await
        .map_err(map_sqlx)?;
    Ok(done.rows_affected() > 0)
}

pub(super) async fn list(pool: &SqlitePool, tenant: &str) -> Result<Vec<KeyRecord>, StoreError> {
    let found = sqlx::query(concat!(
        "SELECT ",
        key_columns!(),
        " FROM api_keys WHERE tenant = $1 ORDER BY created_at, id"
    ))
    .bind(tenant)
    .fetch_all(pool)
    .await
    .map_err(map_sqlx)?;
    found.iter().map(records::key_record).collect()
}
