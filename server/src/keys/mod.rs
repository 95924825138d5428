//! The fleet's signing keys and trust document. The root key (ed25519) signs
//! the trust document that lists the signing keys and fleet CAs; agents pin
//! the root at enrollment. Both keys are created at first start (PKCS#8 PEM,
//! mode 0600, encrypted with `ca_passphrase` when one is set) so a new server
//! works with no setup.
//!
//! Private keys are read from their files at each use rather than kept in
//! memory: an admin command (`drover keys rotate`, `export-root`) changes
//! them while a server runs, and the running server must follow at once —
//! above all, a root key moved off the host must stop signing immediately.

mod trust;

use std::path::{Path, PathBuf};

use drover_proto::{KeyId, PublicKey, SigningKey, signing_key_from_pem, signing_key_to_pem};

use crate::error::{Error, Result};
use crate::secrets::write_private;

pub use trust::{
    Change, KeyView, active_signing_key, announce, current_document, current_trust, ensure_trust,
    list, publish, revoke, root_public, rotate,
};

/// The key files this server holds, under `DATA_DIR/keys`.
#[derive(Clone)]
pub struct Keyring {
    dir: PathBuf,
    passphrase: Option<String>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn key_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("{what}: {e}"))
}

impl Keyring {
    /// Opens `DATA_DIR/keys`, creating the root key and a first signing key on first start.
    pub fn load_or_create(data_dir: &Path, passphrase: Option<&str>) -> Result<Keyring> {
        let keyring = Keyring {
            dir: data_dir.join("keys"),
            passphrase: passphrase.map(str::to_string),
        };
        std::fs::create_dir_all(&keyring.dir)
            .map_err(|e| key_err(&format!("creating {}", keyring.dir.display()), e))?;
        let root_pub = keyring.dir.join("root.pub");
        if !keyring.root_path().exists() && !root_pub.exists() {
            let root = generate();
            keyring.write_key(&keyring.root_path(), &root)?;
        }
        // The public half beside it, so offline-root mode still knows the root.
        if let Some(root) = keyring.root_key()? {
            let pem = PublicKey::from(&root)
                .to_pem()
                .map_err(|e| key_err("encoding the root public key", e))?;
            if std::fs::read_to_string(&root_pub).ok().as_deref() != Some(pem.as_str()) {
                std::fs::write(&root_pub, pem)
                    .map_err(|e| key_err(&format!("writing {}", root_pub.display()), e))?;
            }
        }
        if keyring.held_ids()?.is_empty() {
            keyring.new_signing_key()?;
        }
        Ok(keyring)
    }

    /// Where the key files live.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn root_path(&self) -> PathBuf {
        self.dir.join("root.key")
    }

    /// The root key, or None in offline-root mode (it was exported).
    pub fn root_key(&self) -> Result<Option<SigningKey>> {
        self.read_key(&self.root_path())
    }

    /// The root public key as of the key files (the trust document is the authority once one exists).
    pub fn root_public_from_files(&self) -> Result<PublicKey> {
        if let Some(root) = self.root_key()? {
            return Ok(PublicKey::from(&root));
        }
        let path = self.dir.join("root.pub");
        let pem = std::fs::read_to_string(&path)
            .map_err(|e| key_err(&format!("reading {}", path.display()), e))?;
        PublicKey::from_pem(&pem).map_err(|e| key_err(&format!("{}", path.display()), e))
    }

    /// The private signing key with this id, if this server holds it.
    pub fn held_key(&self, keyid: &KeyId) -> Result<Option<SigningKey>> {
        if let Some(key) = self.read_key(&self.signing_path(keyid))? {
            return Ok(Some(key));
        }
        // The first server versions kept one key as signing.key.
        Ok(self
            .read_key(&self.dir.join("signing.key"))?
            .filter(|k| PublicKey::from(k).key_id() == *keyid))
    }

    /// Ids of every signing key this server holds.
    pub fn held_ids(&self) -> Result<Vec<KeyId>> {
        let mut ids = Vec::new();
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| key_err(&format!("reading {}", self.dir.display()), e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let signing_file =
                name == "signing.key" || (name.starts_with("signing-") && name.ends_with(".key"));
            if signing_file && let Some(key) = self.read_key(&entry.path())? {
                ids.push(PublicKey::from(&key).key_id());
            }
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// Creates and stores a new signing key.
    pub fn new_signing_key(&self) -> Result<SigningKey> {
        let key = generate();
        let id = PublicKey::from(&key).key_id();
        self.write_key(&self.signing_path(&id), &key)?;
        Ok(key)
    }

    /// Moves the root key to `out` and removes it from the data directory (offline-root mode).
    pub fn export_root(&self, out: &Path) -> Result<KeyId> {
        let root = self.root_key()?.ok_or_else(|| {
            Error::Conflict("the root key is not on this server (already exported)".into())
        })?;
        if out.exists() {
            return Err(Error::invalid(
                "--out",
                format!("{} exists; choose a new file", out.display()),
            ));
        }
        let pem = signing_key_to_pem(&root).map_err(|e| key_err("encoding the root key", e))?;
        write_private(out, pem.as_bytes())
            .map_err(|e| key_err(&format!("writing {}", out.display()), e))?;
        // Only once the copy reads back as the same key is the original removed.
        let copy = std::fs::read_to_string(out)
            .ok()
            .and_then(|p| signing_key_from_pem(&p).ok());
        if copy.map(|k| k.to_bytes()) != Some(root.to_bytes()) {
            return Err(Error::Internal(format!(
                "{} does not read back as the root key; the root stays on this server",
                out.display()
            )));
        }
        std::fs::remove_file(self.root_path()).map_err(|e| key_err("removing keys/root.key", e))?;
        Ok(PublicKey::from(&root).key_id())
    }

    fn signing_path(&self, keyid: &KeyId) -> PathBuf {
        self.dir.join(format!("signing-{keyid}.key"))
    }

    fn read_key(&self, path: &Path) -> Result<Option<SigningKey>> {
        let pem = match std::fs::read_to_string(path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(key_err(&format!("reading {}", path.display()), e)),
        };
        let pem = crate::secrets::unlock_key_pem(path, pem, self.passphrase.as_deref())?;
        signing_key_from_pem(&pem).map(Some).map_err(|e| {
            key_err(
                &format!("{} is not an ed25519 PKCS#8 key", path.display()),
                e,
            )
        })
    }

    fn write_key(&self, path: &Path, key: &SigningKey) -> Result<()> {
        let pem = signing_key_to_pem(key).map_err(|e| key_err("encoding a key", e))?;
        let pem = match &self.passphrase {
            Some(pass) => crate::secrets::encrypt_key_pem(&pem, pass)
                .map_err(|e| key_err("protecting a key", e))?,
            None => pem.to_string(),
        };
        write_private(path, pem.as_bytes())
            .map_err(|e| key_err(&format!("writing {}", path.display()), e))
    }
}

fn generate() -> SigningKey {
    SigningKey::from_bytes(&rand::random::<[u8; 32]>())
}

/// Signs a document file offline with one or more root keys (a root change
/// is signed by the old and the new root) and answers the envelope.
pub fn sign_offline(document: &[u8], root_keys: &[PathBuf]) -> Result<drover_proto::Envelope> {
    let doc = drover_proto::TrustDocument::from_json(document)
        .map_err(|e| Error::invalid("--document", e.to_string()))?;
    let mut keys = Vec::new();
    for path in root_keys {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| Error::invalid("--root-key", format!("{}: {e}", path.display())))?;
        let pem = if crate::secrets::is_encrypted_pem(&pem) {
            let pass = std::env::var("DROVER_ROOT_PASSPHRASE").map_err(|_| {
                Error::invalid(
                    "--root-key",
                    format!(
                        "{} is protected by a passphrase; set DROVER_ROOT_PASSPHRASE",
                        path.display()
                    ),
                )
            })?;
            crate::secrets::decrypt_key_pem(&pem, &pass)
                .map_err(|e| Error::invalid("--root-key", format!("{}: {e}", path.display())))?
        } else {
            pem
        };
        keys.push(signing_key_from_pem(&pem).map_err(|e| {
            Error::invalid(
                "--root-key",
                format!("{} is not an ed25519 key: {e}", path.display()),
            )
        })?);
    }
    let Some((first, rest)) = keys.split_first() else {
        return Err(Error::invalid(
            "--root-key",
            "at least one root key is needed",
        ));
    };
    if !keys
        .iter()
        .any(|k| PublicKey::from(k) == doc.root_public_key)
    {
        return Err(Error::invalid(
            "--root-key",
            "none of these keys is the root the document names in root_public_key",
        ));
    }
    let mut envelope = doc
        .sign(first)
        .map_err(|e| key_err("signing the trust document", e))?;
    for key in rest {
        envelope
            .add_signature(key)
            .map_err(|e| key_err("signing the trust document", e))?;
    }
    Ok(envelope)
}
