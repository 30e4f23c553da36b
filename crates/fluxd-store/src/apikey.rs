//! API key material: generation, the non-secret lookup prefix, hashing and constant-time
//! comparison. Shared by every backend so that a key made by one authenticates against another.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::StoreError;

/// Every key starts with this, so leaked keys are easy to recognise (secret scanners, logs).
pub const KEY_PREFIX: &str = "fxd_";

/// Random base62 characters after [`KEY_PREFIX`]: 40 × log2(62) ≈ 238 bits.
const RANDOM_CHARS: usize = 40;

/// Characters of the key kept in clear for lookup: `fxd_` and 8 random characters (≈48 bits, so
/// lookups almost never see two candidates; the remaining ≈190 bits stay secret).
const LOOKUP_CHARS: usize = KEY_PREFIX.len() + 8;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A generated key with what the store keeps of it.
pub(crate) struct KeyMaterial {
    /// The secret, returned to the caller once.
    pub key: String,
    /// Lookup prefix, stored in clear.
    pub prefix: String,
    /// Hex SHA-256 of `key`, stored.
    pub hash: String,
}

/// Generates a key from the operating system's random source.
pub(crate) fn generate() -> Result<KeyMaterial, StoreError> {
    let mut key = String::with_capacity(KEY_PREFIX.len() + RANDOM_CHARS);
    key.push_str(KEY_PREFIX);
    let mut buf = [0u8; 64];
    while key.len() < KEY_PREFIX.len() + RANDOM_CHARS {
        fill_random(&mut buf)?;
        // Rejection sampling: 248 = 4 × 62, so accepted bytes map onto base62 uniformly.
        for &byte in &buf {
            if byte < 248 && key.len() < KEY_PREFIX.len() + RANDOM_CHARS {
                key.push(char::from(BASE62[usize::from(byte % 62)]));
            }
        }
    }
    let prefix = key[..LOOKUP_CHARS].to_owned();
    let hash = hash(&key);
    Ok(KeyMaterial { key, prefix, hash })
}

/// Fills `buf` from the operating system's random source (keys and shared secrets).
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), StoreError> {
    getrandom::fill(buf).map_err(|err| {
        StoreError::Unavailable(Arc::new(std::io::Error::other(format!(
            "no random source: {err}"
        ))))
    })
}

/// The lookup prefix of a presented key, or None when it cannot be one of ours (wrong shape), in
/// which case no query is needed.
pub(crate) fn lookup_prefix(key: &str) -> Option<&str> {
    let random = key.strip_prefix(KEY_PREFIX)?;
    let well_formed =
        random.len() == RANDOM_CHARS && random.bytes().all(|b| b.is_ascii_alphanumeric());
    well_formed.then(|| &key[..LOOKUP_CHARS])
}

/// Lowercase hex SHA-256 of a key. Keys carry ~238 random bits, so a fast unsalted hash is
/// enough: there is nothing to brute-force that a slow hash would protect.
pub(crate) fn hash(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
        hex.push(char::from(b"0123456789abcdef"[usize::from(byte & 15)]));
    }
    hex
}

/// Compares a presented key's hash with a stored one without an early exit, so response time
/// says nothing about how many leading characters matched.
pub(crate) fn hashes_match(presented: &str, stored: &str) -> bool {
    bool::from(presented.as_bytes().ct_eq(stored.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_documented_shape() -> Result<(), StoreError> {
        let a = generate()?;
        let b = generate()?;
        assert_ne!(a.key, b.key);
        assert_eq!(a.key.len(), KEY_PREFIX.len() + RANDOM_CHARS);
        assert_eq!(lookup_prefix(&a.key), Some(a.prefix.as_str()));
        assert!(a.key.starts_with(&a.prefix));
        assert_eq!(a.hash, hash(&a.key));
        assert_eq!(a.hash.len(), 64);
        Ok(())
    }

    #[test]
    fn malformed_keys_have_no_prefix() {
        assert_eq!(lookup_prefix(""), None);
        assert_eq!(lookup_prefix("fxd_short"), None);
        assert_eq!(lookup_prefix(&format!("abc_{}", "a".repeat(40))), None);
        assert_eq!(lookup_prefix(&format!("fxd_{}!", "a".repeat(39))), None);
        assert!(lookup_prefix(&format!("fxd_{}", "a".repeat(40))).is_some());
    }

    #[test]
    fn hash_is_sha256_hex() {
        // SHA-256("abc") from FIPS 180-2, appendix B.1.
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(hashes_match(&hash("abc"), &hash("abc")));
        assert!(!hashes_match(&hash("abc"), &hash("abd")));
        assert!(!hashes_match("ab", "abc"));
    }
}
