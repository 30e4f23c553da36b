//! Webhook signatures. Both schemes sign the exact body bytes sent, with HMAC-SHA256 keyed by the
//! caller's `webhook_secret`:
//! - `X-BFL-Signature: sha256=<hex HMAC(secret, body)>`, what handlers written against the
//!   reference check;
//! - the Standard Webhooks headers (`webhook-id`, `webhook-timestamp`,
//!   `webhook-signature: v1,<base64 HMAC(secret, "{id}.{timestamp}.{body}")>`), which off-the-shelf
//!   verifiers check, with replay protection through the timestamp.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The Standard Webhooks prefix of secrets given in their own encoding (`whsec_<base64>`).
const WHSEC_PREFIX: &str = "whsec_";

/// The Standard Webhooks key bytes of a secret. Standard Webhooks secrets (`whsec_` + base64) are keyed by their
/// decoded bytes, as every Standard Webhooks verifier does; any other secret by its UTF-8 bytes.
pub fn secret_key(secret: &str) -> Vec<u8> {
    secret
        .strip_prefix(WHSEC_PREFIX)
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec())
}

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; the error case cannot happen.
    match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC-SHA256 accepts keys of every length"),
    }
}

/// `sha256=<hex>` for `X-BFL-Signature`, keyed by the secret's bytes as given (the reference
/// scheme has no encoded secrets).
pub fn bfl_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = mac(secret.as_bytes());
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// `v1,<base64>` for `webhook-signature`.
pub fn standard_signature(secret: &str, msg_id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = mac(&secret_key(secret));
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    format!("v1,{sig}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bfl_signature_is_hex_hmac_of_the_body() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            bfl_signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn standard_signature_matches_the_specification_example() {
        // The example of the Standard Webhooks specification (spec/standard-webhooks.md).
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            standard_signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn plain_secrets_key_by_their_bytes() {
        assert_eq!(secret_key("s3cret"), b"s3cret".to_vec());
        assert_eq!(
            secret_key("whsec_!!notbase64"),
            b"whsec_!!notbase64".to_vec()
        );
    }
}
