//! Router-level tests without a socket or a model: the real SQLite store in a temp dir, tasks
//! finished by hand through the store as a worker would.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use bytes::Bytes;
use fluxd_store::{BlobStore, FinetuneRecord, ReadyRecord, SqliteStore, Store};
use serde_json::{json, Value};
use tokio::sync::watch;
use tower::ServiceExt;

use crate::engine::EngineState;
use crate::signing::UrlSigner;
use crate::state::{AppState, Dirs, ServerConfig};

struct Fixture {
    _dir: tempfile::TempDir,
    state: AppState,
    store: Arc<SqliteStore>,
    key: String,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(dir.path().join("db.sqlite"))
            .await
            .unwrap(),
    );
    let blobs = BlobStore::local(dir.path().join("blobs")).unwrap();
    let (_tx, engine) = watch::channel(EngineState::Loading);
    let config = ServerConfig {
        max_active_tasks: 1,
        max_request_bytes: 4096,
        ..ServerConfig::new("http://fluxd.test/")
    };
    let state = AppState::new(
        store.clone(),
        blobs,
        UrlSigner::from_key([3; 32]),
        config,
        engine,
        Dirs {
            tmp: dir.path().join("tmp"),
            lora_cache: dir.path().join("loras"),
        },
    );
    let key = store.create_key("acme", None).await.unwrap().key;
    store
        .insert_finetune(FinetuneRecord {
            tenant: "acme".into(),
            id: "my-finetune".into(),
            format: "kohya".into(),
            rank: 4,
            alpha: Some(4.0),
            base_hidden: None,
            trigger_word: None,
            comment: None,
            blob_key: "loras/x.safetensors".into(),
            size_bytes: 1,
            sha256: "00".into(),
            created_at: SystemTime::now(),
            shared: false,
        })
        .await
        .unwrap();
    Fixture {
        _dir: dir,
        state,
        store,
        key,
    }
}

async fn call(
    state: &AppState,
    method: &str,
    uri: &str,
    key: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, axum::http::HeaderMap, Bytes) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(key) = key {
        request = request.header("x-key", key);
    }
    let response = crate::app(state.clone())
        .oneshot(request.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, headers, bytes)
}

fn json_of(bytes: &Bytes) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

#[tokio::test]
async fn auth_errors_are_the_contract_bodies() {
    let f = fixture().await;
    let (status, _, body) = call(&f.state, "GET", "/v1/my_finetunes", None, vec![]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(json_of(&body), json!({"detail": "Not authenticated"}));
    let (status, _, body) = call(&f.state, "GET", "/v1/my_finetunes", Some("nope"), vec![]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(json_of(&body), json!({"detail": "Invalid API key"}));
    let (status, _, body) = call(&f.state, "GET", "/v1/my_finetunes", Some(&f.key), vec![]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json_of(&body), json!({"finetunes": ["my-finetune"]}));
}

#[tokio::test]
async fn submit_poll_limit_and_signed_delivery() {
    let f = fixture().await;
    let submit = |finetune: &str| {
        serde_json::to_vec(&json!({"finetune_id": finetune, "width": 256, "height": 256})).unwrap()
    };
    let (status, _, body) = call(
        &f.state,
        "POST",
        "/v1/flux-pro-finetuned",
        Some(&f.key),
        submit("unknown"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(json_of(&body), json!({"detail": "Finetune not found"}));

    let (status, _, body) = call(
        &f.state,
        "POST",
        "/v1/flux-pro-finetuned",
        Some(&f.key),
        submit("my-finetune"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let submitted = json_of(&body);
    let id = submitted["id"].as_str().unwrap().to_owned();
    assert_eq!(
        submitted["polling_url"],
        format!("http://fluxd.test/v1/get_result?id={id}")
    );
    assert_eq!(submitted["output_mp"], 0.07);

    // The limit is 1 and the task is unfinished.
    let (status, headers, body) = call(
        &f.state,
        "POST",
        "/v1/flux-pro-finetuned",
        Some(&f.key),
        submit("my-finetune"),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(headers.contains_key("retry-after"));
    assert!(json_of(&body)["detail"].is_string());

    let poll = format!("/v1/get_result?id={id}");
    let (_, _, body) = call(&f.state, "GET", &poll, Some(&f.key), vec![]).await;
    assert_eq!(json_of(&body)["status"], "Pending");

    // Finish it as the worker would.
    let claim = f
        .store
        .claim_next("w", Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    let uuid = claim.task().id;
    f.state
        .blobs()
        .put(
            &format!("samples/{uuid}.jpeg"),
            Bytes::from_static(b"jpeg!"),
            Some("image/jpeg"),
        )
        .await
        .unwrap();
    f.store
        .complete_ready(
            uuid,
            "w",
            ReadyRecord {
                sample_key: format!("samples/{uuid}.jpeg"),
                prompt_used: "p".into(),
                seed_used: 9,
                start_time: 100.0,
                end_time: 101.5,
            },
            None,
        )
        .await
        .unwrap();
    // The worker drops what it changed from the get_result cache (which holds the Pending
    // answer above for a moment).
    f.state.task_cache().invalidate(uuid);
    let (status, _, body) = call(&f.state, "GET", &poll, Some(&f.key), vec![]).await;
    assert_eq!(status, StatusCode::OK);
    let ready = json_of(&body);
    assert_eq!(ready["status"], "Ready");
    assert_eq!(ready["result"]["seed"], 9);
    assert_eq!(ready["result"]["duration"], 1.5);
    let sample = ready["result"]["sample"].as_str().unwrap();
    let path = sample.strip_prefix("http://fluxd.test").unwrap();
    let (status, headers, body) = call(&f.state, "GET", path, None, vec![]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "image/jpeg");
    assert_eq!(headers["content-length"], "5");
    assert_eq!(body, Bytes::from_static(b"jpeg!"));
    let forged = path.replace(".jpeg?", ".png?");
    let (status, _, _) = call(&f.state, "GET", &forged, None, vec![]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let expired = format!("/v1/images/{uuid}.jpeg?exp=1&sig=00");
    let (status, _, _) = call(&f.state, "GET", &expired, None, vec![]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Now finished, the key may submit again.
    let (status, _, _) = call(
        &f.state,
        "POST",
        "/v1/flux-pro-finetuned",
        Some(&f.key),
        submit("my-finetune"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn oversized_bodies_and_unready_model() {
    let f = fixture().await;
    let big = serde_json::to_vec(&json!({"finetune_id": "x".repeat(5000)})).unwrap();
    let (status, _, body) = call(
        &f.state,
        "POST",
        "/v1/flux-pro-finetuned",
        Some(&f.key),
        big,
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(json_of(&body)["detail"].is_string());
    let (status, _, _) = call(&f.state, "GET", "/readyz", None, vec![]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _, body) = call(
        &f.state,
        "POST",
        "/v1/finetunes?finetune_id=new",
        Some(&f.key),
        b"bytes".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body:?}");
    let (status, _, body) = call(
        &f.state,
        "POST",
        "/v1/flux-pro-finetuned",
        Some(&f.key),
        serde_json::to_vec(&json!({"finetune_id": "my-finetune", "prompt_upsampling": true}))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        json_of(&body)["detail"][0]["loc"],
        json!(["body", "prompt_upsampling"])
    );
}

#[tokio::test]
async fn metrics_count_requests_by_route_pattern() {
    let f = fixture().await;
    let (status, _, _) = call(&f.state, "GET", "/v1/my_finetunes", Some(&f.key), vec![]).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = call(&f.state, "GET", "/v1/get_result?id=abc", None, vec![]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, headers, body) = call(&f.state, "GET", "/metrics", None, vec![]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers[axum::http::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = String::from_utf8(body.to_vec()).unwrap();
    let line = |route: &str, code: &str| {
        text.lines().any(|l| {
            l.starts_with("fluxd_http_requests_total{")
                && l.contains(&format!("route=\"{route}\""))
                && l.contains(&format!("status=\"{code}\""))
        })
    };
    assert!(line("/v1/my_finetunes", "200"), "{text}");
    assert!(line("/v1/get_result", "403"), "{text}");
    // The store's group commit: the fixture's key and fine-tune were committed.
    let value = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    let (commits, writes) = (
        value("fluxd_store_commits_total"),
        value("fluxd_store_writes_total"),
    );
    assert!(commits >= 1 && writes >= commits, "{commits} {writes}");
    assert!(
        text.contains("fluxd_http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(!text.contains("id=abc"), "raw paths must not become labels");
}

/// A call with an explicit `Content-Type`.
async fn call_typed(
    state: &AppState,
    key: &str,
    content_type: &str,
    body: &[u8],
) -> (StatusCode, Value) {
    let request = Request::builder()
        .method("POST")
        .uri("/v1/flux-pro-finetuned")
        .header("x-key", key)
        .header("content-type", content_type)
        .body(Body::from(body.to_vec()))
        .unwrap();
    let response = crate::app(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, json_of(&bytes))
}

#[tokio::test]
async fn non_json_content_types_are_refused_as_the_reference_does() {
    let f = fixture().await;
    let (status, body) = call_typed(
        &f.state,
        &f.key,
        "application/x-www-form-urlencoded",
        b"finetune_id=my-finetune&prompt=fox",
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body,
        json!({"detail": [{
            "type": "model_attributes_type",
            "loc": ["body"],
            "msg": "Input should be a valid dictionary or object to extract fields from",
            "input": "finetune_id=my-finetune&prompt=fox",
        }]})
    );
    // JSON under a JSON media type with parameters is read as JSON.
    let (status, body) = call_typed(
        &f.state,
        &f.key,
        "application/json; charset=utf-8",
        br#"{"finetune_id": "my-finetune", "width": 256, "height": 256}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn webhook_urls_to_private_addresses_are_refused_at_submit() {
    let f = fixture().await;
    for url in [
        "http://127.0.0.1:9000/hook",
        "http://169.254.169.254/latest",
        "http://[::ffff:10.0.0.1]/",
        "http://0x7f.1/",
        "http://localhost/",
    ] {
        let body = json!({"finetune_id": "my-finetune", "webhook_url": url});
        let (status, body) = call_typed(
            &f.state,
            &f.key,
            "application/json",
            &serde_json::to_vec(&body).unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {body}");
        assert_eq!(
            body["detail"][0]["loc"],
            json!(["body", "webhook_url"]),
            "{url}"
        );
        let msg = body["detail"][0]["msg"].as_str().unwrap();
        assert!(msg.contains("does not call"), "{msg}");
    }
}
