//! `fluxd store copy` from the user's side: a deployment on SQLite and local files (made through
//! the CLI and HTTP with the tiny model: keys, an imported fine-tune, a finished task with its
//! image, a queued task, a webhook waiting for its retry) is copied to PostgreSQL and S3, and
//! `fluxd serve` on those carries on where the old one stopped: the old key works, the old image
//! URL verifies and downloads, the fine-tune generates, the queued task runs, and both webhooks
//! arrive at a receiver that checks their signatures.
//!
//! PostgreSQL and S3 are the test servers `scripts/test.sh` starts (a schema and a prefix of
//! their own for this test).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use fluxd_store::conformance::{test_s3_url, TestSchema};
use serde_json::{json, Value};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// `fluxd ARGS`: its exit status, stdout and stderr.
fn fluxd_output(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fluxd"))
        .args(args)
        .output()
        .expect("run fluxd");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The (copied, already there) counts of a report line.
fn counts(report: &str, label: &str) -> (u64, u64) {
    let line = report
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no {label} line in:\n{report}"));
    let numbers: Vec<u64> = line[label.len()..]
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

/// Deliveries the receiver answered 200 for hook `n`.
fn delivered(receiver: &Receiver, n: u64) -> Vec<Value> {
    receiver
        .deliveries()
        .into_iter()
        .filter(|d| d["n"] == n && d["answered"] == 200)
        .collect()
}

fn wait_for_delivery(receiver: &Receiver, n: u64) -> Value {
    for _ in 0..600 {
        if let Some(d) = delivered(receiver, n).pop() {
            return d;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("hook {n} never delivered: {:?}", receiver.deliveries());
}

fn hooked(receiver: &Receiver, n: usize, extra: Value) -> Value {
    let mut body = small_request(extra);
    body["webhook_url"] = json!(format!("{}/hook/{n}", receiver.base));
    body["webhook_secret"] = json!(secret_for(n));
    body
}

#[test]
fn a_sqlite_deployment_moves_to_postgres_and_s3() {
    let Some(blobs_url) = test_s3_url("store-copy-cli") else {
        return;
    };
    let rt = runtime();
    let schema = rt.block_on(TestSchema::new()).expect("a test schema");
    let database = schema.url();
    let old = scratch("copy-old");
    let receiver = Receiver::start(old.join("deliveries.jsonl"), &[]);

    // --- the old deployment: SQLite and files in its data directory --------------------------
    let key = create_key(&old, "acme");
    import_lora(&old, "acme", "my-finetune", &[]);
    let mut server = Server::start(&old, &["--webhook-allow-private"]);
    // Hook 5's first delivery is answered 503 (webhook_receiver.py): it waits for a retry.
    let (_, done) = submit_to_and_wait(
        &server,
        &key,
        "/v1/flux-pro-finetuned",
        &hooked(&receiver, 5, json!({"seed": 1})),
    );
    let image = sample_bytes(&server, &done);
    let old_url = done["result"]["sample"]
        .as_str()
        .expect("sample")
        .to_owned();
    let old_target = old_url[old_url.find("/v1/images/").expect("an image URL")..].to_owned();
    for _ in 0..600 {
        if receiver.deliveries().iter().any(|d| d["n"] == 5) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(server.terminate().code(), Some(0));
    assert!(
        delivered(&receiver, 5).is_empty(),
        "{:?}",
        receiver.deliveries()
    );
    let pending = fluxd(&[
        "webhooks",
        "list",
        "--status",
        "pending",
        "--data-dir",
        s(&old),
    ]);
    assert!(pending.contains("/hook/5"), "{pending}");

    // A task queued on an API node without a worker, never run here.
    let mut api = Server::start(&old, &["--no-worker", "--webhook-allow-private"]);
    let submit = api.post_json(
        "/v1/flux-dev",
        Some(&key),
        &hooked(&receiver, 7, json!({"seed": 2})),
    );
    assert_eq!(
        submit.status,
        200,
        "{}",
        String::from_utf8_lossy(&submit.body)
    );
    let queued = submit.json()["id"].as_str().expect("id").to_owned();
    assert_eq!(api.terminate().code(), Some(0));

    // --- the copy, twice ------------------------------------------------------------------------
    let copy_args = [
        "store",
        "copy",
        "--data-dir",
        s(&old),
        "--to-database",
        &database,
        "--to-blobs",
        &blobs_url,
    ];
    let (ok, report, stderr) = fluxd_output(&copy_args);
    assert!(ok, "{stderr}");
    assert!(!stderr.contains(schema_password(&database)), "{stderr}");
    assert_eq!(counts(&report, "API keys"), (1, 0), "{report}");
    assert_eq!(counts(&report, "fine-tunes"), (1, 0), "{report}");
    assert_eq!(counts(&report, "tasks"), (2, 0), "{report}");
    assert_eq!(counts(&report, "webhook deliveries"), (1, 0), "{report}");
    assert_eq!(counts(&report, "shared secrets"), (1, 0), "{report}");
    assert_eq!(counts(&report, "blobs"), (2, 0), "{report}");
    let (ok, again, stderr) = fluxd_output(&copy_args);
    assert!(ok, "{stderr}");
    assert!(again.contains("nothing new to copy"), "{again}");
    assert_eq!(counts(&again, "tasks"), (0, 2), "{again}");
    assert_eq!(counts(&again, "blobs"), (0, 2), "{again}");
    // Onto itself: refused, clearly.
    let own = format!("sqlite://{}", s(&old.join("fluxd.sqlite")));
    let (ok, _, stderr) = fluxd_output(&[
        "store",
        "copy",
        "--data-dir",
        s(&old),
        "--to-database",
        &own,
        "--to-blobs",
        &blobs_url,
    ]);
    assert!(!ok && stderr.contains("same database"), "{stderr}");

    // --- the new deployment: PostgreSQL and S3, a fresh data directory --------------------------
    let new = scratch("copy-new");
    let server = Server::start(
        &new,
        &[
            "--database",
            &database,
            "--blobs",
            &blobs_url,
            "--webhook-allow-private",
        ],
    );
    // The old key reads the old task; the old signed URL verifies and serves the old image.
    let old_task = done["id"].as_str().expect("id");
    let read = server.get(&format!("/v1/get_result?id={old_task}"), Some(&key));
    assert_eq!(read.status, 200);
    assert_eq!(read.json()["status"], "Ready");
    let downloaded = server.get(&old_target, None);
    assert_eq!(downloaded.status, 200, "{old_target}");
    assert_eq!(downloaded.body, image);
    // The queued task runs to Ready.
    let polling = format!("{}/v1/get_result?id={queued}", server.base);
    let ran = poll_until_final(&server, &polling, &key);
    assert_eq!(ran["status"], "Ready", "{ran}");
    // The fine-tune generates.
    let (_, fresh) = submit_to_and_wait(
        &server,
        &key,
        "/v1/flux-pro-finetuned",
        &small_request(json!({"seed": 3})),
    );
    assert!(!sample_bytes(&server, &fresh).is_empty());
    // Both webhooks arrive, signatures checked by the receiver: the one that waited for its
    // retry and the queued task's.
    assert_eq!(wait_for_delivery(&receiver, 5)["task_id"], old_task);
    assert_eq!(wait_for_delivery(&receiver, 7)["task_id"], queued.as_str());
    assert!(
        receiver.deliveries().iter().all(|d| d["ok"] == true),
        "{:?}",
        receiver.deliveries()
    );
}

/// The password part of a postgres:// URL, which no output may show.
fn schema_password(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let userinfo = rest.split_once('@').map_or("", |(u, _)| u);
    userinfo.split_once(':').map_or("\u{0}", |(_, p)| p)
}
