//! The durable task queue on PostgreSQL: submit under the key's row lock, claim with
//! `FOR UPDATE SKIP LOCKED`, heartbeat, progress, completion (with its webhook in the same
//! statement), retention.

use std::time::{Duration, SystemTime};

use sqlx::postgres::{PgArguments, PgConnection};
use sqlx::{Connection, Postgres};
use uuid::Uuid;

use crate::postgres::db::statement_timeout;
use crate::postgres::{map_pg, webhooks};
use crate::sql::records::{self, claim_columns};
use crate::sql::rows;
use crate::time::{duration_millis, to_millis};
use crate::{
    Claim, ErrorOutcome, InsertOutcome, ModerationKind, NewTask, NewWebhook, PreviewRecord,
    ReadyRecord, StoreError, TaskRecord, TaskStatus,
};

pub(super) type Query<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

/// Longest lease stored, in milliseconds (about 30 000 years): longer ones would overflow the
/// database's BIGINT when added to the clock.
const MAX_LEASE_MS: i64 = 1 << 50;

/// A lease as stored, clamped to [`MAX_LEASE_MS`].
pub(super) fn lease_millis(lease: Duration) -> i64 {
    duration_millis(lease).min(MAX_LEASE_MS)
}

/// The rows a worker may still write: its own, unfinished, lease not run out. `$1` task id,
/// `$2` worker id.
macro_rules! owned_by_worker {
    () => {
        "id = $1 AND worker_id = $2 AND status = 'Pending' AND lease_until > fluxd_now_ms()"
    };
}

/// A statement on a task as its worker, the text ending in [`owned_by_worker`], with `$1` and
/// `$2` bound; the caller binds its own values from `$3` on.
fn owned(sql: &'static str, task_id: Uuid, worker_id: &str) -> Query<'static> {
    sqlx::query(sql)
        .bind(task_id.to_string())
        .bind(worker_id.to_owned())
}

/// Runs an [`owned`] statement: [`StoreError::LeaseLost`] unless it changed the task.
async fn execute_owned(
    conn: &mut PgConnection,
    query: Query<'_>,
    task_id: Uuid,
) -> Result<(), StoreError> {
    let done = query.execute(&mut *conn).await.map_err(map_pg)?;
    if done.rows_affected() == 0 {
        Err(StoreError::LeaseLost { task_id })
    } else {
        Ok(())
    }
}

/// Queues `task` if its key has fewer than `limit` unfinished tasks and its tenant's balance,
/// when it has one, covers its cost. The key's `key_load` row is locked first (`FOR UPDATE`):
/// a concurrent submit of the same key, from any node, waits for this one to commit and then
/// reads the count it left (READ COMMITTED re-checks the locked row's condition against its
/// newest version). The tenant's balance row is locked next (only after the key's: `funds`
/// reads `slot`), so concurrent submits of one tenant cannot both spend the same credits. The
/// insert's triggers bump the count and debit the balance in the same transaction. One
/// statement: one round trip, its own transaction.
pub(super) async fn insert(
    conn: &mut PgConnection,
    task: &NewTask,
    limit: i64,
    max_attempts: u32,
) -> Result<InsertOutcome, StoreError> {
    let done = sqlx::query(
        "WITH slot AS (SELECT key_id FROM key_load WHERE key_id = $3 AND pending < $9 \
                       FOR UPDATE), \
              funds AS (SELECT balance FROM credit_balances \
                        WHERE tenant = $2 AND $10::BIGINT IS NOT NULL \
                        AND EXISTS (SELECT 1 FROM slot) FOR UPDATE) \
         INSERT INTO tasks (id, tenant, key_id, params, finetune_id, webhook_url, \
         webhook_secret, status, attempts, max_attempts, created_at, updated_at, charged) \
         SELECT $1, $2, $3, $4, $5, $6, $7, 'Pending', 0, $8, fluxd_now_ms(), fluxd_now_ms(), \
                (SELECT $10::BIGINT FROM funds) \
         FROM slot \
         WHERE $10::BIGINT IS NULL OR COALESCE((SELECT balance FROM funds), $10::BIGINT) >= $10",
    )
    .bind(task.id.to_string())
    .bind(task.tenant.as_str())
    .bind(task.key_id.to_string())
    .bind(task.params.to_string())
    .bind(task.finetune_id.as_deref())
    .bind(task.webhook_url.as_deref())
    .bind(task.webhook_secret.as_deref())
    .bind(rows::int(max_attempts))
    .bind(limit)
    .bind(task.cost)
    .execute(&mut *conn)
    .await
    .map_err(|err| match map_pg(err) {
        StoreError::Conflict(_) => StoreError::Conflict(format!("task {}", task.id)),
        other => other,
    })?;
    if done.rows_affected() > 0 {
        return Ok(InsertOutcome::Inserted);
    }
    // Every key has a load row from its creation: no row, no key.
    let Some(active) = load(conn, task.key_id).await? else {
        return Err(StoreError::Invalid(format!(
            "refers to a missing row: key {}",
            task.key_id
        )));
    };
    if i64::from(active) < limit {
        if let Some(cost) = task.cost {
            let balance: Option<i64> = sqlx::query_scalar(crate::sql::credits::BALANCE)
                .bind(task.tenant.as_str())
                .fetch_optional(&mut *conn)
                .await
                .map_err(map_pg)?;
            if let Some(balance) = balance.filter(|b| *b < cost) {
                return Ok(InsertOutcome::InsufficientCredits { balance });
            }
        }
    }
    Ok(InsertOutcome::LimitReached { active })
}

/// A key's unfinished tasks, None for an unknown key.
async fn load(conn: &mut PgConnection, key_id: Uuid) -> Result<Option<u32>, StoreError> {
    let found: Option<i64> = sqlx::query_scalar("SELECT pending FROM key_load WHERE key_id = $1")
        .bind(key_id.to_string())
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_pg)?;
    found
        .map(|n| u32::try_from(n).map_err(|_| StoreError::Corrupt(format!("{n} unfinished tasks"))))
        .transpose()
}

pub(super) async fn count_unfinished(
    conn: &mut PgConnection,
    key_id: Uuid,
) -> Result<u32, StoreError> {
    Ok(load(conn, key_id).await?.unwrap_or(0))
}

/// Leases the oldest runnable task. `SKIP LOCKED` passes over rows another worker's claim is
/// locking right now, so concurrent claims each take a different task without waiting; a row
/// that changed since the statement's snapshot is re-checked once locked.
pub(super) async fn claim_next(
    conn: &mut PgConnection,
    worker_id: &str,
    lease: Duration,
) -> Result<Option<Claim>, StoreError> {
    let found = sqlx::query(concat!(
        "UPDATE tasks SET worker_id = $1, lease_until = fluxd_now_ms() + $2, \
         attempts = attempts + 1, progress = 0, preview_step = NULL, preview_steps = NULL, \
         updated_at = fluxd_now_ms() \
         WHERE id = (SELECT id FROM tasks WHERE status = 'Pending' \
                     AND (lease_until IS NULL OR lease_until <= fluxd_now_ms()) \
                     ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED) \
         RETURNING ",
        claim_columns!()
    ))
    .bind(worker_id)
    .bind(lease_millis(lease))
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_pg)?;
    found.as_ref().map(records::claim).transpose()
}

pub(super) async fn heartbeat(
    conn: &mut PgConnection,
    task_id: Uuid,
    worker_id: &str,
    lease: Duration,
) -> Result<(), StoreError> {
    let sql = concat!(
        "UPDATE tasks SET lease_until = fluxd_now_ms() + $3, updated_at = fluxd_now_ms() WHERE ",
        owned_by_worker!()
    );
    let query = owned(sql, task_id, worker_id).bind(lease_millis(lease));
    execute_owned(conn, query, task_id).await
}

pub(super) async fn release(
    conn: &mut PgConnection,
    task_id: Uuid,
    worker_id: &str,
) -> Result<(), StoreError> {
    let sql = concat!(
        "UPDATE tasks SET worker_id = NULL, lease_until = NULL, progress = NULL, \
         attempts = GREATEST(attempts - 1, 0), updated_at = fluxd_now_ms() WHERE ",
        owned_by_worker!()
    );
    execute_owned(conn, owned(sql, task_id, worker_id), task_id).await
}

pub(super) async fn set_progress(
    conn: &mut PgConnection,
    task_id: Uuid,
    worker_id: &str,
    progress: f64,
) -> Result<(), StoreError> {
    let sql = concat!(
        "UPDATE tasks SET progress = $3, updated_at = fluxd_now_ms() WHERE ",
        owned_by_worker!()
    );
    execute_owned(conn, owned(sql, task_id, worker_id).bind(progress), task_id).await
}

pub(super) async fn set_preview(
    conn: &mut PgConnection,
    task_id: Uuid,
    worker_id: &str,
    preview: PreviewRecord,
) -> Result<(), StoreError> {
    let sql = concat!(
        "UPDATE tasks SET preview_key = $3, preview_step = $4, preview_steps = $5, \
         updated_at = fluxd_now_ms() WHERE ",
        owned_by_worker!()
    );
    let query = owned(sql, task_id, worker_id)
        .bind(preview.key)
        .bind(rows::int(preview.step))
        .bind(rows::int(preview.steps));
    execute_owned(conn, query, task_id).await
}

/// The update of a task to its final status, `SET` list first (`$3` on), up to
/// [`owned_by_worker`]; finishes the lease and stamps the time.
macro_rules! finish_sql {
    ($set:literal) => {
        concat!(
            "UPDATE tasks SET ",
            $set,
            ", progress = NULL, lease_until = NULL, finished_at = fluxd_now_ms(), \
             updated_at = fluxd_now_ms() WHERE ",
            owned_by_worker!()
        )
    };
}

/// Runs `update` (a [`finish_sql`] whose own values, `$3` to `$(2 + values)`, `bind` binds) and,
/// when there is one, queues `webhook` in the same statement: both commit, or neither.
async fn finish(
    conn: &mut PgConnection,
    update: &'static str,
    (task_id, worker_id): (Uuid, &str),
    (values, bind): (usize, impl FnOnce(Query<'static>) -> Query<'static>),
    webhook: Option<NewWebhook>,
) -> Result<(), StoreError> {
    let query = match webhook {
        None => bind(owned(update, task_id, worker_id)),
        Some(webhook) => {
            let sql = webhooks::after(update, 3 + values);
            let query = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(task_id.to_string())
                .bind(worker_id.to_owned());
            webhooks::bind(bind(query), webhook)
        }
    };
    // With a webhook, the insert's rows are counted: none if the update matched nothing.
    execute_owned(conn, query, task_id).await
}

pub(super) async fn complete_ready(
    conn: &mut PgConnection,
    task_id: Uuid,
    worker_id: &str,
    ready: ReadyRecord,
    webhook: Option<NewWebhook>,
) -> Result<(), StoreError> {
    let sql = finish_sql!(
        "status = 'Ready', sample_key = $3, prompt_used = $4, seed_used = $5, start_time = $6, \
         end_time = $7"
    );
    let bind = |query: Query<'static>| {
        query
            .bind(ready.sample_key)
            .bind(ready.prompt_used)
            .bind(rows::seed_to_sql(ready.seed_used))
            .bind(ready.start_time)
            .bind(ready.end_time)
    };
    finish(conn, sql, (task_id, worker_id), (5, bind), webhook).await
}

pub(super) async fn complete_moderated(
    conn: &mut PgConnection,
    task_id: Uuid,
    worker_id: &str,
    kind: ModerationKind,
    reasons: Vec<String>,
    webhook: Option<NewWebhook>,
) -> Result<(), StoreError> {
    let status = match kind {
        ModerationKind::Request => TaskStatus::RequestModerated,
        ModerationKind::Content => TaskStatus::ContentModerated,
    };
    let sql = finish_sql!("status = $3, details = $4");
    let bind = |query: Query<'static>| {
        query
            .bind(status.as_str())
            .bind(serde_json::Value::from(reasons).to_string())
    };
    finish(conn, sql, (task_id, worker_id), (2, bind), webhook).await
}

pub(super) async fn complete_error(
    conn: &mut PgConnection,
    task_id: Uuid,
    worker_id: &str,
    details: String,
    retryable: bool,
    webhook: Option<NewWebhook>,
) -> Result<ErrorOutcome, StoreError> {
    let sql = concat!(
        "SELECT attempts, max_attempts FROM tasks WHERE ",
        owned_by_worker!()
    );
    let found = owned(sql, task_id, worker_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_pg)?;
    let Some(row) = found else {
        return Err(StoreError::LeaseLost { task_id });
    };
    let attempts = rows::count(&row, "attempts")?;
    if retryable && attempts < rows::count(&row, "max_attempts")? {
        // Back to the queue, in its original place (claims order by submission time). The
        // update re-checks the lease, so a takeover since the read above is still refused.
        let sql = concat!(
            "UPDATE tasks SET worker_id = NULL, lease_until = NULL, progress = NULL, \
             last_error = $3, updated_at = fluxd_now_ms() WHERE ",
            owned_by_worker!()
        );
        execute_owned(conn, owned(sql, task_id, worker_id).bind(details), task_id).await?;
        return Ok(ErrorOutcome::Requeued { attempts });
    }
    let sql = finish_sql!("status = 'Error', details = $3, last_error = $3");
    let bind = |query: Query<'static>| query.bind(details);
    finish(conn, sql, (task_id, worker_id), (1, bind), webhook).await?;
    Ok(ErrorOutcome::Failed)
}

pub(super) async fn get(
    conn: &mut PgConnection,
    tenant: &str,
    id: Uuid,
) -> Result<Option<TaskRecord>, StoreError> {
    let found = sqlx::query("SELECT * FROM tasks WHERE id = $1 AND tenant = $2")
        .bind(id.to_string())
        .bind(tenant)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_pg)?;
    found.as_ref().map(records::task).transpose()
}

/// Deletes the tasks finished before `finished_before` and the deliveries settled then, in one
/// transaction whose statements may take up to `limit` each (retention can meet a day's worth
/// of rows at once, more than a request's call is allowed).
pub(super) async fn expire_finished(
    conn: &mut PgConnection,
    finished_before: SystemTime,
    limit: Duration,
) -> Result<Vec<String>, StoreError> {
    let cutoff = to_millis(finished_before);
    let mut tx = conn.begin().await.map_err(map_pg)?;
    // `SET LOCAL` in function form (it takes no parameters): for this transaction only.
    sqlx::query("SELECT set_config('statement_timeout', $1, true)")
        .bind(statement_timeout(limit))
        .execute(&mut *tx)
        .await
        .map_err(map_pg)?;
    let deleted: Vec<(Option<String>, Option<String>)> = sqlx::query_as(
        "DELETE FROM tasks WHERE finished_at IS NOT NULL AND finished_at < $1 \
         RETURNING sample_key, preview_key",
    )
    .bind(cutoff)
    .fetch_all(&mut *tx)
    .await
    .map_err(map_pg)?;
    webhooks::expire_settled(&mut tx, cutoff).await?;
    tx.commit().await.map_err(map_pg)?;
    Ok(deleted
        .into_iter()
        .flat_map(|(a, b)| [a, b])
        .flatten()
        .collect())
}
