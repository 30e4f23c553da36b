//! The conformance suite against SQLite on real files, plus what only SQLite has: the file and
//! directories it creates and its schema versioning.

use std::path::{Path, PathBuf};

use fluxd_store::{conformance, SqliteStore, Store, StoreError};
use tempfile::TempDir;

type Result<T = ()> = std::result::Result<T, StoreError>;

fn temp() -> Result<TempDir> {
    tempfile::tempdir().map_err(|err| StoreError::Unavailable(std::sync::Arc::new(err)))
}

/// A fresh database in a new directory that lives as long as the returned guard.
async fn fresh() -> Result<(TempDir, Box<dyn Store>)> {
    let dir = temp()?;
    let store = open_boxed(dir.path().join("fluxd.db")).await?;
    Ok((dir, store))
}

/// Three stores sharing one new file (the server and admin commands, or several processes on
/// one machine).
async fn fresh_many() -> Result<(TempDir, Vec<Box<dyn Store>>)> {
    let dir = temp()?;
    let mut stores = Vec::new();
    for _ in 0..3 {
        stores.push(open_boxed(dir.path().join("fluxd.db")).await?);
    }
    Ok((dir, stores))
}

fluxd_store::conformance_tests!(fresh: fresh(), fresh_many: fresh_many());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durability_across_reopen() -> Result {
    let dir = temp()?;
    let path = dir.path().join("fluxd.db");
    conformance::durability(|| open_boxed(path.clone())).await
}

async fn open_boxed(path: PathBuf) -> Result<Box<dyn Store>> {
    Ok(Box::new(SqliteStore::open(path).await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_on_fresh_files() -> Result {
    let dir = temp()?;
    let counter = std::sync::atomic::AtomicUsize::new(0);
    conformance::run_all(|| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        open_boxed(dir.path().join(format!("run-{n}.db")))
    })
    .await
}

#[tokio::test]
async fn open_creates_directories_and_a_wal_database() -> Result {
    let dir = temp()?;
    let path = dir.path().join("a/b/c/fluxd.db");
    let store = SqliteStore::open(&path).await?;
    store.create_key("alice", None).await?;
    assert!(path.is_file());
    // WAL mode shows as the -wal file beside the database while it is open.
    assert!(
        wal_of(&path).exists(),
        "no WAL file beside {}",
        path.display()
    );
    store.close().await;
    // Reopening an up-to-date database applies nothing and keeps the data.
    let store = SqliteStore::open(&path).await?;
    assert_eq!(store.list_keys("alice").await?.len(), 1);
    store.close().await;
    Ok(())
}

fn wal_of(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

#[tokio::test]
async fn a_newer_schema_is_refused() -> Result {
    use sqlx::{ConnectOptions, Connection};
    let dir = temp()?;
    let path = dir.path().join("fluxd.db");
    SqliteStore::open(&path).await?.close().await;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .connect()
        .await
        .map_err(|err| StoreError::Database(std::sync::Arc::new(err)))?;
    sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES (99, 0)")
        .execute(&mut conn)
        .await
        .map_err(|err| StoreError::Database(std::sync::Arc::new(err)))?;
    conn.close()
        .await
        .map_err(|err| StoreError::Database(std::sync::Arc::new(err)))?;
    let reopened = SqliteStore::open(&path).await;
    assert!(
        matches!(
            reopened,
            Err(StoreError::SchemaTooNew {
                found: 99,
                supported: 6
            })
        ),
        "{:?}",
        reopened.err()
    );
    Ok(())
}

/// Two stores on one file (the server and an admin command, say) see each other's writes; the
/// write lock is shared through SQLite's own locking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_share_one_file() -> Result {
    let dir = temp()?;
    let path = dir.path().join("fluxd.db");
    let server = SqliteStore::open(&path).await?;
    let admin = SqliteStore::open(&path).await?;
    let key = admin.create_key("alice", Some("made by the admin")).await?;
    let info = server.authenticate(&key.key).await?;
    assert_eq!(info.map(|i| i.tenant), Some("alice".to_owned()));
    let submits = (0..20).map(|i| {
        let store = if i % 2 == 0 { &server } else { &admin };
        store.insert_task_if_under_limit(
            fluxd_store::NewTask {
                id: uuid::Uuid::new_v4(),
                tenant: "alice".into(),
                key_id: key.key_id,
                params: serde_json::json!({ "i": i }),
                finetune_id: None,
                webhook_url: None,
                webhook_secret: None,
                cost: None,
            },
            12,
        )
    });
    let outcomes = futures_util::future::join_all(submits).await;
    let inserted = outcomes
        .into_iter()
        .filter(|o| matches!(o, Ok(fluxd_store::InsertOutcome::Inserted)))
        .count();
    // Each store's check-and-insert is one statement under SQLite's write lock.
    assert_eq!(inserted, 12);
    assert_eq!(server.count_unfinished(key.key_id).await?, 12);
    admin.close().await;
    server.close().await;
    Ok(())
}

/// A database made by schema version 1 (which counted a key's unfinished tasks from an index)
/// keeps its counts when version 2 moves them into `key_load`: pending tasks count, finished
/// ones do not, and the limit holds on the first submit after the upgrade.
#[tokio::test]
async fn the_upgrade_to_version_2_counts_the_queue_already_there() -> Result {
    use sqlx::{ConnectOptions, Connection};
    let db = |err| StoreError::Database(std::sync::Arc::new(err));
    let dir = temp()?;
    let path = dir.path().join("fluxd.db");
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .connect()
        .await
        .map_err(db)?;
    sqlx::raw_sql(include_str!("../migrations/sqlite/0001_init.sql"))
        .execute(&mut conn)
        .await
        .map_err(db)?;
    sqlx::raw_sql(
        "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL);
         INSERT INTO schema_migrations VALUES (1, 0);
         INSERT INTO tenants VALUES ('alice', 0);
         INSERT INTO api_keys (id, tenant, prefix, key_hash, max_active_tasks, created_at)
             VALUES ('00000000-0000-4000-8000-000000000001', 'alice', 'p1', 'h1', 3, 0),
                    ('00000000-0000-4000-8000-000000000002', 'alice', 'p2', 'h2', 3, 0);",
    )
    .execute(&mut conn)
    .await
    .map_err(db)?;
    // Key 1: two waiting, one running, two finished. Key 2: one finished.
    let rows = [
        (1, "Pending", None),
        (1, "Pending", None),
        (1, "Pending", Some("worker-a")),
        (1, "Ready", None),
        (1, "Error", None),
        (2, "Content Moderated", None),
    ];
    for (n, (key, status, worker)) in rows.into_iter().enumerate() {
        sqlx::query(
            "INSERT INTO tasks (id, tenant, key_id, params, status, worker_id, max_attempts, \
             created_at, updated_at) VALUES ($1, 'alice', $2, '{}', $3, $4, 3, $5, $5)",
        )
        .bind(format!("00000000-0000-4000-9000-{n:012}"))
        .bind(format!("00000000-0000-4000-8000-{key:012}"))
        .bind(status)
        .bind(worker)
        .bind(i64::try_from(n).unwrap_or_default())
        .execute(&mut conn)
        .await
        .map_err(db)?;
    }
    conn.close().await.map_err(db)?;

    let store = SqliteStore::open(&path).await?;
    let key = |n: u128| uuid::Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_0000 | n);
    assert_eq!(store.count_unfinished(key(1)).await?, 3);
    assert_eq!(store.count_unfinished(key(2)).await?, 0);
    let task = |key_id| fluxd_store::NewTask {
        id: uuid::Uuid::new_v4(),
        tenant: "alice".into(),
        key_id,
        params: serde_json::json!({}),
        finetune_id: None,
        webhook_url: None,
        webhook_secret: None,
        cost: None,
    };
    assert_eq!(
        store.insert_task_if_under_limit(task(key(1)), 3).await?,
        fluxd_store::InsertOutcome::LimitReached { active: 3 }
    );
    assert_eq!(
        store.insert_task_if_under_limit(task(key(2)), 3).await?,
        fluxd_store::InsertOutcome::Inserted
    );
    assert_eq!(store.count_unfinished(key(2)).await?, 1);
    store.close().await;
    Ok(())
}
