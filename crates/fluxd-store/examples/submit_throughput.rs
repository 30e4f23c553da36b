//! Durable submits per second, one by one and concurrently, on a fresh database:
//! `cargo run --release -p fluxd-store --example submit_throughput [N] [C] [sqlite|postgres]`.
//!
//! `sqlite` (the default) uses a new file and shows what group commit buys; `postgres` uses a
//! new schema on the server at `FLUXD_TEST_POSTGRES_URL` (`scripts/services/postgres.sh start`
//! prints one), each submit on a pooled connection of its own.

use std::sync::Arc;
use std::time::Instant;

use fluxd_store::conformance::TestSchema;
use fluxd_store::{InsertOutcome, NewTask, PostgresStore, SqliteStore, Store, StoreError};
use uuid::Uuid;

/// Keys the submits are spread over.
const KEYS: usize = 200;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), StoreError> {
    let mut args = std::env::args().skip(1);
    let total: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let concurrency: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    let backend = args.next().unwrap_or_else(|| "sqlite".to_owned());
    for clients in [1, concurrency] {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Unavailable(Arc::new(e)))?;
        let store: Arc<dyn Store> = match backend.as_str() {
            "sqlite" => Arc::new(SqliteStore::open(dir.path().join("bench.db")).await?),
            "postgres" => {
                let schema = TestSchema::new().await?;
                Arc::new(PostgresStore::connect(&schema.url()).await?)
            }
            other => {
                return Err(StoreError::Invalid(format!(
                    "backend {other:?}: sqlite or postgres"
                )))
            }
        };
        // Many keys, as in service: each key's count of unfinished tasks stays small.
        let mut keys = Vec::new();
        for _ in 0..KEYS {
            keys.push(store.create_key("bench", None).await?.key_id);
        }
        let start = Instant::now();
        let mut clients_done = Vec::new();
        for c in 0..clients {
            let store = Arc::clone(&store);
            let keys = keys.clone();
            let share = total / clients + usize::from(c < total % clients);
            clients_done.push(tokio::spawn(async move {
                for i in 0..share {
                    let key_id = keys[(c + i * clients) % KEYS];
                    let task = NewTask {
                        id: Uuid::new_v4(),
                        tenant: "bench".into(),
                        key_id,
                        params: serde_json::json!({"prompt": "a cat", "steps": 28}),
                        finetune_id: Some("style".into()),
                        webhook_url: None,
                        webhook_secret: None,
                        cost: None,
                    };
                    let outcome = store.insert_task_if_under_limit(task, 10_000).await?;
                    assert_eq!(outcome, InsertOutcome::Inserted);
                }
                Ok::<(), StoreError>(())
            }));
        }
        for done in clients_done {
            done.await
                .map_err(|e| StoreError::Unavailable(Arc::new(e)))??;
        }
        let seconds = start.elapsed().as_secs_f64();
        let batching = match store.writer_stats() {
            Some(stats) => format!(
                ", {:.1} writes per commit",
                stats.writes as f64 / stats.commits.max(1) as f64
            ),
            None => String::new(),
        };
        println!(
            "{backend} {clients:>4} clients: {total} durable submits in {seconds:.3} s = {:.0}/s{batching}",
            total as f64 / seconds
        );
        store.close().await;
    }
    Ok(())
}
