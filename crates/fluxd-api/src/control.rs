//! Our own endpoints beside the reference's (the reference API has no cancel; its credits
//! endpoint answers only the balance): `POST /v1/cancel` and `GET /v1/credits`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::body::{field, Body};
use crate::error::RequestError;
use crate::response::TaskStatus;

/// `details.error` of a task the client cancelled: it ends `Error`, as the contract has no
/// status of its own for it.
pub const CANCELLED_DETAILS: &str =
    "Task cancelled: the client asked to cancel it (POST /v1/cancel)";

/// A validated `POST /v1/cancel` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CancelRequest {
    /// The task to cancel (the `id` its submit answered).
    #[schema(example = "0192f3a4-5b6c-7d8e-9f00-112233445566")]
    pub id: String,
}

/// `POST /v1/cancel` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CancelResponse {
    /// The cancelled task.
    pub id: String,
    /// `Error` when the task was queued (it is final now, and never runs); `Pending` when a
    /// worker was running it: it stops between two denoising steps and ends `Error` within
    /// about a second. Either way its webhook fires once it is final.
    pub status: TaskStatus,
}

/// `GET /v1/credits` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreditsResponse {
    /// The caller's tenant's balance, or null when it has none configured (unlimited).
    pub credits: Option<f64>,
}

/// Validates a `POST /v1/cancel` body with the same rules (and 422s) as the reference's bodies.
pub fn parse_cancel_request(body: &[u8]) -> Result<CancelRequest, RequestError> {
    let mut b = Body::read(body)?;
    let request = CancelRequest {
        id: b.required("id", field::string),
    };
    b.finish()?;
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cancel_bodies() {
        let ok = parse_cancel_request(br#"{"id":"abc","other":1}"#).unwrap();
        assert_eq!(ok.id, "abc");
        let missing = parse_cancel_request(b"{}").unwrap_err();
        assert_eq!(missing.status(), 422);
        assert_eq!(missing.body()["detail"][0]["type"], "missing");
        assert_eq!(missing.body()["detail"][0]["loc"], json!(["body", "id"]));
        let wrong = parse_cancel_request(br#"{"id":5}"#).unwrap_err();
        assert_eq!(wrong.body()["detail"][0]["type"], "string_type");
        assert_eq!(
            serde_json::to_value(CancelResponse {
                id: "abc".into(),
                status: TaskStatus::Error
            })
            .unwrap(),
            json!({"id": "abc", "status": "Error"})
        );
        assert_eq!(
            serde_json::to_value(CreditsResponse { credits: None }).unwrap(),
            json!({"credits": null})
        );
    }
}
