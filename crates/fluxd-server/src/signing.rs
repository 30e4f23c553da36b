//! Signed delivery URLs: `/v1/images/<task id>.<ext>?exp=<unix s>&sig=<hex HMAC-SHA256>`.
//!
//! The image URL must work without `x-key` (clients hand it to browsers and downloaders), so the
//! URL itself carries the authorisation: an HMAC over the file name and the expiry, with a key
//! generated once per data directory (or once per database, shared by every node on it).
//! Changing or extending either invalidates the signature.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use fluxd_store::Store;

use crate::data_dir::DataDir;
use crate::error::ServerError;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of the signing key.
const KEY_LEN: usize = fluxd_store::SHARED_SECRET_LEN;

/// Name of the signing key among the store's shared secrets.
const SHARED_KEY_NAME: &str = "url-signing";

/// Signs and checks delivery URLs.
#[derive(Clone)]
pub struct UrlSigner {
    key: [u8; KEY_LEN],
}

impl std::fmt::Debug for UrlSigner {
    // The key must never reach logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UrlSigner(<redacted>)")
    }
}

impl UrlSigner {
    /// A signer with this key (tests).
    pub fn from_key(key: [u8; KEY_LEN]) -> Self {
        Self { key }
    }

    /// The key every process on the store's database shares (created by the first to ask), for
    /// deployments of several API nodes: a URL signed by one verifies on any other.
    pub async fn shared(store: &dyn fluxd_store::Store) -> Result<Self, ServerError> {
        Ok(Self {
            key: store.shared_secret(SHARED_KEY_NAME).await?,
        })
    }

    /// Reads the key kept at `path` (hex), creating it (mode 0600) on first use, so that URLs stay
    /// valid across restarts.
    pub fn load_or_create(path: &Path) -> Result<Self, ServerError> {
        if let Some(key) = read_key_file(path)? {
            return Ok(Self { key });
        }
        let mut key = [0u8; KEY_LEN];
        getrandom::fill(&mut key).map_err(|e| {
            ServerError::io("generating the URL signing key", std::io::Error::other(e))
        })?;
        write_private(path, hex::encode(key).as_bytes())
            .map_err(|e| ServerError::io(format!("writing {}", path.display()), e))?;
        Ok(Self { key })
    }

    fn mac(&self, file: &str, exp: u64) -> HmacSha256 {
        // HMAC accepts keys of any length; ours is always 32 bytes.
        let mut mac = match HmacSha256::new_from_slice(&self.key) {
            Ok(mac) => mac,
            Err(_) => unreachable_key_length(),
        };
        mac.update(file.as_bytes());
        mac.update(b"\n");
        mac.update(exp.to_string().as_bytes());
        mac
    }

    /// The query string (`exp=..&sig=..`) that makes `file` downloadable until `now + ttl`.
    pub fn sign(&self, file: &str, now: SystemTime, ttl: Duration) -> String {
        let exp = unix_secs(now).saturating_add(ttl.as_secs());
        let sig = hex::encode(self.mac(file, exp).finalize().into_bytes());
        format!("exp={exp}&sig={sig}")
    }

    /// Whether `sig` signs `file` until `exp` and `exp` has not passed. Constant-time comparison.
    pub fn verify(&self, file: &str, exp: u64, sig: &str, now: SystemTime) -> bool {
        if unix_secs(now) > exp {
            return false;
        }
        let Ok(sig) = hex::decode(sig) else {
            return false;
        };
        self.mac(file, exp).verify_slice(&sig).is_ok()
    }
}

/// The key kept at `path` (hex), or None if there is no such file.
fn read_key_file(path: &Path) -> Result<Option<[u8; KEY_LEN]>, ServerError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(ServerError::io(format!("reading {}", path.display()), err)),
    };
    let bytes = hex::decode(text.trim())
        .map_err(|e| ServerError::Corrupt(format!("{}: not a hex key: {e}", path.display())))?;
    let key = <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| {
        ServerError::Corrupt(format!("{}: expected a {KEY_LEN}-byte key", path.display()))
    })?;
    Ok(Some(key))
}

/// A data directory's key file as the shared secret another database would hold for it, for
/// `fluxd store copy` to move there: nodes on that database then sign and verify with the same
/// key, so URLs signed before the move keep verifying. None if the directory has no key file.
pub fn key_file_as_shared_secret(
    data: &DataDir,
) -> Result<Option<fluxd_store::copy::SecretRow>, ServerError> {
    let path = data.signing_key_path();
    let Some(key) = read_key_file(&path)? else {
        return Ok(None);
    };
    let created_at = std::fs::metadata(&path)
        .and_then(|meta| meta.modified())
        .map_err(|e| ServerError::io(format!("reading {}", path.display()), e))?;
    Ok(Some(fluxd_store::copy::SecretRow {
        name: SHARED_KEY_NAME.to_owned(),
        value: hex::encode(key),
        created_at,
    }))
}

/// The URL signer of this deployment, which every node (API nodes and workers) must share: a URL
/// signed by one node is checked by whichever node it reaches. `own_data_dir` is the data
/// directory whose own SQLite database `store` is, if it is: its `url-signing.key` file (made on
/// first use) keeps signing, as it always has; any other database holds the key itself, created
/// once by the first node to ask ([`Store::shared_secret`]).
pub async fn signer_for(
    store: &dyn Store,
    own_data_dir: Option<&DataDir>,
) -> Result<UrlSigner, ServerError> {
    match own_data_dir {
        Some(data) => data.signer(),
        None => UrlSigner::shared(store).await,
    }
}

#[cold]
fn unreachable_key_length() -> HmacSha256 {
    // `Hmac::new_from_slice` only fails for algorithms with a fixed key size, not HMAC; keep a
    // total function rather than a panic on a request path.
    let mut mac = <HmacSha256 as Mac>::new(&Default::default());
    mac.update(b"unreachable");
    mac
}

/// Seconds since the Unix epoch (0 before it).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_until_expiry_and_only_for_their_file() {
        let signer = UrlSigner::from_key([7; KEY_LEN]);
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let query = signer.sign("abc.jpeg", now, Duration::from_secs(600));
        let (exp, sig) = query
            .strip_prefix("exp=")
            .and_then(|q| q.split_once("&sig="))
            .expect("shape");
        let exp: u64 = exp.parse().expect("exp");
        assert_eq!(exp, 1_000_600);
        assert!(signer.verify("abc.jpeg", exp, sig, now));
        assert!(signer.verify("abc.jpeg", exp, sig, now + Duration::from_secs(600)));
        assert!(!signer.verify("abc.jpeg", exp, sig, now + Duration::from_secs(601)));
        assert!(!signer.verify("abd.jpeg", exp, sig, now));
        assert!(!signer.verify("abc.jpeg", exp + 1, sig, now));
        assert!(!signer.verify("abc.jpeg", exp, "zz", now));
        let other = UrlSigner::from_key([8; KEY_LEN]);
        assert!(!other.verify("abc.jpeg", exp, sig, now));
    }

    #[test]
    fn key_is_created_once_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key");
        let a = UrlSigner::load_or_create(&path).expect("create");
        let b = UrlSigner::load_or_create(&path).expect("load");
        assert_eq!(a.key, b.key);
        std::fs::write(&path, "nothex").expect("write");
        assert!(matches!(
            UrlSigner::load_or_create(&path),
            Err(ServerError::Corrupt(_))
        ));
    }
}
