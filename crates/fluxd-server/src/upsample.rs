//! Prompt upsampling: `prompt_upsampling: true` rewrites the prompt with a language model behind an
//! OpenAI-compatible chat-completions endpoint (llama.cpp's server, vLLM, Ollama, or a hosted API),
//! and the rewritten prompt is the one generated and reported in `result.prompt`.
//!
//! The request carries the task's seed (`seed` is honoured by llama.cpp, vLLM, Ollama and OpenAI),
//! so resubmitting a request with its seed asks for the same rewrite.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::error::ServerError;

/// The instructions given to the language model. Short, because small local models follow short
/// instructions best; the answer must be the prompt alone.
pub const SYSTEM_PROMPT: &str = "You rewrite prompts for a text-to-image model. Expand the user's \
prompt into one detailed, vivid description of a single image: subject, setting, composition, \
lighting, style and colours. Keep every element and any quoted text of the original, invent \
nothing that contradicts it, and keep any unusual token (such as a trigger word) unchanged. Answer \
with the rewritten prompt only, in at most 120 words, without quotes or preamble.";

/// Where the language model is and how to ask it.
#[derive(Debug, Clone)]
pub struct UpsamplerConfig {
    /// Base URL of the OpenAI-compatible API (`http://127.0.0.1:8080/v1`), or the full
    /// `.../chat/completions` URL.
    pub url: String,
    /// Model name sent with each request.
    pub model: String,
    /// Bearer token, if the endpoint wants one.
    pub api_key: Option<String>,
    /// Time for one rewrite.
    pub timeout: Duration,
}

impl UpsamplerConfig {
    /// The chat-completions URL.
    pub fn endpoint(&self) -> String {
        let base = self.url.trim_end_matches('/');
        if base.ends_with("/chat/completions") {
            base.to_owned()
        } else {
            format!("{base}/chat/completions")
        }
    }
}

/// Why a rewrite failed.
#[derive(Debug, thiserror::Error)]
pub enum UpsampleError {
    /// The endpoint could not be reached or timed out.
    #[error("the prompt upsampler could not be reached: {0}")]
    Unreachable(String),
    /// The endpoint answered with an error status.
    #[error("the prompt upsampler answered {status}: {body}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Start of the body.
        body: String,
    },
    /// The answer was not a chat completion with text.
    #[error("the prompt upsampler's answer has no text: {0}")]
    Malformed(String),
}

impl UpsampleError {
    /// Whether trying again later may help (the model server restarting, overloaded).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unreachable(_) => true,
            Self::Status { status, .. } => *status == 429 || *status >= 500,
            Self::Malformed(_) => false,
        }
    }
}

/// A client for one configured endpoint.
#[derive(Debug, Clone)]
pub struct Upsampler {
    cfg: UpsamplerConfig,
    client: reqwest::Client,
}

#[derive(Deserialize)]
struct Completion {
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    message: Message,
}

#[derive(Deserialize)]
struct Message {
    content: Option<String>,
}

/// Longest error body kept.
const MAX_BODY: usize = 300;

impl Upsampler {
    /// A client for `cfg`. The endpoint is the operator's, so it is not put behind the webhook
    /// SSRF guard (a local llama.cpp server is the common case).
    pub fn new(cfg: UpsamplerConfig) -> Result<Self, ServerError> {
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .no_proxy()
            .build()
            .map_err(|e| ServerError::Config(format!("building the upsampler client: {e}")))?;
        Ok(Self { cfg, client })
    }

    /// The settings.
    pub fn config(&self) -> &UpsamplerConfig {
        &self.cfg
    }

    /// The rewritten prompt.
    pub async fn upsample(&self, prompt: &str, seed: u64) -> Result<String, UpsampleError> {
        let body = json!({
            "model": self.cfg.model,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": prompt},
            ],
            "temperature": 0.7,
            "max_tokens": 300,
            "seed": seed,
            "stream": false,
        });
        let mut request = self.client.post(self.cfg.endpoint()).json(&body);
        if let Some(key) = &self.cfg.api_key {
            request = request.bearer_auth(key);
        }
        let response = request
            .send()
            .await
            .map_err(|e| UpsampleError::Unreachable(e.to_string()))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| UpsampleError::Unreachable(e.to_string()))?;
        if !status.is_success() {
            return Err(UpsampleError::Status {
                status: status.as_u16(),
                body: text.chars().take(MAX_BODY).collect(),
            });
        }
        let completion: Completion = serde_json::from_str(&text)
            .map_err(|e| UpsampleError::Malformed(format!("{e}: {}", truncate(&text))))?;
        let content = completion
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message.content)
            .unwrap_or_default();
        let rewritten = clean(&content);
        if rewritten.is_empty() {
            return Err(UpsampleError::Malformed(truncate(&text)));
        }
        Ok(rewritten)
    }
}

fn truncate(text: &str) -> String {
    text.chars().take(MAX_BODY).collect()
}

/// The prompt in a model's answer: reasoning blocks (`<think>…</think>`) dropped, surrounding
/// whitespace and one pair of wrapping quotes removed.
fn clean(answer: &str) -> String {
    let mut text = answer;
    if let Some(end) = text.find("</think>") {
        text = &text[end + "</think>".len()..];
    }
    let text = text.trim();
    let unquoted = ['"', '\'', '“']
        .iter()
        .find_map(|&q| {
            let close = if q == '“' { '”' } else { q };
            text.strip_prefix(q)?.strip_suffix(close)
        })
        .unwrap_or(text);
    unquoted.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;
    use axum::Json;
    use serde_json::Value;

    use super::*;

    type Seen = Arc<Mutex<Vec<(HeaderMap, Value)>>>;

    /// A stand-in language model on loopback answering every chat completion with `answer`.
    async fn fake_model(status: StatusCode, answer: Value) -> (String, Seen) {
        let seen: Seen = Arc::default();
        let record = seen.clone();
        let app = axum::Router::new().route(
            "/v1/chat/completions",
            post(move |headers: HeaderMap, Json(body): Json<Value>| {
                let record = record.clone();
                let answer = answer.clone();
                async move {
                    record.lock().unwrap().push((headers, body));
                    (status, Json(answer))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/v1"), seen)
    }

    fn upsampler(url: String, key: Option<&str>) -> Upsampler {
        Upsampler::new(UpsamplerConfig {
            url,
            model: "qwen2.5-3b-instruct".into(),
            api_key: key.map(str::to_owned),
            timeout: Duration::from_secs(5),
        })
        .unwrap()
    }

    fn completion(text: &str) -> Value {
        json!({"id": "c1", "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ]})
    }

    #[tokio::test]
    async fn asks_the_model_and_returns_its_rewrite() {
        let (url, seen) = fake_model(
            StatusCode::OK,
            completion("  \"A red fox in fresh snow at dawn, soft golden light.\"\n"),
        )
        .await;
        let up = upsampler(url, Some("sk-local"));
        let rewritten = up.upsample("a red fox", 42).await.unwrap();
        assert_eq!(
            rewritten,
            "A red fox in fresh snow at dawn, soft golden light."
        );
        let seen = seen.lock().unwrap();
        let (headers, body) = &seen[0];
        assert_eq!(headers["authorization"], "Bearer sk-local");
        assert_eq!(body["model"], "qwen2.5-3b-instruct");
        assert_eq!(body["seed"], 42);
        assert_eq!(body["messages"][0]["role"], "system");
        assert_eq!(
            body["messages"][1],
            json!({"role": "user", "content": "a red fox"})
        );
    }

    #[tokio::test]
    async fn errors_say_what_went_wrong_and_whether_to_retry() {
        let (url, _) =
            fake_model(StatusCode::SERVICE_UNAVAILABLE, json!({"error": "loading"})).await;
        let err = upsampler(url, None).upsample("x", 1).await.unwrap_err();
        assert!(
            matches!(err, UpsampleError::Status { status: 503, .. }),
            "{err}"
        );
        assert!(err.is_retryable());

        let (url, _) = fake_model(StatusCode::OK, json!({"choices": []})).await;
        let err = upsampler(url, None).upsample("x", 1).await.unwrap_err();
        assert!(matches!(err, UpsampleError::Malformed(_)), "{err}");
        assert!(!err.is_retryable());

        let err = upsampler("http://127.0.0.1:9/v1".into(), None)
            .upsample("x", 1)
            .await
            .unwrap_err();
        assert!(matches!(err, UpsampleError::Unreachable(_)), "{err}");
        assert!(err.is_retryable());
    }

    #[test]
    fn endpoints_and_answers_are_normalised() {
        let cfg = |url: &str| UpsamplerConfig {
            url: url.into(),
            model: "m".into(),
            api_key: None,
            timeout: Duration::from_secs(1),
        };
        assert_eq!(
            cfg("http://h:8080/v1/").endpoint(),
            "http://h:8080/v1/chat/completions"
        );
        assert_eq!(
            cfg("http://h/v1/chat/completions").endpoint(),
            "http://h/v1/chat/completions"
        );
        assert_eq!(clean("<think>hmm</think>\n A fox. "), "A fox.");
        assert_eq!(clean("“A fox”"), "A fox");
        assert_eq!(clean("'A fox'"), "A fox");
        assert_eq!(clean("A \"quoted\" fox"), "A \"quoted\" fox");
    }
}
