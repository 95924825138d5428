//! Revoked certificate serials, checked during the TLS handshake so a revoked
//! device is refused at once. The set is loaded from the store at start,
//! updated in place on revocation, and re-read periodically so revocations
//! made through another replica arrive too.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// The serials (lower-case hex) that must be refused.
#[derive(Debug, Default)]
pub struct RevokedSerials {
    set: RwLock<HashSet<String>>,
}

impl RevokedSerials {
    /// Adds serials.
    pub fn insert_all(&self, serials: impl IntoIterator<Item = String>) {
        let mut set = self.set.write().unwrap_or_else(|p| p.into_inner());
        set.extend(serials);
    }

    /// Replaces the whole set (periodic reload).
    pub fn replace(&self, serials: impl IntoIterator<Item = String>) {
        let fresh: HashSet<String> = serials.into_iter().collect();
        *self.set.write().unwrap_or_else(|p| p.into_inner()) = fresh;
    }

    /// True when the serial is revoked.
    pub fn contains(&self, serial: &str) -> bool {
        self.set
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(serial)
    }
}

/// The serial of a DER certificate as lower-case hex.
pub fn serial_of(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(hex::encode(cert.raw_serial()))
}

/// A client-certificate verifier: the fleet CA's WebPKI checks, then the revocation set.
#[derive(Debug)]
pub struct RevocationAwareVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Arc<RevokedSerials>,
}

impl RevocationAwareVerifier {
    /// Wraps a verifier.
    pub fn new(inner: Arc<dyn ClientCertVerifier>, revoked: Arc<RevokedSerials>) -> Self {
        RevocationAwareVerifier { inner, revoked }
    }
}

impl ClientCertVerifier for RevocationAwareVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        match serial_of(end_entity) {
            Some(serial) if !self.revoked.contains(&serial) => Ok(verified),
            Some(_) => Err(rustls::Error::InvalidCertificate(CertificateError::Revoked)),
            None => Err(rustls::Error::InvalidCertificate(
                CertificateError::BadEncoding,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
