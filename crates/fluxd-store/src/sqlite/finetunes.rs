//! Fine-tune records: a tenant's LoRA files, optionally shared with other tenants.

use sqlx::sqlite::{SqliteConnection, SqlitePool};

use crate::sql::records::{self, finetune_columns as columns};
use crate::sql::rows;
use crate::sqlite::{keys, map_sqlx};
use crate::time::to_millis;
use crate::{FinetuneRecord, StoreError};

pub(super) async fn insert(
    conn: &mut SqliteConnection,
    record: FinetuneRecord,
) -> Result<(), StoreError> {
    let size = i64::try_from(record.size_bytes)
        .map_err(|_| StoreError::Invalid(format!("size {} bytes", record.size_bytes)))?;
    let created_at = to_millis(record.created_at);
    keys::ensure_tenant(conn, &record.tenant, created_at).await?;
    sqlx::query(
        "INSERT INTO finetunes (tenant, id, format, rank, alpha, base_hidden, trigger_word, \
         comment, blob_key, size_bytes, sha256, created_at, shared) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
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
    .bind(created_at)
    .bind(record.shared)
    .execute(conn)
    .await
    .map_err(|err| match map_sqlx(err) {
        StoreError::Conflict(_) => StoreError::Conflict(format!("fine-tune {}", record.id)),
        other => other,
    })?;
    Ok(())
}

pub(super) async fn list(pool: &SqlitePool, tenant: &str) -> Result<Vec<String>, StoreError> {
    sqlx::query_scalar("SELECT id FROM finetunes WHERE tenant = $1 ORDER BY created_at, id")
        .bind(tenant)
        .fetch_all(pool)
        .await
        .map_err(map_sqlx)
}

pub(super) async fn get(
    pool: &SqlitePool,
    requester: &str,
    finetune_id: &str,
) -> Result<Option<FinetuneRecord>, StoreError> {
    let own = sqlx::query(concat!(
        "SELECT ",
        columns!(),
        " FROM finetunes WHERE tenant = $1 AND id = $2"
    ))
    .bind(requester)
    .bind(finetune_id)
    .fetch_optional(pool)
    .await
    .map_err(map_sqlx)?;
    if let Some(row) = own {
        return records::finetune(&row).map(Some);
    }
    // Tenant names cannot contain '/', so the first one ends the owner's name.
    let Some((owner, name)) = finetune_id.split_once('/') else {
        return Ok(None);
    };
    let shared = sqlx::query(concat!(
        "SELECT ",
        columns!(),
        " FROM finetunes WHERE tenant = $1 AND id = $2 AND (shared = TRUE OR tenant = $3)"
    ))
    .bind(owner)
    .bind(name)
    .bind(requester)
    .fetch_optional(pool)
    .await
    .map_err(map_sqlx)?;
    shared.as_ref().map(records::finetune).transpose()
}

pub(super) async fn delete(
    conn: &mut SqliteConnection,
    tenant: String,
    id: String,
) -> Result<Option<FinetuneRecord>, StoreError> {
    let deleted = sqlx::query(concat!(
        "DELETE FROM finetunes WHERE tenant = $1 AND id = $2 RETURNING ",
        columns!()
    ))
    .bind(tenant)
    .bind(id)
    .fetch_optional(conn)
    .await
    .map_err(map_sqlx)?;
    deleted.as_ref().map(records::finetune).transpose()
}
