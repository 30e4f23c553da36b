//! Crash safety as a user would see it: the real `fluxd serve`, `kill -9`ed at random moments
//! while 100 tasks are submitted and run, restarted each time. Every task that got an id must end
//! `Ready`, and every webhook must arrive at a receiver that checks `X-Webhook-Secret` and both
//! signatures with code independent of fluxd (Python's hmac and the `standardwebhooks` package
//! from PyPI).
//!
//! Run with `--nocapture` to see the figures: kills, tasks lost, duplicate deliveries, time from
//! restart to the first re-claimed task.

mod common;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{json, Value};

const TASKS: usize = 100;
const MIN_KILLS: usize = 10;

/// xorshift64*: random kill moments, reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Seconds since midnight UTC of an RFC 3339 timestamp at the start of a log line.
fn log_time_of_day(line: &str) -> Option<f64> {
    let time = line.get(11..)?.split('Z').next()?;
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

fn time_of_day(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).expect("clock").as_secs_f64() % 86_400.0
}

/// Seconds from `started` to the first task claimed again (attempt ≥ 2) in one run's log.
fn first_reclaim(log: &Path, started: SystemTime) -> Option<f64> {
    let text = std::fs::read_to_string(log).ok()?;
    // A log written to a file has no colour codes (fluxd colours only a terminal).
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in {}",
        log.display()
    );
    let line = text.lines().find(|l| {
        l.contains("running task")
            && l.split("attempt=")
                .nth(1)
                .and_then(|a| a.split_whitespace().next())
                .and_then(|a| a.parse::<u32>().ok())
                .is_some_and(|a| a >= 2)
    })?;
    let delta = log_time_of_day(line)? - time_of_day(started);
    Some(delta.rem_euclid(86_400.0))
}

#[test]
fn kill_9_loses_no_accepted_task_and_no_webhook() {
    let data = scratch("chaos");
    let logs = data.join("logs");
    std::fs::create_dir_all(&logs).expect("mkdir logs");
    let key = create_key_with_limit(&data, "acme", 1000);
    import_lora(&data, "acme", "my-finetune", &[]);
    let receiver = Receiver::start(data.join("deliveries.jsonl"), &[]);
    let listen = format!("127.0.0.1:{}", free_port());
    let authority = listen.clone();
    let options = [
        "--webhook-allow-private",
        "--webhook-timeout",
        "2s",
        "--webhook-retry-base",
        "1s",
        "--task-lease",
        "1s",
        "--drain-timeout",
        "2s",
        // Kills here come every fraction of a second, far more often than in any real
        // deployment, so the cap on interrupted runs is raised out of the way.
        "--max-task-attempts",
        "100",
        "--max-active-tasks",
        "1000",
    ];
    let mut runs = 0usize;
    let launch = |runs: &mut usize| {
        let log = logs.join(format!("run-{runs}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let started = SystemTime::now();
        let server = Server::launch(
            &data,
            &listen,
            &options,
            "warn,fluxd_server=info",
            file.into(),
        );
        *runs += 1;
        (server, log, started)
    };

    // The client: submits until each of the 100 tasks has an id, retrying while the server is
    // down; a submit cut by a kill may or may not have been accepted, and only ids count.
    let accepted: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
    let submitting = Arc::new(AtomicBool::new(true));
    let client = {
        let accepted = accepted.clone();
        let submitting = submitting.clone();
        let key = key.clone();
        let hooks = receiver.base.clone();
        std::thread::spawn(move || {
            for n in 0..TASKS {
                let mut body = json!({
                    "finetune_id": "my-finetune",
                    "prompt": format!("a photo of TOK number {n}"),
                    "width": 256,
                    "height": 256,
                    "steps": 4,
                    "seed": n,
                });
                // Two tasks in three ask for a webhook.
                if n % 3 != 2 {
                    body["webhook_url"] = json!(format!("{hooks}/hook/{n}"));
                    body["webhook_secret"] = json!(secret_for(n));
                }
                loop {
                    let sent = try_request(
                        &authority,
                        "POST",
                        "/v1/flux-pro-finetuned",
                        Some(&key),
                        body.to_string().as_bytes(),
                    );
                    match sent {
                        Ok(reply) if reply.status == 200 => {
                            let id = reply.json()["id"].as_str().expect("id").to_owned();
                            accepted.lock().expect("lock").push((n, id));
                            break;
                        }
                        Ok(reply) => panic!(
                            "submit {n}: {} {}",
                            reply.status,
                            String::from_utf8_lossy(&reply.body)
                        ),
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
                std::thread::sleep(Duration::from_millis(40));
            }
            submitting.store(false, Ordering::SeqCst);
        })
    };

    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64
        | 1;
    println!("kill schedule seed {seed}");
    let mut rng = Rng(seed);
    let mut restarts = Vec::new();
    let (mut server, _, _) = launch(&mut runs);
    let mut kills = 0;
    // At least MIN_KILLS, and on until every task has an id (unless the client gave up).
    let client_failed = || client.is_finished() && submitting.load(Ordering::SeqCst);
    while (kills < MIN_KILLS || submitting.load(Ordering::SeqCst)) && !client_failed() {
        std::thread::sleep(Duration::from_millis(150 + rng.below(750)));
        server.child.kill().expect("kill -9");
        server.child.wait().expect("reap");
        kills += 1;
        let (next, log, started) = launch(&mut runs);
        server = next;
        restarts.push((log, started));
    }
    client.join().expect("client thread");

    // Let the last server finish everything.
    let accepted = accepted.lock().expect("lock").clone();
    assert_eq!(accepted.len(), TASKS);
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut lost = Vec::new();
    for (n, id) in &accepted {
        let status = loop {
            let reply = server.get(&format!("/v1/get_result?id={id}"), Some(&key));
            assert_eq!(reply.status, 200, "task {n}");
            let body = reply.json();
            if body["status"] != "Pending" || Instant::now() > deadline {
                break body["status"].clone();
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        if status != "Ready" {
            lost.push((n, id.clone(), status));
        }
    }

    // Every webhook arrives, verified, at least once.
    let hooked: HashMap<&str, usize> = accepted
        .iter()
        .filter(|(n, _)| n % 3 != 2)
        .map(|(n, id)| (id.as_str(), *n))
        .collect();
    let deliveries = receiver.wait_for_verified(hooked.keys().copied(), deadline);
    let bad: Vec<&Value> = deliveries.iter().filter(|d| d["ok"] != true).collect();
    let mut accepted_per_task: HashMap<&str, usize> = HashMap::new();
    for d in deliveries.iter().filter(|d| d["answered"] == 200) {
        if let Some(id) = d["task_id"].as_str() {
            *accepted_per_task.entry(id).or_default() += 1;
        }
    }
    let missing: Vec<usize> = hooked
        .iter()
        .filter(|(id, _)| !accepted_per_task.contains_key(*id))
        .map(|(_, n)| *n)
        .collect();
    let duplicates: usize = hooked
        .keys()
        .filter_map(|id| accepted_per_task.get(id))
        .map(|c| c.saturating_sub(1))
        .sum();
    let retried = deliveries.iter().filter(|d| d["answered"] == 503).count();
    // Seconds from each restart to the first task run again.
    let mut reclaims: Vec<f64> = restarts
        .iter()
        .filter_map(|(log, started)| first_reclaim(log, *started))
        .collect();
    reclaims.sort_by(f64::total_cmp);

    // A graceful stop after all that still exits 0.
    let exit = server.terminate();

    println!(
        "chaos: {kills} kills, {runs} starts, {} tasks accepted, {} lost, {} webhooks expected, \
         {} missing, {} deliveries ({retried} answered 503 on purpose), {duplicates} duplicate \
         deliveries, {} bad signatures",
        accepted.len(),
        lost.len(),
        hooked.len(),
        missing.len(),
        deliveries.len(),
        bad.len()
    );
    if let (Some(first), Some(last)) = (reclaims.first(), reclaims.last()) {
        println!(
            "restart → first re-claimed task, over {} restarts: min {first:.2} s, median {:.2} s, \
             max {last:.2} s (lease 1 s; an interrupted task is due once its lease runs out)",
            reclaims.len(),
            reclaims[reclaims.len() / 2],
        );
    }
    assert!(kills >= MIN_KILLS);
    assert!(lost.is_empty(), "tasks that did not end Ready: {lost:?}");
    assert!(bad.is_empty(), "deliveries failing verification: {bad:?}");
    assert!(
        missing.is_empty(),
        "webhooks never delivered for hooks {missing:?}"
    );
    assert!(retried > 0, "the receiver's 503s were never exercised");
    assert!(
        !reclaims.is_empty(),
        "no run re-claimed an interrupted task"
    );
    assert!(exit.success(), "SIGTERM exit status {exit:?}");
}
