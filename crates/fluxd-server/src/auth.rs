//! The `x-key` header: every `/v1/*` route but the signed image URL takes a [`Caller`].
//! Keys found in the store are remembered for `auth_cache_ttl` ([`crate::cache::AuthCache`]), so a
//! key revoked by another process keeps working that long.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use fluxd_store::KeyInfo;

use crate::error::ApiError;
use crate::state::AppState;

/// The authenticated caller: its key, tenant and limits.
#[derive(Debug, Clone)]
pub struct Caller(pub KeyInfo);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // FastAPI's APIKeyHeader treats an absent and an empty header alike.
        let key = parts
            .headers
            .get("x-key")
            .map(|v| v.to_str().map_err(|_| ApiError::InvalidApiKey))
            .transpose()?
            .filter(|k| !k.is_empty())
            .ok_or(ApiError::NotAuthenticated)?;
        if let Some(info) = state.auth_cache().get(key) {
            return Ok(Caller(info));
        }
        // Unknown keys are not remembered: garbage keys cannot crowd out real ones, and a key
        // created a moment ago works at once.
        match state.store().authenticate(key).await? {
            Some(info) => {
                state.auth_cache().insert(key, info.clone());
                Ok(Caller(info))
            }
            None => Err(ApiError::InvalidApiKey),
        }
    }
}
