//! The records that cross the [`Store`](crate::Store) trait: plain data, no backend types.

use std::fmt;
use std::time::SystemTime;

use uuid::Uuid;

/// Unfinished tasks a key may have at once unless configured otherwise (the contract's 24).
pub const DEFAULT_MAX_ACTIVE_TASKS: u32 = 24;

/// Runs a task may start before a retryable failure or a lost worker becomes a final `Error`.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// A freshly created API key. The plaintext exists only here; the store keeps its hash.
#[derive(Clone, PartialEq, Eq)]
pub struct NewKey {
    /// Stable id of the key, used to revoke it and to attribute tasks.
    pub key_id: Uuid,
    /// Tenant the key acts for.
    pub tenant: String,
    /// The secret, `fxd_` followed by 40 base62 characters. Show it once, then forget it.
    pub key: String,
    /// Non-secret first characters of the key, for operators to tell keys apart.
    pub prefix: String,
}

impl fmt::Debug for NewKey {
    // The plaintext must not reach logs through a stray `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewKey")
            .field("key_id", &self.key_id)
            .field("tenant", &self.tenant)
            .field("key", &"<redacted>")
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// What a successful authentication tells the server about the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The key that authenticated.
    pub key_id: Uuid,
    /// Tenant the key acts for; every read and write is scoped to it.
    pub tenant: String,
    /// Unfinished tasks this key may have at once.
    pub max_active_tasks: u32,
}

/// An API key as operators see it (never the secret).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    /// Stable id of the key.
    pub key_id: Uuid,
    /// Tenant the key acts for.
    pub tenant: String,
    /// Operator's note.
    pub label: Option<String>,
    /// Non-secret first characters of the key.
    pub prefix: String,
    /// Unfinished tasks this key may have at once.
    pub max_active_tasks: u32,
    /// When the key was created.
    pub created_at: SystemTime,
    /// When the key was revoked, if it was.
    pub revoked_at: Option<SystemTime>,
}

/// A validated generation request to queue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    /// Id chosen by the server (it appears in the polling URL).
    pub id: Uuid,
    /// Tenant that owns the task.
    pub tenant: String,
    /// Key that submitted it (counts against that key's limit).
    pub key_id: Uuid,
    /// The validated request, exactly as the worker will read it back.
    pub params: serde_json::Value,
    /// Fine-tune the request names, as the caller wrote it.
    pub finetune_id: Option<String>,
    /// Where to POST the final result.
    pub webhook_url: Option<String>,
    /// Secret that signs the webhook.
    pub webhook_secret: Option<String>,
    /// What the task costs in thousandths of a credit (None: free, no price configured). Debited
    /// from the tenant's balance with the insert, when the tenant has one.
    pub cost: Option<i64>,
}

/// Result of [`Store::insert_task_if_under_limit`](crate::Store::insert_task_if_under_limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    /// The task is durably queued.
    Inserted,
    /// The key already has `active` unfinished tasks, at or above its limit; nothing was written.
    LimitReached {
        /// Unfinished tasks of the key at the time of the check.
        active: u32,
    },
    /// The tenant's balance cannot pay the task's cost; nothing was written.
    InsufficientCredits {
        /// The balance at the time of the check, in thousandths of a credit.
        balance: i64,
    },
}

/// Credits are kept in thousandths (BIGINT), so that sums of debits and refunds are exact; the
/// wire shows them as numbers of credits.
pub const MILLI_PER_CREDIT: i64 = 1000;

/// `milli` thousandths of a credit as a number of credits.
pub fn credits_from_milli(milli: i64) -> f64 {
    milli as f64 / MILLI_PER_CREDIT as f64
}

/// `credits` in thousandths, rounded to the nearest; None when it is not finite or too large.
pub fn credits_to_milli(credits: f64) -> Option<i64> {
    let milli = (credits * MILLI_PER_CREDIT as f64).round();
    // 2^53: beyond it an f64 no longer holds every whole number.
    (milli.is_finite() && milli.abs() <= 9_007_199_254_740_992.0).then_some(milli as i64)
}

/// What tasks of one endpoint cost, in thousandths of a credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    /// Charged per task.
    pub per_task: i64,
    /// Charged per megapixel of output.
    pub per_megapixel: i64,
}

impl Price {
    /// The cost of a task of `output_mp` megapixels (as the submit answer reports them, to 2
    /// decimals), in thousandths of a credit, rounded to the nearest.
    pub fn cost(&self, output_mp: f64) -> i64 {
        let hundredths = (output_mp * 100.0).round() as i64;
        let per_mp = (self.per_megapixel.saturating_mul(hundredths) + 50).div_euclid(100);
        self.per_task.saturating_add(per_mp)
    }
}

/// A task handed to a worker, leased to it until the lease runs out.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedTask {
    /// Task id.
    pub id: Uuid,
    /// Tenant that owns the task (fine-tunes are resolved as this tenant).
    pub tenant: String,
    /// Key that submitted it.
    pub key_id: Uuid,
    /// The validated request.
    pub params: serde_json::Value,
    /// Fine-tune the request names.
    pub finetune_id: Option<String>,
    /// Where to POST the final result.
    pub webhook_url: Option<String>,
    /// Secret that signs the webhook.
    pub webhook_secret: Option<String>,
    /// Runs started so far, this one included.
    pub attempts: u32,
    /// Runs allowed before the task fails for good.
    pub max_attempts: u32,
    /// When the task was submitted.
    pub created_at: SystemTime,
    /// The client asked to cancel it while an earlier run held it (that run's worker stopped
    /// before finishing it): finish it as cancelled instead of running it.
    pub cancel_requested: bool,
}

/// What [`Store::claim_next`](crate::Store::claim_next) hands out.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// Run the task.
    Run(ClaimedTask),
    /// The task's earlier runs all lost their worker (`attempts > max_attempts` now): do not run
    /// it again; finish it with [`Store::complete_error`](crate::Store::complete_error), so that
    /// the caller, who builds webhook payloads, can notify the client. The lease is held as for
    /// `Run`.
    Exhausted(ClaimedTask),
}

impl Claim {
    /// The claimed task, whichever the verdict.
    pub fn task(&self) -> &ClaimedTask {
        match self {
            Self::Run(task) | Self::Exhausted(task) => task,
        }
    }
}

/// Result of [`Store::cancel_task`](crate::Store::cancel_task).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The task was queued (no worker held it): it is `Error` now, and its webhook is in the
    /// outbox, in the same transaction.
    Cancelled,
    /// A worker runs it: it is marked, and the worker, which checks the mark between steps,
    /// stops it and finishes it `Error` (see [`Store::cancel_requested`](crate::Store::cancel_requested)).
    Requested,
    /// The task had already reached this final status; nothing changed.
    Final(TaskStatus),
    /// The tenant has no such task (unknown, expired, or another tenant's).
    NotFound,
}

/// A finished generation.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadyRecord {
    /// Blob key of the image.
    pub sample_key: String,
    /// The prompt the image was generated from (after upsampling, if any).
    pub prompt_used: String,
    /// The seed used.
    pub seed_used: u64,
    /// When generation started, seconds since the Unix epoch.
    pub start_time: f64,
    /// When generation ended, seconds since the Unix epoch.
    pub end_time: f64,
}

/// A running task's latest preview (a small JPEG in the blob store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviewRecord {
    /// Blob key of the JPEG; the same for every preview of a task (each replaces the last).
    pub key: String,
    /// Denoising steps done when it was made.
    pub step: u32,
    /// Denoising steps in all.
    pub steps: u32,
}

/// Which side moderation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModerationKind {
    /// The prompt or image prompt was refused.
    Request,
    /// The generated image was refused.
    Content,
}

/// The contract's task status, one to one with the strings `get_result` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskStatus {
    /// Queued or running.
    Pending,
    /// Finished with an image.
    Ready,
    /// Failed.
    Error,
    /// The request was refused by moderation.
    RequestModerated,
    /// The generated image was refused by moderation.
    ContentModerated,
}

impl TaskStatus {
    /// The exact wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Ready => "Ready",
            Self::Error => "Error",
            Self::RequestModerated => "Request Moderated",
            Self::ContentModerated => "Content Moderated",
        }
    }

    /// Parses the wire string (as stored).
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Ready,
            Self::Error,
            Self::RequestModerated,
            Self::ContentModerated,
        ]
        .into_iter()
        .find(|status| status.as_str() == s)
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a task stands, with exactly the data each status has.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskState {
    /// Queued (`progress` None) or running (`progress` the fraction done, from 0 to 1).
    Pending {
        /// Fraction of the work done while a worker holds the task.
        progress: Option<f64>,
        /// The latest preview of this run, once its worker stored one.
        preview: Option<PreviewRecord>,
    },
    /// Finished with an image.
    Ready(ReadyRecord),
    /// Refused by moderation.
    Moderated {
        /// Which side refused it.
        kind: ModerationKind,
        /// Reasons to show the user.
        reasons: Vec<String>,
    },
    /// Failed for good.
    Error {
        /// Why, in words the user can act on.
        details: String,
    },
}

impl TaskState {
    /// The contract status of this state.
    pub fn status(&self) -> TaskStatus {
        match self {
            Self::Pending { .. } => TaskStatus::Pending,
            Self::Ready(_) => TaskStatus::Ready,
            Self::Moderated {
                kind: ModerationKind::Request,
                ..
            } => TaskStatus::RequestModerated,
            Self::Moderated {
                kind: ModerationKind::Content,
                ..
            } => TaskStatus::ContentModerated,
            Self::Error { .. } => TaskStatus::Error,
        }
    }
}

/// A task as `get_result` reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    /// Task id.
    pub id: Uuid,
    /// Owning tenant.
    pub tenant: String,
    /// Submitting key.
    pub key_id: Uuid,
    /// The validated request.
    pub params: serde_json::Value,
    /// Fine-tune the request names.
    pub finetune_id: Option<String>,
    /// Where the final result is POSTed.
    pub webhook_url: Option<String>,
    /// Secret that signs the webhook.
    pub webhook_secret: Option<String>,
    /// Status and its data.
    pub state: TaskState,
    /// Runs started so far.
    pub attempts: u32,
    /// Runs allowed.
    pub max_attempts: u32,
    /// The last retryable failure, kept for operators after the task was re-queued.
    pub last_error: Option<String>,
    /// When the task was submitted.
    pub created_at: SystemTime,
    /// When the task reached a final status.
    pub finished_at: Option<SystemTime>,
}

/// Result of [`Store::complete_error`](crate::Store::complete_error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorOutcome {
    /// The failure was retryable and runs remain: the task is queued again (no webhook sent).
    Requeued {
        /// Runs started so far.
        attempts: u32,
    },
    /// The task is now `Error` (and its webhook, if given, is in the outbox).
    Failed,
}

/// A fine-tune (a LoRA file) a tenant owns.
#[derive(Debug, Clone, PartialEq)]
pub struct FinetuneRecord {
    /// Owning tenant.
    pub tenant: String,
    /// Name, unique within the tenant; the `finetune_id` clients send.
    pub id: String,
    /// Layout the file was published in (e.g. "diffusers", "kohya").
    pub format: String,
    /// LoRA rank.
    pub rank: u32,
    /// LoRA alpha, when the file states one.
    pub alpha: Option<f64>,
    /// Hidden size of the base model the file was made for, when it can be told.
    pub base_hidden: Option<u32>,
    /// Word that triggers the fine-tuned concept.
    pub trigger_word: Option<String>,
    /// Owner's note.
    pub comment: Option<String>,
    /// Blob key of the file.
    pub blob_key: String,
    /// File size in bytes.
    pub size_bytes: u64,
    /// Lowercase hex SHA-256 of the file.
    pub sha256: String,
    /// When it was imported (kept to the millisecond, like every stored time).
    pub created_at: SystemTime,
    /// Whether other tenants may use it as `<tenant>/<id>`.
    pub shared: bool,
}

/// A webhook to put in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct NewWebhook {
    /// Target URL.
    pub url: String,
    /// Signing secret.
    pub secret: Option<String>,
    /// Body to POST; stored serialized once, so every retry sends (and signs) the same bytes.
    pub payload: serde_json::Value,
    /// Standard Webhooks `webhook-id`, stable across retries.
    pub webhook_id: String,
}

/// A webhook delivery leased to a delivery worker.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookDelivery {
    /// Outbox row id, for [`Store::webhook_delivered`](crate::Store::webhook_delivered) and
    /// [`Store::webhook_failed`](crate::Store::webhook_failed).
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
    /// Delivery attempts started, this one included.
    pub attempts: u32,
    /// When the webhook entered the outbox (retries give up some time after it).
    pub created_at: SystemTime,
}

/// Where one webhook delivery stands.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookRecord {
    /// Outbox row id.
    pub id: Uuid,
    /// Task the webhook reports on.
    pub task_id: Uuid,
    /// Target URL.
    pub url: String,
    /// `pending` (queued or waiting for a retry), `delivered` or `failed` (given up).
    pub status: String,
    /// Attempts started.
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When a pending delivery is next due.
    pub next_attempt_at: SystemTime,
    /// When the delivery last changed (queued, attempted, settled).
    pub updated_at: SystemTime,
}

/// Where webhook deliveries stand, as [`WebhookRecord::status`] spells it.
pub const WEBHOOK_STATUSES: [&str; 3] = ["pending", "delivered", "failed"];

/// Longest tenant name accepted; tenants are ids, not prose.
const MAX_TENANT_LEN: usize = 128;

/// Tenant names are non-empty, short, printable, and free of `/`, which separates owner and name
/// in shared fine-tune ids (`<tenant>/<name>`).
pub(crate) fn check_tenant(tenant: &str) -> Result<(), crate::StoreError> {
    let ok = !tenant.is_empty()
        && tenant.len() <= MAX_TENANT_LEN
        && !tenant.contains('/')
        && !tenant.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(crate::StoreError::Invalid(format!(
            "tenant {tenant:?}: must be 1..={MAX_TENANT_LEN} printable characters without '/'"
        )))
    }
}

/// A progress is a fraction of the work, from 0 to 1.
pub(crate) fn check_progress(progress: f64) -> Result<(), crate::StoreError> {
    if (0.0..=1.0).contains(&progress) {
        Ok(())
    } else {
        Err(crate::StoreError::Invalid(format!(
            "progress {progress} is not between 0 and 1"
        )))
    }
}

/// A fine-tune needs a valid owner and a name.
pub(crate) fn check_finetune(record: &FinetuneRecord) -> Result<(), crate::StoreError> {
    check_tenant(&record.tenant)?;
    if record.id.is_empty() {
        return Err(crate::StoreError::Invalid("empty fine-tune id".into()));
    }
    Ok(())
}

/// A filter of the operators' webhook listing: one of [`WEBHOOK_STATUSES`], or none.
pub(crate) fn check_webhook_status(status: Option<&str>) -> Result<(), crate::StoreError> {
    match status.filter(|s| !WEBHOOK_STATUSES.contains(s)) {
        None => Ok(()),
        Some(status) => Err(crate::StoreError::Invalid(format!(
            "webhook status {status:?}: expected one of {}",
            WEBHOOK_STATUSES.join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_strings_are_the_contract_strings() {
        let all = [
            (TaskStatus::Pending, "Pending"),
            (TaskStatus::Ready, "Ready"),
            (TaskStatus::Error, "Error"),
            (TaskStatus::RequestModerated, "Request Moderated"),
            (TaskStatus::ContentModerated, "Content Moderated"),
        ];
        for (status, wire) in all {
            assert_eq!(status.as_str(), wire);
            assert_eq!(TaskStatus::parse(wire), Some(status));
        }
        assert_eq!(TaskStatus::parse("pending"), None);
    }

    #[test]
    fn new_key_debug_hides_the_secret() {
        let key = NewKey {
            key_id: Uuid::nil(),
            tenant: "acme".into(),
            key: "fxd_secretsecretsecret".into(),
            prefix: "fxd_secr".into(),
        };
        let shown = format!("{key:?}");
        assert!(!shown.contains("secretsecret"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn tenant_names_exclude_the_share_separator() {
        assert!(check_tenant("acme-42").is_ok());
        assert!(check_tenant("").is_err());
        assert!(check_tenant("a/b").is_err());
        assert!(check_tenant("a\nb").is_err());
        assert!(check_tenant(&"x".repeat(129)).is_err());
    }
}
