//! Conformance: the webhook outbox, retention, and durability across reopening.

use std::future::Future;
use std::time::{Duration, SystemTime};

use uuid::Uuid;

use crate::conformance::{ready, task_for, tenant_with_key, webhook};
use crate::{Claim, InsertOutcome, ModerationKind, Result, Store, StoreError, TaskState};

const LONG: Duration = Duration::from_secs(3600);

/// Claims the next task for `worker`, which must be runnable, and returns its id.
async fn claim_id(store: &dyn Store, worker: &str) -> Result<uuid::Uuid> {
    match store.claim_next(worker, LONG).await? {
        Some(Claim::Run(task)) => Ok(task.id),
        other => panic!("expected a runnable task, got {other:?}"),
    }
}

/// Finished tasks older than the cutoff are deleted and their image keys returned; unfinished
/// tasks stay whatever their age.
pub async fn retention(store: &dyn Store) -> Result<()> {
    let key = tenant_with_key(store, "alice").await?;
    let [with_image, errored, waiting] = [
        task_for(&key, "a"),
        task_for(&key, "b"),
        task_for(&key, "c"),
    ];
    for task in [&with_image, &errored] {
        store.insert_task(task.clone()).await?;
    }
    for _ in 0..2 {
        let id = claim_id(store, "w").await?;
        if id == with_image.id {
            store
                .complete_ready(id, "w", ready("samples/a.jpeg"), Some(webhook(id)))
                .await?;
        } else {
            store
                .complete_error(id, "w", "bad input".into(), false, None)
                .await?;
        }
    }
    store.insert_task(waiting.clone()).await?;
    let sent = store.claim_due_webhooks("d", 10, LONG).await?;
    assert_eq!(sent.len(), 1);
    store.webhook_delivered(sent[0].id).await?;

    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    assert_eq!(store.expire_finished(hour_ago).await?, Vec::<String>::new());
    assert!(store.get_task("alice", with_image.id).await?.is_some());

    let soon = SystemTime::now() + Duration::from_secs(1);
    assert_eq!(store.expire_finished(soon).await?, ["samples/a.jpeg"]);
    assert_eq!(store.get_task("alice", with_image.id).await?, None);
    assert_eq!(store.get_task("alice", errored.id).await?, None);
    let kept = store.get_task("alice", waiting.id).await?;
    assert_eq!(
        kept.map(|t| t.state),
        Some(TaskState::Pending {
            progress: None,
            preview: None
        })
    );
    // Finished tasks leaving did not change what the key has unfinished.
    assert_eq!(store.count_unfinished(key.key_id).await?, 1);
    assert_eq!(store.expire_finished(soon).await?, Vec::<String>::new());
    // The delivered webhook went with the tasks; it is no longer known.
    let gone = store.webhook_delivered(sent[0].id).await;
    assert!(matches!(gone, Err(StoreError::NotFound(_))), "{gone:?}");
    Ok(())
}

/// Webhooks enter the outbox with their task's final status or not at all, keep their exact
/// bytes, are leased to one delivery worker at a time, and are retried until delivered or given
/// up.
pub async fn outbox(store: &dyn Store) -> Result<()> {
    let key = tenant_with_key(store, "alice").await?;
    for i in 0..3 {
        store
            .insert_task(task_for(&key, &format!("cat {i}")))
            .await?;
    }
    let ready_id = claim_id(store, "w").await?;
    let moderated_id = claim_id(store, "w").await?;
    let lost_id = claim_id(store, "w").await?;
    assert!(store.claim_due_webhooks("d", 10, LONG).await?.is_empty());

    store
        .complete_ready(
            ready_id,
            "w",
            ready("samples/r.jpeg"),
            Some(webhook(ready_id)),
        )
        .await?;
    store
        .complete_moderated(
            moderated_id,
            "w",
            ModerationKind::Content,
            vec!["nsfw".into()],
            Some(webhook(moderated_id)),
        )
        .await?;
    // A completion that fails (lease lost) must not leave its webhook behind.
    let stale = store
        .complete_ready(
            lost_id,
            "intruder",
            ready("samples/l.jpeg"),
            Some(webhook(lost_id)),
        )
        .await;
    assert!(
        matches!(stale, Err(StoreError::LeaseLost { .. })),
        "{stale:?}"
    );

    let mut due = store.claim_due_webhooks("d1", 10, LONG).await?;
    assert_eq!(due.len(), 2);
    due.sort_by_key(|d| d.task_id != ready_id);
    let (first, second) = (&due[0], &due[1]);
    assert_eq!(first.task_id, ready_id);
    assert_eq!(second.task_id, moderated_id);
    let expected = webhook(ready_id);
    assert_eq!(first.url, expected.url);
    assert_eq!(first.secret, expected.secret);
    assert_eq!(first.webhook_id, expected.webhook_id);
    assert_eq!(first.payload, expected.payload.to_string());
    assert_eq!(first.attempts, 1);
    assert_ne!(first.id, second.id);

    // Leased: nobody else gets them.
    assert!(store.claim_due_webhooks("d2", 10, LONG).await?.is_empty());

    store.webhook_delivered(first.id).await?;
    let retry_now = SystemTime::now() - Duration::from_secs(1);
    store
        .webhook_failed(second.id, "503 from receiver", Some(retry_now))
        .await?;
    let again = store.claim_due_webhooks("d2", 10, Duration::ZERO).await?;
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].id, again[0].attempts), (second.id, 2));
    assert_eq!(
        again[0].webhook_id, second.webhook_id,
        "stable across retries"
    );
    assert_eq!(again[0].payload, second.payload);
    // That lease was zero: the delivery worker "died", so it is due again.
    let third = store.claim_due_webhooks("d3", 10, LONG).await?;
    assert_eq!(third.len(), 1);
    assert_eq!(third[0].attempts, 3);
    // Not due until its time.
    let later = SystemTime::now() + Duration::from_secs(3600);
    store
        .webhook_failed(second.id, "timeout", Some(later))
        .await?;
    assert!(store.claim_due_webhooks("d", 10, LONG).await?.is_empty());
    store.webhook_failed(second.id, "gave up", None).await?;
    assert!(store.claim_due_webhooks("d", 10, LONG).await?.is_empty());

    // Operators can see where each delivery stands.
    let seen = store.webhook_deliveries(ready_id).await?;
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].id, seen[0].status.as_str()),
        (first.id, "delivered")
    );
    assert_eq!((seen[0].attempts, seen[0].last_error.as_deref()), (1, None));
    let seen = store.webhook_deliveries(moderated_id).await?;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].status, "failed");
    assert_eq!(seen[0].attempts, 3);
    assert_eq!(seen[0].last_error.as_deref(), Some("gave up"));
    assert_eq!(seen[0].url, expected.url);
    assert!(store.webhook_deliveries(Uuid::new_v4()).await?.is_empty());

    // Across tasks: by status, most recently changed first.
    let failed = store.list_webhooks(Some("failed"), 10).await?;
    let failed: Vec<_> = failed.iter().map(|w| (w.id, w.task_id)).collect();
    assert_eq!(failed, [(second.id, moderated_id)]);
    let all = store.list_webhooks(None, 10).await?;
    assert_eq!(all.len(), 2);
    assert!(all.windows(2).all(|w| w[0].updated_at >= w[1].updated_at));
    assert_eq!(store.list_webhooks(None, 1).await?.len(), 1);
    let delivered = store.list_webhooks(Some("delivered"), 10).await?;
    assert_eq!(
        delivered.iter().map(|w| w.id).collect::<Vec<_>>(),
        [first.id]
    );
    let unknown = store.list_webhooks(Some("lost"), 10).await;
    assert!(
        matches!(unknown, Err(StoreError::Invalid(_))),
        "{unknown:?}"
    );
    // A given-up delivery is queued again on request, for one more attempt.
    assert_eq!(store.retry_failed_webhooks(Some(first.id)).await?, 0);
    assert_eq!(store.retry_failed_webhooks(Some(Uuid::new_v4())).await?, 0);
    assert_eq!(store.retry_failed_webhooks(None).await?, 1);
    assert!(store.list_webhooks(Some("failed"), 10).await?.is_empty());
    let retried = store.claim_due_webhooks("d4", 10, LONG).await?;
    assert_eq!(retried.len(), 1);
    assert_eq!((retried[0].id, retried[0].attempts), (second.id, 4));
    store.webhook_failed(second.id, "still down", None).await?;
    assert_eq!(store.retry_failed_webhooks(Some(second.id)).await?, 1);
    let pending = store.list_webhooks(Some("pending"), 10).await?;
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].last_error.as_deref(), Some("still down"));
    assert_eq!(store.claim_due_webhooks("d5", 10, LONG).await?.len(), 1);

    // Standalone enqueue, and the limit on one claim.
    for _ in 0..3 {
        store.enqueue_webhook(lost_id, webhook(lost_id)).await?;
    }
    assert_eq!(store.claim_due_webhooks("d", 2, LONG).await?.len(), 2);
    assert_eq!(store.claim_due_webhooks("d", 2, LONG).await?.len(), 1);
    let unknown = store.webhook_delivered(uuid::Uuid::new_v4()).await;
    assert!(
        matches!(unknown, Err(StoreError::NotFound(_))),
        "{unknown:?}"
    );
    Ok(())
}

/// What was acknowledged survives closing and reopening the database: keys, queued tasks,
/// finished tasks and their webhooks. `open` must open the same database each time, empty at
/// the first call.
pub async fn durability<F, Fut>(open: F) -> Result<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Box<dyn Store>>>,
{
    let store = open().await?;
    let key = tenant_with_key(store.as_ref(), "alice").await?;
    let queued = task_for(&key, "queued");
    let finished = task_for(&key, "finished");
    store.insert_task(finished.clone()).await?;
    let claimed = claim_id(store.as_ref(), "w").await?;
    assert_eq!(claimed, finished.id);
    store
        .complete_ready(
            claimed,
            "w",
            ready("samples/f.jpeg"),
            Some(webhook(claimed)),
        )
        .await?;
    let outcome = store.insert_task_if_under_limit(queued.clone(), 24).await?;
    assert_eq!(outcome, InsertOutcome::Inserted);
    store.close().await;
    let closed = store.insert_task(task_for(&key, "too late")).await;
    assert!(matches!(closed, Err(StoreError::Closed)), "{closed:?}");
    drop(store);

    let store = open().await?;
    let info = store.authenticate(&key.key).await?;
    assert_eq!(info.map(|i| i.key_id), Some(key.key_id));
    let back = store.get_task("alice", queued.id).await?;
    let back = back.unwrap_or_else(|| panic!("queued task lost on reopen"));
    assert_eq!(back.params, queued.params);
    assert_eq!(
        back.state,
        TaskState::Pending {
            progress: None,
            preview: None
        }
    );
    let done = store.get_task("alice", finished.id).await?;
    assert_eq!(
        done.map(|t| t.state),
        Some(TaskState::Ready(ready("samples/f.jpeg")))
    );
    let due = store.claim_due_webhooks("d", 10, LONG).await?;
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].task_id, finished.id);
    assert_eq!(due[0].payload, webhook(finished.id).payload.to_string());
    match store.claim_next("w", LONG).await? {
        Some(Claim::Run(task)) => assert_eq!(task.id, queued.id),
        other => panic!("expected the queued task, got {other:?}"),
    }
    store.close().await;
    Ok(())
}
