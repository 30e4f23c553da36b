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

pub(super) struct Fixture {
    _dir: tempfile::TempDir,
    pub(super) state: AppState,
    pub(super) store: Arc<SqliteStore>,
    pub(super) key: String,
}

pub(super) async fn fixture() -> Fixture {
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

pub(super) async fn call(
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

pub(super) fn json_of(bytes: &Bytes) -> Value {
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

#[tokio::test]
async fn unserved_endpoints_answer_like_an_unknown_path() {
    let f = fixture().await;
    let (status, headers, body) =
        call(&f.state, "POST", "/v1/no-such-endpoint", None, vec![]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let unknown = json_of(&body);
    assert_eq!(unknown, json!({"detail": "Not Found"}));
    assert!(headers.contains_key("x-request-id"));
    let body = serde_json::to_vec(&json!({"prompt": "a fox", "image": "aGVsbG8="})).unwrap();
    for name in fluxd_api::UNSERVED_ENDPOINTS {
        for key in [None, Some(f.key.as_str())] {
            let path = format!("/v1/{name}");
            let (status, _, got) = call(&f.state, "POST", &path, key, body.clone()).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
            assert_eq!(json_of(&got), unknown, "{path}");
        }
    }
}

#[tokio::test]
async fn a_known_path_with_another_method_is_405() {
    let f = fixture().await;
    let (status, headers, body) = call(&f.state, "GET", "/v1/flux-dev", Some(&f.key), vec![]).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(json_of(&body), json!({"detail": "Method Not Allowed"}));
    assert_eq!(headers["allow"], "POST");
    assert!(headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn every_endpoint_is_routed_and_keeps_its_endpoint_and_request_id_with_the_task() {
    let f = fixture().await;
    // The union answer when the request has a webhook; the caller's request id is echoed.
    let request = Request::builder()
        .method("POST")
        .uri("/v1/flux-dev")
        .header("x-key", &f.key)
        .header("x-request-id", "req-42")
        .body(Body::from(
            serde_json::to_vec(&json!({
                "prompt": "a fox", "width": 256, "height": 256, "steps": null,
                "webhook_url": "https://example.com/hook", "webhook_secret": "s3cret",
            }))
            .unwrap(),
        ))
        .unwrap();
    let response = crate::app(f.state.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-request-id"], "req-42");
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let submitted = json_of(&body);
    let id = submitted["id"].as_str().unwrap().to_owned();
    assert_eq!(
        submitted,
        json!({
            "id": id, "status": "Pending", "webhook_url": "https://example.com/hook",
            "polling_url": format!("http://fluxd.test/v1/get_result?id={id}"),
            "cost": null, "input_mp": 0.0, "output_mp": 0.07,
        })
    );
    let claim = f
        .store
        .claim_next("w", Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    let task = claim.task();
    let stored = fluxd_api::StoredTask::from_params(&task.params).unwrap();
    assert_eq!(stored.endpoint, fluxd_api::Endpoint::FluxDev);
    assert_eq!(stored.request_id.as_deref(), Some("req-42"));
    assert_eq!(stored.request["steps"], Value::Null);
    assert_eq!(
        (stored.generation.steps, stored.generation.guidance),
        (28, 3.0)
    );
    assert_eq!(task.finetune_id, None);
    assert_eq!(task.webhook_secret.as_deref(), Some("s3cret"));

    // The key's limit (1) is reached: a 429, with a generated request id.
    let (status, headers, _) = call(
        &f.state,
        "POST",
        "/v1/flux-pro-1.1-ultra",
        Some(&f.key),
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let generated = headers["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(generated).is_ok(), "{generated}");

    // Every served endpoint validates with its own schema (a 422 naming its own field).
    for (endpoint, body, field) in [
        ("flux-dev", json!({"steps": 0}), "steps"),
        ("flux-pro", json!({"interval": 5}), "interval"),
        ("flux-pro-1.1", json!({"width": 100}), "width"),
        (
            "flux-pro-1.1-ultra",
            json!({"aspect_ratio": "4:1"}),
            "aspect_ratio",
        ),
        (
            "flux-pro-1.1-ultra-finetuned",
            json!({"prompt": "x"}),
            "finetune_id",
        ),
    ] {
        let (status, _, got) = call(
            &f.state,
            "POST",
            &format!("/v1/{endpoint}"),
            Some(&f.key),
            serde_json::to_vec(&body).unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{endpoint}");
        assert_eq!(
            json_of(&got)["detail"][0]["loc"],
            json!(["body", field]),
            "{endpoint}"
        );
    }
    let (status, _, got) = call(
        &f.state,
        "POST",
        "/v1/flux-pro-1.1-ultra-finetuned",
        Some(&f.key),
        serde_json::to_vec(&json!({"finetune_id": "nope"})).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(json_of(&got), json!({"detail": "Finetune not found"}));
}
