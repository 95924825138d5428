//! The trust document (payloadType `application/vnd.drover.trust+json`, signed by the root key) and the
//! pure rules by which a device takes a new one. A `TrustedDocument` exists only after its root
//! signatures checked out; a `TrustStore` only ever moves to a newer version or a byte-identical copy.

use serde::{Deserialize, Serialize};

use crate::envelope::{Envelope, EnvelopeError, KeyId, PublicKey, SigningKey};
use crate::manifest::{Kind, probe_schema};
use crate::timestamp::Timestamp;

/// The DSSE payload type of a signed trust document.
pub const TRUST_PAYLOAD_TYPE: &str = "application/vnd.drover.trust+json";
/// The only trust document schema this crate reads and writes.
pub const TRUST_SCHEMA: u64 = 1;
/// Most signing keys one trust document may list.
pub const MAX_SIGNING_KEYS: usize = 64;
/// Most revoked key ids one trust document may list.
pub const MAX_REVOKED_KEYS: usize = 1024;
/// Most CA certificates one trust document may carry.
pub const MAX_CA_CERTIFICATES: usize = 16;

/// Why a trust document was not taken; each variant names the check that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    /// The envelope does not hold a trust document.
    #[error("trust check failed: the envelope carries `{0}`, not a trust document")]
    WrongPayloadType(String),
    /// No valid signature by the pinned root key.
    #[error("trust check failed: the document is not signed by the pinned root key {root}")]
    NotSignedByRoot {
        /// Key id of the pinned root.
        root: KeyId,
    },
    /// The document names a new root but is not also signed by it.
    #[error(
        "trust check failed: the document changes the root to {new_root} but is not signed by that new root as well"
    )]
    RootChangeNotCountersigned {
        /// Key id of the root the document names.
        new_root: KeyId,
    },
    /// The document uses a schema this crate does not read.
    #[error(
        "trust check failed: the document uses schema {0}; this version of Drover understands schema 1 only"
    )]
    UnsupportedSchema(String),
    /// The JSON or its contents are not a valid trust document.
    #[error("trust check failed: the document is malformed: {0}")]
    Malformed(String),
    /// The document is older than the one held.
    #[error("trust check failed: version {candidate} is older than the held version {current}")]
    OlderVersion {
        /// Version held now.
        current: u64,
        /// Version offered.
        candidate: u64,
    },
    /// Same version as the one held, different bytes.
    #[error(
        "trust check failed: version {version} differs from the held document of the same version; a change needs a new version"
    )]
    SameVersionDifferentContent {
        /// The version both claim.
        version: u64,
    },
    /// The document expired before the device's effective clock.
    #[error(
        "trust check failed: the document expired at {expires_at} and the device clock is {clock}"
    )]
    Expired {
        /// The document's `expires_at`.
        expires_at: Timestamp,
        /// The effective clock it was checked against.
        clock: Timestamp,
    },
    /// Signing the document failed.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
}

/// Whether a signing key signs new bundles or only still verifies what it signed before.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    /// Signs new bundles.
    Active,
    /// Replaced by rotation; bundles it signed still verify.
    Retired,
}

/// A bundle signing key listed in the trust document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningKeyEntry {
    /// Hex sha256 of `public_key`.
    pub keyid: KeyId,
    /// The ed25519 public key.
    pub public_key: PublicKey,
    /// Bundle kinds it may sign; empty means every kind.
    #[serde(default)]
    pub kinds: Vec<Kind>,
    /// Active or retired.
    pub status: KeyStatus,
}

impl SigningKeyEntry {
    /// True if this key may sign bundles of `kind`.
    pub fn allows(&self, kind: Kind) -> bool {
        self.kinds.is_empty() || self.kinds.contains(&kind)
    }
}

/// The trust document, schema 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustDocument {
    /// Always 1.
    pub schema: u64,
    /// Rises with every change; devices never go back.
    pub version: u64,
    /// When it was signed.
    pub issued_at: Timestamp,
    /// After this instant devices refuse it.
    pub expires_at: Timestamp,
    /// The root key devices pin from now on.
    pub root_public_key: PublicKey,
    /// Keys that sign bundles.
    pub signing_keys: Vec<SigningKeyEntry>,
    /// Keys whose signatures verify nothing.
    #[serde(default)]
    pub revoked_keyids: Vec<KeyId>,
    /// Fleet CA certificates (PEM) the agent trusts.
    #[serde(default)]
    pub ca_certificates_pem: Vec<String>,
}

impl TrustDocument {
    /// Parses and validates trust document JSON (the payload of a trust envelope).
    pub fn from_json(bytes: &[u8]) -> Result<TrustDocument, TrustError> {
        probe_schema(
            bytes,
            TRUST_SCHEMA,
            TrustError::Malformed,
            TrustError::UnsupportedSchema,
        )?;
        let document: TrustDocument =
            serde_json::from_slice(bytes).map_err(|e| TrustError::Malformed(e.to_string()))?;
        document.validate()?;
        Ok(document)
    }

    /// Checks the rules that span fields: schema, key ids, uniqueness, limits, time order.
    pub fn validate(&self) -> Result<(), TrustError> {
        let malformed = |s: &str| Err(TrustError::Malformed(s.to_owned()));
        if self.schema != TRUST_SCHEMA {
            return Err(TrustError::UnsupportedSchema(self.schema.to_string()));
        }
        if self.version == 0 {
            return malformed("version must be 1 or more");
        }
        if self.expires_at <= self.issued_at {
            return malformed("expires_at must be after issued_at");
        }
        if self.signing_keys.len() > MAX_SIGNING_KEYS
            || self.revoked_keyids.len() > MAX_REVOKED_KEYS
            || self.ca_certificates_pem.len() > MAX_CA_CERTIFICATES
        {
            return malformed("too many signing keys, revoked key ids or CA certificates");
        }
        for entry in &self.signing_keys {
            if entry.public_key.key_id() != entry.keyid {
                return Err(TrustError::Malformed(format!(
                    "signing key {} does not match its public_key (whose key id is {})",
                    entry.keyid,
                    entry.public_key.key_id()
                )));
            }
        }
        let mut ids: Vec<KeyId> = self.signing_keys.iter().map(|k| k.keyid).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|pair| pair[0] == pair[1]) {
            return malformed("a signing key is listed twice");
        }
        if !self
            .ca_certificates_pem
            .iter()
            .all(|pem| pem.trim_start().starts_with("-----BEGIN CERTIFICATE-----"))
        {
            return malformed("every ca_certificates_pem entry must be a PEM certificate");
        }
        Ok(())
    }

    /// The document as compact JSON, the bytes that get signed.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self)
            .expect("a trust document is strings, numbers and lists and always serializes")
    }

    /// Validates the document and signs it with `root`; a root change then adds the new root with
    /// `Envelope::add_signature`.
    pub fn sign(&self, root: &SigningKey) -> Result<Envelope, TrustError> {
        self.validate()?;
        Ok(Envelope::sign(TRUST_PAYLOAD_TYPE, self.to_json(), root)?)
    }

    /// True if `keyid` is revoked.
    pub fn is_revoked(&self, keyid: &KeyId) -> bool {
        self.revoked_keyids.contains(keyid)
    }

    /// The signing key with id `keyid`, if listed.
    pub fn signing_key(&self, keyid: &KeyId) -> Option<&SigningKeyEntry> {
        self.signing_keys.iter().find(|k| &k.keyid == keyid)
    }
}

/// A trust document whose root signatures have been checked, with the envelope it came in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedDocument {
    envelope: Envelope,
    document: TrustDocument,
}

impl TrustedDocument {
    /// The parsed document.
    pub fn document(&self) -> &TrustDocument {
        &self.document
    }

    /// The envelope as received, to store and to hand on.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// Checks payload type, the pinned root's signature, the document, and a root change's
    /// countersignature; nothing about versions or time.
    fn check(pinned_root: &PublicKey, envelope: &Envelope) -> Result<TrustedDocument, TrustError> {
        if envelope.payload_type() != TRUST_PAYLOAD_TYPE {
            return Err(TrustError::WrongPayloadType(
                envelope.payload_type().to_owned(),
            ));
        }
        if !envelope.is_signed_by(pinned_root) {
            return Err(TrustError::NotSignedByRoot {
                root: pinned_root.key_id(),
            });
        }
        let document = TrustDocument::from_json(envelope.payload())?;
        if document.root_public_key != *pinned_root
            && !envelope.is_signed_by(&document.root_public_key)
        {
            return Err(TrustError::RootChangeNotCountersigned {
                new_root: document.root_public_key.key_id(),
            });
        }
        Ok(TrustedDocument {
            envelope: envelope.clone(),
            document,
        })
    }
}

/// What a device trusts: the root key it has pinned and the trust document it holds, if any.
/// Invariant: when a document is held, the pinned root is the one that document names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustStore {
    root: PublicKey,
    current: Option<TrustedDocument>,
}

impl TrustStore {
    /// A store that has pinned `root` (from enrollment, or `--root-key`) and holds no document yet.
    pub fn new(root: PublicKey) -> TrustStore {
        TrustStore {
            root,
            current: None,
        }
    }

    /// Reloads a document accepted earlier (from the device's state directory): signatures are
    /// checked again, expiry is not, so a device that was off for long still refuses older versions.
    pub fn restore(root: PublicKey, envelope: &Envelope) -> Result<TrustStore, TrustError> {
        let trusted = TrustedDocument::check(&root, envelope)?;
        Ok(TrustStore {
            root: trusted.document.root_public_key,
            current: Some(trusted),
        })
    }

    /// The root key pinned now; persist it after a root change.
    pub fn root(&self) -> &PublicKey {
        &self.root
    }

    /// The trust document held now.
    pub fn current(&self) -> Option<&TrustedDocument> {
        self.current.as_ref()
    }

    /// Decides whether to take `candidate`, returning the new store or the check that failed.
    ///
    /// `now` is the device's effective clock: the later of its own clock and the newest signed time
    /// it has seen; the held document's `issued_at` is folded in here as well. Checks, in order:
    /// payload type, signature by the pinned root, document validity, a root change signed by both
    /// roots, version (newer, or the same version byte for byte), expiry.
    pub fn accept_update(
        &self,
        candidate: &Envelope,
        now: Timestamp,
    ) -> Result<TrustStore, TrustError> {
        let trusted = TrustedDocument::check(&self.root, candidate)?;
        let mut clock = now;
        if let Some(current) = &self.current {
            let (held, offered) = (current.document.version, trusted.document.version);
            if offered < held {
                return Err(TrustError::OlderVersion {
                    current: held,
                    candidate: offered,
                });
            }
            if offered == held {
                if current.envelope.payload() == candidate.payload() {
                    return Ok(self.clone());
                }
                return Err(TrustError::SameVersionDifferentContent { version: held });
            }
            clock = clock.max(current.document.issued_at);
        }
        if trusted.document.expires_at <= clock {
            return Err(TrustError::Expired {
                expires_at: trusted.document.expires_at,
                clock,
            });
        }
        Ok(TrustStore {
            root: trusted.document.root_public_key,
            current: Some(trusted),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn root() -> SigningKey {
        SigningKey::from_bytes(&[100; 32])
    }

    pub(crate) fn t(text: &str) -> Timestamp {
        Timestamp::parse(text).unwrap()
    }

    pub(crate) fn entry(key: &SigningKey, kinds: Vec<Kind>, status: KeyStatus) -> SigningKeyEntry {
        let public = PublicKey::from(key);
        SigningKeyEntry {
            keyid: public.key_id(),
            public_key: public,
            kinds,
            status,
        }
    }

    /// A valid version-`version` document naming `root()` with one active all-kinds key.
    pub(crate) fn document(version: u64) -> TrustDocument {
        TrustDocument {
            schema: 1,
            version,
            issued_at: t("2024-10-01T00:00:00Z"),
            expires_at: t("2026-10-01T00:00:00Z"),
            root_public_key: PublicKey::from(&root()),
            signing_keys: vec![entry(
                &SigningKey::from_bytes(&[1; 32]),
                vec![],
                KeyStatus::Active,
            )],
            revoked_keyids: vec![],
            ca_certificates_pem: vec![
                "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
            ],
        }
    }

    fn now() -> Timestamp {
        t("2024-11-22T00:00:00Z")
    }

    fn store_at(version: u64) -> TrustStore {
        TrustStore::new(PublicKey::from(&root()))
            .accept_update(&document(version).sign(&root()).unwrap(), now())
            .unwrap()
    }

    #[test]
    fn first_document_signed_by_the_pinned_root_is_accepted() {
        let store = store_at(1);
        assert_eq!(store.current().unwrap().document(), &document(1));
        assert_eq!(store.root(), &PublicKey::from(&root()));
    }

    #[test]
    fn newer_version_is_accepted() {
        let store = store_at(1)
            .accept_update(&document(2).sign(&root()).unwrap(), now())
            .unwrap();
        assert_eq!(store.current().unwrap().document().version, 2);
    }

    #[test]
    fn document_signed_by_a_non_root_key_is_refused() {
        let other = SigningKey::from_bytes(&[1; 32]);
        let err = store_at(1)
            .accept_update(&document(2).sign(&other).unwrap(), now())
            .unwrap_err();
        assert_eq!(
            err,
            TrustError::NotSignedByRoot {
                root: PublicKey::from(&root()).key_id()
            }
        );
        assert!(
            err.to_string().starts_with(
                "trust check failed: the document is not signed by the pinned root key"
            )
        );
    }

    #[test]
    fn older_version_replay_is_refused() {
        let old = document(1).sign(&root()).unwrap();
        let store = store_at(1)
            .accept_update(&document(3).sign(&root()).unwrap(), now())
            .unwrap();
        assert_eq!(
            store.accept_update(&old, now()),
            Err(TrustError::OlderVersion {
                current: 3,
                candidate: 1
            })
        );
    }

    #[test]
    fn same_version_is_accepted_only_byte_for_byte() {
        let store = store_at(2);
        // Re-signing the identical bytes (another signature, same payload) changes nothing.
        let mut resigned = document(2).sign(&root()).unwrap();
        resigned
            .add_signature(&SigningKey::from_bytes(&[5; 32]))
            .unwrap();
        assert_eq!(store.accept_update(&resigned, now()).unwrap(), store);
        let mut changed = document(2);
        changed
            .revoked_keyids
            .push(PublicKey::from(&SigningKey::from_bytes(&[1; 32])).key_id());
        assert_eq!(
            store.accept_update(&changed.sign(&root()).unwrap(), now()),
            Err(TrustError::SameVersionDifferentContent { version: 2 })
        );
    }

    #[test]
    fn expired_document_is_refused() {
        let mut doc = document(1);
        doc.expires_at = t("2024-11-01T00:00:00Z");
        let err = TrustStore::new(PublicKey::from(&root()))
            .accept_update(&doc.sign(&root()).unwrap(), now())
            .unwrap_err();
        assert!(matches!(err, TrustError::Expired { .. }), "{err}");
    }

    #[test]
    fn held_issued_at_is_a_floor_for_the_clock() {
        let mut newer = document(2);
        newer.issued_at = t("2024-12-01T00:00:00Z");
        newer.expires_at = t("2025-01-01T00:00:00Z");
        let store = store_at(1)
            .accept_update(&newer.sign(&root()).unwrap(), now())
            .unwrap();
        // The device clock fell back to 1970, but it has seen a document issued in December 2024.
        let mut next = document(3);
        next.issued_at = t("2024-06-01T00:00:00Z");
        next.expires_at = t("2024-12-15T00:00:00Z");
        assert!(
            store
                .accept_update(&next.sign(&root()).unwrap(), Timestamp::UNIX_EPOCH)
                .is_ok()
        );
        next.expires_at = t("2024-11-15T00:00:00Z");
        assert!(matches!(
            store.accept_update(&next.sign(&root()).unwrap(), Timestamp::UNIX_EPOCH),
            Err(TrustError::Expired { .. })
        ));
    }

    #[test]
    fn root_change_needs_both_signatures() {
        let new_root = SigningKey::from_bytes(&[101; 32]);
        let mut doc = document(2);
        doc.root_public_key = PublicKey::from(&new_root);
        let only_old = doc.sign(&root()).unwrap();
        assert_eq!(
            store_at(1).accept_update(&only_old, now()),
            Err(TrustError::RootChangeNotCountersigned {
                new_root: PublicKey::from(&new_root).key_id()
            })
        );
        let only_new = doc.sign(&new_root).unwrap();
        assert!(matches!(
            store_at(1).accept_update(&only_new, now()),
            Err(TrustError::NotSignedByRoot { .. })
        ));
        let mut both = doc.sign(&root()).unwrap();
        both.add_signature(&new_root).unwrap();
        let store = store_at(1).accept_update(&both, now()).unwrap();
        assert_eq!(store.root(), &PublicKey::from(&new_root));
        // From now on the old root alone is no longer enough, and the new one is.
        let mut next = document(3);
        next.root_public_key = PublicKey::from(&new_root);
        assert!(matches!(
            store.accept_update(&document(3).sign(&root()).unwrap(), now()),
            Err(TrustError::NotSignedByRoot { .. })
        ));
        assert!(
            store
                .accept_update(&next.sign(&new_root).unwrap(), now())
                .is_ok()
        );
    }

    #[test]
    fn restore_rechecks_signatures_but_not_expiry() {
        let mut doc = document(4);
        doc.expires_at = t("2024-11-01T00:00:00Z");
        let envelope = doc.sign(&root()).unwrap();
        let store = TrustStore::restore(PublicKey::from(&root()), &envelope).unwrap();
        assert!(matches!(
            store.accept_update(&document(3).sign(&root()).unwrap(), now()),
            Err(TrustError::OlderVersion { .. })
        ));
        let stranger = SigningKey::from_bytes(&[7; 32]);
        assert!(matches!(
            TrustStore::restore(PublicKey::from(&stranger), &envelope),
            Err(TrustError::NotSignedByRoot { .. })
        ));
    }

    #[test]
    fn wrong_payload_type_is_refused() {
        let envelope = Envelope::sign("application/json", document(1).to_json(), &root()).unwrap();
        assert!(matches!(
            store_at(1).accept_update(&envelope, now()),
            Err(TrustError::WrongPayloadType(_))
        ));
    }

    #[test]
    fn malformed_documents_are_refused() {
        let sign_raw = |json: &str| {
            Envelope::sign(TRUST_PAYLOAD_TYPE, json.as_bytes().to_vec(), &root()).unwrap()
        };
        let store = TrustStore::new(PublicKey::from(&root()));
        assert!(matches!(
            store.accept_update(&sign_raw("{not json"), now()),
            Err(TrustError::Malformed(_))
        ));
        let mut value: serde_json::Value = serde_json::from_slice(&document(1).to_json()).unwrap();
        value["extra"] = 1.into();
        assert!(matches!(
            store.accept_update(&sign_raw(&value.to_string()), now()),
            Err(TrustError::Malformed(_))
        ));
        value["schema"] = 2.into();
        assert_eq!(
            store.accept_update(&sign_raw(&value.to_string()), now()),
            Err(TrustError::UnsupportedSchema("2".into()))
        );
        let mut mismatched = document(1);
        mismatched.signing_keys[0].keyid = PublicKey::from(&root()).key_id();
        assert!(matches!(
            mismatched.validate(),
            Err(TrustError::Malformed(_))
        ));
        let mut twice = document(1);
        twice.signing_keys.push(twice.signing_keys[0].clone());
        assert!(matches!(twice.validate(), Err(TrustError::Malformed(_))));
        let mut not_pem = document(1);
        not_pem.ca_certificates_pem = vec!["hello".into()];
        assert!(matches!(not_pem.validate(), Err(TrustError::Malformed(_))));
    }

    #[test]
    fn wire_form_matches_the_contract() {
        let value: serde_json::Value = serde_json::from_slice(&document(1).to_json()).unwrap();
        let key = &value["signing_keys"][0];
        assert_eq!(key["status"], "active");
        assert_eq!(key["kinds"], serde_json::json!([]));
        assert_eq!(key["keyid"].as_str().unwrap().len(), 64);
        assert_eq!(
            value["root_public_key"],
            PublicKey::from(&root()).to_base64()
        );
        assert_eq!(value["issued_at"], "2024-10-01T00:00:00Z");
        assert_eq!(
            TrustDocument::from_json(value.to_string().as_bytes()).unwrap(),
            document(1)
        );
    }
}
