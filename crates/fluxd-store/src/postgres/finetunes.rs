//! Fine-tune records on PostgreSQL.

use sqlx::postgres::PgConnection;

use crate::postgres::keys::with_tenant;
use crate::postgres::map_pg;
use crate::sql::records::{self, finetune_columns};
use crate::sql::rows;
use crate::time::to_millis;
use crate::{FinetuneRecord, StoreError};

pub(super) async fn insert(
    conn: &mut PgConnection,
    record: FinetuneRecord,
) -> Result<(), StoreError> {
    let size = i64::try_from(record.size_bytes)
        .map_err(|_| StoreError::Invalid(format!("size {} bytes", record.size_bytes)))?;
    sqlx::query(concat!(
        with_tenant!(),
        "INSERT INTO finetunes (tenant, id, format, rank, alpha, base_hidden, trigger_word, \
         comment, blob_key, size_bytes, sha256, created_at, shared) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
    ))
    .bind(&record.tenant)
    .bind(&record.id)
    .bind(record.format)
    .bind(rows::int(record.rank))
    .bind(record.alpha)
    .bind(record.base_hidden.map(rows::int))
    .bind(record.trigger_word)
    .bind(record.comment)
    .bind(record.blob_key)
    .bind(size)
    .bind(record.sha256)
    .bind(to_millis(record.created_at))
    .bind(record.shared)
    .execute(&mut *conn)
    .await
    .map_err(|err| match map_pg(err) {
        StoreError::Conflict(_) => StoreError::Conflict(format!("fine-tune {}", record.id)),
        other => other,
    })?;
    Ok(())
}

pub(super) async fn list(conn: &mut PgConnection, tenant: &str) -> Result<Vec<String>, StoreError> {
    sqlx::query_scalar("SELECT id FROM finetunes WHERE tenant = $1 ORDER BY created_at, id")
        .bind(tenant)
        .fetch_all(&mut *conn)
        .await
        .map_err(map_pg)
}

/// The requester's own fine-tune of that name, else `<owner>/<name>` when the owner shared it:
/// one statement, the own one first.
pub(super) async fn get(
    conn: &mut PgConnection,
    requester: &str,
    finetune_id: &str,
) -> Result<Option<FinetuneRecord>, StoreError> {
    // Tenant names cannot contain '/', so the first one ends the owner's name.
    let (owner, name) = finetune_id.split_once('/').unwrap_or(("", ""));
    let found = sqlx::query(concat!(
        "SELECT ",
        finetune_columns!(),
        " FROM finetunes WHERE (tenant = $1 AND id = $2) \
          OR (tenant = $3 AND id = $4 AND (shared OR tenant = $1)) \
         ORDER BY tenant = $1 AND id = $2 DESC LIMIT 1"
    ))
    .bind(requester)
    .bind(finetune_id)
    .bind(owner)
    .bind(name)
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_pg)?;
    found.as_ref().map(records::finetune).transpose()
}

pub(super) async fn delete(
    conn: &mut PgConnection,
    tenant: &str,
    id: &str,
) -> Result<Option<FinetuneRecord>, StoreError> {
    let deleted = sqlx::query(concat!(
        "DELETE FROM finetunes WHERE tenant = $1 AND id = $2 RETURNING ",
        finetune_columns!()
    ))
    .bind(tenant)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_pg)?;
    deleted.as_ref().map(records::finetune).transpose()
}
