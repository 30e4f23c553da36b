//! Shared secrets ([`Store::shared_secret`](crate::Store::shared_secret)): random bytes created
//! once per database under a name and read by every process using it, stored as lowercase hex.

use crate::apikey::fill_random;
use crate::StoreError;

/// Bytes of a shared secret (an HMAC-SHA256 key's worth).
pub const SHARED_SECRET_LEN: usize = 32;

/// A shared secret's bytes.
pub type SharedSecret = [u8; SHARED_SECRET_LEN];

/// A fresh secret, as stored.
pub(crate) fn generate() -> Result<String, StoreError> {
    let mut secret: SharedSecret = [0; SHARED_SECRET_LEN];
    fill_random(&mut secret)?;
    Ok(hex::encode(secret))
}

/// Names are ids chosen by the code (`url-signing`), never empty.
pub(crate) fn check_name(name: &str) -> Result<(), StoreError> {
    if name.is_empty() || name.chars().any(char::is_control) {
        return Err(StoreError::Invalid(format!("shared secret name {name:?}")));
    }
    Ok(())
}

/// The stored text of secret `name` as bytes.
pub(crate) fn decode(name: &str, stored: &str) -> Result<SharedSecret, StoreError> {
    let corrupt = || {
        StoreError::Corrupt(format!(
            "shared secret {name:?} is not {SHARED_SECRET_LEN} hex bytes"
        ))
    };
    let bytes = hex::decode(stored).map_err(|_| corrupt())?;
    SharedSecret::try_from(bytes.as_slice()).map_err(|_| corrupt())
}
