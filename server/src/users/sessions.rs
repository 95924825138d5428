//! Dashboard sessions, kept in the store so they survive a restart and work
//! across replicas. The cookie holds a random id; the store holds its digest
//! and the session's CSRF token.

use crate::error::Result;
use crate::on_store;
use crate::secrets;
use crate::store::{Store, now_ms};

/// A live session as the dashboard sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Session {
    /// SHA-256 of the cookie value.
    pub id_hash: String,
    /// Whose session.
    pub user_id: String,
    /// Token every state-changing dashboard request must echo.
    pub csrf_token: String,
    /// Expiry (ms).
    pub expires_at: i64,
}

/// Starts a session; answers the cookie value (shown only to the browser) and the session.
pub async fn create(
    store: &Store,
    user_id: &str,
    ttl_hours: u32,
    source_addr: Option<&str>,
) -> Result<(String, Session)> {
    let cookie = secrets::random_token();
    let now = now_ms();
    let session = Session {
        id_hash: secrets::digest(&cookie),
        user_id: user_id.to_string(),
        csrf_token: secrets::random_token(),
        expires_at: now + i64::from(ttl_hours) * 3_600_000,
    };
    on_store!(store, pool => sqlx::query(
        "INSERT INTO sessions (id_hash, user_id, csrf_token, source_addr, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(&session.id_hash).bind(&session.user_id).bind(&session.csrf_token)
        .bind(source_addr).bind(now).bind(session.expires_at)
        .execute(pool).await.map(|r| r.rows_affected()))?;
    Ok((cookie, session))
}

/// The unexpired session behind a cookie value.
pub async fn find(store: &Store, cookie: &str) -> Result<Option<Session>> {
    let hash = secrets::digest(cookie);
    Ok(on_store!(store, pool => sqlx::query_as::<_, Session>(
        "SELECT id_hash, user_id, csrf_token, expires_at FROM sessions WHERE id_hash = $1 AND expires_at > $2")
        .bind(&hash).bind(now_ms()).fetch_optional(pool).await)?)
}

/// Ends one session (logout).
pub async fn delete(store: &Store, id_hash: &str) -> Result<()> {
    on_store!(store, pool => sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
        .bind(id_hash).execute(pool).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// Ends every session of a user but one (after a password change).
pub async fn delete_for_user_except(
    store: &Store,
    user_id: &str,
    keep: Option<&str>,
) -> Result<()> {
    on_store!(store, pool => sqlx::query(
        "DELETE FROM sessions WHERE user_id = $1 AND id_hash <> $2")
        .bind(user_id).bind(keep.unwrap_or("")).execute(pool).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// Removes expired sessions; run periodically.
pub async fn purge_expired(store: &Store) -> Result<u64> {
    let done = on_store!(store, pool => sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
        .bind(now_ms()).execute(pool).await.map(|r| r.rows_affected()))?;
    Ok(done)
}
