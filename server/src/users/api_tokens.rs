//! API tokens for automation: random, shown once, stored as a digest, scoped
//! to a role no higher than their creator's, revocable, with a last-used time.

use serde::Serialize;

use super::Role;
use crate::error::{Error, Result};
use crate::on_store;
use crate::secrets;
use crate::store::{Store, now_ms};

/// Every API token starts with this, so scanners and the auth layer can tell it from a JWT.
pub const PREFIX: &str = "drv_";

/// A stored token (never the secret itself).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiToken {
    /// Stable id.
    pub id: String,
    /// What the token is for.
    pub name: String,
    /// First characters of the secret, to recognise it.
    pub prefix: String,
    /// Role the token acts with.
    pub role: String,
    /// Owner.
    pub user_id: String,
    /// Created (ms).
    pub created_at: i64,
    /// Expiry (ms), if any.
    pub expires_at: Option<i64>,
    /// Last successful use (ms).
    pub last_used_at: Option<i64>,
    /// Revocation time (ms).
    pub revoked_at: Option<i64>,
}

/// A freshly created token with its secret, which is shown this once.
#[derive(Debug, Serialize)]
pub struct NewToken {
    /// The stored token.
    #[serde(skip)]
    pub token: ApiToken,
    /// The secret to put into `Authorization: Bearer`.
    pub secret: String,
}

const COLUMNS: &str =
    "id, name, prefix, role, user_id, created_at, expires_at, last_used_at, revoked_at";

/// Creates a token for `owner` acting as `role` (at most the owner's own role).
pub async fn create(
    store: &Store,
    owner_id: &str,
    owner_role: Role,
    name: &str,
    role: Role,
    expires_in_days: Option<u32>,
) -> Result<NewToken> {
    let name = name.trim();
    if name.is_empty() || name.len() > 100 {
        return Err(Error::invalid("name", "use 1 to 100 characters"));
    }
    if role > owner_role {
        return Err(Error::Forbidden(format!(
            "a {owner_role} cannot create a token with the {role} role"
        )));
    }
    if let Some(days) = expires_in_days
        && !(1..=3650).contains(&days)
    {
        return Err(Error::invalid(
            "expires_in_days",
            "use a whole number of days from 1 to 3650",
        ));
    }
    let secret = format!("{PREFIX}{}", secrets::random_token());
    let now = now_ms();
    let token = ApiToken {
        id: uuid::Uuid::now_v7().to_string(),
        name: name.to_string(),
        prefix: secret.chars().take(PREFIX.len() + 6).collect(),
        role: role.as_str().to_string(),
        user_id: owner_id.to_string(),
        created_at: now,
        expires_at: expires_in_days.map(|d| now + i64::from(d) * 86_400_000),
        last_used_at: None,
        revoked_at: None,
    };
    on_store!(store, pool => sqlx::query(
        "INSERT INTO api_tokens (id, name, token_hash, prefix, role, user_id, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
        .bind(&token.id).bind(&token.name).bind(secrets::digest(&secret)).bind(&token.prefix)
        .bind(&token.role).bind(&token.user_id).bind(token.created_at).bind(token.expires_at)
        .execute(pool).await.map(|r| r.rows_affected()))?;
    Ok(NewToken { token, secret })
}

/// Resolves a presented secret to its live token and records the use.
pub async fn authenticate(store: &Store, secret: &str) -> Result<ApiToken> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM api_tokens WHERE token_hash = $1"
    ));
    let hash = secrets::digest(secret);
    let token = on_store!(store, pool => sqlx::query_as::<_, ApiToken>(sql)
        .bind(&hash).fetch_optional(pool).await)?
    .ok_or_else(|| Error::Unauthorized("the API token is not known".into()))?;
    let now = now_ms();
    if token.revoked_at.is_some() {
        return Err(Error::Unauthorized("the API token has been revoked".into()));
    }
    if token.expires_at.is_some_and(|e| e <= now) {
        return Err(Error::Unauthorized("the API token has expired".into()));
    }
    on_store!(store, pool => sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE id = $2")
        .bind(now).bind(&token.id).execute(pool).await.map(|r| r.rows_affected()))?;
    Ok(token)
}

/// One page of tokens (admins see all, others their own), newest first, with the total.
pub async fn list(
    store: &Store,
    owner: Option<&str>,
    page: crate::paging::Page,
) -> Result<(Vec<ApiToken>, i64)> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM api_tokens WHERE ($1 IS NULL OR user_id = $1)
         ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3"
    ));
    let items = on_store!(store, pool => sqlx::query_as::<_, ApiToken>(sql)
        .bind(owner).bind(page.limit()).bind(page.offset()).fetch_all(pool).await)?;
    let total: i64 = on_store!(store, pool => sqlx::query_scalar(
        "SELECT COUNT(*) FROM api_tokens WHERE ($1 IS NULL OR user_id = $1)")
        .bind(owner).fetch_one(pool).await)?;
    Ok((items, total))
}

/// Revokes a token; revoking twice is harmless.
pub async fn revoke(store: &Store, id: &str, owner: Option<&str>) -> Result<ApiToken> {
    let sql = sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM api_tokens WHERE id = $1"));
    let token = on_store!(store, pool => sqlx::query_as::<_, ApiToken>(sql)
        .bind(id).fetch_optional(pool).await)?
    .filter(|t| owner.is_none_or(|o| o == t.user_id))
    .ok_or_else(|| Error::NotFound(format!("no API token with id {id}")))?;
    on_store!(store, pool => sqlx::query(
        "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
        .bind(now_ms()).bind(id).execute(pool).await.map(|r| r.rows_affected()))?;
    Ok(token)
}
