//! The baseline of `scripts/load.sh`: the two hot routes of the contract on bare axum, with no
//! key check, no store and no middleware, on the same multi-threaded tokio runtime as
//! `fluxd serve`. `POST /v1/flux-pro-finetuned` parses the body with the same function fluxd uses
//! (`parse_finetuned_request`) and answers `{id, polling_url, ...}`; `GET /v1/get_result?id=`
//! parses the query and answers a `Pending` body. What fluxd costs beyond this is its own work:
//! authentication, the durable insert or the read, metrics.
//!
//! `cargo run --release -p fluxd-server --example bare_axum -- [LISTEN]` (default
//! `127.0.0.1:0`); prints `bare listening on http://ADDR` on stdout.

use axum::extract::Query;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use fluxd_api::{
    megapixels, parse_finetuned_request, GetResultResponse, SubmitResponse, TaskStatus,
};
use uuid::Uuid;

/// The same allocator as `fluxd`, so that the baseline differs from fluxd only in fluxd's work.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    let addr = listener.local_addr()?;
    let base = format!("http://{addr}");
    let app = Router::new()
        .route(
            "/v1/flux-pro-finetuned",
            post({
                let base = base.clone();
                move |body: Bytes| submit(base, body)
            }),
        )
        .route("/v1/get_result", get(get_result));
    println!("bare listening on {base}");
    axum::serve(listener, app).await?;
    Ok(())
}

async fn submit(base: String, body: Bytes) -> Result<Json<SubmitResponse>, StatusCode> {
    let request = parse_finetuned_request(&body).map_err(|_| StatusCode::UNPROCESSABLE_ENTITY)?;
    let id = Uuid::new_v4();
    Ok(Json(SubmitResponse {
        id: id.to_string(),
        status: None,
        webhook_url: None,
        polling_url: format!("{base}/v1/get_result?id={id}"),
        cost: None,
        input_mp: 0.0,
        output_mp: megapixels(request.width, request.height),
    }))
}

async fn get_result(
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Json<GetResultResponse>, StatusCode> {
    let id = pairs
        .into_iter()
        .rev()
        .find(|(k, _)| k == "id")
        .map(|(_, v)| v)
        .ok_or(StatusCode::UNPROCESSABLE_ENTITY)?;
    let mut body = GetResultResponse::not_found(id);
    body.status = TaskStatus::Pending;
    Ok(Json(body))
}
