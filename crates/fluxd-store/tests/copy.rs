//! `fluxd store copy`'s engine between real backends: a store with every kind of record in every
//! state, copied SQLite -> PostgreSQL and PostgreSQL -> SQLite, must read back the same row for
//! row (full dumps compared), with its blobs byte for byte, and behave the same (keys, limits,
//! the queue, the outbox); the source is left untouched, a second run copies nothing, an
//! interrupted run finishes, and a copy onto itself is refused.
//!
//! PostgreSQL and S3 are the test servers `scripts/test.sh` starts (see `tests/postgres.rs`).

use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use fluxd_store::conformance::{test_s3_url, TestSchema};
use fluxd_store::copy::{self, CopyReport, Imported, Record, RecordKind, PAGE};
use fluxd_store::{
    BlobStore, Claim, DatabaseUrl, FinetuneRecord, ModerationKind, NewKey, NewTask, NewWebhook,
    ReadyRecord, SqliteStore, Store, StoreError,
};
use sha2::{Digest, Sha256};
use uuid::Uuid;

type Result<T = ()> = std::result::Result<T, StoreError>;

fn io(err: std::io::Error) -> StoreError {
    StoreError::Unavailable(std::sync::Arc::new(err))
}

const LEASE: Duration = Duration::from_secs(3600);

/// What [`populate`] made that the checks need.
struct Made {
    key: NewKey,
    revoked: NewKey,
    running: Uuid,
    queued: [Uuid; 2],
    secret: [u8; 32],
    blob_keys: Vec<String>,
}

fn task(key: &NewKey, n: usize, webhook: bool) -> NewTask {
    NewTask {
        id: Uuid::new_v4(),
        tenant: key.tenant.clone(),
        key_id: key.key_id,
        params: serde_json::json!({ "prompt": format!("fox {n}"), "seed": n, "width": 256 }),
        finetune_id: n.is_multiple_of(2).then(|| "style".to_owned()),
        webhook_url: webhook.then(|| "https://hooks.example.com/in".to_owned()),
        webhook_secret: webhook.then(|| format!("whsec-{n}")),
        cost: None,
    }
}

fn hook(task: Uuid, n: usize) -> NewWebhook {
    NewWebhook {
        url: "https://hooks.example.com/in".into(),
        secret: Some(format!("whsec-{n}")),
        payload: serde_json::json!({ "id": task.to_string(), "status": "Ready", "n": n }),
        webhook_id: format!("msg_{}", task.simple()),
    }
}

async fn claim(store: &dyn Store) -> Result<Uuid> {
    match store.claim_next("worker-1", LEASE).await? {
        Some(Claim::Run(task)) => Ok(task.id),
        other => panic!("expected a task to run, got {other:?}"),
    }
}

/// A store with every kind of record in every state, through the trait as the service writes
/// it, and the blobs its records name.
async fn populate(store: &dyn Store, blobs: &BlobStore) -> Result<Made> {
    let key = store.create_key("acme", Some("ci")).await?;
    let revoked = store.create_key("acme", None).await?;
    let other = store.create_key("globex", None).await?;
    store.revoke_key(revoked.key_id).await?;
    store.set_max_active_tasks(key.key_id, 7).await?;
    // Credits: a balance, a price, and an unfinished task that was charged (copying it must not
    // debit the balance again).
    store.set_credits("acme", Some(50_000)).await?;
    let price = fluxd_store::Price {
        per_task: 1_000,
        per_megapixel: 250,
    };
    store.set_price("flux-dev", Some(price)).await?;

    // Two LoRA files, one shared; a few chunks' worth would be slow, a part boundary is tested
    // in blob.rs.
    let mut blob_keys = Vec::new();
    for (tenant, name, shared) in [("acme", "style", true), ("globex", "private", false)] {
        let bytes: Vec<u8> = (0..100_000u32)
            .map(|i| (i * 7 + name.len() as u32) as u8)
            .collect();
        let blob_key = format!("loras/{}.safetensors", Uuid::new_v4());
        blobs
            .put(&blob_key, Bytes::from(bytes.clone()), None)
            .await?;
        store
            .insert_finetune(FinetuneRecord {
                tenant: tenant.into(),
                id: name.into(),
                format: "diffusers".into(),
                rank: 4,
                alpha: Some(4.5),
                base_hidden: Some(3072),
                trigger_word: Some("TOK".into()),
                comment: None,
                blob_key: blob_key.clone(),
                size_bytes: bytes.len() as u64,
                sha256: hex::encode(Sha256::digest(&bytes)),
                created_at: SystemTime::now(),
                shared,
            })
            .await?;
        blob_keys.push(blob_key);
    }

    let mut tasks: Vec<NewTask> = (0..7).map(|n| task(&key, n, n < 4)).collect();
    tasks[6].cost = Some(1_200);
    for t in &tasks {
        store.insert_task(t.clone()).await?;
        // Distinct milliseconds: claims take the oldest, and ties would be broken by random ids.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    store.insert_task(task(&other, 9, false)).await?;

    // Ready, with its image.
    let id = claim(store).await?;
    let sample_key = format!("samples/{id}.jpeg");
    blobs
        .put(
            &sample_key,
            Bytes::from_static(b"\xff\xd8 a jpeg"),
            Some("image/jpeg"),
        )
        .await?;
    blob_keys.push(sample_key.clone());
    let ready = ReadyRecord {
        sample_key,
        prompt_used: "fox 0, upsampled".into(),
        seed_used: u64::MAX - 3,
        start_time: 1_764_000_000.125,
        end_time: 1_764_000_004.5,
    };
    store
        .complete_ready(id, "worker-1", ready, Some(hook(id, 0)))
        .await?;
    // Error, moderated both ways.
    let id = claim(store).await?;
    store
        .complete_error(
            id,
            "worker-1",
            "out of memory".into(),
            false,
            Some(hook(id, 1)),
        )
        .await?;
    for (n, kind, reasons) in [
        (2, ModerationKind::Request, vec!["term".to_owned()]),
        (3, ModerationKind::Content, vec![]),
    ] {
        let id = claim(store).await?;
        let webhook = Some(hook(id, n));
        store
            .complete_moderated(id, "worker-1", kind, reasons, webhook)
            .await?;
    }
    // Running, with a lease and progress.
    let running = claim(store).await?;
    store.set_progress(running, "worker-1", 0.5).await?;
    // Re-queued after a retryable failure (attempts 1, last_error), and never claimed.
    let requeued = claim(store).await?;
    store
        .complete_error(requeued, "worker-1", "GPU lost".into(), true, None)
        .await?;
    let queued = [requeued, tasks[6].id];

    // The outbox: delivered, given up, waiting for a retry, and due.
    let due = store.claim_due_webhooks("sender-1", 3, LEASE).await?;
    assert_eq!(due.len(), 3);
    store.webhook_delivered(due[0].id).await?;
    store.webhook_failed(due[1].id, "HTTP 500", None).await?;
    store
        .webhook_failed(due[2].id, "timed out", Some(SystemTime::now() + LEASE))
        .await?;

    let secret = store.shared_secret("url-signing").await?;
    Ok(Made {
        key,
        revoked,
        running,
        queued,
        secret,
        blob_keys,
    })
}

/// The target behaves as the source did: keys, limits, fine-tunes, the queue, the outbox.
async fn check_behaviour(target: &dyn Store, made: &Made) -> Result {
    let info = target
        .authenticate(&made.key.key)
        .await?
        .expect("the old key works");
    assert_eq!((info.tenant.as_str(), info.max_active_tasks), ("acme", 7));
    assert!(target.authenticate(&made.revoked.key).await?.is_none());
    // Running + two queued: the per-key counters were rebuilt with the rows.
    assert_eq!(target.count_unfinished(made.key.key_id).await?, 3);
    assert!(target.get_finetune("globex", "acme/style").await?.is_some());
    assert!(target
        .get_finetune("acme", "globex/private")
        .await?
        .is_none());
    assert_eq!(target.shared_secret("url-signing").await?, made.secret);
    // The queue: the re-queued task first; the running one is leased, not claimable.
    assert_eq!(claim(target).await?, made.queued[0]);
    let running = target
        .get_task("acme", made.running)
        .await?
        .expect("copied");
    assert_eq!(running.attempts, 1);
    // The outbox: the never-tried delivery is due; the one waiting for a retry is not.
    let due = target.claim_due_webhooks("sender-2", 10, LEASE).await?;
    assert_eq!(due.len(), 1, "{due:?}");
    assert_eq!(due[0].attempts, 1);
    assert_eq!(target.list_webhooks(Some("failed"), 10).await?.len(), 1);
    Ok(())
}

async fn blobs_equal(from: &BlobStore, to: &BlobStore, keys: &[String]) -> Result {
    for key in keys {
        assert_eq!(from.get(key).await?, to.get(key).await?, "blob {key}");
    }
    Ok(())
}

fn total(report: &CopyReport, pick: fn(&copy::Counts) -> u64) -> u64 {
    report.records.values().map(pick).sum()
}

/// Copies `from_url` (populated) into `to_url`, then checks everything. Returns the target.
async fn copy_and_check(
    from_url: &DatabaseUrl,
    to_url: &DatabaseUrl,
    from_blobs: &BlobStore,
    to_blobs: &BlobStore,
    made: &Made,
) -> Result {
    let before = copy::dump(from_url).await?;
    assert_eq!(
        before
            .iter()
            .filter(|r| r.kind() == RecordKind::Task)
            .count(),
        8
    );

    let target = copy::open_target(to_url).await?;
    let mut source = copy::open_snapshot(from_url).await?;
    let mut pages = 0;
    let report = copy::copy(
        source.as_mut(),
        target.as_ref(),
        Some((from_blobs, to_blobs)),
        Vec::new(),
        &mut |_| pages += 1,
    )
    .await?;
    assert!(pages >= RecordKind::ALL.len(), "{pages}");
    assert_eq!(
        total(&report, |c| c.copied),
        before.len() as u64,
        "{report}"
    );
    assert_eq!(total(&report, |c| c.already_there), 0);
    let blobs = report.blobs.expect("blobs copied");
    assert_eq!((blobs.copied, blobs.already_there), (3, 0));
    assert!(report.missing_blobs.is_empty());

    // Row for row, and the source unchanged.
    assert_eq!(copy::dump(to_url).await?, before);
    assert_eq!(copy::dump(from_url).await?, before);
    blobs_equal(from_blobs, to_blobs, &made.blob_keys).await?;

    // A second run copies nothing and says so.
    let mut source = copy::open_snapshot(from_url).await?;
    let again = copy::copy(
        source.as_mut(),
        target.as_ref(),
        Some((from_blobs, to_blobs)),
        Vec::new(),
        &mut |_| {},
    )
    .await?;
    assert!(!again.copied_anything(), "{again}");
    assert_eq!(total(&again, |c| c.already_there), before.len() as u64);
    assert_eq!(again.blobs.map(|b| b.already_there), Some(3));
    assert!(again.to_string().contains("nothing new to copy"), "{again}");
    target.close().await;

    let target = open_store(to_url).await?;
    check_behaviour(target.as_ref(), made).await?;
    target.close().await;
    Ok(())
}

async fn open_store(url: &DatabaseUrl) -> Result<std::sync::Arc<dyn Store>> {
    let call_timeout = fluxd_store::PostgresOptions::default().call_timeout;
    fluxd_store::open_store(url, fluxd_store::DEFAULT_MAX_ATTEMPTS, call_timeout).await
}

fn sqlite_url(path: &Path) -> DatabaseUrl {
    DatabaseUrl::Sqlite(path.to_path_buf())
}

/// A blob store for a copy's target: the test bucket when there is one, else local files.
fn target_blobs(dir: &Path) -> Result<BlobStore> {
    match test_s3_url("store-copy") {
        Some(url) => BlobStore::from_url(&url),
        None => BlobStore::local(dir.join("to-blobs")),
    }
}

fn file_digest(path: &Path) -> Result<String> {
    Ok(hex::encode(Sha256::digest(
        std::fs::read(path).map_err(io)?,
    )))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_to_postgres_preserves_everything() -> Result {
    let dir = tempfile::tempdir().map_err(io)?;
    let path = dir.path().join("fluxd.sqlite");
    let from_blobs = BlobStore::local(dir.path().join("blobs"))?;
    let store = SqliteStore::open(&path).await?;
    let made = populate(&store, &from_blobs).await?;
    store.close().await;
    drop(store);
    let digest = file_digest(&path)?;

    let schema = TestSchema::new().await?;
    let to_blobs = target_blobs(dir.path())?;
    copy_and_check(
        &sqlite_url(&path),
        &DatabaseUrl::Postgres(schema.url()),
        &from_blobs,
        &to_blobs,
        &made,
    )
    .await?;
    // Read-only: not a byte of the source file changed.
    assert_eq!(file_digest(&path)?, digest);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_to_sqlite_preserves_everything() -> Result {
    let dir = tempfile::tempdir().map_err(io)?;
    let schema = TestSchema::new().await?;
    let from_blobs = BlobStore::local(dir.path().join("blobs"))?;
    let store = schema.open().await?;
    let made = populate(store.as_ref(), &from_blobs).await?;
    store.close().await;
    let to_blobs = BlobStore::local(dir.path().join("to-blobs"))?;
    copy_and_check(
        &DatabaseUrl::Postgres(schema.url()),
        &sqlite_url(&dir.path().join("copy/fluxd.sqlite")),
        &from_blobs,
        &to_blobs,
        &made,
    )
    .await
}

/// A copy that stopped part-way (here: after its first page) finishes when run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_copy_finishes_when_run_again() -> Result {
    let dir = tempfile::tempdir().map_err(io)?;
    let path = dir.path().join("fluxd.sqlite");
    let blobs = BlobStore::local(dir.path().join("blobs"))?;
    let store = SqliteStore::open(&path).await?;
    let made = populate(&store, &blobs).await?;
    let to_url = sqlite_url(&dir.path().join("to.sqlite"));
    let target = copy::open_target(&to_url).await?;

    let mut source = copy::open_snapshot(&sqlite_url(&path)).await?;
    let first = source.next_page(PAGE).await?;
    assert!(first.iter().all(|r| r.kind() == RecordKind::Tenant));
    assert!(target
        .import(&first)
        .await?
        .iter()
        .all(|i| *i == Imported::Copied));
    drop(source);

    let mut source = copy::open_snapshot(&sqlite_url(&path)).await?;
    let report = copy::copy(
        source.as_mut(),
        target.as_ref(),
        None,
        Vec::new(),
        &mut |_| {},
    )
    .await?;
    assert_eq!(
        report.records[&RecordKind::Tenant].already_there,
        first.len() as u64
    );
    assert_eq!(report.records[&RecordKind::Tenant].copied, 0);
    assert_eq!(report.blobs, None);
    assert_eq!(
        copy::dump(&to_url).await?,
        copy::dump(&sqlite_url(&path)).await?
    );
    target.close().await;
    let target = open_store(&to_url).await?;
    assert!(target.authenticate(&made.key.key).await?.is_some());
    store.close().await;
    Ok(())
}

#[tokio::test]
async fn a_copy_onto_itself_is_refused() -> Result {
    let dir = tempfile::tempdir().map_err(io)?;
    let path = dir.path().join("fluxd.sqlite");
    SqliteStore::open(&path).await?.close().await;
    // The same file under another name.
    let other_name = dir.path().join(".").join("fluxd.sqlite");
    let target = copy::open_target(&sqlite_url(&other_name)).await?;
    let mut source = copy::open_snapshot(&sqlite_url(&path)).await?;
    let refused = copy::copy(
        source.as_mut(),
        target.as_ref(),
        None,
        Vec::new(),
        &mut |_| {},
    )
    .await;
    assert!(
        matches!(&refused, Err(StoreError::Invalid(m)) if m.contains("same")),
        "{refused:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_source_that_is_not_a_fluxd_database_is_refused() -> Result {
    let dir = tempfile::tempdir().map_err(io)?;
    let missing = copy::open_snapshot(&sqlite_url(&dir.path().join("none.sqlite"))).await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{:?}",
        missing.err()
    );
    let empty = dir.path().join("empty.sqlite");
    std::fs::write(&empty, b"").map_err(io)?;
    let refused = copy::open_snapshot(&sqlite_url(&empty)).await;
    assert!(
        matches!(refused, Err(StoreError::Invalid(_))),
        "{:?}",
        refused.err()
    );
    Ok(())
}

/// A LoRA file whose bytes do not match its record's SHA-256 is not copied.
#[tokio::test]
async fn a_blob_that_does_not_match_its_hash_is_refused() -> Result {
    let dir = tempfile::tempdir().map_err(io)?;
    let from = BlobStore::local(dir.path().join("a"))?;
    let to = BlobStore::local(dir.path().join("b"))?;
    from.put("loras/x.safetensors", Bytes::from_static(b"lora"), None)
        .await?;
    let wrong = hex::encode(Sha256::digest(b"other"));
    let refused = from.copy_to("loras/x.safetensors", &to, Some(&wrong)).await;
    assert!(
        matches!(refused, Err(StoreError::Corrupt(_))),
        "{refused:?}"
    );
    assert!(matches!(
        to.get("loras/x.safetensors").await,
        Err(StoreError::NotFound(_))
    ));
    let right = hex::encode(Sha256::digest(b"lora"));
    let copied = from
        .copy_to("loras/x.safetensors", &to, Some(&right))
        .await?;
    assert_eq!(copied, fluxd_store::BlobCopy::Copied(4));
    assert_eq!(
        from.copy_to("loras/none", &to, None).await?,
        fluxd_store::BlobCopy::Missing
    );
    Ok(())
}

/// The records a copy reads are the trait's types: a dump shows a secret's value only redacted.
#[test]
fn secret_rows_hide_their_value() {
    let row = Record::Secret(copy::SecretRow {
        name: "url-signing".into(),
        value: "00ff".repeat(16),
        created_at: SystemTime::now(),
    });
    assert!(!format!("{row:?}").contains("00ff00ff"));
}
