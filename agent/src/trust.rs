//! The trust document on the device. A new one — from a bundle file's `trust.json` or from
//! `GET /device/v1/trust` after a `refresh_trust` command — is taken only through proto's
//! `TrustStore::accept_update`, against the device clock floored by the newest signed time seen.
//! It is written to `trust.json` atomically before `enrollment.json` moves the pinned root after a
//! root change, so a power cut between the two leaves a document the old pin still verifies.

use drover_proto::{Envelope, Timestamp, TrustError, TrustStore};

use crate::atomic_write::{PUBLIC, write_atomic};
use crate::device_api::DeviceApi;
use crate::error::{Error, Result};
use crate::state::{ENROLLMENT_FILE, Enrollment, StateDir, TRUST_FILE};

/// What taking a trust document changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Taken {
    /// The document is the one held (byte for byte); nothing was written.
    Unchanged {
        /// The held version.
        version: u64,
    },
    /// A newer document replaced the held one.
    Updated {
        /// The version held before, if any.
        from: Option<u64>,
        /// The version held now.
        to: u64,
        /// Whether the pinned root moved (a document signed by both roots).
        root_changed: bool,
    },
}

/// Decides whether `candidate` replaces what `held` holds, with proto's rules; `clock` is the
/// device's effective clock. Returns the store to keep and what changed.
pub fn decide(
    held: &TrustStore,
    candidate: &Envelope,
    clock: Timestamp,
) -> Result<(TrustStore, Taken), TrustError> {
    let next = held.accept_update(candidate, clock)?;
    let version = |store: &TrustStore| store.current().map(|t| t.document().version);
    let to = version(&next).expect("a store that accepted a document holds it");
    let taken = if next == *held {
        Taken::Unchanged { version: to }
    } else {
        Taken::Updated {
            from: version(held),
            to,
            root_changed: next.root() != held.root(),
        }
    };
    Ok((next, taken))
}

/// Writes `next` over `held` in the state directory, if they differ: `trust.json` first, then
/// `enrollment.json` with the new root when the root changed.
pub fn persist(
    state: &StateDir,
    enrollment: &Enrollment,
    held: &TrustStore,
    next: &TrustStore,
) -> Result<()> {
    if next == held {
        return Ok(());
    }
    let Some(document) = next.current() else {
        return Ok(());
    };
    let path = state.file(TRUST_FILE);
    write_atomic(&path, document.envelope().to_json().as_bytes(), PUBLIC)
        .map_err(|e| Error::io("write", &path, e))?;
    if next.root() != &enrollment.root_public_key {
        let mut moved = enrollment.clone();
        moved.root_public_key = *next.root();
        let path = state.file(ENROLLMENT_FILE);
        let record = serde_json::to_vec_pretty(&moved)
            .expect("enrollment.json is strings and always serializes");
        write_atomic(&path, &record, PUBLIC).map_err(|e| Error::io("write", &path, e))?;
    }
    Ok(())
}

/// Takes `candidate` into the enrolled device in `state` if proto's rules allow, and persists it.
pub fn take(state: &StateDir, candidate: &Envelope, now: Timestamp) -> Result<Taken> {
    let (enrollment, held) = state.trust_store()?;
    let clock = state.installed()?.clock(now);
    let (next, taken) = decide(&held, candidate, clock)?;
    persist(state, &enrollment, &held, &next)?;
    Ok(taken)
}

/// Fetches `GET /device/v1/trust` with the device's current certificate and takes the answer.
pub async fn refresh(state: &StateDir, now: impl Fn() -> Timestamp) -> Result<Taken> {
    let api = DeviceApi::for_device(state)?;
    let envelope = api.trust().await?;
    let state = state.clone();
    let now = now();
    tokio::task::spawn_blocking(move || take(&state, &envelope, now))
        .await
        .map_err(|e| Error::Runtime(format!("the trust update task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::{enrolled_dir, root_key};
    use crate::state::{Installed, TRUST_FILE};
    use drover_proto::{PublicKey, SigningKey, TrustDocument};

    fn t(text: &str) -> Timestamp {
        Timestamp::parse(text).unwrap()
    }

    /// Version `version` of the fixture's trust document (version 1 is what `enrolled_dir` holds).
    fn document(version: u64) -> TrustDocument {
        TrustDocument {
            schema: 1,
            version,
            issued_at: t("2024-01-01T00:00:00Z"),
            expires_at: t("2124-01-01T00:00:00Z"),
            root_public_key: PublicKey::from(&root_key()),
            signing_keys: vec![],
            revoked_keyids: vec![],
            ca_certificates_pem: vec![],
        }
    }

    fn now() -> Timestamp {
        t("2025-06-01T00:00:00Z")
    }

    fn held_json(state: &StateDir) -> String {
        std::fs::read_to_string(state.file(TRUST_FILE)).unwrap()
    }

    #[test]
    fn a_newer_document_signed_by_the_root_is_taken_and_written() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _) = enrolled_dir(dir.path());
        let v2 = document(2).sign(&root_key()).unwrap();
        let taken = take(&state, &v2, now()).unwrap();
        assert_eq!(
            taken,
            Taken::Updated {
                from: Some(1),
                to: 2,
                root_changed: false
            }
        );
        assert_eq!(held_json(&state), v2.to_json());
        // The same bytes again change nothing.
        assert_eq!(
            take(&state, &v2, now()).unwrap(),
            Taken::Unchanged { version: 2 }
        );
    }

    #[test]
    fn refused_documents_leave_trust_json_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _) = enrolled_dir(dir.path());
        take(&state, &document(3).sign(&root_key()).unwrap(), now()).unwrap();
        let before = held_json(&state);
        let stranger = SigningKey::from_bytes(&[77; 32]);
        let mut changed = document(3);
        changed.expires_at = t("2123-01-01T00:00:00Z");
        let mut expired = document(4);
        expired.expires_at = t("2025-01-01T00:00:00Z");
        let cases = [
            (
                document(4).sign(&stranger).unwrap(),
                "not signed by the pinned root",
            ),
            (
                document(2).sign(&root_key()).unwrap(),
                "older than the held version 3",
            ),
            (
                changed.sign(&root_key()).unwrap(),
                "differs from the held document",
            ),
            (expired.sign(&root_key()).unwrap(), "expired"),
        ];
        for (candidate, words) in cases {
            let err = take(&state, &candidate, now()).unwrap_err().to_string();
            assert!(err.starts_with("trust check failed"), "{err}");
            assert!(err.contains(words), "{err}");
            assert_eq!(held_json(&state), before);
        }
    }

    #[test]
    fn the_signed_time_floor_holds_back_a_clock_set_back() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _) = enrolled_dir(dir.path());
        state
            .write_installed(&Installed {
                signed_time_floor: t("2026-01-01T00:00:00Z"),
                bundles: vec![],
                kept: vec![],
            })
            .unwrap();
        let mut stale = document(2);
        stale.expires_at = t("2025-12-01T00:00:00Z");
        // The device clock says 2025-06, but it has seen a signature from 2026.
        let err = take(&state, &stale.sign(&root_key()).unwrap(), now()).unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
    }

    #[test]
    fn a_root_change_signed_by_both_roots_moves_the_pin() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _) = enrolled_dir(dir.path());
        let new_root = SigningKey::from_bytes(&[43; 32]);
        let mut doc = document(2);
        doc.root_public_key = PublicKey::from(&new_root);
        let only_old = doc.sign(&root_key()).unwrap();
        assert!(take(&state, &only_old, now()).is_err());
        let mut both = doc.sign(&root_key()).unwrap();
        both.add_signature(&new_root).unwrap();
        let taken = take(&state, &both, now()).unwrap();
        assert!(matches!(
            taken,
            Taken::Updated {
                root_changed: true,
                ..
            }
        ));
        let enrollment = state.require_enrollment().unwrap();
        assert_eq!(enrollment.root_public_key, PublicKey::from(&new_root));
        // The state still loads, and from now on the new root alone signs.
        state.load().unwrap();
        let mut next = document(3);
        next.root_public_key = PublicKey::from(&new_root);
        take(&state, &next.sign(&new_root).unwrap(), now()).unwrap();
        assert!(take(&state, &document(4).sign(&root_key()).unwrap(), now()).is_err());
    }
}
