//! `fluxd` on PostgreSQL as users run it: keys and fine-tunes made with `--database`, `fluxd
//! serve` on that database through a network link the test cuts mid-task (503s while it is
//! down, the worker keeping its task), and a second API node that verifies the first one's
//! delivery URLs with the key they share through the database.
//!
//! The database is a schema of its own on the test server `scripts/services/postgres.sh`
//! starts (see `fluxd_store::conformance::TestSchema`).

mod common;

use std::time::{Duration, Instant};

use common::*;
use fluxd_store::conformance::{FlakyLink, TestSchema};
use fluxd_store::{PostgresStore, Store};
use serde_json::{json, Value};

/// How long the database stays unreachable: two heartbeats of the 6 s lease fail, the lease
/// still lasts.
const OUTAGE: Duration = Duration::from_secs(3);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Polls until a worker has claimed the task (it reports a progress).
fn wait_until_running(server: &Server, key: &str, id: &str) {
    for _ in 0..1200 {
        let body = server
            .get(&format!("/v1/get_result?id={id}"), Some(key))
            .json();
        assert_eq!(
            body["status"], "Pending",
            "finished before the outage: {body}"
        );
        if body["progress"].is_number() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("the task was never claimed");
}

#[test]
fn serve_on_postgres_rides_out_a_database_outage() {
    let rt = runtime();
    let schema = rt.block_on(TestSchema::new()).expect("a test schema");
    let link = FlakyLink::start(schema.server_addr().expect("the server's address"))
        .expect("a link to the server");
    let direct = schema.url();
    let data = scratch("pg-outage");
    let key = create_key_with(&data, "acme", &["--database", &direct]);
    import_lora(&data, "acme", "my-finetune", &["--database", &direct]);
    // Through the link; get_result reads the store on every call.
    let via_link = schema.url_via(Some(link.addr()));
    let server = Server::start(
        &data,
        &[
            "--database",
            &via_link,
            "--task-lease",
            "6s",
            "--task-cache-ttl",
            "0s",
        ],
    );

    // Long enough to be running when the link is cut: 50 steps at 512².
    let body = small_request(json!({"seed": 7, "steps": 50, "width": 512, "height": 512}));
    let submit = server.post_json("/v1/flux-pro-finetuned", Some(&key), &body);
    assert_eq!(
        submit.status,
        200,
        "{}",
        String::from_utf8_lossy(&submit.body)
    );
    let id = submit.json()["id"].as_str().expect("id").to_owned();
    wait_until_running(&server, &key, &id);

    link.cut();
    let cut_at = Instant::now();
    let mut answers = 0;
    while cut_at.elapsed() < OUTAGE {
        // Every request that needs the database is a 503 in the contract's shape, not a 500.
        let read = server.get(&format!("/v1/get_result?id={id}"), Some(&key));
        let submit = server.post_json("/v1/flux-pro-finetuned", Some(&key), &body);
        for reply in [read, submit] {
            assert_eq!(
                reply.status,
                503,
                "{}",
                String::from_utf8_lossy(&reply.body)
            );
            assert!(reply.json()["detail"].is_string());
            answers += 1;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(answers >= 2);
    link.restore();

    let done = poll_until_final(
        &server,
        &format!("{}/v1/get_result?id={id}", server.base),
        &key,
    );
    assert_eq!(done["status"], "Ready", "{done}");
    // The worker kept its task through the outage: one run, not a second one after its lease.
    let record = rt.block_on(async {
        let store = PostgresStore::connect(&direct).await?;
        let record = store.get_task("acme", id.parse().expect("a task id")).await;
        store.close().await;
        record
    });
    let record = record.expect("read the task").expect("the task");
    assert_eq!(record.attempts, 1, "{record:?}");

    second_node_shares_the_url_key(&schema, &data, &done);
}

/// A second API node on the same database (another data directory, no worker) verifies the
/// first node's delivery URL and serves the image once it has the file (blobs are local files
/// here), and refuses a tampered URL.
fn second_node_shares_the_url_key(schema: &TestSchema, first_data: &std::path::Path, done: &Value) {
    let sample = done["result"]["sample"].as_str().expect("sample URL");
    let target = &sample[sample.find("/v1/images/").expect("an image URL")..];
    let file = target
        .trim_start_matches("/v1/images/")
        .split('?')
        .next()
        .expect("a file name");
    let data = scratch("pg-second-node");
    let samples = data.join("blobs/samples");
    std::fs::create_dir_all(&samples).expect("mkdir");
    std::fs::copy(
        first_data.join("blobs/samples").join(file),
        samples.join(file),
    )
    .expect("copy the image");
    let url = schema.url();
    let second = Server::start(&data, &["--database", &url, "--no-worker"]);
    let image = second.get(target, None);
    assert_eq!(
        image.status,
        200,
        "{}",
        String::from_utf8_lossy(&image.body)
    );
    assert_eq!(image.header("content-type"), Some("image/jpeg"));
    let (i, c) = target.char_indices().last().expect("non-empty");
    let tampered = format!("{}{}", &target[..i], if c == '0' { '1' } else { '0' });
    assert_eq!(second.get(&tampered, None).status, 403);
}
