//! Random secrets and their digests: session ids, API tokens, generated
//! passwords and key files. Secrets are stored only as SHA-256 digests.

use std::io::Write;
use std::path::Path;

use base64::Engine;
use sha2::{Digest, Sha256};

/// 32 random bytes as URL-safe base64 without padding.
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Random letters and digits, easy to type (for generated passwords).
pub fn random_text(len: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Hex SHA-256 of a secret, the only form in which secrets are stored.
pub fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Constant-time equality for secrets compared in memory.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads a secret file, or creates it with `make()` (mode 0600, written atomically) when absent.
pub fn load_or_create(path: &Path, make: impl FnOnce() -> Vec<u8>) -> std::io::Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => return Ok(bytes),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    let bytes = make();
    write_private(path, &bytes)?;
    Ok(bytes)
}

/// Writes a file readable only by its owner, through a temporary file and a rename.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("secret")
    ));
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// PEM label of a passphrase-protected PKCS#8 key.
const ENCRYPTED_LABEL: &str = "ENCRYPTED PRIVATE KEY";

/// True when a PEM holds a passphrase-protected key.
pub fn is_encrypted_pem(pem: &str) -> bool {
    pem.contains("BEGIN ENCRYPTED PRIVATE KEY")
}

/// Encrypts a PKCS#8 PEM key with a passphrase (PBES2: scrypt and AES-256-CBC).
pub fn encrypt_key_pem(pem: &str, passphrase: &str) -> Result<String, String> {
    use pkcs8::der::pem::LineEnding;
    let (_, doc) =
        pkcs8::SecretDocument::from_pem(pem).map_err(|e| format!("not a PKCS#8 key: {e}"))?;
    let info = pkcs8::PrivateKeyInfoRef::try_from(doc.as_bytes())
        .map_err(|e| format!("not a PKCS#8 key: {e}"))?;
    let encrypted = info
        .encrypt(passphrase)
        .map_err(|e| format!("encryption failed: {e}"))?;
    encrypted
        .to_pem(ENCRYPTED_LABEL, LineEnding::LF)
        .map(|p| p.to_string())
        .map_err(|e| format!("encoding failed: {e}"))
}

/// Decrypts a passphrase-protected PKCS#8 PEM key into a plain PKCS#8 PEM.
pub fn decrypt_key_pem(pem: &str, passphrase: &str) -> Result<String, String> {
    use pkcs8::der::pem::LineEnding;
    let (_, doc) =
        pkcs8::Document::from_pem(pem).map_err(|e| format!("not an encrypted PKCS#8 key: {e}"))?;
    let info = pkcs8::EncryptedPrivateKeyInfoRef::try_from(doc.as_bytes())
        .map_err(|e| format!("not an encrypted PKCS#8 key: {e}"))?;
    let plain = info
        .decrypt(passphrase)
        .map_err(|_| "the passphrase does not decrypt it".to_string())?;
    plain
        .to_pem("PRIVATE KEY", LineEnding::LF)
        .map(|p| p.to_string())
        .map_err(|e| format!("encoding failed: {e}"))
}

/// Decrypts a protected key file's PEM, or protects a plain one in place when
/// a passphrase is configured (`ca_passphrase` covers every key the server holds).
pub fn unlock_key_pem(
    path: &Path,
    pem: String,
    passphrase: Option<&str>,
) -> crate::error::Result<String> {
    use crate::error::Error;
    let name = path.display();
    match (is_encrypted_pem(&pem), passphrase) {
        (true, Some(pass)) => decrypt_key_pem(&pem, pass).map_err(|e| {
            Error::invalid(
                "ca_passphrase",
                format!(
                    "{name}: {e}; set DROVER_CA_PASSPHRASE to the passphrase it was protected with"
                ),
            )
        }),
        (true, None) => Err(Error::invalid(
            "ca_passphrase",
            format!("{name} is protected by a passphrase; set DROVER_CA_PASSPHRASE"),
        )),
        (false, Some(pass)) => {
            let locked = encrypt_key_pem(&pem, pass)
                .map_err(|e| Error::Internal(format!("protecting {name}: {e}")))?;
            write_private(path, locked.as_bytes())
                .map_err(|e| Error::Internal(format!("writing {name}: {e}")))?;
            Ok(pem)
        }
        (false, None) => Ok(pem),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_a_passphrase() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let pem = key.serialize_pem();
        let locked = encrypt_key_pem(&pem, "correct horse").expect("encrypt");
        assert!(is_encrypted_pem(&locked) && !is_encrypted_pem(&pem));
        assert!(decrypt_key_pem(&locked, "wrong horse").is_err());
        let unlocked = decrypt_key_pem(&locked, "correct horse").expect("decrypt");
        let again = rcgen::KeyPair::from_pem(&unlocked).expect("usable");
        assert_eq!(again.public_key_raw(), key.public_key_raw());
    }

    #[test]
    fn tokens_are_random_and_long() {
        let a = random_token();
        assert_eq!(a.len(), 43);
        assert_ne!(a, random_token());
    }

    #[test]
    fn secret_files_are_private_and_stable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k");
        let first = load_or_create(&path, || b"one".to_vec()).expect("create");
        let second = load_or_create(&path, || b"two".to_vec()).expect("read");
        assert_eq!(first, second);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
