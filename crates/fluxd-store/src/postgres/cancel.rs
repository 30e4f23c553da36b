//! Cancelling a task on PostgreSQL: a queued one is finished at once, a running one is marked for
//! its worker. The task's row is locked while deciding, so a claim or a completion by another
//! node cannot slip in between the read and the update.

use sqlx::postgres::PgConnection;
use sqlx::Connection;
use uuid::Uuid;

use crate::postgres::{map_pg, webhooks};
use crate::sql::rows::ReadRow;
use crate::sql::{cancel_verdict, CancelVerdict};
use crate::{CancelOutcome, NewWebhook, StoreError};

pub(super) async fn cancel(
    conn: &mut PgConnection,
    tenant: &str,
    id: Uuid,
    details: String,
    webhook: Option<NewWebhook>,
) -> Result<CancelOutcome, StoreError> {
    let mut tx = conn.begin().await.map_err(map_pg)?;
    let found = sqlx::query(
        "SELECT status, COALESCE(worker_id IS NOT NULL AND lease_until > fluxd_now_ms(), FALSE) \
         AS leased FROM tasks WHERE id = $1 AND tenant = $2 FOR UPDATE",
    )
    .bind(id.to_string())
    .bind(tenant)
    .fetch_optional(&mut *tx)
    .await
    .map_err(map_pg)?;
    let outcome = match cancel_verdict(id, found.as_ref())? {
        CancelVerdict::Answer(outcome) => return Ok(outcome),
        CancelVerdict::Mark => {
            sqlx::query(
                "UPDATE tasks SET cancel_requested = TRUE, updated_at = fluxd_now_ms() \
                 WHERE id = $1",
            )
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(map_pg)?;
            CancelOutcome::Requested
        }
        CancelVerdict::Finish => {
            sqlx::query(
                "UPDATE tasks SET status = 'Error', details = $2, cancel_requested = TRUE, \
                 worker_id = NULL, lease_until = NULL, progress = NULL, \
                 finished_at = fluxd_now_ms(), updated_at = fluxd_now_ms() WHERE id = $1",
            )
            .bind(id.to_string())
            .bind(details)
            .execute(&mut *tx)
            .await
            .map_err(map_pg)?;
            if let Some(webhook) = webhook {
                webhooks::enqueue(&mut *tx, id, webhook).await?;
            }
            CancelOutcome::Cancelled
        }
    };
    tx.commit().await.map_err(map_pg)?;
    Ok(outcome)
}

pub(super) async fn requested(
    conn: &mut PgConnection,
    task_id: Uuid,
    worker_id: &str,
) -> Result<bool, StoreError> {
    let found = sqlx::query(
        "SELECT cancel_requested FROM tasks WHERE id = $1 AND worker_id = $2 \
         AND status = 'Pending' AND lease_until > fluxd_now_ms()",
    )
    .bind(task_id.to_string())
    .bind(worker_id)
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_pg)?;
    match found {
        Some(row) => row.boolean("cancel_requested"),
        None => Err(StoreError::LeaseLost { task_id }),
    }
}
