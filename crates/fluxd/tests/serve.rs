//! `fluxd serve`, `fluxd keys` and `fluxd finetunes` as a user runs them: the real binary on a
//! loopback port, a fresh data directory (tiny model), plain HTTP/1.1 over a TCP socket.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use fluxd_engine::lora::{write_random_lora, LoraFormat};
use fluxd_engine::transformer::FluxConfig;
use serde_json::{json, Value};

#[test]
fn serve_end_to_end() {
    let data = scratch("e2e");
    let acme = create_key(&data, "acme");
    let other = create_key(&data, "globex");
    import_lora(&data, "acme", "my-finetune", &["--shared"]);
    let server = Server::start(&data, &[]);

    assert_eq!(server.get("/healthz", None).status, 200);
    let openapi = server.get("/openapi.json", None);
    assert_eq!(openapi.status, 200);
    assert!(openapi.json()["paths"].is_object());

    // Submit → poll → download without a key → a 256×256 JPEG.
    let submit = server.post_json(
        "/v1/flux-pro-finetuned",
        Some(&acme),
        &small_request(json!({"seed": 42})),
    );
    assert_eq!(
        submit.status,
        200,
        "{}",
        String::from_utf8_lossy(&submit.body)
    );
    let submitted = submit.json();
    let id = submitted["id"].as_str().expect("id").to_owned();
    assert_eq!(
        submitted["polling_url"],
        format!("{}/v1/get_result?id={id}", server.base)
    );
    assert_eq!(submitted["cost"], Value::Null);
    assert_eq!(submitted["input_mp"], 0.0);
    assert_eq!(submitted["output_mp"], 0.07);
    let done = poll_until_final(
        &server,
        submitted["polling_url"].as_str().expect("url"),
        &acme,
    );
    assert_eq!(done["status"], "Ready", "{done}");
    assert_eq!(done["id"], id.as_str());
    let result = &done["result"];
    assert_eq!(result["seed"], 42);
    assert_eq!(result["prompt"], "a photo of TOK");
    assert!(result["end_time"].as_f64() >= result["start_time"].as_f64());
    assert!(result["duration"].as_f64().expect("duration") >= 0.0);
    let sample = result["sample"].as_str().expect("sample URL");
    let sample_target = sample.strip_prefix(&server.base).expect("absolute URL");
    let image = server.get(sample_target, None);
    assert_eq!(image.status, 200);
    assert_eq!(image.header("content-type"), Some("image/jpeg"));
    let decoded =
        image::load_from_memory_with_format(&image.body, image::ImageFormat::Jpeg).expect("a JPEG");
    assert_eq!((decoded.width(), decoded.height()), (256, 256));

    // A tampered or truncated signature is refused.
    let (i, c) = sample_target.char_indices().last().expect("non-empty");
    let tampered = format!(
        "{}{}",
        &sample_target[..i],
        if c == '0' { '1' } else { '0' }
    );
    let refused = server.get(&tampered, None);
    assert_eq!(refused.status, 403);
    assert_eq!(
        refused.json(),
        json!({"detail": "Invalid or expired signature"})
    );
    let unsigned = sample_target.split('?').next().expect("path");
    assert_eq!(server.get(unsigned, None).status, 403);

    // PNG, random seed recorded.
    let submit = server.post_json(
        "/v1/flux-pro-finetuned",
        Some(&acme),
        &small_request(json!({"output_format": "png", "steps": 1, "finetune_strength": 0.5})),
    );
    assert_eq!(submit.status, 200);
    let done = poll_until_final(
        &server,
        submit.json()["polling_url"].as_str().expect("url"),
        &acme,
    );
    assert_eq!(done["status"], "Ready", "{done}");
    assert!(done["result"]["seed"].is_u64(), "{done}");
    let sample = done["result"]["sample"].as_str().expect("sample");
    let image = server.get(sample.strip_prefix(&server.base).expect("absolute"), None);
    assert_eq!(image.header("content-type"), Some("image/png"));
    let decoded =
        image::load_from_memory_with_format(&image.body, image::ImageFormat::Png).expect("PNG");
    assert_eq!((decoded.width(), decoded.height()), (256, 256));

    // Authentication.
    let missing = server.post_json("/v1/flux-pro-finetuned", None, &small_request(json!({})));
    assert_eq!(missing.status, 403);
    assert_eq!(missing.json(), json!({"detail": "Not authenticated"}));
    let bad = server.get(
        &format!("/v1/get_result?id={id}"),
        Some("fxd_not-a-real-key"),
    );
    assert_eq!(bad.status, 403);
    assert_eq!(bad.json(), json!({"detail": "Invalid API key"}));

    // Tenancy: another tenant does not see the task, nor the fine-tune by its bare name, but may
    // use it as owner/name because it is shared.
    let foreign = server.get(&format!("/v1/get_result?id={id}"), Some(&other));
    assert_eq!(foreign.status, 200);
    assert_eq!(foreign.json()["status"], "Task not found");
    assert_eq!(foreign.json()["result"], Value::Null);
    let not_theirs = server.post_json(
        "/v1/flux-pro-finetuned",
        Some(&other),
        &small_request(json!({})),
    );
    assert_eq!(not_theirs.status, 404);
    assert_eq!(not_theirs.json(), json!({"detail": "Finetune not found"}));
    let shared = server.post_json(
        "/v1/flux-pro-finetuned",
        Some(&other),
        &small_request(json!({"finetune_id": "acme/my-finetune", "steps": 1})),
    );
    assert_eq!(
        shared.status,
        200,
        "{}",
        String::from_utf8_lossy(&shared.body)
    );
    let done = poll_until_final(
        &server,
        shared.json()["polling_url"].as_str().expect("url"),
        &other,
    );
    assert_eq!(done["status"], "Ready", "{done}");
    let unknown = server.get("/v1/get_result?id=not-a-uuid", Some(&acme));
    assert_eq!(unknown.json()["status"], "Task not found");

    // Validation: the pydantic shape, all problems at once.
    let invalid = server.post_json(
        "/v1/flux-pro-finetuned",
        Some(&acme),
        &json!({"finetune_id": "my-finetune", "width": 1000, "steps": 0}),
    );
    assert_eq!(invalid.status, 422);
    let detail = invalid.json()["detail"].as_array().expect("list").clone();
    let locs: Vec<Value> = detail.iter().map(|e| e["loc"].clone()).collect();
    assert!(locs.contains(&json!(["body", "width"])), "{detail:?}");
    assert!(locs.contains(&json!(["body", "steps"])), "{detail:?}");
    let width = detail
        .iter()
        .find(|e| e["loc"] == json!(["body", "width"]))
        .expect("width error");
    assert_eq!(width["type"], "multiple_of");
    assert_eq!(width["msg"], "Input should be a multiple of 32");
    let malformed = server.request("POST", "/v1/flux-pro-finetuned", Some(&acme), b"{");
    assert_eq!(malformed.status, 422);
    assert_eq!(malformed.json()["detail"][0]["type"], "json_invalid");
    let redux = server.post_json(
        "/v1/flux-pro-finetuned",
        Some(&acme),
        &small_request(json!({"image_prompt": "aGVsbG8="})),
    );
    assert_eq!(redux.status, 422);
    assert_eq!(
        redux.json()["detail"][0]["loc"],
        json!(["body", "image_prompt"])
    );
    let missing_id = server.get("/v1/get_result", Some(&acme));
    assert_eq!(missing_id.status, 422);
    assert_eq!(
        missing_id.json()["detail"][0]["loc"],
        json!(["query", "id"])
    );

    // Fine-tune management.
    let mine = server.get("/v1/my_finetunes", Some(&acme));
    assert_eq!(mine.json(), json!({"finetunes": ["my-finetune"]}));
    assert_eq!(
        server.get("/v1/my_finetunes", Some(&other)).json(),
        json!({"finetunes": []})
    );
    let details = server.get("/v1/finetune_details?finetune_id=my-finetune", Some(&acme));
    assert_eq!(details.status, 200);
    let details = details.json();
    assert_eq!(details["finetune_details"]["finetune_id"], "my-finetune");
    assert_eq!(details["finetune_details"]["format"], "kohya");
    assert_eq!(details["finetune_details"]["lora_rank"], 4);

    // Upload over HTTP, then delete.
    let lora = data.join("uploaded.safetensors");
    write_random_lora(&lora, LoraFormat::Kohya, &FluxConfig::tiny(), 4, 2, &|_| {
        true
    })
    .expect("write LoRA");
    let bytes = std::fs::read(&lora).expect("read LoRA");
    let uploaded = server.request(
        "POST",
        "/v1/finetunes?finetune_id=uploaded&trigger_word=TOK",
        Some(&acme),
        &bytes,
    );
    assert_eq!(
        uploaded.status,
        200,
        "{}",
        String::from_utf8_lossy(&uploaded.body)
    );
    assert_eq!(uploaded.json()["finetune_details"]["trigger_word"], "TOK");
    let again = server.request(
        "POST",
        "/v1/finetunes?finetune_id=uploaded",
        Some(&acme),
        &bytes,
    );
    assert_eq!(again.status, 409);
    let garbage = server.request(
        "POST",
        "/v1/finetunes?finetune_id=garbage",
        Some(&acme),
        b"not a safetensors file",
    );
    assert_eq!(
        garbage.status,
        422,
        "{}",
        String::from_utf8_lossy(&garbage.body)
    );
    let deleted = server.post_json(
        "/v1/delete_finetune",
        Some(&acme),
        &json!({"finetune_id": "uploaded"}),
    );
    assert_eq!(deleted.status, 200);
    let deleted = deleted.json();
    assert_eq!(deleted["deleted_finetune_id"], "uploaded");
    assert!(deleted["timestamp"].is_string() && deleted["message"].is_string());
    let gone = server.post_json(
        "/v1/delete_finetune",
        Some(&acme),
        &json!({"finetune_id": "uploaded"}),
    );
    assert_eq!(gone.status, 404);
    assert_eq!(
        server
            .get("/v1/finetune_details?finetune_id=uploaded", Some(&acme))
            .status,
        404
    );
}

#[test]
fn too_many_active_tasks_is_429_with_retry_after() {
    // An API-only server: tasks stay queued, so the limit is reached deterministically.
    let data = scratch("limit");
    let key = create_key(&data, "acme");
    import_lora(&data, "acme", "my-finetune", &[]);
    let mut server = Server::start(&data, &["--no-worker", "--max-active-tasks", "2"]);
    for _ in 0..2 {
        let ok = server.post_json(
            "/v1/flux-pro-finetuned",
            Some(&key),
            &small_request(json!({})),
        );
        assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
        let polled = server.get(
            &format!(
                "/v1/get_result?id={}",
                ok.json()["id"].as_str().expect("id")
            ),
            Some(&key),
        );
        assert_eq!(polled.json()["status"], "Pending");
        assert_eq!(polled.json()["progress"], Value::Null);
    }
    let refused = server.post_json(
        "/v1/flux-pro-finetuned",
        Some(&key),
        &small_request(json!({})),
    );
    assert_eq!(refused.status, 429);
    assert!(refused.header("retry-after").is_some());
    assert!(refused.json()["detail"].is_string());
    // Another key is not held back by this one's tasks.
    let second = create_key(&data, "acme");
    let ok = server.post_json(
        "/v1/flux-pro-finetuned",
        Some(&second),
        &small_request(json!({})),
    );
    assert_eq!(ok.status, 200);

    // Graceful shutdown; the queued tasks survive it (the store is durable).
    assert!(server.terminate().success());
    let out = fluxd(&[
        "finetunes",
        "list",
        "--tenant",
        "acme",
        "--data-dir",
        s(&data),
    ]);
    assert_eq!(out.trim(), "my-finetune");
}

/// SIGTERM while a long task runs: the server stops it after the drain time, hands it back to
/// the queue and exits 0; the next start runs it at once (not after the task lease, 60 s here)
/// and the interrupted run is not counted against the task.
#[test]
fn sigterm_hands_the_running_task_back_and_exits_0() {
    let data = scratch("drain");
    let key = create_key(&data, "acme");
    import_lora(&data, "acme", "my-finetune", &[]);
    let mut server = Server::start(&data, &["--drain-timeout", "1s"]);
    // Long enough to be running when the signal comes: 50 steps at 1440×1440.
    let body = small_request(json!({"width": 1440, "height": 1440, "steps": 50}));
    let submit = server.post_json("/v1/flux-pro-finetuned", Some(&key), &body);
    assert_eq!(submit.status, 200);
    let id = submit.json()["id"].as_str().expect("id").to_owned();
    let target = format!("/v1/get_result?id={id}");
    let running = (0..600).any(|_| {
        let body = server.get(&target, Some(&key)).json();
        let started = body["progress"].as_f64().is_some_and(|p| p > 0.0);
        if !started {
            std::thread::sleep(Duration::from_millis(50));
        }
        started
    });
    assert!(running, "the task never started");

    let signalled = std::time::Instant::now();
    let exit = server.terminate();
    let drain = signalled.elapsed();
    assert!(exit.success(), "{exit:?}");
    println!("SIGTERM to exit with a running task: {drain:?} (drain timeout 1 s)");

    let server = Server::start(&data, &[]);
    let body = server.get(&target, Some(&key)).json();
    assert_eq!(body["status"], "Pending", "{body}");
    // Handed back, so it runs again long before a 60 s lease could have run out.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let progressed = loop {
        let body = server.get(&target, Some(&key)).json();
        if body["progress"].as_f64().is_some_and(|p| p > 0.0) || body["status"] == "Ready" {
            break true;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        progressed,
        "the handed-back task did not run again promptly"
    );
}

/// `prompt_upsampling: true` with an upsampler configured: the language model (a stand-in on
/// loopback) rewrites the prompt, and `result.prompt` reports the rewrite.
#[test]
fn prompt_upsampling_rewrites_the_prompt_through_the_configured_model() {
    let llm = FakeLlm::start("A photo of TOK, a red fox in deep snow at golden hour");
    let data = scratch("upsampling");
    let key = create_key(&data, "acme");
    import_lora(&data, "acme", "my-finetune", &[]);
    let endpoint = format!("{}/v1", llm.base);
    let server = Server::start(
        &data,
        &[
            "--upsampler-url",
            &endpoint,
            "--upsampler-model",
            "tiny-llm",
        ],
    );
    let body = small_request(json!({"prompt": "TOK fox", "prompt_upsampling": true, "seed": 3}));
    let done = submit_and_wait(&server, &key, &body);
    assert_eq!(done["status"], "Ready", "{done}");
    assert_eq!(
        done["result"]["prompt"],
        "A photo of TOK, a red fox in deep snow at golden hour"
    );
    let asked = llm.requests.lock().expect("lock").clone();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0]["model"], "tiny-llm");
    assert_eq!(asked[0]["seed"], 3);
    assert_eq!(asked[0]["messages"][1]["content"], "TOK fox");
}

/// `image_prompt` with `--redux-model`: a bad image is a 422 naming the field; a good one steers
/// the image (same seed and prompt, different image than without it).
#[test]
fn image_prompts_go_through_redux() {
    use base64::Engine as _;
    let data = scratch("redux");
    let key = create_key(&data, "acme");
    import_lora(&data, "acme", "my-finetune", &[]);
    // The first start writes the tiny model, Redux included, into the data directory.
    let redux = data.join("tiny-model/redux");
    let server = Server::start(&data, &["--redux-model", s(&redux)]);

    let gif = base64::engine::general_purpose::STANDARD.encode(b"GIF89a\x01\x00\x01\x00\x00");
    let refused = server.post_json(
        "/v1/flux-pro-finetuned",
        Some(&key),
        &small_request(json!({"image_prompt": gif})),
    );
    assert_eq!(refused.status, 422);
    let detail = &refused.json()["detail"][0];
    assert_eq!(detail["loc"], json!(["body", "image_prompt"]), "{detail}");

    let prompt_image = image_prompt_png(40, 30);
    let run = |extra: Value| {
        let done = submit_and_wait(&server, &key, &small_request(extra));
        assert_eq!(done["status"], "Ready", "{done}");
        let sample = done["result"]["sample"]
            .as_str()
            .expect("sample")
            .to_owned();
        let target = sample
            .strip_prefix(&server.base)
            .expect("local URL")
            .to_owned();
        let image = server.get(&target, None);
        assert_eq!(image.status, 200);
        image.body
    };
    let with_image = run(json!({"seed": 5, "output_format": "png", "image_prompt": prompt_image}));
    let again = run(json!({"seed": 5, "output_format": "png", "image_prompt": prompt_image}));
    let without = run(json!({"seed": 5, "output_format": "png"}));
    assert_eq!(
        with_image, again,
        "the same image prompt and seed give the same image"
    );
    assert_ne!(with_image, without, "the image prompt changed nothing");
}

/// Moderation: a blocked prompt term is `Request Moderated` by `safety_tolerance` (an operator's
/// `always:` term even at 6); the image check runs the classifier given with `--safety-checker`
/// (tiny ones in Falconsai's format, made to flag every image or none) and a flagged image is
/// `Content Moderated` with its reasons, never stored or served.
#[test]
fn moderation_refuses_prompts_and_images() {
    use fluxd_engine::safety::write_tiny_classifier_with;
    let data = scratch("moderation");
    let key = create_key(&data, "acme");
    import_lora(&data, "acme", "my-finetune", &[]);
    let policy = data.join("policy.txt");
    std::fs::write(&policy, "# house rules\nalways: purple elephant\n").expect("policy");
    let (flag_none, flag_all) = (data.join("checker-none"), data.join("checker-all"));
    write_tiny_classifier_with(&flag_none, 7, -20.0).expect("classifier");
    write_tiny_classifier_with(&flag_all, 7, 20.0).expect("classifier");
    let run = |server: &Server, extra: Value| submit_and_wait(server, &key, &small_request(extra));

    let mut server = Server::start(
        &data,
        &[
            "--prompt-policy",
            s(&policy),
            "--safety-checker",
            s(&flag_none),
        ],
    );
    let clean = run(&server, json!({"seed": 1, "safety_tolerance": 0}));
    assert_eq!(clean["status"], "Ready", "{clean}");
    let prompt = run(&server, json!({"prompt": "porn", "safety_tolerance": 2}));
    assert_eq!(prompt["status"], "Request Moderated", "{prompt}");
    let reasons = prompt["details"]["Moderation Reasons"]
        .as_array()
        .expect("reasons");
    assert!(!reasons.is_empty(), "{prompt}");
    let allowed = run(&server, json!({"prompt": "porn", "safety_tolerance": 6}));
    assert_eq!(allowed["status"], "Ready", "{allowed}");
    let house = run(
        &server,
        json!({"prompt": "a Purple  Elephant!", "safety_tolerance": 6}),
    );
    assert_eq!(house["status"], "Request Moderated", "{house}");
    assert!(server.terminate().success());

    let server = Server::start(&data, &["--safety-checker", s(&flag_all)]);
    let flagged = run(&server, json!({"seed": 1, "safety_tolerance": 6}));
    assert_eq!(flagged["status"], "Content Moderated", "{flagged}");
    let reasons = flagged["details"]["Moderation Reasons"]
        .as_array()
        .expect("reasons");
    assert!(!reasons.is_empty(), "{flagged}");
    assert_eq!(flagged["result"], Value::Null, "{flagged}");
    let id = flagged["id"].as_str().expect("id");
    let kept = std::fs::read_dir(data.join("blobs/samples"))
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(id))
        })
        .unwrap_or(false);
    assert!(!kept, "the moderated image was stored");
}

/// An operator sees a webhook the server gave up on (`fluxd webhooks list`) and, once the
/// receiver is back, sends it again (`fluxd webhooks retry`) to the running server.
#[test]
fn a_given_up_webhook_is_listed_and_sent_again_on_request() {
    let data = scratch("webhook-retry");
    let key = create_key(&data, "acme");
    import_lora(&data, "acme", "my-finetune", &[]);
    // A port with nobody listening yet: every attempt is refused, and with no retry window the
    // first failure is final.
    let addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        probe.local_addr().expect("addr").to_string()
    };
    let server = Server::start(
        &data,
        &["--webhook-allow-private", "--webhook-retry-for", "0s"],
    );
    let hook = format!("http://{addr}/hooks/fluxd");
    let done = submit_and_wait(&server, &key, &small_request(json!({"webhook_url": hook})));
    assert_eq!(done["status"], "Ready", "{done}");
    let task_id = done["id"].as_str().expect("id").to_owned();
    let list = |status: &str| {
        fluxd(&[
            "webhooks",
            "list",
            "--status",
            status,
            "--data-dir",
            s(&data),
        ])
    };
    let failed = wait_for(|| Some(list("failed")).filter(|out| out.contains(&task_id)));
    let line = failed.lines().next().expect("one delivery");
    assert!(line.contains("failed") && line.contains(&hook), "{line}");
    assert!(
        line.contains("attempts=1") && line.contains("last_error: "),
        "{line}"
    );
    let delivery_id = line.split_whitespace().next().expect("id").to_owned();

    // An unknown id is an error; the receiver comes back; the retry reaches it.
    let nobody = "00000000-0000-4000-8000-000000000000";
    let unknown = Command::new(env!("CARGO_BIN_EXE_fluxd"))
        .args(["webhooks", "retry", nobody, "--data-dir", s(&data)])
        .output()
        .expect("run fluxd");
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no failed webhook delivery"));
    let receiver = FakeLlm::start_at(&addr, "thanks");
    let out = fluxd(&["webhooks", "retry", &delivery_id, "--data-dir", s(&data)]);
    assert!(out.contains("queued 1 "), "{out}");
    let got = wait_for(|| {
        let got = receiver.requests.lock().expect("lock").clone();
        (!got.is_empty()).then_some(got)
    });
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["task_id"], task_id.as_str());
    assert_eq!(got[0]["status"], "Ready");
    let delivered = wait_for(|| Some(list("delivered")).filter(|out| out.contains(&task_id)));
    assert!(delivered.contains("attempts=2"), "{delivered}");
    assert!(list("failed").is_empty());
}

/// Polls `check` every 100 ms for up to 30 s.
fn wait_for<T>(check: impl Fn() -> Option<T>) -> T {
    for _ in 0..300 {
        if let Some(found) = check() {
            return found;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("gave up waiting");
}
