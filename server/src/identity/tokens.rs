//! Enrollment tokens: a secret shown once and stored hashed, with a number of
//! uses, an expiry, the device types it admits, tags it gives its devices and
//! whether its devices wait for an operator's approval.

use std::time::Duration;

use serde::Serialize;

use super::Tags;
use crate::error::{Error, Result};
use crate::on_store;
use crate::paging::Page;
use crate::secrets;
use crate::store::{Store, now_ms};

/// Every enrollment token starts with this.
pub const PREFIX: &str = "dte_";

/// What a new token allows.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// How many devices may enroll with it (1 to 100,000).
    pub uses: u32,
    /// How long it is valid (1 minute to 365 days).
    pub expires_in: Duration,
    /// The only device types it admits; empty admits any.
    pub device_types: Vec<String>,
    /// Tags its devices get, winning over tags they claim.
    pub tags: Tags,
    /// Devices stay `pending` until an operator accepts them.
    pub approval: bool,
}

impl NewToken {
    /// Checks the ranges, naming the field.
    pub fn validate(&self) -> Result<()> {
        if !(1..=100_000).contains(&self.uses) {
            return Err(Error::invalid(
                "uses",
                "use a whole number from 1 to 100000",
            ));
        }
        if self.expires_in < Duration::from_secs(60)
            || self.expires_in > Duration::from_secs(365 * 86_400)
        {
            return Err(Error::invalid(
                "expires_in",
                "use a duration from 1m to 365d",
            ));
        }
        if self.device_types.len() > 64 {
            return Err(Error::invalid("device_types", "at most 64 device types"));
        }
        for t in &self.device_types {
            super::device_type("device_types", t)?;
        }
        Ok(())
    }
}

/// A stored token.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EnrollmentToken {
    /// Stable id.
    pub id: String,
    /// First characters of the secret.
    pub prefix: String,
    /// Uses it was created with.
    pub uses_total: i64,
    /// Uses left.
    pub uses_left: i64,
    /// Expiry (ms).
    pub expires_at: i64,
    /// JSON array of admitted device types.
    pub device_types: String,
    /// JSON object of tags.
    pub tags: String,
    /// Devices wait for approval.
    pub approval: bool,
    /// Audit actor who created it.
    pub created_by: String,
    /// Creation (ms).
    pub created_at: i64,
    /// Revocation (ms).
    pub revoked_at: Option<i64>,
}

impl EnrollmentToken {
    /// The admitted device types.
    pub fn device_types(&self) -> Vec<String> {
        serde_json::from_str(&self.device_types).unwrap_or_default()
    }

    /// The tags given to its devices.
    pub fn tags(&self) -> Tags {
        serde_json::from_str(&self.tags).unwrap_or_default()
    }

    /// Why the token cannot enroll a device now, if it cannot.
    pub fn refusal(&self, now: i64) -> Option<String> {
        if self.revoked_at.is_some() {
            Some("the enrollment token has been revoked; ask an operator for a new one".into())
        } else if self.expires_at <= now {
            Some("the enrollment token has expired; ask an operator for a new one".into())
        } else if self.uses_left <= 0 {
            Some(format!(
                "the enrollment token is used up ({} of {} uses); ask an operator for a new one",
                self.uses_total, self.uses_total
            ))
        } else {
            None
        }
    }

    /// `active`, `expired`, `used_up` or `revoked`.
    pub fn state(&self, now: i64) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at <= now {
            "expired"
        } else if self.uses_left <= 0 {
            "used_up"
        } else {
            "active"
        }
    }
}

/// A created token with its secret, shown this once.
#[derive(Debug, Serialize)]
pub struct Created {
    /// The stored token.
    #[serde(skip)]
    pub token: EnrollmentToken,
    /// The secret for `drover-agent enroll --token`.
    pub secret: String,
}

const COLUMNS: &str = "id, prefix, uses_total, uses_left, expires_at, device_types, tags, approval, created_by, created_at, revoked_at";

/// Creates a token.
pub async fn create(store: &Store, new: &NewToken, created_by: &str) -> Result<Created> {
    new.validate()?;
    let secret = format!("{PREFIX}{}", secrets::random_token());
    let now = now_ms();
    let token = EnrollmentToken {
        id: uuid::Uuid::now_v7().to_string(),
        prefix: secret.chars().take(PREFIX.len() + 6).collect(),
        uses_total: i64::from(new.uses),
        uses_left: i64::from(new.uses),
        expires_at: now + i64::try_from(new.expires_in.as_millis()).unwrap_or(i64::MAX / 2),
        device_types: serde_json::to_string(&new.device_types).unwrap_or_else(|_| "[]".into()),
        tags: serde_json::to_string(&new.tags).unwrap_or_else(|_| "{}".into()),
        approval: new.approval,
        created_by: created_by.to_string(),
        created_at: now,
        revoked_at: None,
    };
    on_store!(store, pool => sqlx::query(
        "INSERT INTO enrollment_tokens (id, token_hash, prefix, uses_total, uses_left, expires_at, device_types, tags, approval, created_by, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)")
        .bind(&token.id).bind(secrets::digest(&secret)).bind(&token.prefix).bind(token.uses_total)
        .bind(token.uses_left).bind(token.expires_at).bind(&token.device_types).bind(&token.tags)
        .bind(token.approval).bind(&token.created_by).bind(token.created_at)
        .execute(pool).await.map(|r| r.rows_affected()))?;
    Ok(Created { token, secret })
}

/// The token behind a presented secret.
pub async fn find_by_secret(store: &Store, secret: &str) -> Result<Option<EnrollmentToken>> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM enrollment_tokens WHERE token_hash = $1"
    ));
    let hash = secrets::digest(secret);
    Ok(
        on_store!(store, pool => sqlx::query_as::<_, EnrollmentToken>(sql).bind(&hash).fetch_optional(pool).await)?,
    )
}

/// A token by id.
pub async fn get(store: &Store, id: &str) -> Result<Option<EnrollmentToken>> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM enrollment_tokens WHERE id = $1"
    ));
    Ok(
        on_store!(store, pool => sqlx::query_as::<_, EnrollmentToken>(sql).bind(id).fetch_optional(pool).await)?,
    )
}

/// One page of tokens, newest first, with the total.
pub async fn list(store: &Store, page: Page) -> Result<(Vec<EnrollmentToken>, i64)> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM enrollment_tokens ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2"
    ));
    let items = on_store!(store, pool => sqlx::query_as::<_, EnrollmentToken>(sql)
        .bind(page.limit()).bind(page.offset()).fetch_all(pool).await)?;
    let total: i64 = on_store!(store, pool => sqlx::query_scalar("SELECT COUNT(*) FROM enrollment_tokens")
        .fetch_one(pool).await)?;
    Ok((items, total))
}

/// Revokes a token; devices already enrolled with it stay.
pub async fn revoke(store: &Store, id: &str) -> Result<EnrollmentToken> {
    let token = get(store, id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no enrollment token with id {id}")))?;
    on_store!(store, pool => sqlx::query(
        "UPDATE enrollment_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
        .bind(now_ms()).bind(id).execute(pool).await.map(|r| r.rows_affected()))?;
    Ok(token)
}
