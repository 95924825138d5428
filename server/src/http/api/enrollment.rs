//! Enrollment tokens (operators).

use std::collections::BTreeMap;

use actix_web::{HttpResponse, delete, get, post, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use crate::audit;
use crate::error::Error;
use crate::http::AppState;
use crate::http::auth::Principal;
use crate::http::errors::{ApiResult, Problem};
use crate::http::json::Json;
use crate::identity::Tags;
use crate::identity::tokens::{self, NewToken};
use crate::identity::views::{EnrollmentTokenView, join_command};
use crate::paging::{PageQuery, Paged};
use crate::store::now_ms;
use crate::users::Role;

pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(list_tokens)
        .service(create_token)
        .service(revoke_token);
}

/// A duration as seconds or as text such as `24h`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum DurationInput {
    /// Seconds.
    Seconds(u64),
    /// `90s`, `15m`, `24h`, `7d`.
    Text(String),
}

/// A new enrollment token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEnrollmentToken {
    /// Devices that may enroll with it (default 1).
    uses: Option<u32>,
    /// Validity (default 24h).
    expires_in: Option<DurationInput>,
    /// The only device types it admits (default: any).
    #[serde(default)]
    device_types: Vec<String>,
    /// Tags given to its devices, winning over tags they claim.
    #[serde(default)]
    tags: BTreeMap<String, String>,
    /// Devices stay pending until accepted (default false).
    #[serde(default)]
    approval: bool,
}

impl CreateEnrollmentToken {
    /// A request from already-split form fields (the dashboard).
    pub fn from_parts(
        uses: u32,
        expires_in: DurationInput,
        device_types: Vec<String>,
        tags: BTreeMap<String, String>,
        approval: bool,
    ) -> Self {
        CreateEnrollmentToken {
            uses: Some(uses),
            expires_in: Some(expires_in),
            device_types,
            tags,
            approval,
        }
    }
}

/// A created token with its secret and join command, shown only in this answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedEnrollmentToken {
    /// The token.
    #[serde(flatten)]
    view: EnrollmentTokenView,
    /// The secret for `drover-agent enroll --token`.
    token: String,
    /// The complete command to run on a device.
    join_command: String,
}

/// Turns a request into a validated token description.
pub fn new_token(body: CreateEnrollmentToken) -> Result<NewToken, Error> {
    let expires_in = match body.expires_in {
        None => std::time::Duration::from_secs(86_400),
        Some(DurationInput::Seconds(s)) => std::time::Duration::from_secs(s),
        Some(DurationInput::Text(t)) => crate::duration::parse("expires_in", &t)?,
    };
    let new = NewToken {
        uses: body.uses.unwrap_or(1),
        expires_in,
        device_types: body.device_types,
        tags: Tags::parse("tags", body.tags)?,
        approval: body.approval,
    };
    new.validate()?;
    Ok(new)
}

/// Lists enrollment tokens, newest first.
#[utoipa::path(tag = "enrollment-tokens", security(("bearer" = [])), params(PageQuery), responses(
    (status = 200, body = Paged<EnrollmentTokenView>), (status = 400, body = Problem), (status = 401, body = Problem)))]
#[get("/enrollment-tokens")]
async fn list_tokens(
    state: web::Data<AppState>,
    _who: Principal,
    query: web::Query<PageQuery>,
) -> ApiResult<web::Json<Paged<EnrollmentTokenView>>> {
    let page = query.page()?;
    let (items, total) = tokens::list(&state.store, page).await?;
    let now = now_ms();
    Ok(web::Json(
        page.wrap(
            items
                .iter()
                .map(|t| EnrollmentTokenView::new(t, now))
                .collect(),
            total,
        ),
    ))
}

/// Creates an enrollment token; its secret and join command are shown once (operator).
#[utoipa::path(tag = "enrollment-tokens", security(("bearer" = [])), request_body = CreateEnrollmentToken, responses(
    (status = 201, body = CreatedEnrollmentToken), (status = 400, body = Problem), (status = 401, body = Problem),
    (status = 403, body = Problem)))]
#[post("/enrollment-tokens")]
async fn create_token(
    state: web::Data<AppState>,
    who: Principal,
    body: Json<CreateEnrollmentToken>,
) -> ApiResult<HttpResponse> {
    who.require(Role::Operator)?;
    let actor = who.actor();
    let result = match new_token(body.0) {
        Ok(new) => tokens::create(&state.store, &new, &actor.name).await,
        Err(e) => Err(e),
    };
    let target = result.as_ref().ok().map(|c| c.token.id.clone());
    let created = audit::record_result(
        &state.store,
        &actor,
        "enrollment_token.create",
        target.as_deref(),
        result,
    )
    .await?;
    let join = join_command(
        &state.device_url,
        &created.secret,
        &state.identity.ca.hash(),
    );
    Ok(HttpResponse::Created().json(CreatedEnrollmentToken {
        view: EnrollmentTokenView::new(&created.token, now_ms()),
        token: created.secret,
        join_command: join,
    }))
}

/// Revokes an enrollment token; devices enrolled with it stay (operator).
#[utoipa::path(tag = "enrollment-tokens", security(("bearer" = [])), params(("id" = String, Path, description = "Token id")), responses(
    (status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
#[delete("/enrollment-tokens/{id}")]
async fn revoke_token(
    state: web::Data<AppState>,
    who: Principal,
    id: web::Path<String>,
) -> ApiResult<HttpResponse> {
    who.require(Role::Operator)?;
    let result = tokens::revoke(&state.store, &id).await;
    audit::record_result(
        &state.store,
        &who.actor(),
        "enrollment_token.revoke",
        Some(&id),
        result,
    )
    .await?;
    Ok(HttpResponse::NoContent().finish())
}
