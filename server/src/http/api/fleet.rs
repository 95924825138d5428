//! Fleet metrics: a metric compared across versions, device types or tag
//! values (see `crate::fleet::metrics`). Any signed-in role may read them.

use actix_web::{get, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_actix_web::service_config::ServiceConfig;

use crate::error::Error;
use crate::fleet::metrics::{self, GroupBy, GroupStats, MetricName, Window};
use crate::http::AppState;
use crate::http::auth::Principal;
use crate::http::errors::{ApiResult, Problem};
use crate::store::now_ms;

pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(fleet_metrics);
}

/// Which metric, grouped how, over which window.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FleetMetricsQuery {
    /// Metric name (required).
    pub metric: Option<String>,
    /// `version:BUNDLE_NAME` (the version each reading was taken under), `device_type` or `tag:KEY` (required).
    pub group_by: Option<String>,
    /// Start: RFC 3339 or milliseconds since the epoch (default: an hour before `to`).
    pub from: Option<String>,
    /// End, exclusive: RFC 3339 or milliseconds (default: now). At most 31 days after `from`.
    pub to: Option<String>,
}

/// Statistics over the per-device means of each group.
#[derive(Debug, Serialize, ToSchema)]
pub struct FleetMetricsAnswer {
    /// The metric.
    pub metric: String,
    /// The grouping, as asked.
    pub group_by: String,
    /// Start of the window read: the one asked for, widened to whole buckets (RFC 3339).
    pub from: String,
    /// End of the window read, exclusive (RFC 3339).
    pub to: String,
    /// `hour` (windows up to a day) or `day`.
    pub resolution: &'static str,
    /// One entry per version, type or tag value; `(none)` last.
    pub groups: Vec<GroupStats>,
}

/// Parses a time given as RFC 3339 or as milliseconds, as `/devices/{id}/telemetry` does.
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

/// A metric across the fleet: per group, the mean, p50, p95, min and max of the devices' means.
#[utoipa::path(tag = "fleet", security(("bearer" = [])), params(FleetMetricsQuery), responses(
    (status = 200, body = FleetMetricsAnswer), (status = 400, body = Problem), (status = 401, body = Problem)))]
#[get("/fleet/metrics")]
async fn fleet_metrics(
    state: web::Data<AppState>,
    _who: Principal,
    q: web::Query<FleetMetricsQuery>,
) -> ApiResult<web::Json<FleetMetricsAnswer>> {
    let metric = MetricName::parse("metric", q.metric.as_deref().unwrap_or(""))?;
    let group_by = GroupBy::parse("group_by", q.group_by.as_deref().unwrap_or(""))?;
    let window = Window::new(
        time_param("from", q.from.as_deref())?,
        time_param("to", q.to.as_deref())?,
        now_ms(),
    )?;
    let answer = metrics::compare(&state.store, &state.catalog, &metric, &group_by, window).await?;
    Ok(web::Json(FleetMetricsAnswer {
        metric: metric.as_str().to_string(),
        group_by: group_by.to_string(),
        from: crate::timefmt::rfc3339(answer.from),
        to: crate::timefmt::rfc3339(answer.to),
        resolution: answer.resolution.as_str(),
        groups: answer.groups,
    }))
}
