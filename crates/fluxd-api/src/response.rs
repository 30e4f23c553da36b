//! Response bodies and the webhook payload.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// Megapixels of a `width × height` image, rounded to 2 decimals as the reference reports them
/// (`output_mp`, `input_mp`). Sides that are multiples of 32 never hit a rounding tie.
pub fn megapixels(width: u32, height: u32) -> f64 {
    let mp = f64::from(width) * f64::from(height) / 1e6;
    (mp * 100.0).round() / 100.0
}

/// `200` answer to a submission. The reference answers `{id, polling_url, cost, input_mp,
/// output_mp}` (its `AsyncResponse`), or `{id, status, webhook_url}` (`AsyncWebhookResponse`)
/// when the request has a `webhook_url`; with a webhook we answer the union of both, so clients
/// written for either (the official one reads `polling_url` even then) work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SubmitResponse {
    /// Task id (a UUID).
    pub id: String,
    /// `Pending`; present only when the request has a `webhook_url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TaskStatus>,
    /// The request's `webhook_url`; present only when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// Absolute URL to poll: `<public base>/v1/get_result?id=<id>`.
    pub polling_url: String,
    /// What the task costs in credits (the endpoint's price for its output megapixels; charged
    /// when the tenant has a balance, refunded if it ends `Error` or moderated), or null when
    /// the endpoint has no price (the reference's schema allows null too).
    pub cost: Option<f64>,
    /// Megapixels of the image prompt, 0 without one.
    pub input_mp: f64,
    /// Megapixels of the output: width·height/10⁶ rounded to 2 decimals.
    pub output_mp: f64,
}

/// A task's state, spelled exactly as the reference spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum TaskStatus {
    /// Unknown, expired, or another key's task.
    #[serde(rename = "Task not found")]
    TaskNotFound,
    /// Queued or running.
    Pending,
    /// Refused by input moderation.
    #[serde(rename = "Request Moderated")]
    RequestModerated,
    /// The output was refused by moderation.
    #[serde(rename = "Content Moderated")]
    ContentModerated,
    /// Done; `result` holds the sample.
    Ready,
    /// Failed; `details` says why.
    Error,
}

impl TaskStatus {
    /// Whether the task can change no more (webhooks fire on these).
    pub fn is_final(self) -> bool {
        !matches!(self, TaskStatus::Pending)
    }

    /// The wire spelling, e.g. `"Task not found"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::TaskNotFound => "Task not found",
            TaskStatus::Pending => "Pending",
            TaskStatus::RequestModerated => "Request Moderated",
            TaskStatus::ContentModerated => "Content Moderated",
            TaskStatus::Ready => "Ready",
            TaskStatus::Error => "Error",
        }
    }
}

/// `result` of a `Ready` image task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReadyResult {
    /// Signed, absolute URL of the image; works without `x-key` until it expires.
    pub sample: String,
    /// The prompt used (after upsampling, if any).
    pub prompt: String,
    /// The seed used.
    pub seed: u64,
    /// When generation started, seconds since the Unix epoch.
    pub start_time: f64,
    /// When generation ended, seconds since the Unix epoch.
    pub end_time: f64,
    /// `end_time - start_time`, seconds.
    pub duration: f64,
}

/// `result` of a task: an image sample, or another task kind's result (fine-tune training).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum TaskResult {
    /// An image task's result.
    Sample(ReadyResult),
    /// Any other task's result object.
    #[schema(value_type = Object)]
    Other(Value),
}

/// `GET /v1/get_result` answer (always `200`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GetResultResponse {
    /// The task id asked for.
    pub id: String,
    /// Where the task stands.
    pub status: TaskStatus,
    /// The result when `Ready`, else null.
    pub result: Option<TaskResult>,
    /// Fraction of denoising steps done (0 to 1) while running, else null.
    pub progress: Option<f64>,
    /// Why a task was moderated or failed (`{"Moderation Reasons": [...]}` when moderated).
    #[schema(value_type = Option<Object>)]
    pub details: Option<Value>,
    /// A preview of the running task (ours; the reference types it `object|null` and says no
    /// more): null before its first preview and once the task is final.
    pub preview: Option<Preview>,
}

/// `preview` of a running task: its latest preview, refreshed every few steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Preview {
    /// Signed, absolute URL of a small JPEG (an eighth of the image's sides) of the current
    /// estimate, projected from the latents without the VAE; expires like `result.sample`.
    pub sample: String,
    /// Denoising steps done when it was made.
    pub step: u32,
    /// Denoising steps in all.
    pub steps: u32,
}

impl GetResultResponse {
    /// The answer for an unknown, expired or foreign id.
    pub fn not_found(id: impl Into<String>) -> Self {
        GetResultResponse {
            id: id.into(),
            status: TaskStatus::TaskNotFound,
            result: None,
            progress: None,
            details: None,
            preview: None,
        }
    }
}

/// Body POSTed to `webhook_url` when a task ends: the `get_result` body plus `task_id` (the same
/// value as `id`), because handlers written against the reference read `task_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WebhookPayload {
    /// Same as `id`.
    pub task_id: String,
    /// The task's final `get_result` body.
    #[serde(flatten)]
    pub result: GetResultResponse,
}

impl From<GetResultResponse> for WebhookPayload {
    fn from(result: GetResultResponse) -> Self {
        WebhookPayload {
            task_id: result.id.clone(),
            result,
        }
    }
}

/// `GET /healthz` and `GET /readyz` answer: `ok`, `ready`, `loading` or `failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthStatus {
    /// `ok` (alive), `ready` (the model is loaded), `loading` or `failed`.
    pub status: String,
    /// What to do about a `failed` model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// `GET /v1/my_finetunes` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MyFinetunesResponse {
    /// Ids of the caller's fine-tunes.
    pub finetunes: Vec<String>,
}

/// `GET /v1/finetune_details` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FinetuneDetailsResponse {
    /// What is known about the fine-tune (name, format, base model, rank, trigger word, created
    /// time, size, source); the store decides the keys.
    #[schema(value_type = Object)]
    pub finetune_details: Value,
}

/// `POST /v1/delete_finetune` answer; all fields are strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeleteFinetuneResponse {
    /// e.g. `"success"`.
    pub status: String,
    /// Words for a person.
    pub message: String,
    /// The deleted fine-tune's id.
    pub deleted_finetune_id: String,
    /// When it was deleted (RFC 3339).
    pub timestamp: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn megapixels_round_to_two_decimals() {
        assert_eq!(megapixels(1024, 768), 0.79);
        assert_eq!(megapixels(1440, 1440), 2.07);
        assert_eq!(megapixels(256, 256), 0.07);
        assert_eq!(megapixels(0, 0), 0.0);
    }

    #[test]
    fn status_spellings() {
        for s in [
            TaskStatus::TaskNotFound,
            TaskStatus::Pending,
            TaskStatus::RequestModerated,
            TaskStatus::ContentModerated,
            TaskStatus::Ready,
            TaskStatus::Error,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), json!(s.as_str()));
            assert_eq!(
                serde_json::from_value::<TaskStatus>(json!(s.as_str())).unwrap(),
                s
            );
        }
        assert!(!TaskStatus::Pending.is_final());
        assert!(TaskStatus::Error.is_final());
    }

    #[test]
    fn get_result_and_webhook_shapes() {
        let ready = GetResultResponse {
            id: "t1".into(),
            status: TaskStatus::Ready,
            result: Some(TaskResult::Sample(ReadyResult {
                sample: "https://h/x.jpeg?sig=1".into(),
                prompt: "p".into(),
                seed: 42,
                start_time: 10.0,
                end_time: 12.5,
                duration: 2.5,
            })),
            progress: None,
            details: None,
            preview: None,
        };
        let body = json!({"id":"t1","status":"Ready","result":{"sample":"https://h/x.jpeg?sig=1",
            "prompt":"p","seed":42,"start_time":10.0,"end_time":12.5,"duration":2.5},
            "progress":null,"details":null,"preview":null});
        assert_eq!(serde_json::to_value(&ready).unwrap(), body);
        let mut hook = body.clone();
        hook["task_id"] = json!("t1");
        assert_eq!(
            serde_json::to_value(WebhookPayload::from(ready.clone())).unwrap(),
            hook
        );
        let back: WebhookPayload = serde_json::from_value(hook).unwrap();
        assert_eq!(back.result, ready);
        assert_eq!(
            serde_json::to_value(GetResultResponse::not_found("x")).unwrap(),
            json!({"id":"x","status":"Task not found","result":null,"progress":null,"details":null,"preview":null})
        );
    }

    #[test]
    fn submit_shape() {
        let r = SubmitResponse {
            id: "u".into(),
            status: None,
            webhook_url: None,
            polling_url: "http://h/v1/get_result?id=u".into(),
            cost: None,
            input_mp: 0.0,
            output_mp: megapixels(1024, 768),
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"id":"u","polling_url":"http://h/v1/get_result?id=u","cost":null,"input_mp":0.0,"output_mp":0.79})
        );
        let hooked = SubmitResponse {
            status: Some(TaskStatus::Pending),
            webhook_url: Some("https://e.com/h".into()),
            ..r
        };
        assert_eq!(
            serde_json::to_string(&hooked).unwrap(),
            r#"{"id":"u","status":"Pending","webhook_url":"https://e.com/h","polling_url":"http://h/v1/get_result?id=u","cost":null,"input_mp":0.0,"output_mp":0.79}"#
        );
    }
}
