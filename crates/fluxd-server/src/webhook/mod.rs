//! Webhook delivery from the store's outbox. A task's final status and its webhook are committed
//! in one transaction; this sender leases due deliveries, POSTs them (signed, 15 s timeout, no
//! redirects, through the [`guard`]), and records the outcome: delivered on 2xx, else due again
//! after an exponential backoff with jitter, until the retry window (24 h by default) has passed,
//! then failed. Leases make a crashed sender's deliveries due again, so delivery is at least once.

pub mod guard;
pub mod sign;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fluxd_api::WebhookPayload;
use fluxd_store::{NewWebhook, StoreError, TaskState, WebhookDelivery};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, USER_AGENT};
use tokio::sync::watch;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::delivery;
use crate::error::ServerError;
use crate::routes::tasks::body_with_sample;
use crate::state::AppState;

/// Webhook delivery settings.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Call loopback and private addresses too (tests, trusted internal networks).
    pub allow_private: bool,
    /// Time for one attempt, connect to last byte of the response head.
    pub timeout: Duration,
    /// Attempts continue until this long after the webhook was queued.
    pub retry_for: Duration,
    /// Delay before the first retry; each further retry doubles it.
    pub retry_base: Duration,
    /// Longest delay between two attempts.
    pub retry_max_delay: Duration,
    /// Send `X-Webhook-Secret: <secret>` beside the signatures (what the official SDK's
    /// verifier checks); off for receivers that must not see the secret travel, e.g. over
    /// plain HTTP.
    pub secret_header: bool,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            allow_private: false,
            timeout: Duration::from_secs(15),
            retry_for: Duration::from_secs(24 * 3600),
            retry_base: Duration::from_secs(5),
            retry_max_delay: Duration::from_secs(3600),
            secret_header: true,
        }
    }
}

/// Deliveries sent at once.
const MAX_IN_FLIGHT: usize = 32;
/// How often an idle sender looks for due retries when nothing wakes it.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Longest error text kept with a delivery.
const MAX_ERROR_LEN: usize = 500;

/// Builds the HTTP client for webhooks: no redirects, no proxies (a proxy would resolve the host
/// out of the guard's sight), the guarded resolver unless private addresses are allowed.
pub fn client(cfg: &WebhookConfig) -> Result<reqwest::Client, ServerError> {
    let mut headers = HeaderMap::new();
    headers.insert(
        USER_AGENT,
        HeaderValue::from_static(concat!("fluxd-webhooks/", env!("CARGO_PKG_VERSION"))),
    );
    let mut builder = reqwest::Client::builder()
        .default_headers(headers)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(cfg.timeout)
        .connect_timeout(cfg.timeout);
    if !cfg.allow_private {
        builder = builder.dns_resolver(Arc::new(guard::GuardedResolver));
    }
    builder
        .build()
        .map_err(|e| ServerError::Config(format!("building the webhook HTTP client: {e}")))
}

/// What one attempt came to.
#[derive(Debug)]
enum Attempt {
    Delivered,
    /// Failed; worth trying again.
    Failed(String),
    /// Can never succeed (the URL is refused): recorded as failed at once.
    Refused(String),
}

/// Delivers outbox webhooks until `shutdown`; then flushes what is due for up to the configured
/// drain time.
pub async fn run_sender(state: AppState, mut shutdown: watch::Receiver<bool>) {
    let cfg = state.config().webhooks.clone();
    let client = match client(&cfg) {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(%err, "webhooks disabled");
            return;
        }
    };
    let sender_id = format!("webhooks-{}", uuid::Uuid::new_v4());
    // Longer than one attempt can take, so a live sender never loses its lease mid-attempt.
    let lease = cfg.timeout * 2 + Duration::from_secs(5);
    let mut in_flight = JoinSet::new();
    let mut drain_until = None;
    loop {
        if drain_until.is_none() && *shutdown.borrow() {
            drain_until = Some(tokio::time::Instant::now() + state.config().drain_timeout);
            tracing::info!("flushing the webhook outbox before exit");
        }
        let room = MAX_IN_FLIGHT.saturating_sub(in_flight.len());
        let mut claimed = 0;
        if room > 0 {
            let limit = u32::try_from(room).unwrap_or(u32::MAX);
            match state
                .store()
                .claim_due_webhooks(&sender_id, limit, lease)
                .await
            {
                Ok(due) => {
                    claimed = due.len();
                    for delivery in due {
                        in_flight.spawn(deliver(state.clone(), client.clone(), delivery));
                    }
                }
                Err(err) => tracing::warn!(%err, "claiming webhooks failed"),
            }
        }
        if let Some(deadline) = drain_until {
            if claimed == 0 && in_flight.is_empty() {
                break;
            }
            tokio::select! {
                _ = in_flight.join_next(), if !in_flight.is_empty() => {}
                () = tokio::time::sleep(Duration::from_millis(50)), if claimed == 0 => {}
                () = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(pending = in_flight.len(), "outbox not flushed in time; \
                        the rest is delivered after the next start");
                    break;
                }
            }
            continue;
        }
        if claimed > 0 && in_flight.len() < MAX_IN_FLIGHT {
            continue;
        }
        tokio::select! {
            _ = in_flight.join_next(), if !in_flight.is_empty() => {}
            () = state.webhook_wake().notified() => {}
            () = tokio::time::sleep(IDLE_POLL) => {}
            _ = shutdown.wait_for(|stop| *stop), if drain_until.is_none() => {}
        }
    }
    in_flight.abort_all();
}

/// The webhook for a task's final state, when the caller asked for one (`target`: its
/// `webhook_url` and `webhook_secret`): the `get_result` body plus `task_id`, for the store to
/// queue in the outbox in the same transaction as the final state.
pub(crate) async fn final_webhook(
    state: &AppState,
    task_id: Uuid,
    (url, secret): (Option<String>, Option<String>),
    final_state: TaskState,
) -> Option<NewWebhook> {
    let url = url?;
    let now = SystemTime::now();
    let sample = match &final_state {
        TaskState::Ready(ready) => {
            let delivery = state.config().delivery;
            match delivery::sample_url(state, delivery, &ready.sample_key, now).await {
                Ok(sample) => Some(sample),
                Err(err) => {
                    // The sender signs the link afresh at every attempt (and retries while it
                    // cannot): any working link will do in the stored payload.
                    tracing::warn!(%err, "could not presign the image URL for the webhook");
                    Some(delivery::signed_url(state, &ready.sample_key, now))
                }
            }
        }
        _ => None,
    };
    let body = body_with_sample(task_id.to_string(), final_state, sample);
    match serde_json::to_value(WebhookPayload::from(body)) {
        Ok(payload) => Some(NewWebhook {
            url,
            secret,
            payload,
            // Standard Webhooks: one id per message, the same on every retry.
            webhook_id: format!("msg_{task_id}"),
        }),
        Err(err) => {
            tracing::error!(%err, "could not build the webhook payload");
            None
        }
    }
}

async fn deliver(state: AppState, client: reqwest::Client, delivery: WebhookDelivery) {
    let cfg = &state.config().webhooks;
    let attempt = attempt(&state, &client, &delivery).await;
    let store = state.store();
    let recorded = match attempt {
        Attempt::Delivered => {
            crate::metrics::webhook_attempt("delivered");
            tracing::info!(task_id = %delivery.task_id, attempts = delivery.attempts, "webhook delivered");
            store.webhook_delivered(delivery.id).await
        }
        Attempt::Refused(why) => {
            crate::metrics::webhook_attempt("failed");
            tracing::warn!(task_id = %delivery.task_id, why, "webhook refused");
            store.webhook_failed(delivery.id, &why, None).await
        }
        Attempt::Failed(why) => {
            let now = SystemTime::now();
            let window_end = delivery.created_at + cfg.retry_for;
            let next = (now < window_end).then(|| now + retry_delay(cfg, delivery.attempts));
            let outcome = if next.is_some() { "retry" } else { "failed" };
            crate::metrics::webhook_attempt(outcome);
            tracing::warn!(
                task_id = %delivery.task_id,
                attempts = delivery.attempts,
                why,
                outcome,
                "webhook attempt failed"
            );
            store.webhook_failed(delivery.id, &why, next).await
        }
    };
    if let Err(err) = recorded {
        // The lease runs out and the delivery is attempted again: at least once, never lost.
        tracing::warn!(%err, task_id = %delivery.task_id, "could not record a webhook attempt");
    }
}

async fn attempt(state: &AppState, client: &reqwest::Client, d: &WebhookDelivery) -> Attempt {
    let cfg = &state.config().webhooks;
    let url = match guard::check_url(&d.url, cfg.allow_private) {
        Ok(url) => url,
        Err(refused) => return Attempt::Refused(refused.to_string()),
    };
    let body = match refresh_sample_url(state, &d.payload).await {
        Ok(Some(body)) => body,
        Ok(None) => d.payload.clone(),
        // Presigning needs the object store's credentials; try again later rather than send a
        // link that may have expired.
        Err(err) => return Attempt::Failed(format!("could not sign the image URL: {err}")),
    };
    let headers = match signed_headers(d, body.as_bytes(), unix_now(), cfg.secret_header) {
        Ok(headers) => headers,
        Err(why) => return Attempt::Refused(why),
    };
    let sent = client
        .post(url)
        .headers(headers)
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await;
    match sent {
        Ok(response) if response.status().is_success() => Attempt::Delivered,
        Ok(response) => Attempt::Failed(format!("the receiver answered {}", response.status())),
        Err(err) => Attempt::Failed(error_chain(&err)),
    }
}

/// The webhook headers for `body`, sent at `timestamp` (Unix seconds); with `secret_header`, the
/// secret itself too.
fn signed_headers(
    d: &WebhookDelivery,
    body: &[u8],
    timestamp: u64,
    secret_header: bool,
) -> Result<HeaderMap, String> {
    let value = |v: String| HeaderValue::try_from(v).map_err(|e| format!("bad header value: {e}"));
    let mut headers = HeaderMap::new();
    headers.insert(
        HeaderName::from_static("webhook-id"),
        value(d.webhook_id.clone())?,
    );
    headers.insert(
        HeaderName::from_static("webhook-timestamp"),
        value(timestamp.to_string())?,
    );
    if let Some(secret) = &d.secret {
        headers.insert(
            HeaderName::from_static("webhook-signature"),
            value(sign::standard_signature(
                secret,
                &d.webhook_id,
                timestamp,
                body,
            ))?,
        );
        headers.insert(
            HeaderName::from_static("x-bfl-signature"),
            value(sign::bfl_signature(secret, body))?,
        );
        // The reference echoes the secret verbatim in `X-Webhook-Secret`, and the official SDK's
        // `verify_webhook` compares that header with the secret (UTF-8 bytes, constant time). A
        // secret that cannot be a header value (a line break) is left out rather than failing a
        // delivery the two signatures still authenticate.
        if secret_header {
            match HeaderValue::from_bytes(secret.as_bytes()) {
                Ok(v) => {
                    headers.insert(HeaderName::from_static("x-webhook-secret"), v);
                }
                Err(_) => tracing::warn!(
                    task_id = %d.task_id,
                    "webhook_secret cannot be sent as X-Webhook-Secret; sending the signatures only"
                ),
            }
        }
    }
    Ok(headers)
}

/// The payload with a freshly signed `result.sample`, so a delivery retried after the first
/// URL's lifetime still carries a working link. None when there is no sample to refresh.
async fn refresh_sample_url(state: &AppState, payload: &str) -> Result<Option<String>, StoreError> {
    let Ok(mut value) = serde_json::from_str::<serde_json::Value>(payload) else {
        return Ok(None);
    };
    let Some(sample) = value.pointer_mut("/result/sample") else {
        return Ok(None);
    };
    let Some(key) = sample.as_str().and_then(delivery::sample_key_of_url) else {
        return Ok(None);
    };
    let delivery = state.config().delivery;
    let url = delivery::sample_url(state, delivery, &key, SystemTime::now()).await?;
    *sample = serde_json::Value::String(url);
    Ok(Some(value.to_string()))
}

/// Exponential backoff with equal jitter: half the delay fixed, half random, so retries of many
/// webhooks to one recovering receiver spread out instead of arriving together.
fn retry_delay(cfg: &WebhookConfig, attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(30);
    let full = cfg
        .retry_base
        .saturating_mul(1 << doublings)
        .min(cfg.retry_max_delay);
    let jitter = f64::from(getrandom::u32().unwrap_or(u32::MAX / 2)) / f64::from(u32::MAX);
    full / 2 + full.mul_f64(jitter / 2.0)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if text.len() > MAX_ERROR_LEN {
        let mut end = MAX_ERROR_LEN;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests;
