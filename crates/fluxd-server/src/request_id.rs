//! `x-request-id`: every response carries one, the caller's (when it is a usable header value) or
//! a fresh UUID. The id is put in the request's extensions ([`RequestId`]) and on a `request`
//! tracing span around the handler, and a submit stores it with the task so the worker's `task`
//! span carries it too: one id finds a request's lines and its task's.

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// The header's name.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest caller-given id kept; longer ones are replaced, so logs and stored tasks stay small.
const MAX_LEN: usize = 200;

/// The request's id, in its extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// The caller's id if it is 1 to 200 visible ASCII characters, else a new UUID.
fn pick(given: Option<&HeaderValue>) -> String {
    given
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= MAX_LEN && s.bytes().all(|c| c.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

/// Middleware: tags the request and its response with the id.
pub async fn tag(mut request: Request, next: Next) -> Response {
    let id = pick(request.headers().get(&REQUEST_ID));
    request.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        path = %request.uri().path(),
    );
    let mut response = next.run(request).instrument(span).await;
    // Visible ASCII only, so this cannot fail; a response without the header beats none.
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usable_ids_are_kept_others_replaced() {
        let keep = |s: &str| pick(Some(&HeaderValue::from_str(s).unwrap()));
        assert_eq!(keep("req-123"), "req-123");
        assert_eq!(keep("a/b:c=d"), "a/b:c=d");
        for bad in ["", "has space", &"x".repeat(MAX_LEN + 1)] {
            let got = keep(bad);
            assert!(uuid::Uuid::parse_str(&got).is_ok(), "{bad:?} -> {got}");
        }
        let latin1 = HeaderValue::from_bytes(b"caf\xe9").unwrap();
        assert!(uuid::Uuid::parse_str(&pick(Some(&latin1))).is_ok());
        assert!(uuid::Uuid::parse_str(&pick(None)).is_ok());
    }
}
