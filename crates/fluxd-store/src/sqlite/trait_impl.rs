//! [`Store`] for [`SqliteStore`]: reads go to the pool, writes to the group-commit writer. Task
//! methods open debug-level spans carrying `task_id`, so store failures show under their task.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use uuid::Uuid;

use crate::secret;
use crate::sqlite::{cancel, credits, finetunes, keys, secrets, tasks, webhooks, SqliteStore};
use crate::store::Result;
use crate::types::{check_finetune, check_progress, check_tenant};
use crate::{
    apikey, CancelOutcome, Claim, ErrorOutcome, FinetuneRecord, InsertOutcome, KeyInfo, KeyRecord,
    ModerationKind, NewKey, NewTask, NewWebhook, PreviewRecord, Price, ReadyRecord, SharedSecret,
    Store, TaskRecord, WebhookDelivery, WebhookRecord,
};

#[async_trait]
impl Store for SqliteStore {
    async fn create_key(&self, tenant: &str, label: Option<&str>) -> Result<NewKey> {
        check_tenant(tenant)?;
        let material = apikey::generate()?;
        let tenant = tenant.to_owned();
        let label = label.map(str::to_owned);
        self.writer
            .write(move |c| Box::pin(keys::create(c, tenant, label, material)))
            .await
    }

    async fn authenticate(&self, key: &str) -> Result<Option<KeyInfo>> {
        keys::authenticate(&self.reads, key).await
    }

    async fn revoke_key(&self, key_id: Uuid) -> Result<bool> {
        self.writer
            .write_one(move |c| Box::pin(keys::revoke(c, key_id)))
            .await
    }

    async fn set_max_active_tasks(&self, key_id: Uuid, max_active_tasks: u32) -> Result<bool> {
        self.writer
            .write_one(move |c| Box::pin(keys::set_max_active_tasks(c, key_id, max_active_tasks)))
            .await
    }

    async fn list_keys(&self, tenant: &str) -> Result<Vec<KeyRecord>> {
        keys::list(&self.reads, tenant).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(task_id = %task.id))]
    async fn insert_task(&self, task: NewTask) -> Result<()> {
        let max_attempts = self.max_attempts;
        self.writer
            .write_one(move |c| Box::pin(tasks::insert(c, task, max_attempts)))
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(task_id = %task.id))]
    async fn insert_task_if_under_limit(&self, task: NewTask, limit: u32) -> Result<InsertOutcome> {
        let max_attempts = self.max_attempts;
        self.writer.submit_task(task, limit, max_attempts).await
    }

    async fn count_unfinished(&self, key_id: Uuid) -> Result<u32> {
        tasks::count_unfinished(&self.reads, key_id).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(worker_id))]
    async fn claim_next(&self, worker_id: &str, lease: Duration) -> Result<Option<Claim>> {
        let worker_id = worker_id.to_owned();
        self.writer
            .write(move |c| Box::pin(tasks::claim_next(c, worker_id, lease)))
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(%task_id, worker_id))]
    async fn heartbeat(&self, task_id: Uuid, worker_id: &str, lease: Duration) -> Result<()> {
        let worker_id = worker_id.to_owned();
        self.writer
            .write_one(move |c| Box::pin(tasks::heartbeat(c, task_id, worker_id, lease)))
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(%task_id, worker_id))]
    async fn release_task(&self, task_id: Uuid, worker_id: &str) -> Result<()> {
        let worker_id = worker_id.to_owned();
        self.writer
            .write_one(move |c| Box::pin(tasks::release(c, task_id, worker_id)))
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(%task_id, worker_id, progress))]
    async fn set_progress(&self, task_id: Uuid, worker_id: &str, progress: f64) -> Result<()> {
        check_progress(progress)?;
        let worker_id = worker_id.to_owned();
        self.writer
            .write_one(move |c| Box::pin(tasks::set_progress(c, task_id, worker_id, progress)))
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(%task_id, worker_id))]
    async fn set_preview(
        &self,
        task_id: Uuid,
        worker_id: &str,
        preview: PreviewRecord,
    ) -> Result<()> {
        let worker_id = worker_id.to_owned();
        self.writer
            .write_one(move |c| Box::pin(tasks::set_preview(c, task_id, worker_id, preview)))
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
        let worker_id = worker_id.to_owned();
        self.writer
            .write(move |c| Box::pin(tasks::complete_ready(c, task_id, worker_id, ready, webhook)))
            .await
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
        let worker_id = worker_id.to_owned();
        self.writer
            .write(move |c| {
                Box::pin(tasks::complete_moderated(
                    c, task_id, worker_id, kind, reasons, webhook,
                ))
            })
            .await
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
        let worker_id = worker_id.to_owned();
        self.writer
            .write(move |c| {
                Box::pin(tasks::complete_error(
                    c, task_id, worker_id, details, retryable, webhook,
                ))
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(%id))]
    async fn cancel_task(
        &self,
        tenant: &str,
        id: Uuid,
        details: String,
        webhook: Option<NewWebhook>,
    ) -> Result<CancelOutcome> {
        let tenant = tenant.to_owned();
        self.writer
            .write(move |c| Box::pin(cancel::cancel(c, tenant, id, details, webhook)))
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(%task_id, worker_id))]
    async fn cancel_requested(&self, task_id: Uuid, worker_id: &str) -> Result<bool> {
        cancel::requested(&self.reads, task_id, worker_id.to_owned()).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(%id))]
    async fn get_task(&self, tenant: &str, id: Uuid) -> Result<Option<TaskRecord>> {
        tasks::get(&self.reads, tenant, id).await
    }

    async fn expire_finished(&self, finished_before: SystemTime) -> Result<Vec<String>> {
        self.writer
            .write(move |c| Box::pin(tasks::expire_finished(c, finished_before)))
            .await
    }

    async fn credits(&self, tenant: &str) -> Result<Option<i64>> {
        credits::balance(&self.reads, tenant).await
    }

    async fn set_credits(&self, tenant: &str, balance: Option<i64>) -> Result<()> {
        check_tenant(tenant)?;
        let tenant = tenant.to_owned();
        self.writer
            .write(move |c| Box::pin(credits::set(c, tenant, balance)))
            .await
    }

    async fn add_credits(&self, tenant: &str, delta: i64) -> Result<i64> {
        check_tenant(tenant)?;
        let tenant = tenant.to_owned();
        self.writer
            .write(move |c| Box::pin(credits::add(c, tenant, delta)))
            .await
    }

    async fn list_credits(&self) -> Result<Vec<(String, i64)>> {
        credits::balances(&self.reads).await
    }

    async fn set_price(&self, endpoint: &str, price: Option<Price>) -> Result<()> {
        let endpoint = endpoint.to_owned();
        self.writer
            .write_one(move |c| Box::pin(credits::set_price(c, endpoint, price)))
            .await
    }

    async fn prices(&self) -> Result<Vec<(String, Price)>> {
        credits::prices(&self.reads).await
    }

    async fn insert_finetune(&self, record: FinetuneRecord) -> Result<()> {
        check_finetune(&record)?;
        self.writer
            .write(move |c| Box::pin(finetunes::insert(c, record)))
            .await
    }

    async fn list_finetunes(&self, tenant: &str) -> Result<Vec<String>> {
        finetunes::list(&self.reads, tenant).await
    }

    async fn get_finetune(
        &self,
        requester: &str,
        finetune_id: &str,
    ) -> Result<Option<FinetuneRecord>> {
        finetunes::get(&self.reads, requester, finetune_id).await
    }

    async fn delete_finetune(&self, tenant: &str, id: &str) -> Result<Option<FinetuneRecord>> {
        let (tenant, id) = (tenant.to_owned(), id.to_owned());
        self.writer
            .write_one(move |c| Box::pin(finetunes::delete(c, tenant, id)))
            .await
    }

    async fn enqueue_webhook(&self, task_id: Uuid, webhook: NewWebhook) -> Result<Uuid> {
        self.writer
            .write_one(move |c| Box::pin(webhooks::enqueue(c, task_id, webhook)))
            .await
    }

    async fn claim_due_webhooks(
        &self,
        worker_id: &str,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<WebhookDelivery>> {
        let worker_id = worker_id.to_owned();
        self.writer
            .write(move |c| Box::pin(webhooks::claim_due(c, worker_id, limit, lease)))
            .await
    }

    async fn webhook_delivered(&self, id: Uuid) -> Result<()> {
        self.writer
            .write_one(move |c| Box::pin(webhooks::delivered(c, id)))
            .await
    }

    async fn webhook_failed(
        &self,
        id: Uuid,
        error: &str,
        next_attempt_at: Option<SystemTime>,
    ) -> Result<()> {
        let error = error.to_owned();
        self.writer
            .write_one(move |c| Box::pin(webhooks::failed(c, id, error, next_attempt_at)))
            .await
    }

    async fn webhook_deliveries(&self, task_id: Uuid) -> Result<Vec<WebhookRecord>> {
        webhooks::for_task(&self.reads, task_id).await
    }

    async fn list_webhooks(&self, status: Option<&str>, limit: u32) -> Result<Vec<WebhookRecord>> {
        webhooks::list(&self.reads, status, limit).await
    }

    async fn retry_failed_webhooks(&self, id: Option<Uuid>) -> Result<u64> {
        self.writer
            .write_one(move |c| Box::pin(webhooks::retry_failed(c, id)))
            .await
    }

    async fn shared_secret(&self, name: &str) -> Result<SharedSecret> {
        secret::check_name(name)?;
        let name = name.to_owned();
        let fresh = secret::generate()?;
        self.writer
            .write_one(move |c| Box::pin(secrets::get_or_create(c, name, fresh)))
            .await
    }

    fn writer_stats(&self) -> Option<crate::WriterStats> {
        Some(SqliteStore::writer_stats(self))
    }

    async fn close(&self) {
        self.writer.close().await;
        self.reads.close().await;
    }
}
