//! Artifacts: uploaded files (firmware images, models, archives) that bundles
//! name as payloads. Content-addressed: one artifact per sha256, so the same
//! bytes uploaded again answer the artifact that exists; the bytes live in
//! the blob store, and leave it only when no artifact names them.

use std::fmt::Display;

use bytes::Bytes;
use drover_proto::Sha256;
use futures_util::Stream;
use serde::Serialize;

use crate::blobs::BlobStore;
use crate::error::{Error, Result};
use crate::on_store;
use crate::paging::Page;
use crate::store::{Store, is_unique_violation, now_ms};
use crate::timefmt::rfc3339;

/// Longest artifact name, in characters.
pub const MAX_NAME_CHARS: usize = 200;

/// A stored artifact.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Artifact {
    /// Stable id.
    pub id: String,
    /// File name given at upload.
    pub name: String,
    /// Hex sha256 of the bytes.
    pub sha256: String,
    /// Size in bytes.
    pub size: i64,
    /// Audit actor who uploaded it.
    pub created_by: String,
    /// Upload time (ms).
    pub created_at: i64,
}

/// An artifact as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ArtifactView {
    /// Stable id.
    pub id: String,
    /// Hex sha256 of the bytes.
    pub sha256: String,
    /// Size in bytes.
    pub size: i64,
    /// File name given at upload.
    pub name: String,
    /// RFC 3339 upload time.
    pub created_at: String,
}

impl From<Artifact> for ArtifactView {
    fn from(a: Artifact) -> Self {
        ArtifactView {
            id: a.id,
            sha256: a.sha256,
            size: a.size,
            name: a.name,
            created_at: rfc3339(a.created_at),
        }
    }
}

/// Checks an artifact name (the `X-Artifact-Name` header): it becomes a file
/// name on devices, so no path separators, control characters, `.` or `..`.
pub fn parse_name(field: &str, raw: Option<&[u8]>) -> Result<String> {
    let raw =
        raw.ok_or_else(|| Error::invalid(field, "is required: name the file, such as model.onnx"))?;
    let name = std::str::from_utf8(raw)
        .map_err(|_| Error::invalid(field, "must be UTF-8 text"))?
        .trim();
    if name.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(Error::invalid(
            field,
            format!("must have at most {MAX_NAME_CHARS} characters"),
        ));
    }
    if name.contains(['/', '\\']) {
        return Err(Error::invalid(
            field,
            "must be a file name without '/' or '\\'",
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    if name == "." || name == ".." {
        return Err(Error::invalid(field, "must not be '.' or '..'"));
    }
    Ok(name.to_string())
}

const COLUMNS: &str = "id, name, sha256, size, created_by, created_at";

/// Streams an upload into the blob store and records it. Answers the artifact
/// and whether it is new (false: these bytes were stored already).
pub async fn upload<S, E>(
    store: &Store,
    blobs: &BlobStore,
    name: &str,
    body: S,
    limit: u64,
    created_by: &str,
) -> Result<(Artifact, bool)>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    E: Display,
{
    let stored = blobs.put(body, limit).await?;
    if let Some(existing) = by_sha256(store, &stored.sha256).await? {
        return Ok((existing, false));
    }
    let artifact = Artifact {
        id: uuid::Uuid::now_v7().to_string(),
        name: name.to_string(),
        sha256: stored.sha256.to_string(),
        size: i64::try_from(stored.size)
            .map_err(|_| Error::TooLarge("the artifact is too large".into()))?,
        created_by: created_by.to_string(),
        created_at: now_ms(),
    };
    let inserted = on_store!(store, pool => sqlx::query(
        "INSERT INTO artifacts (id, name, sha256, size, created_by, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(&artifact.id).bind(&artifact.name).bind(&artifact.sha256).bind(artifact.size)
        .bind(&artifact.created_by).bind(artifact.created_at)
        .execute(pool).await.map(|r| r.rows_affected()));
    match inserted {
        Ok(_) => Ok((artifact, true)),
        // The same bytes finished uploading elsewhere a moment ago: that one wins.
        Err(e) if is_unique_violation(&e) => by_sha256(store, &stored.sha256)
            .await?
            .map(|a| (a, false))
            .ok_or_else(|| Error::Internal("artifact vanished after a duplicate upload".into())),
        Err(e) => Err(e.into()),
    }
}

/// The artifact holding these bytes, if any.
pub async fn by_sha256(store: &Store, sha256: &Sha256) -> Result<Option<Artifact>> {
    let sql = sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM artifacts WHERE sha256 = $1"));
    Ok(on_store!(store, pool => sqlx::query_as::<_, Artifact>(sql)
        .bind(sha256.to_string()).fetch_optional(pool).await)?)
}

/// One artifact by id.
pub async fn get(store: &Store, id: &str) -> Result<Artifact> {
    let sql = sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM artifacts WHERE id = $1"));
    on_store!(store, pool => sqlx::query_as::<_, Artifact>(sql)
        .bind(id).fetch_optional(pool).await)?
    .ok_or_else(|| Error::NotFound(format!("no artifact {id}")))
}

/// One page of artifacts, newest first, and the total.
pub async fn list(store: &Store, page: Page) -> Result<(Vec<Artifact>, i64)> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM artifacts ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2"
    ));
    let items = on_store!(store, pool => sqlx::query_as::<_, Artifact>(sql)
        .bind(page.limit()).bind(page.offset()).fetch_all(pool).await)?;
    let total: i64 = on_store!(store, pool => sqlx::query_scalar("SELECT COUNT(*) FROM artifacts")
        .fetch_one(pool).await)?;
    Ok((items, total))
}

/// Names of the bundles (`NAME VERSION`) that use an artifact.
async fn used_by(store: &Store, id: &str) -> Result<Vec<String>> {
    let rows: Vec<(String, String)> = on_store!(store, pool => sqlx::query_as(
        "SELECT b.name, b.version FROM bundle_payloads p JOIN bundles b ON b.id = p.bundle_id
         WHERE p.artifact_id = $1 ORDER BY b.created_at LIMIT 5")
        .bind(id).fetch_all(pool).await)?;
    Ok(rows.into_iter().map(|(n, v)| format!("{n} {v}")).collect())
}

/// Deletes an artifact that no bundle uses, and its bytes once no artifact names them.
pub async fn delete(store: &Store, blobs: &BlobStore, id: &str) -> Result<Artifact> {
    let artifact = get(store, id).await?;
    let in_use = |bundles: Vec<String>| {
        Error::Conflict(format!(
            "artifact {id} ({}) is used by bundle {}; delete those bundles first",
            artifact.name,
            bundles.join(", ")
        ))
    };
    let users = used_by(store, id).await?;
    if !users.is_empty() {
        return Err(in_use(users));
    }
    let deleted = on_store!(store, pool => sqlx::query("DELETE FROM artifacts WHERE id = $1")
        .bind(id).execute(pool).await.map(|r| r.rows_affected()));
    match deleted {
        Ok(_) => {}
        // A bundle took it between the check and the delete: the foreign key held.
        Err(sqlx::Error::Database(db)) if db.is_foreign_key_violation() => {
            return Err(in_use(used_by(store, id).await?));
        }
        Err(e) => return Err(e.into()),
    }
    let digest = Sha256::parse(&artifact.sha256)
        .map_err(|e| Error::Internal(format!("stored artifact {id}: {e}")))?;
    let still_named: i64 = on_store!(store, pool => sqlx::query_scalar(
        "SELECT COUNT(*) FROM artifacts WHERE sha256 = $1")
        .bind(&artifact.sha256).fetch_one(pool).await)?;
    if still_named == 0 {
        blobs.delete(&digest).await?;
    }
    Ok(artifact)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_single_file_names() {
        let ok = |s: &str| parse_name("name", Some(s.as_bytes()));
        assert_eq!(ok(" model.onnx ").expect("valid"), "model.onnx");
        assert!(ok("modèle v2.bin").is_ok());
        for bad in ["", "  ", "a/b", "a\\b", "..", ".", "a\u{7}b"] {
            let e = ok(bad).unwrap_err().to_string();
            assert!(e.starts_with("name:"), "{bad:?}: {e}");
        }
        assert!(ok(&"x".repeat(201)).is_err());
        assert!(ok(&"x".repeat(200)).is_ok());
        assert!(parse_name("name", None).is_err());
        assert!(parse_name("name", Some(&[0xff, 0xfe])).is_err());
    }
}
