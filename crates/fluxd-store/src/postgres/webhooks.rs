//! The webhook outbox on PostgreSQL: rows written with a task's final status (in the same
//! statement), leased to delivery workers with `FOR UPDATE SKIP LOCKED`.

use std::time::{Duration, SystemTime};

use sqlx::postgres::PgConnection;
use uuid::Uuid;

use crate::postgres::map_pg;
use crate::postgres::tasks::{lease_millis, Query};
use crate::sql::records::{self, delivery_columns, webhook_record_columns};
use crate::sql::{delivery_found, rows};
use crate::time::to_millis;
use crate::types::check_webhook_status;
use crate::{NewWebhook, StoreError, WebhookDelivery, WebhookRecord};

/// The columns an outbox row is queued with; the values are five parameters (id, webhook id,
/// URL, secret, payload) around the task id, then the fixed start of every delivery.
macro_rules! outbox_insert {
    () => {
        "INSERT INTO webhooks (id, task_id, webhook_id, url, secret, payload, status, attempts, \
         next_attempt_at, created_at, updated_at) "
    };
}

/// `update` (a task's completion, `$1` to `$(first - 1)`, updating one task) followed, in the
/// same statement, by its webhook's insert with parameters `$first` to `$(first + 4)`:
/// bind them with [`bind`]. The insert takes the task id from the update's `RETURNING`, so it
/// inserts nothing when the update changed nothing.
pub(super) fn after(update: &str, first: usize) -> String {
    let [id, webhook_id, url, secret, payload] = [0, 1, 2, 3, 4].map(|i| first + i);
    format!(
        "WITH done AS ({update} RETURNING id) {} SELECT ${id}, done.id, ${webhook_id}, ${url}, \
         ${secret}, ${payload}, 'pending', 0, fluxd_now_ms(), fluxd_now_ms(), fluxd_now_ms() \
         FROM done",
        outbox_insert!()
    )
}

/// Binds the webhook's values of [`after`].
pub(super) fn bind(query: Query<'static>, webhook: NewWebhook) -> Query<'static> {
    query
        .bind(Uuid::new_v4().to_string())
        .bind(webhook.webhook_id)
        .bind(webhook.url)
        .bind(webhook.secret)
        .bind(webhook.payload.to_string())
}

pub(super) async fn enqueue(
    executor: impl sqlx::PgExecutor<'_>,
    task_id: Uuid,
    webhook: NewWebhook,
) -> Result<Uuid, StoreError> {
    let id = Uuid::new_v4();
    sqlx::query(concat!(
        outbox_insert!(),
        "VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, fluxd_now_ms(), fluxd_now_ms(), \
         fluxd_now_ms())"
    ))
    .bind(id.to_string())
    .bind(task_id.to_string())
    .bind(webhook.webhook_id)
    .bind(webhook.url)
    .bind(webhook.secret)
    .bind(webhook.payload.to_string())
    .execute(executor)
    .await
    .map_err(map_pg)?;
    Ok(id)
}

/// Leases up to `limit` due deliveries; `SKIP LOCKED` lets senders on several nodes claim side by
/// side without waiting for each other.
pub(super) async fn claim_due(
    conn: &mut PgConnection,
    worker_id: &str,
    limit: u32,
    lease: Duration,
) -> Result<Vec<WebhookDelivery>, StoreError> {
    let claimed = sqlx::query(concat!(
        "UPDATE webhooks SET worker_id = $1, lease_until = fluxd_now_ms() + $2, \
         attempts = attempts + 1, updated_at = fluxd_now_ms() \
         WHERE id IN (SELECT id FROM webhooks WHERE status = 'pending' \
                      AND next_attempt_at <= fluxd_now_ms() \
                      AND (lease_until IS NULL OR lease_until <= fluxd_now_ms()) \
                      ORDER BY next_attempt_at, created_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
         RETURNING ",
        delivery_columns!()
    ))
    .bind(worker_id)
    .bind(lease_millis(lease))
    .bind(rows::int(limit))
    .fetch_all(&mut *conn)
    .await
    .map_err(map_pg)?;
    records::webhook_deliveries(&claimed)
}

pub(super) async fn delivered(conn: &mut PgConnection, id: Uuid) -> Result<(), StoreError> {
    let done = sqlx::query(
        "UPDATE webhooks SET status = 'delivered', lease_until = NULL, \
         updated_at = fluxd_now_ms() WHERE id = $1",
    )
    .bind(id.to_string())
    .execute(&mut *conn)
    .await
    .map_err(map_pg)?;
    delivery_found(done.rows_affected(), id)
}

pub(super) async fn failed(
    conn: &mut PgConnection,
    id: Uuid,
    error: &str,
    next_attempt_at: Option<SystemTime>,
) -> Result<(), StoreError> {
    let done = match next_attempt_at {
        Some(next) => sqlx::query(
            "UPDATE webhooks SET status = 'pending', next_attempt_at = $2, worker_id = NULL, \
             lease_until = NULL, last_error = $3, updated_at = fluxd_now_ms() WHERE id = $1",
        )
        .bind(id.to_string())
        .bind(to_millis(next))
        .bind(error),
        None => sqlx::query(
            "UPDATE webhooks SET status = 'failed', lease_until = NULL, last_error = $2, \
             updated_at = fluxd_now_ms() WHERE id = $1",
        )
        .bind(id.to_string())
        .bind(error),
    }
    .execute(&mut *conn)
    .await
    .map_err(map_pg)?;
    delivery_found(done.rows_affected(), id)
}

/// `SELECT` of a [`WebhookRecord`]'s columns with `rest` (a `WHERE` clause and what follows) after
/// `FROM webhooks`; `rest` is one of this module's constant texts, so the SQL is safe.
fn select(rest: &'static str) -> Query<'static> {
    let sql = format!("SELECT {} FROM webhooks {rest}", webhook_record_columns!());
    sqlx::query(sqlx::AssertSqlSafe(sql))
}

async fn records(
    conn: &mut PgConnection,
    query: Query<'_>,
) -> Result<Vec<WebhookRecord>, StoreError> {
    let found = query.fetch_all(&mut *conn).await.map_err(map_pg)?;
    found.iter().map(records::webhook_record).collect()
}

pub(super) async fn for_task(
    conn: &mut PgConnection,
    task_id: Uuid,
) -> Result<Vec<WebhookRecord>, StoreError> {
    let sql = "WHERE task_id = $1 ORDER BY created_at, id";
    records(conn, select(sql).bind(task_id.to_string())).await
}

pub(super) async fn list(
    conn: &mut PgConnection,
    status: Option<&str>,
    limit: u32,
) -> Result<Vec<WebhookRecord>, StoreError> {
    check_webhook_status(status)?;
    let sql = "WHERE $1::TEXT IS NULL OR status = $1 ORDER BY updated_at DESC, id LIMIT $2";
    let query = select(sql).bind(status).bind(rows::int(limit));
    records(conn, query).await
}

pub(super) async fn retry_failed(
    conn: &mut PgConnection,
    id: Option<Uuid>,
) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "UPDATE webhooks SET status = 'pending', next_attempt_at = fluxd_now_ms(), \
         worker_id = NULL, lease_until = NULL, updated_at = fluxd_now_ms() \
         WHERE status = 'failed' AND ($1::TEXT IS NULL OR id = $1)",
    )
    .bind(id.map(|id| id.to_string()))
    .execute(&mut *conn)
    .await
    .map_err(map_pg)?;
    Ok(done.rows_affected())
}

/// Forgets deliveries settled (delivered or given up) before `cutoff` (epoch milliseconds).
pub(super) async fn expire_settled(conn: &mut PgConnection, cutoff: i64) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM webhooks WHERE status <> 'pending' AND updated_at < $1")
        .bind(cutoff)
        .execute(&mut *conn)
        .await
        .map_err(map_pg)?;
    Ok(())
}
