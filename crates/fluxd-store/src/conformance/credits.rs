//! Conformance: credits (balances, prices, the debit at submit and the refund of unpaid
//! outcomes).

use std::time::Duration;

use futures_util::future::join_all;

use crate::conformance::{ready, task_for, tenant_with_key};
use crate::{
    CancelOutcome, Claim, InsertOutcome, ModerationKind, NewTask, Price, Result, Store, StoreError,
};

/// A lease long enough never to run out during a test.
const LONG: Duration = Duration::from_secs(3600);

/// A task costing `cost` thousandths of a credit.
fn costing(task: NewTask, cost: i64) -> NewTask {
    NewTask {
        cost: Some(cost),
        ..task
    }
}

/// Balances are set, added to and removed; prices likewise. A submit debits with its insert,
/// only what the balance can pay; `Ready` keeps the charge, `Error` and moderation refund it; an
/// unlimited tenant is never charged.
pub async fn credits(store: &dyn Store) -> Result<()> {
    let alice = tenant_with_key(store, "alice").await?;
    let bob = tenant_with_key(store, "bob").await?;
    assert_eq!(store.credits("alice").await?, None);

    // Operators' side.
    store.set_credits("alice", Some(10_000)).await?;
    assert_eq!(store.credits("alice").await?, Some(10_000));
    assert_eq!(store.add_credits("alice", 2_500).await?, 12_500);
    let below = store.add_credits("alice", -20_000).await;
    assert!(matches!(below, Err(StoreError::Invalid(_))), "{below:?}");
    assert_eq!(store.credits("alice").await?, Some(12_500));
    // A tenant with no key yet, and one without a balance that is given some.
    assert_eq!(store.add_credits("carol", 1_000).await?, 1_000);
    assert_eq!(
        store.list_credits().await?,
        [("alice".to_owned(), 12_500), ("carol".to_owned(), 1_000)]
    );
    store.set_credits("carol", None).await?;
    assert_eq!(store.credits("carol").await?, None);
    let negative = store.set_credits("carol", Some(-1)).await;
    assert!(
        matches!(negative, Err(StoreError::Invalid(_))),
        "{negative:?}"
    );

    let price = Price {
        per_task: 1_000,
        per_megapixel: 2_000,
    };
    store.set_price("flux-dev", Some(price)).await?;
    store
        .set_price(
            "flux-pro",
            Some(Price {
                per_task: 5,
                per_megapixel: 0,
            }),
        )
        .await?;
    store.set_price("flux-pro", None).await?;
    assert_eq!(store.prices().await?, [("flux-dev".to_owned(), price)]);

    // Debits: 4 000 each, 12 500 pays three; the fourth is refused and writes nothing.
    let mut paid = Vec::new();
    for i in 0..3 {
        let task = costing(task_for(&alice, &format!("paid {i}")), 4_000);
        paid.push(task.id);
        let outcome = store.insert_task_if_under_limit(task, 24).await?;
        assert_eq!(outcome, InsertOutcome::Inserted);
    }
    assert_eq!(store.credits("alice").await?, Some(500));
    let refused = costing(task_for(&alice, "refused"), 4_000);
    let outcome = store
        .insert_task_if_under_limit(refused.clone(), 24)
        .await?;
    assert_eq!(outcome, InsertOutcome::InsufficientCredits { balance: 500 });
    assert_eq!(store.get_task("alice", refused.id).await?, None);
    assert_eq!(store.count_unfinished(alice.key_id).await?, 3);
    // Free tasks pass whatever the balance.
    let free = task_for(&alice, "free");
    assert_eq!(
        store.insert_task_if_under_limit(free, 24).await?,
        InsertOutcome::Inserted
    );
    // Unlimited tenants are never charged.
    let bobs = costing(task_for(&bob, "unlimited"), 1_000_000);
    assert_eq!(
        store.insert_task_if_under_limit(bobs, 24).await?,
        InsertOutcome::Inserted
    );
    assert_eq!(store.credits("bob").await?, None);

    // Outcomes: Ready keeps the charge, Error and moderation give it back, a retry does not.
    while let Some(claim) = store.claim_next("w", LONG).await? {
        assert!(matches!(claim, Claim::Run(_)), "{claim:?}");
    }
    store
        .complete_ready(paid[0], "w", ready("samples/a.jpeg"), None)
        .await?;
    assert_eq!(store.credits("alice").await?, Some(500));
    store
        .complete_error(paid[1], "w", "transient".into(), true, None)
        .await?;
    assert_eq!(store.credits("alice").await?, Some(500));
    store.claim_next("w", LONG).await?;
    store
        .complete_error(paid[1], "w", "bad input".into(), false, None)
        .await?;
    assert_eq!(store.credits("alice").await?, Some(4_500));
    store
        .complete_moderated(
            paid[2],
            "w",
            ModerationKind::Content,
            vec!["nsfw".into()],
            None,
        )
        .await?;
    assert_eq!(store.credits("alice").await?, Some(8_500));

    // A cancelled queued task is refunded with its cancel.
    let queued = costing(task_for(&alice, "cancelled"), 4_000);
    store.insert_task_if_under_limit(queued.clone(), 24).await?;
    assert_eq!(store.credits("alice").await?, Some(4_500));
    let cancelled = store
        .cancel_task("alice", queued.id, "cancelled".into(), None)
        .await?;
    assert_eq!(cancelled, CancelOutcome::Cancelled);
    assert_eq!(store.credits("alice").await?, Some(8_500));
    Ok(())
}

/// 50 concurrent submits costing 1 000 each against a balance of 24 500: exactly 24 get in, the
/// balance ends at 500, and never goes below 0.
pub async fn concurrent_debits(store: &dyn Store) -> Result<()> {
    let key = tenant_with_key(store, "alice").await?;
    store.set_credits("alice", Some(24_500)).await?;
    let submits = (0..50).map(|i| {
        let task = costing(task_for(&key, &format!("cat {i}")), 1_000);
        store.insert_task_if_under_limit(task, 100)
    });
    let mut inserted = 0;
    for outcome in join_all(submits).await {
        match outcome? {
            InsertOutcome::Inserted => inserted += 1,
            InsertOutcome::InsufficientCredits { balance } => assert!(balance < 1_000),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(inserted, 24);
    assert_eq!(store.credits("alice").await?, Some(500));
    assert_eq!(store.count_unfinished(key.key_id).await?, 24);
    Ok(())
}
