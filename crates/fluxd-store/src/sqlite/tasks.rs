//! The durable task queue: submit, claim with a lease, heartbeat, progress, completion, retention.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use sqlx::sqlite::{SqliteConnection, SqlitePool};
use sqlx::SqliteExecutor;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::sql::records::{self, claim_columns};
use crate::sql::rows;
use crate::sqlite::{map_sqlx, webhooks};
use crate::time::{duration_millis, now_millis, to_millis};
use crate::{
    Claim, ErrorOutcome, InsertOutcome, ModerationKind, NewTask, NewWebhook, PreviewRecord,
    ReadyRecord, StoreError, TaskRecord, TaskStatus,
};

/// The rows a worker may still write: its own, unfinished, lease not run out. `$1` task id,
/// `$2` worker id, `$3` now.
macro_rules! owned_by_worker {
    () => {
        "id = $1 AND worker_id = $2 AND status = 'Pending' AND lease_until > $3"
    };
}

/// A statement on a task as its worker, the text ending in [`owned_by_worker`], with `$1`..`$3`
/// bound; the caller binds its own values from `$4` on.
fn owned(sql: &'static str, task_id: Uuid, worker_id: String, now: i64) -> Query<'static> {
    sqlx::query(sql)
        .bind(task_id.to_string())
        .bind(worker_id)
        .bind(now)
}

/// Runs an [`owned`] statement: [`StoreError::LeaseLost`] unless it changed the task.
async fn execute_owned(
    conn: &mut SqliteConnection,
    query: Query<'static>,
    task_id: Uuid,
) -> Result<(), StoreError> {
    let done = query.execute(conn).await.map_err(map_sqlx)?;
    expect_owned(done.rows_affected(), task_id)
}

/// The insert of [`insert`] and [`insert_if_under_limit`]: the row comes from a SELECT so that
/// conditions can be attached. `$10` is the task's cost (NULL: free): it is charged (and the
/// `credits_debit` trigger debits it in the same statement) when the tenant has a balance, which
/// must then cover it. `$condition` may add more, from `$11` on.
macro_rules! insert_task_sql {
    ($condition:literal) => {
        concat!(
            "INSERT INTO tasks (id, tenant, key_id, params, finetune_id, webhook_url, \
             webhook_secret, status, attempts, max_attempts, created_at, updated_at, charged) \
             SELECT $1, $2, $3, $4, $5, $6, $7, 'Pending', 0, $8, $9, $9, \
             (SELECT $10 FROM credit_balances WHERE tenant = $2 AND $10 IS NOT NULL) \
             WHERE ($10 IS NULL OR \
                    COALESCE((SELECT balance FROM credit_balances WHERE tenant = $2), $10) >= $10)",
            $condition
        )
    };
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>;

/// Binds the task's own columns, in table order: id, tenant, key id, params, fine-tune, webhook
/// URL, webhook secret.
fn bind_columns<'q>(query: Query<'q>, task: &'q NewTask) -> Query<'q> {
    query
        .bind(task.id.to_string())
        .bind(task.tenant.as_str())
        .bind(task.key_id.to_string())
        .bind(task.params.to_string())
        .bind(task.finetune_id.as_deref())
        .bind(task.webhook_url.as_deref())
        .bind(task.webhook_secret.as_deref())
}

/// Binds `$1`..`$10` of [`insert_task_sql`].
fn bind_task<'q>(query: Query<'q>, task: &'q NewTask, max_attempts: u32) -> Query<'q> {
    bind_columns(query, task)
        .bind(rows::int(max_attempts))
        .bind(now_millis())
        .bind(task.cost)
}

fn task_conflict(id: Uuid) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |err| match map_sqlx(err) {
        StoreError::Conflict(_) => StoreError::Conflict(format!("task {id}")),
        other => other,
    }
}

pub(super) async fn insert(
    conn: &mut SqliteConnection,
    task: NewTask,
    max_attempts: u32,
) -> Result<(), StoreError> {
    let done = bind_task(sqlx::query(insert_task_sql!("")), &task, max_attempts)
        .execute(conn)
        .await
        .map_err(task_conflict(task.id))?;
    if done.rows_affected() == 0 {
        return Err(StoreError::Invalid(format!(
            "task {}: the tenant's credits cannot pay it",
            task.id
        )));
    }
    Ok(())
}

/// Check and insert are one statement, run by the single writer: no other submit can slip in
/// between them, and a submit costs one round trip to the database thread. The check asks
/// whether the key's `limit`-th unfinished task exists rather than counting them all, so a key
/// with a long queue costs no more than one with a short one.
pub(super) async fn insert_if_under_limit(
    conn: &mut SqliteConnection,
    task: &NewTask,
    limit: u32,
    max_attempts: u32,
) -> Result<InsertOutcome, StoreError> {
    let done = bind_task(
        sqlx::query(insert_task_sql!(
            " AND $11 > COALESCE((SELECT pending FROM key_load WHERE key_id = $3), 0)"
        )),
        task,
        max_attempts,
    )
    .bind(rows::int(limit))
    .execute(&mut *conn)
    .await
    .map_err(task_conflict(task.id))?;
    if done.rows_affected() > 0 {
        return Ok(InsertOutcome::Inserted);
    }
    refused(conn, task).await
}

/// Why `task` was not inserted: its balance cannot pay it, else its key is at its limit.
async fn refused(conn: &mut SqliteConnection, task: &NewTask) -> Result<InsertOutcome, StoreError> {
    if let Some(cost) = task.cost {
        let balance: Option<i64> = sqlx::query_scalar(crate::sql::credits::BALANCE)
            .bind(task.tenant.as_str())
            .fetch_optional(&mut *conn)
            .await
            .map_err(map_sqlx)?;
        if let Some(balance) = balance.filter(|b| *b < cost) {
            return Ok(InsertOutcome::InsufficientCredits { balance });
        }
    }
    let active = count_unfinished(conn, task.key_id).await?;
    Ok(InsertOutcome::LimitReached { active })
}

/// A submit waiting in the writer's batch: [`insert_many`] queues the batch's submits with a few
/// multi-row statements instead of one round trip to the database thread each.
pub(crate) struct Submit {
    /// The task.
    pub(crate) task: NewTask,
    /// Most unfinished tasks its key may have.
    pub(crate) limit: u32,
    /// Runs the task may start.
    pub(crate) max_attempts: u32,
    /// Where the outcome goes once the batch committed.
    pub(crate) reply: oneshot::Sender<Result<InsertOutcome, StoreError>>,
}

/// Most rows in one multi-row insert (8 parameters each, far below SQLite's 32766).
const ROWS_PER_INSERT: usize = 64;

/// Whether [`insert_many`] queues `submits` with a single statement, which then needs no
/// transaction around it.
pub(crate) fn one_statement(submits: &[Submit]) -> bool {
    submits.len() <= ROWS_PER_INSERT
        && submits.iter().all(|s| s.task.cost.is_none())
        && submits
            .windows(2)
            .all(|pair| pair[0].max_attempts == pair[1].max_attempts)
}

/// Queues `submits`, each under its key's limit as [`insert_if_under_limit`] would, with one
/// statement per [`ROWS_PER_INSERT`] free tasks of the same max attempts (tasks with a cost go
/// one by one, first), and returns each one's outcome. `Err` is a failure that aborts the
/// transaction.
pub(crate) async fn insert_many(
    conn: &mut SqliteConnection,
    submits: &[Submit],
) -> Result<Vec<Result<InsertOutcome, StoreError>>, StoreError> {
    let mut outcomes: Vec<Result<InsertOutcome, StoreError>> =
        submits.iter().map(|_| Err(StoreError::Closed)).collect();
    let mut groups: Vec<(u32, Vec<usize>)> = Vec::new();
    for (i, submit) in submits.iter().enumerate() {
        // A task with a cost goes alone: its debit must see the balance its predecessors left.
        if submit.task.cost.is_some() {
            let outcome =
                insert_if_under_limit(conn, &submit.task, submit.limit, submit.max_attempts).await;
            if let Err(err) = &outcome {
                if err.aborts_transaction() {
                    return Err(err.clone());
                }
            }
            outcomes[i] = outcome;
            continue;
        }
        let group = groups.iter_mut().find(|(attempts, rows)| {
            *attempts == submit.max_attempts && rows.len() < ROWS_PER_INSERT
        });
        match group {
            Some((_, rows)) => rows.push(i),
            None => groups.push((submit.max_attempts, vec![i])),
        }
    }
    for (max_attempts, rows) in groups {
        // The generated SQL holds `?` placeholders only (one row's worth per task); every value
        // is bound, so asserting the text safe is sound.
        let sql = sqlx::AssertSqlSafe(insert_many_sql(rows.len()));
        let mut query = sqlx::query(sql)
            .bind(rows::int(max_attempts))
            .bind(now_millis());
        for &i in &rows {
            let Submit { task, limit, .. } = &submits[i];
            query = bind_columns(query, task).bind(rows::int(*limit));
        }
        match query.execute(&mut *conn).await.map_err(map_sqlx) {
            Ok(done) => {
                // Usually every row went in; otherwise the rows that did are found by id (a row
                // of this statement that already existed would have failed it instead).
                let inserted = if usize::try_from(done.rows_affected()).ok() == Some(rows.len()) {
                    None
                } else {
                    Some(existing_ids(&mut *conn, rows.iter().map(|&i| submits[i].task.id)).await?)
                };
                for &i in &rows {
                    let task = &submits[i].task;
                    outcomes[i] = Ok(
                        if inserted.as_ref().is_none_or(|ids| ids.contains(&task.id)) {
                            InsertOutcome::Inserted
                        } else {
                            let active = count_unfinished(&mut *conn, task.key_id).await?;
                            InsertOutcome::LimitReached { active }
                        },
                    );
                }
            }
            Err(err) if err.aborts_transaction() => return Err(err),
            // Refused (a duplicate id): SQLite undid the whole statement, so each row goes again
            // on its own and only the culprit is refused.
            Err(_) => {
                for &i in &rows {
                    let Submit { task, limit, .. } = &submits[i];
                    let outcome = insert_if_under_limit(conn, task, *limit, max_attempts).await;
                    if let Err(err) = &outcome {
                        if err.aborts_transaction() {
                            return Err(err.clone());
                        }
                    }
                    outcomes[i] = outcome;
                }
            }
        }
    }
    Ok(outcomes)
}

/// The insert of `rows` tasks for [`insert_many`]: max attempts and now, then 8 values per row
/// (id, tenant, key id, params, fine-tune, webhook URL, webhook secret, the key's limit); the
/// same condition as [`insert_if_under_limit`], per row. The rows are all checked before any
/// goes in (SQLite evaluates the SELECT first when the table has triggers), so a key's rows of
/// this statement are counted by their rank among themselves.
/// Placeholders are anonymous (`?`): SQLite keeps no name list for them, where looking up each
/// of hundreds of numbered ones when binding cost time growing with the square of their number.
fn insert_many_sql(rows: usize) -> String {
    let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?)"; rows].join(", ");
    format!(
        "WITH p (attempts, now) AS (VALUES (?, ?)), \
         v AS (SELECT *, ROW_NUMBER() OVER (PARTITION BY column3) AS nth \
               FROM (VALUES {values})) \
         INSERT INTO tasks (id, tenant, key_id, params, finetune_id, webhook_url, \
         webhook_secret, status, attempts, max_attempts, created_at, updated_at) \
         SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6, v.column7, \
         'Pending', 0, p.attempts, p.now, p.now FROM p, v \
         WHERE v.column8 >= v.nth + COALESCE((SELECT pending FROM key_load \
                                               WHERE key_id = v.column3), 0)"
    )
}

/// Which of `ids` are tasks.
async fn existing_ids(
    conn: &mut SqliteConnection,
    ids: impl Iterator<Item = Uuid>,
) -> Result<HashSet<Uuid>, StoreError> {
    let ids: Vec<String> = ids.map(|id| id.to_string()).collect();
    let sql = format!(
        "SELECT id FROM tasks WHERE id IN ({})",
        vec!["?"; ids.len()].join(", ")
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for id in &ids {
        query = query.bind(id.as_str());
    }
    query
        .fetch_all(conn)
        .await
        .map_err(map_sqlx)?
        .iter()
        .map(|row| rows::uuid(row, "id"))
        .collect()
}

pub(super) async fn count_unfinished<'e>(
    executor: impl SqliteExecutor<'e>,
    key_id: Uuid,
) -> Result<u32, StoreError> {
    let active: i64 =
        sqlx::query_scalar("SELECT COALESCE((SELECT pending FROM key_load WHERE key_id = $1), 0)")
            .bind(key_id.to_string())
            .fetch_one(executor)
            .await
            .map_err(map_sqlx)?;
    u32::try_from(active).map_err(|_| StoreError::Corrupt(format!("{active} unfinished tasks")))
}

/// One statement picks and leases the oldest runnable task; SQLite runs it under the write lock,
/// so two workers cannot pick the same row. (PostgreSQL adds `FOR UPDATE SKIP LOCKED` to the
/// inner SELECT for the same effect without serialising workers.)
pub(super) async fn claim_next(
    conn: &mut SqliteConnection,
    worker_id: String,
    lease: Duration,
) -> Result<Option<Claim>, StoreError> {
    let now = now_millis();
    let found = sqlx::query(concat!(
        "UPDATE tasks SET worker_id = $1, lease_until = $2, attempts = attempts + 1, \
         progress = 0, preview_step = NULL, preview_steps = NULL, updated_at = $3 \
         WHERE id = (SELECT id FROM tasks WHERE status = 'Pending' \
                     AND (lease_until IS NULL OR lease_until <= $3) \
                     ORDER BY created_at, id LIMIT 1) \
         RETURNING ",
        claim_columns!()
    ))
    .bind(worker_id)
    .bind(now.saturating_add(duration_millis(lease)))
    .bind(now)
    .fetch_optional(conn)
    .await
    .map_err(map_sqlx)?;
    found.as_ref().map(records::claim).transpose()
}

pub(super) async fn heartbeat(
    conn: &mut SqliteConnection,
    task_id: Uuid,
    worker_id: String,
    lease: Duration,
) -> Result<(), StoreError> {
    let now = now_millis();
    let sql = concat!(
        "UPDATE tasks SET lease_until = $4, updated_at = $3 WHERE ",
        owned_by_worker!()
    );
    let query =
        owned(sql, task_id, worker_id, now).bind(now.saturating_add(duration_millis(lease)));
    execute_owned(conn, query, task_id).await
}

pub(super) async fn release(
    conn: &mut SqliteConnection,
    task_id: Uuid,
    worker_id: String,
) -> Result<(), StoreError> {
    let sql = concat!(
        "UPDATE tasks SET worker_id = NULL, lease_until = NULL, progress = NULL, \
         attempts = MAX(attempts - 1, 0), updated_at = $3 WHERE ",
        owned_by_worker!()
    );
    execute_owned(conn, owned(sql, task_id, worker_id, now_millis()), task_id).await
}

pub(super) async fn set_progress(
    conn: &mut SqliteConnection,
    task_id: Uuid,
    worker_id: String,
    progress: f64,
) -> Result<(), StoreError> {
    let sql = concat!(
        "UPDATE tasks SET progress = $4, updated_at = $3 WHERE ",
        owned_by_worker!()
    );
    let query = owned(sql, task_id, worker_id, now_millis()).bind(progress);
    execute_owned(conn, query, task_id).await
}

pub(super) async fn set_preview(
    conn: &mut SqliteConnection,
    task_id: Uuid,
    worker_id: String,
    preview: PreviewRecord,
) -> Result<(), StoreError> {
    let sql = concat!(
        "UPDATE tasks SET preview_key = $4, preview_step = $5, preview_steps = $6, \
         updated_at = $3 WHERE ",
        owned_by_worker!()
    );
    let query = owned(sql, task_id, worker_id, now_millis())
        .bind(preview.key)
        .bind(rows::int(preview.step))
        .bind(rows::int(preview.steps));
    execute_owned(conn, query, task_id).await
}

pub(super) async fn complete_ready(
    conn: &mut SqliteConnection,
    task_id: Uuid,
    worker_id: String,
    ready: ReadyRecord,
    webhook: Option<NewWebhook>,
) -> Result<(), StoreError> {
    let sql = concat!(
        "UPDATE tasks SET status = 'Ready', sample_key = $4, prompt_used = $5, seed_used = $6, \
         start_time = $7, end_time = $8, progress = NULL, lease_until = NULL, \
         finished_at = $3, updated_at = $3 WHERE ",
        owned_by_worker!()
    );
    let query = owned(sql, task_id, worker_id, now_millis())
        .bind(ready.sample_key)
        .bind(ready.prompt_used)
        .bind(rows::seed_to_sql(ready.seed_used))
        .bind(ready.start_time)
        .bind(ready.end_time);
    execute_owned(&mut *conn, query, task_id).await?;
    enqueue_final_webhook(conn, task_id, webhook).await
}

pub(super) async fn complete_moderated(
    conn: &mut SqliteConnection,
    task_id: Uuid,
    worker_id: String,
    kind: ModerationKind,
    reasons: Vec<String>,
    webhook: Option<NewWebhook>,
) -> Result<(), StoreError> {
    let status = match kind {
        ModerationKind::Request => TaskStatus::RequestModerated,
        ModerationKind::Content => TaskStatus::ContentModerated,
    };
    let sql = concat!(
        "UPDATE tasks SET status = $4, details = $5, progress = NULL, lease_until = NULL, \
         finished_at = $3, updated_at = $3 WHERE ",
        owned_by_worker!()
    );
    let query = owned(sql, task_id, worker_id, now_millis())
        .bind(status.as_str())
        .bind(serde_json::Value::from(reasons).to_string());
    execute_owned(&mut *conn, query, task_id).await?;
    enqueue_final_webhook(conn, task_id, webhook).await
}

pub(super) async fn complete_error(
    conn: &mut SqliteConnection,
    task_id: Uuid,
    worker_id: String,
    details: String,
    retryable: bool,
    webhook: Option<NewWebhook>,
) -> Result<ErrorOutcome, StoreError> {
    let now = now_millis();
    let sql = concat!(
        "SELECT attempts, max_attempts FROM tasks WHERE ",
        owned_by_worker!()
    );
    let found = owned(sql, task_id, worker_id.clone(), now)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_sqlx)?;
    let Some(row) = found else {
        return Err(StoreError::LeaseLost { task_id });
    };
    let attempts = rows::count(&row, "attempts")?;
    if retryable && attempts < rows::count(&row, "max_attempts")? {
        // Back to the queue, in its original place (claims order by submission time).
        let sql = concat!(
            "UPDATE tasks SET worker_id = NULL, lease_until = NULL, progress = NULL, \
             last_error = $4, updated_at = $3 WHERE ",
            owned_by_worker!()
        );
        let query = owned(sql, task_id, worker_id, now).bind(details);
        execute_owned(&mut *conn, query, task_id).await?;
        return Ok(ErrorOutcome::Requeued { attempts });
    }
    let sql = concat!(
        "UPDATE tasks SET status = 'Error', details = $4, last_error = $4, progress = NULL, \
         lease_until = NULL, finished_at = $3, updated_at = $3 WHERE ",
        owned_by_worker!()
    );
    execute_owned(
        &mut *conn,
        owned(sql, task_id, worker_id, now).bind(details),
        task_id,
    )
    .await?;
    enqueue_final_webhook(conn, task_id, webhook).await?;
    Ok(ErrorOutcome::Failed)
}

pub(super) async fn get(
    pool: &SqlitePool,
    tenant: &str,
    id: Uuid,
) -> Result<Option<TaskRecord>, StoreError> {
    let found = sqlx::query("SELECT * FROM tasks WHERE id = $1 AND tenant = $2")
        .bind(id.to_string())
        .bind(tenant)
        .fetch_optional(pool)
        .await
        .map_err(map_sqlx)?;
    found.as_ref().map(records::task).transpose()
}

pub(super) async fn expire_finished(
    conn: &mut SqliteConnection,
    finished_before: SystemTime,
) -> Result<Vec<String>, StoreError> {
    let cutoff = to_millis(finished_before);
    let deleted: Vec<(Option<String>, Option<String>)> = sqlx::query_as(
        "DELETE FROM tasks WHERE finished_at IS NOT NULL AND finished_at < $1 \
         RETURNING sample_key, preview_key",
    )
    .bind(cutoff)
    .fetch_all(&mut *conn)
    .await
    .map_err(map_sqlx)?;
    webhooks::expire_settled(conn, cutoff).await?;
    Ok(deleted
        .into_iter()
        .flat_map(|(a, b)| [a, b])
        .flatten()
        .collect())
}

fn expect_owned(rows_affected: u64, task_id: Uuid) -> Result<(), StoreError> {
    if rows_affected == 0 {
        Err(StoreError::LeaseLost { task_id })
    } else {
        Ok(())
    }
}

pub(super) async fn enqueue_final_webhook(
    conn: &mut SqliteConnection,
    task_id: Uuid,
    webhook: Option<NewWebhook>,
) -> Result<(), StoreError> {
    if let Some(webhook) = webhook {
        webhooks::enqueue(conn, task_id, webhook).await?;
    }
    Ok(())
}
