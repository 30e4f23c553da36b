//! Cancelling a task: a queued one is finished at once, a running one is marked for its worker.

use sqlx::sqlite::{SqliteConnection, SqlitePool};
use uuid::Uuid;

use crate::sql::rows::ReadRow;
use crate::sql::{cancel_verdict, CancelVerdict};
use crate::sqlite::{map_sqlx, tasks};
use crate::time::now_millis;
use crate::{CancelOutcome, NewWebhook, StoreError};

/// Runs in the writer, so nothing changes the task between the read and the update.
pub(super) async fn cancel(
    conn: &mut SqliteConnection,
    tenant: String,
    id: Uuid,
    details: String,
    webhook: Option<NewWebhook>,
) -> Result<CancelOutcome, StoreError> {
    let now = now_millis();
    let found = sqlx::query(
        "SELECT status, COALESCE(worker_id IS NOT NULL AND lease_until > $3, FALSE) AS leased \
         FROM tasks WHERE id = $1 AND tenant = $2",
    )
    .bind(id.to_string())
    .bind(tenant)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_sqlx)?;
    match cancel_verdict(id, found.as_ref())? {
        CancelVerdict::Answer(outcome) => Ok(outcome),
        CancelVerdict::Mark => {
            sqlx::query("UPDATE tasks SET cancel_requested = TRUE, updated_at = $2 WHERE id = $1")
                .bind(id.to_string())
                .bind(now)
                .execute(&mut *conn)
                .await
                .map_err(map_sqlx)?;
            Ok(CancelOutcome::Requested)
        }
        CancelVerdict::Finish => {
            sqlx::query(
                "UPDATE tasks SET status = 'Error', details = $2, cancel_requested = TRUE, \
                 worker_id = NULL, lease_until = NULL, progress = NULL, finished_at = $3, \
                 updated_at = $3 WHERE id = $1",
            )
            .bind(id.to_string())
            .bind(details)
            .bind(now)
            .execute(&mut *conn)
            .await
            .map_err(map_sqlx)?;
            tasks::enqueue_final_webhook(conn, id, webhook).await?;
            Ok(CancelOutcome::Cancelled)
        }
    }
}

pub(super) async fn requested(
    pool: &SqlitePool,
    task_id: Uuid,
    worker_id: String,
) -> Result<bool, StoreError> {
    let found = sqlx::query(
        "SELECT cancel_requested FROM tasks WHERE id = $1 AND worker_id = $2 \
         AND status = 'Pending' AND lease_until > $3",
    )
    .bind(task_id.to_string())
    .bind(worker_id)
    .bind(now_millis())
    .fetch_optional(pool)
    .await
    .map_err(map_sqlx)?;
    match found {
        Some(row) => row.boolean("cancel_requested"),
        None => Err(StoreError::LeaseLost { task_id }),
    }
}
