//! The fleet's signing keys and trust document. The root key (ed25519) signs
//! the trust document that lists the signing keys and fleet CAs; agents pin
//! the root at enrollment. Both keys are created at first start (PKCS#8 PEM,
//! mode 0600) so a new server works with no setup.

use std::path::{Path, PathBuf};

use drover_proto::{
    Envelope, KeyStatus, PublicKey, SigningKey, SigningKeyEntry, Timestamp, TrustDocument,
    signing_key_from_pem, signing_key_to_pem,
};

use crate::error::{Error, Result};
use crate::on_store;
use crate::secrets::write_private;
use crate::store::{Store, now_ms};

/// How long a trust document is valid.
const TRUST_VALIDITY_MS: i64 = 365 * 86_400_000;
/// Reissue the trust document at start when less than this is left.
const TRUST_RENEW_MARGIN_MS: i64 = 30 * 86_400_000;

/// The keys this server holds.
pub struct Keyring {
    root: Option<SigningKey>,
    root_public: PublicKey,
    signing: SigningKey,
    dir: PathBuf,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("root", &self.root_public.key_id().to_string())
            .field("online_root", &self.root.is_some())
            .finish_non_exhaustive()
    }
}

fn key_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("{what}: {e}"))
}

fn generate() -> SigningKey {
    SigningKey::from_bytes(&rand::random::<[u8; 32]>())
}

fn load_or_generate(path: &Path) -> Result<SigningKey> {
    match std::fs::read_to_string(path) {
        Ok(pem) => signing_key_from_pem(&pem).map_err(|e| {
            key_err(
                &format!("{} is not an ed25519 PKCS#8 key", path.display()),
                e,
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = generate();
            let pem = signing_key_to_pem(&key).map_err(|e| key_err("encoding a key", e))?;
            write_private(path, pem.as_bytes())
                .map_err(|e| key_err(&format!("writing {}", path.display()), e))?;
            Ok(key)
        }
        Err(e) => Err(key_err(&format!("reading {}", path.display()), e)),
    }
}

impl Keyring {
    /// Loads `keys/root.key` and `keys/signing.key` from the data directory, creating them on first start.
    pub fn load_or_create(data_dir: &Path) -> Result<Keyring> {
        let dir = data_dir.join("keys");
        let root = load_or_generate(&dir.join("root.key"))?;
        let signing = load_or_generate(&dir.join("signing.key"))?;
        Ok(Keyring {
            root_public: PublicKey::from(&root),
            root: Some(root),
            signing,
            dir,
        })
    }

    /// The root public key agents pin.
    pub fn root_public(&self) -> &PublicKey {
        &self.root_public
    }

    /// The active signing key.
    pub fn signing(&self) -> &SigningKey {
        &self.signing
    }

    /// Where the key files live.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Signs a trust document with the root key.
    pub fn sign_trust(&self, doc: &TrustDocument) -> Result<Envelope> {
        let root = self.root.as_ref().ok_or_else(|| {
            Error::Conflict(
                "the root key is offline; sign trust documents with `drover trust sign`".into(),
            )
        })?;
        doc.sign(root)
            .map_err(|e| key_err("signing the trust document", e))
    }
}

/// A stored trust document.
#[derive(Debug, Clone, sqlx::FromRow)]
struct StoredTrust {
    version: i64,
    envelope: String,
}

/// The newest trust document envelope.
pub async fn current_trust(store: &Store) -> Result<Option<Envelope>> {
    let row = on_store!(store, pool => sqlx::query_as::<_, StoredTrust>(
        "SELECT version, envelope FROM trust_documents ORDER BY version DESC LIMIT 1")
        .fetch_optional(pool).await)?;
    row.map(|r| {
        Envelope::from_json(r.envelope.as_bytes()).map_err(|e| {
            key_err(
                &format!("stored trust document {} is unreadable", r.version),
                e,
            )
        })
    })
    .transpose()
}

/// Makes sure the newest trust document names this root, the signing key and
/// the CA and is not about to expire; signs a new version when it does not.
pub async fn ensure_trust(store: &Store, keys: &Keyring, ca_pem: &str) -> Result<Envelope> {
    let now = now_ms();
    let current = current_trust(store).await?;
    let current_doc = current
        .as_ref()
        .map(|e| TrustDocument::from_json(e.payload()))
        .transpose()
        .map_err(|e| key_err("the stored trust document is unreadable", e))?;
    if let (Some(env), Some(doc)) = (&current, &current_doc) {
        let signing_id = PublicKey::from(keys.signing()).key_id();
        let fresh = doc.root_public_key == *keys.root_public()
            && doc
                .signing_key(&signing_id)
                .is_some_and(|k| k.status == KeyStatus::Active)
            && doc
                .ca_certificates_pem
                .iter()
                .any(|c| c.trim() == ca_pem.trim())
            && doc.expires_at.unix_millis() - now > TRUST_RENEW_MARGIN_MS;
        if fresh {
            return Ok(env.clone());
        }
    }
    let version = current_doc.as_ref().map_or(1, |d| d.version + 1);
    let signing_public = PublicKey::from(keys.signing());
    let mut signing_keys: Vec<SigningKeyEntry> = current_doc
        .as_ref()
        .map(|d| d.signing_keys.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|k| k.keyid != signing_public.key_id())
        .map(|mut k| {
            k.status = KeyStatus::Retired;
            k
        })
        .collect();
    signing_keys.push(SigningKeyEntry {
        keyid: signing_public.key_id(),
        public_key: signing_public,
        kinds: Vec::new(),
        status: KeyStatus::Active,
    });
    let mut cas: Vec<String> = current_doc
        .as_ref()
        .map(|d| d.ca_certificates_pem.clone())
        .unwrap_or_default();
    if !cas.iter().any(|c| c.trim() == ca_pem.trim()) {
        cas.push(ca_pem.to_string());
    }
    let stamp = |ms: i64| Timestamp::from_unix_millis(ms).map_err(|e| key_err("time", e));
    let doc = TrustDocument {
        schema: 1,
        version,
        issued_at: stamp(now)?,
        expires_at: stamp(now + TRUST_VALIDITY_MS)?,
        root_public_key: *keys.root_public(),
        signing_keys,
        revoked_keyids: current_doc.map(|d| d.revoked_keyids).unwrap_or_default(),
        ca_certificates_pem: cas,
    };
    let envelope = keys.sign_trust(&doc)?;
    let stored = on_store!(store, pool => sqlx::query(
        "INSERT INTO trust_documents (version, envelope, created_at) VALUES ($1, $2, $3)")
        .bind(i64::try_from(version).unwrap_or(i64::MAX)).bind(envelope.to_json()).bind(now)
        .execute(pool).await.map(|r| r.rows_affected()));
    match stored {
        Ok(_) => Ok(envelope),
        // Another replica stored this version first: use theirs.
        Err(e) if crate::store::is_unique_violation(&e) => current_trust(store)
            .await?
            .ok_or_else(|| Error::Internal("trust document vanished".into())),
        Err(e) => Err(e.into()),
    }
}
