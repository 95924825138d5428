//! A device's telemetry, health and events.

use actix_web::{HttpResponse, get, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_actix_web::service_config::ServiceConfig;

use crate::error::Error;
use crate::http::AppState;
use crate::http::auth::Principal;
use crate::http::errors::{ApiResult, Problem};
use crate::identity::devices;
use crate::paging::{PageQuery, Paged};
use crate::store::now_ms;
use crate::telemetry::events::{self, EventView};
use crate::telemetry::ingest::BUCKET_MS;
use crate::telemetry::query::{self, Bucket, RawPoint};

pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(telemetry)
        .service(health)
        .service(device_events);
}

/// Which series and which window.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TelemetryQuery {
    /// Metric name (required).
    pub metric: Option<String>,
    /// Start: RFC 3339 or milliseconds since the epoch (default: an hour before `to`).
    pub from: Option<String>,
    /// End, exclusive: RFC 3339 or milliseconds (default: now).
    pub to: Option<String>,
    /// Roll up into buckets of this width (`5m`, `1h`, or seconds; a whole number of minutes).
    pub step: Option<String>,
}

/// Raw points, oldest first (up to 10,000), or buckets when `step` was given.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Series {
    /// Raw points.
    Raw {
        /// Metric name.
        metric: String,
        /// `{ts, value}`, ts in milliseconds.
        points: Vec<RawPoint>,
    },
    /// Rolled-up buckets.
    Rolled {
        /// Metric name.
        metric: String,
        /// Bucket width in seconds.
        step: i64,
        /// `{ts, min, max, avg, count}`.
        points: Vec<Bucket>,
    },
}

fn time_param(field: &str, value: Option<&str>) -> Result<Option<i64>, Error> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) if v.chars().all(|c| c.is_ascii_digit()) => v
            .parse::<i64>()
            .map(Some)
            .map_err(|_| Error::invalid(field, "is out of range")),
        Some(v) => crate::timefmt::parse_rfc3339(field, v).map(Some),
    }
}

/// A device's telemetry for one metric.
#[utoipa::path(tag = "devices", security(("bearer" = [])), params(("id" = String, Path, description = "Device id"), TelemetryQuery), responses(
    (status = 200, body = Series), (status = 400, body = Problem), (status = 401, body = Problem), (status = 404, body = Problem)))]
#[get("/devices/{id}/telemetry")]
async fn telemetry(
    state: web::Data<AppState>,
    _who: Principal,
    id: web::Path<String>,
    q: web::Query<TelemetryQuery>,
) -> ApiResult<web::Json<Series>> {
    devices::require(&state.store, &id).await?;
    let metric = q
        .metric
        .clone()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| Error::invalid("metric", "is required, e.g. metric=temp_c"))?;
    let to = time_param("to", q.to.as_deref())?.unwrap_or_else(now_ms);
    let from = time_param("from", q.from.as_deref())?.unwrap_or(to - 3_600_000);
    if from >= to {
        return Err(Error::invalid("from", "must be before to").into());
    }
    let series = match q.step.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => Series::Raw {
            points: query::raw(&state.store, &state.catalog, &id, &metric, from, to).await?,
            metric,
        },
        Some(step) => {
            let step = crate::duration::parse("step", step)?;
            let step_ms = i64::try_from(step.as_millis()).unwrap_or(i64::MAX);
            if step_ms < BUCKET_MS || step_ms % BUCKET_MS != 0 || step_ms > 31 * 86_400_000 {
                return Err(
                    Error::invalid("step", "use a whole number of minutes from 1m to 31d").into(),
                );
            }
            Series::Rolled {
                points: query::rolled(
                    &state.store,
                    &state.catalog,
                    &id,
                    &metric,
                    from,
                    to,
                    step_ms,
                )
                .await?,
                step: step_ms / 1000,
                metric,
            }
        }
    };
    Ok(web::Json(series))
}

/// The newest health report of a device, as it sent it, with the time it arrived.
#[utoipa::path(tag = "devices", security(("bearer" = [])), params(("id" = String, Path, description = "Device id")), responses(
    (status = 200, description = "{received_at, report}"), (status = 401, body = Problem), (status = 404, body = Problem)))]
#[get("/devices/{id}/health")]
async fn health(
    state: web::Data<AppState>,
    _who: Principal,
    id: web::Path<String>,
) -> ApiResult<HttpResponse> {
    devices::require(&state.store, &id).await?;
    let (received_at, report) = query::health(&state.store, &id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("device {id} has not reported its health yet")))?;
    let report: serde_json::Value =
        serde_json::from_str(&report).unwrap_or(serde_json::Value::Null);
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "received_at": crate::timefmt::rfc3339(received_at),
        "report": report,
    })))
}

/// A device's events, newest first.
#[utoipa::path(tag = "devices", security(("bearer" = [])), params(("id" = String, Path, description = "Device id"), PageQuery), responses(
    (status = 200, body = Paged<EventView>), (status = 400, body = Problem), (status = 401, body = Problem), (status = 404, body = Problem)))]
#[get("/devices/{id}/events")]
async fn device_events(
    state: web::Data<AppState>,
    _who: Principal,
    id: web::Path<String>,
    q: web::Query<PageQuery>,
) -> ApiResult<web::Json<Paged<EventView>>> {
    devices::require(&state.store, &id).await?;
    let page = q.page()?;
    let (items, total) = events::list(&state.store, &id, page).await?;
    Ok(web::Json(page.wrap(
        items.into_iter().map(EventView::from).collect(),
        total,
    )))
}
