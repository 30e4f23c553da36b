//! The behaviour every [`Store`] backend must show, as async functions over the trait.
//!
//! A backend's test file calls each function on a fresh, empty store (the queue functions claim
//! whatever is pending, so stores must not be shared between them), [`durability`] with a
//! function that reopens the same database, and the functions of several stores
//! ([`claims_across_stores`], [`limit_across_stores`], [`shared_secrets`]) with stores opened
//! side by side on one fresh database, as several nodes use it. [`FlakyLink`] cuts a backend's
//! network link for outage tests; [`TestSchema`] is a fresh schema on the test PostgreSQL
//! server. The functions panic, like `assert!`, when the backend
//! misbehaves, and return the store's own errors unchanged.

mod cancel;
mod credits;
mod keys;
mod link;
mod nodes;
mod outbox;
mod preview;
mod queue;
mod test_schema;

use std::future::Future;

use uuid::Uuid;

pub use cancel::cancellation;
pub use credits::{concurrent_debits, credits};
pub use keys::{finetunes, keys};
pub use link::FlakyLink;
pub use nodes::{claims_across_stores, limit_across_stores, shared_secrets};
pub use outbox::{durability, outbox, retention};
pub use preview::previews;
pub use queue::{
    active_task_limit, claims_are_exclusive, completions, expired_lease_is_reclaimable,
    heartbeat_and_progress, lost_worker_retries, release_on_shutdown, retryable_errors,
    task_isolation,
};
pub use test_schema::{test_server_url, TestSchema, TEST_POSTGRES_URL};

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

/// Calls macro `$then` with `$args` followed by `;` and the names of every store-only function,
/// so that [`run_all`] and [`conformance_tests!`](crate::conformance_tests) share one list.
#[doc(hidden)]
#[macro_export]
macro_rules! __store_checks {
    ($($then:ident)::+ ! ($($args:tt)*)) => {
        $($then)::+! {
            $($args)*;
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
            expired_lease_is_reclaimable,
            retention,
            outbox,
            cancellation,
            credits,
            concurrent_debits,
            previews
        }
    };
}

/// Runs every store-only function, each on a store from `fresh` (which must hand out empty
/// stores), closing each store afterwards.
pub async fn run_all<F, Fut>(fresh: F) -> Result<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Box<dyn Store>>>,
{
    macro_rules! each {
        ($fresh:ident; $($check:ident),*) => {$(
            let store = $fresh().await?;
            $check(store.as_ref()).await?;
            store.close().await;
        )*};
    }
    crate::__store_checks!(each!(fresh));
    Ok(())
}

/// A backend's test file in two lines: one `#[tokio::test]` per store-only function, each on a
/// store from `$fresh`, and one per function of several stores, each on the stores from
/// `$fresh_many`. Both are async expressions: `$fresh` evaluates to
/// `Result<(G, Box<dyn Store>), StoreError>` and `$fresh_many` to
/// `Result<(G, Vec<Box<dyn Store>>), StoreError>` (stores side by side on one new database),
/// where the guard `G` keeps that database (a temporary directory, say) until the test ends.
#[macro_export]
macro_rules! conformance_tests {
    (fresh: $fresh:expr, fresh_many: $fresh_many:expr $(,)?) => {
        $crate::__store_checks!($crate::conformance_tests!(@one $fresh));
        $crate::conformance_tests!(
            @many $fresh_many;
            claims_across_stores,
            limit_across_stores,
            shared_secrets
        );
    };
    (@one $fresh:expr; $($check:ident),*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() -> ::std::result::Result<(), $crate::StoreError> {
            let (_guard, store) = $fresh.await?;
            $crate::conformance::$check(store.as_ref()).await?;
            store.close().await;
            Ok(())
        }
    )*};
    (@many $fresh_many:expr; $($check:ident),*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() -> ::std::result::Result<(), $crate::StoreError> {
            let (_guard, stores) = $fresh_many.await?;
            let refs: Vec<&dyn $crate::Store> = stores.iter().map(|s| s.as_ref()).collect();
            $crate::conformance::$check(&refs).await?;
            for store in stores {
                store.close().await;
            }
            Ok(())
        }
    )*};
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
        cost: None,
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
