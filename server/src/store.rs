//! The store: one handle over SQLite (default, embedded) or PostgreSQL.
//! Domain modules write their SQL once in the common dialect and run it through
//! `on_store!`, which type-checks the same body against both drivers.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::config::redact_url;

/// A connection pool on one of the two supported databases.
#[derive(Clone, Debug)]
pub enum Store {
    /// Embedded SQLite (WAL, foreign keys, busy timeout).
    Sqlite(SqlitePool),
    /// PostgreSQL for multi-replica deployments.
    Postgres(PgPool),
}

/// Why the store could not be opened or migrated.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL could not be parsed.
    #[error("DROVER_DATABASE_URL {url} is not a valid database URL: {source}")]
    BadUrl {
        /// The URL without its password.
        url: String,
        /// The driver's complaint.
        source: sqlx::Error,
    },
    /// The server is not there or refused us.
    #[error(
        "cannot reach the database at {url}: {source}; check DROVER_DATABASE_URL and that the database is running"
    )]
    Unreachable {
        /// The URL without its password.
        url: String,
        /// The driver's complaint.
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Runs the same query body against whichever pool the store holds.
///
/// `on_store!(store, pool => sqlx::query("…").execute(pool).await.map(|r| r.rows_affected()))`
#[macro_export]
macro_rules! on_store {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            $crate::store::Store::Sqlite($pool) => $body,
            $crate::store::Store::Postgres($pool) => $body,
        }
    };
}

impl Store {
    /// Connects (creating a SQLite file and its directory when needed).
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        let shown = redact_url(url);
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|source| StoreError::BadUrl {
                    url: shown.clone(),
                    source,
                })?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(10));
            if let Some(parent) = options.get_filename().parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent).map_err(|e| StoreError::Unreachable {
                    url: shown.clone(),
                    source: sqlx::Error::Io(e),
                })?;
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await
                .map_err(|source| StoreError::Unreachable { url: shown, source })?;
            Ok(Store::Sqlite(pool))
        } else {
            let options = PgConnectOptions::from_str(url).map_err(|source| StoreError::BadUrl {
                url: shown.clone(),
                source,
            })?;
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(options)
                .await
                .map_err(|source| StoreError::Unreachable { url: shown, source })?;
            Ok(Store::Postgres(pool))
        }
    }

    /// Applies the migrations of this backend that have not run yet.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(pool) => sqlx::migrate!("../migrations/sqlite").run(pool).await?,
            Store::Postgres(pool) => sqlx::migrate!("../migrations/postgres").run(pool).await?,
        }
        Ok(())
    }

    /// True when a trivial query succeeds (readiness).
    pub async fn ping(&self) -> bool {
        on_store!(self, pool => sqlx::query("SELECT 1").execute(pool).await.is_ok())
    }

    /// Pool size and idle connections, for /metrics.
    pub fn pool_stats(&self) -> PoolStats {
        on_store!(self, pool => PoolStats {
            size: pool.size(),
            idle: pool.num_idle() as u32,
            max: pool.options().get_max_connections(),
        })
    }

    /// `sqlite` or `postgres`, for logs and metrics.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Waits for queries in flight and closes every connection (SQLite checkpoints its WAL).
    pub async fn close(&self) {
        on_store!(self, pool => pool.close().await)
    }
}

/// The newest migration this build knows for a backend (`sqlite` or `postgres`).
pub fn latest_migration(backend: &str) -> Option<i64> {
    let migrator = match backend {
        "sqlite" => sqlx::migrate!("../migrations/sqlite"),
        "postgres" => sqlx::migrate!("../migrations/postgres"),
        _ => return None,
    };
    migrator.iter().map(|m| m.version).max()
}

/// Connection counts of the pool.
#[derive(Debug, Clone, Copy)]
pub struct PoolStats {
    /// Open connections.
    pub size: u32,
    /// Open connections not in use.
    pub idle: u32,
    /// Configured maximum.
    pub max: u32,
}

/// Milliseconds since the Unix epoch: how every time is stored, in both backends alike.
pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// Whether an error is a unique-constraint violation (a duplicate name, say).
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}
