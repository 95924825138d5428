//! The device's identity: its private key (generated here, never sent anywhere), the CSRs made
//! from it, and the certificates the fleet CA issues for it. A `DeviceCertificate` exists only
//! for a parseable X.509 certificate; `check_issued_for` ties it to our key and the pinned CA.

pub mod renewal;
pub mod schedule;

use drover_proto::Timestamp;
use rcgen::{CertificateParams, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use x509_parser::prelude::{FromDer as _, X509Certificate};

use crate::error::{Error, Result};

/// The subject of our CSRs; the server takes only the public key and names the device itself.
const CSR_COMMON_NAME: &str = "drover-agent";

/// The device's private key (ECDSA P-256 when the agent generates it).
pub struct DeviceKey {
    pair: KeyPair,
}

impl DeviceKey {
    /// A fresh ECDSA P-256 key.
    pub fn generate() -> Result<DeviceKey> {
        let pair = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| Error::Crypto(format!("cannot generate the device key: {e}")))?;
        Ok(DeviceKey { pair })
    }

    /// Reads a PKCS#8 PEM key (P-256 or Ed25519), as written by [`DeviceKey::to_pem`].
    pub fn from_pem(pem: &str) -> Result<DeviceKey, rcgen::Error> {
        Ok(DeviceKey {
            pair: KeyPair::from_pem(pem)?,
        })
    }

    /// The key as PKCS#8 PEM, for `device.key`.
    pub fn to_pem(&self) -> String {
        self.pair.serialize_pem()
    }

    /// The raw public key (as it appears in a certificate's subjectPublicKey bit string).
    pub fn public_key_raw(&self) -> &[u8] {
        self.pair.public_key_raw()
    }

    /// A fresh PKCS#10 CSR (PEM) for this key.
    pub fn csr_pem(&self) -> Result<String> {
        let crypto = |e: rcgen::Error| Error::Crypto(format!("cannot make a CSR: {e}"));
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, CSR_COMMON_NAME);
        params
            .serialize_request(&self.pair)
            .map_err(crypto)?
            .pem()
            .map_err(crypto)
    }

    /// The PEM that reqwest's `Identity::from_pem` takes: this key followed by `certificate`.
    pub fn identity_pem(&self, certificate: &DeviceCertificate) -> Vec<u8> {
        let mut pem = self.to_pem().into_bytes();
        if !pem.ends_with(b"\n") {
            pem.push(b'\n');
        }
        pem.extend_from_slice(certificate.pem().as_bytes());
        pem
    }
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceKey(..)")
    }
}

/// A parsed X.509 certificate: its PEM, DER, validity and public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceCertificate {
    pem: String,
    der: Vec<u8>,
    not_before: Timestamp,
    not_after: Timestamp,
    public_key_raw: Vec<u8>,
}

impl DeviceCertificate {
    /// Parses the first `CERTIFICATE` block of `pem`.
    pub fn from_pem(pem: &str) -> Result<DeviceCertificate, String> {
        let der = certificate_der(pem)?;
        let (not_before, not_after, public_key_raw) = {
            let cert = parse_der(&der)?;
            let validity = cert.validity();
            let time = |t: i64| {
                Timestamp::from_unix_seconds(t)
                    .map_err(|e| format!("certificate validity is out of range: {e}"))
            };
            (
                time(validity.not_before.timestamp())?,
                time(validity.not_after.timestamp())?,
                cert.public_key().subject_public_key.data.to_vec(),
            )
        };
        Ok(DeviceCertificate {
            pem: pem.to_owned(),
            der,
            not_before,
            not_after,
            public_key_raw,
        })
    }

    /// The certificate as PEM, exactly as received.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Start of validity.
    pub fn not_before(&self) -> Timestamp {
        self.not_before
    }

    /// End of validity.
    pub fn not_after(&self) -> Timestamp {
        self.not_after
    }

    /// Fails unless this certificate carries `key`'s public key and is signed by the CA `ca_der`.
    pub fn check_issued_for(&self, key: &DeviceKey, ca_der: &[u8]) -> Result<(), String> {
        if self.public_key_raw != key.public_key_raw() {
            return Err("the certificate is for a different public key than this device's".into());
        }
        let cert = parse_der(&self.der)?;
        let ca = parse_der(ca_der).map_err(|e| format!("the CA {e}"))?;
        cert.verify_signature(Some(ca.public_key()))
            .map_err(|_| "the certificate is not signed by the pinned fleet CA".to_owned())
    }
}

/// The DER of the first `CERTIFICATE` block in `pem`.
pub fn certificate_der(pem: &str) -> Result<Vec<u8>, String> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|_| "no PEM block found where a certificate was expected".to_owned())?;
    if block.label != "CERTIFICATE" {
        return Err(format!(
            "found a PEM `{}` block where a certificate was expected",
            block.label
        ));
    }
    parse_der(&block.contents)?;
    Ok(block.contents)
}

fn parse_der(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    X509Certificate::from_der(der)
        .map(|(_, cert)| cert)
        .map_err(|e| format!("certificate is not valid X.509: {e}"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer};

    /// A CA and a certificate it issues for `key` valid over `[not_before, not_after]` (seconds).
    pub(crate) fn issue(key: &DeviceKey, not_before: i64, not_after: i64) -> (String, String) {
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca_params = CertificateParams::default();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "dev1");
        params.not_before = time::OffsetDateTime::from_unix_timestamp(not_before).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let cert = params.signed_by(&key.pair, &issuer).unwrap();
        (cert.pem(), ca.pem())
    }

    #[test]
    fn a_generated_key_round_trips_through_pem() {
        let key = DeviceKey::generate().unwrap();
        let again = DeviceKey::from_pem(&key.to_pem()).unwrap();
        assert_eq!(key.public_key_raw(), again.public_key_raw());
        assert!(
            key.csr_pem()
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE REQUEST-----")
        );
    }

    #[test]
    fn certificate_validity_and_key_are_read() {
        let key = DeviceKey::generate().unwrap();
        let (pem, ca_pem) = issue(&key, 1_700_000_000, 1_707_776_000);
        let cert = DeviceCertificate::from_pem(&pem).unwrap();
        assert_eq!(cert.not_before().to_string(), "2023-11-14T22:13:20Z");
        assert_eq!(cert.not_after().unix_seconds(), 1_707_776_000);
        let ca_der = certificate_der(&ca_pem).unwrap();
        assert_eq!(cert.check_issued_for(&key, &ca_der), Ok(()));
    }

    #[test]
    fn a_certificate_for_another_key_or_ca_is_refused() {
        let key = DeviceKey::generate().unwrap();
        let other = DeviceKey::generate().unwrap();
        let (pem, ca_pem) = issue(&key, 1_700_000_000, 1_707_776_000);
        let (_, other_ca_pem) = issue(&key, 1_700_000_000, 1_707_776_000);
        let cert = DeviceCertificate::from_pem(&pem).unwrap();
        let ca_der = certificate_der(&ca_pem).unwrap();
        let other_ca_der = certificate_der(&other_ca_pem).unwrap();
        assert!(
            cert.check_issued_for(&other, &ca_der)
                .unwrap_err()
                .contains("different public key")
        );
        assert!(
            cert.check_issued_for(&key, &other_ca_der)
                .unwrap_err()
                .contains("not signed by the pinned fleet CA")
        );
    }

    #[test]
    fn non_certificates_are_refused() {
        assert!(DeviceCertificate::from_pem("hello").is_err());
        let key = DeviceKey::generate().unwrap();
        assert!(
            certificate_der(&key.to_pem())
                .unwrap_err()
                .contains("PRIVATE KEY")
        );
    }
}
