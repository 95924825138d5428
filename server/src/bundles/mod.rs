//! Bundles: signed manifests naming artifacts by sha256 and size, for given
//! device types. A bundle is either signed here with the active signing key
//! or imported pre-signed; both pass the same `drover_proto::verify_bundle`
//! against the current trust document before they are stored, and a stored
//! bundle never changes (a new version is a new bundle).

pub mod file;
pub mod sign;

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::str::FromStr;

use drover_proto::{
    DeviceFacts, Envelope, Installer, Kind, Manifest, Payload, PayloadFormat, SafeName, SigningKey,
    Timestamp, TrustStore, VerifiedManifest, Version, verify_bundle,
};
use serde::Serialize;

use crate::artifacts::{self, Artifact};
use crate::error::{Error, Result};
use crate::keys::{self, Keyring};
use crate::on_store;
use crate::paging::Page;
use crate::store::{Store, is_unique_violation, now_ms};
use crate::timefmt::rfc3339;

/// Longest lifetime of a server-signed bundle, in days.
pub const MAX_EXPIRES_IN_DAYS: u32 = 3650;
/// Lifetime of a server-signed bundle when none is asked for.
pub const DEFAULT_EXPIRES_IN_DAYS: u32 = 365;

/// A stored bundle.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Bundle {
    /// The manifest's `bundle_id`.
    pub id: String,
    /// Bundle name.
    pub name: String,
    /// `firmware`, `application`, `model`, `config` or `agent`.
    pub kind: String,
    /// Semantic version.
    pub version: String,
    /// JSON array of device types.
    pub device_types: String,
    /// `files`, `ab` or `script`.
    pub installer: String,
    /// The DSSE envelope as stored (JSON).
    pub envelope: String,
    /// Key id of the signature that verified.
    pub signer_keyid: String,
    /// Number of payloads.
    pub payload_count: i64,
    /// Sum of payload sizes.
    pub total_size: i64,
    /// Manifest expiry (ms).
    pub expires_at: i64,
    /// Audit actor who stored it.
    pub created_by: String,
    /// When it was stored (ms).
    pub created_at: i64,
}

impl Bundle {
    /// Device types as a list.
    pub fn device_types(&self) -> Vec<String> {
        serde_json::from_str(&self.device_types).unwrap_or_default()
    }

    /// The stored envelope.
    pub fn parsed_envelope(&self) -> Result<Envelope> {
        Envelope::from_json(self.envelope.as_bytes())
            .map_err(|e| Error::Internal(format!("stored bundle {}: {e}", self.id)))
    }

    /// The signed manifest.
    pub fn manifest(&self) -> Result<Manifest> {
        Manifest::from_json(self.parsed_envelope()?.payload())
            .map_err(|e| Error::Internal(format!("stored bundle {}: {e}", self.id)))
    }
}

/// A bundle in lists.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BundleView {
    /// The manifest's `bundle_id`.
    pub id: String,
    /// Bundle name.
    pub name: String,
    /// What it carries.
    pub kind: String,
    /// Semantic version.
    pub version: String,
    /// Device types that may install it.
    pub device_types: Vec<String>,
    /// How devices install it.
    pub installer: String,
    /// Number of payloads.
    pub payload_count: i64,
    /// Sum of payload sizes in bytes.
    pub total_size: i64,
    /// Key id (hex sha256 of the public key) whose signature verified.
    pub signer_keyid: String,
    /// RFC 3339 manifest expiry.
    pub expires_at: String,
    /// RFC 3339 time it was stored.
    pub created_at: String,
    /// Who stored it.
    pub created_by: String,
}

impl From<&Bundle> for BundleView {
    fn from(b: &Bundle) -> Self {
        BundleView {
            id: b.id.clone(),
            name: b.name.clone(),
            kind: b.kind.clone(),
            version: b.version.clone(),
            device_types: b.device_types(),
            installer: b.installer.clone(),
            payload_count: b.payload_count,
            total_size: b.total_size,
            signer_keyid: b.signer_keyid.clone(),
            expires_at: rfc3339(b.expires_at),
            created_at: rfc3339(b.created_at),
            created_by: b.created_by.clone(),
        }
    }
}

/// One payload of a bundle, with the artifact that holds its bytes.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct PayloadView {
    /// File name on the device.
    pub name: String,
    /// Size in bytes.
    pub size: i64,
    /// Hex sha256.
    pub sha256: String,
    /// The artifact holding the bytes.
    pub artifact_id: String,
}

/// A bundle with its manifest and envelope.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BundleDetail {
    /// The summary fields.
    #[serde(flatten)]
    pub bundle: BundleView,
    /// Payloads in manifest order.
    pub payloads: Vec<PayloadView>,
    /// The signed manifest.
    #[schema(value_type = Object)]
    pub manifest: serde_json::Value,
    /// The DSSE envelope devices verify.
    #[schema(value_type = Object)]
    pub envelope: serde_json::Value,
}

/// What an operator asks the server to build and sign; fields not yet validated.
#[derive(Debug, Clone, Default)]
pub struct NewBundle {
    /// Bundle name.
    pub name: String,
    /// Kind name.
    pub kind: String,
    /// Semantic version.
    pub version: String,
    /// Device types.
    pub device_types: Vec<String>,
    /// Installer name.
    pub installer: String,
    /// Artifact ids, in payload order.
    pub artifacts: Vec<String>,
    /// Lifetime in days (default 365).
    pub expires_in_days: Option<u32>,
    /// Lets devices install it over a newer version.
    pub allow_downgrade: bool,
}

fn parse_installer(s: &str) -> Result<Installer> {
    match s {
        "files" => Ok(Installer::Files),
        "ab" => Ok(Installer::Ab),
        "script" => Ok(Installer::Script),
        other => Err(Error::invalid(
            "installer",
            format!("unknown installer {other:?}; use files, ab or script"),
        )),
    }
}

/// Validates the request, builds the manifest, signs it with the active
/// signing key, verifies it like a device would, and stores it.
pub async fn create(
    store: &Store,
    keyring: &Keyring,
    new: &NewBundle,
    created_by: &str,
) -> Result<Bundle> {
    let name = SafeName::parse(&new.name).map_err(|e| Error::invalid("name", e.to_string()))?;
    let kind = Kind::from_str(&new.kind).map_err(|e| Error::invalid("kind", e))?;
    let version = Version::parse(&new.version).map_err(|e| {
        Error::invalid(
            "version",
            format!("{e}; use a semantic version such as 1.2.0"),
        )
    })?;
    if new.device_types.is_empty() {
        return Err(Error::invalid(
            "device_types",
            "list at least one device type, such as rpi4",
        ));
    }
    let mut device_types: Vec<String> = Vec::new();
    for t in &new.device_types {
        let t = crate::identity::device_type("device_types", t.trim())?;
        if !device_types.contains(&t) {
            device_types.push(t);
        }
    }
    let installer = parse_installer(&new.installer)?;
    let days = new.expires_in_days.unwrap_or(DEFAULT_EXPIRES_IN_DAYS);
    if !(1..=MAX_EXPIRES_IN_DAYS).contains(&days) {
        return Err(Error::invalid(
            "expires_in_days",
            format!("use a whole number of days from 1 to {MAX_EXPIRES_IN_DAYS}"),
        ));
    }
    if new.artifacts.is_empty() || new.artifacts.len() > drover_proto::manifest::MAX_PAYLOADS {
        return Err(Error::invalid(
            "artifacts",
            format!(
                "list 1 to {} artifact ids",
                drover_proto::manifest::MAX_PAYLOADS
            ),
        ));
    }
    let mut chosen: Vec<Artifact> = Vec::new();
    for (i, id) in new.artifacts.iter().enumerate() {
        let artifact = match artifacts::get(store, id).await {
            Ok(a) => a,
            Err(Error::NotFound(_)) => {
                return Err(Error::Unprocessable(format!(
                    "artifacts[{i}]: there is no artifact {id}; upload it with POST /api/v1/artifacts first"
                )));
            }
            Err(e) => return Err(e),
        };
        if chosen.iter().any(|c| c.id == artifact.id) {
            return Err(Error::invalid(
                "artifacts",
                format!("artifact {id} is listed twice"),
            ));
        }
        chosen.push(artifact);
    }
    let mut payloads = Vec::with_capacity(chosen.len());
    for (i, a) in chosen.iter().enumerate() {
        let payload_name = SafeName::parse(&a.name).map_err(|e| {
            Error::Unprocessable(format!(
                "artifacts[{i}]: the artifact's name cannot be a payload name: {e}"
            ))
        })?;
        if payloads.iter().any(|p: &Payload| p.name == payload_name) {
            return Err(Error::Unprocessable(format!(
                "artifacts[{i}]: two artifacts are called {}; payload names must differ",
                a.name
            )));
        }
        payloads.push(Payload {
            name: payload_name,
            size: u64::try_from(a.size).unwrap_or_default(),
            sha256: drover_proto::Sha256::parse(&a.sha256)
                .map_err(|e| Error::Internal(format!("stored artifact {}: {e}", a.id)))?,
            format: PayloadFormat::File,
        });
    }
    // Whole seconds: the signed times read naturally and round-trip everywhere.
    let now_s = now_ms() / 1000;
    let stamp =
        |s: i64| Timestamp::from_unix_seconds(s).map_err(|e| Error::Internal(format!("time: {e}")));
    let manifest = Manifest {
        schema: drover_proto::manifest::MANIFEST_SCHEMA,
        bundle_id: uuid::Uuid::now_v7().simple().to_string(),
        name,
        kind,
        version,
        device_types,
        installer,
        created_at: stamp(now_s)?,
        expires_at: stamp(now_s + i64::from(days) * 86_400)?,
        allow_downgrade: new.allow_downgrade,
        payloads,
    };
    manifest
        .validate()
        .map_err(|e| Error::Unprocessable(format!("the manifest is not valid: {e}")))?;
    let key = keys::active_signing_key(store, keyring).await?;
    let envelope = sign_manifest(&manifest, key)?;
    let verified = verify(store, keyring, &envelope).await?;
    insert(store, &envelope, &verified, &chosen, created_by).await
}

/// Takes the key by `Borrow` so it works whether the keyring lends its active
/// key or hands out an owned one (as it may once keys rotate).
fn sign_manifest(manifest: &Manifest, key: impl Borrow<SigningKey>) -> Result<Envelope> {
    manifest
        .sign(key.borrow())
        .map_err(|e| Error::Internal(format!("signing the manifest: {e}")))
}

/// Stores an envelope signed elsewhere (`drover bundle sign`) after checking it
/// against the current trust document and that every payload is an uploaded artifact.
pub async fn import(
    store: &Store,
    keyring: &Keyring,
    envelope_json: &[u8],
    created_by: &str,
) -> Result<Bundle> {
    let envelope = Envelope::from_json(envelope_json)
        .map_err(|e| Error::invalid("envelope", format!("is not a DSSE envelope: {e}")))?;
    let verified = verify(store, keyring, &envelope).await?;
    let manifest = verified.manifest();
    if !is_url_safe(&manifest.bundle_id) {
        return Err(Error::Unprocessable(format!(
            "bundle_id {:?} must be 1 to 128 letters, digits, '.', '_' or '-', as it is used in URLs",
            manifest.bundle_id
        )));
    }
    let mut chosen = Vec::with_capacity(manifest.payloads.len());
    for p in &manifest.payloads {
        let artifact = artifacts::by_sha256(store, &p.sha256)
            .await?
            .filter(|a| u64::try_from(a.size).is_ok_and(|size| size == p.size));
        match artifact {
            Some(a) => chosen.push(a),
            None => {
                return Err(Error::Unprocessable(format!(
                    "payload {} ({} bytes, sha256 {}) is not an uploaded artifact; upload its file with POST /api/v1/artifacts first",
                    p.name, p.size, p.sha256
                )));
            }
        }
    }
    insert(store, &envelope, &verified, &chosen, created_by).await
}

fn is_url_safe(id: &str) -> bool {
    crate::identity::is_name(id, 128)
}

/// Checks an envelope as a device of the manifest's first device type would
/// now: signature by an unrevoked key of the current trust document allowed
/// for the kind (active or retired), manifest schema, expiry.
async fn verify(store: &Store, keyring: &Keyring, envelope: &Envelope) -> Result<VerifiedManifest> {
    let trust_envelope = keys::current_trust(store)
        .await?
        .ok_or_else(|| Error::Internal("no trust document".into()))?;
    let root = keys::root_public(store, keyring).await?;
    let trust = TrustStore::restore(root, &trust_envelope)
        .map_err(|e| Error::Internal(format!("the current trust document: {e}")))?;
    let document = trust
        .current()
        .ok_or_else(|| Error::Internal("no trust document".into()))?;
    // The device-type check is a device's; here any listed type passes. Peeking
    // at the unverified payload only picks that type: verify_bundle still
    // checks the signature before it trusts a byte of the manifest.
    let device_type = Manifest::from_json(envelope.payload())
        .ok()
        .and_then(|m| m.device_types.first().cloned())
        .unwrap_or_default();
    let installed = BTreeMap::new();
    let now =
        Timestamp::from_unix_millis(now_ms()).map_err(|e| Error::Internal(format!("time: {e}")))?;
    let facts = DeviceFacts {
        device_type: &device_type,
        installed: &installed,
        now,
        signed_time_floor: Timestamp::UNIX_EPOCH,
    };
    verify_bundle(document, envelope, &facts)
        .map_err(|e| Error::Unprocessable(format!("the bundle was refused: {e}")))
}

fn version_key(version: &Version) -> String {
    let text = version.to_string();
    match text.split_once('+') {
        Some((key, _)) => key.to_string(),
        None => text,
    }
}

async fn insert(
    store: &Store,
    envelope: &Envelope,
    verified: &VerifiedManifest,
    payload_artifacts: &[Artifact],
    created_by: &str,
) -> Result<Bundle> {
    let manifest = verified.manifest();
    let key = version_key(&manifest.version);
    let clash: Option<(String, String)> = on_store!(store, pool => sqlx::query_as(
        "SELECT id, version FROM bundles WHERE (name = $1 AND version_key = $2) OR id = $3 LIMIT 1")
        .bind(manifest.name.as_str()).bind(&key).bind(&manifest.bundle_id)
        .fetch_optional(pool).await)?;
    let conflict = |existing: &str, version: &str| {
        Error::Conflict(format!(
            "bundle {} {} exists already (id {existing}); bundles never change, so give the new one another version",
            manifest.name, version
        ))
    };
    if let Some((id, version)) = clash {
        if id == manifest.bundle_id && version_key_text(&version) != key {
            return Err(Error::Conflict(format!(
                "a bundle with id {id} exists already; sign the manifest with a new bundle_id"
            )));
        }
        return Err(conflict(&id, &version));
    }
    let total_size: u64 = manifest.payloads.iter().map(|p| p.size).sum();
    let bundle = Bundle {
        id: manifest.bundle_id.clone(),
        name: manifest.name.to_string(),
        kind: manifest.kind.as_str().to_string(),
        version: manifest.version.to_string(),
        device_types: serde_json::to_string(&manifest.device_types)
            .map_err(|e| Error::Internal(e.to_string()))?,
        installer: manifest.installer.as_str().to_string(),
        envelope: envelope.to_json(),
        signer_keyid: verified.signer().to_string(),
        payload_count: i64::try_from(manifest.payloads.len()).unwrap_or(i64::MAX),
        total_size: i64::try_from(total_size).unwrap_or(i64::MAX),
        expires_at: manifest.expires_at.unix_millis(),
        created_by: created_by.to_string(),
        created_at: now_ms(),
    };
    let written = on_store!(store, pool => async {
        let mut tx = pool.begin().await?;
        sqlx::query(
            "INSERT INTO bundles (id, name, kind, version, version_key, device_types, installer,
               envelope, signer_keyid, payload_count, total_size, expires_at, created_by, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)")
            .bind(&bundle.id).bind(&bundle.name).bind(&bundle.kind).bind(&bundle.version)
            .bind(&key).bind(&bundle.device_types).bind(&bundle.installer).bind(&bundle.envelope)
            .bind(&bundle.signer_keyid).bind(bundle.payload_count).bind(bundle.total_size)
            .bind(bundle.expires_at).bind(&bundle.created_by).bind(bundle.created_at)
            .execute(&mut *tx).await?;
        for (position, (payload, artifact)) in manifest.payloads.iter().zip(payload_artifacts).enumerate() {
            sqlx::query(
                "INSERT INTO bundle_payloads (bundle_id, position, name, artifact_id, sha256, size)
                 VALUES ($1, $2, $3, $4, $5, $6)")
                .bind(&bundle.id).bind(i64::try_from(position).unwrap_or(i64::MAX))
                .bind(payload.name.as_str()).bind(&artifact.id).bind(payload.sha256.to_string())
                .bind(i64::try_from(payload.size).unwrap_or(i64::MAX))
                .execute(&mut *tx).await?;
        }
        tx.commit().await
    }.await);
    match written {
        Ok(()) => Ok(bundle),
        Err(e) if is_unique_violation(&e) => Err(conflict("just stored", &bundle.version)),
        Err(sqlx::Error::Database(db)) if db.is_foreign_key_violation() => Err(Error::Conflict(
            "an artifact of this bundle was deleted meanwhile; upload it again".into(),
        )),
        Err(e) => Err(e.into()),
    }
}

fn version_key_text(version: &str) -> String {
    version
        .split_once('+')
        .map_or(version, |(k, _)| k)
        .to_string()
}

const COLUMNS: &str = "id, name, kind, version, device_types, installer, envelope, signer_keyid,
    payload_count, total_size, expires_at, created_by, created_at";

/// One bundle.
pub async fn get(store: &Store, id: &str) -> Result<Bundle> {
    let sql = sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM bundles WHERE id = $1"));
    on_store!(store, pool => sqlx::query_as::<_, Bundle>(sql)
        .bind(id).fetch_optional(pool).await)?
    .ok_or_else(|| Error::NotFound(format!("no bundle {id}")))
}

/// One page of bundles, newest first, and the total.
pub async fn list(store: &Store, page: Page) -> Result<(Vec<Bundle>, i64)> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM bundles ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2"
    ));
    let items = on_store!(store, pool => sqlx::query_as::<_, Bundle>(sql)
        .bind(page.limit()).bind(page.offset()).fetch_all(pool).await)?;
    let total: i64 = on_store!(store, pool => sqlx::query_scalar("SELECT COUNT(*) FROM bundles")
        .fetch_one(pool).await)?;
    Ok((items, total))
}

/// A bundle's payloads in manifest order.
pub async fn payloads(store: &Store, id: &str) -> Result<Vec<PayloadView>> {
    Ok(on_store!(store, pool => sqlx::query_as::<_, PayloadView>(
        "SELECT name, size, sha256, artifact_id FROM bundle_payloads WHERE bundle_id = $1 ORDER BY position")
        .bind(id).fetch_all(pool).await)?)
}

/// A bundle with payloads, manifest and envelope.
pub async fn detail(store: &Store, id: &str) -> Result<BundleDetail> {
    let bundle = get(store, id).await?;
    let envelope = bundle.parsed_envelope()?;
    let manifest: serde_json::Value = serde_json::from_slice(envelope.payload())
        .map_err(|e| Error::Internal(format!("stored bundle {id}: {e}")))?;
    let envelope: serde_json::Value = serde_json::from_str(&bundle.envelope)
        .map_err(|e| Error::Internal(format!("stored bundle {id}: {e}")))?;
    Ok(BundleDetail {
        bundle: BundleView::from(&bundle),
        payloads: payloads(store, id).await?,
        manifest,
        envelope,
    })
}

/// Deletes a bundle (its payload list and offers go with it; the artifacts stay).
pub async fn delete(store: &Store, id: &str) -> Result<Bundle> {
    let bundle = get(store, id).await?;
    if let Some(rollout) = crate::rollouts::bundle_in_use(store, id).await? {
        return Err(Error::Conflict(format!(
            "rollout {rollout} uses bundle {id} and is not finished; abort it or let it finish first"
        )));
    }
    on_store!(store, pool => sqlx::query("DELETE FROM bundles WHERE id = $1")
        .bind(id).execute(pool).await.map(|r| r.rows_affected()))?;
    Ok(bundle)
}

/// Offers a bundle to a device, which may then download its payloads. The
/// rollout engine calls this with its rollout; tests call it directly.
pub async fn offer(
    store: &Store,
    device_id: &str,
    bundle_id: &str,
    rollout_id: Option<&str>,
) -> Result<()> {
    on_store!(store, pool => sqlx::query(
        "INSERT INTO device_offers (device_id, bundle_id, rollout_id, offered_at) VALUES ($1, $2, $3, $4)")
        .bind(device_id).bind(bundle_id).bind(rollout_id).bind(now_ms())
        .execute(pool).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// The size of the blob with this digest when a bundle offered to the device
/// names it as a payload; `None` otherwise (the device may not have it).
pub async fn offered_blob(
    store: &Store,
    device_id: &str,
    sha256: &drover_proto::Sha256,
) -> Result<Option<u64>> {
    let size: Option<i64> = on_store!(store, pool => sqlx::query_scalar(
        "SELECT p.size FROM device_offers o JOIN bundle_payloads p ON p.bundle_id = o.bundle_id
         WHERE o.device_id = $1 AND p.sha256 = $2 LIMIT 1")
        .bind(device_id).bind(sha256.to_string()).fetch_optional(pool).await)?;
    Ok(size.and_then(|s| u64::try_from(s).ok()))
}
