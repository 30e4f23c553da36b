//! [`Store`] for [`PostgresStore`]: each call on a pooled connection, within the call time limit
//! ([`Db`](crate::postgres::db::Db)); writes that make work for
//! other processes ask for a wake-up once they committed. Task methods open debug-level spans
//! carrying `task_id`, so store failures show under their task.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use uuid::Uuid;

use crate::postgres::{
    cancel, credits, finetunes, keys, tasks, webhooks, PostgresStore, MAINTENANCE_TIMEOUT,
};
use crate::secret;
use crate::store::Result;
use crate::types::{check_finetune, check_progress, check_tenant};
use crate::{
    apikey, CancelOutcome, Claim, ErrorOutcome, FinetuneRecord, InsertOutcome, KeyInfo, KeyRecord,
    ModerationKind, NewKey, NewTask, NewWebhook, PreviewRecord, Price, ReadyRecord, SharedSecret,
    Store, TaskRecord, Wakeups, WebhookDelivery, WebhookRecord,
};

/// The limit of a submit that has none: more than any key can reach.
const NO_LIMIT: i64 = i64::MAX;

impl PostgresStore {
    /// Asks for a webhook wake-up after a completion that queued one.
    fn completed<T>(&self, done: &Result<T>, webhook: bool) {
        if webhook && done.is_ok() {
            self.wake.webhook_due();
        }
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn create_key(&self, tenant: &str, label: Option<&str>) -> Result<NewKey> {
        check_tenant(tenant)?;
        let material = apikey::generate()?;
        self.db
            .call(async |c| keys::create(c, tenant, label, material).await)
            .await
    }

    async fn authenticate(&self, key: &str) -> Result<Option<KeyInfo>> {
        self.db
            .call(async |c| keys::authenticate(c, key).await)
            .await
    }

    async fn revoke_key(&self, key_id: Uuid) -> Result<bool> {
        self.db.call(async |c| keys::revoke(c, key_id).await).await
    }

    async fn set_max_active_tasks(&self, key_id: Uuid, max_active_tasks: u32) -> Result<bool> {
        self.db
            .call(async |c| keys::set_max_active_tasks(c, key_id, max_active_tasks).await)
            .await
    }

    async fn list_keys(&self, tenant: &str) -> Result<Vec<KeyRecord>> {
        self.db.call(async |c| keys::list(c, tenant).await).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(task_id = %task.id))]
    async fn insert_task(&self, task: NewTask) -> Result<()> {
        match self
            .db
            .call(async |c| tasks::insert(c, &task, NO_LIMIT, self.max_attempts).await)
            .await?
        {
            InsertOutcome::Inserted => {
                self.wake.task_queued();
                Ok(())
            }
            // Only a key past i64::MAX tasks could get here.
            InsertOutcome::LimitReached { active } => Err(crate::StoreError::Corrupt(format!(
                "key {} refused a task with {active} unfinished",
                task.key_id
            ))),
            InsertOutcome::InsufficientCredits { .. } => Err(crate::StoreError::Invalid(format!(
                "task {}: the tenant's credits cannot pay it",
                task.id
            ))),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(task_id = %task.id))]
    async fn insert_task_if_under_limit(&self, task: NewTask, limit: u32) -> Result<InsertOutcome> {
        let outcome = self.submitter.submit(task, i64::from(limit)).await?;
        if outcome == InsertOutcome::Inserted {
            self.wake.task_queued();
        }
        Ok(outcome)
    }

    async fn count_unfinished(&self, key_id: Uuid) -> Result<u32> {
        self.db
            .call(async |c| tasks::count_unfinished(c, key_id).await)
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(worker_id))]
    async fn claim_next(&self, worker_id: &str, lease: Duration) -> Result<Option<Claim>> {
        self.db
            .call(async |c| tasks::claim_next(c, worker_id, lease).await)
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(%task_id, worker_id))]
    async fn heartbeat(&self, task_id: Uuid, worker_id: &str, lease: Duration) -> Result<()> {
        self.db
            .call(async |c| tasks::heartbeat(c, task_id, worker_id, lease).await)
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(%task_id, worker_id))]
    async fn release_task(&self, task_id: Uuid, worker_id: &str) -> Result<()> {
        self.db
            .call(async |c| tasks::release(c, task_id, worker_id).await)
            .await?;
        self.wake.task_queued();
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(%task_id, worker_id, progress))]
    async fn set_progress(&self, task_id: Uuid, worker_id: &str, progress: f64) -> Result<()> {
        check_progress(progress)?;
        self.db
            .call(async |c| tasks::set_progress(c, task_id, worker_id, progress).await)
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(%task_id, worker_id))]
    async fn set_preview(
        &self,
        task_id: Uuid,
        worker_id: &str,
        preview: PreviewRecord,
    ) -> Result<()> {
        self.db
            .call(async |c| tasks::set_preview(c, task_id, worker_id, preview).await)
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(%task_id, worker_id))]
    async fn complete_ready(
        &self,
        task_id: Uuid,
        worker_id: &str,
        ready: ReadyRecord,
        webhook: Option<NewWebhook>,
    ) -> Result<()> {
        let with_webhook = webhook.is_some();
        let done = self
            .db
            .call(async |c| tasks::complete_ready(c, task_id, worker_id, ready, webhook).await)
            .await;
        self.completed(&done, with_webhook);
        done
    }

    #[tracing::instrument(level = "debug", skip_all, fields(%task_id, worker_id, ?kind))]
    async fn complete_moderated(
        &self,
        task_id: Uuid,
        worker_id: &str,
        kind: ModerationKind,
        reasons: Vec<String>,
        webhook: Option<NewWebhook>,
    ) -> Result<()> {
        let with_webhook = webhook.is_some();
        let done = self
            .db
            .call(async |c| {
                tasks::complete_moderated(c, task_id, worker_id, kind, reasons, webhook).await
            })
            .await;
        self.completed(&done, with_webhook);
        done
    }

    #[tracing::instrument(level = "debug", skip_all, fields(%task_id, worker_id, retryable))]
    async fn complete_error(
        &self,
        task_id: Uuid,
        worker_id: &str,
        details: String,
        retryable: bool,
        webhook: Option<NewWebhook>,
    ) -> Result<ErrorOutcome> {
        let with_webhook = webhook.is_some();
        let done = self
            .db
            .call(async |c| {
                tasks::complete_error(c, task_id, worker_id, details, retryable, webhook).await
            })
            .await;
        match done {
            Ok(ErrorOutcome::Requeued { .. }) => self.wake.task_queued(),
            Ok(ErrorOutcome::Failed) => self.completed(&done, with_webhook),
            Err(_) => {}
        }
        done
    }

    #[tracing::instrument(level = "debug", skip_all, fields(%id))]
    async fn cancel_task(
        &self,
        tenant: &str,
        id: Uuid,
        details: String,
        webhook: Option<NewWebhook>,
    ) -> Result<CancelOutcome> {
        let with_webhook = webhook.is_some();
        let done = self
            .db
            .call(async |c| cancel::cancel(c, tenant, id, details, webhook).await)
            .await;
        if matches!(done, Ok(CancelOutcome::Cancelled)) {
            self.completed(&done, with_webhook);
        }
        done
    }

    #[tracing::instrument(level = "debug", skip_all, fields(%task_id, worker_id))]
    async fn cancel_requested(&self, task_id: Uuid, worker_id: &str) -> Result<bool> {
        self.db
            .call(async |c| cancel::requested(c, task_id, worker_id).await)
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(%id))]
    async fn get_task(&self, tenant: &str, id: Uuid) -> Result<Option<TaskRecord>> {
        self.db
            .call(async |c| tasks::get(c, tenant, id).await)
            .await
    }

    async fn expire_finished(&self, finished_before: SystemTime) -> Result<Vec<String>> {
        let limit = MAINTENANCE_TIMEOUT;
        self.db
            .call_within(limit, async |c| {
                tasks::expire_finished(c, finished_before, limit).await
            })
            .await
    }

    async fn credits(&self, tenant: &str) -> Result<Option<i64>> {
        self.db
            .call(async |c| credits::balance(c, tenant).await)
            .await
    }

    async fn set_credits(&self, tenant: &str, balance: Option<i64>) -> Result<()> {
        check_tenant(tenant)?;
        self.db
            .call(async |c| credits::set(c, tenant, balance).await)
            .await
    }

    async fn add_credits(&self, tenant: &str, delta: i64) -> Result<i64> {
        check_tenant(tenant)?;
        self.db
            .call(async |c| credits::add(c, tenant, delta).await)
            .await
    }

    async fn list_credits(&self) -> Result<Vec<(String, i64)>> {
        self.db.call(async |c| credits::balances(c).await).await
    }

    async fn set_price(&self, endpoint: &str, price: Option<Price>) -> Result<()> {
        self.db
            .call(async |c| credits::set_price(c, endpoint, price).await)
            .await
    }

    async fn prices(&self) -> Result<Vec<(String, Price)>> {
        self.db.call(async |c| credits::prices(c).await).await
    }

    async fn insert_finetune(&self, record: FinetuneRecord) -> Result<()> {
        check_finetune(&record)?;
        self.db
            .call(async |c| finetunes::insert(c, record).await)
            .await
    }

    async fn list_finetunes(&self, tenant: &str) -> Result<Vec<String>> {
        self.db
            .call(async |c| finetunes::list(c, tenant).await)
            .await
    }

    async fn get_finetune(
        &self,
        requester: &str,
        finetune_id: &str,
    ) -> Result<Option<FinetuneRecord>> {
        self.db
            .call(async |c| finetunes::get(c, requester, finetune_id).await)
            .await
    }

    async fn delete_finetune(&self, tenant: &str, id: &str) -> Result<Option<FinetuneRecord>> {
        self.db
            .call(async |c| finetunes::delete(c, tenant, id).await)
            .await
    }

    async fn enqueue_webhook(&self, task_id: Uuid, webhook: NewWebhook) -> Result<Uuid> {
        let id = self
            .db
            .call(async |c| webhooks::enqueue(c, task_id, webhook).await)
            .await?;
        self.wake.webhook_due();
        Ok(id)
    }

    async fn claim_due_webhooks(
        &self,
        worker_id: &str,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<WebhookDelivery>> {
        self.db
            .call(async |c| webhooks::claim_due(c, worker_id, limit, lease).await)
            .await
    }

    async fn webhook_delivered(&self, id: Uuid) -> Result<()> {
        self.db
            .call(async |c| webhooks::delivered(c, id).await)
            .await
    }

    async fn webhook_failed(
        &self,
        id: Uuid,
        error: &str,
        next_attempt_at: Option<SystemTime>,
    ) -> Result<()> {
        self.db
            .call(async |c| webhooks::failed(c, id, error, next_attempt_at).await)
            .await
    }

    async fn webhook_deliveries(&self, task_id: Uuid) -> Result<Vec<WebhookRecord>> {
        self.db
            .call(async |c| webhooks::for_task(c, task_id).await)
            .await
    }

    async fn list_webhooks(&self, status: Option<&str>, limit: u32) -> Result<Vec<WebhookRecord>> {
        self.db
            .call(async |c| webhooks::list(c, status, limit).await)
            .await
    }

    async fn retry_failed_webhooks(&self, id: Option<Uuid>) -> Result<u64> {
        let queued = self
            .db
            .call(async |c| webhooks::retry_failed(c, id).await)
            .await?;
        if queued > 0 {
            self.wake.webhook_due();
        }
        Ok(queued)
    }

    async fn shared_secret(&self, name: &str) -> Result<SharedSecret> {
        secret::check_name(name)?;
        self.db
            .call(async |c| keys::shared_secret(c, name).await)
            .await
    }

    fn subscribe(&self) -> Option<Wakeups> {
        Some(self.wake.subscribe())
    }

    async fn close(&self) {
        self.submitter.close().await;
        self.wake.stop();
        self.db.pool().close().await;
    }
}
