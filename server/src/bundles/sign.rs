//! Offline signing, `drover bundle sign --key FILE --manifest FILE`: for
//! fleets that keep signing keys away from the server. It validates the
//! manifest with the same rules devices apply and prints the DSSE envelope
//! that `POST /api/v1/bundles {"envelope": …}` accepts.

use std::io::{BufRead, IsTerminal};
use std::path::Path;

use drover_proto::{Manifest, SigningKey, signing_key_from_pem};

use crate::error::{Error, Result};
use crate::secrets;

/// Reads the key (PKCS#8 PEM, optionally passphrase-protected) and the
/// manifest, and prints the envelope JSON on standard output.
pub fn run(key_path: &Path, manifest_path: &Path, passphrase_stdin: bool) -> Result<()> {
    let key_pem = std::fs::read_to_string(key_path)
        .map_err(|e| Error::invalid("key", format!("cannot read {}: {e}", key_path.display())))?;
    let manifest = std::fs::read(manifest_path).map_err(|e| {
        Error::invalid(
            "manifest",
            format!("cannot read {}: {e}", manifest_path.display()),
        )
    })?;
    let passphrase = if secrets::is_encrypted_pem(&key_pem) {
        Some(read_passphrase(passphrase_stdin)?)
    } else {
        None
    };
    println!("{}", sign(&key_pem, passphrase.as_deref(), &manifest)?);
    Ok(())
}

/// Signs manifest JSON with a PEM key; answers the envelope JSON.
pub fn sign(key_pem: &str, passphrase: Option<&str>, manifest_json: &[u8]) -> Result<String> {
    let key = load_key(key_pem, passphrase)?;
    let manifest = Manifest::from_json(manifest_json)
        .map_err(|e| Error::invalid("manifest", e.to_string()))?;
    let envelope = manifest
        .sign(&key)
        .map_err(|e| Error::invalid("manifest", e.to_string()))?;
    Ok(envelope.to_json())
}

fn load_key(pem: &str, passphrase: Option<&str>) -> Result<SigningKey> {
    let plain;
    let pem = if secrets::is_encrypted_pem(pem) {
        let passphrase = passphrase
            .ok_or_else(|| Error::invalid("key", "is passphrase-protected; give the passphrase"))?;
        plain = secrets::decrypt_key_pem(pem, passphrase).map_err(|e| Error::invalid("key", e))?;
        plain.as_str()
    } else {
        pem
    };
    signing_key_from_pem(pem)
        .map_err(|e| Error::invalid("key", format!("is not an ed25519 PKCS#8 PEM key: {e}")))
}

/// The passphrase of an encrypted key: the first line of standard input, or a prompt.
fn read_passphrase(from_stdin: bool) -> Result<String> {
    if from_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| Error::invalid("passphrase-stdin", format!("cannot read it: {e}")))?;
        let passphrase = line.trim_end_matches(['\n', '\r']).to_string();
        if passphrase.is_empty() {
            return Err(Error::invalid(
                "key",
                "is passphrase-protected; pipe the passphrase on standard input (--passphrase-stdin)",
            ));
        }
        return Ok(passphrase);
    }
    rpassword::prompt_password("Passphrase of the signing key: ")
        .map_err(|e| Error::invalid("key", format!("cannot read the passphrase: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_proto::{Envelope, PublicKey, signing_key_to_pem};

    fn manifest() -> Vec<u8> {
        serde_json::json!({
            "schema": 1, "bundle_id": "b1", "name": "detector", "kind": "model",
            "version": "1.0.0", "device_types": ["rpi4"], "installer": "files",
            "created_at": "2030-01-01T00:00:00Z", "expires_at": "2031-01-01T00:00:00Z",
            "payloads": [{"name": "m.onnx", "size": 3, "type": "file",
              "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}]
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn signs_with_plain_and_encrypted_keys() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let pem = signing_key_to_pem(&key).expect("pem").to_string();
        let env = Envelope::from_json(sign(&pem, None, &manifest()).expect("sign").as_bytes())
            .expect("envelope");
        assert!(env.is_signed_by(&PublicKey::from(&key)));
        let locked = secrets::encrypt_key_pem(&pem, "a long passphrase").expect("encrypt");
        assert!(sign(&locked, None, &manifest()).is_err());
        assert!(sign(&locked, Some("wrong passphrase"), &manifest()).is_err());
        let env = sign(&locked, Some("a long passphrase"), &manifest()).expect("sign");
        assert!(
            Envelope::from_json(env.as_bytes())
                .expect("envelope")
                .is_signed_by(&PublicKey::from(&key))
        );
    }

    #[test]
    fn an_invalid_manifest_names_the_problem() {
        let pem = signing_key_to_pem(&SigningKey::from_bytes(&[7; 32]))
            .expect("pem")
            .to_string();
        let mut m: serde_json::Value = serde_json::from_slice(&manifest()).expect("json");
        m["device_types"] = serde_json::json!([]);
        let e = sign(&pem, None, m.to_string().as_bytes())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("manifest:") && e.contains("device_types"),
            "{e}"
        );
    }
}
