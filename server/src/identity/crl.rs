//! The CRL file an external broker checks client certificates against
//! (`DATA_DIR/pki/crl.pem`, Mosquitto's `crlfile`). It always exists, even
//! with nothing revoked, is replaced atomically so a broker reloading at any
//! moment reads a whole file, and its CRL number only ever rises.

use std::io::Write;
use std::path::Path;

use time::OffsetDateTime;

use super::ca::FleetCa;
use crate::error::{Error, Result};

/// How far a CRL's validity starts before it is written. OpenSSL (so
/// Mosquitto) refuses every client while the CRL's thisUpdate lies ahead of
/// its own clock, and the broker may run on another host.
const CLOCK_SLACK: time::Duration = time::Duration::minutes(5);

/// Writes a CRL of `revoked` (serial hex, revoked at ms) to `path`, mode 0644.
pub fn write_crl(ca: &FleetCa, revoked: &[(String, i64)], path: &Path) -> Result<()> {
    let now = OffsetDateTime::now_utc();
    let number = next_number(path, now);
    let pem = ca.crl_pem(revoked, number, now - CLOCK_SLACK)?;
    replace_file(path, pem.as_bytes()).map_err(|e| {
        Error::Internal(format!(
            "writing the CRL to {}: {e}; check that its directory exists and is writable",
            path.display()
        ))
    })
}

/// The current time in seconds, or one more than the number of the CRL at
/// `path` when that is higher (two writes within a second, a clock set back).
fn next_number(path: &Path, now: OffsetDateTime) -> u64 {
    let seconds = u64::try_from(now.unix_timestamp()).unwrap_or(0);
    let previous = std::fs::read(path)
        .ok()
        .and_then(|pem| crl_number(&pem))
        .map_or(0, |n| n.saturating_add(1));
    seconds.max(previous)
}

/// The CRL number of a PEM CRL, when it has one that fits.
fn crl_number(pem: &[u8]) -> Option<u64> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let (_, crl) = x509_parser::parse_x509_crl(&block.contents).ok()?;
    let digits = crl.crl_number()?.to_u64_digits();
    match digits.as_slice() {
        [] => Some(0),
        [n] => Some(*n),
        _ => None,
    }
}

/// Writes a temporary file beside `path`, then renames it over `path`.
fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("crl.pem");
    // Unique per writer: two replicas or tasks must not write into one temporary file.
    let tmp = dir.join(format!(
        ".{name}.{}.{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        // Set explicitly: the umask must not hide the CRL from a broker running as another user.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        }
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> (tempfile::TempDir, FleetCa) {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = FleetCa::load_or_create(dir.path(), None).expect("ca");
        (dir, ca)
    }

    fn parse(pem: &[u8]) -> Vec<u8> {
        let (_, block) = x509_parser::pem::parse_x509_pem(pem).expect("pem");
        assert_eq!(block.label, "X509 CRL");
        block.contents
    }

    fn serials_of(der: &[u8]) -> Vec<String> {
        let (_, crl) = x509_parser::parse_x509_crl(der).expect("crl");
        crl.iter_revoked_certificates()
            .map(|r| hex::encode(r.raw_serial()))
            .collect()
    }

    #[test]
    fn the_crl_is_signed_by_the_ca_and_lists_exactly_the_revoked_serials() {
        let (_dir, ca) = ca();
        let revoked = vec![
            (
                "4a1b2c3d4e5f60718293a4b5c6d7e8f9".to_string(),
                1_732_300_000_123,
            ),
            (
                "7fffffffffffffffffffffffffffffff".to_string(),
                1_732_300_001_000,
            ),
        ];
        let now = OffsetDateTime::from_unix_timestamp(1_732_400_000).expect("time");
        let pem = ca.crl_pem(&revoked, 42, now).expect("crl");
        let der = parse(pem.as_bytes());
        let (rest, crl) = x509_parser::parse_x509_crl(&der).expect("crl");
        assert!(rest.is_empty());
        let (_, ca_cert) = x509_parser::parse_x509_certificate(ca.cert_der()).expect("ca");
        crl.verify_signature(ca_cert.public_key())
            .expect("signed by the CA key");
        assert_eq!(crl.issuer(), ca_cert.subject());
        assert_eq!(
            serials_of(&der),
            revoked.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>()
        );
        let times: Vec<i64> = crl
            .iter_revoked_certificates()
            .map(|r| r.revocation_date.timestamp())
            .collect();
        assert_eq!(times, [1_732_300_000, 1_732_300_001]);
        assert_eq!(crl.last_update().timestamp(), now.unix_timestamp());
        assert_eq!(
            crl.next_update().expect("next update").timestamp(),
            now.unix_timestamp() + 7 * 86_400
        );
        assert_eq!(crl.crl_number().expect("number").to_u64_digits(), [42]);
        // The authority key identifier names the CA's subject key identifier,
        // which is how a verifier finds the CA for this CRL.
        let ski = ca_cert
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => {
                    Some(id.0.to_vec())
                }
                _ => None,
            })
            .expect("the CA has a subject key identifier");
        let aki = crl
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    aki.key_identifier.as_ref().map(|id| id.0.to_vec())
                }
                _ => None,
            })
            .expect("an authority key identifier");
        assert_eq!(aki, ski);
    }

    #[test]
    fn a_serial_with_its_high_bit_set_keeps_its_sign_byte() {
        let (_dir, ca) = ca();
        // How x509-parser (and so `serial_of`) spells such a serial.
        let serial = "00c0ffee00112233445566778899aabb".to_string();
        let pem = ca
            .crl_pem(&[(serial.clone(), 0)], 1, OffsetDateTime::now_utc())
            .expect("crl");
        assert_eq!(serials_of(&parse(pem.as_bytes())), [serial]);
    }

    #[test]
    fn a_serial_that_is_not_hex_is_refused() {
        let (_dir, ca) = ca();
        let e = ca
            .crl_pem(&[("zz".into(), 0)], 1, OffsetDateTime::now_utc())
            .unwrap_err();
        assert!(e.to_string().contains("\"zz\""), "{e}");
    }

    #[test]
    fn with_nothing_revoked_the_file_is_a_valid_empty_crl() {
        let (dir, ca) = ca();
        let path = dir.path().join("pki/crl.pem");
        write_crl(&ca, &[], &path).expect("write");
        let der = parse(&std::fs::read(&path).expect("read"));
        let (_, crl) = x509_parser::parse_x509_crl(&der).expect("crl");
        let (_, ca_cert) = x509_parser::parse_x509_certificate(ca.cert_der()).expect("ca");
        crl.verify_signature(ca_cert.public_key()).expect("signed");
        assert_eq!(crl.iter_revoked_certificates().count(), 0);
        let age = OffsetDateTime::now_utc().unix_timestamp() - crl.last_update().timestamp();
        assert!(
            (299..=310).contains(&age),
            "valid from 5 minutes ago, for a broker whose clock runs behind: {age} s"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(
                mode & 0o777,
                0o644,
                "a broker running as another user reads it"
            );
        }
    }

    #[test]
    fn rewriting_replaces_the_file_and_raises_the_number() {
        let (dir, ca) = ca();
        let path = dir.path().join("pki/crl.pem");
        let number = |path: &Path| crl_number(&std::fs::read(path).expect("read")).expect("n");
        write_crl(&ca, &[], &path).expect("first");
        let first = number(&path);
        let now = u64::try_from(OffsetDateTime::now_utc().unix_timestamp()).expect("after 1970");
        assert!(
            first.abs_diff(now) <= 5,
            "the number is the time in seconds"
        );
        let serial = "4a1b2c3d4e5f60718293a4b5c6d7e8f9".to_string();
        write_crl(&ca, &[(serial.clone(), 1)], &path).expect("second");
        assert!(number(&path) > first, "within the same second too");
        assert_eq!(
            serials_of(&parse(&std::fs::read(&path).expect("read"))),
            [serial]
        );
        let stray: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
            .expect("list")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(stray.is_empty(), "no temporary file is left behind");
    }
}
