//! API nodes and a worker as separate processes on one store, with blobs in a real
//! S3-compatible bucket (SeaweedFS, started by `scripts/test.sh`): `fluxd serve --no-worker`
//! loads no model yet checks uploads, `fluxd worker` generates what the API nodes accept, and
//! the image downloads through fluxd's signed URL from any API node and through the bucket's own
//! presigned URL, until each expires.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use fluxd_engine::lora::{write_random_lora, LoraFormat};
use fluxd_engine::transformer::FluxConfig;
use fluxd_store::conformance::test_s3_url;
use fluxd_store::BlobStore;
use serde_json::{json, Value};

/// An API-only node on `data` with blobs at `blobs`.
fn api_node(data: &Path, blobs: &str, extra: &[&str]) -> Server {
    let mut args = vec!["--no-worker", "--blobs", blobs, "--webhook-allow-private"];
    args.extend_from_slice(extra);
    Server::start(data, &args)
}

/// Splits an `http://authority/target` URL.
fn split_url(url: &str) -> (&str, &str) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    rest.split_at(rest.find('/').unwrap_or(rest.len()))
}

fn download(url: &str) -> Reply {
    let (authority, target) = split_url(url);
    request(authority, "GET", target, None, b"")
}

/// The `result.sample` of the task `id` as `node` answers get_result.
fn sample_url(node: &Server, key: &str, id: &str) -> String {
    let body = node
        .get(&format!("/v1/get_result?id={id}"), Some(key))
        .json();
    assert_eq!(body["status"], "Ready", "{body}");
    body["result"]["sample"]
        .as_str()
        .expect("sample")
        .to_owned()
}

/// The object under `key` in the bucket, read with fluxd's own S3 client.
fn object(blobs: &str, key: &str) -> Vec<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime
        .block_on(async { BlobStore::from_url(blobs)?.get(key).await })
        .expect("the object is in the bucket")
        .to_vec()
}

#[test]
fn api_nodes_and_a_worker_share_one_store_and_an_s3_bucket() {
    let Some(blobs) = test_s3_url("roles") else {
        return;
    };
    let data = scratch("roles");
    let key = create_key(&data, "acme");

    // The API node starts without a model (none is written or loaded) and is ready at once.
    let mut api = api_node(&data, &blobs, &[]);
    assert!(
        !data.join("tiny-model").exists(),
        "an API-only node must not make or load a model"
    );
    let ready = api.get("/readyz", None);
    assert_eq!(ready.status, 200);

    // It checks uploads against the served model's config without the model: a LoRA for
    // another base is refused, one for this base lands in the bucket.
    let wrong = data.join("medium.safetensors");
    write_random_lora(
        &wrong,
        LoraFormat::Kohya,
        &FluxConfig::medium(),
        4,
        1,
        &|_| true,
    )
    .expect("write LoRA");
    let refused = api.request(
        "POST",
        "/v1/finetunes?finetune_id=wrong",
        Some(&key),
        &std::fs::read(&wrong).expect("read"),
    );
    assert_eq!(
        refused.status,
        422,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    let lora = data.join("tiny.safetensors");
    write_random_lora(&lora, LoraFormat::Kohya, &FluxConfig::tiny(), 4, 1, &|_| {
        true
    })
    .expect("write LoRA");
    let uploaded = api.request(
        "POST",
        "/v1/finetunes?finetune_id=my-finetune",
        Some(&key),
        &std::fs::read(&lora).expect("read"),
    );
    assert_eq!(
        uploaded.status,
        200,
        "{}",
        String::from_utf8_lossy(&uploaded.body)
    );

    // The CLI takes the same --blobs: an import streams the file into the bucket, a delete
    // removes it again.
    import_lora(&data, "acme", "cli-finetune", &["--blobs", &blobs]);
    fluxd(&[
        "finetunes",
        "delete",
        "--tenant",
        "acme",
        "--id",
        "cli-finetune",
        "--data-dir",
        s(&data),
        "--blobs",
        &blobs,
    ]);

    // A worker on the same store and bucket, with health and metrics on a port of its own.
    let receiver = FakeLlm::start("unused");
    let mut worker = Server::run_fluxd(
        &[
            "worker",
            "--data-dir",
            s(&data),
            "--blobs",
            &blobs,
            "--public-url",
            &api.base,
            "--webhook-allow-private",
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
        "warn",
        Stdio::inherit(),
    );
    let health = worker.get("/healthz", None);
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");
    // It serves no API.
    assert_eq!(worker.get("/v1/get_result?id=x", Some(&key)).status, 404);

    // A task submitted to the API node is generated by the worker.
    let body = small_request(json!({
        "seed": 7,
        "webhook_url": format!("{}/hook", receiver.base),
    }));
    let result = submit_and_wait(&api, &key, &body);
    assert_eq!(result["status"], "Ready", "{result}");
    let id = result["id"].as_str().expect("id").to_owned();
    let sample_key = format!("samples/{id}.jpeg");
    let stored = object(&blobs, &sample_key);
    assert!(stored.starts_with(&[0xff, 0xd8]), "a JPEG in the bucket");

    // fluxd's signed URL: the API node streams the object out of the bucket.
    let signed = sample_url(&api, &key, &id);
    assert!(signed.starts_with(&api.base), "{signed}");
    let got = download(&signed);
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-type"), Some("image/jpeg"));
    assert_eq!(got.body, stored);

    // A node whose bucket cannot be reached answers 503 (retry later), not 500.
    let cut_off = Server::run_fluxd(
        &[
            "serve",
            "--no-worker",
            "--data-dir",
            s(&data),
            "--blobs",
            &blobs,
            "--listen",
            "127.0.0.1:0",
        ],
        &[("AWS_ENDPOINT_URL", "http://127.0.0.1:1")],
        "error",
        Stdio::inherit(),
    );
    let (_, target) = split_url(&signed);
    let unreachable = cut_off.get(target, None);
    assert_eq!(
        unreachable.status,
        503,
        "{}",
        String::from_utf8_lossy(&unreachable.body)
    );
    drop(cut_off);

    // Another tenant gets nothing of acme's out of the node's caches, which hold the task and
    // the fine-tune now.
    let other = create_key(&data, "other");
    let peek = api
        .get(&format!("/v1/get_result?id={id}"), Some(&other))
        .json();
    assert_eq!(peek["status"], "Task not found", "{peek}");
    let borrowed = api.post_json(
        "/v1/flux-pro-finetuned",
        Some(&other),
        &small_request(json!({})),
    );
    assert_eq!(borrowed.status, 404);

    // Another API node (any node answers any request), handing out the bucket's presigned URLs:
    // the image downloads straight from the S3 server.
    let presigning = api_node(&data, &blobs, &["--delivery", "presigned"]);
    let presigned = sample_url(&presigning, &key, &id);
    let endpoint = std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL");
    assert!(presigned.starts_with(&endpoint), "{presigned}");
    assert!(presigned.contains("X-Amz-Expires=600"), "{presigned}");
    let got = download(&presigned);
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    assert_eq!(got.header("content-type"), Some("image/jpeg"));
    assert_eq!(got.body, stored);

    // The webhook arrives (sent by whichever node leased it, before any node with short-lived links starts) with a working image link.
    let hook = wait_for_webhook(&receiver, &id);
    let link = hook["result"]["sample"].as_str().expect("sample link");
    assert_eq!(download(link).body, stored);

    // Both kinds of URL stop working when they expire.
    let short_signed = api_node(&data, &blobs, &["--result-url-ttl", "1s"]);
    let short_presigned = api_node(
        &data,
        &blobs,
        &["--delivery", "presigned", "--result-url-ttl", "1s"],
    );
    let expiring = [
        sample_url(&short_signed, &key, &id),
        sample_url(&short_presigned, &key, &id),
    ];
    std::thread::sleep(Duration::from_millis(2100));
    for url in &expiring {
        assert_eq!(download(url).status, 403, "{url} still works");
    }

    // The worker counted the task it finished.
    let metrics = String::from_utf8_lossy(&worker.get("/metrics", None).body).into_owned();
    assert!(
        metrics.contains("fluxd_tasks_finished_total{status=\"Ready\"} 1"),
        "{metrics}"
    );
    // Both stop cleanly.
    assert!(worker.terminate().success());
    assert!(api.terminate().success());
}

fn wait_for_webhook(receiver: &FakeLlm, id: &str) -> Value {
    for _ in 0..600 {
        let seen = receiver.requests.lock().expect("lock").clone();
        if let Some(hook) = seen.into_iter().find(|r| r["task_id"] == id) {
            return hook;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the webhook of {id} never arrived");
}
