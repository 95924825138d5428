//! API tokens for automation (admins manage them).

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
use crate::timefmt::rfc3339;
use crate::users::Role;
use crate::users::api_tokens::{self, ApiToken};

pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(list_tokens)
        .service(create_token)
        .service(revoke_token);
}

/// An API token (without its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenView {
    /// Stable id.
    id: String,
    /// What it is for.
    name: String,
    /// First characters of the secret.
    prefix: String,
    /// Role it acts with.
    role: Role,
    /// Owner's user id.
    user_id: String,
    /// RFC 3339 times.
    created_at: String,
    /// Expiry, if any.
    expires_at: Option<String>,
    /// Last use, if any.
    last_used_at: Option<String>,
    /// Revocation, if any.
    revoked_at: Option<String>,
}

impl From<ApiToken> for TokenView {
    fn from(t: ApiToken) -> Self {
        TokenView {
            role: Role::parse("role", &t.role).unwrap_or(Role::Viewer),
            id: t.id,
            name: t.name,
            prefix: t.prefix,
            user_id: t.user_id,
            created_at: rfc3339(t.created_at),
            expires_at: t.expires_at.map(rfc3339),
            last_used_at: t.last_used_at.map(rfc3339),
            revoked_at: t.revoked_at.map(rfc3339),
        }
    }
}

/// A new API token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// What the token is for.
    name: String,
    /// Role it acts with (default viewer; at most the creator's role).
    role: Option<Role>,
    /// Lifetime in days (1 to 3650); none means until revoked.
    expires_in_days: Option<u32>,
}

/// A created token with its secret, shown only in this answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedToken {
    /// The token.
    #[serde(flatten)]
    token: TokenView,
    /// The secret: send as `Authorization: Bearer SECRET`. Not shown again.
    secret: String,
}

/// Lists API tokens, newest first (admin).
#[utoipa::path(tag = "api-tokens", security(("bearer" = [])), params(PageQuery), responses(
    (status = 200, body = Paged<TokenView>), (status = 401, body = Problem), (status = 403, body = Problem)))]
#[get("/api-tokens")]
async fn list_tokens(
    state: web::Data<AppState>,
    who: Principal,
    query: web::Query<PageQuery>,
) -> ApiResult<web::Json<Paged<TokenView>>> {
    who.require(Role::Admin)?;
    let page = query.page()?;
    let (items, total) = api_tokens::list(&state.store, None, page).await?;
    Ok(web::Json(page.wrap(
        items.into_iter().map(TokenView::from).collect(),
        total,
    )))
}

/// Creates an API token and shows its secret once (admin).
#[utoipa::path(tag = "api-tokens", security(("bearer" = [])), request_body = CreateToken, responses(
    (status = 201, body = CreatedToken), (status = 400, body = Problem), (status = 401, body = Problem),
    (status = 403, body = Problem)))]
#[post("/api-tokens")]
async fn create_token(
    state: web::Data<AppState>,
    who: Principal,
    body: Json<CreateToken>,
) -> ApiResult<HttpResponse> {
    who.require(Role::Admin)?;
    let body = body.0;
    let result = api_tokens::create(
        &state.store,
        &who.user_id,
        who.role,
        &body.name,
        body.role.unwrap_or(Role::Viewer),
        body.expires_in_days,
    )
    .await;
    let created = audit::record_result(
        &state.store,
        &who.actor(),
        "api_token.create",
        Some(&body.name),
        result,
    )
    .await?;
    Ok(HttpResponse::Created().json(CreatedToken {
        token: created.token.into(),
        secret: created.secret,
    }))
}

/// Revokes an API token at once (admin).
#[utoipa::path(tag = "api-tokens", security(("bearer" = [])), params(("id" = String, Path, description = "Token id")), responses(
    (status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
#[delete("/api-tokens/{id}")]
async fn revoke_token(
    state: web::Data<AppState>,
    who: Principal,
    id: web::Path<String>,
) -> ApiResult<HttpResponse> {
    who.require(Role::Admin)?;
    let result = api_tokens::revoke(&state.store, &id, None).await;
    audit::record_result(
        &state.store,
        &who.actor(),
        "api_token.revoke",
        Some(&id),
        result,
    )
    .await?;
    Ok(HttpResponse::NoContent().finish())
}
