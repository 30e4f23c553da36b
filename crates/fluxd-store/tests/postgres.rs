//! The conformance suite against a real PostgreSQL server, plus what only this backend has:
//! several stores (nodes) on one database, wake-ups through `LISTEN/NOTIFY`, connection loss,
//! concurrent migrations and schema versioning.
//!
//! The server is the one `scripts/services/postgres.sh` starts (`scripts/test.sh` does, and
//! exports its URL as `FLUXD_TEST_POSTGRES_URL`). Each test works in a schema of its own, so the
//! tests run in parallel on one database.

use std::time::Duration;

use fluxd_store::conformance::{self, FlakyLink, TestSchema};
use fluxd_store::{
    Claim, InsertOutcome, NewTask, PostgresOptions, PostgresStore, Store, StoreError, Wakeup,
    Wakeups,
};
use sqlx::Connection;
use uuid::Uuid;

type Result<T = ()> = std::result::Result<T, StoreError>;

fn db(err: sqlx::Error) -> StoreError {
    StoreError::Database(std::sync::Arc::new(err))
}

async fn fresh() -> Result<(TestSchema, Box<dyn Store>)> {
    let schema = TestSchema::new().await?;
    let store = schema.open().await?;
    Ok((schema, store))
}

/// Four stores (four nodes) on one new schema.
async fn fresh_many() -> Result<(TestSchema, Vec<Box<dyn Store>>)> {
    let schema = TestSchema::new().await?;
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(schema.open().await?);
    }
    Ok((schema, stores))
}

fluxd_store::conformance_tests!(fresh: fresh(), fresh_many: fresh_many());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durability_across_reconnect() -> Result {
    let schema = TestSchema::new().await?;
    conformance::durability(|| schema.open()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_on_fresh_schemas() -> Result {
    conformance::run_all(|| async { Ok(fresh().await?.1) }).await
}

/// Nodes starting together on a new database: one applies the schema, the others wait for it
/// and find it done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_migrate_a_new_database_together() -> Result {
    let schema = TestSchema::new().await?;
    let opened = futures_util::future::join_all((0..4).map(|_| schema.open())).await;
    let stores: Vec<Box<dyn Store>> = opened.into_iter().collect::<Result<_>>()?;
    let key = stores[0].create_key("alice", None).await?;
    assert!(stores[3].authenticate(&key.key).await?.is_some());
    for store in stores {
        store.close().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_is_refused() -> Result {
    let schema = TestSchema::new().await?;
    schema.open().await?.close().await;
    let mut conn = sqlx::PgConnection::connect(&schema.url())
        .await
        .map_err(db)?;
    sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES (99, 0)")
        .execute(&mut conn)
        .await
        .map_err(db)?;
    let reopened = PostgresStore::connect(&schema.url()).await;
    assert!(
        matches!(
            reopened,
            Err(StoreError::SchemaTooNew {
                found: 99,
                supported: 5
            })
        ),
        "{:?}",
        reopened.err()
    );
    Ok(())
}

/// The next wake-up other than [`Wakeup::Missed`] (the listener's hello on connecting), within
/// a generous time.
async fn next_wakeup(wakeups: &mut Wakeups) -> Option<Wakeup> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, wakeups.next()).await {
            Ok(Some(Wakeup::Missed)) => continue,
            Ok(other) => return other,
            Err(_) => return None,
        }
    }
}

fn task(key: &fluxd_store::NewKey) -> NewTask {
    NewTask {
        id: Uuid::new_v4(),
        tenant: key.tenant.clone(),
        key_id: key.key_id,
        params: serde_json::json!({ "prompt": "a cat" }),
        finetune_id: None,
        webhook_url: Some("https://hooks.example.com/x".into()),
        webhook_secret: None,
        cost: None,
    }
}

/// A worker node subscribed to wake-ups hears of a task queued, and of a webhook made due, by
/// another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_nodes_wake_up_through_notify() -> Result {
    let schema = TestSchema::new().await?;
    let api = schema.open().await?;
    let worker = schema.open().await?;
    let mut wakeups = worker
        .subscribe()
        .unwrap_or_else(|| panic!("PostgreSQL offers wake-ups"));
    // The listener greets with Missed once it listens; only then can nothing be missed.
    assert_eq!(wakeups.next().await, Some(Wakeup::Missed));

    let key = api.create_key("alice", None).await?;
    let queued = task(&key);
    api.insert_task(queued.clone()).await?;
    assert_eq!(next_wakeup(&mut wakeups).await, Some(Wakeup::TaskQueued));

    let Some(Claim::Run(claimed)) = worker.claim_next("w", Duration::from_secs(60)).await? else {
        panic!("the queued task must be claimable");
    };
    let hook = fluxd_store::NewWebhook {
        url: "https://hooks.example.com/x".into(),
        secret: None,
        payload: serde_json::json!({ "id": claimed.id.to_string() }),
        webhook_id: "msg_1".into(),
    };
    // The worker's own completion wakes the senders of every node, its own included.
    worker
        .complete_error(claimed.id, "w", "bad".into(), false, Some(hook))
        .await?;
    assert_eq!(next_wakeup(&mut wakeups).await, Some(Wakeup::WebhookDue));

    api.close().await;
    worker.close().await;
    assert_eq!(
        wakeups.next().await,
        None,
        "closing the store ends the stream"
    );
    Ok(())
}

/// While the database cannot be reached, calls fail as retryable (`Unavailable`, which the
/// server answers with 503) within the acquire timeout, and work again once it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_is_retryable_and_recovers() -> Result {
    let schema = TestSchema::new().await?;
    let server_addr = schema.server_addr()?;
    let link = FlakyLink::start(server_addr)
        .map_err(|e| StoreError::Unavailable(std::sync::Arc::new(e)))?;
    let options = PostgresOptions {
        acquire_timeout: Duration::from_secs(2),
        ..PostgresOptions::default()
    };
    let store = PostgresStore::connect_with(&schema.url_via(Some(link.addr())), options).await?;
    let key = store.create_key("alice", None).await?;
    store.insert_task(task(&key)).await?;

    link.cut();
    for _ in 0..3 {
        let submit = store.insert_task_if_under_limit(task(&key), 24).await;
        let read = store.count_unfinished(key.key_id).await;
        for failed in [submit.err(), read.err()] {
            match failed {
                Some(err) => assert!(err.is_retryable(), "{err:?}"),
                None => panic!("a call succeeded without a database"),
            }
        }
    }

    link.restore();
    let outcome = store.insert_task_if_under_limit(task(&key), 24).await?;
    assert_eq!(outcome, InsertOutcome::Inserted);
    // Exactly the two tasks that were acknowledged: nothing half-written during the cut.
    assert_eq!(store.count_unfinished(key.key_id).await?, 2);
    store.close().await;
    Ok(())
}

/// A link that swallows every packet (no reset, no answer) does not hang calls: each fails as
/// retryable once the call time limit passes, the connections it held are given up instead of
/// keeping the pool's slots, and calls work again when the link comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_link_times_out_and_recovers() -> Result {
    let schema = TestSchema::new().await?;
    let link = FlakyLink::start(schema.server_addr()?)
        .map_err(|e| StoreError::Unavailable(std::sync::Arc::new(e)))?;
    let options = PostgresOptions {
        max_connections: 2,
        call_timeout: Duration::from_millis(500),
        ..PostgresOptions::default()
    };
    let store = PostgresStore::connect_with(&schema.url_via(Some(link.addr())), options).await?;
    let key = store.create_key("alice", None).await?;
    store.insert_task(task(&key)).await?;
    let claimed = store
        .claim_next("w", Duration::from_secs(60))
        .await?
        .expect("the task")
        .task()
        .id;

    link.pause();
    // More calls than the pool has connections: none may wait for a slot a hung call holds.
    for _ in 0..3 {
        let submit = store.insert_task_if_under_limit(task(&key), 24).await;
        let read = store.count_unfinished(key.key_id).await;
        let heartbeat = store.heartbeat(claimed, "w", Duration::from_secs(60)).await;
        for failed in [submit.err(), read.err(), heartbeat.err()] {
            match failed {
                Some(err) => assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}"),
                None => panic!("a call succeeded through a black hole"),
            }
        }
    }

    link.resume();
    store
        .heartbeat(claimed, "w", Duration::from_secs(60))
        .await?;
    let outcome = store.insert_task_if_under_limit(task(&key), 24).await?;
    assert_eq!(outcome, InsertOutcome::Inserted);
    store.close().await;
    Ok(())
}

/// Submits that arrive together share a batch (one statement): each still gets its own
/// outcome — admitted by rank within its key's limit, refused at the limit, an unknown key
/// refused alone, and a duplicate id (which refuses the whole statement, so the batch goes again
/// one by one) refused alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_submits_keep_their_own_outcomes() -> Result {
    let (_schema, store) = fresh().await?;
    let a = store.create_key("alice", None).await?;
    let b = store.create_key("bob", None).await?;
    let taken = task(&a);
    store.insert_task(taken.clone()).await?;
    let mut ghost = task(&a);
    ghost.key_id = Uuid::new_v4();
    let submit_all = |submits: Vec<(NewTask, u32)>| {
        let store = store.as_ref();
        async move {
            let outcomes = futures_util::future::join_all(
                submits
                    .iter()
                    .map(|(t, limit)| store.insert_task_if_under_limit(t.clone(), *limit)),
            )
            .await;
            submits.into_iter().zip(outcomes).collect::<Vec<_>>()
        }
    };

    let mut submits = vec![(ghost, 3)];
    for _ in 0..12 {
        submits.push((task(&a), 3));
        submits.push((task(&b), 5));
    }
    let outcomes = submit_all(submits).await;
    assert!(
        matches!(outcomes[0].1, Err(StoreError::Invalid(_))),
        "{:?}",
        outcomes[0].1
    );
    let mut inserted = [0, 0];
    for ((t, limit), outcome) in &outcomes[1..] {
        let k = usize::from(t.key_id == b.key_id);
        match outcome {
            Ok(InsertOutcome::Inserted) => inserted[k] += 1,
            Ok(InsertOutcome::LimitReached { active }) => assert_eq!(active, limit),
            other => panic!("{other:?}"),
        }
    }
    // Alice had one queued already.
    assert_eq!(inserted, [2, 5]);

    // (The duplicate's limit leaves room: refused for its id, never for its key's count.)
    let mut submits = vec![(taken, 100)];
    for _ in 0..6 {
        submits.push((task(&b), 8));
    }
    let outcomes = submit_all(submits).await;
    assert!(
        matches!(outcomes[0].1, Err(StoreError::Conflict(_))),
        "{:?}",
        outcomes[0].1
    );
    let admitted = outcomes[1..]
        .iter()
        .filter(|(_, o)| matches!(o, Ok(InsertOutcome::Inserted)))
        .count();
    assert_eq!(admitted, 3);
    assert_eq!(store.count_unfinished(a.key_id).await?, 3);
    assert_eq!(store.count_unfinished(b.key_id).await?, 8);
    store.close().await;
    Ok(())
}
