//! Conformance: several stores on one database, as several API nodes and workers use it. Each
//! function takes stores opened on the same, empty database (each with its own connections).

use std::collections::HashMap;
use std::time::Duration;

use futures_util::future::join_all;
use uuid::Uuid;

use crate::conformance::{ready, task_for, tenant_with_key};
use crate::{Claim, InsertOutcome, Result, Store, TaskState};

const LONG: Duration = Duration::from_secs(3600);

/// Concurrent workers on every store drain one queue: each task is handed out exactly once and
/// finished by the worker that got it.
pub async fn claims_across_stores(stores: &[&dyn Store]) -> Result<()> {
    assert!(!stores.is_empty());
    let key = tenant_with_key(stores[0], "alice").await?;
    let mut submitted = Vec::new();
    for i in 0..60 {
        let task = task_for(&key, &format!("cat {i}"));
        submitted.push(task.id);
        stores[i % stores.len()].insert_task(task).await?;
    }
    // Eight workers per store, each claiming and finishing until the queue is empty.
    let workers = (0..stores.len() * 8).map(|w| async move {
        let store = stores[w % stores.len()];
        let worker = format!("worker-{w}");
        let mut done = Vec::new();
        while let Some(claim) = store.claim_next(&worker, LONG).await? {
            let task = match claim {
                Claim::Run(task) => task,
                Claim::Exhausted(task) => panic!("fresh task exhausted: {task:?}"),
            };
            assert_eq!(task.attempts, 1, "task {} claimed twice", task.id);
            store
                .complete_ready(task.id, &worker, ready("samples/x.jpeg"), None)
                .await?;
            done.push(task.id);
        }
        Ok::<_, crate::StoreError>(done)
    });
    let mut claimed: HashMap<Uuid, usize> = HashMap::new();
    for done in join_all(workers).await {
        for id in done? {
            *claimed.entry(id).or_default() += 1;
        }
    }
    assert_eq!(claimed.len(), submitted.len());
    assert!(claimed.values().all(|&n| n == 1), "{claimed:?}");
    for id in submitted {
        let record = stores[0].get_task("alice", id).await?;
        assert_eq!(
            record.map(|r| r.state),
            Some(TaskState::Ready(ready("samples/x.jpeg")))
        );
    }
    assert_eq!(stores[0].count_unfinished(key.key_id).await?, 0);
    Ok(())
}

/// Concurrent submits of one key through every store never pass its limit together.
pub async fn limit_across_stores(stores: &[&dyn Store]) -> Result<()> {
    assert!(!stores.is_empty());
    let key = tenant_with_key(stores[0], "alice").await?;
    let limit = 10;
    let submits = (0..stores.len() * 20).map(|i| {
        let task = task_for(&key, &format!("cat {i}"));
        stores[i % stores.len()].insert_task_if_under_limit(task, limit)
    });
    let mut inserted = 0;
    for outcome in join_all(submits).await {
        match outcome? {
            InsertOutcome::Inserted => inserted += 1,
            InsertOutcome::LimitReached { active } => assert_eq!(active, limit),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(inserted, limit);
    for store in stores {
        assert_eq!(store.count_unfinished(key.key_id).await?, limit);
    }
    // Finishing one, through another store, frees exactly one slot for everyone.
    let last = stores[stores.len() - 1];
    let Some(Claim::Run(task)) = last.claim_next("w", LONG).await? else {
        panic!("a queued task must be claimable");
    };
    last.complete_ready(task.id, "w", ready("samples/y.jpeg"), None)
        .await?;
    let again = (0..stores.len() * 4).map(|i| {
        let task = task_for(&key, &format!("again {i}"));
        stores[i % stores.len()].insert_task_if_under_limit(task, limit)
    });
    let outcomes = join_all(again).await;
    let inserted = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(InsertOutcome::Inserted)))
        .count();
    assert_eq!(inserted, 1);
    Ok(())
}

/// A shared secret is created once: concurrent first calls through every store get the same
/// bytes, later calls read them back, and another name is another secret.
pub async fn shared_secrets(stores: &[&dyn Store]) -> Result<()> {
    assert!(!stores.is_empty());
    let first = join_all(
        stores
            .iter()
            .flat_map(|store| [*store; 4])
            .map(|store| store.shared_secret("url-signing")),
    )
    .await;
    let first: Vec<_> = first.into_iter().collect::<Result<_>>()?;
    assert!(first.windows(2).all(|pair| pair[0] == pair[1]));
    assert_ne!(first[0], [0; crate::SHARED_SECRET_LEN], "not random");
    for store in stores {
        assert_eq!(store.shared_secret("url-signing").await?, first[0]);
    }
    let other = stores[0].shared_secret("another").await?;
    assert_ne!(other, first[0]);
    let empty = stores[0].shared_secret("").await;
    assert!(
        matches!(empty, Err(crate::StoreError::Invalid(_))),
        "{empty:?}"
    );
    Ok(())
}
