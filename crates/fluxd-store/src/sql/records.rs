//! The trait's records built from rows, checking that each status has the columns it needs, and
//! the column lists the backends' statements select for them.

use crate::apikey;
use crate::sql::rows::{self, ReadRow};
use crate::{
    Claim, ClaimedTask, FinetuneRecord, KeyInfo, KeyRecord, ModerationKind, PreviewRecord,
    ReadyRecord, StoreError, TaskRecord, TaskState, TaskStatus, WebhookDelivery, WebhookRecord,
};

/// The columns [`claim`] reads (a claim's `RETURNING` list), as a literal for `concat!`.
macro_rules! claim_columns {
    () => {
        "id, tenant, key_id, params, finetune_id, webhook_url, webhook_secret, attempts, \
         max_attempts, created_at, cancel_requested"
    };
}

/// The columns [`finetune`] reads, as a literal for `concat!`.
macro_rules! finetune_columns {
    () => {
        "tenant, id, format, rank, alpha, base_hidden, trigger_word, comment, blob_key, \
         size_bytes, sha256, created_at, shared"
    };
}

/// The columns [`webhook_delivery`] reads, plus `next_attempt_at` to order them by.
macro_rules! delivery_columns {
    () => {
        "id, task_id, webhook_id, url, secret, payload, attempts, created_at, next_attempt_at"
    };
}

/// The columns [`webhook_record`] reads.
macro_rules! webhook_record_columns {
    () => {
        "id, task_id, url, status, attempts, last_error, next_attempt_at, updated_at"
    };
}

/// The columns [`key_record`] reads.
macro_rules! key_columns {
    () => {
        "id, tenant, label, prefix, max_active_tasks, created_at, revoked_at"
    };
}

pub(crate) use {
    claim_columns, delivery_columns, finetune_columns, key_columns, webhook_record_columns,
};

/// A task as `get_result` reads it (from `SELECT *`).
pub(crate) fn task(row: &impl ReadRow) -> Result<TaskRecord, StoreError> {
    let id = rows::uuid(row, "id")?;
    let status_text = row.text("status")?;
    let status = TaskStatus::parse(&status_text)
        .ok_or_else(|| StoreError::Corrupt(format!("task {id}: status {status_text:?}")))?;
    let missing =
        |column: &str| StoreError::Corrupt(format!("task {id}: {status} without {column}"));
    let details = row.opt_text("details")?;
    let reasons = |details: Option<String>| -> Result<Vec<String>, StoreError> {
        let text = details.ok_or_else(|| missing("details"))?;
        serde_json::from_str(&text)
            .map_err(|err| StoreError::Corrupt(format!("task {id}: moderation reasons: {err}")))
    };
    let state = match status {
        TaskStatus::Pending => TaskState::Pending {
            progress: row.opt_float("progress")?,
            preview: preview(row)?,
        },
        TaskStatus::Ready => TaskState::Ready(ReadyRecord {
            sample_key: row
                .opt_text("sample_key")?
                .ok_or_else(|| missing("sample_key"))?,
            prompt_used: row
                .opt_text("prompt_used")?
                .ok_or_else(|| missing("prompt_used"))?,
            seed_used: rows::seed_from_sql(
                row.opt_int("seed_used")?
                    .ok_or_else(|| missing("seed_used"))?,
            ),
            start_time: row
                .opt_float("start_time")?
                .ok_or_else(|| missing("start_time"))?,
            end_time: row
                .opt_float("end_time")?
                .ok_or_else(|| missing("end_time"))?,
        }),
        TaskStatus::RequestModerated => TaskState::Moderated {
            kind: ModerationKind::Request,
            reasons: reasons(details)?,
        },
        TaskStatus::ContentModerated => TaskState::Moderated {
            kind: ModerationKind::Content,
            reasons: reasons(details)?,
        },
        TaskStatus::Error => TaskState::Error {
            details: details.ok_or_else(|| missing("details"))?,
        },
    };
    Ok(TaskRecord {
        id,
        tenant: row.text("tenant")?,
        key_id: rows::uuid(row, "key_id")?,
        params: rows::json(row, "params")?,
        finetune_id: row.opt_text("finetune_id")?,
        webhook_url: row.opt_text("webhook_url")?,
        webhook_secret: row.opt_text("webhook_secret")?,
        state,
        attempts: rows::count(row, "attempts")?,
        max_attempts: rows::count(row, "max_attempts")?,
        last_error: row.opt_text("last_error")?,
        created_at: rows::time(row, "created_at")?,
        finished_at: rows::opt_time(row, "finished_at")?,
    })
}

/// A task's preview, when its worker stored one this run (a claim clears the step).
fn preview(row: &impl ReadRow) -> Result<Option<PreviewRecord>, StoreError> {
    let key = row.opt_text("preview_key")?;
    let step = rows::opt_count(row, "preview_step")?;
    let steps = rows::opt_count(row, "preview_steps")?;
    Ok(match (key, step, steps) {
        (Some(key), Some(step), Some(steps)) => Some(PreviewRecord { key, step, steps }),
        _ => None,
    })
}

/// A claimed task ([`claim_columns`]) with its verdict: runs past `max_attempts` mean every
/// earlier run lost its worker, and the task must not run again.
pub(crate) fn claim(row: &impl ReadRow) -> Result<Claim, StoreError> {
    let task = ClaimedTask {
        id: rows::uuid(row, "id")?,
        tenant: row.text("tenant")?,
        key_id: rows::uuid(row, "key_id")?,
        params: rows::json(row, "params")?,
        finetune_id: row.opt_text("finetune_id")?,
        webhook_url: row.opt_text("webhook_url")?,
        webhook_secret: row.opt_text("webhook_secret")?,
        attempts: rows::count(row, "attempts")?,
        max_attempts: rows::count(row, "max_attempts")?,
        created_at: rows::time(row, "created_at")?,
        cancel_requested: row.boolean("cancel_requested")?,
    };
    Ok(if task.attempts > task.max_attempts {
        tracing::warn!(task_id = %task.id, attempts = task.attempts, "task lost its worker too often");
        Claim::Exhausted(task)
    } else {
        Claim::Run(task)
    })
}

/// A fine-tune ([`finetune_columns`]).
pub(crate) fn finetune(row: &impl ReadRow) -> Result<FinetuneRecord, StoreError> {
    let size = row.int("size_bytes")?;
    Ok(FinetuneRecord {
        tenant: row.text("tenant")?,
        id: row.text("id")?,
        format: row.text("format")?,
        rank: rows::count(row, "rank")?,
        alpha: row.opt_float("alpha")?,
        base_hidden: rows::opt_count(row, "base_hidden")?,
        trigger_word: row.opt_text("trigger_word")?,
        comment: row.opt_text("comment")?,
        blob_key: row.text("blob_key")?,
        size_bytes: u64::try_from(size)
            .map_err(|_| StoreError::Corrupt(format!("fine-tune size {size}")))?,
        sha256: row.text("sha256")?,
        created_at: rows::time(row, "created_at")?,
        shared: row.boolean("shared")?,
    })
}

/// Leased deliveries ([`delivery_columns`]), longest-waiting first: `RETURNING` has no defined
/// order.
pub(crate) fn webhook_deliveries<R: ReadRow>(
    claimed: &[R],
) -> Result<Vec<WebhookDelivery>, StoreError> {
    let mut due = claimed
        .iter()
        .map(|row| {
            let delivery = WebhookDelivery {
                id: rows::uuid(row, "id")?,
                task_id: rows::uuid(row, "task_id")?,
                webhook_id: row.text("webhook_id")?,
                url: row.text("url")?,
                secret: row.opt_text("secret")?,
                payload: row.text("payload")?,
                attempts: rows::count(row, "attempts")?,
                created_at: rows::time(row, "created_at")?,
            };
            Ok((row.int("next_attempt_at")?, delivery))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    due.sort_by_key(|(next, delivery)| (*next, delivery.created_at));
    Ok(due.into_iter().map(|(_, delivery)| delivery).collect())
}

/// Where a delivery stands ([`webhook_record_columns`]).
pub(crate) fn webhook_record(row: &impl ReadRow) -> Result<WebhookRecord, StoreError> {
    Ok(WebhookRecord {
        id: rows::uuid(row, "id")?,
        task_id: rows::uuid(row, "task_id")?,
        url: row.text("url")?,
        status: row.text("status")?,
        attempts: rows::count(row, "attempts")?,
        last_error: row.opt_text("last_error")?,
        next_attempt_at: rows::time(row, "next_attempt_at")?,
        updated_at: rows::time(row, "updated_at")?,
    })
}

/// An API key as operators see it ([`key_columns`]).
pub(crate) fn key_record(row: &impl ReadRow) -> Result<KeyRecord, StoreError> {
    Ok(KeyRecord {
        key_id: rows::uuid(row, "id")?,
        tenant: row.text("tenant")?,
        label: row.opt_text("label")?,
        prefix: row.text("prefix")?,
        max_active_tasks: rows::count(row, "max_active_tasks")?,
        created_at: rows::time(row, "created_at")?,
        revoked_at: rows::opt_time(row, "revoked_at")?,
    })
}

/// The key among `candidates` (unrevoked keys sharing the presented key's prefix, with `id`,
/// `tenant`, `key_hash`, `max_active_tasks`) whose hash matches the presented key's, compared
/// in constant time.
pub(crate) fn matching_key(
    candidates: &[impl ReadRow],
    key: &str,
) -> Result<Option<KeyInfo>, StoreError> {
    let presented = apikey::hash(key);
    for row in candidates {
        if apikey::hashes_match(&presented, &row.text("key_hash")?) {
            return Ok(Some(KeyInfo {
                key_id: rows::uuid(row, "id")?,
                tenant: row.text("tenant")?,
                max_active_tasks: rows::count(row, "max_active_tasks")?,
            }));
        }
    }
    Ok(None)
}
