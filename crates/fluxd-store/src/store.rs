//! The [`Store`] trait: everything durable the service does, independent of the database.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use uuid::Uuid;

use crate::{
    CancelOutcome, Claim, ErrorOutcome, FinetuneRecord, InsertOutcome, KeyInfo, KeyRecord,
    ModerationKind, NewKey, NewTask, NewWebhook, PreviewRecord, Price, ReadyRecord, SharedSecret,
    StoreError, TaskRecord, Wakeups, WebhookDelivery, WebhookRecord,
};

/// Shorthand for the store's results.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The durable state of fluxd.
///
/// Every method that writes has committed when it returns `Ok`. Worker methods take the
/// `worker_id` that claimed the task and fail with [`StoreError::LeaseLost`] once the task is no
/// longer leased to that worker (lease ran out, claimed again, finished), so a slow worker can never
/// overwrite the result of the one that took over. Reads are scoped by tenant: another tenant's
/// task or fine-tune reads as absent. Times are stored to the millisecond.
#[async_trait]
pub trait Store: Send + Sync {
    // --- keys -------------------------------------------------------------------------------

    /// Creates a key for `tenant` (creating the tenant on first use) and returns the plaintext,
    /// which is not stored and cannot be recovered. The key may have
    /// [`DEFAULT_MAX_ACTIVE_TASKS`](crate::DEFAULT_MAX_ACTIVE_TASKS) unfinished tasks.
    async fn create_key(&self, tenant: &str, label: Option<&str>) -> Result<NewKey>;

    /// The key's tenant and limits, or None for an unknown, malformed or revoked key. One indexed
    /// lookup by the key's prefix, then a constant-time comparison of hashes.
    async fn authenticate(&self, key: &str) -> Result<Option<KeyInfo>>;

    /// Revokes a key; true if it existed and was not yet revoked.
    async fn revoke_key(&self, key_id: Uuid) -> Result<bool>;

    /// Sets how many unfinished tasks the key may have; true if the key exists.
    async fn set_max_active_tasks(&self, key_id: Uuid, max_active_tasks: u32) -> Result<bool>;

    /// The tenant's keys, revoked ones included, oldest first.
    async fn list_keys(&self, tenant: &str) -> Result<Vec<KeyRecord>>;

    // --- the task queue -----------------------------------------------------------------------

    /// Queues a task. Committed (fsynced) when it returns; a duplicate id is a
    /// [`StoreError::Conflict`]. Its cost is debited as by
    /// [`insert_task_if_under_limit`](Store::insert_task_if_under_limit); one the balance cannot
    /// pay is [`StoreError::Invalid`].
    async fn insert_task(&self, task: NewTask) -> Result<()>;

    /// Queues a task unless its key already has `limit` or more unfinished tasks, or its tenant
    /// has a balance that cannot pay its `cost`. The checks, the insert and the debit are one
    /// atomic step: concurrent submits cannot together pass the limit or overdraw the balance.
    /// The debit is refunded in the same transaction as the task's final status when that is
    /// `Error`, `Request Moderated` or `Content Moderated`.
    async fn insert_task_if_under_limit(&self, task: NewTask, limit: u32) -> Result<InsertOutcome>;

    /// Unfinished (`Pending`, queued or running) tasks of a key.
    async fn count_unfinished(&self, key_id: Uuid) -> Result<u32>;

    /// Leases the oldest runnable task to `worker_id` for `lease`: a queued task, or a running one
    /// whose lease ran out (its worker died). Each claim counts one attempt and sets progress to
    /// 0. Atomic: concurrent workers never get the same task.
    async fn claim_next(&self, worker_id: &str, lease: Duration) -> Result<Option<Claim>>;

    /// Extends the lease to `lease` from now; [`StoreError::LeaseLost`] if it already ran out.
    async fn heartbeat(&self, task_id: Uuid, worker_id: &str, lease: Duration) -> Result<()>;

    /// Hands a claimed, unfinished task back to the queue at once (a worker shutting down): no
    /// lease to wait out, and the interrupted run does not count against the task's attempts.
    /// [`StoreError::LeaseLost`] if the worker no longer holds it.
    async fn release_task(&self, task_id: Uuid, worker_id: &str) -> Result<()>;

    /// Records the fraction of the work done, from 0 to 1.
    async fn set_progress(&self, task_id: Uuid, worker_id: &str, progress: f64) -> Result<()>;

    /// Records the task's latest preview (its blob already stored under `preview.key`), shown
    /// by `get_result` while the task runs. A new claim hides the previous run's preview.
    async fn set_preview(
        &self,
        task_id: Uuid,
        worker_id: &str,
        preview: PreviewRecord,
    ) -> Result<()>;

    /// Finishes the task as `Ready` and, in the same transaction, queues its webhook.
    async fn complete_ready(
        &self,
        task_id: Uuid,
        worker_id: &str,
        ready: ReadyRecord,
        webhook: Option<NewWebhook>,
    ) -> Result<()>;

    /// Finishes the task as `Request Moderated` or `Content Moderated` and, in the same
    /// transaction, queues its webhook.
    async fn complete_moderated(
        &self,
        task_id: Uuid,
        worker_id: &str,
        kind: ModerationKind,
        reasons: Vec<String>,
        webhook: Option<NewWebhook>,
    ) -> Result<()>;

    /// Records a failure. A retryable one re-queues the task while runs remain (the webhook is
    /// not sent: the task is not final); otherwise the task becomes `Error` with `details` and the
    /// webhook is queued in the same transaction.
    async fn complete_error(
        &self,
        task_id: Uuid,
        worker_id: &str,
        details: String,
        retryable: bool,
        webhook: Option<NewWebhook>,
    ) -> Result<ErrorOutcome>;

    /// Cancels the tenant's task. A queued task (no worker holds its lease) becomes `Error` with
    /// `details` at once, with `webhook` queued in the same transaction; a running one is marked
    /// for its worker, which finishes it the same way ([`CancelOutcome::Requested`]). Marking
    /// again is harmless. A final task, or none of the tenant's, changes nothing.
    async fn cancel_task(
        &self,
        tenant: &str,
        id: Uuid,
        details: String,
        webhook: Option<NewWebhook>,
    ) -> Result<CancelOutcome>;

    /// Whether the client asked to cancel the task `worker_id` runs (workers ask between
    /// steps); [`StoreError::LeaseLost`] if the worker no longer holds it.
    async fn cancel_requested(&self, task_id: Uuid, worker_id: &str) -> Result<bool>;

    /// The tenant's task, or None if it does not exist, expired, or belongs to another tenant.
    async fn get_task(&self, tenant: &str, id: Uuid) -> Result<Option<TaskRecord>>;

    /// Deletes tasks that finished before `finished_before`, and outbox rows that were settled
    /// (delivered or given up) before it. Returns the blob keys of the deleted tasks' images and
    /// previews, for the caller to delete from the blob store.
    async fn expire_finished(&self, finished_before: SystemTime) -> Result<Vec<String>>;

    // --- credits -------------------------------------------------------------------------------

    /// The tenant's balance in thousandths of a credit, or None when it has none (unlimited).
    async fn credits(&self, tenant: &str) -> Result<Option<i64>>;

    /// Sets the tenant's balance (creating the tenant on first use); None makes it unlimited.
    /// A negative balance is [`StoreError::Invalid`].
    async fn set_credits(&self, tenant: &str, balance: Option<i64>) -> Result<()>;

    /// Adds `delta` (which may be negative) to the tenant's balance, from 0 when it has none,
    /// and returns the new balance; one that would fall below 0 is [`StoreError::Invalid`] and
    /// changes nothing. Atomic against concurrent debits.
    async fn add_credits(&self, tenant: &str, delta: i64) -> Result<i64>;

    /// Every tenant with a balance, and the balance, by tenant.
    async fn list_credits(&self) -> Result<Vec<(String, i64)>>;

    /// Sets what tasks of `endpoint` cost; None makes them free.
    async fn set_price(&self, endpoint: &str, price: Option<Price>) -> Result<()>;

    /// Every endpoint's price, by endpoint (endpoints not listed are free).
    async fn prices(&self) -> Result<Vec<(String, Price)>>;

    // --- fine-tunes ---------------------------------------------------------------------------

    /// Records a fine-tune (creating the tenant on first use); a taken name is a
    /// [`StoreError::Conflict`].
    async fn insert_finetune(&self, record: FinetuneRecord) -> Result<()>;

    /// Names of the tenant's fine-tunes, oldest first.
    async fn list_finetunes(&self, tenant: &str) -> Result<Vec<String>>;

    /// Resolves `finetune_id` as `requester` would: its own fine-tune of that name, else
    /// `<owner>/<name>` when the owner shared it.
    async fn get_finetune(
        &self,
        requester: &str,
        finetune_id: &str,
    ) -> Result<Option<FinetuneRecord>>;

    /// Deletes the tenant's own fine-tune and returns what was deleted (its blob is the caller's
    /// to delete), or None if there was none.
    async fn delete_finetune(&self, tenant: &str, id: &str) -> Result<Option<FinetuneRecord>>;

    // --- webhook outbox -------------------------------------------------------------------------

    /// Queues a webhook on its own (task completions take theirs in the same transaction).
    async fn enqueue_webhook(&self, task_id: Uuid, webhook: NewWebhook) -> Result<Uuid>;

    /// Leases up to `limit` due deliveries (oldest due first) to `worker_id` for `lease`; each
    /// claim counts one attempt. Deliveries whose lease ran out are due again.
    async fn claim_due_webhooks(
        &self,
        worker_id: &str,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<WebhookDelivery>>;

    /// Marks a delivery done.
    async fn webhook_delivered(&self, id: Uuid) -> Result<()>;

    /// Records a failed attempt: due again at `next_attempt_at`, or given up for good with None.
    async fn webhook_failed(
        &self,
        id: Uuid,
        error: &str,
        next_attempt_at: Option<SystemTime>,
    ) -> Result<()>;

    /// The outbox rows of a task (operators' view of its webhook deliveries), oldest first.
    async fn webhook_deliveries(&self, task_id: Uuid) -> Result<Vec<WebhookRecord>>;

    /// Deliveries of all tasks in `status` (one of [`WEBHOOK_STATUSES`](crate::WEBHOOK_STATUSES);
    /// every status when `None`), most recently changed first, at most `limit`: for operators.
    async fn list_webhooks(&self, status: Option<&str>, limit: u32) -> Result<Vec<WebhookRecord>>;

    /// Makes given-up (`failed`) deliveries due now, for one more attempt each: the one with
    /// `id`, or all of them when `None`. Their retry window has ended, so an attempt that fails
    /// records them `failed` again with its error. Returns how many were queued.
    async fn retry_failed_webhooks(&self, id: Option<Uuid>) -> Result<u64>;

    // --- shared secrets and wake-ups -----------------------------------------------------------

    /// The secret known by `name` ([`SHARED_SECRET_LEN`](crate::SHARED_SECRET_LEN) random bytes),
    /// the same for every process using this database: the first call creates it, later calls
    /// read it. Creation is atomic: concurrent first calls from several processes all get the
    /// one secret that was stored.
    async fn shared_secret(&self, name: &str) -> Result<SharedSecret>;

    /// Wake-ups for work that other processes queue on this database (see [`Wakeups`]), where
    /// the backend can tell; None (the default) when it cannot, and waiters just poll. The
    /// stream ends when the store is closed.
    fn subscribe(&self) -> Option<Wakeups> {
        None
    }

    // --- lifecycle ------------------------------------------------------------------------------

    /// Group-commit counters, for metrics, where the backend commits in groups.
    fn writer_stats(&self) -> Option<crate::WriterStats> {
        None
    }

    /// Finishes writes already submitted, then refuses new ones with [`StoreError::Closed`].
    async fn close(&self);
}
