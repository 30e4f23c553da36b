//! The sender against a real HTTP receiver on loopback and the real SQLite outbox.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use fluxd_store::{BlobStore, NewWebhook, SqliteStore, Store};
use tokio::sync::watch;

use super::*;
use crate::engine::EngineState;
use crate::signing::UrlSigner;
use crate::state::{Dirs, ServerConfig};

/// What the receiver saw: headers and body of each request.
type Seen = Arc<Mutex<Vec<(HeaderMap, String)>>>;

/// A receiver on loopback answering `/hook` with the statuses of `script` in turn (the last one
/// repeated), `/redirect` with a 307 to `/hook`, and `/slow` after 5 s.
async fn receiver(script: Vec<StatusCode>) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let calls = Arc::new(Mutex::new(0usize));
    let record = {
        let seen = seen.clone();
        move |headers: HeaderMap, body: String| {
            let seen = seen.clone();
            let calls = calls.clone();
            let script = script.clone();
            async move {
                seen.lock().unwrap().push((headers, body));
                let mut n = calls.lock().unwrap();
                let status = script[(*n).min(script.len() - 1)];
                *n += 1;
                status
            }
        }
    };
    let app = axum::Router::new()
        .route("/hook", post(record))
        .route(
            "/redirect",
            post(|| async { (StatusCode::TEMPORARY_REDIRECT, [("location", "/hook")]) }),
        )
        .route(
            "/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                StatusCode::OK
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}

struct Fixture {
    _dir: tempfile::TempDir,
    state: AppState,
    store: Arc<SqliteStore>,
}

async fn fixture(webhooks: WebhookConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(dir.path().join("db.sqlite"))
            .await
            .unwrap(),
    );
    let (_tx, engine) = watch::channel(EngineState::Loading);
    let config = ServerConfig {
        webhooks,
        drain_timeout: Duration::from_secs(5),
        ..ServerConfig::new("http://fluxd.test")
    };
    let state = AppState::new(
        store.clone(),
        BlobStore::local(dir.path().join("blobs")).unwrap(),
        UrlSigner::from_key([5; 32]),
        config,
        engine,
        Dirs {
            tmp: dir.path().join("tmp"),
            lora_cache: dir.path().join("loras"),
        },
    );
    Fixture {
        _dir: dir,
        state,
        store,
    }
}

fn fast_retries() -> WebhookConfig {
    WebhookConfig {
        allow_private: true,
        timeout: Duration::from_secs(1),
        retry_for: Duration::from_secs(60),
        retry_base: Duration::from_millis(100),
        retry_max_delay: Duration::from_millis(200),
        secret_header: true,
    }
}

fn payload(task: uuid::Uuid) -> serde_json::Value {
    serde_json::json!({
        "id": task.to_string(),
        "task_id": task.to_string(),
        "status": "Ready",
        "result": {
            "sample": format!("http://fluxd.test/v1/images/{task}.jpeg?exp=1&sig=00"),
            "prompt": "a fox",
            "seed": 7,
        },
    })
}

async fn queue(store: &SqliteStore, url: &str, secret: Option<&str>) -> uuid::Uuid {
    let task = uuid::Uuid::new_v4();
    store
        .enqueue_webhook(
            task,
            NewWebhook {
                url: url.to_owned(),
                secret: secret.map(str::to_owned),
                payload: payload(task),
                webhook_id: format!("msg_{task}"),
            },
        )
        .await
        .unwrap();
    task
}

/// Runs the sender until `done` holds for the task's delivery rows (or 20 s pass), then stops it.
async fn run_until(
    f: &Fixture,
    task: uuid::Uuid,
    done: impl Fn(&[fluxd_store::WebhookRecord]) -> bool,
) -> Vec<fluxd_store::WebhookRecord> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let sender = tokio::spawn(run_sender(f.state.clone(), stop_rx));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let rows = loop {
        let rows = f.store.webhook_deliveries(task).await.unwrap();
        if done(&rows) || tokio::time::Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    stop_tx.send_replace(true);
    sender.await.unwrap();
    rows
}

fn settled(status: &'static str) -> impl Fn(&[fluxd_store::WebhookRecord]) -> bool {
    move |rows| rows.iter().all(|r| r.status == status)
}

#[tokio::test]
async fn delivers_signed_with_both_schemes() {
    let (base, seen) = receiver(vec![StatusCode::NO_CONTENT]).await;
    let f = fixture(fast_retries()).await;
    let task = queue(&f.store, &format!("{base}/hook"), Some("s3cret")).await;
    let rows = run_until(&f, task, settled("delivered")).await;
    assert_eq!(rows[0].status, "delivered");
    assert_eq!(rows[0].attempts, 1);

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let (headers, body) = &seen[0];
    let header = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_owned();
    assert_eq!(header("content-type"), "application/json");
    assert_eq!(header("webhook-id"), format!("msg_{task}"));
    let timestamp: u64 = header("webhook-timestamp").parse().unwrap();
    assert!(timestamp.abs_diff(unix_now()) < 60);
    assert_eq!(
        header("x-bfl-signature"),
        sign::bfl_signature("s3cret", body.as_bytes())
    );
    assert_eq!(
        header("webhook-signature"),
        sign::standard_signature("s3cret", &format!("msg_{task}"), timestamp, body.as_bytes())
    );
    // What the official SDK's `verify_webhook` compares: the secret, verbatim.
    assert_eq!(header("x-webhook-secret"), "s3cret");
    // The body is the stored payload with a freshly signed, working image link.
    let sent: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(sent["task_id"], task.to_string());
    assert_eq!(sent["result"]["prompt"], "a fox");
    let sample = sent["result"]["sample"].as_str().unwrap();
    let query = sample
        .strip_prefix(&format!("http://fluxd.test/v1/images/{task}.jpeg?"))
        .unwrap();
    let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let param = |k: &str| params.iter().find(|(n, _)| n == k).unwrap().1.clone();
    assert!(f.state.signer().verify(
        &format!("{task}.jpeg"),
        param("exp").parse().unwrap(),
        &param("sig"),
        std::time::SystemTime::now(),
    ));
}

#[tokio::test]
async fn without_a_secret_nothing_is_signed() {
    let (base, seen) = receiver(vec![StatusCode::OK]).await;
    let f = fixture(fast_retries()).await;
    let task = queue(&f.store, &format!("{base}/hook"), None).await;
    run_until(&f, task, settled("delivered")).await;
    let seen = seen.lock().unwrap();
    let (headers, _) = &seen[0];
    assert!(headers.get("webhook-id").is_some());
    assert!(headers.get("webhook-signature").is_none());
    assert!(headers.get("x-bfl-signature").is_none());
    assert!(headers.get("x-webhook-secret").is_none());
}

#[test]
fn the_secret_header_can_be_turned_off_and_is_left_out_when_unsendable() {
    let delivery = |secret: &str| WebhookDelivery {
        id: uuid::Uuid::new_v4(),
        task_id: uuid::Uuid::new_v4(),
        webhook_id: "msg_1".into(),
        url: "https://example.com/h".into(),
        secret: Some(secret.into()),
        payload: "{}".into(),
        attempts: 1,
        created_at: std::time::SystemTime::now(),
    };
    let on = signed_headers(&delivery("s3cret"), b"{}", 1, true).unwrap();
    assert_eq!(on["x-webhook-secret"], "s3cret");
    let off = signed_headers(&delivery("s3cret"), b"{}", 1, false).unwrap();
    assert!(off.get("x-webhook-secret").is_none());
    assert!(off.get("x-bfl-signature").is_some() && off.get("webhook-signature").is_some());
    // UTF-8 secrets travel as their bytes; a line break cannot be a header value.
    let utf8 = signed_headers(&delivery("clé"), b"{}", 1, true).unwrap();
    assert_eq!(utf8["x-webhook-secret"].as_bytes(), "clé".as_bytes());
    let broken = signed_headers(&delivery("a\nb"), b"{}", 1, true).unwrap();
    assert!(broken.get("x-webhook-secret").is_none());
    assert!(broken.get("x-bfl-signature").is_some());
}

#[tokio::test]
async fn failures_are_retried_with_the_same_id_until_2xx() {
    let (base, seen) = receiver(vec![
        StatusCode::INTERNAL_SERVER_ERROR,
        StatusCode::SERVICE_UNAVAILABLE,
        StatusCode::OK,
    ])
    .await;
    let f = fixture(fast_retries()).await;
    let task = queue(&f.store, &format!("{base}/hook"), Some("k")).await;
    let rows = run_until(&f, task, settled("delivered")).await;
    assert_eq!(rows[0].status, "delivered");
    assert_eq!(rows[0].attempts, 3);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    let ids: Vec<_> = seen.iter().map(|(h, _)| h["webhook-id"].clone()).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let (base, seen) = receiver(vec![StatusCode::OK]).await;
    let f = fixture(WebhookConfig {
        retry_for: Duration::ZERO,
        ..fast_retries()
    })
    .await;
    let task = queue(&f.store, &format!("{base}/redirect"), None).await;
    let rows = run_until(&f, task, settled("failed")).await;
    assert_eq!(rows[0].status, "failed");
    let error = rows[0].last_error.clone().unwrap();
    assert!(error.contains("307"), "{error}");
    assert!(
        seen.lock().unwrap().is_empty(),
        "the redirect target was called"
    );
}

#[tokio::test]
async fn slow_receivers_time_out_and_are_given_up_after_the_window() {
    let (base, _seen) = receiver(vec![StatusCode::OK]).await;
    let f = fixture(WebhookConfig {
        timeout: Duration::from_millis(300),
        retry_for: Duration::from_millis(500),
        ..fast_retries()
    })
    .await;
    let task = queue(&f.store, &format!("{base}/slow"), None).await;
    let rows = run_until(&f, task, settled("failed")).await;
    assert_eq!(rows[0].status, "failed");
    assert!(rows[0].attempts >= 1);
    let error = rows[0].last_error.clone().unwrap();
    assert!(error.contains("timed out"), "{error}");
}

#[tokio::test]
async fn private_targets_are_refused_without_the_operator_switch() {
    let (base, seen) = receiver(vec![StatusCode::OK]).await;
    let f = fixture(WebhookConfig {
        allow_private: false,
        ..fast_retries()
    })
    .await;
    // A literal loopback address, and a name that resolves to one.
    let literal = queue(&f.store, &format!("{base}/hook"), None).await;
    let port = base.rsplit(':').next().unwrap();
    let named = queue(&f.store, &format!("http://localhost.:{port}/hook"), None).await;
    let rows = run_until(&f, literal, settled("failed")).await;
    assert_eq!(rows[0].attempts, 1, "refusals are not retried");
    assert!(rows[0].last_error.clone().unwrap().contains("loopback"));
    let rows = run_until(&f, named, settled("failed")).await;
    assert_eq!(rows[0].status, "failed");
    assert!(seen.lock().unwrap().is_empty());
}

#[test]
fn backoff_doubles_with_jitter_up_to_the_cap() {
    let cfg = WebhookConfig {
        retry_base: Duration::from_secs(4),
        retry_max_delay: Duration::from_secs(60),
        ..WebhookConfig::default()
    };
    for (attempts, full) in [(1, 4), (2, 8), (3, 16), (4, 32), (5, 60), (40, 60)] {
        let full = Duration::from_secs(full);
        for _ in 0..20 {
            let d = retry_delay(&cfg, attempts);
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempts}: {d:?} vs {full:?}"
            );
        }
    }
}

#[test]
fn error_text_is_bounded_on_a_char_boundary() {
    let long = std::io::Error::other("é".repeat(400));
    let text = error_chain(&long);
    assert!(text.len() <= MAX_ERROR_LEN);
    assert!(text.starts_with('é'));
}
