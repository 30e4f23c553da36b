//! The webhook outbox: rows written with a task's final status, leased to delivery workers.

use std::time::{Duration, SystemTime};

use sqlx::sqlite::SqliteConnection;
use uuid::Uuid;

use crate::sql::records::{self, delivery_columns, webhook_record_columns};
use crate::sql::{delivery_found, rows};
use crate::sqlite::map_sqlx;
use crate::time::{duration_millis, now_millis, to_millis};
use crate::types::check_webhook_status;
use crate::{NewWebhook, StoreError, WebhookDelivery, WebhookRecord};

pub(super) async fn enqueue(
    conn: &mut SqliteConnection,
    task_id: Uuid,
    webhook: NewWebhook,
) -> Result<Uuid, StoreError> {
    let id = Uuid::new_v4();
    let now = now_millis();
    sqlx::query(
        "INSERT INTO webhooks (id, task_id, webhook_id, url, secret, payload, status, attempts, \
         next_attempt_at, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $7, $7)",
    )
    .bind(id.to_string())
    .bind(task_id.to_string())
    .bind(webhook.webhook_id)
    .bind(webhook.url)
    .bind(webhook.secret)
    .bind(webhook.payload.to_string())
    .bind(now)
    .execute(conn)
    .await
    .map_err(map_sqlx)?;
    Ok(id)
}

pub(super) async fn claim_due(
    conn: &mut SqliteConnection,
    worker_id: String,
    limit: u32,
    lease: Duration,
) -> Result<Vec<WebhookDelivery>, StoreError> {
    let now = now_millis();
    let claimed = sqlx::query(concat!(
        "UPDATE webhooks SET worker_id = $1, lease_until = $2, attempts = attempts + 1, \
         updated_at = $3 \
         WHERE id IN (SELECT id FROM webhooks WHERE status = 'pending' AND next_attempt_at <= $3 \
                      AND (lease_until IS NULL OR lease_until <= $3) \
                      ORDER BY next_attempt_at, created_at LIMIT $4) \
         RETURNING ",
        delivery_columns!()
    ))
    .bind(worker_id)
    .bind(now.saturating_add(duration_millis(lease)))
    .bind(now)
    .bind(rows::int(limit))
    .fetch_all(conn)
    .await
    .map_err(map_sqlx)?;
    records::webhook_deliveries(&claimed)
}

pub(super) async fn delivered(conn: &mut SqliteConnection, id: Uuid) -> Result<(), StoreError> {
    let done = sqlx::query(
        "UPDATE webhooks SET status = 'delivered', lease_until = NULL, updated_at = $2 \
         WHERE id = $1",
    )
    .bind(id.to_string())
    .bind(now_millis())
    .execute(conn)
    .await
    .map_err(map_sqlx)?;
    delivery_found(done.rows_affected(), id)
}

pub(super) async fn failed(
    conn: &mut SqliteConnection,
    id: Uuid,
    error: String,
    next_attempt_at: Option<SystemTime>,
) -> Result<(), StoreError> {
    let now = now_millis();
    let done = match next_attempt_at {
        Some(next) => sqlx::query(
            "UPDATE webhooks SET status = 'pending', next_attempt_at = $3, worker_id = NULL, \
             lease_until = NULL, last_error = $4, updated_at = $2 WHERE id = $1",
        )
        .bind(id.to_string())
        .bind(now)
        .bind(to_millis(next))
        .bind(error),
        None => sqlx::query(
            "UPDATE webhooks SET status = 'failed', lease_until = NULL, last_error = $3, \
             updated_at = $2 WHERE id = $1",
        )
        .bind(id.to_string())
        .bind(now)
        .bind(error),
    }
    .execute(conn)
    .await
    .map_err(map_sqlx)?;
    delivery_found(done.rows_affected(), id)
}

type Query = sqlx::query::Query<'static, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>;

/// `SELECT` of a [`WebhookRecord`]'s columns with `rest` (a `WHERE` clause and what follows) after
/// `FROM webhooks`; `rest` is one of this module's constant texts, so the SQL is safe.
fn select(rest: &'static str) -> Query {
    let sql = format!("SELECT {} FROM webhooks {rest}", webhook_record_columns!());
    sqlx::query(sqlx::AssertSqlSafe(sql))
}

async fn records(pool: &sqlx::SqlitePool, query: Query) -> Result<Vec<WebhookRecord>, StoreError> {
    let found = query.fetch_all(pool).await.map_err(map_sqlx)?;
    found.iter().map(records::webhook_record).collect()
}

pub(super) async fn for_task(
    pool: &sqlx::SqlitePool,
    task_id: Uuid,
) -> Result<Vec<WebhookRecord>, StoreError> {
    let sql = "WHERE task_id = $1 ORDER BY created_at, id";
    records(pool, select(sql).bind(task_id.to_string())).await
}

pub(super) async fn list(
    pool: &sqlx::SqlitePool,
    status: Option<&str>,
    limit: u32,
) -> Result<Vec<WebhookRecord>, StoreError> {
    check_webhook_status(status)?;
    let sql = "WHERE $1 IS NULL OR status = $1 ORDER BY updated_at DESC, id LIMIT $2";
    let query = select(sql).bind(status).bind(rows::int(limit));
    records(pool, query).await
}

pub(super) async fn retry_failed(
    conn: &mut SqliteConnection,
    id: Option<Uuid>,
) -> Result<u64, StoreError> {
    let now = now_millis();
    let done = sqlx::query(
        "UPDATE webhooks SET status = 'pending', next_attempt_at = $1, worker_id = NULL, \
         lease_until = NULL, updated_at = $1 WHERE status = 'failed' AND ($2 IS NULL OR id = $2)",
    )
    .bind(now)
    .bind(id.map(|id| id.to_string()))
    .execute(conn)
    .await
    .map_err(map_sqlx)?;
    Ok(done.rows_affected())
}

/// Forgets deliveries settled (delivered or given up) before `cutoff` (epoch milliseconds).
pub(super) async fn expire_settled(
    conn: &mut SqliteConnection,
    cutoff: i64,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM webhooks WHERE status <> 'pending' AND updated_at < $1")
        .bind(cutoff)
        .execute(conn)
        .await
        .map_err(map_sqlx)?;
    Ok(())
}
