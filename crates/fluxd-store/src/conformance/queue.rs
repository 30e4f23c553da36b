//! Conformance: the task queue.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::future::join_all;
use uuid::Uuid;

use crate::conformance::{ready, task_for, tenant_with_key, webhook};
use crate::{
    Claim, ClaimedTask, ErrorOutcome, InsertOutcome, ModerationKind, Result, Store, StoreError,
    TaskState, TaskStatus,
};

/// A lease long enough never to run out during a test.
const LONG: Duration = Duration::from_secs(3600);

/// Claims the next task, which must exist and be runnable.
async fn claim_run(store: &dyn Store, worker: &str, lease: Duration) -> Result<ClaimedTask> {
    match store.claim_next(worker, lease).await? {
        Some(Claim::Run(task)) => Ok(task),
        other => panic!("expected a runnable task, got {other:?}"),
    }
}

fn assert_lease_lost<T: std::fmt::Debug>(result: Result<T>, what: &str) {
    assert!(
        matches!(result, Err(StoreError::LeaseLost { .. })),
        "{what}: {result:?}"
    );
}

/// Tasks are stored as submitted and visible only to their tenant.
pub async fn task_isolation(store: &dyn Store) -> Result<()> {
    let alice = tenant_with_key(store, "alice").await?;
    let bob = tenant_with_key(store, "bob").await?;
    let task = task_for(&alice, "alice's cat");
    store.insert_task(task.clone()).await?;

    let found = store.get_task("alice", task.id).await?;
    let found = found.unwrap_or_else(|| panic!("own task must be found"));
    assert_eq!(found.id, task.id);
    assert_eq!(found.tenant, "alice");
    assert_eq!(found.key_id, alice.key_id);
    assert_eq!(found.params, task.params);
    assert_eq!(found.finetune_id, task.finetune_id);
    assert_eq!(found.webhook_url, task.webhook_url);
    assert_eq!(found.webhook_secret, task.webhook_secret);
    assert_eq!(
        found.state,
        TaskState::Pending {
            progress: None,
            preview: None
        }
    );
    assert_eq!(found.state.status().as_str(), "Pending");
    assert_eq!(found.attempts, 0);
    assert_eq!(found.finished_at, None);

    assert_eq!(store.get_task("bob", task.id).await?, None);
    assert_eq!(store.get_task("alice", Uuid::new_v4()).await?, None);
    assert_eq!(store.count_unfinished(alice.key_id).await?, 1);
    assert_eq!(store.count_unfinished(bob.key_id).await?, 0);

    let again = store.insert_task(task).await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    Ok(())
}

/// 50 concurrent submits against a limit of 24: exactly 24 get in; finishing one frees a slot.
pub async fn active_task_limit(store: &dyn Store) -> Result<()> {
    let key = tenant_with_key(store, "alice").await?;
    let other = tenant_with_key(store, "alice").await?;
    let limit = store
        .authenticate(&key.key)
        .await?
        .map_or(0, |info| info.max_active_tasks);
    assert_eq!(limit, 24);
    let submits = (0..50).map(|i| {
        let task = task_for(&key, &format!("cat {i}"));
        store.insert_task_if_under_limit(task, limit)
    });
    let outcomes = join_all(submits).await;
    let mut inserted = 0;
    for outcome in outcomes {
        match outcome? {
            InsertOutcome::Inserted => inserted += 1,
            InsertOutcome::LimitReached { active } => assert_eq!(active, limit),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(inserted, limit);
    assert_eq!(store.count_unfinished(key.key_id).await?, limit);

    // The limit is per key.
    let theirs = store
        .insert_task_if_under_limit(task_for(&other, "other key"), limit)
        .await?;
    assert_eq!(theirs, InsertOutcome::Inserted);

    let claimed = claim_run(store, "w", LONG).await?;
    store
        .complete_ready(claimed.id, "w", ready("samples/x.jpeg"), None)
        .await?;
    let finished_key = if claimed.key_id == key.key_id {
        &key
    } else {
        &other
    };
    let after = store
        .insert_task_if_under_limit(task_for(finished_key, "after"), limit)
        .await?;
    assert_eq!(after, InsertOutcome::Inserted);
    Ok(())
}

/// Concurrent workers never get the same task, and every task is handed out once.
pub async fn claims_are_exclusive(store: &dyn Store) -> Result<()> {
    let key = tenant_with_key(store, "alice").await?;
    let mut submitted = HashSet::new();
    for i in 0..20 {
        let task = task_for(&key, &format!("cat {i}"));
        submitted.insert(task.id);
        store.insert_task(task).await?;
    }
    let workers: Vec<String> = (0..40).map(|i| format!("worker-{i}")).collect();
    let claims = join_all(workers.iter().map(|w| store.claim_next(w, LONG))).await;
    let mut claimed = HashSet::new();
    let mut empty = 0;
    for (worker, claim) in workers.iter().zip(claims) {
        match claim? {
            Some(Claim::Run(task)) => {
                assert_eq!(task.attempts, 1);
                assert!(claimed.insert(task.id), "task {} claimed twice", task.id);
                // The lease is the claimant's: it can heartbeat, nobody else can.
                store.heartbeat(task.id, worker, LONG).await?;
            }
            Some(Claim::Exhausted(task)) => panic!("fresh task exhausted: {task:?}"),
            None => empty += 1,
        }
    }
    assert_eq!(claimed, submitted);
    assert_eq!(empty, 20);
    assert_eq!(store.claim_next("late", LONG).await?, None);
    Ok(())
}

/// A worker that stops heart-beating loses its task to the next claimant with one more attempt;
/// past `max_attempts` the claim says `Exhausted`, and the stale worker can write nothing.
pub async fn lost_worker_retries(store: &dyn Store) -> Result<()> {
    let key = tenant_with_key(store, "alice").await?;
    let task = task_for(&key, "crashy");
    store.insert_task(task.clone()).await?;

    let first = claim_run(store, "w1", Duration::ZERO).await?;
    assert_eq!((first.id, first.attempts), (task.id, 1));
    let max = first.max_attempts;
    assert!(max >= 1);
    let mut last_worker = "w1".to_owned();
    for attempt in 2..=max {
        let worker = format!("w{attempt}");
        let next = claim_run(store, &worker, Duration::ZERO).await?;
        assert_eq!((next.id, next.attempts), (task.id, attempt));
        assert_eq!(next.params, task.params);
        last_worker = worker;
    }
    let claim = store.claim_next("reaper", LONG).await?;
    let exhausted = match claim {
        Some(Claim::Exhausted(exhausted)) => exhausted,
        other => panic!("expected an exhausted claim, got {other:?}"),
    };
    assert_eq!((exhausted.id, exhausted.attempts), (task.id, max + 1));

    // Earlier holders lost the task; nothing they write lands.
    assert_lease_lost(store.heartbeat(task.id, "w1", LONG).await, "heartbeat");
    assert_lease_lost(store.set_progress(task.id, "w1", 0.5).await, "progress");
    let stale = store
        .complete_ready(task.id, &last_worker, ready("samples/stale.jpeg"), None)
        .await;
    assert_lease_lost(stale, "stale completion");

    let outcome = store
        .complete_error(task.id, "reaper", "the worker stopped".into(), true, None)
        .await?;
    assert_eq!(outcome, ErrorOutcome::Failed);
    let record = store.get_task("alice", task.id).await?;
    let record = record.unwrap_or_else(|| panic!("task vanished"));
    assert_eq!(
        record.state,
        TaskState::Error {
            details: "the worker stopped".into()
        }
    );
    assert_eq!(record.attempts, max + 1);
    assert_eq!(store.claim_next("w", LONG).await?, None);
    Ok(())
}

/// A worker that shuts down hands its task back: claimable at once by another worker, the
/// interrupted run not counted, and nothing more from the releasing worker lands.
pub async fn release_on_shutdown(store: &dyn Store) -> Result<()> {
    let key = tenant_with_key(store, "alice").await?;
    let task = task_for(&key, "draining");
    store.insert_task(task.clone()).await?;
    let first = claim_run(store, "w1", LONG).await?;
    assert_eq!((first.id, first.attempts), (task.id, 1));
    store.set_progress(task.id, "w1", 0.5).await?;
    assert_lease_lost(
        store.release_task(task.id, "w2").await,
        "release by a stranger",
    );
    store.release_task(task.id, "w1").await?;
    assert_lease_lost(
        store.heartbeat(task.id, "w1", LONG).await,
        "heartbeat after release",
    );
    assert_lease_lost(store.release_task(task.id, "w1").await, "second release");
    let record = store.get_task("alice", task.id).await?;
    let record = record.unwrap_or_else(|| panic!("task vanished"));
    assert_eq!(
        record.state,
        TaskState::Pending {
            progress: None,
            preview: None
        }
    );
    let again = claim_run(store, "w2", LONG).await?;
    assert_eq!(
        (again.id, again.attempts),
        (task.id, 1),
        "released runs are not counted"
    );
    Ok(())
}

/// Heartbeats extend the lease only while it is held; progress is recorded and bounded.
pub async fn heartbeat_and_progress(store: &dyn Store) -> Result<()> {
    let key = tenant_with_key(store, "alice").await?;
    let task = task_for(&key, "steady");
    store.insert_task(task.clone()).await?;

    let claimed = claim_run(store, "w", LONG).await?;
    let progress = |record: Option<crate::TaskRecord>| record.map(|r| r.state);
    assert_eq!(
        progress(store.get_task("alice", task.id).await?),
        Some(TaskState::Pending {
            progress: Some(0.0),
            preview: None,
        })
    );
    store.heartbeat(claimed.id, "w", LONG).await?;
    store.set_progress(claimed.id, "w", 0.5).await?;
    assert_eq!(
        progress(store.get_task("alice", task.id).await?),
        Some(TaskState::Pending {
            progress: Some(0.5),
            preview: None,
        })
    );
    for bad in [-0.1, 1.5, f64::NAN] {
        let set = store.set_progress(claimed.id, "w", bad).await;
        assert!(matches!(set, Err(StoreError::Invalid(_))), "{bad}: {set:?}");
    }
    assert_lease_lost(
        store.heartbeat(claimed.id, "intruder", LONG).await,
        "intruder",
    );
    assert_lease_lost(
        store.set_progress(Uuid::new_v4(), "w", 0.1).await,
        "unknown",
    );

    // A lease that has run out is lost even before anyone else claims the task.
    store.heartbeat(claimed.id, "w", Duration::ZERO).await?;
    assert_lease_lost(store.heartbeat(claimed.id, "w", LONG).await, "expired");
    assert_lease_lost(store.set_progress(claimed.id, "w", 0.9).await, "expired");
    let again = claim_run(store, "w2", LONG).await?;
    assert_eq!((again.id, again.attempts), (task.id, 2));
    Ok(())
}

/// Each final status reads back with its data, ends the task's lease and frees its slot.
pub async fn completions(store: &dyn Store) -> Result<()> {
    let key = tenant_with_key(store, "alice").await?;
    for i in 0..4 {
        store
            .insert_task(task_for(&key, &format!("cat {i}")))
            .await?;
    }
    let mut claimed = Vec::new();
    for _ in 0..4 {
        claimed.push(claim_run(store, "w", LONG).await?);
    }
    let [ok, request, content, failed] = [0, 1, 2, 3].map(|i| claimed[i].id);
    store
        .complete_ready(ok, "w", ready("samples/ok.jpeg"), None)
        .await?;
    let reasons = vec!["Prompt flagged".to_owned(), "second reason".to_owned()];
    store
        .complete_moderated(request, "w", ModerationKind::Request, reasons.clone(), None)
        .await?;
    store
        .complete_moderated(content, "w", ModerationKind::Content, vec![], None)
        .await?;
    let outcome = store
        .complete_error(
            failed,
            "w",
            "image prompt is not an image".into(),
            false,
            None,
        )
        .await?;
    assert_eq!(outcome, ErrorOutcome::Failed);

    let expect = [
        (ok, TaskState::Ready(ready("samples/ok.jpeg")), "Ready"),
        (
            request,
            TaskState::Moderated {
                kind: ModerationKind::Request,
                reasons,
            },
            "Request Moderated",
        ),
        (
            content,
            TaskState::Moderated {
                kind: ModerationKind::Content,
                reasons: vec![],
            },
            "Content Moderated",
        ),
        (
            failed,
            TaskState::Error {
                details: "image prompt is not an image".into(),
            },
            "Error",
        ),
    ];
    for (id, state, wire) in expect {
        let record = store.get_task("alice", id).await?;
        let record = record.unwrap_or_else(|| panic!("task {id} vanished"));
        assert_eq!(record.state, state);
        assert_eq!(record.state.status().as_str(), wire);
        assert_ne!(record.state.status(), TaskStatus::Pending);
        assert!(record.finished_at.is_some());
        // Finished means finished: a second completion is refused.
        let twice = store
            .complete_error(id, "w", "late".into(), false, None)
            .await;
        assert_lease_lost(twice, "second completion");
    }
    assert_eq!(store.count_unfinished(key.key_id).await?, 0);
    Ok(())
}

/// A retryable failure re-queues the task (no webhook) until its runs are used up.
pub async fn retryable_errors(store: &dyn Store) -> Result<()> {
    let key = tenant_with_key(store, "alice").await?;
    let task = task_for(&key, "flaky");
    store.insert_task(task.clone()).await?;
    let mut attempts = 0;
    loop {
        let claimed = claim_run(store, "w", LONG).await?;
        attempts += 1;
        assert_eq!(claimed.attempts, attempts);
        let outcome = store
            .complete_error(
                task.id,
                "w",
                format!("GPU busy ({attempts})"),
                true,
                Some(webhook(task.id)),
            )
            .await?;
        if attempts < claimed.max_attempts {
            assert_eq!(outcome, ErrorOutcome::Requeued { attempts });
            let record = store.get_task("alice", task.id).await?;
            let record = record.unwrap_or_else(|| panic!("task vanished"));
            assert_eq!(
                record.state,
                TaskState::Pending {
                    progress: None,
                    preview: None
                }
            );
            assert_eq!(record.last_error, Some(format!("GPU busy ({attempts})")));
            let early = store.claim_due_webhooks("d", 10, LONG).await?;
            assert!(early.is_empty(), "webhook before the task was final");
        } else {
            assert_eq!(outcome, ErrorOutcome::Failed);
            break;
        }
    }
    let record = store.get_task("alice", task.id).await?;
    assert_eq!(
        record.map(|r| r.state),
        Some(TaskState::Error {
            details: format!("GPU busy ({attempts})")
        })
    );
    let sent = store.claim_due_webhooks("d", 10, LONG).await?;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].task_id, task.id);
    Ok(())
}

/// A lease that runs out on the clock (not a zero lease) makes the task claimable again, with
/// one more attempt; until then it is not, and afterwards the first worker can write nothing.
pub async fn expired_lease_is_reclaimable(store: &dyn Store) -> Result<()> {
    let key = tenant_with_key(store, "alice").await?;
    let task = task_for(&key, "slow worker");
    store.insert_task(task.clone()).await?;
    let lease = Duration::from_millis(300);
    let first = claim_run(store, "w1", lease).await?;
    assert_eq!(first.id, task.id);
    assert_eq!(store.claim_next("w2", LONG).await?, None, "leased");
    store.heartbeat(task.id, "w1", lease).await?;
    tokio::time::sleep(lease * 2).await;
    let second = claim_run(store, "w2", LONG).await?;
    assert_eq!((second.id, second.attempts), (task.id, 2));
    assert_lease_lost(store.heartbeat(task.id, "w1", LONG).await, "late heartbeat");
    let late = store
        .complete_ready(task.id, "w1", ready("samples/late.jpeg"), None)
        .await;
    assert_lease_lost(late, "late completion");
    store
        .complete_ready(task.id, "w2", ready("samples/w2.jpeg"), None)
        .await?;
    let record = store.get_task("alice", task.id).await?;
    assert_eq!(
        record.map(|r| r.state),
        Some(TaskState::Ready(ready("samples/w2.jpeg")))
    );
    Ok(())
}
