//! Submits in batches: a submit that arrives while earlier ones are being committed waits for a
//! slot and then goes with everything that piled up meanwhile, as one multi-row statement, one
//! commit and one WAL flush. Alone, a submit goes at once, as the single-row statement of
//! [`tasks::insert`]. The per-key limit holds as it does there: the batch locks its keys'
//! `key_load` rows (in key order, so batches never deadlock) and admits each key's tasks by rank
//! against the count it finds.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sqlx::postgres::PgConnection;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::ask::{ask, stop};
use crate::postgres::db::Db;
use crate::postgres::{map_pg, tasks};
use crate::sql::rows;
use crate::{InsertOutcome, NewTask, StoreError};

/// Most submits in one statement.
const MAX_BATCH: usize = 128;
/// Batches committing at once: one gathers submits while the other commits. More made batches
/// smaller and commits more numerous; on `examples/submit_throughput` with 64 clients, 2 gave
/// about 1.5 times the submits per second of 8.
const IN_FLIGHT: usize = 2;
/// Submits waiting before senders wait too (back-pressure under overload).
const QUEUE: usize = 4096;

type Reply = oneshot::Sender<Result<InsertOutcome, StoreError>>;

enum Message {
    Submit(NewTask, i64, Reply),
    Close(oneshot::Sender<()>),
}

/// Handle to the batching task.
pub(crate) struct Submitter {
    queue: mpsc::Sender<Message>,
}

impl Submitter {
    /// Starts batching on `db`.
    pub(crate) fn start(db: Db, max_attempts: u32) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(dispatch(db, max_attempts, IN_FLIGHT, rx));
        Self { queue }
    }

    /// Queues `task` if its key has fewer than `limit` unfinished tasks.
    pub(crate) async fn submit(
        &self,
        task: NewTask,
        limit: i64,
    ) -> Result<InsertOutcome, StoreError> {
        ask(&self.queue, |reply| Message::Submit(task, limit, reply)).await
    }

    /// Lets submits already queued finish, then refuses new ones with [`StoreError::Closed`].
    pub(crate) async fn close(&self) {
        stop(&self.queue, Message::Close).await;
    }
}

async fn dispatch(db: Db, max_attempts: u32, in_flight: usize, mut rx: mpsc::Receiver<Message>) {
    let slots = Arc::new(Semaphore::new(in_flight));
    let mut closing = None;
    while let Some(first) = rx.recv().await {
        let mut batch = Vec::new();
        let mut next = Some(first);
        // Waiting for a slot is what lets a batch grow: submits pile up meanwhile.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        while let Some(message) = next.take() {
            match message {
                Message::Submit(task, limit, reply) => batch.push((task, limit, reply)),
                Message::Close(done) => {
                    closing = Some(done);
                    rx.close();
                }
            }
            if batch.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let db = db.clone();
            tokio::spawn(async move {
                run(&db, max_attempts, batch).await;
                drop(slot);
            });
        }
        if closing.is_some() && rx.is_empty() {
            break;
        }
    }
    // Every slot back: every batch committed (or failed) and answered.
    let all = u32::try_from(in_flight).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

/// Commits one batch and answers each submit.
async fn run(db: &Db, max_attempts: u32, batch: Vec<(NewTask, i64, Reply)>) {
    // Tasks with a cost go one by one, each locking its key's load row and then its tenant's
    // balance: the multi-row statement locks only load rows, so no two transactions take
    // balance rows in different orders.
    let (charged, batch): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .partition(|(task, _, _)| task.cost.is_some());
    for (task, limit, reply) in charged {
        let _ = reply.send(
            db.call(async |c| tasks::insert(c, &task, limit, max_attempts).await)
                .await,
        );
    }
    if batch.is_empty() {
        return;
    }
    if let [(task, limit, _)] = batch.as_slice() {
        let outcome = db
            .call(async |c| tasks::insert(c, task, *limit, max_attempts).await)
            .await;
        if let Some((_, _, reply)) = batch.into_iter().next() {
            // The caller may have gone away; the task stays queued regardless.
            let _ = reply.send(outcome);
        }
        return;
    }
    let tasks: Vec<(&NewTask, i64)> = batch.iter().map(|(t, l, _)| (t, *l)).collect();
    let outcomes = match db
        .call(async |c| insert_many(c, &tasks, max_attempts).await)
        .await
    {
        Ok(outcomes) => outcomes,
        // A duplicate id refuses the whole statement: each goes again alone, so that only
        // the culprit is refused.
        Err(StoreError::Conflict(_)) => {
            let mut outcomes = Vec::with_capacity(tasks.len());
            for (task, limit) in &tasks {
                let alone = db.call(async |c| tasks::insert(c, task, *limit, max_attempts).await);
                outcomes.push(alone.await);
            }
            outcomes
        }
        Err(err) => tasks.iter().map(|_| Err(err.clone())).collect(),
    };
    for ((_, _, reply), outcome) in batch.into_iter().zip(outcomes) {
        let _ = reply.send(outcome);
    }
}

/// The multi-row form of [`tasks::insert`]'s statement: the rows come in as arrays, the keys'
/// load rows are locked in key order, and each key's rows are admitted by their rank among
/// themselves (in arrival order) against the count found under the lock.
async fn insert_many(
    conn: &mut PgConnection,
    batch: &[(&NewTask, i64)],
    max_attempts: u32,
) -> Result<Vec<Result<InsertOutcome, StoreError>>, StoreError> {
    let column = |f: fn(&NewTask) -> Option<String>| -> Vec<Option<String>> {
        batch.iter().map(|(task, _)| f(task)).collect()
    };
    let ids = column(|t| Some(t.id.to_string()));
    let keys = column(|t| Some(t.key_id.to_string()));
    let inserted: Vec<String> = sqlx::query_scalar(
        "WITH v AS (SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], \
                                         $5::TEXT[], $6::TEXT[], $7::TEXT[], $8::BIGINT[]) \
                    WITH ORDINALITY AS v (id, tenant, key_id, params, finetune_id, webhook_url, \
                                          webhook_secret, lim, arrival)), \
              locked AS (SELECT key_id, pending FROM key_load \
                         WHERE key_id IN (SELECT key_id FROM v) ORDER BY key_id FOR UPDATE), \
              ranked AS (SELECT v.*, ROW_NUMBER() OVER (PARTITION BY v.key_id \
                                                        ORDER BY v.arrival) AS nth FROM v) \
         INSERT INTO tasks (id, tenant, key_id, params, finetune_id, webhook_url, \
         webhook_secret, status, attempts, max_attempts, created_at, updated_at) \
         SELECT r.id, r.tenant, r.key_id, r.params, r.finetune_id, r.webhook_url, \
                r.webhook_secret, 'Pending', 0, $9, fluxd_now_ms(), fluxd_now_ms() \
         FROM ranked r JOIN locked l ON l.key_id = r.key_id \
         WHERE r.lim >= r.nth + l.pending \
         ORDER BY r.arrival \
         RETURNING id",
    )
    .bind(&ids)
    .bind(column(|t| Some(t.tenant.clone())))
    .bind(&keys)
    .bind(column(|t| Some(t.params.to_string())))
    .bind(column(|t| t.finetune_id.clone()))
    .bind(column(|t| t.webhook_url.clone()))
    .bind(column(|t| t.webhook_secret.clone()))
    .bind(batch.iter().map(|(_, limit)| *limit).collect::<Vec<i64>>())
    .bind(rows::int(max_attempts))
    .fetch_all(&mut *conn)
    .await
    .map_err(map_pg)?;
    let inserted: HashSet<String> = inserted.into_iter().collect();
    if inserted.len() == batch.len() {
        return Ok(batch.iter().map(|_| Ok(InsertOutcome::Inserted)).collect());
    }
    // The refused ones: at their key's limit, or of a key that does not exist.
    let loads: HashMap<String, i64> =
        sqlx::query_as("SELECT key_id, pending FROM key_load WHERE key_id = ANY($1)")
            .bind(&keys)
            .fetch_all(&mut *conn)
            .await
            .map_err(map_pg)?
            .into_iter()
            .collect();
    Ok(batch
        .iter()
        .map(|(task, _)| {
            if inserted.contains(&task.id.to_string()) {
                return Ok(InsertOutcome::Inserted);
            }
            match loads.get(&task.key_id.to_string()) {
                Some(&active) => u32::try_from(active)
                    .map(|active| InsertOutcome::LimitReached { active })
                    .map_err(|_| StoreError::Corrupt(format!("{active} unfinished tasks"))),
                None => Err(StoreError::Invalid(format!(
                    "refers to a missing row: key {}",
                    task.key_id
                ))),
            }
        })
        .collect())
}
