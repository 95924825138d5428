//! Drift scores (see `crate::fleet::drift`): one device's metric against its
//! baseline, and the devices on each version of a bundle. Any signed-in role
//! may read them.

use actix_web::{get, web};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_actix_web::service_config::ServiceConfig;

use crate::error::Error;
use crate::fleet::drift::{self, DeviceDrift, FleetDrift, Window};
use crate::http::AppState;
use crate::http::auth::Principal;
use crate::http::errors::{ApiResult, Problem};
use crate::identity::devices;
use crate::store::now_ms;

pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(device_drift).service(fleet_drift);
}

/// Which metric over which recent window.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeviceDriftQuery {
    /// Metric name (required).
    pub metric: Option<String>,
    /// Recent window: `1h` (default), `24h` or `7d`.
    pub window: Option<String>,
}

/// Which metric, which bundle's versions, over which recent window.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FleetDriftQuery {
    /// Metric name (required).
    pub metric: Option<String>,
    /// `version:BUNDLE_NAME`: the devices now on each version of that bundle (required).
    pub group_by: Option<String>,
    /// Recent window: `1h` (default), `24h` or `7d`.
    pub window: Option<String>,
}

/// A device's drift score for one metric: the population stability index of
/// the recent window's per-minute means against the 7 days before its last
/// succeeded update (or before the recent window, when it never updated).
/// Over 0.25 is drift; fewer than 30 minutes with readings on either side
/// gives no score and a `reason`.
#[utoipa::path(tag = "devices", security(("bearer" = [])), params(("id" = String, Path, description = "Device id"), DeviceDriftQuery), responses(
    (status = 200, body = DeviceDrift), (status = 400, body = Problem), (status = 401, body = Problem), (status = 404, body = Problem)))]
#[get("/devices/{id}/drift")]
async fn device_drift(
    state: web::Data<AppState>,
    _who: Principal,
    id: web::Path<String>,
    q: web::Query<DeviceDriftQuery>,
) -> ApiResult<web::Json<DeviceDrift>> {
    let metric = drift::metric_name("metric", q.metric.as_deref())?;
    let window = Window::parse("window", q.window.as_deref())?;
    devices::require(&state.store, &id).await?;
    Ok(web::Json(
        drift::device(&state.store, &id, &metric, window, now_ms()).await?,
    ))
}

/// Drift per version of a bundle: each device now on the version is scored
/// as `GET /devices/{id}/drift` does, at most 2,000 devices per request (the
/// first by id; `truncated` says when more have the bundle).
#[utoipa::path(tag = "fleet", security(("bearer" = [])), params(FleetDriftQuery), responses(
    (status = 200, body = FleetDrift), (status = 400, body = Problem), (status = 401, body = Problem)))]
#[get("/fleet/drift")]
async fn fleet_drift(
    state: web::Data<AppState>,
    _who: Principal,
    q: web::Query<FleetDriftQuery>,
) -> ApiResult<web::Json<FleetDrift>> {
    let metric = drift::metric_name("metric", q.metric.as_deref())?;
    let bundle = q
        .group_by
        .as_deref()
        .map(str::trim)
        .and_then(|g| g.strip_prefix("version:"))
        .filter(|b| !b.is_empty() && b.len() <= 128)
        .ok_or_else(|| {
            Error::invalid(
                "group_by",
                "use version:BUNDLE_NAME, e.g. group_by=version:firmware",
            )
        })?;
    let window = Window::parse("window", q.window.as_deref())?;
    Ok(web::Json(
        drift::fleet(&state.store, &metric, bundle, window, now_ms()).await?,
    ))
}
