//! Webhooks: targets for alert and rollout events and their delivery logs. Everyone signed in
//! reads; operators and admins add and delete targets, every change audited. A target's secret
//! is answered once, by the create call.

use actix_web::{HttpResponse, delete, get, post, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use crate::audit;
use crate::http::AppState;
use crate::http::auth::Principal;
use crate::http::errors::{ApiResult, Problem};
use crate::http::json::Json;
use crate::paging::{PageQuery, Paged};
use crate::users::Role;
use crate::webhooks::{self, DeliveryView, NewWebhook, WebhookView};

/// Registers the webhook endpoints.
pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(list)
        .service(create)
        .service(get_one)
        .service(remove)
        .service(deliveries);
}

/// `POST /webhooks`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// Where deliveries are POSTed: `http://` or `https://`, at most 2048 characters.
    url: String,
    /// What it receives: `alert`, `rollout` or both.
    events: Vec<String>,
    /// The key of `X-Drover-Signature` (16 to 256 characters); generated when absent.
    #[serde(default)]
    secret: Option<String>,
}

/// A created target with its secret, shown only in this answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedWebhook {
    /// The target.
    #[serde(flatten)]
    webhook: WebhookView,
    /// Verify `X-Drover-Signature: sha256=HEX` with it: the HMAC-SHA256 of the body. Not shown again.
    secret: String,
}

/// Lists the webhook targets, newest first, with their delivery counts (never their secrets).
#[utoipa::path(tag = "webhooks", security(("bearer" = [])), params(PageQuery), responses(
    (status = 200, body = Paged<WebhookView>), (status = 400, body = Problem), (status = 401, body = Problem)))]
#[get("/webhooks")]
async fn list(
    state: web::Data<AppState>,
    _who: Principal,
    query: web::Query<PageQuery>,
) -> ApiResult<web::Json<Paged<WebhookView>>> {
    let page = query.page()?;
    let (rows, total) = webhooks::list(&state.store, page).await?;
    Ok(web::Json(
        page.wrap(webhooks::views(&state.store, &rows).await?, total),
    ))
}

/// Adds a target; answers its secret once (operator). Each delivery is a JSON POST
/// `{id, event, created_at, data}` with `X-Drover-Delivery`, `X-Drover-Event` and
/// `X-Drover-Signature`, sent in order per target and retried with backoff for a day.
#[utoipa::path(tag = "webhooks", security(("bearer" = [])), request_body = CreateWebhook, responses(
    (status = 201, body = CreatedWebhook), (status = 400, body = Problem), (status = 401, body = Problem),
    (status = 403, body = Problem), (status = 409, body = Problem, description = "Too many webhooks")))]
#[post("/webhooks")]
async fn create(
    state: web::Data<AppState>,
    who: Principal,
    body: Json<CreateWebhook>,
) -> ApiResult<HttpResponse> {
    who.require(Role::Operator)?;
    let actor = who.actor();
    let b = body.0;
    let result = async {
        let new = NewWebhook::parse(&b.url, &b.events, b.secret.as_deref())?;
        webhooks::create(&state.store, &new, &actor.name).await
    }
    .await;
    let target = match &result {
        Ok(c) => c.webhook.id.clone(),
        Err(_) => b.url.chars().take(200).collect(),
    };
    let created = audit::record_result(
        &state.store,
        &actor,
        "webhook.create",
        Some(&target),
        result,
    )
    .await?;
    Ok(HttpResponse::Created().json(CreatedWebhook {
        webhook: WebhookView::new(&created.webhook, Default::default()),
        secret: created.secret.expose().to_string(),
    }))
}

/// One target (deleted ones too, with `deleted_at`).
#[utoipa::path(tag = "webhooks", security(("bearer" = [])), params(("id" = String, Path, description = "Webhook id")), responses(
    (status = 200, body = WebhookView), (status = 401, body = Problem), (status = 404, body = Problem)))]
#[get("/webhooks/{id}")]
async fn get_one(
    state: web::Data<AppState>,
    _who: Principal,
    id: web::Path<String>,
) -> ApiResult<web::Json<WebhookView>> {
    let w = webhooks::get(&state.store, &id).await?;
    Ok(web::Json(webhooks::view(&state.store, &w).await?))
}

/// Deletes a target (operator): its pending deliveries are cancelled, its log is kept.
#[utoipa::path(tag = "webhooks", security(("bearer" = [])), params(("id" = String, Path, description = "Webhook id")), responses(
    (status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
#[delete("/webhooks/{id}")]
async fn remove(
    state: web::Data<AppState>,
    who: Principal,
    id: web::Path<String>,
) -> ApiResult<HttpResponse> {
    who.require(Role::Operator)?;
    let result = webhooks::delete(&state.store, &id).await;
    audit::record_result(
        &state.store,
        &who.actor(),
        "webhook.delete",
        Some(&id),
        result,
    )
    .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// A target's deliveries, newest first: state, attempts, the last answer or error.
#[utoipa::path(tag = "webhooks", security(("bearer" = [])), params(("id" = String, Path, description = "Webhook id"), PageQuery), responses(
    (status = 200, body = Paged<DeliveryView>), (status = 400, body = Problem), (status = 401, body = Problem),
    (status = 404, body = Problem)))]
#[get("/webhooks/{id}/deliveries")]
async fn deliveries(
    state: web::Data<AppState>,
    _who: Principal,
    id: web::Path<String>,
    query: web::Query<PageQuery>,
) -> ApiResult<web::Json<Paged<DeliveryView>>> {
    let page = query.page()?;
    let (rows, total) = webhooks::deliveries(&state.store, &id, page).await?;
    Ok(web::Json(page.wrap(
        rows.into_iter().map(DeliveryView::from).collect(),
        total,
    )))
}
