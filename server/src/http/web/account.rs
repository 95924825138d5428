//! Signing in and out, and changing one's password.

use actix_web::cookie::{Cookie, SameSite, time::Duration as CookieDuration};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use askama::Template;
use serde::Deserialize;

use super::{Nav, WebError, html, html_status, see_other};
use crate::audit;
use crate::config::CookieSecure;
use crate::error::Error;
use crate::http::AppState;
use crate::http::auth::{
    LOGIN_CSRF_COOKIE, Mutation, SESSION_COOKIE, WebUser, attempt_login, source_addr,
};
use crate::secrets;
use crate::users::{self, sessions};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(login_page)
        .service(login_submit)
        .service(logout)
        .service(account_page)
        .service(password_submit);
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    csrf: String,
    next: String,
    username: String,
    error: Option<String>,
    css_tag: String,
}

#[derive(Debug, Deserialize)]
struct NextQuery {
    next: Option<String>,
}

/// Only local paths are followed after login.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.starts_with("/\\") => {
            n.to_string()
        }
        _ => "/".to_string(),
    }
}

fn secure(state: &AppState, req: &HttpRequest) -> bool {
    match state.settings.cookie_secure {
        CookieSecure::Always => true,
        CookieSecure::Never => false,
        CookieSecure::Auto => req.connection_info().scheme() == "https",
    }
}

fn login_form(
    req: &HttpRequest,
    state: &AppState,
    status: StatusCode,
    next: String,
    username: String,
    error: Option<String>,
) -> Result<HttpResponse, WebError> {
    let csrf = secrets::random_token();
    let page = LoginPage {
        csrf: csrf.clone(),
        next,
        username,
        error,
        css_tag: crate::http::assets::etag("drover.css").unwrap_or_default(),
    };
    let mut res = html_status(status, &page)?;
    let cookie = Cookie::build(LOGIN_CSRF_COOKIE, csrf)
        .path("/login")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure(state, req))
        .max_age(CookieDuration::hours(1))
        .finish();
    res.add_cookie(&cookie)
        .map_err(|e| WebError::Internal(e.to_string()))?;
    Ok(res)
}

#[get("/login")]
async fn login_page(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<NextQuery>,
) -> Result<HttpResponse, WebError> {
    login_form(
        &req,
        &state,
        StatusCode::OK,
        safe_next(query.next.as_deref()),
        String::new(),
        None,
    )
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    username: String,
    password: String,
    csrf_token: String,
    next: Option<String>,
}

#[post("/login")]
async fn login_submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    form: web::Form<LoginForm>,
) -> Result<HttpResponse, WebError> {
    let form = form.into_inner();
    let next = safe_next(form.next.as_deref());
    let cookie_ok = req.cookie(LOGIN_CSRF_COOKIE).is_some_and(|c| {
        secrets::constant_time_eq(c.value().as_bytes(), form.csrf_token.as_bytes())
    });
    if !cookie_ok {
        return login_form(
            &req,
            &state,
            StatusCode::FORBIDDEN,
            next,
            form.username,
            Some("The sign-in form expired; please try again.".into()),
        );
    }
    let user = match attempt_login(&state, &req, &form.username, &form.password).await {
        Ok(user) => user,
        Err(e @ (Error::Unauthorized(_) | Error::Throttled { .. })) => {
            let status = if matches!(e, Error::Throttled { .. }) {
                StatusCode::TOO_MANY_REQUESTS
            } else {
                StatusCode::UNAUTHORIZED
            };
            let message = match e {
                Error::Throttled { retry_after_s } => {
                    format!("Too many failed sign-ins. Try again in {retry_after_s} seconds.")
                }
                _ => "Wrong user name or password.".to_string(),
            };
            return login_form(&req, &state, status, next, form.username, Some(message));
        }
        Err(e) => return Err(e.into()),
    };
    let addr = source_addr(&req);
    let (cookie_value, _) = sessions::create(
        &state.store,
        &user.id,
        state.settings.session_ttl_hours,
        addr.as_deref(),
    )
    .await?;
    let target = if user.must_change_password {
        "/account".to_string()
    } else {
        next
    };
    let mut res = see_other(&target);
    let cookie = Cookie::build(SESSION_COOKIE, cookie_value)
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure(&state, &req))
        .max_age(CookieDuration::hours(i64::from(
            state.settings.session_ttl_hours,
        )))
        .finish();
    res.add_cookie(&cookie)
        .map_err(|e| WebError::Internal(e.to_string()))?;
    let mut gone = Cookie::build(LOGIN_CSRF_COOKIE, "").path("/login").finish();
    gone.make_removal();
    res.add_cookie(&gone)
        .map_err(|e| WebError::Internal(e.to_string()))?;
    Ok(res)
}

/// A form with nothing but the CSRF token.
#[derive(Debug, Deserialize)]
pub struct NoFields {}

#[post("/logout")]
async fn logout(
    state: web::Data<AppState>,
    req: HttpRequest,
    m: Mutation<NoFields>,
) -> Result<HttpResponse, WebError> {
    sessions::delete(&state.store, &m.who.session.id_hash).await?;
    audit::record(
        &state.store,
        &m.who.actor(&req),
        "auth.logout",
        None,
        audit::Outcome::Success,
        None,
    )
    .await;
    let mut res = see_other("/login");
    let mut gone = Cookie::build(SESSION_COOKIE, "").path("/").finish();
    gone.make_removal();
    res.add_cookie(&gone)
        .map_err(|e| WebError::Internal(e.to_string()))?;
    Ok(res)
}

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    nav: Nav,
    must_change: bool,
    error: Option<String>,
    notice: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DoneQuery {
    done: Option<String>,
}

#[get("/account")]
async fn account_page(
    who: WebUser,
    query: web::Query<DoneQuery>,
) -> Result<HttpResponse, WebError> {
    let notice = (query.done.as_deref() == Some("password"))
        .then(|| "Your password has been changed.".to_string());
    html(&AccountPage {
        nav: Nav::new(&who, "account"),
        must_change: who.user.must_change_password,
        error: None,
        notice,
    })
}

#[derive(Debug, Deserialize)]
struct PasswordForm {
    current_password: String,
    new_password: String,
    confirm_password: String,
}

#[post("/account/password")]
async fn password_submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    m: Mutation<PasswordForm>,
) -> Result<HttpResponse, WebError> {
    let Mutation { who, form } = m;
    let result = if form.new_password != form.confirm_password {
        Err(Error::invalid(
            "confirm_password",
            "does not match the new password",
        ))
    } else {
        users::change_password(
            &state.store,
            &who.user,
            &form.current_password,
            &form.new_password,
            Some(&who.session.id_hash),
        )
        .await
    };
    match audit::record_result(
        &state.store,
        &who.actor(&req),
        "user.password_change",
        Some(&who.user.username),
        result,
    )
    .await
    {
        Ok(()) => Ok(see_other("/account?done=password")),
        Err(e @ Error::Invalid { .. }) => html_status(
            StatusCode::BAD_REQUEST,
            &AccountPage {
                nav: Nav::new(&who, "account"),
                must_change: who.user.must_change_password,
                error: Some(e.to_string()),
                notice: None,
            },
        ),
        Err(e) => Err(e.into()),
    }
}
