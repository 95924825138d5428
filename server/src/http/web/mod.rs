//! The operator dashboard: server-rendered askama pages with htmx. Every page
//! needs a session; every state-changing request also needs the session's
//! CSRF token (see `http::auth::Mutation`).

mod account;
mod admin;
mod alerts;
mod bundles;
mod devices;
mod enrollment;
mod fleet;
mod live;
mod pages;
mod rollouts;
mod webhooks;

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use askama::Template;

use super::auth::WebUser;
use crate::users::Role;

/// Registers every dashboard route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    account::routes(cfg);
    alerts::routes(cfg);
    admin::routes(cfg);
    bundles::routes(cfg);
    rollouts::routes(cfg);
    webhooks::routes(cfg);
    devices::routes(cfg);
    enrollment::routes(cfg);
    fleet::routes(cfg);
    live::routes(cfg);
    pages::routes(cfg);
}

/// The navigation and identity every signed-in page shows.
#[derive(Debug, Clone)]
pub struct Nav {
    /// Who is signed in.
    pub username: String,
    /// Their role.
    pub role: Role,
    /// The session's CSRF token, for forms and htmx.
    pub csrf: String,
    /// The section shown.
    pub active: &'static str,
    /// Cache-busting tag of the stylesheet.
    pub css_tag: String,
    /// Cache-busting tag of the scripts.
    pub js_tag: String,
    /// Alerts firing now.
    pub firing_alerts: i64,
}

impl Nav {
    /// Navigation for a user on a section.
    pub fn new(who: &WebUser, active: &'static str) -> Nav {
        Nav {
            username: who.user.username.clone(),
            role: who.role(),
            csrf: who.session.csrf_token.clone(),
            active,
            css_tag: super::assets::etag("drover.css").unwrap_or_default(),
            js_tag: super::assets::etag("drover.js").unwrap_or_default(),
            firing_alerts: who.firing_alerts,
        }
    }

    /// Cache-busting tag of any embedded asset (empty for an unknown name).
    pub fn asset_tag(&self, name: &str) -> String {
        super::assets::etag(name).unwrap_or_default()
    }

    /// True for operators and admins (shows controls that change the fleet).
    pub fn can_operate(&self) -> bool {
        self.role >= Role::Operator
    }

    /// True for admins (shows user and key management).
    pub fn is_admin(&self) -> bool {
        self.role >= Role::Admin
    }

    /// The sections in navigation order: (path, label, key).
    pub fn sections(&self) -> &'static [(&'static str, &'static str, &'static str)] {
        &[
            ("/", "Overview", "overview"),
            ("/devices", "Devices", "devices"),
            ("/bundles", "Bundles", "bundles"),
            ("/rollouts", "Rollouts", "rollouts"),
            ("/alerts", "Alerts", "alerts"),
            ("/webhooks", "Webhooks", "webhooks"),
            ("/tokens", "Tokens", "tokens"),
            ("/users", "Users", "users"),
            ("/audit", "Audit log", "audit"),
        ]
    }
}

/// Why a dashboard request did not succeed.
#[derive(Debug)]
pub enum WebError {
    /// No valid session: go to the login page, then back.
    LoginRequired(Option<String>),
    /// Go elsewhere first (the one-time password must be changed).
    Redirect(String),
    /// Missing or wrong CSRF token.
    Csrf,
    /// Signed in but not allowed.
    Forbidden(String),
    /// No such page or thing.
    NotFound(String),
    /// A form that cannot be used.
    BadInput(String),
    /// Our fault.
    Internal(String),
}

impl std::fmt::Display for WebError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WebError::LoginRequired(_) => f.write_str("please sign in"),
            WebError::Redirect(to) => write!(f, "continue at {to}"),
            WebError::Csrf => f.write_str(
                "this form has expired or did not come from this site; reload the page and try again",
            ),
            WebError::Forbidden(m) | WebError::NotFound(m) | WebError::BadInput(m) => f.write_str(m),
            WebError::Internal(_) => f.write_str("something went wrong on the server; see its log"),
        }
    }
}

impl From<crate::error::Error> for WebError {
    fn from(e: crate::error::Error) -> Self {
        use crate::error::Error;
        match e {
            Error::NotFound(m) => WebError::NotFound(m),
            Error::Forbidden(m) | Error::Unauthorized(m) => WebError::Forbidden(m),
            Error::Invalid { .. }
            | Error::Conflict(_)
            | Error::Throttled { .. }
            | Error::TooLarge(_)
            | Error::Unprocessable(_) => WebError::BadInput(e.to_string()),
            Error::Store(e) => WebError::Internal(e.to_string()),
            Error::Internal(m) => WebError::Internal(m),
        }
    }
}

impl From<askama::Error> for WebError {
    fn from(e: askama::Error) -> Self {
        WebError::Internal(format!("template: {e}"))
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    status: u16,
    title: String,
    message: String,
}

impl ResponseError for WebError {
    fn status_code(&self) -> StatusCode {
        match self {
            WebError::LoginRequired(_) | WebError::Redirect(_) => StatusCode::SEE_OTHER,
            WebError::Csrf | WebError::Forbidden(_) => StatusCode::FORBIDDEN,
            WebError::NotFound(_) => StatusCode::NOT_FOUND,
            WebError::BadInput(_) => StatusCode::BAD_REQUEST,
            WebError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let WebError::LoginRequired(next) = self {
            let target = match next.as_deref() {
                Some(n) if n != "/" && n.starts_with('/') && !n.starts_with("//") => {
                    format!("/login?next={}", urlencode(n))
                }
                _ => "/login".to_string(),
            };
            return HttpResponse::SeeOther()
                .insert_header((header::LOCATION, target.clone()))
                .insert_header(("HX-Redirect", target))
                .finish();
        }
        if let WebError::Redirect(to) = self {
            return HttpResponse::SeeOther()
                .insert_header((header::LOCATION, to.clone()))
                .insert_header(("HX-Redirect", to.clone()))
                .finish();
        }
        if let WebError::Internal(m) = self {
            tracing::error!(error = %m, "dashboard error");
        }
        let status = self.status_code();
        let page = ErrorPage {
            status: status.as_u16(),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            message: self.to_string(),
        };
        HttpResponse::build(status)
            .content_type("text/html; charset=utf-8")
            .body(page.render().unwrap_or_else(|_| self.to_string()))
    }
}

/// Renders a template as a 200 page.
pub fn html(t: &impl Template) -> Result<HttpResponse, WebError> {
    html_status(StatusCode::OK, t)
}

/// Renders a template with a status (a form re-shown with its error, say).
pub fn html_status(status: StatusCode, t: &impl Template) -> Result<HttpResponse, WebError> {
    Ok(HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(t.render()?))
}

/// 303 to a dashboard path after a successful form.
pub fn see_other(path: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, path.to_string()))
        .finish()
}

/// Answers dashboard paths that match no route.
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, actix_web::Error> {
    if req.path().starts_with("/api/") {
        return Ok(super::errors::api_not_found(req).await);
    }
    Ok(WebError::NotFound(format!("there is no page at {}", req.path())).error_response())
}

/// A link to `page` of a filtered list, keeping the filters.
pub fn page_link(base: &str, filters: &[(&str, &str)], page: i64) -> String {
    let page = page.to_string();
    let mut pairs: Vec<(&str, &str)> = filters.to_vec();
    pairs.push(("page", &page));
    format!(
        "{base}?{}",
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    )
}

/// Percent-encodes a query value.
pub fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("v", s)])
        .map(|q| q.trim_start_matches("v=").to_string())
        .unwrap_or_default()
}
