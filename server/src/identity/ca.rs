//! The fleet CA: an ECDSA P-256 key and self-signed CA certificate created at
//! first start, which signs device certificates (built from our own
//! parameters, taking only the public key from a CSR) and the server
//! certificate of the device listener, the server's client certificate for an
//! external broker, and the CRL that broker checks.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PublicKeyData, RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::secrets::write_private;

/// A certificate this CA issued, with what the store records about it.
#[derive(Debug, Clone)]
pub struct Issued {
    /// PEM of the certificate.
    pub pem: String,
    /// Serial as lower-case hex.
    pub serial: String,
    /// Hex SHA-256 of the DER.
    pub fingerprint: String,
    /// Validity start (ms).
    pub not_before: i64,
    /// Validity end (ms).
    pub not_after: i64,
}

/// The fleet CA, loaded from or created in `DATA_DIR/pki`.
pub struct FleetCa {
    cert_pem: String,
    cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
    dir: PathBuf,
}

impl std::fmt::Debug for FleetCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetCa")
            .field("hash", &self.hash())
            .finish_non_exhaustive()
    }
}

fn pki_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("{what}: {e}"))
}

/// Hex SHA-256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn random_serial() -> (SerialNumber, String) {
    let mut bytes: [u8; 16] = rand::random();
    // A positive INTEGER with no leading zero byte.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    (SerialNumber::from_slice(&bytes), hex::encode(bytes))
}

fn ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

impl FleetCa {
    /// Loads `ca.crt` and `ca.key` from `DATA_DIR/pki`, creating them (key mode 0600) on first start.
    /// With a passphrase the key is kept encrypted on disk (a plain key is encrypted in place).
    pub fn load_or_create(data_dir: &Path, passphrase: Option<&str>) -> Result<FleetCa> {
        let dir = data_dir.join("pki");
        let cert_path = dir.join("ca.crt");
        let key_path = dir.join("ca.key");
        let (cert_pem, key_pem) = if cert_path.exists() && key_path.exists() {
            let cert = std::fs::read_to_string(&cert_path)
                .map_err(|e| pki_err("reading pki/ca.crt", e))?;
            let key =
                std::fs::read_to_string(&key_path).map_err(|e| pki_err("reading pki/ca.key", e))?;
            (cert, key)
        } else {
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(|e| pki_err("generating the CA key", e))?;
            let mut params = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "Drover Fleet CA");
            dn.push(DnType::OrganizationName, "Drover");
            params.distinguished_name = dn;
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let now = OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::hours(1);
            params.not_after = now + time::Duration::days(365 * 20);
            params.serial_number = Some(random_serial().0);
            let cert = params
                .self_signed(&key)
                .map_err(|e| pki_err("signing the CA certificate", e))?;
            let key_pem = key.serialize_pem();
            write_private(&key_path, key_pem.as_bytes())
                .map_err(|e| pki_err("writing pki/ca.key", e))?;
            std::fs::write(&cert_path, cert.pem()).map_err(|e| pki_err("writing pki/ca.crt", e))?;
            (cert.pem(), key_pem)
        };
        let key_pem = crate::secrets::unlock_key_pem(&key_path, key_pem, passphrase)?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| pki_err("pki/ca.key is not a usable key", e))?;
        let cert_der =
            pem_to_der(&cert_pem).ok_or_else(|| pki_err("pki/ca.crt", "not a PEM certificate"))?;
        let issuer = Issuer::from_ca_cert_der(&cert_der.clone().into(), key)
            .map_err(|e| pki_err("pki/ca.crt is not a usable CA certificate", e))?;
        Ok(FleetCa {
            cert_pem,
            cert_der,
            issuer,
            dir,
        })
    }

    /// The CA certificate as PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate as DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// `sha256:HEX` of the CA certificate's DER: what `--ca-hash` pins.
    pub fn hash(&self) -> String {
        format!("sha256:{}", sha256_hex(&self.cert_der))
    }

    /// Issues a device certificate (CONTRACT profile): CN and O the device id,
    /// SAN URI `urn:drover:device:ID`, clientAuth, not a CA.
    pub fn issue_device(
        &self,
        public_key: &impl PublicKeyData,
        device_id: &str,
        lifetime: std::time::Duration,
        now: OffsetDateTime,
    ) -> Result<Issued> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, device_id);
        dn.push(DnType::OrganizationName, device_id);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(
            format!("urn:drover:device:{device_id}")
                .try_into()
                .map_err(|e| pki_err("device SAN", e))?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        self.sign(params, public_key, lifetime, now)
    }

    /// Issues the certificate the server presents to an external broker as a
    /// privileged client: CN and O `name`, SAN URI `urn:drover:server:NAME`,
    /// clientAuth, not a CA. The name must hold a character that no device id
    /// has (`drover-server`), so the broker's user name for it can never be a
    /// device's.
    pub fn issue_server_client(
        &self,
        name: &str,
        public_key: &impl PublicKeyData,
        lifetime: std::time::Duration,
        now: OffsetDateTime,
    ) -> Result<Issued> {
        if !super::is_name(name, 64) || name.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(Error::invalid(
                "name",
                format!(
                    "{name:?}: use 1 to 64 letters, digits, '.', '_' or '-' with at least one \
                     '.', '_' or '-', so that it cannot be a device id"
                ),
            ));
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, name);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(
            format!("urn:drover:server:{name}")
                .try_into()
                .map_err(|e| pki_err("server client SAN", e))?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        self.sign(params, public_key, lifetime, now)
    }

    /// A CRL (PEM) signed by the CA listing `revoked` (serial hex, revoked at
    /// ms), valid from `now` for 7 days: whoever checks against it (Mosquitto's
    /// `crlfile`) refuses every certificate once it is stale, so it must be
    /// rewritten well within that week.
    pub fn crl_pem(
        &self,
        revoked: &[(String, i64)],
        number: u64,
        now: OffsetDateTime,
    ) -> Result<String> {
        let revoked_certs = revoked
            .iter()
            .map(|(serial, at_ms)| {
                let bytes = hex::decode(serial)
                    .ok()
                    .filter(|b| !b.is_empty())
                    .ok_or_else(|| pki_err("revoked serial", format!("{serial:?} is not hex")))?;
                let revocation_time =
                    OffsetDateTime::from_unix_timestamp_nanos(i128::from(*at_ms) * 1_000_000)
                        .map_err(|e| pki_err("revocation time", e))?;
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&bytes),
                    revocation_time,
                    reason_code: Some(RevocationReason::Unspecified),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update: now + time::Duration::days(7),
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: self.key_identifier_method(),
        };
        params
            .signed_by(&self.issuer)
            .and_then(|crl| crl.pem())
            .map_err(|e| pki_err("signing the CRL", e))
    }

    /// The CA certificate's subject key identifier, so that a CRL's authority
    /// key identifier matches it as the issued certificates' do.
    fn key_identifier_method(&self) -> KeyIdMethod {
        x509_parser::parse_x509_certificate(&self.cert_der)
            .ok()
            .and_then(|(_, cert)| {
                cert.iter_extensions()
                    .find_map(|ext| match ext.parsed_extension() {
                        x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => {
                            Some(KeyIdMethod::PreSpecified(id.0.to_vec()))
                        }
                        _ => None,
                    })
            })
            .unwrap_or(KeyIdMethod::Sha256)
    }

    fn sign(
        &self,
        mut params: CertificateParams,
        public_key: &impl PublicKeyData,
        lifetime: std::time::Duration,
        now: OffsetDateTime,
    ) -> Result<Issued> {
        let (serial, serial_hex) = random_serial();
        params.serial_number = Some(serial);
        // Slack for devices whose clocks run behind: 5 minutes, or a tenth of
        // a short lifetime so that "renew when a third is left" stays meaningful.
        let slack = std::time::Duration::from_secs(300).min(lifetime / 10);
        params.not_before = now - slack;
        params.not_after = now + lifetime;
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(|e| pki_err("signing a certificate", e))?;
        Ok(Issued {
            pem: cert.pem(),
            serial: serial_hex,
            fingerprint: sha256_hex(cert.der()),
            not_before: ms(params.not_before),
            not_after: ms(params.not_after),
        })
    }

    /// The device listener's certificate and key (PEM), reissued when the
    /// host names change or less than 30 days are left.
    pub fn server_certificate(&self, hostnames: &[String]) -> Result<(String, String)> {
        let cert_path = self.dir.join("server.crt");
        let key_path = self.dir.join("server.key");
        let names_path = self.dir.join("server.names");
        let wanted = hostnames.join("\n");
        if let (Ok(cert), Ok(key), Ok(names)) = (
            std::fs::read_to_string(&cert_path),
            std::fs::read_to_string(&key_path),
            std::fs::read_to_string(&names_path),
        ) && names == wanted
            && pem_to_der(&cert).is_some_and(|der| {
                certificate_not_after(&der)
                    .is_some_and(|end| end > ms(OffsetDateTime::now_utc()) + 30 * 86_400_000)
            })
        {
            return Ok((cert, key));
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| pki_err("generating the server key", e))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            hostnames.first().map(String::as_str).unwrap_or("localhost"),
        );
        dn.push(DnType::OrganizationName, "Drover");
        params.distinguished_name = dn;
        params.subject_alt_names = hostnames
            .iter()
            .map(|h| match h.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => h
                    .clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|e| Error::invalid("public_hostnames", format!("{h:?}: {e}"))),
            })
            .collect::<Result<_>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let issued = self.sign(
            params,
            &key,
            std::time::Duration::from_secs(365 * 86_400),
            OffsetDateTime::now_utc(),
        )?;
        let key_pem = key.serialize_pem();
        write_private(&key_path, key_pem.as_bytes())
            .map_err(|e| pki_err("writing pki/server.key", e))?;
        std::fs::write(&cert_path, &issued.pem)
            .map_err(|e| pki_err("writing pki/server.crt", e))?;
        std::fs::write(&names_path, wanted).map_err(|e| pki_err("writing pki/server.names", e))?;
        Ok((issued.pem, key_pem))
    }

    /// True when `der` is a certificate this CA signed (signature checked).
    pub fn signed(&self, der: &[u8]) -> bool {
        let Ok((_, ca)) = x509_parser::parse_x509_certificate(&self.cert_der) else {
            return false;
        };
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return false;
        };
        cert.verify_signature(Some(ca.public_key())).is_ok()
    }
}

/// The DER inside the first PEM block.
pub fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    Some(parsed.contents)
}

/// A certificate's not-after time (ms).
pub fn certificate_not_after(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_after.timestamp() * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_certificates_follow_the_contract_profile() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = FleetCa::load_or_create(dir.path(), None).expect("ca");
        let again = FleetCa::load_or_create(dir.path(), None).expect("reload");
        assert_eq!(ca.hash(), again.hash(), "the CA persists");
        let device_key = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
        let issued = ca
            .issue_device(
                &device_key,
                "01ABC",
                std::time::Duration::from_secs(3600),
                OffsetDateTime::now_utc(),
            )
            .expect("issue");
        let der = pem_to_der(&issued.pem).expect("der");
        assert!(ca.signed(&der));
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parse");
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .expect("cn")
            .as_str()
            .expect("str");
        let o = cert
            .subject()
            .iter_organization()
            .next()
            .expect("o")
            .as_str()
            .expect("str");
        assert_eq!((cn, o), ("01ABC", "01ABC"));
        let bc = cert.basic_constraints().expect("ext").expect("present");
        assert!(!bc.value.ca);
        let eku = cert.extended_key_usage().expect("ext").expect("present");
        assert!(eku.value.client_auth && !eku.value.server_auth);
        let san = cert
            .subject_alternative_name()
            .expect("ext")
            .expect("present");
        assert!(format!("{:?}", san.value).contains("urn:drover:device:01ABC"));
        assert_eq!(issued.serial, hex::encode(cert.raw_serial()));
    }

    #[test]
    fn the_server_client_certificate_names_the_server_and_allows_client_auth_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = FleetCa::load_or_create(dir.path(), None).expect("ca");
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let now = OffsetDateTime::now_utc();
        let issued = ca
            .issue_server_client(
                "drover-server",
                &key,
                std::time::Duration::from_secs(30 * 86_400),
                now,
            )
            .expect("issue");
        let der = pem_to_der(&issued.pem).expect("der");
        assert!(ca.signed(&der));
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parse");
        fn first<'a>(
            mut it: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
        ) -> String {
            it.next()
                .expect("present")
                .as_str()
                .expect("str")
                .to_string()
        }
        assert_eq!(first(cert.subject().iter_common_name()), "drover-server");
        assert_eq!(first(cert.subject().iter_organization()), "drover-server");
        assert!(
            !cert
                .basic_constraints()
                .expect("ext")
                .expect("present")
                .value
                .ca
        );
        let eku = cert.extended_key_usage().expect("ext").expect("present");
        assert!(eku.value.client_auth && !eku.value.server_auth);
        assert_eq!(cert.public_key().raw, key.subject_public_key_info());
        assert_eq!(issued.serial, hex::encode(cert.raw_serial()));
        assert_eq!(
            cert.validity().not_after.timestamp(),
            now.unix_timestamp() + 30 * 86_400
        );
    }

    #[test]
    fn a_server_client_name_that_could_be_a_device_id_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = FleetCa::load_or_create(dir.path(), None).expect("ca");
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        for name in ["droverserver", "", "drover/server", "drover+"] {
            let e = ca
                .issue_server_client(
                    name,
                    &key,
                    std::time::Duration::from_secs(3600),
                    OffsetDateTime::now_utc(),
                )
                .unwrap_err();
            assert!(e.to_string().starts_with("name:"), "{name:?}: {e}");
        }
    }

    #[test]
    fn a_passphrase_protects_the_ca_key_on_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plain = FleetCa::load_or_create(dir.path(), None).expect("ca");
        let locked = FleetCa::load_or_create(dir.path(), Some("a long passphrase"))
            .expect("protect in place");
        assert_eq!(plain.hash(), locked.hash());
        let on_disk = std::fs::read_to_string(dir.path().join("pki/ca.key")).expect("read");
        assert!(crate::secrets::is_encrypted_pem(&on_disk));
        let e = FleetCa::load_or_create(dir.path(), None).unwrap_err();
        assert!(e.to_string().contains("DROVER_CA_PASSPHRASE"), "{e}");
        let e = FleetCa::load_or_create(dir.path(), Some("the wrong passphrase")).unwrap_err();
        assert!(e.to_string().contains("does not decrypt"), "{e}");
        FleetCa::load_or_create(dir.path(), Some("a long passphrase")).expect("unlock");
    }

    #[test]
    fn the_ca_key_is_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        FleetCa::load_or_create(dir.path(), None).expect("ca");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("pki/ca.key"))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
