//! Alert rules (viewers read; operators create, change and delete them) and alerts.

use actix_web::{HttpResponse, delete, get, patch, post, web};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_actix_web::service_config::ServiceConfig;

use crate::alerts::{self, Alert, AlertFilter, Rule, RuleInput};
use crate::audit;
use crate::http::AppState;
use crate::http::auth::Principal;
use crate::http::errors::{ApiResult, Problem};
use crate::http::json::Json;
use crate::paging::{Page, Paged};
use crate::users::Role;

pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(list_rules)
        .service(create_rule)
        .service(patch_rule)
        .service(delete_rule)
        .service(list_alerts);
}

/// Every alert rule, by name.
#[utoipa::path(tag = "alerts", security(("bearer" = [])), responses(
    (status = 200, body = Vec<Rule>), (status = 401, body = Problem)))]
#[get("/alert-rules")]
async fn list_rules(
    state: web::Data<AppState>,
    _who: Principal,
) -> ApiResult<web::Json<Vec<Rule>>> {
    Ok(web::Json(alerts::rules(&state.store).await?))
}

/// Creates a rule (operator): `{name, metric, scope:{device_type, tags}, condition:{op, value},
/// for_seconds, severity}`. `metric` is a reading's metric, `health.FIGURE`, `heartbeat_missing`
/// or `drift.METRIC` (the drift score of METRIC over the last hour, judged every minute).
#[utoipa::path(tag = "alerts", security(("bearer" = [])), request_body = RuleInput, responses(
    (status = 201, body = Rule), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)))]
#[post("/alert-rules")]
async fn create_rule(
    state: web::Data<AppState>,
    who: Principal,
    body: Json<RuleInput>,
) -> ApiResult<HttpResponse> {
    who.require(Role::Operator)?;
    let actor = who.actor();
    let result = alerts::create(&state.store, &body.0, &actor.name).await;
    let target = result.as_ref().ok().map(|r| r.id.clone());
    let rule = audit::record_result(
        &state.store,
        &actor,
        "alert_rule.create",
        target.as_deref(),
        result,
    )
    .await?;
    state.alerts.rules_changed();
    Ok(HttpResponse::Created().json(rule))
}

/// Changes a rule (operator); its pending and firing alerts start over.
#[utoipa::path(tag = "alerts", security(("bearer" = [])), params(("id" = String, Path, description = "Rule id")), request_body = RuleInput, responses(
    (status = 200, body = Rule), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
#[patch("/alert-rules/{id}")]
async fn patch_rule(
    state: web::Data<AppState>,
    who: Principal,
    id: web::Path<String>,
    body: Json<RuleInput>,
) -> ApiResult<web::Json<Rule>> {
    who.require(Role::Operator)?;
    let result = alerts::update(&state.store, &id, &body.0).await;
    let rule = audit::record_result(
        &state.store,
        &who.actor(),
        "alert_rule.update",
        Some(&id),
        result,
    )
    .await?;
    state.alerts.rules_changed();
    Ok(web::Json(rule))
}

/// Deletes a rule (operator); its firing alerts resolve.
#[utoipa::path(tag = "alerts", security(("bearer" = [])), params(("id" = String, Path, description = "Rule id")), responses(
    (status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
#[delete("/alert-rules/{id}")]
async fn delete_rule(
    state: web::Data<AppState>,
    who: Principal,
    id: web::Path<String>,
) -> ApiResult<HttpResponse> {
    who.require(Role::Operator)?;
    let result = alerts::delete(&state.store, &id).await;
    audit::record_result(
        &state.store,
        &who.actor(),
        "alert_rule.delete",
        Some(&id),
        result,
    )
    .await?;
    state.alerts.rules_changed();
    Ok(HttpResponse::NoContent().finish())
}

/// Filters and paging for alerts.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AlertQuery {
    /// firing or resolved.
    pub state: Option<String>,
    /// One device's alerts.
    pub device_id: Option<String>,
    /// Page number, from 1.
    pub page: Option<String>,
    /// Items per page, 1 to 500.
    pub per_page: Option<String>,
}

impl AlertQuery {
    /// The validated filter and page.
    pub fn parse(&self) -> crate::error::Result<(AlertFilter, Page)> {
        let given = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        Ok((
            AlertFilter {
                state: given(&self.state),
                device_id: given(&self.device_id),
            },
            Page::parse(self.page.as_deref(), self.per_page.as_deref())?,
        ))
    }
}

/// Alerts, newest first (times in ms since the epoch).
#[utoipa::path(tag = "alerts", security(("bearer" = [])), params(AlertQuery), responses(
    (status = 200, body = Paged<Alert>), (status = 400, body = Problem), (status = 401, body = Problem)))]
#[get("/alerts")]
async fn list_alerts(
    state: web::Data<AppState>,
    _who: Principal,
    query: web::Query<AlertQuery>,
) -> ApiResult<web::Json<Paged<Alert>>> {
    let (filter, page) = query.parse()?;
    let (items, total) = alerts::alerts(&state.store, &filter, page).await?;
    Ok(web::Json(page.wrap(items, total)))
}
