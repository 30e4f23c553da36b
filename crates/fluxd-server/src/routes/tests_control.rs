//! Router-level tests of our own endpoints (cancel), on the fixture of [`super::tests`].

use std::time::Duration;

use axum::http::StatusCode;
use fluxd_store::Store;
use serde_json::{json, Value};

use super::tests::{call, fixture, json_of};

/// Submits a fine-tuned task with a webhook (limit 1: one at a time) and returns its id.
async fn submit(f: &super::tests::Fixture) -> String {
    let body = json!({"finetune_id": "my-finetune", "width": 256, "height": 256,
        "webhook_url": "https://example.com/hook"});
    let (status, _, body) = call(
        &f.state,
        "POST",
        "/v1/flux-pro-finetuned",
        Some(&f.key),
        serde_json::to_vec(&body).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    json_of(&body)["id"].as_str().unwrap().to_owned()
}

async fn cancel(f: &super::tests::Fixture, key: &str, id: &str) -> (StatusCode, Value) {
    let body = serde_json::to_vec(&json!({ "id": id })).unwrap();
    let (status, _, body) = call(&f.state, "POST", "/v1/cancel", Some(key), body).await;
    (status, json_of(&body))
}

async fn poll(f: &super::tests::Fixture, id: &str) -> Value {
    let uri = format!("/v1/get_result?id={id}");
    let (_, _, body) = call(&f.state, "GET", &uri, Some(&f.key), vec![]).await;
    json_of(&body)
}

#[tokio::test]
async fn cancel_finishes_queued_tasks_marks_running_ones_and_refuses_the_rest() {
    let f = fixture().await;
    let other = f.store.create_key("globex", None).await.unwrap().key;

    // Queued: final at once, with its webhook; the key's slot is free again.
    let id = submit(&f).await;
    assert_eq!(poll(&f, &id).await["status"], "Pending");
    let (status, body) = cancel(&f, &other, &id).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, json!({"detail": "Task not found"}));
    let (status, body) = cancel(&f, &f.key, &id).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"id": id, "status": "Error"}));
    let polled = poll(&f, &id).await;
    assert_eq!(polled["status"], "Error");
    assert_eq!(
        polled["details"],
        json!({ "error": fluxd_api::CANCELLED_DETAILS })
    );
    let uuid = uuid::Uuid::parse_str(&id).unwrap();
    let hooks = f.store.webhook_deliveries(uuid).await.unwrap();
    assert_eq!(hooks.len(), 1);
    let (status, body) = cancel(&f, &f.key, &id).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(body["detail"].as_str().unwrap().contains("already final"));

    // Running: marked for the worker, still Pending until it stops.
    let id = submit(&f).await;
    let claimed = f
        .store
        .claim_next("w", Duration::from_secs(60))
        .await
        .unwrap();
    assert!(claimed.is_some());
    let uuid = uuid::Uuid::parse_str(&id).unwrap();
    assert!(!f.store.cancel_requested(uuid, "w").await.unwrap());
    let (status, body) = cancel(&f, &f.key, &id).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"id": id, "status": "Pending"}));
    assert!(f.store.cancel_requested(uuid, "w").await.unwrap());

    // Unknown ids, ids that are no UUID, bodies without an id.
    for unknown in [uuid::Uuid::new_v4().to_string(), "not-a-uuid".to_owned()] {
        let (status, body) = cancel(&f, &f.key, &unknown).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body, json!({"detail": "Task not found"}));
    }
    let (status, _, body) =
        call(&f.state, "POST", "/v1/cancel", Some(&f.key), b"{}".to_vec()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(json_of(&body)["detail"][0]["loc"], json!(["body", "id"]));
    let (status, _, _) = call(&f.state, "POST", "/v1/cancel", None, b"{}".to_vec()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn submits_are_priced_debited_refused_when_unpaid_and_refunded_when_cancelled() {
    let f = fixture().await;
    let credits = |f: &super::tests::Fixture| {
        let state = f.state.clone();
        let key = f.key.clone();
        async move {
            let (status, _, body) = call(&state, "GET", "/v1/credits", Some(&key), vec![]).await;
            assert_eq!(status, StatusCode::OK);
            json_of(&body)
        }
    };
    assert_eq!(credits(&f).await, json!({"credits": null}));
    // 1 credit per task and 2 per megapixel: 256×256 is 0.07 MP, so 1.14 credits.
    let price = fluxd_store::Price {
        per_task: 1_000,
        per_megapixel: 2_000,
    };
    f.store
        .set_price("flux-pro-finetuned", Some(price))
        .await
        .unwrap();
    f.store.set_credits("acme", Some(2_000)).await.unwrap();
    assert_eq!(credits(&f).await, json!({"credits": 2.0}));

    let body = json!({"finetune_id": "my-finetune", "width": 256, "height": 256});
    let body = serde_json::to_vec(&body).unwrap();
    let submit = || {
        call(
            &f.state,
            "POST",
            "/v1/flux-pro-finetuned",
            Some(&f.key),
            body.clone(),
        )
    };
    let (status, _, answer) = submit().await;
    assert_eq!(status, StatusCode::OK);
    let answer = json_of(&answer);
    assert_eq!(answer["cost"], json!(1.14));
    assert_eq!(credits(&f).await, json!({"credits": 0.86}));

    // Cancelled while queued: refunded with the cancel.
    let id = answer["id"].as_str().unwrap().to_owned();
    let (status, _) = cancel(&f, &f.key, &id).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(credits(&f).await, json!({"credits": 2.0}));

    // The balance cannot pay: 402 in the contract's shape, nothing queued.
    f.store.set_credits("acme", Some(1_000)).await.unwrap();
    let (status, _, answer) = submit().await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    let detail = json_of(&answer)["detail"].as_str().unwrap().to_owned();
    assert!(detail.contains("Insufficient credits"), "{detail}");
    assert_eq!(credits(&f).await, json!({"credits": 1.0}));
}
