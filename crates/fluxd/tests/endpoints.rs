//! Every generation endpoint as users reach it: the real `fluxd serve` on a loopback port with
//! the tiny model, plain HTTP/1.1, both official Python clients from PyPI, and webhooks checked by
//! a receiver independent of fluxd (`tests/webhook_receiver.py`).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use fluxd_api::{megapixels, ultra_size};
use serde_json::{json, Value};

/// Ultra at 1/16 of the reference's 4 MP keeps the tiny model quick: 1:1 is 256×256.
const ULTRA_MP: f64 = 0.0625;

fn dims(bytes: &[u8]) -> (u32, u32) {
    let img = image::load_from_memory(bytes).expect("an image");
    (img.width(), img.height())
}

/// A data directory with a key for tenant acme and the test LoRA imported as `my-finetune`.
fn prepared(name: &str) -> (std::path::PathBuf, String) {
    let data = scratch(name);
    let key = create_key(&data, "acme");
    import_lora(&data, "acme", "my-finetune", &[]);
    (data, key)
}

/// Imports the served tiny model's own demo LoRA as `demo`, as the README's walkthrough does
/// once `fluxd serve` has made the tiny model. An import says nothing about serving a tiny
/// random model: it serves nothing.
fn import_demo(data: &Path) {
    let demo = data.join("tiny-model/lora/demo.safetensors");
    assert!(demo.is_file(), "the tiny model has no demo LoRA");
    let out = Command::new(env!("CARGO_BIN_EXE_fluxd"))
        .args([
            "finetunes",
            "import",
            "--tenant",
            "acme",
            "--id",
            "demo",
            s(&demo),
        ])
        .args(["--data-dir", s(data)])
        .env("RUST_LOG", "info")
        .output()
        .expect("run fluxd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("TINY RANDOM"),
        "import printed the serve warning: {stderr}"
    );
}

#[test]
fn every_endpoint_generates_with_the_tables_settings() {
    let (data, key) = prepared("endpoints");
    let redux = data.join("tiny-model/redux");
    let mp = ULTRA_MP.to_string();
    let server = Server::start(
        &data,
        &["--ultra-megapixels", &mp, "--redux-model", s(&redux)],
    );
    import_demo(&data);
    let run = |endpoint: &str, body: Value| {
        let (submitted, done) =
            submit_to_and_wait(&server, &key, &format!("/v1/{endpoint}"), &body);
        assert_eq!(done["status"], "Ready", "{endpoint}: {done}");
        assert_eq!(
            submitted["status"],
            Value::Null,
            "no webhook, no status: {submitted}"
        );
        (submitted, sample_bytes(&server, &done))
    };

    let (submitted, dev) = run(
        "flux-dev",
        json!({"prompt": "a fox", "width": 256, "height": 320, "steps": 2, "seed": 1}),
    );
    assert_eq!(dims(&dev), (256, 320));
    assert_eq!(submitted["output_mp"], megapixels(256, 320));
    let (_, pro) = run(
        "flux-pro",
        json!({"prompt": "a fox", "width": 256, "height": 256, "steps": 2, "interval": 3, "seed": 1}),
    );
    assert_eq!(dims(&pro), (256, 256));
    // No steps or guidance in flux-pro-1.1's schema: the server's fixed ones run.
    let p11 = json!({"prompt": "a fox", "width": 256, "height": 256, "seed": 1, "output_format": "png", "steps": 1});
    let (_, pro11) = run("flux-pro-1.1", p11);
    assert!(image::load_from_memory_with_format(&pro11, image::ImageFormat::Png).is_ok());

    // Ultra: sized by aspect ratio at --ultra-megapixels; raw lowers the guidance.
    let ultra_body = |extra: Value| {
        let mut body = json!({"prompt": "a fox", "seed": 3, "output_format": "png"});
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        body
    };
    let (submitted, ultra) = run("flux-pro-1.1-ultra", ultra_body(json!({})));
    let wide = ultra_size((16, 9), ULTRA_MP);
    assert_eq!(dims(&ultra), wide);
    assert_eq!(submitted["output_mp"], megapixels(wide.0, wide.1));
    let (_, raw) = run("flux-pro-1.1-ultra", ultra_body(json!({"raw": true})));
    assert_eq!(dims(&raw), wide);
    assert_ne!(raw, ultra, "raw changed nothing");
    let (_, tall) = run(
        "flux-pro-1.1-ultra",
        ultra_body(json!({"aspect_ratio": "9:21"})),
    );
    assert_eq!(dims(&tall), ultra_size((9, 21), ULTRA_MP));
    let bad = server.post_json(
        "/v1/flux-pro-1.1-ultra",
        Some(&key),
        &json!({"aspect_ratio": "3:1"}),
    );
    assert_eq!(bad.status, 422);
    assert_eq!(
        bad.json()["detail"][0]["loc"],
        json!(["body", "aspect_ratio"])
    );

    // Ultra with a fine-tune: the same sampler settings, so strength 0 is exactly plain ultra,
    // and the demo LoRA at its default strength (1.2) changes the image.
    let (_, at_zero) = run(
        "flux-pro-1.1-ultra-finetuned",
        ultra_body(json!({"finetune_id": "demo", "finetune_strength": 0})),
    );
    assert_eq!(at_zero, ultra, "strength 0 differs from the base model");
    let (_, tuned) = run(
        "flux-pro-1.1-ultra-finetuned",
        ultra_body(json!({"finetune_id": "demo"})),
    );
    assert_eq!(dims(&tuned), wide);
    assert_ne!(tuned, ultra, "the demo LoRA changed nothing");

    // image_prompt_strength blends the Redux tokens in: 0 is exactly no image prompt.
    let prompt_image = image_prompt_png(400, 300);
    let with_strength = |strength: f64| {
        let body =
            ultra_body(json!({"image_prompt": prompt_image, "image_prompt_strength": strength}));
        let (submitted, bytes) = run("flux-pro-1.1-ultra", body);
        assert_eq!(submitted["input_mp"], 0.12, "{submitted}");
        bytes
    };
    assert_eq!(
        with_strength(0.0),
        ultra,
        "strength 0 still used the image prompt"
    );
    let full = with_strength(1.0);
    let half = with_strength(0.5);
    assert_ne!(full, ultra);
    assert_ne!(half, full, "strength does not scale the image prompt");

    // Endpoints with no model here answer exactly like an unknown path.
    let unknown = server.post_json("/v1/no-such-endpoint", Some(&key), &json!({}));
    assert_eq!(unknown.status, 404);
    for name in fluxd_api::UNSERVED_ENDPOINTS {
        let reply = server.post_json(&format!("/v1/{name}"), Some(&key), &json!({"prompt": "x"}));
        assert_eq!(reply.status, 404, "{name}");
        assert_eq!(reply.json(), json!({"detail": "Not Found"}), "{name}");
    }
    let doc = server.get("/openapi.json", None).json();
    for endpoint in fluxd_api::Endpoint::all() {
        assert!(
            doc["paths"][endpoint.path()]["post"].is_object(),
            "{endpoint:?}"
        );
    }
}

#[test]
fn both_python_clients_use_every_endpoint_they_know() {
    let python = python_with(PYTHON_CLIENTS);
    let (data, key) = prepared("python-clients");
    let server = Server::start(&data, &["--ultra-megapixels", &ULTRA_MP.to_string()]);
    let out = data.join("images");
    std::fs::create_dir_all(&out).expect("mkdir");
    let results = |script: &str| -> Vec<Value> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests")
            .join(script);
        let run = Command::new(&python)
            .args([s(&path), &server.base, &key, s(&out)])
            .output()
            .expect("run a Python client");
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(
            run.status.success(),
            "{script} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&run.stderr)
        );
        stdout
            .lines()
            .filter_map(|l| l.strip_prefix("RESULT "))
            .map(|l| serde_json::from_str(l).expect("a RESULT line"))
            .collect()
    };
    let check = |results: &[Value], want: &[(&str, &str, (u32, u32))]| {
        assert_eq!(results.len(), want.len(), "{results:?}");
        for (got, (model, content_type, size)) in results.iter().zip(want) {
            assert_eq!(got["model"], *model);
            assert_eq!(got["content_type"], *content_type, "{model}");
            let bytes = std::fs::read(got["file"].as_str().expect("file")).expect("image file");
            assert_eq!(dims(&bytes), *size, "{model}");
        }
    };
    check(
        &results("official_client.py"),
        &[
            ("flux-dev", "image/jpeg", (256, 256)),
            ("flux-pro", "image/jpeg", (256, 320)),
            ("flux-pro-1.1", "image/png", (320, 256)),
            (
                "flux-pro-1.1-ultra",
                "image/jpeg",
                ultra_size((16, 9), ULTRA_MP),
            ),
            ("flux-pro-finetuned", "image/jpeg", (256, 256)),
            (
                "flux-pro-1.1-ultra-finetuned",
                "image/jpeg",
                ultra_size((1, 1), ULTRA_MP),
            ),
        ],
    );
    check(
        &results("legacy_client.py"),
        &[
            ("flux-dev", "image/jpeg", (256, 256)),
            ("flux-pro", "image/jpeg", (256, 256)),
            ("flux-pro-1.1", "image/jpeg", (256, 256)),
        ],
    );
}

/// Webhooks from the new endpoints: the submit answer is the union of the reference's two
/// shapes, and each delivery carries `X-Webhook-Secret` (what the official SDK checks) beside
/// both signatures, all verified by the Python receiver; `--webhook-no-secret-header` drops just
/// that header. The submit's `x-request-id` is echoed and shows in the task's log lines.
#[test]
fn webhooks_carry_the_secret_header_and_request_ids_reach_the_task_log() {
    let (data, key) = prepared("webhook-endpoints");
    let log = data.join("serve.log");
    let mut receiver = Receiver::start(data.join("deliveries.jsonl"), &[]);
    let options = ["--webhook-allow-private", "--ultra-megapixels", "0.0625"];
    let mut server = Server::launch(
        &data,
        "127.0.0.1:0",
        &options,
        "info",
        std::fs::File::create(&log).expect("log file").into(),
    );
    let submit =
        |server: &Server, receiver: &Receiver, n: usize, endpoint: &str, mut body: Value| {
            let hook = format!("{}/hook/{n}", receiver.base);
            body["webhook_url"] = json!(hook);
            body["webhook_secret"] = json!(secret_for(n));
            let request_id = format!("req-{n}-{endpoint}");
            let reply = try_request_with(
                server.authority(),
                "POST",
                &format!("/v1/{endpoint}"),
                Some(&key),
                &[("x-request-id", &request_id)],
                body.to_string().as_bytes(),
            )
            .expect("submit");
            assert_eq!(
                reply.status,
                200,
                "{}",
                String::from_utf8_lossy(&reply.body)
            );
            assert_eq!(reply.header("x-request-id"), Some(request_id.as_str()));
            let answer = reply.json();
            let id = answer["id"].as_str().expect("id").to_owned();
            assert_eq!(answer["status"], "Pending", "{answer}");
            assert_eq!(answer["webhook_url"], json!(hook));
            assert_eq!(
                answer["polling_url"],
                format!("{}/v1/get_result?id={id}", server.base)
            );
            assert!(answer["output_mp"].is_number() && answer["input_mp"] == 0.0);
            (id, request_id)
        };
    let wait_for_deliveries = |receiver: &Receiver, ids: &[String]| {
        for _ in 0..600 {
            let got = receiver.deliveries();
            if ids
                .iter()
                .all(|id| got.iter().any(|d| d["task_id"] == id.as_str()))
            {
                return got;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("webhooks missing: {:?}", receiver.deliveries());
    };

    let small = json!({"prompt": "a fox", "width": 256, "height": 256, "steps": 2});
    let sent = [
        submit(&server, &receiver, 1, "flux-dev", small.clone()),
        submit(
            &server,
            &receiver,
            2,
            "flux-pro-1.1-ultra",
            json!({"aspect_ratio": "1:1"}),
        ),
        submit(&server, &receiver, 3, "flux-pro", small.clone()),
    ];
    let ids: Vec<String> = sent.iter().map(|(id, _)| id.clone()).collect();
    let got = wait_for_deliveries(&receiver, &ids);
    assert!(got.iter().all(|d| d["ok"] == true), "{got:?}");
    assert!(server.terminate().success());

    // Each task's lines carry its submit's request id; the log file has no colour codes.
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(!text.contains('\u{1b}'), "colour codes in a log file");
    for (_, request_id) in &sent {
        assert!(
            text.lines()
                .any(|l| l.contains("running task")
                    && l.contains(&format!("request_id={request_id}"))),
            "no task line with {request_id}:\n{text}"
        );
    }

    // Without the secret header: the receiver insists it is absent, the signatures still check.
    receiver = Receiver::start(data.join("deliveries-2.jsonl"), &["--no-secret-header"]);
    let mut no_header = options.to_vec();
    no_header.push("--webhook-no-secret-header");
    server = Server::start(&data, &no_header);
    let (id, _) = submit(&server, &receiver, 4, "flux-dev", small);
    let got = wait_for_deliveries(&receiver, &[id]);
    assert!(got.iter().all(|d| d["ok"] == true), "{got:?}");
}
