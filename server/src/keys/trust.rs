//! Trust documents: the stored sequence of root-signed documents, and the
//! changes to it — renewal at start, key rotation and revocation, and
//! documents signed offline by a root that no longer lives on the server.
//! Verification is proto's (`TrustStore`), the same code the agents run.

use drover_proto::{
    Envelope, KeyId, KeyStatus, PublicKey, SigningKey, SigningKeyEntry, Timestamp, TrustDocument,
    TrustStore,
};
use serde::Serialize;

use super::{Keyring, key_err};
use crate::error::{Error, Result};
use crate::on_store;
use crate::store::{Store, now_ms};

/// How long a trust document is valid.
const TRUST_VALIDITY_MS: i64 = 365 * 86_400_000;
/// Reissue the trust document at start when less than this is left.
const TRUST_RENEW_MARGIN_MS: i64 = 30 * 86_400_000;

/// A stored trust document.
#[derive(Debug, Clone, sqlx::FromRow)]
struct StoredTrust {
    version: i64,
    envelope: String,
}

/// The newest trust document envelope.
pub async fn current_trust(store: &Store) -> Result<Option<Envelope>> {
    Ok(current_document(store).await?.map(|(e, _)| e))
}

/// The newest trust document, as its envelope and its parsed content.
pub async fn current_document(store: &Store) -> Result<Option<(Envelope, TrustDocument)>> {
    let row = on_store!(store, pool => sqlx::query_as::<_, StoredTrust>(
        "SELECT version, envelope FROM trust_documents ORDER BY version DESC LIMIT 1")
        .fetch_optional(pool).await)?;
    let Some(row) = row else { return Ok(None) };
    let unreadable = |e: &dyn std::fmt::Display| {
        key_err(
            &format!("stored trust document {} is unreadable", row.version),
            e,
        )
    };
    let envelope = Envelope::from_json(row.envelope.as_bytes()).map_err(|e| unreadable(&e))?;
    let doc = TrustDocument::from_json(envelope.payload()).map_err(|e| unreadable(&e))?;
    Ok(Some((envelope, doc)))
}

/// The root agents pin: the one the newest trust document names.
pub async fn root_public(store: &Store, keys: &Keyring) -> Result<PublicKey> {
    match current_document(store).await? {
        Some((_, doc)) => Ok(doc.root_public_key),
        None => keys.root_public_from_files(),
    }
}

/// The key that signs new bundles: the active one in the trust document,
/// when this server holds it.
pub async fn active_signing_key(store: &Store, keys: &Keyring) -> Result<SigningKey> {
    let (_, doc) = current_document(store)
        .await?
        .ok_or_else(|| Error::Internal("no trust document".into()))?;
    let active = doc
        .signing_keys
        .iter()
        .find(|k| k.status == KeyStatus::Active)
        .ok_or_else(|| {
            Error::Conflict(
                "the trust document names no active signing key; sign bundles offline with \
                 `drover bundle sign`"
                    .into(),
            )
        })?;
    keys.held_key(&active.keyid)?.ok_or_else(|| {
        Error::Conflict(format!(
            "the active signing key {} is not on this server; sign bundles offline with \
             `drover bundle sign`",
            active.keyid
        ))
    })
}

/// A signing key as the API and CLI list it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct KeyView {
    /// Hex sha256 of the public key.
    pub keyid: String,
    /// `active`, `retired` or `revoked`.
    pub status: String,
    /// Bundle kinds it may sign (empty: all).
    pub kinds: Vec<String>,
    /// The ed25519 public key, base64.
    pub public_key: Option<String>,
    /// Whether this server holds its private key.
    pub held_here: bool,
}

/// Every key the current trust document names, revoked ones included.
pub async fn list(store: &Store, keys: &Keyring) -> Result<Vec<KeyView>> {
    let Some((_, doc)) = current_document(store).await? else {
        return Ok(Vec::new());
    };
    let held = keys.held_ids()?;
    let mut views: Vec<KeyView> = doc
        .signing_keys
        .iter()
        .map(|k| KeyView {
            keyid: k.keyid.to_string(),
            status: match k.status {
                KeyStatus::Active => "active",
                KeyStatus::Retired => "retired",
            }
            .into(),
            kinds: k
                .kinds
                .iter()
                .map(|kind| kind.as_str().to_string())
                .collect(),
            public_key: Some(k.public_key.to_base64()),
            held_here: held.contains(&k.keyid),
        })
        .collect();
    views.extend(doc.revoked_keyids.iter().map(|id| KeyView {
        keyid: id.to_string(),
        status: "revoked".into(),
        kinds: Vec::new(),
        public_key: None,
        held_here: held.contains(id),
    }));
    Ok(views)
}

/// The outcome of a trust change.
#[derive(Debug)]
pub enum Change {
    /// Signed with the root on this server and published.
    Published(Envelope),
    /// The root is offline: the document waits at `path` for `drover trust sign`.
    NeedsRootSignature {
        /// The unsigned document.
        document: Box<TrustDocument>,
        /// Where it was written.
        path: std::path::PathBuf,
    },
}

fn stamp(ms: i64) -> Result<Timestamp> {
    Timestamp::from_unix_millis(ms).map_err(|e| key_err("time", e))
}

/// The next version of `doc` with fresh times.
fn successor(doc: &TrustDocument) -> Result<TrustDocument> {
    let now = now_ms();
    Ok(TrustDocument {
        version: doc.version + 1,
        issued_at: stamp(now.max(doc.issued_at.unix_millis()))?,
        expires_at: stamp(now + TRUST_VALIDITY_MS)?,
        ..doc.clone()
    })
}

fn entry(key: &SigningKey) -> SigningKeyEntry {
    let public = PublicKey::from(key);
    SigningKeyEntry {
        keyid: public.key_id(),
        public_key: public,
        kinds: Vec::new(),
        status: KeyStatus::Active,
    }
}

/// Makes sure the newest trust document names the signing key this server
/// holds and the CA, and is not about to expire; with the root on this
/// server it signs a new version when needed. Answers the current envelope.
pub async fn ensure_trust(store: &Store, keys: &Keyring, ca_pem: &str) -> Result<Envelope> {
    let now = now_ms();
    let current = current_document(store).await?;
    let Some((envelope, doc)) = current else {
        let root = keys.root_key()?.ok_or_else(|| {
            Error::Internal(
                "there is no trust document and the root key is not on this server".into(),
            )
        })?;
        let held = keys.held_ids()?;
        let first = match held.first() {
            Some(id) => keys.held_key(id)?,
            None => None,
        };
        let signing = match first {
            Some(k) => k,
            None => keys.new_signing_key()?,
        };
        let doc = TrustDocument {
            schema: 1,
            version: 1,
            issued_at: stamp(now)?,
            expires_at: stamp(now + TRUST_VALIDITY_MS)?,
            root_public_key: PublicKey::from(&root),
            signing_keys: vec![entry(&signing)],
            revoked_keyids: Vec::new(),
            ca_certificates_pem: vec![ca_pem.to_string()],
        };
        return store_signed(store, &doc, &root).await;
    };
    let has_ca = doc
        .ca_certificates_pem
        .iter()
        .any(|c| c.trim() == ca_pem.trim());
    let renew = doc.expires_at.unix_millis() - now <= TRUST_RENEW_MARGIN_MS;
    if has_ca && !renew {
        return Ok(envelope);
    }
    let Some(root) = keys
        .root_key()?
        .filter(|r| PublicKey::from(r) == doc.root_public_key)
    else {
        tracing::warn!(
            version = doc.version,
            expires_at = %doc.expires_at,
            "the trust document needs renewing (expiry near or CA missing) and the root key is \
             offline: sign the next version with `drover trust sign` and POST it to /api/v1/trust"
        );
        return Ok(envelope);
    };
    let mut next = successor(&doc)?;
    if !has_ca {
        next.ca_certificates_pem.push(ca_pem.to_string());
    }
    store_signed(store, &next, &root).await
}

/// Adds a new signing key and retires the active one.
pub async fn rotate(store: &Store, keys: &Keyring) -> Result<(Change, KeyId)> {
    let (_, doc) = current_document(store)
        .await?
        .ok_or_else(|| Error::Internal("no trust document".into()))?;
    let key = keys.new_signing_key()?;
    let mut next = successor(&doc)?;
    for k in &mut next.signing_keys {
        k.status = KeyStatus::Retired;
    }
    next.signing_keys.push(entry(&key));
    let id = PublicKey::from(&key).key_id();
    Ok((change(store, keys, next).await?, id))
}

/// Revokes a signing key: agents that take the next document refuse
/// everything it signed. Revoking the active key rotates to a new one.
pub async fn revoke(store: &Store, keys: &Keyring, keyid: &str) -> Result<Change> {
    let id = KeyId::parse(keyid)
        .map_err(|e| Error::invalid("keyid", format!("{keyid:?} is not a key id: {e}")))?;
    let (_, doc) = current_document(store)
        .await?
        .ok_or_else(|| Error::Internal("no trust document".into()))?;
    if doc.revoked_keyids.contains(&id) {
        return Err(Error::Conflict(format!("key {id} is already revoked")));
    }
    let revoked = doc
        .signing_keys
        .iter()
        .find(|k| k.keyid == id)
        .ok_or_else(|| Error::NotFound(format!("the trust document names no key {id}")))?;
    let was_active = revoked.status == KeyStatus::Active;
    let mut next = successor(&doc)?;
    next.signing_keys.retain(|k| k.keyid != id);
    next.revoked_keyids.push(id);
    if was_active {
        next.signing_keys.push(entry(&keys.new_signing_key()?));
    }
    change(store, keys, next).await
}

/// Signs and publishes `next` with the root on this server, or leaves it for offline signing.
async fn change(store: &Store, keys: &Keyring, next: TrustDocument) -> Result<Change> {
    match keys
        .root_key()?
        .filter(|r| PublicKey::from(r) == next.root_public_key)
    {
        Some(root) => Ok(Change::Published(store_signed(store, &next, &root).await?)),
        None => {
            let path = keys.dir().join("trust-draft.json");
            std::fs::write(&path, next.to_json())
                .map_err(|e| key_err(&format!("writing {}", path.display()), e))?;
            Ok(Change::NeedsRootSignature {
                document: Box::new(next),
                path,
            })
        }
    }
}

async fn store_signed(store: &Store, doc: &TrustDocument, root: &SigningKey) -> Result<Envelope> {
    let envelope = doc
        .sign(root)
        .map_err(|e| key_err("signing the trust document", e))?;
    insert(store, doc.version, &envelope).await?;
    Ok(envelope)
}

async fn insert(store: &Store, version: u64, envelope: &Envelope) -> Result<()> {
    let version = i64::try_from(version).map_err(|_| Error::invalid("version", "too large"))?;
    let stored = on_store!(store, pool => sqlx::query(
        "INSERT INTO trust_documents (version, envelope, created_at) VALUES ($1, $2, $3)")
        .bind(version).bind(envelope.to_json()).bind(now_ms())
        .execute(pool).await.map(|r| r.rows_affected()));
    match stored {
        Ok(_) => Ok(()),
        Err(e) if crate::store::is_unique_violation(&e) => Err(Error::Conflict(format!(
            "trust document version {version} exists already; sign the next version"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Publishes a trust document signed elsewhere (offline root): it must pass
/// the checks every agent makes — signed by the current root (both roots for
/// a root change), a newer version, not expired.
pub async fn publish(store: &Store, envelope: &Envelope) -> Result<Envelope> {
    let (current, doc) = current_document(store)
        .await?
        .ok_or_else(|| Error::Internal("no trust document".into()))?;
    let held = TrustStore::restore(doc.root_public_key, &current)
        .map_err(|e| Error::Internal(format!("the stored trust document: {e}")))?;
    let now = stamp(now_ms())?;
    let accepted = held
        .accept_update(envelope, now)
        .map_err(|e| Error::invalid("envelope", e.to_string()))?;
    let next = accepted
        .current()
        .ok_or_else(|| Error::Internal("an accepted document went missing".into()))?;
    if next.document().version == doc.version {
        return Err(Error::Conflict(format!(
            "trust document version {} is already the current one",
            doc.version
        )));
    }
    insert(store, next.document().version, envelope).await?;
    Ok(envelope.clone())
}

/// How often the server looks for a new trust document (one published
/// through the API, the CLI or another replica).
const ANNOUNCE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Tells every accepted device (`refresh_trust`) whenever a newer trust
/// document appears; runs until the process ends.
pub async fn announce(store: Store, link: crate::mqtt::client::MqttLink) {
    let version = |d: Option<(Envelope, TrustDocument)>| d.map_or(0, |(_, doc)| doc.version);
    let mut seen = match current_document(&store).await {
        Ok(d) => version(d),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the trust document");
            0
        }
    };
    let mut tick = tokio::time::interval(ANNOUNCE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = match current_document(&store).await {
            Ok(d) => version(d),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the trust document");
                continue;
            }
        };
        if now <= seen {
            continue;
        }
        let devices = match crate::identity::devices::accepted_ids(&store).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list devices to announce the trust document");
                continue;
            }
        };
        for id in &devices {
            if let Err(e) = link
                .send_command(id, &drover_proto::Command::RefreshTrust)
                .await
            {
                tracing::warn!(device_id = %id, error = %e, "cannot announce the trust document");
            }
        }
        tracing::info!(
            version = now,
            devices = devices.len(),
            "announced a new trust document"
        );
        seen = now;
    }
}
