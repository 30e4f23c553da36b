//! `fluxd` on PostgreSQL as users run it: keys and fine-tunes made with `--database`, `fluxd
//! serve` on that database through a network link the test cuts mid-task (503s while it is
//! down, the worker keeping its task) or black-holes (the same, within the database timeout),
//! and a second API node that verifies the first one's
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

/// A node (`fluxd serve` with its worker) on a schema of its own, reaching the database through
/// a link the test controls, running a long task.
struct Running {
    rt: tokio::runtime::Runtime,
    schema: TestSchema,
    link: FlakyLink,
    data: std::path::PathBuf,
    key: String,
    server: Server,
    body: Value,
    id: String,
}

impl Running {
    /// Starts the node with `extra` arguments (besides `--database` through the link, and no
    /// task cache: get_result reads the store on every call) and a task long enough to be
    /// running when the link fails (50 steps at 512²), and waits until it runs.
    fn start(name: &str, seed: u64, extra: &[&str]) -> Self {
        let rt = runtime();
        let schema = rt.block_on(TestSchema::new()).expect("a test schema");
        let link = FlakyLink::start(schema.server_addr().expect("the server's address"))
            .expect("a link to the server");
        let direct = schema.url();
        let data = scratch(name);
        let key = create_key_with(&data, "acme", &["--database", &direct]);
        import_lora(&data, "acme", "my-finetune", &["--database", &direct]);
        let via_link = schema.url_via(Some(link.addr()));
        let mut args = vec!["--database", &via_link, "--task-cache-ttl", "0s"];
        args.extend_from_slice(extra);
        let server = Server::start(&data, &args);
        let body = small_request(json!({"seed": seed, "steps": 50, "width": 512, "height": 512}));
        let submit = server.post_json("/v1/flux-pro-finetuned", Some(&key), &body);
        assert_eq!(
            submit.status,
            200,
            "{}",
            String::from_utf8_lossy(&submit.body)
        );
        let id = submit.json()["id"].as_str().expect("id").to_owned();
        wait_until_running(&server, &key, &id);
        Self {
            rt,
            schema,
            link,
            data,
            key,
            server,
            body,
            id,
        }
    }

    /// Reads the task and submits another until `asking` has passed since `since`, `pause`
    /// between rounds: every request that needs the database is a 503 in the contract's shape,
    /// not a 500. Returns how many answers came.
    fn all_503_until(&self, since: Instant, asking: Duration, pause: Duration) -> usize {
        let mut answers = 0;
        while since.elapsed() < asking {
            let read = self
                .server
                .get(&format!("/v1/get_result?id={}", self.id), Some(&self.key));
            let submit =
                self.server
                    .post_json("/v1/flux-pro-finetuned", Some(&self.key), &self.body);
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
            std::thread::sleep(pause);
        }
        answers
    }

    /// Waits for the task to end Ready and checks the worker kept it: one run, not a second
    /// one after its lease. Returns its final get_result.
    fn ready_in_one_run(&self) -> Value {
        let done = poll_until_final(
            &self.server,
            &format!("{}/v1/get_result?id={}", self.server.base, self.id),
            &self.key,
        );
        assert_eq!(done["status"], "Ready", "{done}");
        let record = self.rt.block_on(async {
            let store = PostgresStore::connect(&self.schema.url()).await?;
            let record = store
                .get_task("acme", self.id.parse().expect("a task id"))
                .await;
            store.close().await;
            record
        });
        let record = record.expect("read the task").expect("the task");
        assert_eq!(record.attempts, 1, "the worker kept its task: {record:?}");
        done
    }
}

#[test]
fn serve_on_postgres_rides_out_a_database_outage() {
    let node = Running::start("pg-outage", 7, &["--task-lease", "6s"]);
    node.link.cut();
    let answers = node.all_503_until(Instant::now(), OUTAGE, Duration::from_millis(200));
    assert!(answers >= 2);
    node.link.restore();
    let done = node.ready_in_one_run();
    second_node_shares_the_url_key(&node.schema, &node.data, &done);
}

/// `--database-timeout` of [`serve_on_postgres_outlasts_a_black_holed_database`].
const DATABASE_TIMEOUT: &str = "1s";
/// How long the link black-holes: several database timeouts, well within the 12 s lease.
const BLACKOUT: Duration = Duration::from_secs(5);
/// Requests are sent while the link is black-holed for this long: each one's database timeout
/// ends seconds before the link comes back.
const ASKING: Duration = Duration::from_secs(2);

/// A link that silently swallows every packet (a partition: no reset, no answer) must not hang
/// the node: requests get a 503 once the database timeout passes (without it they would wait
/// for the link to come back, and then succeed), and the worker, whose heartbeats time out
/// too, tries again and keeps its task through the blackout.
#[test]
fn serve_on_postgres_outlasts_a_black_holed_database() {
    let node = Running::start(
        "pg-blackout",
        9,
        &[
            "--database-timeout",
            DATABASE_TIMEOUT,
            "--task-lease",
            "12s",
        ],
    );
    node.link.pause();
    let paused_at = Instant::now();
    let answers = node.all_503_until(paused_at, ASKING, Duration::ZERO);
    assert!(answers >= 2);
    std::thread::sleep(BLACKOUT.saturating_sub(paused_at.elapsed()));
    node.link.resume();
    node.ready_in_one_run();
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
