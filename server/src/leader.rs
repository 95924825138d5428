//! One leader among several servers sharing a store: background work that
//! must run once (the rollout engine, alert judging, webhook deliveries) holds a lock
//! first. On SQLite the store belongs to one server process, which holds it;
//! on PostgreSQL an advisory lock on a dedicated connection does, and is
//! lost the moment that connection drops.

use crate::error::Result;
use crate::store::Store;

/// A held lead on the work named by an advisory key.
pub enum Hold {
    /// The SQLite server process.
    Process,
    /// A PostgreSQL session holding the advisory lock `key`.
    Advisory {
        /// The session, out of the pool: dropping it (a task that panics or is
        /// cancelled) closes it, and PostgreSQL frees the lock, where a pooled
        /// session would go back to the pool still holding it.
        conn: sqlx::PgConnection,
        /// The lock.
        key: i64,
    },
}

impl Hold {
    /// Takes the lead on `key` if nobody holds it.
    pub async fn acquire(store: &Store, key: i64) -> Result<Option<Hold>> {
        match store {
            Store::Sqlite(_) => Ok(Some(Hold::Process)),
            Store::Postgres(pool) => {
                let mut conn = pool.acquire().await?;
                let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(key)
                    .fetch_one(&mut *conn)
                    .await?;
                Ok(got.then(|| Hold::Advisory {
                    conn: conn.detach(),
                    key,
                }))
            }
        }
    }

    /// Whether the hold still stands (the lock's session answers).
    pub async fn alive(&mut self) -> bool {
        match self {
            Hold::Process => true,
            Hold::Advisory { conn, .. } => sqlx::query("SELECT 1").execute(conn).await.is_ok(),
        }
    }

    /// Gives the lead up.
    pub async fn release(self) {
        if let Hold::Advisory { mut conn, key } = self {
            let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(key)
                .execute(&mut conn)
                .await;
            // Closing the session frees the lock even if the unlock failed.
            let _ = sqlx::Connection::close(conn).await;
        }
    }
}
