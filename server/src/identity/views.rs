//! How devices, certificates and enrollment tokens look to the API and the
//! dashboard: one shape for both, built from the stored rows.

use serde::Serialize;

use super::Tags;
use super::devices::{Device, DeviceCertificate, Installed, Sort, Status};
use super::tokens::EnrollmentToken;
use crate::timefmt::rfc3339;

/// Certificates expiring within this are highlighted.
pub const EXPIRY_WARNING_MS: i64 = 14 * 86_400_000;

/// A certificate as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CertificateView {
    /// Serial, hex.
    pub serial: String,
    /// SHA-256 of the DER, hex.
    pub fingerprint_sha256: String,
    /// Validity start.
    pub not_before: String,
    /// Validity end.
    pub not_after: String,
    /// enroll, renew or recover.
    pub issued_for: String,
    /// Revocation time, if revoked.
    pub revoked_at: Option<String>,
    /// True when it expires within 14 days (or has expired).
    pub expires_soon: bool,
}

impl CertificateView {
    /// From a stored certificate, judged at `now` (ms).
    pub fn new(c: &DeviceCertificate, now: i64) -> Self {
        CertificateView {
            serial: c.serial.clone(),
            fingerprint_sha256: c.fingerprint_sha256.clone(),
            not_before: rfc3339(c.not_before),
            not_after: rfc3339(c.not_after),
            issued_for: c.issued_for.clone(),
            revoked_at: c.revoked_at.map(rfc3339),
            expires_soon: c.not_after - now < EXPIRY_WARNING_MS,
        }
    }
}

/// A bundle installed on a device, as its newest health report names it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InstalledView {
    /// Bundle name.
    pub name: String,
    /// Bundle kind.
    pub kind: String,
    /// Version.
    pub version: String,
    /// When the server first saw the device on this version.
    pub since: String,
}

impl From<Installed> for InstalledView {
    fn from(i: Installed) -> Self {
        InstalledView {
            name: i.name,
            kind: i.kind,
            version: i.version,
            since: rfc3339(i.since),
        }
    }
}

/// A device as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeviceView {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Device type.
    pub device_type: String,
    /// Reported host name.
    pub hostname: String,
    /// pending, accepted, revoked or decommissioned.
    pub status: Status,
    /// Connected now.
    pub online: bool,
    /// Tags.
    pub tags: Tags,
    /// Bundles installed, by name (empty until the device reports its health).
    pub installed: Vec<InstalledView>,
    /// Enrolled.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
    /// Last contact.
    pub last_seen_at: Option<String>,
    /// The newest certificate.
    pub certificate: Option<CertificateView>,
    /// The device's newest update report (in the single-device view only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update: Option<crate::updates::DeviceUpdate>,
}

impl DeviceView {
    /// From stored parts.
    pub fn new(
        d: Device,
        tags: Tags,
        installed: Vec<Installed>,
        cert: Option<&DeviceCertificate>,
        now: i64,
    ) -> Self {
        DeviceView {
            status: d.status(),
            id: d.id,
            name: d.name,
            device_type: d.device_type,
            hostname: d.hostname,
            online: d.online,
            tags,
            installed: installed.into_iter().map(InstalledView::from).collect(),
            created_at: rfc3339(d.created_at),
            updated_at: rfc3339(d.updated_at),
            last_seen_at: d.last_seen_at.map(rfc3339),
            certificate: cert.map(|c| CertificateView::new(c, now)),
            update: None,
        }
    }
}

/// An enrollment token as the API shows it (never its secret).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EnrollmentTokenView {
    /// Id.
    pub id: String,
    /// First characters of the secret.
    pub prefix: String,
    /// Uses it was created with.
    pub uses: i64,
    /// Uses left.
    pub uses_left: i64,
    /// Expiry.
    pub expires_at: String,
    /// Admitted device types (empty: any).
    pub device_types: Vec<String>,
    /// Tags given to its devices.
    pub tags: Tags,
    /// Devices wait for an operator.
    pub approval: bool,
    /// active, expired, used_up or revoked.
    pub state: String,
    /// Who created it.
    pub created_by: String,
    /// Creation.
    pub created_at: String,
}

impl EnrollmentTokenView {
    /// From a stored token, judged at `now` (ms).
    pub fn new(t: &EnrollmentToken, now: i64) -> Self {
        EnrollmentTokenView {
            id: t.id.clone(),
            prefix: t.prefix.clone(),
            uses: t.uses_total,
            uses_left: t.uses_left,
            expires_at: rfc3339(t.expires_at),
            device_types: t.device_types(),
            tags: t.tags(),
            approval: t.approval,
            state: t.state(now).to_string(),
            created_by: t.created_by.clone(),
            created_at: rfc3339(t.created_at),
        }
    }
}

/// The command an operator runs on a device to enroll it.
pub fn join_command(device_url: &str, secret: &str, ca_hash: &str) -> String {
    format!("drover-agent enroll --server {device_url} --token {secret} --ca-hash {ca_hash}")
}

/// One device with its tags, installed bundles and newest certificate.
pub async fn device(store: &crate::store::Store, id: &str) -> crate::error::Result<DeviceView> {
    let d = super::devices::require(store, id).await?;
    let ids = std::slice::from_ref(&d.id);
    let tags = super::devices::tags(store, id).await?;
    let installed = super::devices::installed_of(store, ids)
        .await?
        .remove(id)
        .unwrap_or_default();
    let certs = super::devices::latest_certificates(store, ids).await?;
    let mut view = DeviceView::new(d, tags, installed, certs.get(id), crate::store::now_ms());
    view.update = crate::updates::latest(store, id).await?;
    Ok(view)
}

/// One page of devices with their tags, installed bundles and newest
/// certificates: four queries whatever the page size.
pub async fn devices(
    store: &crate::store::Store,
    filter: &super::devices::Filter,
    sort: Sort,
    page: crate::paging::Page,
) -> crate::error::Result<(Vec<DeviceView>, i64)> {
    let (rows, total) = super::devices::list(store, filter, sort, page).await?;
    let ids: Vec<String> = rows.iter().map(|d| d.id.clone()).collect();
    let mut tags = super::devices::tags_of(store, &ids).await?;
    let mut installed = super::devices::installed_of(store, &ids).await?;
    let certs = super::devices::latest_certificates(store, &ids).await?;
    let now = crate::store::now_ms();
    let views = rows
        .into_iter()
        .map(|d| {
            let tags = tags.remove(&d.id).unwrap_or_default();
            let installed = installed.remove(&d.id).unwrap_or_default();
            let cert = certs.get(&d.id);
            DeviceView::new(d, tags, installed, cert, now)
        })
        .collect();
    Ok((views, total))
}
