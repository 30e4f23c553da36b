//! Scale-out as users run it: two API nodes (`fluxd serve --no-worker`) and two workers
//! (`fluxd worker`) as separate processes on one PostgreSQL database and one S3 bucket (the
//! servers `scripts/test.sh` starts). Tasks go round-robin to both nodes, some with webhooks to
//! a receiver that checks both signatures independently of fluxd; one worker is `kill -9`ed
//! mid-task and started again, the other is cut off from the database mid-task for a while (a
//! partition: its connections stay open, nothing passes).
//! Every task must end `Ready` exactly once (one recorded completion, one run unless its worker
//! was killed), be readable and downloadable through either node, have its image in the bucket,
//! and have its webhook delivered, verified, at least once.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use fluxd_store::conformance::{test_s3_url, FlakyLink, TestSchema};
use fluxd_store::{PostgresStore, Store, TaskState};
use serde_json::{json, Value};

/// Tasks in all: the one running when its worker is killed, the one running when its worker
/// loses the database, and short ones.
const TASKS: usize = 12;
/// Steps of the two tasks that must still be running when their worker is hit.
const LONG_STEPS: u32 = 50;
const SHORT_STEPS: u32 = 4;
/// The killed worker's lease: its task runs again this long after its last heartbeat.
const KILLED_LEASE: &str = "2s";
/// The cut-off worker's lease outlasts the outage, so it keeps its task.
const CUT_LEASE: &str = "6s";
const OUTAGE: Duration = Duration::from_secs(3);
/// The worker log's level: `running task` and `task ready`, with the task's id, per task.
const WORKER_LOG: &str = "warn,fluxd_server::worker=info";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Webhook options of every node and worker: quick retries, so the receiver's deliberate 503s
/// are retried within the test.
const WEBHOOK_OPTIONS: [&str; 5] = [
    "--webhook-allow-private",
    "--webhook-retry-base",
    "1s",
    "--webhook-timeout",
    "2s",
];

/// `fluxd worker` on `database` and `blobs` with its own data directory (its machine's tiny
/// model), logging to `log`.
fn worker(
    data: &Path,
    database: &str,
    blobs: &str,
    public_url: &str,
    lease: &str,
    log: &Path,
) -> Server {
    let file = std::fs::File::create(log).expect("log file");
    let mut args = vec![
        "worker",
        "--data-dir",
        s(data),
        "--database",
        database,
        "--blobs",
        blobs,
        "--public-url",
        public_url,
        "--task-lease",
        lease,
        "--listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(&WEBHOOK_OPTIONS);
    Server::run_fluxd(&args, &[], WORKER_LOG, file.into())
}

/// Task `n`'s request: two tasks in three ask for a webhook to the receiver's hook `n`.
fn task_body(n: usize, steps: u32, hooks: &str) -> Value {
    let mut body = small_request(json!({
        "prompt": format!("a photo of TOK number {n}"),
        "seed": n,
        "steps": steps,
    }));
    if n % 3 != 2 {
        body["webhook_url"] = json!(format!("{hooks}/hook/{n}"));
        body["webhook_secret"] = json!(secret_for(n));
    }
    body
}

fn submit(node: &Server, key: &str, body: &Value) -> String {
    submit_for_id(node, key, "/v1/flux-pro-finetuned", body)
}

/// Polls until the task has made progress (a worker runs it and has done steps).
fn wait_until_running(node: &Server, key: &str, id: &str) {
    for _ in 0..1200 {
        let body = node
            .get(&format!("/v1/get_result?id={id}"), Some(key))
            .json();
        assert_eq!(body["status"], "Pending", "finished too early: {body}");
        if body["progress"].as_f64().is_some_and(|p| p > 0.0) {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("task {id} never ran");
}

/// Lines of the worker logs that mention task `id` and say `what`.
fn log_lines(logs: &[PathBuf], id: &str, what: &str) -> usize {
    let needle = format!("task_id={id}");
    logs.iter()
        .map(|log| {
            std::fs::read_to_string(log)
                .expect("read a worker log")
                .lines()
                .filter(|l| l.contains(&needle) && l.contains(what))
                .count()
        })
        .sum()
}

#[test]
fn two_api_nodes_and_two_workers_survive_a_kill_and_a_partition() {
    let Some(blobs) = test_s3_url("scale-out") else {
        return;
    };
    let rt = runtime();
    let schema = rt.block_on(TestSchema::new()).expect("a test schema");
    let database = schema.url();
    let dir = scratch("scale-out");
    let logs_dir = dir.join("logs");
    std::fs::create_dir_all(&logs_dir).expect("mkdir logs");

    // An operator's machine makes the key and the fine-tune, straight into the shared stores.
    let cli = dir.join("cli");
    let key = create_key_with(&cli, "acme", &["--database", &database]);
    import_lora(
        &cli,
        "acme",
        "my-finetune",
        &["--database", &database, "--blobs", &blobs],
    );
    let receiver = Receiver::start(dir.join("deliveries.jsonl"), &[]);
    let hooks = receiver.base.clone();

    // Two API nodes, each with a data directory of its own (another machine's).
    let nodes: Vec<Server> = (0..2)
        .map(|i| {
            let mut args = vec!["--no-worker", "--database", &database, "--blobs", &blobs];
            args.extend_from_slice(&WEBHOOK_OPTIONS);
            Server::start(&dir.join(format!("api-{i}")), &args)
        })
        .collect();
    let public_url = nodes[0].base.clone();
    let mut tasks: Vec<(usize, String)> = Vec::new();

    // Worker A takes a long task and is killed mid-run: the task stays Pending, unfinished in
    // A's log.
    let (a_data, b_data) = (dir.join("worker-a"), dir.join("worker-b"));
    let a_logs = [logs_dir.join("a-0.log"), logs_dir.join("a-1.log")];
    let start_a = |log: &Path| worker(&a_data, &database, &blobs, &public_url, KILLED_LEASE, log);
    let mut a = start_a(&a_logs[0]);
    let killed = submit(&nodes[0], &key, &task_body(0, LONG_STEPS, &hooks));
    tasks.push((0, killed.clone()));
    wait_until_running(&nodes[0], &key, &killed);
    a.child.kill().expect("kill -9");
    a.child.wait().expect("reap");
    assert_eq!(log_lines(&a_logs[..1], &killed, "running task"), 1);
    assert_eq!(log_lines(&a_logs[..1], &killed, "task ready"), 0);

    // Worker B reaches the database through a link the test pauses while B runs a long task
    // of its own (the only worker left, it runs it).
    let link = FlakyLink::start(schema.server_addr().expect("the server's address"))
        .expect("a link to the server");
    let via_link = schema.url_via(Some(link.addr()));
    let b_log = logs_dir.join("b.log");
    let mut b = worker(&b_data, &via_link, &blobs, &public_url, CUT_LEASE, &b_log);
    let kept = submit(&nodes[1], &key, &task_body(1, LONG_STEPS, &hooks));
    tasks.push((1, kept.clone()));
    wait_until_running(&nodes[1], &key, &kept);
    link.pause();
    let cut_at = Instant::now();

    // While B is cut off, A comes back and the short tasks arrive, in turn at both nodes.
    let mut a = start_a(&a_logs[1]);
    for n in 2..TASKS {
        let id = submit(&nodes[n % 2], &key, &task_body(n, SHORT_STEPS, &hooks));
        tasks.push((n, id));
    }
    std::thread::sleep(OUTAGE.saturating_sub(cut_at.elapsed()));
    link.resume();
    let outage = cut_at.elapsed();

    // Every task ends Ready, readable through both nodes, its image the bucket's object
    // through either node's link.
    for (n, id) in &tasks {
        let done = poll_until_final(
            &nodes[n % 2],
            &format!("{}/v1/get_result?id={id}", nodes[n % 2].base),
            &key,
        );
        assert_eq!(done["status"], "Ready", "task {n}: {done}");
        let stored = object(&blobs, &format!("samples/{id}.jpeg"));
        assert!(
            stored.starts_with(&[0xff, 0xd8]),
            "task {n}: a JPEG in the bucket"
        );
        for node in &nodes {
            let body = node
                .get(&format!("/v1/get_result?id={id}"), Some(&key))
                .json();
            assert_eq!(
                body["status"], "Ready",
                "task {n} through {}: {body}",
                node.base
            );
            let sample = body["result"]["sample"].as_str().expect("sample");
            assert!(sample.starts_with(&node.base), "{sample}");
            let image = download(sample);
            assert_eq!(image.status, 200, "task {n} through {}", node.base);
            assert_eq!(image.body, stored, "task {n} through {}", node.base);
        }
    }

    // Exactly once: one recorded completion per task in all the worker logs, and one run per
    // task but the killed one's two.
    let all_logs = [&a_logs[..], std::slice::from_ref(&b_log)].concat();
    let records = rt.block_on(async {
        let store = PostgresStore::connect(&database).await?;
        let mut records = Vec::new();
        for (_, id) in &tasks {
            records.push(
                store
                    .get_task("acme", id.parse().expect("a task id"))
                    .await?,
            );
        }
        store.close().await;
        Ok::<_, fluxd_store::StoreError>(records)
    });
    for ((n, id), record) in tasks.iter().zip(records.expect("read the tasks")) {
        let record = record.expect("the task's record");
        assert!(
            matches!(record.state, TaskState::Ready(_)),
            "task {n}: {record:?}"
        );
        let runs = if *id == killed { 2 } else { 1 };
        assert_eq!(record.attempts, runs, "task {n}: {record:?}");
        assert_eq!(
            log_lines(&all_logs, id, "task ready"),
            1,
            "task {n} ({id}) completed other than once"
        );
    }
    assert_eq!(
        log_lines(std::slice::from_ref(&b_log), &kept, "task ready"),
        1,
        "B kept its task"
    );

    // Every webhook arrives, verified, at least once.
    let hooked: HashMap<&str, usize> = tasks
        .iter()
        .filter(|(n, _)| n % 3 != 2)
        .map(|(n, id)| (id.as_str(), *n))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let deliveries = receiver.wait_for_verified(hooked.keys().copied(), deadline);
    let verified = verified_tasks(&deliveries);
    let missing: Vec<usize> = hooked
        .iter()
        .filter(|(id, _)| !verified.contains(*id))
        .map(|(_, n)| *n)
        .collect();
    assert!(
        missing.is_empty(),
        "webhooks never delivered for hooks {missing:?}"
    );
    let bad: Vec<&Value> = deliveries.iter().filter(|d| d["ok"] != true).collect();
    assert!(bad.is_empty(), "deliveries failing verification: {bad:?}");
    assert!(
        deliveries.iter().any(|d| d["answered"] == 503),
        "the receiver's 503s were never retried"
    );

    println!(
        "scale-out: {} tasks Ready, {} deliveries for {} webhooks, database outage {:.1} s",
        tasks.len(),
        deliveries.len(),
        hooked.len(),
        outage.as_secs_f64()
    );
    // Both workers stop cleanly.
    assert!(a.terminate().success());
    assert!(b.terminate().success());
}
