//! A schema of its own on the test PostgreSQL server, for tests of the PostgreSQL store and of
//! what runs on it (the server, the CLI): the server is the one `scripts/services/postgres.sh`
//! starts, whose URL `scripts/test.sh` exports as `FLUXD_TEST_POSTGRES_URL`. A schema per test
//! lets tests run in parallel on one database.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::Connection;

use crate::{PostgresStore, Result, Store, StoreError};

/// The variable holding the test server's URL.
pub const TEST_POSTGRES_URL: &str = "FLUXD_TEST_POSTGRES_URL";

/// Schemas of test runs older than this are dropped by the next run.
const STALE_AFTER_SECS: u64 = 3600;

/// The test server's URL. Missing is a failure, not a skip: CI must run these tests.
///
/// # Panics
/// When `FLUXD_TEST_POSTGRES_URL` is not set, saying how to start the server.
pub fn test_server_url() -> String {
    std::env::var(TEST_POSTGRES_URL).unwrap_or_else(|_| {
        panic!(
            "{TEST_POSTGRES_URL} is not set. Run the tests with scripts/test.sh, or start the \
             test server with `scripts/services/postgres.sh start` and export the URL it prints \
             as {TEST_POSTGRES_URL}"
        )
    })
}

fn database(err: sqlx::Error) -> StoreError {
    StoreError::Database(Arc::new(err))
}

fn invalid(what: &str) -> StoreError {
    StoreError::Invalid(format!("{TEST_POSTGRES_URL}: {what}"))
}

/// A schema of its own on the test server, named `t_<creation time>_<random>`. It is not
/// dropped at the end of its test (async work has no place in `Drop`, and a failed test's data
/// is worth a look); the first schema a test process makes drops those of runs long past.
#[derive(Debug)]
pub struct TestSchema {
    name: String,
    server: url::Url,
}

impl TestSchema {
    /// Creates the schema.
    pub async fn new() -> Result<Self> {
        static SWEPT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
        let base = test_server_url();
        let server = url::Url::parse(&base).map_err(|_| invalid("not a URL"))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut conn = sqlx::PgConnection::connect(&base).await.map_err(database)?;
        SWEPT
            .get_or_try_init(|| async {
                let cutoff = now.saturating_sub(STALE_AFTER_SECS);
                let sweep = format!(
                    "DO $$ DECLARE s TEXT; BEGIN \
                       FOR s IN SELECT nspname FROM pg_namespace \
                                WHERE nspname ~ '^t_[0-9]+_' \
                                  AND split_part(nspname, '_', 2)::BIGINT < {cutoff} LOOP \
                         EXECUTE format('DROP SCHEMA IF EXISTS %I CASCADE', s); \
                       END LOOP; END $$"
                );
                let mut sweeper = sqlx::PgConnection::connect(&base).await.map_err(database)?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(sweep))
                    .execute(&mut sweeper)
                    .await
                    .map_err(database)?;
                Ok::<(), StoreError>(())
            })
            .await?;
        let name = format!("t_{now}_{}", uuid::Uuid::new_v4().simple());
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(&mut conn)
            .await
            .map_err(database)?;
        Ok(Self { name, server })
    }

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server's address, for a [`FlakyLink`](crate::conformance::FlakyLink) to it.
    pub fn server_addr(&self) -> Result<SocketAddr> {
        let host = self.server.host_str().ok_or_else(|| invalid("no host"))?;
        (host, self.server.port().unwrap_or(5432))
            .to_socket_addrs()
            .map_err(|err| StoreError::Unavailable(Arc::new(err)))?
            .next()
            .ok_or_else(|| invalid("the host has no address"))
    }

    /// The server's URL with this schema first on the `search_path`.
    pub fn url(&self) -> String {
        self.url_via(None)
    }

    /// [`TestSchema::url`] through `via` (a [`FlakyLink`](crate::conformance::FlakyLink)'s
    /// address, say) instead of the server's own address, if given.
    pub fn url_via(&self, via: Option<SocketAddr>) -> String {
        let mut url = self.server.clone();
        if let Some(addr) = via {
            // Both only fail for URLs without a host, which a postgres:// URL has.
            let _ = url.set_ip_host(addr.ip());
            let _ = url.set_port(Some(addr.port()));
        }
        url.query_pairs_mut()
            .append_pair("options", &format!("-c search_path={}", self.name));
        url.to_string()
    }

    /// A store in this schema, migrated on first use.
    pub async fn open(&self) -> Result<Box<dyn Store>> {
        Ok(Box::new(PostgresStore::connect(&self.url()).await?))
    }
}
