//! [`Store`] for [`PostgresStore`]: each call on a pooled connection; writes that make work for
//! other processes ask for a wake-up once they committed. Task methods open debug-level spans
//! carrying `task_id`, so store failures show under their task.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use uuid::Uuid;

use crate::postgres::{cancel, credits, finetunes, keys, tasks, webhooks, PostgresStore};
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
        keys::create(&self.pool, tenant, label, apikey::generate()?).await
    }

    async fn authenticate(&self, key: &str) -> Result<Option<KeyInfo>> {
        keys::authenticate(&self.pool, key).await
    }

    async fn revoke_key(&self, key_id: Uuid) -> Result<bool> {
        keys::revoke(&self.pool, key_id).await
    }

    async fn set_max_active_tasks(&self, key_id: Uuid, max_active_tasks: u32) -> Result<bool> {
        keys::set_max_active_tasks(&self.pool, key_id, max_active_tasks).await
    }

    async fn list_keys(&self, tenant: &str) -> Result<Vec<KeyRecord>> {
        keys::list(&self.pool, tenant).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(task_id = %task.id))]
    async fn insert_task(&self, task: NewTask) -> Result<()> {
        match tasks::insert(&self.pool, &task, NO_LIMIT, self.max_attempts).await? {
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
        tasks::count_unfinished(&self.pool, key_id).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(worker_id))]
    async fn claim_next(&self, worker_id: &str, lease: Duration) -> Result<Option<Claim>> {
        tasks::claim_next(&self.pool, worker_id, lease).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(%task_id, worker_id))]
    async fn heartbeat(&self, task_id: Uuid, worker_id: &str, lease: Duration) -> Result<()> {
        tasks::heartbeat(&self.pool, task_id, worker_id, lease).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(%task_id, worker_id))]
    async fn release_task(&self, task_id: Uuid, worker_id: &str) -> Result<()> {
        tasks::release(&self.pool, task_id, worker_id).await?;
        self.wake.task_queued();
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(%task_id, worker_id, progress))]
    async fn set_progress(&self, task_id: Uuid, worker_id: &str, progress: f64) -> Result<()> {
        check_progress(progress)?;
        tasks::set_progress(&self.pool, task_id, worker_id, progress).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(%task_id, worker_id))]
    async fn set_preview(
        &self,
        task_id: Uuid,
        worker_id: &str,
        preview: PreviewRecord,
    ) -> Result<()> {
        tasks::set_preview(&self.pool, task_id, worker_id, preview).await
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
        let done = tasks::complete_ready(&self.pool, task_id, worker_id, ready, webhook).await;
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
        let done =
            tasks::complete_moderated(&self.pool, task_id, worker_id, kind, reasons, webhook).await;
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
        let done =
            tasks::complete_error(&self.pool, task_id, worker_id, details, retryable, webhook)
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
        let done = cancel::cancel(&self.pool, tenant, id, details, webhook).await;
        if matches!(done, Ok(CancelOutcome::Cancelled)) {
            self.completed(&done, with_webhook);
        }
        done
    }

    #[tracing::instrument(level = "debug", skip_all, fields(%task_id, worker_id))]
    async fn cancel_requested(&self, task_id: Uuid, worker_id: &str) -> Result<bool> {
        cancel::requested(&self.pool, task_id, worker_id).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(%id))]
    async fn get_task(&self, tenant: &str, id: Uuid) -> Result<Option<TaskRecord>> {
        tasks::get(&self.pool, tenant, id).await
    }

    async fn expire_finished(&self, finished_before: SystemTime) -> Result<Vec<String>> {
        tasks::expire_finished(&self.pool, finished_before).await
    }

    async fn credits(&self, tenant: &str) -> Result<Option<i64>> {
        credits::balance(&self.pool, tenant).await
    }

    async fn set_credits(&self, tenant: &str, balance: Option<i64>) -> Result<()> {
        check_tenant(tenant)?;
        credits::set(&self.pool, tenant, balance).await
    }

    async fn add_credits(&self, tenant: &str, delta: i64) -> Result<i64> {
        check_tenant(tenant)?;
        credits::add(&self.pool, tenant, delta).await
    }

    async fn list_credits(&self) -> Result<Vec<(String, i64)>> {
        credits::balances(&self.pool).await
    }

    async fn set_price(&self, endpoint: &str, price: Option<Price>) -> Result<()> {
        credits::set_price(&self.pool, endpoint, price).await
    }

    async fn prices(&self) -> Result<Vec<(String, Price)>> {
        credits::prices(&self.pool).await
    }

    async fn insert_finetune(&self, record: FinetuneRecord) -> Result<()> {
        check_finetune(&record)?;
        finetunes::insert(&self.pool, record).await
    }

    async fn list_finetunes(&self, tenant: &str) -> Result<Vec<String>> {
        finetunes::list(&self.pool, tenant).await
    }

    async fn get_finetune(
        &self,
        requester: &str,
        finetune_id: &str,
    ) -> Result<Option<FinetuneRecord>> {
        finetunes::get(&self.pool, requester, finetune_id).await
    }

    async fn delete_finetune(&self, tenant: &str, id: &str) -> Result<Option<FinetuneRecord>> {
        finetunes::delete(&self.pool, tenant, id).await
    }

    async fn enqueue_webhook(&self, task_id: Uuid, webhook: NewWebhook) -> Result<Uuid> {
        let id = webhooks::enqueue(&self.pool, task_id, webhook).await?;
        self.wake.webhook_due();
        Ok(id)
    }

    async fn claim_due_webhooks(
        &self,
        worker_id: &str,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<WebhookDelivery>> {
        webhooks::claim_due(&self.pool, worker_id, limit, lease).await
    }

    async fn webhook_delivered(&self, id: Uuid) -> Result<()> {
        webhooks::delivered(&self.pool, id).await
    }

    async fn webhook_failed(
        &self,
        id: Uuid,
        error: &str,
        next_attempt_at: Option<SystemTime>,
    ) -> Result<()> {
        webhooks::failed(&self.pool, id, error, next_attempt_at).await
    }

    async fn webhook_deliveries(&self, task_id: Uuid) -> Result<Vec<WebhookRecord>> {
        webhooks::for_task(&self.pool, task_id).await
    }

    async fn list_webhooks(&self, status: Option<&str>, limit: u32) -> Result<Vec<WebhookRecord>> {
        webhooks::list(&self.pool, status, limit).await
    }

    async fn retry_failed_webhooks(&self, id: Option<Uuid>) -> Result<u64> {
        let queued = webhooks::retry_failed(&self.pool, id).await?;
        if queued > 0 {
            self.wake.webhook_due();
        }
        Ok(queued)
    }

    async fn shared_secret(&self, name: &str) -> Result<SharedSecret> {
        secret::check_name(name)?;
        keys::shared_secret(&self.pool, name).await
    }

    fn subscribe(&self) -> Option<Wakeups> {
        Some(self.wake.subscribe())
    }

    async fn close(&self) {
        self.submitter.close().await;
        self.wake.stop();
        self.pool.close().await;
    }
}
