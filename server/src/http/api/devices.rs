//! Devices: list, inspect, rename, tag, accept, revoke, decommission.

use std::collections::BTreeMap;

use actix_web::{HttpResponse, delete, get, patch, post, web};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_actix_web::service_config::ServiceConfig;

use crate::audit;
use crate::http::AppState;
use crate::http::auth::Principal;
use crate::http::errors::{ApiResult, Problem};
use crate::http::json::Json;
use crate::identity::devices::{self, Filter, Presence, Sort, Status, VersionFilter};
use crate::identity::views::{self, CertificateView, DeviceView};
use crate::identity::{Tags, device_type};
use crate::paging::{Page, Paged};
use crate::store::now_ms;
use crate::users::Role;

pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(list_devices)
        .service(get_device)
        .service(patch_device)
        .service(accept_device)
        .service(revoke_device)
        .service(delete_device)
        .service(device_certificates);
}

/// Filters, order and paging of the device list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeviceQuery {
    /// pending, accepted, revoked or decommissioned.
    pub status: Option<String>,
    /// Device type.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub device_type: Option<String>,
    /// A tag as `key:value`.
    pub tag: Option<String>,
    /// Text in the id, name or host name.
    pub q: Option<String>,
    /// online, offline (heard from before) or never (not heard from since enrolling).
    pub presence: Option<String>,
    /// An installed bundle as `NAME:VERSION` (such as `detector:1.2.0`), or `NAME` for any version.
    pub version: Option<String>,
    /// name (default), -name, last_seen (longest ago and never seen first), -last_seen,
    /// type, status, created or -created (enrollment time); ties go by id.
    pub sort: Option<String>,
    /// Page number, from 1.
    pub page: Option<String>,
    /// Items per page, 1 to 500.
    pub per_page: Option<String>,
}

impl DeviceQuery {
    /// The validated filter, order and page.
    pub fn parse(&self) -> crate::error::Result<(Filter, Sort, Page)> {
        let given = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let filter = Filter {
            status: given(&self.status)
                .map(|s| Status::parse("status", &s))
                .transpose()?,
            device_type: given(&self.device_type)
                .map(|t| device_type("type", &t))
                .transpose()?,
            tag: given(&self.tag)
                .map(|t| {
                    Tags::from_pairs("tag", &[t], ':')
                        .map(|tags| tags.0.into_iter().next().unwrap_or_default())
                })
                .transpose()?,
            q: given(&self.q).map(|q| q.chars().take(100).collect()),
            presence: given(&self.presence)
                .map(|p| Presence::parse("presence", &p))
                .transpose()?,
            version: given(&self.version)
                .map(|v| VersionFilter::parse("version", &v))
                .transpose()?,
        };
        let sort = given(&self.sort)
            .map(|s| Sort::parse("sort", &s))
            .transpose()?
            .unwrap_or_default();
        Ok((
            filter,
            sort,
            Page::parse(self.page.as_deref(), self.per_page.as_deref())?,
        ))
    }
}

/// Lists devices, by name unless `sort` says otherwise, with filters.
#[utoipa::path(tag = "devices", security(("bearer" = [])), params(DeviceQuery), responses(
    (status = 200, body = Paged<DeviceView>), (status = 400, body = Problem), (status = 401, body = Problem)))]
#[get("/devices")]
async fn list_devices(
    state: web::Data<AppState>,
    _who: Principal,
    query: web::Query<DeviceQuery>,
) -> ApiResult<web::Json<Paged<DeviceView>>> {
    let (filter, sort, page) = query.parse()?;
    let (items, total) = views::devices(&state.store, &filter, sort, page).await?;
    Ok(web::Json(page.wrap(items, total)))
}

/// One device with its tags and newest certificate.
#[utoipa::path(tag = "devices", security(("bearer" = [])), params(("id" = String, Path, description = "Device id")), responses(
    (status = 200, body = DeviceView), (status = 401, body = Problem), (status = 404, body = Problem)))]
#[get("/devices/{id}")]
async fn get_device(
    state: web::Data<AppState>,
    _who: Principal,
    id: web::Path<String>,
) -> ApiResult<web::Json<DeviceView>> {
    Ok(web::Json(views::device(&state.store, &id).await?))
}

/// A change to a device's name or tags.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevicePatch {
    /// New name (1 to 128 printable characters).
    name: Option<String>,
    /// New tags, replacing the old ones.
    tags: Option<BTreeMap<String, String>>,
}

/// Renames a device or replaces its tags (operator).
#[utoipa::path(tag = "devices", security(("bearer" = [])), params(("id" = String, Path, description = "Device id")), request_body = DevicePatch, responses(
    (status = 200, body = DeviceView), (status = 400, body = Problem), (status = 401, body = Problem),
    (status = 403, body = Problem), (status = 404, body = Problem)))]
#[patch("/devices/{id}")]
async fn patch_device(
    state: web::Data<AppState>,
    who: Principal,
    id: web::Path<String>,
    body: Json<DevicePatch>,
) -> ApiResult<web::Json<DeviceView>> {
    who.require(Role::Operator)?;
    let body = body.0;
    let result = async {
        let tags = body.tags.map(|t| Tags::parse("tags", t)).transpose()?;
        devices::update(&state.store, &id, body.name.as_deref(), tags.as_ref()).await
    }
    .await;
    audit::record_result(
        &state.store,
        &who.actor(),
        "device.update",
        Some(&id),
        result,
    )
    .await?;
    state.live.device(&id);
    Ok(web::Json(views::device(&state.store, &id).await?))
}

/// Accepts a pending device (operator).
#[utoipa::path(tag = "devices", security(("bearer" = [])), params(("id" = String, Path, description = "Device id")), responses(
    (status = 200, body = DeviceView), (status = 401, body = Problem), (status = 403, body = Problem),
    (status = 404, body = Problem), (status = 409, body = Problem)))]
#[post("/devices/{id}/accept")]
async fn accept_device(
    state: web::Data<AppState>,
    who: Principal,
    id: web::Path<String>,
) -> ApiResult<web::Json<DeviceView>> {
    who.require(Role::Operator)?;
    let result = devices::accept(&state.store, &id).await;
    audit::record_result(
        &state.store,
        &who.actor(),
        "device.accept",
        Some(&id),
        result,
    )
    .await?;
    state.live.device(&id);
    Ok(web::Json(views::device(&state.store, &id).await?))
}

/// Revokes a device: its certificates are refused from now on (operator).
#[utoipa::path(tag = "devices", security(("bearer" = [])), params(("id" = String, Path, description = "Device id")), responses(
    (status = 200, body = DeviceView), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
#[post("/devices/{id}/revoke")]
async fn revoke_device(
    state: web::Data<AppState>,
    who: Principal,
    id: web::Path<String>,
) -> ApiResult<web::Json<DeviceView>> {
    who.require(Role::Operator)?;
    let result = state.identity.cut_off(&id, Status::Revoked).await;
    audit::record_result(
        &state.store,
        &who.actor(),
        "device.revoke",
        Some(&id),
        result,
    )
    .await?;
    state.live.device(&id);
    Ok(web::Json(views::device(&state.store, &id).await?))
}

/// Decommissions a device: revoked and kept for history (operator).
#[utoipa::path(tag = "devices", security(("bearer" = [])), params(("id" = String, Path, description = "Device id")), responses(
    (status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
#[delete("/devices/{id}")]
async fn delete_device(
    state: web::Data<AppState>,
    who: Principal,
    id: web::Path<String>,
) -> ApiResult<HttpResponse> {
    who.require(Role::Operator)?;
    let result = state.identity.cut_off(&id, Status::Decommissioned).await;
    audit::record_result(
        &state.store,
        &who.actor(),
        "device.decommission",
        Some(&id),
        result,
    )
    .await?;
    state.live.device(&id);
    Ok(HttpResponse::NoContent().finish())
}

/// Every certificate issued to a device, newest first.
#[utoipa::path(tag = "devices", security(("bearer" = [])), params(("id" = String, Path, description = "Device id")), responses(
    (status = 200, body = Vec<CertificateView>), (status = 401, body = Problem), (status = 404, body = Problem)))]
#[get("/devices/{id}/certificates")]
async fn device_certificates(
    state: web::Data<AppState>,
    _who: Principal,
    id: web::Path<String>,
) -> ApiResult<web::Json<Vec<CertificateView>>> {
    devices::require(&state.store, &id).await?;
    let now = now_ms();
    let certs = devices::certificates(&state.store, &id).await?;
    Ok(web::Json(
        certs.iter().map(|c| CertificateView::new(c, now)).collect(),
    ))
}
