//! The rows a copy moves, one typed struct per table, holding every column as stored: JSON and
//! secrets as their exact text, times as the millisecond they were stored at.

use std::time::SystemTime;

use uuid::Uuid;

use crate::sql::rows::{self, ReadRow};
use crate::{FinetuneRecord, StoreError, TaskStatus};

/// The tables a copy moves, in the order it moves them: each only refers to kinds before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordKind {
    /// `tenants`.
    Tenant,
    /// `api_keys`.
    Key,
    /// `finetunes`.
    Finetune,
    /// `tasks`.
    Task,
    /// `webhooks` (the outbox).
    Webhook,
    /// `shared_secrets`.
    Secret,
    /// `credit_balances`. After tasks: copying a task never debits again, as its balance is
    /// not in the target yet when the task's insert runs the debit trigger.
    Balance,
    /// `prices`.
    Price,
}

impl RecordKind {
    /// Every kind, in copy order.
    pub const ALL: [RecordKind; 8] = [
        Self::Tenant,
        Self::Key,
        Self::Finetune,
        Self::Task,
        Self::Webhook,
        Self::Secret,
        Self::Balance,
        Self::Price,
    ];

    /// What a person calls records of this kind, plural.
    pub fn label(self) -> &'static str {
        match self {
            Self::Tenant => "tenants",
            Self::Key => "API keys",
            Self::Finetune => "fine-tunes",
            Self::Task => "tasks",
            Self::Webhook => "webhook deliveries",
            Self::Secret => "shared secrets",
            Self::Balance => "credit balances",
            Self::Price => "prices",
        }
    }
}

/// A row of `tenants`.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantRow {
    /// The tenant's name.
    pub id: String,
    /// When its first key or fine-tune made it.
    pub created_at: SystemTime,
}

/// A row of `api_keys`: the key's hash, never the key.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRow {
    /// Key id.
    pub id: Uuid,
    /// Tenant the key acts for.
    pub tenant: String,
    /// Operator's note.
    pub label: Option<String>,
    /// Non-secret first characters.
    pub prefix: String,
    /// Lowercase hex SHA-256 of the key.
    pub key_hash: String,
    /// Unfinished tasks the key may have.
    pub max_active_tasks: u32,
    /// When it was created.
    pub created_at: SystemTime,
    /// When it was revoked.
    pub revoked_at: Option<SystemTime>,
}

/// A row of `tasks`, in any status: a running task keeps its worker and lease, a finished one
/// its result.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRow {
    /// Task id.
    pub id: Uuid,
    /// Owning tenant.
    pub tenant: String,
    /// Submitting key.
    pub key_id: Uuid,
    /// The validated request, as the exact JSON text stored.
    pub params: String,
    /// Fine-tune the request names.
    pub finetune_id: Option<String>,
    /// Where the final result is POSTed.
    pub webhook_url: Option<String>,
    /// Secret that signs the webhook.
    pub webhook_secret: Option<String>,
    /// Status.
    pub status: TaskStatus,
    /// Worker holding a running task.
    pub worker_id: Option<String>,
    /// When a running task's lease runs out.
    pub lease_until: Option<SystemTime>,
    /// Runs started.
    pub attempts: u32,
    /// Runs allowed.
    pub max_attempts: u32,
    /// Fraction done of a running task.
    pub progress: Option<f64>,
    /// The last retryable failure.
    pub last_error: Option<String>,
    /// Error message, or the moderation reasons as JSON text.
    pub details: Option<String>,
    /// Blob key of the image.
    pub sample_key: Option<String>,
    /// Prompt the image was made from.
    pub prompt_used: Option<String>,
    /// Seed of the image.
    pub seed_used: Option<u64>,
    /// When the run that finished started (Unix seconds).
    pub start_time: Option<f64>,
    /// When it ended (Unix seconds).
    pub end_time: Option<f64>,
    /// Submitted at.
    pub created_at: SystemTime,
    /// Last changed at.
    pub updated_at: SystemTime,
    /// Finished at.
    pub finished_at: Option<SystemTime>,
    /// The client asked to cancel it while it ran.
    pub cancel_requested: bool,
    /// What its submit debited, in thousandths of a credit.
    pub charged: Option<i64>,
    /// Blob key of its latest preview.
    pub preview_key: Option<String>,
    /// The step its preview shows (this run's).
    pub preview_step: Option<u32>,
    /// Steps in all, of its preview's run.
    pub preview_steps: Option<u32>,
}

/// A row of the webhook outbox, in any status.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookRow {
    /// Outbox row id.
    pub id: Uuid,
    /// Task the webhook reports on.
    pub task_id: Uuid,
    /// Standard Webhooks `webhook-id`.
    pub webhook_id: String,
    /// Target URL.
    pub url: String,
    /// Signing secret.
    pub secret: Option<String>,
    /// The exact body bytes to send and sign.
    pub payload: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    /// Attempts started.
    pub attempts: u32,
    /// When a pending delivery is next due.
    pub next_attempt_at: SystemTime,
    /// Sender holding it.
    pub worker_id: Option<String>,
    /// When the sender's lease runs out.
    pub lease_until: Option<SystemTime>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it entered the outbox.
    pub created_at: SystemTime,
    /// When it last changed.
    pub updated_at: SystemTime,
}

/// A row of `shared_secrets`.
#[derive(Clone, PartialEq)]
pub struct SecretRow {
    /// The secret's name (`url-signing`).
    pub name: String,
    /// Lowercase hex of its bytes.
    pub value: String,
    /// When it was made.
    pub created_at: SystemTime,
}

impl std::fmt::Debug for SecretRow {
    // The secret must not reach logs through a stray `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretRow")
            .field("name", &self.name)
            .field("value", &"<redacted>")
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// A row of `credit_balances`.
#[derive(Debug, Clone, PartialEq)]
pub struct BalanceRow {
    /// The tenant.
    pub tenant: String,
    /// Its balance, in thousandths of a credit.
    pub balance: i64,
    /// When it last changed.
    pub updated_at: SystemTime,
}

/// A row of `prices`.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceRow {
    /// The endpoint.
    pub endpoint: String,
    /// Its price.
    pub price: crate::Price,
    /// When it last changed.
    pub updated_at: SystemTime,
}

/// One row of any table a copy moves.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A tenant.
    Tenant(TenantRow),
    /// An API key.
    Key(KeyRow),
    /// A fine-tune.
    Finetune(FinetuneRecord),
    /// A task.
    Task(TaskRow),
    /// A webhook delivery.
    Webhook(WebhookRow),
    /// A shared secret.
    Secret(SecretRow),
    /// A tenant's credit balance.
    Balance(BalanceRow),
    /// An endpoint's price.
    Price(PriceRow),
}

impl Record {
    /// Its kind.
    pub fn kind(&self) -> RecordKind {
        match self {
            Self::Tenant(_) => RecordKind::Tenant,
            Self::Key(_) => RecordKind::Key,
            Self::Finetune(_) => RecordKind::Finetune,
            Self::Task(_) => RecordKind::Task,
            Self::Webhook(_) => RecordKind::Webhook,
            Self::Secret(_) => RecordKind::Secret,
            Self::Balance(_) => RecordKind::Balance,
            Self::Price(_) => RecordKind::Price,
        }
    }

    /// The blob the record names (a task's image, a fine-tune's file), with the SHA-256 the
    /// record states for it, if any.
    pub fn blob(&self) -> Option<(&str, Option<&str>)> {
        match self {
            Self::Task(task) => task.sample_key.as_deref().map(|key| (key, None)),
            Self::Finetune(finetune) => Some((&finetune.blob_key, Some(&finetune.sha256))),
            _ => None,
        }
    }

    /// The row of kind `kind` in `row` (selected with [`super::sql::columns`]).
    pub(crate) fn read(kind: RecordKind, row: &impl ReadRow) -> Result<Self, StoreError> {
        Ok(match kind {
            RecordKind::Tenant => Self::Tenant(TenantRow {
                id: row.text("id")?,
                created_at: rows::time(row, "created_at")?,
            }),
            RecordKind::Key => Self::Key(KeyRow {
                id: rows::uuid(row, "id")?,
                tenant: row.text("tenant")?,
                label: row.opt_text("label")?,
                prefix: row.text("prefix")?,
                key_hash: row.text("key_hash")?,
                max_active_tasks: rows::count(row, "max_active_tasks")?,
                created_at: rows::time(row, "created_at")?,
                revoked_at: rows::opt_time(row, "revoked_at")?,
            }),
            RecordKind::Finetune => Self::Finetune(crate::sql::records::finetune(row)?),
            RecordKind::Task => {
                let id = rows::uuid(row, "id")?;
                let status = row.text("status")?;
                Self::Task(TaskRow {
                    id,
                    tenant: row.text("tenant")?,
                    key_id: rows::uuid(row, "key_id")?,
                    params: row.text("params")?,
                    finetune_id: row.opt_text("finetune_id")?,
                    webhook_url: row.opt_text("webhook_url")?,
                    webhook_secret: row.opt_text("webhook_secret")?,
                    status: TaskStatus::parse(&status).ok_or_else(|| {
                        StoreError::Corrupt(format!("task {id}: status {status:?}"))
                    })?,
                    worker_id: row.opt_text("worker_id")?,
                    lease_until: rows::opt_time(row, "lease_until")?,
                    attempts: rows::count(row, "attempts")?,
                    max_attempts: rows::count(row, "max_attempts")?,
                    progress: row.opt_float("progress")?,
                    last_error: row.opt_text("last_error")?,
                    details: row.opt_text("details")?,
                    sample_key: row.opt_text("sample_key")?,
                    prompt_used: row.opt_text("prompt_used")?,
                    seed_used: row.opt_int("seed_used")?.map(rows::seed_from_sql),
                    start_time: row.opt_float("start_time")?,
                    end_time: row.opt_float("end_time")?,
                    created_at: rows::time(row, "created_at")?,
                    updated_at: rows::time(row, "updated_at")?,
                    finished_at: rows::opt_time(row, "finished_at")?,
                    cancel_requested: row.boolean("cancel_requested")?,
                    charged: row.opt_int("charged")?,
                    preview_key: row.opt_text("preview_key")?,
                    preview_step: rows::opt_count(row, "preview_step")?,
                    preview_steps: rows::opt_count(row, "preview_steps")?,
                })
            }
            RecordKind::Webhook => Self::Webhook(WebhookRow {
                id: rows::uuid(row, "id")?,
                task_id: rows::uuid(row, "task_id")?,
                webhook_id: row.text("webhook_id")?,
                url: row.text("url")?,
                secret: row.opt_text("secret")?,
                payload: row.text("payload")?,
                status: row.text("status")?,
                attempts: rows::count(row, "attempts")?,
                next_attempt_at: rows::time(row, "next_attempt_at")?,
                worker_id: row.opt_text("worker_id")?,
                lease_until: rows::opt_time(row, "lease_until")?,
                last_error: row.opt_text("last_error")?,
                created_at: rows::time(row, "created_at")?,
                updated_at: rows::time(row, "updated_at")?,
            }),
            RecordKind::Secret => Self::Secret(SecretRow {
                name: row.text("name")?,
                value: row.text("value")?,
                created_at: rows::time(row, "created_at")?,
            }),
            RecordKind::Balance => Self::Balance(BalanceRow {
                tenant: row.text("tenant")?,
                balance: row.int("balance")?,
                updated_at: rows::time(row, "updated_at")?,
            }),
            RecordKind::Price => Self::Price(PriceRow {
                price: crate::sql::credits::price(row)?.1,
                endpoint: row.text("endpoint")?,
                updated_at: rows::time(row, "updated_at")?,
            }),
        })
    }

    /// Where the next page of its kind starts: the record's key, as the page query's
    /// parameters (`$1`, and `$2` for fine-tunes' two-column key).
    pub(crate) fn cursor(&self) -> (String, String) {
        match self {
            Self::Tenant(t) => (t.id.clone(), String::new()),
            Self::Key(k) => (k.id.to_string(), String::new()),
            Self::Finetune(f) => (f.tenant.clone(), f.id.clone()),
            Self::Task(t) => (t.id.to_string(), String::new()),
            Self::Webhook(w) => (w.id.to_string(), String::new()),
            Self::Secret(s) => (s.name.clone(), String::new()),
            Self::Balance(b) => (b.tenant.clone(), String::new()),
            Self::Price(p) => (p.endpoint.clone(), String::new()),
        }
    }
}
