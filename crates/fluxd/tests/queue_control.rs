//! Our queue controls as users reach them, on the real `fluxd serve` over loopback HTTP:
//! cancelling a queued and a running task (with their webhooks, verified by the receiver).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Polls `id` until `done(body)` holds (or panics after 30 s); the body then.
fn poll_until(server: &Server, key: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let target = format!("/v1/get_result?id={id}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = server.get(&target, Some(key)).json();
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "gave up waiting: {body}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn cancel(server: &Server, key: &str, id: &str) -> Reply {
    server.post_json("/v1/cancel", Some(key), &json!({ "id": id }))
}

#[test]
fn cancel_stops_running_tasks_and_queued_ones_never_run() {
    let data = scratch("cancel");
    let key = create_key(&data, "acme");
    let stranger = create_key(&data, "globex");
    import_lora(&data, "acme", "my-finetune", &[]);
    let receiver = Receiver::start(data.join("deliveries.jsonl"), &["--any-final"]);
    let server = Server::start(&data, &["--webhook-allow-private"]);
    let submit = |n: usize, body: Value| {
        let mut body = body;
        body["webhook_url"] = json!(format!("{}/hook/{n}", receiver.base));
        body["webhook_secret"] = json!(secret_for(n));
        submit_for_id(&server, &key, "/v1/flux-pro-finetuned", &body)
    };
    // Long enough to be running when the cancel comes: 50 steps at 1024×1024 (each a fraction of
    // a second here, so the time to the stop is the cancel's own). The second waits behind it
    // (one worker).
    let long = small_request(json!({"width": 1024, "height": 1024, "steps": 50}));
    let running = submit(1, long.clone());
    let queued = submit(2, long);
    let started = poll_until(&server, &key, &running, |b| {
        b["progress"].as_f64().is_some_and(|p| p > 0.0)
    });
    println!("progress when cancelling: {}", started["progress"]);

    // Not theirs: as unknown.
    let reply = cancel(&server, &stranger, &running);
    assert_eq!(reply.status, 404);
    assert_eq!(reply.json(), json!({"detail": "Task not found"}));

    let reply = cancel(&server, &key, &queued);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json(), json!({"id": queued, "status": "Error"}));

    let asked = Instant::now();
    let reply = cancel(&server, &key, &running);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json(), json!({"id": running, "status": "Pending"}));
    let stopped = poll_until(&server, &key, &running, |b| b["status"] != "Pending");
    println!("cancel to Error of a running task: {:?}", asked.elapsed());

    for body in [&stopped, &poll_until(&server, &key, &queued, |_| true)] {
        assert_eq!(body["status"], "Error", "{body}");
        let details = body["details"]["error"].as_str().unwrap_or_default();
        assert!(details.contains("cancelled"), "{body}");
        assert_eq!(body["progress"], Value::Null);
    }
    let reply = cancel(&server, &key, &running);
    assert_eq!(
        reply.status,
        409,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );

    // The worker is free at once: the long task was stopped, the queued one never started.
    let done = submit_and_wait(&server, &key, &small_request(json!({"seed": 1})));
    assert_eq!(done["status"], "Ready", "{done}");

    // Both webhooks fire, verified by the receiver, with the cancelled status.
    let ids = [running.as_str(), queued.as_str()];
    let deliveries = receiver.wait_for_verified(
        ids.iter().copied(),
        Instant::now() + Duration::from_secs(30),
    );
    for id in ids {
        let delivery = deliveries
            .iter()
            .find(|d| d["task_id"] == id && d["ok"] == true)
            .unwrap_or_else(|| panic!("no verified webhook for {id}: {deliveries:?}"));
        assert_eq!(delivery["status"], "Error", "{delivery}");
    }
}

#[test]
fn operators_price_endpoints_and_fund_tenants_and_submits_are_charged() {
    let data = scratch("credits");
    let key = create_key(&data, "acme");
    let dir = ["--data-dir", s(&data)];
    let run = |args: &[&str]| fluxd(&[args, &dir[..]].concat());
    // 2 credits per task and 10 per megapixel: a 256×256 image (0.07 MP) costs 2.7.
    let out = run(&[
        "credits",
        "price",
        "flux-dev",
        "--per-task",
        "2",
        "--per-megapixel",
        "10",
    ]);
    assert!(out.contains("price flux-dev"), "{out}");
    assert_eq!(
        run(&["credits", "set", "--tenant", "acme", "3"]).trim(),
        "acme: 3"
    );
    let server = Server::start(&data, &[]);
    let credits = || server.get("/v1/credits", Some(&key)).json();
    assert_eq!(credits(), json!({"credits": 3.0}));

    let body = json!({"prompt": "a fox", "width": 256, "height": 256, "steps": 2, "seed": 7});
    let (submitted, done) = submit_to_and_wait(&server, &key, "/v1/flux-dev", &body);
    assert_eq!(submitted["cost"], json!(2.7));
    assert_eq!(done["status"], "Ready", "{done}");
    // Ready keeps the charge.
    let left = credits()["credits"].as_f64().expect("a balance");
    assert!((left - 0.3).abs() < 1e-9, "{left}");

    // Out of credits: 402 in the API's error shape; nothing queued.
    let refused = server.post_json("/v1/flux-dev", Some(&key), &body);
    assert_eq!(refused.status, 402);
    let detail = refused.json()["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(detail.starts_with("Insufficient credits"), "{detail}");

    // Topped up while the server runs; the next submit goes through.
    let out = run(&["credits", "add", "--tenant", "acme", "5"]);
    assert_eq!(out.trim(), "acme: 5.3");
    let (submitted, _) = submit_to_and_wait(&server, &key, "/v1/flux-dev", &body);
    assert_eq!(submitted["cost"], json!(2.7));
    let shown = run(&["credits", "show", "--tenant", "acme"]);
    assert!(shown.contains("balance acme: 2.6"), "{shown}");
    assert!(
        shown.contains("price flux-dev: 2 per task + 10 per megapixel"),
        "{shown}"
    );
    // Another endpoint has no price: free, and `cost` is null.
    let free = server.post_json(
        "/v1/flux-pro-1.1",
        Some(&key),
        &json!({"prompt": "a fox", "width": 256, "height": 256}),
    );
    assert_eq!(free.status, 200);
    assert_eq!(free.json()["cost"], Value::Null);
}

#[test]
fn a_running_task_shows_a_preview_that_downloads_and_goes_when_it_ends() {
    let data = scratch("preview");
    let key = create_key(&data, "acme");
    import_lora(&data, "acme", "my-finetune", &[]);
    let server = Server::start(&data, &["--preview-every", "2"]);
    let body = small_request(json!({"width": 1440, "height": 1440, "steps": 50}));
    let id = submit_for_id(&server, &key, "/v1/flux-pro-finetuned", &body);
    let running = poll_until(&server, &key, &id, |b| {
        !b["preview"].is_null() || b["status"] != "Pending"
    });
    assert_eq!(
        running["status"], "Pending",
        "finished before a preview: {running}"
    );
    let preview = &running["preview"];
    let step = preview["step"].as_u64().expect("step");
    assert_eq!(preview["steps"], 50, "{preview}");
    assert!(step > 0 && step < 50 && step % 2 == 0, "{preview}");
    // Signed like the image: no key needed; a JPEG an eighth of the image's sides.
    let url = preview["sample"].as_str().expect("sample URL").to_owned();
    let image = download(&url);
    assert_eq!(image.status, 200);
    assert_eq!(image.header("content-type"), Some("image/jpeg"));
    let img = image::load_from_memory(&image.body).expect("a JPEG");
    assert_eq!((img.width(), img.height()), (180, 180));

    // Over (cancelled here, to be quick): no preview, and its file is gone.
    assert_eq!(cancel(&server, &key, &id).status, 200);
    let done = poll_until(&server, &key, &id, |b| b["status"] != "Pending");
    assert_eq!(done["preview"], Value::Null, "{done}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while download(&url).status != 404 {
        assert!(Instant::now() < deadline, "the preview outlived its task");
        std::thread::sleep(Duration::from_millis(50));
    }
}
