//! The behaviour every [`Store`] backend must show, as async functions over the trait.
//!
//! A backend's test file calls each function on a fresh, empty store (the queue functions claim
//! whatever is pending, so stores must not be shared between them) and [`durability`] with a
//! function that reopens the same database. The functions panic, like `assert!`, when the backend
//! misbehaves, and return the store's own errors unchanged.

mod keys;
mod outbox;
mod queue;

use std::future::Future;

use uuid::Uuid;

pub use keys::{finetunes, keys};
pub use outbox::{durability, outbox, retention};
pub use queue::{
    active_task_limit, claims_are_exclusive, completions, heartbeat_and_progress,
    lost_worker_retries, release_on_shutdown, retryable_errors, task_isolation,
};

use crate::{NewKey, NewTask, NewWebhook, ReadyRecord, Result, Store};

/// The test S3 bucket's URL (`FLUXD_TEST_S3_URL`, exported with the `AWS_*` variables by
/// `scripts/services/s3.sh`, which `scripts/test.sh` runs) with a fresh prefix for the test
/// `name`, so runs never see each other's objects. Without it: None, with a note, on a developer
/// machine; a panic in CI (`CI` set), where a test that needs the server must not pass silently.
pub fn test_s3_url(name: &str) -> Option<String> {
    match std::env::var("FLUXD_TEST_S3_URL") {
        Ok(url) => Some(format!("{url}/{name}-{}", Uuid::new_v4())),
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!("FLUXD_TEST_S3_URL is not set in CI: run the tests with scripts/test.sh")
        }
        Err(_) => {
            eprintln!("SKIPPED {name}: no S3 server (scripts/test.sh starts one)");
            None
        }
    }
}

/// Runs every store-only function, each on a store from `fresh` (which must hand out empty
/// stores), closing each store afterwards.
pub async fn run_all<F, Fut>(fresh: F) -> Result<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Box<dyn Store>>>,
{
    macro_rules! each {
        ($($check:ident),* $(,)?) => {$(
            let store = fresh().await?;
            $check(store.as_ref()).await?;
            store.close().await;
        )*};
    }
    each!(
        keys,
        finetunes,
        task_isolation,
        active_task_limit,
        claims_are_exclusive,
        lost_worker_retries,
        release_on_shutdown,
        heartbeat_and_progress,
        completions,
        retryable_errors,
        retention,
        outbox,
    );
    Ok(())
}

/// A tenant with one key.
async fn tenant_with_key(store: &dyn Store, tenant: &str) -> Result<NewKey> {
    store.create_key(tenant, Some("conformance")).await
}

/// A task of `key`'s tenant with distinctive parameters.
fn task_for(key: &NewKey, prompt: &str) -> NewTask {
    NewTask {
        id: Uuid::new_v4(),
        tenant: key.tenant.clone(),
        key_id: key.key_id,
        params: serde_json::json!({ "prompt": prompt, "steps": 28, "width": 1024 }),
        finetune_id: Some("my-style".into()),
        webhook_url: Some("https://hooks.example.com/fluxd".into()),
        webhook_secret: Some("whsec".into()),
    }
}

/// An image result with a seed above `i64::MAX`, to catch backends that lose the top bit.
fn ready(sample_key: &str) -> ReadyRecord {
    ReadyRecord {
        sample_key: sample_key.into(),
        prompt_used: "a cat, watercolour".into(),
        seed_used: u64::MAX - 7,
        start_time: 1_764_000_000.25,
        end_time: 1_764_000_012.5,
    }
}

/// A webhook whose payload names its task.
fn webhook(task_id: Uuid) -> NewWebhook {
    NewWebhook {
        url: "https://hooks.example.com/fluxd".into(),
        secret: Some("whsec".into()),
        payload: serde_json::json!({
            "id": task_id.to_string(),
            "task_id": task_id.to_string(),
            "status": "Ready",
        }),
        webhook_id: format!("msg_{}", task_id.simple()),
    }
}
