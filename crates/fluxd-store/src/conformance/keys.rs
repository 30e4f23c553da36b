//! Conformance: API keys and fine-tune records.

use std::time::{Duration, UNIX_EPOCH};

use crate::conformance::tenant_with_key;
use crate::{FinetuneRecord, Result, Store, StoreError, DEFAULT_MAX_ACTIVE_TASKS, KEY_PREFIX};

/// Keys: the plaintext authenticates, near misses do not, revocation sticks, limits are per key,
/// and operators see keys without their secrets.
pub async fn keys(store: &dyn Store) -> Result<()> {
    let alice = tenant_with_key(store, "alice").await?;
    let bob = tenant_with_key(store, "bob").await?;
    assert!(alice.key.starts_with(KEY_PREFIX), "{}", alice.prefix);
    assert!(alice.key.len() >= KEY_PREFIX.len() + 32);
    assert!(alice.key.starts_with(&alice.prefix));
    assert!(alice.prefix.len() < alice.key.len());
    assert_ne!(alice.key, bob.key);

    let info = store.authenticate(&alice.key).await?;
    let info = info.unwrap_or_else(|| panic!("a fresh key must authenticate"));
    assert_eq!(info.key_id, alice.key_id);
    assert_eq!(info.tenant, "alice");
    assert_eq!(info.max_active_tasks, DEFAULT_MAX_ACTIVE_TASKS);

    // Same lookup prefix, different secret: found by prefix, refused by the hash comparison.
    let last = alice.key.chars().last().unwrap_or('0');
    let mut forged = alice.key[..alice.key.len() - 1].to_owned();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(store.authenticate(&forged).await?, None);
    for malformed in ["", "fxd_", "not-a-key", &alice.key[..alice.key.len() - 1]] {
        assert_eq!(store.authenticate(malformed).await?, None, "{malformed:?}");
    }
    let padded = format!("{} ", alice.key);
    assert_eq!(store.authenticate(&padded).await?, None);

    assert!(store.set_max_active_tasks(alice.key_id, 3).await?);
    let info = store.authenticate(&alice.key).await?;
    assert_eq!(info.map(|i| i.max_active_tasks), Some(3));
    let info = store.authenticate(&bob.key).await?;
    assert_eq!(
        info.map(|i| i.max_active_tasks),
        Some(DEFAULT_MAX_ACTIVE_TASKS)
    );

    let second = store.create_key("alice", None).await?;
    assert!(store.revoke_key(alice.key_id).await?);
    assert!(!store.revoke_key(alice.key_id).await?, "revoking twice");
    assert!(
        !store.revoke_key(uuid::Uuid::new_v4()).await?,
        "unknown key"
    );
    assert_eq!(store.authenticate(&alice.key).await?, None);
    let still = store.authenticate(&second.key).await?;
    assert_eq!(still.map(|i| i.tenant), Some("alice".to_owned()));
    assert!(!store.set_max_active_tasks(uuid::Uuid::new_v4(), 5).await?);

    let listed = store.list_keys("alice").await?;
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].key_id, alice.key_id);
    assert_eq!(listed[0].label.as_deref(), Some("conformance"));
    assert_eq!(listed[0].prefix, alice.prefix);
    assert_eq!(listed[0].max_active_tasks, 3);
    assert!(listed[0].revoked_at.is_some());
    assert_eq!(listed[1].key_id, second.key_id);
    assert_eq!(listed[1].label, None);
    assert!(listed[1].revoked_at.is_none());
    assert_eq!(store.list_keys("nobody").await?, vec![]);

    for bad in ["", "a/b"] {
        let made = store.create_key(bad, None).await;
        assert!(
            matches!(made, Err(StoreError::Invalid(_))),
            "{bad:?}: {made:?}"
        );
    }
    Ok(())
}

fn finetune(tenant: &str, id: &str, shared: bool) -> FinetuneRecord {
    FinetuneRecord {
        tenant: tenant.into(),
        id: id.into(),
        format: "kohya".into(),
        rank: 16,
        alpha: Some(8.0),
        base_hidden: Some(3072),
        trigger_word: Some("TOK".into()),
        comment: Some(format!("{tenant}'s {id}")),
        blob_key: format!("finetunes/{tenant}/{id}.safetensors"),
        size_bytes: 5_000_000_123,
        sha256: "ab".repeat(32),
        created_at: UNIX_EPOCH + Duration::from_millis(1_764_000_000_123),
        shared,
    }
}

/// Fine-tunes: private by default, visible to others as `<owner>/<name>` only when shared,
/// deletable only by their owner.
pub async fn finetunes(store: &dyn Store) -> Result<()> {
    let style = finetune("alice", "style", false);
    let public = FinetuneRecord {
        created_at: style.created_at + Duration::from_secs(1),
        alpha: None,
        base_hidden: None,
        trigger_word: None,
        comment: None,
        ..finetune("alice", "public", true)
    };
    store.insert_finetune(style.clone()).await?;
    store.insert_finetune(public.clone()).await?;
    assert_eq!(store.list_finetunes("alice").await?, ["style", "public"]);
    assert_eq!(store.list_finetunes("bob").await?, Vec::<String>::new());

    let duplicate = store
        .insert_finetune(finetune("alice", "style", true))
        .await;
    assert!(
        matches!(duplicate, Err(StoreError::Conflict(_))),
        "{duplicate:?}"
    );
    // Names are per tenant.
    // Times are kept to the millisecond; a whole-millisecond time reads back equal.
    let bobs = FinetuneRecord {
        created_at: UNIX_EPOCH + Duration::from_millis(1_764_000_005_001),
        ..finetune("bob", "style", false)
    };
    store.insert_finetune(bobs.clone()).await?;

    assert_eq!(
        store.get_finetune("alice", "style").await?,
        Some(style.clone())
    );
    assert_eq!(
        store.get_finetune("alice", "alice/style").await?,
        Some(style.clone())
    );
    assert_eq!(
        store.get_finetune("bob", "style").await?,
        Some(bobs.clone())
    );
    assert_eq!(
        store.get_finetune("bob", "alice/style").await?,
        None,
        "not shared"
    );
    assert_eq!(
        store.get_finetune("bob", "alice/public").await?,
        Some(public.clone())
    );
    assert_eq!(store.get_finetune("bob", "public").await?, None);
    assert_eq!(store.get_finetune("carol", "alice/missing").await?, None);
    assert_eq!(store.get_finetune("carol", "").await?, None);

    assert_eq!(store.delete_finetune("bob", "alice/public").await?, None);
    assert_eq!(store.delete_finetune("bob", "public").await?, None);
    assert_eq!(store.delete_finetune("alice", "style").await?, Some(style));
    assert_eq!(store.delete_finetune("alice", "style").await?, None);
    assert_eq!(store.list_finetunes("alice").await?, ["public"]);
    assert_eq!(store.list_finetunes("bob").await?, ["style"]);
    Ok(())
}
