//! Rollouts: create (with a preview of the target), list, inspect, and the operator's controls.
//! Viewers read; operators create and control. Every change is audited and wakes the engine.

use actix_web::{HttpResponse, get, post, web};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_actix_web::service_config::ServiceConfig;

use crate::audit;
use crate::http::AppState;
use crate::http::auth::Principal;
use crate::http::errors::{ApiResult, Problem};
use crate::http::json::Json;
use crate::paging::{Page, PageQuery, Paged};
use crate::rollouts::{
    self, Control, DeviceView, EventView, NewRollout, PhaseSpec, Preview, RolloutView, Target,
};
use crate::users::Role;

pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(create)
        .service(preview)
        .service(list)
        .service(get_one)
        .service(devices)
        .service(events)
        .service(pause)
        .service(resume)
        .service(abort)
        .service(rollback);
}

/// Creates a rollout; it starts at once unless `start_at` is later (operator). A device held
/// by another active rollout refuses it with 409 naming that rollout.
#[utoipa::path(tag = "rollouts", security(("bearer" = [])), request_body = NewRollout, responses(
    (status = 201, body = RolloutView), (status = 400, body = Problem), (status = 401, body = Problem),
    (status = 403, body = Problem), (status = 409, body = Problem, description = "A matching device is in another active rollout"),
    (status = 422, body = Problem, description = "The target matches no device, or the bundle expired")))]
#[post("/rollouts")]
async fn create(
    state: web::Data<AppState>,
    who: Principal,
    body: Json<NewRollout>,
) -> ApiResult<HttpResponse> {
    who.require(Role::Operator)?;
    let actor = who.actor();
    let result = rollouts::create(&state.store, &body.0, &actor.name).await;
    let target = result.as_ref().ok().map(|r| r.id.clone());
    let r = audit::record_result(
        &state.store,
        &actor,
        "rollout.create",
        target.as_deref(),
        result,
    )
    .await?;
    state.rollouts.notify_one();
    Ok(HttpResponse::Created().json(rollouts::view(&state.store, r).await?))
}

/// `POST /rollouts/preview`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewRequest {
    /// The bundle.
    pub bundle_id: String,
    /// The target.
    pub target: Target,
    /// Phases, to see their sizes (default: one phase of 100%).
    #[serde(default)]
    pub phases: Vec<PhaseSpec>,
}

/// How many devices a target matches now, how many would be skipped, and the phase sizes.
#[utoipa::path(tag = "rollouts", security(("bearer" = [])), request_body = PreviewRequest, responses(
    (status = 200, body = Preview), (status = 400, body = Problem), (status = 401, body = Problem)))]
#[post("/rollouts/preview")]
async fn preview(
    state: web::Data<AppState>,
    _who: Principal,
    body: Json<PreviewRequest>,
) -> ApiResult<web::Json<Preview>> {
    let b = body.0;
    Ok(web::Json(
        rollouts::preview(&state.store, &b.bundle_id, &b.target, &b.phases).await?,
    ))
}

/// Lists rollouts, newest first.
#[utoipa::path(tag = "rollouts", security(("bearer" = [])), params(PageQuery), responses(
    (status = 200, body = Paged<RolloutView>), (status = 400, body = Problem), (status = 401, body = Problem)))]
#[get("/rollouts")]
async fn list(
    state: web::Data<AppState>,
    _who: Principal,
    query: web::Query<PageQuery>,
) -> ApiResult<web::Json<Paged<RolloutView>>> {
    let page = query.page()?;
    let (rows, total) = rollouts::list(&state.store, page).await?;
    let mut items = Vec::with_capacity(rows.len());
    for r in rows {
        items.push(rollouts::view(&state.store, r).await?);
    }
    Ok(web::Json(page.wrap(items, total)))
}

/// One rollout: state, phase, per-state counts.
#[utoipa::path(tag = "rollouts", security(("bearer" = [])), params(("id" = String, Path, description = "Rollout id")), responses(
    (status = 200, body = RolloutView), (status = 401, body = Problem), (status = 404, body = Problem)))]
#[get("/rollouts/{id}")]
async fn get_one(
    state: web::Data<AppState>,
    _who: Principal,
    id: web::Path<String>,
) -> ApiResult<web::Json<RolloutView>> {
    let r = rollouts::get(&state.store, &id).await?;
    Ok(web::Json(rollouts::view(&state.store, r).await?))
}

/// Paging and a state filter for a rollout's devices.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeviceListQuery {
    /// Page number (from 1).
    pub page: Option<String>,
    /// Items per page (1 to 500).
    pub per_page: Option<String>,
    /// Only devices in this state (`pending`, `offered`, `skipped` or an update state).
    pub state: Option<String>,
}

/// A rollout's devices in snapshot order: phase, state, detail, version.
#[utoipa::path(tag = "rollouts", security(("bearer" = [])), params(("id" = String, Path, description = "Rollout id"), DeviceListQuery), responses(
    (status = 200, body = Paged<DeviceView>), (status = 400, body = Problem), (status = 401, body = Problem), (status = 404, body = Problem)))]
#[get("/rollouts/{id}/devices")]
async fn devices(
    state: web::Data<AppState>,
    _who: Principal,
    id: web::Path<String>,
    query: web::Query<DeviceListQuery>,
) -> ApiResult<web::Json<Paged<DeviceView>>> {
    let page = Page::parse(query.page.as_deref(), query.per_page.as_deref())?;
    let filter = query
        .state
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    const STATES: [&str; 12] = [
        "pending",
        "offered",
        "skipped",
        "downloading",
        "verifying",
        "installing",
        "rebooting",
        "committing",
        "deferred",
        "succeeded",
        "failed",
        "reverted",
    ];
    if let Some(s) = filter
        && !STATES.contains(&s)
        && s != "rolled_back"
    {
        return Err(crate::error::Error::invalid(
            "state",
            format!(
                "`{s}` is not a state; use {} or rolled_back",
                STATES.join(", ")
            ),
        )
        .into());
    }
    let (items, total) = rollouts::devices(&state.store, &id, filter, page).await?;
    Ok(web::Json(page.wrap(items, total)))
}

/// A rollout's transitions, oldest first.
#[utoipa::path(tag = "rollouts", security(("bearer" = [])), params(("id" = String, Path, description = "Rollout id")), responses(
    (status = 200, body = Vec<EventView>), (status = 401, body = Problem), (status = 404, body = Problem)))]
#[get("/rollouts/{id}/events")]
async fn events(
    state: web::Data<AppState>,
    _who: Principal,
    id: web::Path<String>,
) -> ApiResult<web::Json<Vec<EventView>>> {
    rollouts::get(&state.store, &id).await?;
    Ok(web::Json(rollouts::events(&state.store, &id).await?))
}

async fn act(
    state: &AppState,
    who: &Principal,
    id: &str,
    control: Control,
) -> ApiResult<web::Json<RolloutView>> {
    who.require(Role::Operator)?;
    let actor = who.actor();
    let result = rollouts::control(&state.store, id, control, &actor.name).await;
    let r = audit::record_result(
        &state.store,
        &actor,
        &format!("rollout.{}", control.as_str()),
        Some(id),
        result,
    )
    .await?;
    state.rollouts.notify_one();
    Ok(web::Json(rollouts::view(&state.store, r).await?))
}

/// Stops new offers; devices already updating finish (operator).
#[utoipa::path(tag = "rollouts", security(("bearer" = [])), params(("id" = String, Path, description = "Rollout id")), responses(
    (status = 200, body = RolloutView), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
    (status = 409, body = Problem, description = "Not running or scheduled")))]
#[post("/rollouts/{id}/pause")]
async fn pause(
    state: web::Data<AppState>,
    who: Principal,
    id: web::Path<String>,
) -> ApiResult<web::Json<RolloutView>> {
    act(&state, &who, &id, Control::Pause).await
}

/// Offers again after a pause (operator). A halted rollout is rolled back or aborted instead.
#[utoipa::path(tag = "rollouts", security(("bearer" = [])), params(("id" = String, Path, description = "Rollout id")), responses(
    (status = 200, body = RolloutView), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
    (status = 409, body = Problem, description = "Not paused")))]
#[post("/rollouts/{id}/resume")]
async fn resume(
    state: web::Data<AppState>,
    who: Principal,
    id: web::Path<String>,
) -> ApiResult<web::Json<RolloutView>> {
    act(&state, &who, &id, Control::Resume).await
}

/// Stops for good; updated devices stay as they are and no new offer goes out (operator).
#[utoipa::path(tag = "rollouts", security(("bearer" = [])), params(("id" = String, Path, description = "Rollout id")), responses(
    (status = 200, body = RolloutView), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
    (status = 409, body = Problem, description = "Already finished")))]
#[post("/rollouts/{id}/abort")]
async fn abort(
    state: web::Data<AppState>,
    who: Principal,
    id: web::Path<String>,
) -> ApiResult<web::Json<RolloutView>> {
    act(&state, &who, &id, Control::Abort).await
}

/// Orders a rollback on every device the rollout updated, and tracks them (operator).
#[utoipa::path(tag = "rollouts", security(("bearer" = [])), params(("id" = String, Path, description = "Rollout id")), responses(
    (status = 200, body = RolloutView), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
    (status = 409, body = Problem, description = "Not running, paused, halted or completed")))]
#[post("/rollouts/{id}/rollback")]
async fn rollback(
    state: web::Data<AppState>,
    who: Principal,
    id: web::Path<String>,
) -> ApiResult<web::Json<RolloutView>> {
    act(&state, &who, &id, Control::Rollback).await
}
