//! The device API (`/device/v1`) on its own TLS listener. A client
//! certificate is optional at the handshake only so that `/enroll`, `/recover`
//! and `/ca` work without one; every other route demands the certificate of an
//! accepted, unrevoked device. Revoked serials fail the handshake itself.

mod limiter;

use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;

use actix_tls::accept::rustls_0_23::TlsStream;
use actix_web::dev::{Extensions, Payload};
use actix_web::http::StatusCode;
use actix_web::rt::net::TcpStream;
use actix_web::{App, FromRequest, HttpRequest, HttpResponse, get, post, web};
use drover_proto::{
    CaResponse, CertificateResponse, EnrollRequest, EnrollResponse, RecoverRequest, RenewRequest,
};
use futures_util::future::LocalBoxFuture;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

pub use limiter::EnrollLimiter;

use super::errors::{ApiError, ApiResult};
use super::json::Json;
use crate::audit::{self, Actor};
use crate::error::Error;
use crate::identity::devices::{self, Device, Status};
use crate::identity::enroll::{Identity, Request};
use crate::identity::revocation::{RevocationAwareVerifier, serial_of};
use crate::identity::{Tags, ca};
use crate::keys;

/// What the device listener's handlers share.
pub struct DeviceState {
    /// Enrollment and certificates.
    pub identity: Arc<Identity>,
    /// Enrollment attempts per source address.
    pub limiter: EnrollLimiter,
    /// Largest JSON body.
    pub max_json_bytes: usize,
    /// Payload bytes devices download.
    pub blobs: crate::blobs::BlobStore,
    /// Wakes the rollout engine (a device reported).
    pub rollouts: Arc<tokio::sync::Notify>,
    /// Changes for the dashboard's live pages.
    pub live: crate::live::Live,
}

/// The client certificate presented at the handshake, if any.
#[derive(Debug, Clone)]
struct PeerCertificate(Vec<u8>);

/// Copies the client certificate from the TLS session into the connection's data.
pub fn on_connect(conn: &dyn Any, ext: &mut Extensions) {
    if let Some(tls) = conn.downcast_ref::<TlsStream<TcpStream>>() {
        let (_, session) = tls.get_ref();
        if let Some(der) = session.peer_certificates().and_then(|c| c.first()) {
            ext.insert(PeerCertificate(der.to_vec()));
        }
    }
}

/// The TLS configuration: the server certificate (with the CA in its chain)
/// and a client verifier that knows the fleet CA and the revoked serials.
/// `require_client` makes a client certificate mandatory (the MQTT gateway).
pub fn tls_config(
    identity: &Identity,
    hostnames: &[String],
    require_client: bool,
) -> Result<rustls::ServerConfig, Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let (cert_pem, key_pem) = identity.ca.server_certificate(hostnames)?;
    let tls_err = |e: &dyn std::fmt::Display| Error::Internal(format!("device listener TLS: {e}"));
    let server_der =
        ca::pem_to_der(&cert_pem).ok_or_else(|| tls_err(&"server certificate is not PEM"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| tls_err(&e))?;
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(identity.ca.cert_der().to_vec()))
        .map_err(|e| tls_err(&e))?;
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let builder = if require_client {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    let inner = builder.build().map_err(|e| tls_err(&e))?;
    let verifier = Arc::new(RevocationAwareVerifier::new(
        inner,
        identity.revoked.clone(),
    ));
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![
                CertificateDer::from(server_der),
                CertificateDer::from(identity.ca.cert_der().to_vec()),
            ],
            key,
        )
        .map_err(|e| tls_err(&e))
}

/// The device API app for one worker.
pub fn app(
    state: web::Data<DeviceState>,
) -> App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let limit = web::Data::new(super::json::JsonLimit(state.max_json_bytes));
    App::new()
        .app_data(state)
        .app_data(limit)
        .service(
            web::scope("/device/v1")
                .service(enroll)
                .service(renew)
                .service(recover)
                .service(ca_certificate)
                .service(trust)
                .service(blob)
                .service(update_offer)
                .service(update_status)
                .default_service(web::to(super::errors::api_not_found)),
        )
        .default_service(web::to(super::errors::api_not_found))
}

/// An authenticated, accepted device.
#[derive(Debug, Clone)]
pub struct DeviceCaller {
    /// The device.
    pub device: Device,
    /// The serial of the certificate it presented.
    pub serial: String,
}

impl DeviceCaller {
    fn actor(&self, req: &HttpRequest) -> Actor {
        Actor {
            name: format!("device:{}", self.device.id),
            source_addr: super::auth::source_addr(req),
        }
    }
}

impl FromRequest for DeviceCaller {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let state = req
                .app_data::<web::Data<DeviceState>>()
                .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no device state"))?
                .clone();
            let der = req
                .conn_data::<PeerCertificate>()
                .map(|c| c.0.clone())
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "this endpoint needs the device's client certificate",
                    )
                })?;
            let serial = serial_of(&der).ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "the client certificate is unreadable",
                )
            })?;
            let store = &state.identity.store;
            let cert = devices::certificate(store, &serial).await?.ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "the client certificate is not known to this server",
                )
            })?;
            if cert.revoked_at.is_some() || state.identity.revoked.contains(&serial) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "the client certificate has been revoked",
                ));
            }
            let device = devices::require(store, &cert.device_id).await?;
            match device.status() {
                Status::Accepted => {}
                Status::Pending => {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        format!(
                            "device {} is pending; an operator must accept it first",
                            device.id
                        ),
                    ));
                }
                s => {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        format!("device {} is {}", device.id, s.as_str()),
                    ));
                }
            }
            Ok(DeviceCaller { device, serial })
        })
    }
}

fn client_ip(req: &HttpRequest) -> Option<std::net::IpAddr> {
    req.peer_addr().map(|a: SocketAddr| a.ip())
}

#[post("/enroll")]
async fn enroll(
    state: web::Data<DeviceState>,
    req: HttpRequest,
    body: Json<EnrollRequest>,
) -> ApiResult<HttpResponse> {
    if let Some(ip) = client_ip(&req)
        && let Some(retry_after_s) = state.limiter.check(ip, std::time::Instant::now())
    {
        return Err(Error::Throttled { retry_after_s }.into());
    }
    let body = body.0;
    let tags = Tags::parse("tags", body.tags)?;
    let identity = &state.identity;
    let token_prefix: String = body.token.chars().take(10).collect();
    let actor = Actor {
        name: format!("enrollment_token:{token_prefix}"),
        source_addr: super::auth::source_addr(&req),
    };
    let result = identity
        .enroll(Request {
            token: body.token,
            csr_pem: body.csr_pem,
            device_type: body.device_type,
            hostname: body.hostname,
            tags,
        })
        .await;
    let target = result.as_ref().ok().map(|e| e.device.id.clone());
    let enrolled = audit::record_result(
        &identity.store,
        &actor,
        "device.enroll",
        target.as_deref(),
        result,
    )
    .await?;
    state.live.device(&enrolled.device.id);
    let trust_envelope = keys::current_trust(&identity.store)
        .await?
        .ok_or_else(|| Error::Internal("no trust document".into()))?;
    let answer = EnrollResponse {
        mqtt_topic_prefix: identity.topic_prefix(&enrolled.device.id),
        device_id: enrolled.device.id,
        status: enrolled.device.status,
        certificate_pem: enrolled.certificate.pem,
        ca_pem: identity.ca.cert_pem().to_string(),
        mqtt_url: identity.mqtt_url.clone(),
        trust_envelope,
        root_public_key: keys::root_public(&identity.store, &identity.keys)
            .await?
            .to_base64(),
    };
    let status = if enrolled.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(HttpResponse::build(status).json(answer))
}

#[post("/renew")]
async fn renew(
    state: web::Data<DeviceState>,
    req: HttpRequest,
    caller: DeviceCaller,
    body: Json<RenewRequest>,
) -> ApiResult<web::Json<CertificateResponse>> {
    let identity = &state.identity;
    let result = identity.renew(&caller.device, &body.0.csr_pem).await;
    let issued = audit::record_result(
        &identity.store,
        &caller.actor(&req),
        "device.certificate_renew",
        Some(&caller.device.id),
        result,
    )
    .await?;
    Ok(web::Json(CertificateResponse {
        certificate_pem: issued.pem,
    }))
}

#[post("/recover")]
async fn recover(
    state: web::Data<DeviceState>,
    req: HttpRequest,
    body: Json<RecoverRequest>,
) -> ApiResult<web::Json<CertificateResponse>> {
    if let Some(ip) = client_ip(&req)
        && let Some(retry_after_s) = state.limiter.check(ip, std::time::Instant::now())
    {
        return Err(Error::Throttled { retry_after_s }.into());
    }
    let identity = &state.identity;
    let result = identity
        .recover(&body.0.certificate_pem, &body.0.csr_pem)
        .await;
    let target = result.as_ref().ok().map(|(d, _)| d.id.clone());
    let actor = Actor {
        name: target
            .as_ref()
            .map_or_else(|| "device:unknown".to_string(), |id| format!("device:{id}")),
        source_addr: super::auth::source_addr(&req),
    };
    let (_, issued) = audit::record_result(
        &identity.store,
        &actor,
        "device.certificate_recover",
        target.as_deref(),
        result,
    )
    .await?;
    Ok(web::Json(CertificateResponse {
        certificate_pem: issued.pem,
    }))
}

#[get("/ca")]
async fn ca_certificate(state: web::Data<DeviceState>) -> web::Json<CaResponse> {
    web::Json(CaResponse {
        ca_pem: state.identity.ca.cert_pem().to_string(),
    })
}

#[get("/trust")]
async fn trust(state: web::Data<DeviceState>, _caller: DeviceCaller) -> ApiResult<HttpResponse> {
    let envelope = keys::current_trust(&state.identity.store)
        .await?
        .ok_or_else(|| Error::Internal("no trust document".into()))?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(envelope.to_json()))
}

/// A payload's bytes, for a device that was offered a bundle naming them.
/// Streams from the blob store; one `Range` is honoured (206), a multi-range
/// request gets the whole blob (200). A blob not offered to this device is
/// 404 whether or not it exists, so devices cannot probe for others' payloads.
#[get("/blobs/{sha256}")]
async fn blob(
    state: web::Data<DeviceState>,
    req: HttpRequest,
    caller: DeviceCaller,
    sha256: web::Path<String>,
) -> ApiResult<HttpResponse> {
    use crate::blobs::range::{self, RangeAnswer};
    use actix_web::http::header;
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no such payload among the bundles offered to this device",
        )
    };
    let Ok(digest) = drover_proto::Sha256::parse(&sha256) else {
        return Err(not_found());
    };
    let store = &state.identity.store;
    let Some(size) = crate::bundles::offered_blob(store, &caller.device.id, &digest).await? else {
        return Err(not_found());
    };
    let etag = format!("\"{digest}\"");
    // If-Range: a range only applies to the representation the client has.
    let same_entity = req
        .headers()
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.trim() == etag);
    let range_header = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .filter(|_| same_entity);
    let (status, start, len) = match range::parse(range_header, size) {
        RangeAnswer::Full => (StatusCode::OK, 0, size),
        RangeAnswer::Partial { start, end } => {
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeAnswer::Unsatisfiable => {
            let problem = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("the range is outside the payload's {size} bytes"),
            )
            .problem();
            return Ok(HttpResponse::RangeNotSatisfiable()
                .content_type("application/problem+json")
                .insert_header((header::CONTENT_RANGE, format!("bytes */{size}")))
                .insert_header((header::ACCEPT_RANGES, "bytes"))
                .body(serde_json::to_string(&problem).unwrap_or_default()));
        }
    };
    let stream = state.blobs.open(&digest, start, len).await?;
    let mut res = HttpResponse::build(status);
    res.content_type("application/octet-stream")
        .insert_header((header::ACCEPT_RANGES, "bytes"))
        .insert_header((header::ETAG, etag));
    if status == StatusCode::PARTIAL_CONTENT {
        res.insert_header((
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", start + len - 1),
        ));
    }
    Ok(res.no_chunking(len).streaming(stream))
}

/// The update offered to this device now, or 204.
#[get("/update")]
async fn update_offer(
    state: web::Data<DeviceState>,
    caller: DeviceCaller,
) -> ApiResult<HttpResponse> {
    Ok(
        match crate::updates::current_offer(&state.identity.store, &caller.device.id).await? {
            Some(offer) => HttpResponse::Ok().json(offer),
            None => HttpResponse::NoContent().finish(),
        },
    )
}

/// A status report on an offered update (the agent's outbox resends until
/// it gets an answer, so every answer to a well-formed report is 200).
#[post("/update/{rollout_id}/status")]
async fn update_status(
    state: web::Data<DeviceState>,
    caller: DeviceCaller,
    rollout_id: web::Path<String>,
    body: Json<crate::updates::StatusReport>,
) -> ApiResult<HttpResponse> {
    let recorded = crate::updates::record(
        &state.identity.store,
        &caller.device.id,
        &rollout_id,
        &body.0,
    )
    .await?;
    if recorded.recorded {
        state.rollouts.notify_one();
        state.live.device(&caller.device.id);
        state.live.rollout(&rollout_id);
    }
    Ok(HttpResponse::Ok().json(recorded))
}
