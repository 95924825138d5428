//! Managing operator accounts (admins only; everyone may list).

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
use crate::users::{self, Role, User, Username};

pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(list_users)
        .service(create_user)
        .service(delete_user);
}

/// A user as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    /// Stable id.
    id: String,
    /// Login name.
    username: String,
    /// Role.
    role: Role,
    /// True until a generated one-time password is replaced.
    must_change_password: bool,
    /// RFC 3339 creation time.
    created_at: String,
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        UserView {
            role: u.role(),
            id: u.id,
            username: u.username,
            must_change_password: u.must_change_password,
            created_at: rfc3339(u.created_at),
        }
    }
}

/// A new user.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// 1 to 64 letters, digits, '.', '_' or '-'.
    username: String,
    /// At least 10 characters.
    password: String,
    /// admin, operator or viewer.
    role: Role,
}

/// Lists users by name.
#[utoipa::path(tag = "users", security(("bearer" = [])), params(PageQuery), responses(
    (status = 200, body = Paged<UserView>), (status = 400, body = Problem), (status = 401, body = Problem)))]
#[get("/users")]
async fn list_users(
    state: web::Data<AppState>,
    _who: Principal,
    query: web::Query<PageQuery>,
) -> ApiResult<web::Json<Paged<UserView>>> {
    let page = query.page()?;
    let (items, total) = users::list(&state.store, page).await?;
    Ok(web::Json(page.wrap(
        items.into_iter().map(UserView::from).collect(),
        total,
    )))
}

/// Creates a user (admin).
#[utoipa::path(tag = "users", security(("bearer" = [])), request_body = CreateUser, responses(
    (status = 201, body = UserView), (status = 400, body = Problem), (status = 401, body = Problem),
    (status = 403, body = Problem), (status = 409, body = Problem), (status = 413, body = Problem)))]
#[post("/users")]
async fn create_user(
    state: web::Data<AppState>,
    who: Principal,
    body: Json<CreateUser>,
) -> ApiResult<HttpResponse> {
    who.require(Role::Admin)?;
    let body = body.0;
    let result = async {
        let name = Username::parse(&body.username)?;
        users::create(&state.store, &name, &body.password, body.role, false).await
    }
    .await;
    let user = audit::record_result(
        &state.store,
        &who.actor(),
        "user.create",
        Some(&body.username),
        result,
    )
    .await?;
    Ok(HttpResponse::Created().json(UserView::from(user)))
}

/// Deletes a user with their sessions and API tokens (admin; never the last admin).
#[utoipa::path(tag = "users", security(("bearer" = [])), params(("id" = String, Path, description = "User id")), responses(
    (status = 204), (status = 401, body = Problem), (status = 403, body = Problem),
    (status = 404, body = Problem), (status = 409, body = Problem)))]
#[delete("/users/{id}")]
async fn delete_user(
    state: web::Data<AppState>,
    who: Principal,
    id: web::Path<String>,
) -> ApiResult<HttpResponse> {
    who.require(Role::Admin)?;
    let result = users::delete(&state.store, &id).await;
    audit::record_result(&state.store, &who.actor(), "user.delete", Some(&id), result).await?;
    Ok(HttpResponse::NoContent().finish())
}
