//! Tenants, API keys and shared secrets on PostgreSQL.

use sqlx::postgres::PgConnection;
use uuid::Uuid;

use crate::apikey::{self, KeyMaterial};
use crate::postgres::map_pg;
use crate::secret::{self, SharedSecret};
use crate::sql::records::{self, key_columns};
use crate::sql::rows;
use crate::{KeyInfo, KeyRecord, NewKey, StoreError, DEFAULT_MAX_ACTIVE_TASKS};

/// The statement prefix that creates tenant `$1` on first use, so that the insert after it (in
/// the same statement) satisfies its foreign key: constraints are checked at the statement's
/// end, when the tenant's row exists.
macro_rules! with_tenant {
    () => {
        "WITH tenant AS (INSERT INTO tenants (id, created_at) VALUES ($1, fluxd_now_ms()) \
         ON CONFLICT (id) DO NOTHING) "
    };
}
pub(super) use with_tenant;

pub(super) async fn create(
    conn: &mut PgConnection,
    tenant: &str,
    label: Option<&str>,
    material: KeyMaterial,
) -> Result<NewKey, StoreError> {
    let key_id = Uuid::new_v4();
    sqlx::query(concat!(
        with_tenant!(),
        "INSERT INTO api_keys (id, tenant, label, prefix, key_hash, max_active_tasks, created_at) \
         VALUES ($2, $1, $3, $4, $5, $6, fluxd_now_ms())"
    ))
    .bind(tenant)
    .bind(key_id.to_string())
    .bind(label)
    .bind(&material.prefix)
    .bind(&material.hash)
    .bind(rows::int(DEFAULT_MAX_ACTIVE_TASKS))
    .execute(&mut *conn)
    .await
    .map_err(map_pg)?;
    Ok(NewKey {
        key_id,
        tenant: tenant.to_owned(),
        key: material.key,
        prefix: material.prefix,
    })
}

pub(super) async fn authenticate(
    conn: &mut PgConnection,
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
    .fetch_all(&mut *conn)
    .await
    .map_err(map_pg)?;
    records::matching_key(&candidates, key)
}

pub(super) async fn revoke(conn: &mut PgConnection, key_id: Uuid) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE api_keys SET revoked_at = fluxd_now_ms() WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(key_id.to_string())
    .execute(&mut *conn)
    .await
    .map_err(map_pg)?;
    Ok(done.rows_affected() > 0)
}

pub(super) async fn set_max_active_tasks(
    conn: &mut PgConnection,
    key_id: Uuid,
    max: u32,
) -> Result<bool, StoreError> {
    let done = sqlx::query("UPDATE api_keys SET max_active_tasks = $2 WHERE id = $1")
        .bind(key_id.to_string())
        .bind(rows::int(max))
        .execute(&mut *conn)
        .await
        .map_err(map_pg)?;
    Ok(done.rows_affected() > 0)
}

pub(super) async fn list(
    conn: &mut PgConnection,
    tenant: &str,
) -> Result<Vec<KeyRecord>, StoreError> {
    let found = sqlx::query(concat!(
        "SELECT ",
        key_columns!(),
        " FROM api_keys WHERE tenant = $1 ORDER BY created_at, id"
    ))
    .bind(tenant)
    .fetch_all(&mut *conn)
    .await
    .map_err(map_pg)?;
    found.iter().map(records::key_record).collect()
}

/// Two statements, not one: a concurrent first caller's insert is invisible to this statement's
/// snapshot until it commits, when `ON CONFLICT` (which waits for it) sees it. The read that
/// follows is a new snapshot and finds whichever secret won.
pub(super) async fn shared_secret(
    conn: &mut PgConnection,
    name: &str,
) -> Result<SharedSecret, StoreError> {
    sqlx::query(
        "INSERT INTO shared_secrets (name, value, created_at) VALUES ($1, $2, fluxd_now_ms()) \
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .bind(secret::generate()?)
    .execute(&mut *conn)
    .await
    .map_err(map_pg)?;
    let stored: String = sqlx::query_scalar("SELECT value FROM shared_secrets WHERE name = $1")
        .bind(name)
        .fetch_one(&mut *conn)
        .await
        .map_err(map_pg)?;
    secret::decode(name, &stored)
}
