//! Logging in through the API and managing one's own password.

use actix_web::{HttpRequest, get, post, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use crate::audit;
use crate::error::Error;
use crate::http::AppState;
use crate::http::auth::{Principal, attempt_login};
use crate::http::errors::{ApiResult, Problem};
use crate::http::json::Json;
use crate::users::{self, Role};

pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(login).service(me).service(change_password);
}

/// Credentials for a JWT.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// User name.
    username: String,
    /// Password.
    password: String,
}

/// A JWT for the API.
#[derive(Debug, Serialize, ToSchema)]
pub struct LoginResponse {
    /// Send as `Authorization: Bearer TOKEN`.
    token: String,
    /// RFC 3339 expiry (15 minutes by default).
    expires_at: String,
    /// True while the account still has its generated one-time password.
    password_change_required: bool,
}

/// Exchanges a user name and password for a short-lived JWT.
#[utoipa::path(tag = "auth", request_body = LoginRequest, responses(
    (status = 200, body = LoginResponse),
    (status = 400, body = Problem), (status = 401, body = Problem), (status = 429, body = Problem)))]
#[post("/auth/login")]
async fn login(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Json<LoginRequest>,
) -> ApiResult<web::Json<LoginResponse>> {
    let user = attempt_login(&state, &req, &body.0.username, &body.0.password).await?;
    let (token, exp) = state.jwt.issue(&user.id, users::jwt::now_s())?;
    Ok(web::Json(LoginResponse {
        token,
        expires_at: crate::timefmt::rfc3339(i64::try_from(exp).unwrap_or(i64::MAX) * 1000),
        password_change_required: user.must_change_password,
    }))
}

/// The caller as the API sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    /// User id.
    id: String,
    /// User name.
    username: String,
    /// Effective role of this credential.
    role: Role,
    /// The API token's name, when one is used.
    token_name: Option<String>,
}

/// Who the presented credential belongs to.
#[utoipa::path(tag = "auth", security(("bearer" = [])), responses((status = 200, body = Me), (status = 401, body = Problem)))]
#[get("/auth/me")]
async fn me(who: Principal) -> web::Json<Me> {
    web::Json(Me {
        id: who.user_id,
        username: who.username,
        role: who.role,
        token_name: who.token_name,
    })
}

/// A password change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    /// The password now.
    current_password: String,
    /// The new password (at least 10 characters).
    new_password: String,
}

/// Changes the caller's own password (ends their dashboard sessions).
#[utoipa::path(tag = "auth", security(("bearer" = [])), request_body = PasswordChange, responses(
    (status = 204), (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)))]
#[post("/auth/password")]
async fn change_password(
    state: web::Data<AppState>,
    who: Principal,
    body: Json<PasswordChange>,
) -> ApiResult<actix_web::HttpResponse> {
    if who.token_name.is_some() {
        return Err(Error::Forbidden(
            "an API token cannot change its owner's password; log in with the password".into(),
        )
        .into());
    }
    let user = users::get(&state.store, &who.user_id)
        .await?
        .ok_or_else(|| Error::NotFound("the account no longer exists".into()))?;
    let result = users::change_password(
        &state.store,
        &user,
        &body.0.current_password,
        &body.0.new_password,
        None,
    )
    .await;
    audit::record_result(
        &state.store,
        &who.actor(),
        "user.password_change",
        Some(&user.username),
        result,
    )
    .await?;
    Ok(actix_web::HttpResponse::NoContent().finish())
}
