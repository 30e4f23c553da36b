//! Conformance: live previews of running tasks.

use std::time::{Duration, SystemTime};

use crate::conformance::{ready, task_for, tenant_with_key};
use crate::{PreviewRecord, Result, Store, StoreError, TaskState};

/// A lease long enough never to run out during a test.
const LONG: Duration = Duration::from_secs(3600);

/// The worker's preview shows while the task runs, only its worker may set it, a new run hides
/// the last run's, and retention hands back its blob key with the image's.
pub async fn previews(store: &dyn Store) -> Result<()> {
    let alice = tenant_with_key(store, "alice").await?;
    let task = task_for(&alice, "previewed");
    store.insert_task(task.clone()).await?;
    let state =
        || async { Ok::<_, StoreError>(store.get_task("alice", task.id).await?.map(|t| t.state)) };
    store.claim_next("w", LONG).await?;
    assert_eq!(
        state().await?,
        Some(TaskState::Pending {
            progress: Some(0.0),
            preview: None
        })
    );
    let key = format!("samples/{}-preview.jpeg", task.id);
    let preview = |step| PreviewRecord {
        key: key.clone(),
        step,
        steps: 8,
    };
    store.set_preview(task.id, "w", preview(2)).await?;
    store.set_progress(task.id, "w", 0.25).await?;
    assert_eq!(
        state().await?,
        Some(TaskState::Pending {
            progress: Some(0.25),
            preview: Some(preview(2))
        })
    );
    let other = store.set_preview(task.id, "other", preview(3)).await;
    assert!(
        matches!(other, Err(StoreError::LeaseLost { .. })),
        "{other:?}"
    );

    // Handed back and claimed again: the earlier run's preview is not shown.
    store.release_task(task.id, "w").await?;
    store.claim_next("w2", LONG).await?;
    assert!(matches!(
        state().await?,
        Some(TaskState::Pending { preview: None, .. })
    ));
    store.set_preview(task.id, "w2", preview(6)).await?;
    assert!(matches!(
        state().await?,
        Some(TaskState::Pending { preview: Some(p), .. }) if p == preview(6)
    ));

    // Final: no preview in the state; retention names its blob with the image's.
    store
        .complete_ready(task.id, "w2", ready("samples/previewed.jpeg"), None)
        .await?;
    assert!(matches!(state().await?, Some(TaskState::Ready(_))));
    let mut expired = store
        .expire_finished(SystemTime::now() + Duration::from_secs(1))
        .await?;
    expired.sort();
    assert_eq!(expired, [key.clone(), "samples/previewed.jpeg".to_owned()]);
    Ok(())
}
