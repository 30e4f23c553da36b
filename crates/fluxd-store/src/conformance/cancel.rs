//! Conformance: cancelling tasks.

use std::time::Duration;

use uuid::Uuid;

use crate::conformance::{ready, task_for, tenant_with_key, webhook};
use crate::{CancelOutcome, Claim, Result, Store, StoreError, TaskState, TaskStatus};

/// A lease long enough never to run out during a test.
const LONG: Duration = Duration::from_secs(3600);

const DETAILS: &str = "Task cancelled by the client";

/// A queued task is finished at once (`Error`, webhook queued, never claimed); a running one is
/// marked for its worker, which sees the mark; a task whose worker's lease ran out is finished
/// at once; a mark survives the task going back to the queue; final tasks, unknown ids and other
/// tenants' tasks are left alone.
pub async fn cancellation(store: &dyn Store) -> Result<()> {
    let alice = tenant_with_key(store, "alice").await?;
    tenant_with_key(store, "bob").await?;
    let cancel = |id: Uuid, tenant: &'static str| {
        store.cancel_task(tenant, id, DETAILS.into(), Some(webhook(id)))
    };

    // Queued: finished now, with its webhook; it never runs.
    let queued = task_for(&alice, "queued");
    store.insert_task(queued.clone()).await?;
    assert_eq!(cancel(queued.id, "bob").await?, CancelOutcome::NotFound);
    assert_eq!(
        cancel(Uuid::new_v4(), "alice").await?,
        CancelOutcome::NotFound
    );
    assert_eq!(cancel(queued.id, "alice").await?, CancelOutcome::Cancelled);
    let found = store.get_task("alice", queued.id).await?;
    let found = found.unwrap_or_else(|| panic!("cancelled task must remain"));
    assert_eq!(
        found.state,
        TaskState::Error {
            details: DETAILS.into()
        }
    );
    assert!(found.finished_at.is_some());
    assert_eq!(store.count_unfinished(alice.key_id).await?, 0);
    assert_eq!(store.webhook_deliveries(queued.id).await?.len(), 1);
    assert_eq!(store.claim_next("w", LONG).await?, None);
    assert_eq!(
        cancel(queued.id, "alice").await?,
        CancelOutcome::Final(TaskStatus::Error)
    );
    assert_eq!(store.webhook_deliveries(queued.id).await?.len(), 1);

    // Running: marked; the worker reads the mark and finishes the task itself.
    let running = task_for(&alice, "running");
    store.insert_task(running.clone()).await?;
    let claimed = store.claim_next("w", LONG).await?;
    assert!(matches!(&claimed, Some(Claim::Run(t)) if t.id == running.id && !t.cancel_requested));
    assert!(!store.cancel_requested(running.id, "w").await?);
    assert_eq!(cancel(running.id, "bob").await?, CancelOutcome::NotFound);
    assert!(!store.cancel_requested(running.id, "w").await?);
    assert_eq!(cancel(running.id, "alice").await?, CancelOutcome::Requested);
    assert_eq!(cancel(running.id, "alice").await?, CancelOutcome::Requested);
    assert!(matches!(
        store.get_task("alice", running.id).await?.map(|t| t.state),
        Some(TaskState::Pending { .. })
    ));
    assert!(store.webhook_deliveries(running.id).await?.is_empty());
    assert!(store.cancel_requested(running.id, "w").await?);
    let other = store.cancel_requested(running.id, "other-worker").await;
    assert!(
        matches!(other, Err(StoreError::LeaseLost { .. })),
        "{other:?}"
    );
    store
        .complete_error(
            running.id,
            "w",
            DETAILS.into(),
            false,
            Some(webhook(running.id)),
        )
        .await?;
    assert_eq!(
        cancel(running.id, "alice").await?,
        CancelOutcome::Final(TaskStatus::Error)
    );
    let after = store.cancel_requested(running.id, "w").await;
    assert!(
        matches!(after, Err(StoreError::LeaseLost { .. })),
        "{after:?}"
    );

    // Its worker is gone (lease ran out): nobody would read the mark, so it is finished now, and
    // the late worker's write is refused.
    let orphan = task_for(&alice, "orphan");
    store.insert_task(orphan.clone()).await?;
    store.claim_next("gone", Duration::from_millis(1)).await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(cancel(orphan.id, "alice").await?, CancelOutcome::Cancelled);
    let late = store
        .complete_ready(orphan.id, "gone", ready("samples/late.jpeg"), None)
        .await;
    assert!(
        matches!(late, Err(StoreError::LeaseLost { .. })),
        "{late:?}"
    );

    // Marked, then handed back (the worker shut down): the next claim carries the mark.
    let handed_back = task_for(&alice, "handed back");
    store.insert_task(handed_back.clone()).await?;
    store.claim_next("w", LONG).await?;
    assert_eq!(
        cancel(handed_back.id, "alice").await?,
        CancelOutcome::Requested
    );
    store.release_task(handed_back.id, "w").await?;
    let again = store.claim_next("w2", LONG).await?;
    assert!(
        matches!(&again, Some(Claim::Run(t)) if t.id == handed_back.id && t.cancel_requested),
        "{again:?}"
    );

    // Ready: final.
    let done = task_for(&alice, "done");
    store.insert_task(done.clone()).await?;
    store.claim_next("w3", LONG).await?;
    store
        .complete_ready(done.id, "w3", ready("samples/done.jpeg"), None)
        .await?;
    assert_eq!(
        cancel(done.id, "alice").await?,
        CancelOutcome::Final(TaskStatus::Ready)
    );
    Ok(())
}
