//! DSSE envelopes, the signed wrapper around every manifest and trust document, and the ed25519 keys
//! that sign them. A signature is ed25519 (`verify_strict`) over DSSE v1's PAE of the payload type and
//! the decoded payload bytes; parsing bounds every size before any byte is trusted.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer as _, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Digest as _;

pub use ed25519_dalek::SigningKey;
pub use ed25519_dalek::pkcs8::spki::der::zeroize::Zeroizing;

/// Largest envelope JSON `Envelope::from_json` reads.
pub const MAX_ENVELOPE_BYTES: usize = 4 * 1024 * 1024;
/// Largest decoded payload an envelope may carry (its base64 then fits within `MAX_ENVELOPE_BYTES`).
pub const MAX_PAYLOAD_BYTES: usize = 2 * 1024 * 1024;
/// Most signatures one envelope may carry.
pub const MAX_SIGNATURES: usize = 8;
/// Longest payload type accepted.
pub const MAX_PAYLOAD_TYPE_BYTES: usize = 256;
/// Longest `keyid` hint accepted on a signature.
pub const MAX_KEYID_BYTES: usize = 256;

const PUBLIC_KEY_BYTES: usize = 32;
const SIGNATURE_BYTES: usize = 64;

/// Why an envelope or key could not be read, made or verified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The envelope JSON is larger than `MAX_ENVELOPE_BYTES`.
    #[error("envelope is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Size of the input.
        size: usize,
        /// The limit it exceeded.
        limit: usize,
    },
    /// The decoded payload is larger than `MAX_PAYLOAD_BYTES`.
    #[error("envelope payload is {size} bytes, over the {limit}-byte limit")]
    PayloadTooLarge {
        /// Size of the payload.
        size: usize,
        /// The limit it exceeded.
        limit: usize,
    },
    /// More than `MAX_SIGNATURES` signatures.
    #[error("envelope carries {count} signatures, more than the {limit} allowed")]
    TooManySignatures {
        /// Number of signatures present.
        count: usize,
        /// The limit it exceeded.
        limit: usize,
    },
    /// The `signatures` list is empty.
    #[error("envelope carries no signature")]
    NoSignatures,
    /// `payloadType` is empty or longer than `MAX_PAYLOAD_TYPE_BYTES`.
    #[error("envelope payloadType must be 1 to {MAX_PAYLOAD_TYPE_BYTES} bytes long")]
    BadPayloadType,
    /// A signature's `keyid` is longer than `MAX_KEYID_BYTES`.
    #[error("a signature's keyid is longer than {MAX_KEYID_BYTES} bytes")]
    KeyIdTooLong,
    /// A base64 field does not decode.
    #[error("envelope field `{0}` is not valid base64")]
    Base64(&'static str),
    /// The JSON does not have the envelope's shape.
    #[error("envelope is not valid DSSE JSON: {0}")]
    Json(String),
    /// The envelope holds a different kind of document than the caller expects.
    #[error("envelope carries payloadType `{found}`, expected `{expected}`")]
    WrongPayloadType {
        /// The payload type the caller wanted.
        expected: String,
        /// The payload type the envelope carries.
        found: String,
    },
    /// No signature verifies with any of the accepted keys.
    #[error("no signature on the envelope verifies with an accepted key")]
    NoValidSignature,
    /// A public key is not a usable ed25519 key.
    #[error("public key is not valid: {0}")]
    BadPublicKey(String),
    /// A key id is not 64 hex digits.
    #[error("key id `{0}` is not 64 hex digits (the sha256 of a public key)")]
    BadKeyId(String),
    /// A PEM key file could not be read or written.
    #[error("key is not a PKCS#8 PEM ed25519 key: {0}")]
    BadPem(String),
}

/// An ed25519 public key; its text form is standard base64 of the raw 32 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// The key from its raw 32 bytes; weak (small-order) keys are refused.
    pub fn from_bytes(bytes: &[u8; PUBLIC_KEY_BYTES]) -> Result<PublicKey, EnvelopeError> {
        let key = VerifyingKey::from_bytes(bytes)
            .map_err(|_| EnvelopeError::BadPublicKey("not a point on the curve".into()))?;
        if key.is_weak() {
            return Err(EnvelopeError::BadPublicKey(
                "a weak (small-order) key".into(),
            ));
        }
        Ok(PublicKey(key))
    }

    /// The key from standard base64 of its raw 32 bytes.
    pub fn from_base64(text: &str) -> Result<PublicKey, EnvelopeError> {
        let bytes = STANDARD
            .decode(text)
            .map_err(|_| EnvelopeError::BadPublicKey("not standard base64".into()))?;
        let bytes: [u8; PUBLIC_KEY_BYTES] = bytes
            .try_into()
            .map_err(|_| EnvelopeError::BadPublicKey("not 32 bytes once base64-decoded".into()))?;
        PublicKey::from_bytes(&bytes)
    }

    /// Standard base64 of the raw 32 bytes.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0.as_bytes())
    }

    /// The key from an SPKI PEM document (`-----BEGIN PUBLIC KEY-----`).
    pub fn from_pem(pem: &str) -> Result<PublicKey, EnvelopeError> {
        let key = VerifyingKey::from_public_key_pem(pem)
            .map_err(|e| EnvelopeError::BadPem(e.to_string()))?;
        PublicKey::from_bytes(key.as_bytes())
    }

    /// The key as an SPKI PEM document.
    pub fn to_pem(&self) -> Result<String, EnvelopeError> {
        self.0
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| EnvelopeError::BadPem(e.to_string()))
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_BYTES] {
        self.0.as_bytes()
    }

    /// The key id: hex sha256 of the raw 32 bytes.
    pub fn key_id(&self) -> KeyId {
        KeyId(sha2::Sha256::digest(self.0.as_bytes()).into())
    }

    /// The underlying ed25519-dalek key.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.0
    }

    /// True if `signature` is a valid strict ed25519 signature of `message` by this key.
    fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(bytes) = <[u8; SIGNATURE_BYTES]>::try_from(signature) else {
            return false;
        };
        let signature = ed25519_dalek::Signature::from_bytes(&bytes);
        self.0.verify_strict(message, &signature).is_ok()
    }
}

impl From<&SigningKey> for PublicKey {
    fn from(key: &SigningKey) -> Self {
        PublicKey(key.verifying_key())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl FromStr for PublicKey {
    type Err = EnvelopeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PublicKey::from_base64(s)
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        PublicKey::from_base64(&text).map_err(serde::de::Error::custom)
    }
}

/// A key id: the sha256 of a raw public key, written as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId([u8; 32]);

impl KeyId {
    /// Parses 64 hex digits (either case); displays in lowercase.
    pub fn parse(text: &str) -> Result<KeyId, EnvelopeError> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes)
            .map_err(|_| EnvelopeError::BadKeyId(text.chars().take(80).collect()))?;
        Ok(KeyId(bytes))
    }

    /// The 32 digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// True if a signature's unauthenticated `keyid` hint names this key.
    fn matches_hint(&self, hint: &str) -> bool {
        KeyId::parse(hint).is_ok_and(|id| id == *self)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl FromStr for KeyId {
    type Err = EnvelopeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyId::parse(s)
    }
}

impl Serialize for KeyId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        KeyId::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Reads an ed25519 private key from a PKCS#8 PEM document (`--key`, `--root-key` files).
pub fn signing_key_from_pem(pem: &str) -> Result<SigningKey, EnvelopeError> {
    SigningKey::from_pkcs8_pem(pem).map_err(|e| EnvelopeError::BadPem(e.to_string()))
}

/// Writes an ed25519 private key as a PKCS#8 PEM document, zeroed from memory when dropped.
pub fn signing_key_to_pem(key: &SigningKey) -> Result<Zeroizing<String>, EnvelopeError> {
    key.to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| EnvelopeError::BadPem(e.to_string()))
}

/// DSSE v1 pre-authentication encoding: `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let type_len = payload_type.len().to_string();
    let body_len = payload.len().to_string();
    let mut out = Vec::with_capacity(
        10 + type_len.len() + payload_type.len() + body_len.len() + payload.len(),
    );
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(type_len.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(body_len.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

/// One signature of an envelope: an unauthenticated `keyid` hint and the signature bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    keyid: String,
    sig: Vec<u8>,
}

impl Signature {
    /// The `keyid` hint as written (may be empty, as DSSE allows).
    pub fn keyid(&self) -> &str {
        &self.keyid
    }

    /// The raw signature bytes.
    pub fn sig(&self) -> &[u8] {
        &self.sig
    }
}

/// A DSSE envelope: payload type, decoded payload bytes and 1..=`MAX_SIGNATURES` signatures.
///
/// Deserializing checks every limit but the total size; `from_json` checks that too, and callers that
/// embed an envelope in a larger document bound that document's size themselves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "WireEnvelope", into = "WireEnvelope")]
pub struct Envelope {
    payload_type: String,
    payload: Vec<u8>,
    signatures: Vec<Signature>,
}

impl Envelope {
    /// Signs `payload` as `payload_type` with `key`; the key id is the hex sha256 of its public key.
    pub fn sign(
        payload_type: &str,
        payload: Vec<u8>,
        key: &SigningKey,
    ) -> Result<Envelope, EnvelopeError> {
        check_payload_type(payload_type)?;
        check_payload_size(payload.len())?;
        let mut envelope = Envelope {
            payload_type: payload_type.to_owned(),
            payload,
            signatures: Vec::new(),
        };
        envelope.add_signature(key)?;
        Ok(envelope)
    }

    /// Adds a signature by `key` (a countersignature, as a root change needs).
    pub fn add_signature(&mut self, key: &SigningKey) -> Result<(), EnvelopeError> {
        if self.signatures.len() >= MAX_SIGNATURES {
            return Err(EnvelopeError::TooManySignatures {
                count: self.signatures.len() + 1,
                limit: MAX_SIGNATURES,
            });
        }
        let signature = key.sign(&pae(&self.payload_type, &self.payload));
        self.signatures.push(Signature {
            keyid: PublicKey::from(key).key_id().to_string(),
            sig: signature.to_bytes().to_vec(),
        });
        Ok(())
    }

    /// Parses envelope JSON, refusing inputs over `MAX_ENVELOPE_BYTES` before reading them.
    pub fn from_json(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(EnvelopeError::TooLarge {
                size: bytes.len(),
                limit: MAX_ENVELOPE_BYTES,
            });
        }
        let wire: WireEnvelope =
            serde_json::from_slice(bytes).map_err(|e| EnvelopeError::Json(e.to_string()))?;
        Envelope::try_from(wire)
    }

    /// The envelope as compact JSON with standard base64 fields.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&WireEnvelope::from(self.clone()))
            .expect("an envelope is plain strings and always serializes")
    }

    /// The payload type the signatures cover.
    pub fn payload_type(&self) -> &str {
        &self.payload_type
    }

    /// The decoded payload bytes. Unverified: check a signature before trusting them.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The signatures, in envelope order.
    pub fn signatures(&self) -> &[Signature] {
        &self.signatures
    }

    /// Fails unless the envelope carries `expected` as its payload type.
    pub fn expect_payload_type(&self, expected: &str) -> Result<(), EnvelopeError> {
        if self.payload_type == expected {
            Ok(())
        } else {
            Err(EnvelopeError::WrongPayloadType {
                expected: expected.to_owned(),
                found: self
                    .payload_type
                    .chars()
                    .take(MAX_PAYLOAD_TYPE_BYTES)
                    .collect(),
            })
        }
    }

    /// True if a signature whose `keyid` names `key` (or is empty) verifies with it.
    pub fn is_signed_by(&self, key: &PublicKey) -> bool {
        let id = key.key_id();
        let candidates: Vec<&Signature> = self
            .signatures
            .iter()
            .filter(|s| s.keyid.is_empty() || id.matches_hint(&s.keyid))
            .collect();
        if candidates.is_empty() {
            return false;
        }
        // Built only when a signature names this key: the payload may be megabytes.
        let message = pae(&self.payload_type, &self.payload);
        candidates
            .iter()
            .any(|signature| key.verifies(&message, &signature.sig))
    }

    /// The ids of the `accepted` keys that signed this envelope; fails if there are none.
    pub fn verify(&self, accepted: &[PublicKey]) -> Result<Vec<KeyId>, EnvelopeError> {
        let mut signers: Vec<KeyId> = accepted
            .iter()
            .filter(|key| self.is_signed_by(key))
            .map(PublicKey::key_id)
            .collect();
        signers.sort();
        signers.dedup();
        if signers.is_empty() {
            Err(EnvelopeError::NoValidSignature)
        } else {
            Ok(signers)
        }
    }
}

fn check_payload_type(payload_type: &str) -> Result<(), EnvelopeError> {
    if payload_type.is_empty() || payload_type.len() > MAX_PAYLOAD_TYPE_BYTES {
        return Err(EnvelopeError::BadPayloadType);
    }
    Ok(())
}

fn check_payload_size(size: usize) -> Result<(), EnvelopeError> {
    if size > MAX_PAYLOAD_BYTES {
        return Err(EnvelopeError::PayloadTooLarge {
            size,
            limit: MAX_PAYLOAD_BYTES,
        });
    }
    Ok(())
}

/// Decodes base64 in any of the forms DSSE tells verifiers to accept (standard or URL-safe, padded
/// or not); the signature covers the decoded bytes, so the spelling cannot change what is trusted.
fn decode_base64(text: &str, field: &'static str) -> Result<Vec<u8>, EnvelopeError> {
    let url_safe = text.contains(['-', '_']);
    let padded = text.ends_with('=');
    let engine = match (url_safe, padded) {
        (false, true) => &STANDARD,
        (false, false) => &STANDARD_NO_PAD,
        (true, true) => &URL_SAFE,
        (true, false) => &URL_SAFE_NO_PAD,
    };
    engine
        .decode(text)
        .map_err(|_| EnvelopeError::Base64(field))
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireSignature {
    #[serde(default)]
    keyid: String,
    sig: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WireEnvelope {
    payload_type: String,
    payload: String,
    signatures: Vec<WireSignature>,
}

impl TryFrom<WireEnvelope> for Envelope {
    type Error = EnvelopeError;

    fn try_from(wire: WireEnvelope) -> Result<Self, Self::Error> {
        check_payload_type(&wire.payload_type)?;
        if wire.signatures.is_empty() {
            return Err(EnvelopeError::NoSignatures);
        }
        if wire.signatures.len() > MAX_SIGNATURES {
            return Err(EnvelopeError::TooManySignatures {
                count: wire.signatures.len(),
                limit: MAX_SIGNATURES,
            });
        }
        // Base64 is 4/3 the size of its bytes: refuse before decoding anything clearly too big.
        if wire.payload.len() > MAX_PAYLOAD_BYTES / 3 * 4 + 8 {
            return Err(EnvelopeError::PayloadTooLarge {
                size: wire.payload.len() / 4 * 3,
                limit: MAX_PAYLOAD_BYTES,
            });
        }
        let payload = decode_base64(&wire.payload, "payload")?;
        check_payload_size(payload.len())?;
        let signatures = wire
            .signatures
            .into_iter()
            .map(|s| {
                if s.keyid.len() > MAX_KEYID_BYTES {
                    return Err(EnvelopeError::KeyIdTooLong);
                }
                if s.sig.len() > 4 * SIGNATURE_BYTES {
                    return Err(EnvelopeError::Base64("sig"));
                }
                Ok(Signature {
                    keyid: s.keyid,
                    sig: decode_base64(&s.sig, "sig")?,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Envelope {
            payload_type: wire.payload_type,
            payload,
            signatures,
        })
    }
}

impl From<Envelope> for WireEnvelope {
    fn from(envelope: Envelope) -> Self {
        WireEnvelope {
            payload_type: envelope.payload_type,
            payload: STANDARD.encode(&envelope.payload),
            signatures: envelope
                .signatures
                .into_iter()
                .map(|s| WireSignature {
                    keyid: s.keyid,
                    sig: STANDARD.encode(&s.sig),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn pae_matches_the_dsse_specification() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ".to_vec());
    }

    #[test]
    fn sign_then_verify_with_the_signing_key() {
        let envelope = Envelope::sign("application/x-test", b"hi".to_vec(), &key(1)).unwrap();
        let public = PublicKey::from(&key(1));
        assert_eq!(envelope.verify(&[public]).unwrap(), vec![public.key_id()]);
        assert_eq!(
            envelope.signatures()[0].keyid(),
            public.key_id().to_string()
        );
        assert_eq!(envelope.signatures()[0].sig().len(), 64);
    }

    #[test]
    fn wire_form_is_dsse_json_with_standard_base64() {
        let envelope = Envelope::sign("t", vec![0xfb, 0xff], &key(1)).unwrap();
        let json: serde_json::Value = serde_json::from_str(&envelope.to_json()).unwrap();
        assert_eq!(json["payloadType"], "t");
        assert_eq!(json["payload"], "+/8=");
        assert_eq!(
            json["signatures"][0]["keyid"],
            PublicKey::from(&key(1)).key_id().to_string()
        );
        assert!(
            json["signatures"][0]["sig"]
                .as_str()
                .unwrap()
                .ends_with("==")
        );
    }

    #[test]
    fn unknown_key_does_not_verify() {
        let envelope = Envelope::sign("t", b"x".to_vec(), &key(1)).unwrap();
        assert_eq!(
            envelope.verify(&[PublicKey::from(&key(2))]),
            Err(EnvelopeError::NoValidSignature)
        );
        assert_eq!(envelope.verify(&[]), Err(EnvelopeError::NoValidSignature));
    }

    #[test]
    fn changed_payload_type_does_not_verify() {
        let envelope = Envelope::sign("a", b"x".to_vec(), &key(1)).unwrap();
        let json = envelope
            .to_json()
            .replace("\"payloadType\":\"a\"", "\"payloadType\":\"b\"");
        let tampered = Envelope::from_json(json.as_bytes()).unwrap();
        assert!(!tampered.is_signed_by(&PublicKey::from(&key(1))));
    }

    #[test]
    fn countersigned_envelope_verifies_with_both_keys() {
        let mut envelope = Envelope::sign("t", b"x".to_vec(), &key(1)).unwrap();
        envelope.add_signature(&key(2)).unwrap();
        let parsed = Envelope::from_json(envelope.to_json().as_bytes()).unwrap();
        assert!(parsed.is_signed_by(&PublicKey::from(&key(1))));
        assert!(parsed.is_signed_by(&PublicKey::from(&key(2))));
        assert_eq!(
            parsed
                .verify(&[PublicKey::from(&key(2)), PublicKey::from(&key(1))])
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn empty_keyid_hint_is_tried_against_every_key() {
        let envelope = Envelope::sign("t", b"x".to_vec(), &key(1)).unwrap();
        let json = envelope
            .to_json()
            .replace(&PublicKey::from(&key(1)).key_id().to_string(), "");
        let parsed = Envelope::from_json(json.as_bytes()).unwrap();
        assert!(parsed.is_signed_by(&PublicKey::from(&key(1))));
    }

    #[test]
    fn signature_under_wrong_keyid_hint_is_not_used() {
        let envelope = Envelope::sign("t", b"x".to_vec(), &key(1)).unwrap();
        let json = envelope.to_json().replace(
            &PublicKey::from(&key(1)).key_id().to_string(),
            &PublicKey::from(&key(2)).key_id().to_string(),
        );
        let parsed = Envelope::from_json(json.as_bytes()).unwrap();
        assert!(!parsed.is_signed_by(&PublicKey::from(&key(1))));
    }

    #[test]
    fn url_safe_and_unpadded_base64_decode_to_the_same_envelope() {
        let envelope = Envelope::sign("t", vec![0xfb, 0xff, 0x01, 0x02], &key(1)).unwrap();
        let json = envelope.to_json();
        let standard = STANDARD.encode([0xfb, 0xff, 0x01, 0x02]);
        let url = URL_SAFE_NO_PAD.encode([0xfb, 0xff, 0x01, 0x02]);
        let parsed = Envelope::from_json(json.replace(&standard, &url).as_bytes()).unwrap();
        assert_eq!(parsed, envelope);
    }

    #[test]
    fn parsing_rejects_bad_envelopes() {
        let good = Envelope::sign("t", b"x".to_vec(), &key(1)).unwrap();
        let sig = good.to_json();
        type Expectation = fn(&EnvelopeError) -> bool;
        let cases: Vec<(String, Expectation)> = vec![
            ("not json".into(), |e| matches!(e, EnvelopeError::Json(_))),
            (
                r#"{"payloadType":"t","payload":"eA==","signatures":[]}"#.into(),
                |e| matches!(e, EnvelopeError::NoSignatures),
            ),
            (
                r#"{"payloadType":"","payload":"eA==","signatures":[{"keyid":"","sig":""}]}"#
                    .into(),
                |e| matches!(e, EnvelopeError::BadPayloadType),
            ),
            (
                r#"{"payloadType":"t","payload":"!!!","signatures":[{"keyid":"","sig":""}]}"#
                    .into(),
                |e| matches!(e, EnvelopeError::Base64("payload")),
            ),
            (
                sig.replace("\"signatures\"", "\"extra\":1,\"signatures\""),
                |e| matches!(e, EnvelopeError::Json(_)),
            ),
            (
                format!(
                    r#"{{"payloadType":"t","payload":"eA==","signatures":[{}]}}"#,
                    [r#"{"keyid":"","sig":""}"#; MAX_SIGNATURES + 1].join(",")
                ),
                |e| matches!(e, EnvelopeError::TooManySignatures { .. }),
            ),
            (
                format!(
                    r#"{{"payloadType":"t","payload":"eA==","signatures":[{{"keyid":"{}","sig":""}}]}}"#,
                    "a".repeat(MAX_KEYID_BYTES + 1)
                ),
                |e| matches!(e, EnvelopeError::KeyIdTooLong),
            ),
            (
                format!(
                    r#"{{"payloadType":"t","payload":"{}","signatures":[{{"keyid":"","sig":""}}]}}"#,
                    "A".repeat(MAX_PAYLOAD_BYTES / 3 * 4 + 12)
                ),
                |e| matches!(e, EnvelopeError::PayloadTooLarge { .. }),
            ),
        ];
        for (input, expected) in cases {
            let err = Envelope::from_json(input.as_bytes()).unwrap_err();
            assert!(
                expected(&err),
                "{err:?} for {}",
                &input[..input.len().min(120)]
            );
        }
        let huge = vec![b' '; MAX_ENVELOPE_BYTES + 1];
        assert!(matches!(
            Envelope::from_json(&huge),
            Err(EnvelopeError::TooLarge { .. })
        ));
    }

    #[test]
    fn signing_refuses_what_parsing_would_refuse() {
        assert_eq!(
            Envelope::sign("", vec![], &key(1)).unwrap_err(),
            EnvelopeError::BadPayloadType
        );
        assert!(matches!(
            Envelope::sign("t", vec![0; MAX_PAYLOAD_BYTES + 1], &key(1)),
            Err(EnvelopeError::PayloadTooLarge { .. })
        ));
        let mut envelope = Envelope::sign("t", vec![], &key(1)).unwrap();
        for _ in 1..MAX_SIGNATURES {
            envelope.add_signature(&key(2)).unwrap();
        }
        assert!(matches!(
            envelope.add_signature(&key(3)),
            Err(EnvelopeError::TooManySignatures { .. })
        ));
        let largest = Envelope::sign("t", vec![0xff; MAX_PAYLOAD_BYTES], &key(1)).unwrap();
        let mut full = largest.clone();
        for _ in 1..MAX_SIGNATURES {
            full.add_signature(&key(2)).unwrap();
        }
        assert_eq!(
            Envelope::from_json(full.to_json().as_bytes()).unwrap(),
            full
        );
    }

    #[test]
    fn expect_payload_type_names_both_types() {
        let envelope = Envelope::sign("a", vec![], &key(1)).unwrap();
        assert!(envelope.expect_payload_type("a").is_ok());
        let message = envelope.expect_payload_type("b").unwrap_err().to_string();
        assert_eq!(message, "envelope carries payloadType `a`, expected `b`");
    }

    #[test]
    fn public_keys_round_trip_through_base64_and_pem() {
        let public = PublicKey::from(&key(7));
        let text = public.to_base64();
        assert_eq!(STANDARD.decode(&text).unwrap(), public.as_bytes().to_vec());
        assert_eq!(PublicKey::from_base64(&text).unwrap(), public);
        assert_eq!(text.parse::<PublicKey>().unwrap(), public);
        assert_eq!(
            PublicKey::from_pem(&public.to_pem().unwrap()).unwrap(),
            public
        );
        let json = serde_json::to_string(&public).unwrap();
        assert_eq!(serde_json::from_str::<PublicKey>(&json).unwrap(), public);
    }

    #[test]
    fn key_id_is_hex_sha256_of_the_raw_key() {
        let public = PublicKey::from(&key(7));
        let expected = hex::encode(sha2::Sha256::digest(public.as_bytes()));
        assert_eq!(public.key_id().to_string(), expected);
        assert_eq!(
            KeyId::parse(&expected.to_uppercase()).unwrap(),
            public.key_id()
        );
        assert!(KeyId::parse("abc").is_err());
        assert!(KeyId::parse(&"g".repeat(64)).is_err());
    }

    #[test]
    fn bad_public_keys_are_refused() {
        assert!(PublicKey::from_base64("not base64!").is_err());
        assert!(PublicKey::from_base64(&STANDARD.encode([1u8; 31])).is_err());
        // URL-safe base64 is not the contract's encoding for keys.
        let public = PublicKey::from(&key(7));
        let url = URL_SAFE.encode(public.as_bytes());
        if url != public.to_base64() {
            assert!(PublicKey::from_base64(&url).is_err());
        }
        // The identity point is a weak key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(matches!(
            PublicKey::from_bytes(&identity),
            Err(EnvelopeError::BadPublicKey(_))
        ));
    }

    #[test]
    fn signing_keys_round_trip_through_pkcs8_pem() {
        let pem = signing_key_to_pem(&key(9)).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let back = signing_key_from_pem(&pem).unwrap();
        assert_eq!(back.to_bytes(), key(9).to_bytes());
        assert!(matches!(
            signing_key_from_pem("-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n"),
            Err(EnvelopeError::BadPem(_))
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn sign_serialize_parse_verify_round_trips(
            payload in proptest::collection::vec(any::<u8>(), 0..512),
            payload_type in "[ -~]{1,64}",
            seed in any::<[u8; 32]>(),
        ) {
            let signing = SigningKey::from_bytes(&seed);
            let envelope = Envelope::sign(&payload_type, payload.clone(), &signing).unwrap();
            let parsed = Envelope::from_json(envelope.to_json().as_bytes()).unwrap();
            prop_assert_eq!(&parsed, &envelope);
            prop_assert_eq!(parsed.payload(), &payload[..]);
            prop_assert_eq!(parsed.payload_type(), payload_type.as_str());
            let public = PublicKey::from(&signing);
            prop_assert_eq!(parsed.verify(&[public]).unwrap(), vec![public.key_id()]);
        }

        #[test]
        fn any_bit_flip_in_payload_fails(
            payload in proptest::collection::vec(any::<u8>(), 1..256),
            bit in any::<prop::sample::Index>(),
        ) {
            let signing = key(3);
            let envelope = Envelope::sign("application/vnd.drover.manifest+json", payload, &signing).unwrap();
            let mut wire = WireEnvelope::from(envelope);
            let mut bytes = STANDARD.decode(&wire.payload).unwrap();
            let bit = bit.index(bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            wire.payload = STANDARD.encode(&bytes);
            let json = serde_json::to_string(&wire).unwrap();
            let tampered = Envelope::from_json(json.as_bytes()).unwrap();
            prop_assert_eq!(
                tampered.verify(&[PublicKey::from(&signing)]),
                Err(EnvelopeError::NoValidSignature)
            );
        }

        #[test]
        fn any_bit_flip_in_signature_fails(
            payload in proptest::collection::vec(any::<u8>(), 0..256),
            bit in 0usize..(SIGNATURE_BYTES * 8),
        ) {
            let signing = key(4);
            let envelope = Envelope::sign("t", payload, &signing).unwrap();
            let mut wire = WireEnvelope::from(envelope);
            let mut sig = STANDARD.decode(&wire.signatures[0].sig).unwrap();
            sig[bit / 8] ^= 1 << (bit % 8);
            wire.signatures[0].sig = STANDARD.encode(&sig);
            let json = serde_json::to_string(&wire).unwrap();
            let tampered = Envelope::from_json(json.as_bytes()).unwrap();
            prop_assert_eq!(
                tampered.verify(&[PublicKey::from(&signing)]),
                Err(EnvelopeError::NoValidSignature)
            );
        }
    }
}
