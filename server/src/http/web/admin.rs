//! People and access: users, API tokens and the audit log.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use askama::Template;
use serde::Deserialize;

use super::{Nav, WebError, html, html_status, see_other};
use crate::audit::{self, Entry};
use crate::error::Error;
use crate::http::AppState;
use crate::http::api::AuditQuery;
use crate::http::auth::{Mutation, WebUser};
use crate::identity::tokens;
use crate::identity::views::EnrollmentTokenView;
use crate::paging::Page;
use crate::timefmt::rfc3339;
use crate::users::api_tokens::{self, ApiToken};
use crate::users::{self, Role, User, Username};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(users_page)
        .service(users_create)
        .service(users_delete)
        .service(tokens_page)
        .service(api_token_create)
        .service(api_token_revoke)
        .service(audit_page);
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    nav: Nav,
    users: Vec<User>,
    error: Option<String>,
    notice: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DoneQuery {
    done: Option<String>,
}

fn notice(done: Option<&str>) -> Option<String> {
    let text = match done? {
        "created" => "Created.",
        "deleted" => "Deleted.",
        "revoked" => "Revoked.",
        _ => return None,
    };
    Some(text.to_string())
}

async fn render_users(
    state: &AppState,
    who: &WebUser,
    status: StatusCode,
    error: Option<String>,
    notice: Option<String>,
) -> Result<HttpResponse, WebError> {
    let (users, _) = users::list(
        &state.store,
        Page {
            page: 1,
            per_page: 500,
        },
    )
    .await?;
    html_status(
        status,
        &UsersPage {
            nav: Nav::new(who, "users"),
            users,
            error,
            notice,
        },
    )
}

#[get("/users")]
async fn users_page(
    state: web::Data<AppState>,
    who: WebUser,
    query: web::Query<DoneQuery>,
) -> Result<HttpResponse, WebError> {
    render_users(
        &state,
        &who,
        StatusCode::OK,
        None,
        notice(query.done.as_deref()),
    )
    .await
}

#[derive(Debug, Deserialize)]
struct NewUserForm {
    username: String,
    password: String,
    role: String,
}

#[post("/users")]
async fn users_create(
    state: web::Data<AppState>,
    req: HttpRequest,
    m: Mutation<NewUserForm>,
) -> Result<HttpResponse, WebError> {
    let Mutation { who, form } = m;
    who.require(Role::Admin)?;
    let result = async {
        let name = Username::parse(&form.username)?;
        let role = Role::parse("role", &form.role)?;
        users::create(&state.store, &name, &form.password, role, false).await
    }
    .await;
    match audit::record_result(
        &state.store,
        &who.actor(&req),
        "user.create",
        Some(&form.username),
        result,
    )
    .await
    {
        Ok(_) => Ok(see_other("/users?done=created")),
        Err(e @ (Error::Invalid { .. } | Error::Conflict(_))) => {
            render_users(
                &state,
                &who,
                StatusCode::BAD_REQUEST,
                Some(e.to_string()),
                None,
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}

#[post("/users/{id}/delete")]
async fn users_delete(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    m: Mutation<super::account::NoFields>,
) -> Result<HttpResponse, WebError> {
    let who = m.who;
    who.require(Role::Admin)?;
    let result = users::delete(&state.store, &id).await;
    match audit::record_result(
        &state.store,
        &who.actor(&req),
        "user.delete",
        Some(&id),
        result,
    )
    .await
    {
        Ok(_) => Ok(see_other("/users?done=deleted")),
        Err(e @ Error::Conflict(_)) => {
            render_users(
                &state,
                &who,
                StatusCode::CONFLICT,
                Some(e.to_string()),
                None,
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Template)]
#[template(path = "tokens.html")]
struct TokensPage {
    nav: Nav,
    api_tokens: Vec<ApiToken>,
    enrollment_tokens: Vec<EnrollmentTokenView>,
    new_secret: Option<String>,
    join_command: Option<String>,
    error: Option<String>,
    notice: Option<String>,
}

pub(super) async fn render_tokens(
    state: &AppState,
    who: &WebUser,
    status: StatusCode,
    new_secret: Option<String>,
    join_command: Option<String>,
    error: Option<String>,
    notice: Option<String>,
) -> Result<HttpResponse, WebError> {
    let now = crate::store::now_ms();
    let enrollment_tokens = tokens::list(
        &state.store,
        Page {
            page: 1,
            per_page: 200,
        },
    )
    .await?
    .0
    .iter()
    .map(|t| EnrollmentTokenView::new(t, now))
    .collect();
    let api_tokens = if who.role() >= Role::Admin {
        api_tokens::list(
            &state.store,
            None,
            Page {
                page: 1,
                per_page: 200,
            },
        )
        .await?
        .0
    } else {
        Vec::new()
    };
    html_status(
        status,
        &TokensPage {
            nav: Nav::new(who, "tokens"),
            api_tokens,
            enrollment_tokens,
            new_secret,
            join_command,
            error,
            notice,
        },
    )
}

#[get("/tokens")]
async fn tokens_page(
    state: web::Data<AppState>,
    who: WebUser,
    query: web::Query<DoneQuery>,
) -> Result<HttpResponse, WebError> {
    render_tokens(
        &state,
        &who,
        StatusCode::OK,
        None,
        None,
        None,
        notice(query.done.as_deref()),
    )
    .await
}

#[derive(Debug, Deserialize)]
struct NewApiTokenForm {
    name: String,
    role: String,
    expires_in_days: Option<String>,
}

#[post("/tokens/api")]
async fn api_token_create(
    state: web::Data<AppState>,
    req: HttpRequest,
    m: Mutation<NewApiTokenForm>,
) -> Result<HttpResponse, WebError> {
    let Mutation { who, form } = m;
    who.require(Role::Admin)?;
    let result = async {
        let role = Role::parse("role", &form.role)?;
        let days = match form.expires_in_days.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(d) => Some(d.parse::<u32>().map_err(|_| {
                Error::invalid(
                    "expires_in_days",
                    "use a whole number of days from 1 to 3650",
                )
            })?),
        };
        api_tokens::create(
            &state.store,
            &who.user.id,
            who.role(),
            &form.name,
            role,
            days,
        )
        .await
    }
    .await;
    match audit::record_result(
        &state.store,
        &who.actor(&req),
        "api_token.create",
        Some(&form.name),
        result,
    )
    .await
    {
        Ok(created) => {
            render_tokens(
                &state,
                &who,
                StatusCode::OK,
                Some(created.secret),
                None,
                None,
                None,
            )
            .await
        }
        Err(e @ Error::Invalid { .. }) => {
            render_tokens(
                &state,
                &who,
                StatusCode::BAD_REQUEST,
                None,
                None,
                Some(e.to_string()),
                None,
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}

#[post("/tokens/api/{id}/revoke")]
async fn api_token_revoke(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    m: Mutation<super::account::NoFields>,
) -> Result<HttpResponse, WebError> {
    let who = m.who;
    who.require(Role::Admin)?;
    let result = api_tokens::revoke(&state.store, &id, None).await;
    audit::record_result(
        &state.store,
        &who.actor(&req),
        "api_token.revoke",
        Some(&id),
        result,
    )
    .await?;
    Ok(see_other("/tokens?done=revoked"))
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    nav: Nav,
    entries: Vec<Entry>,
    actor: String,
    action: String,
    from: String,
    to: String,
    page: u32,
    pages: i64,
    total: i64,
    error: Option<String>,
}

impl AuditPage {
    fn when(&self, ms: &i64) -> String {
        rfc3339(*ms)
    }

    fn page_link(&self, page: i64) -> String {
        let filters = [
            ("actor", self.actor.as_str()),
            ("action", self.action.as_str()),
            ("from", self.from.as_str()),
            ("to", self.to.as_str()),
        ];
        super::page_link("/audit", &filters, page)
    }
}

#[get("/audit")]
async fn audit_page(
    state: web::Data<AppState>,
    who: WebUser,
    query: web::Query<AuditQuery>,
) -> Result<HttpResponse, WebError> {
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    let mut page = AuditPage {
        nav: Nav::new(&who, "audit"),
        entries: Vec::new(),
        actor: text(&query.actor),
        action: text(&query.action),
        from: text(&query.from),
        to: text(&query.to),
        page: 1,
        pages: 1,
        total: 0,
        error: None,
    };
    match query.parse() {
        Ok((filter, p)) => {
            let (entries, total) = audit::list(&state.store, &filter, p).await?;
            page.entries = entries;
            page.total = total;
            page.page = p.page;
            page.pages = p.pages(total);
            html(&page)
        }
        Err(e) => {
            page.error = Some(e.to_string());
            html_status(StatusCode::BAD_REQUEST, &page)
        }
    }
}
