//! Where the store lives, as a URL: `sqlite://PATH` or `postgres://…` ([`DatabaseUrl`]), and
//! [`open_store`], which picks the backend from it. Passwords never leave through `Display` or
//! `Debug`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::{PostgresOptions, PostgresStore, SqliteOptions, SqliteStore, Store, StoreError};

/// A database URL, checked and sorted by backend.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// An SQLite file: `sqlite://PATH` (`sqlite:///var/lib/fluxd/fluxd.sqlite`,
    /// `sqlite://fluxd.sqlite` relative to the working directory) or `sqlite:PATH`.
    Sqlite(PathBuf),
    /// A PostgreSQL database: `postgres://…` or `postgresql://…`, as libpq writes them, kept
    /// as given (it may hold a password: show it with `Display`, which hides that).
    Postgres(String),
}

impl DatabaseUrl {
    /// `url` with any password (in the user part or a `password` parameter) replaced, for logs
    /// and error messages. Text that is not a URL is not shown at all.
    pub fn redact(url: &str) -> String {
        let Ok(mut parsed) = url::Url::parse(url) else {
            return "(not a URL)".to_owned();
        };
        if parsed.password().is_some() {
            // Only fails for URLs that cannot have a user part, which then has no password.
            let _ = parsed.set_password(Some("redacted"));
        }
        if parsed.query_pairs().any(|(key, _)| key == "password") {
            let pairs: Vec<(String, String)> = parsed
                .query_pairs()
                .map(|(key, value)| {
                    let value = if key == "password" {
                        "redacted".to_owned()
                    } else {
                        value.into_owned()
                    };
                    (key.into_owned(), value)
                })
                .collect();
            parsed.query_pairs_mut().clear().extend_pairs(pairs);
        }
        parsed.to_string()
    }
}

impl FromStr for DatabaseUrl {
    type Err = StoreError;

    fn from_str(url: &str) -> Result<Self, StoreError> {
        let url = url.trim();
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            if path.is_empty() || path.contains('?') {
                return Err(StoreError::Invalid(format!(
                    "database URL {url:?}: expected sqlite://PATH (a file path, no parameters)"
                )));
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            // Checked now, so a typo fails at the command line rather than at first use.
            sqlx::postgres::PgConnectOptions::from_str(url).map_err(|err| {
                StoreError::Invalid(format!("database URL {}: {err}", Self::redact(url)))
            })?;
            return Ok(Self::Postgres(url.to_owned()));
        }
        Err(StoreError::Invalid(format!(
            "database URL {}: expected sqlite://PATH or postgres://USER:PASSWORD@HOST:PORT/DATABASE",
            Self::redact(url)
        )))
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            Self::Postgres(url) => f.write_str(&Self::redact(url)),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    // The password must not reach logs through a stray `{:?}` (clap's, say).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

/// Opens the store at `url`: an SQLite file (created, with its directories, if missing) or a
/// PostgreSQL database (which must exist), migrated to this build's schema, with tasks allowed
/// `max_attempts` runs and the backend's other defaults. On PostgreSQL each call ends within
/// `call_timeout` (see [`PostgresOptions::call_timeout`]); SQLite, a local file, ignores it.
pub async fn open_store(
    url: &DatabaseUrl,
    max_attempts: u32,
    call_timeout: Duration,
) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match url {
        DatabaseUrl::Sqlite(path) => {
            let options = SqliteOptions {
                max_attempts,
                ..SqliteOptions::default()
            };
            Arc::new(SqliteStore::open_with(path, options).await?)
        }
        DatabaseUrl::Postgres(url) => {
            let options = PostgresOptions {
                max_attempts,
                call_timeout,
                ..PostgresOptions::default()
            };
            Arc::new(PostgresStore::connect_with(url, options).await?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_pick_the_backend() {
        let parse = |s: &str| s.parse::<DatabaseUrl>();
        assert!(matches!(
            parse("sqlite:///var/lib/fluxd/f.db"),
            Ok(DatabaseUrl::Sqlite(p)) if p == std::path::Path::new("/var/lib/fluxd/f.db")
        ));
        assert!(matches!(
            parse("sqlite://data/f.db"),
            Ok(DatabaseUrl::Sqlite(p)) if p == std::path::Path::new("data/f.db")
        ));
        assert!(matches!(parse("sqlite:f.db"), Ok(DatabaseUrl::Sqlite(_))));
        assert!(matches!(
            parse("postgresql://u:p@db:5432/fluxd?sslmode=require"),
            Ok(DatabaseUrl::Postgres(_))
        ));
        for bad in [
            "sqlite://",
            "sqlite://f.db?mode=ro",
            "mysql://u:p@h/d",
            "fluxd.db",
        ] {
            assert!(matches!(parse(bad), Err(StoreError::Invalid(_))), "{bad}");
        }
    }

    #[test]
    fn passwords_are_never_shown() {
        let url = "postgres://fluxd:s3cr3t@db:5432/fluxd?application_name=x";
        let parsed: DatabaseUrl = url.parse().expect("a URL");
        for shown in [format!("{parsed}"), format!("{parsed:?}")] {
            assert!(!shown.contains("s3cr3t"), "{shown}");
            assert!(shown.contains("fluxd:redacted@db:5432/fluxd"), "{shown}");
        }
        let in_query = DatabaseUrl::redact("postgres://db/fluxd?user=u&password=s3cr3t");
        assert!(!in_query.contains("s3cr3t"), "{in_query}");
        let refused = "mysql://root:s3cr3t@db/x".parse::<DatabaseUrl>();
        let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            !message.contains("s3cr3t") && message.contains("mysql"),
            "{message}"
        );
        assert_eq!(DatabaseUrl::redact("not a url s3cr3t"), "(not a URL)");
    }
}
