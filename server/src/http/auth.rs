//! Who is calling. The API takes `Authorization: Bearer` with a JWT or an API
//! token; the dashboard takes its session cookie, and every state-changing
//! dashboard request must also carry the session's CSRF token (form field
//! `csrf_token` or header `X-CSRF-Token`, which htmx sends).

use actix_web::dev::Payload;
use actix_web::http::{StatusCode, header};
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use futures_util::StreamExt;
use futures_util::future::LocalBoxFuture;
use serde::de::DeserializeOwned;

use super::AppState;
use super::errors::ApiError;
use super::web::WebError;
use crate::audit::{self, Actor, Outcome};
use crate::error::Error;
use crate::secrets;
use crate::users::{self, Role, User, api_tokens, sessions::Session};

/// Name of the dashboard session cookie.
pub const SESSION_COOKIE: &str = "drover_session";
/// Name of the pre-login CSRF cookie (double submit on the login form).
pub const LOGIN_CSRF_COOKIE: &str = "drover_login_csrf";

/// An authenticated API caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The user acting (a token acts for its owner).
    pub user_id: String,
    /// Their name.
    pub username: String,
    /// Effective role: the token's role, never above its owner's current role.
    pub role: Role,
    /// The API token's name, when one was used.
    pub token_name: Option<String>,
    /// Client address.
    pub source_addr: Option<String>,
}

impl Principal {
    /// Refuses with 403 unless the caller has at least `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("this needs the {role} role; you act as {}", self.role),
            ))
        }
    }

    /// The audit actor for this caller.
    pub fn actor(&self) -> Actor {
        let name = match &self.token_name {
            Some(t) => format!("token:{t} (user:{})", self.username),
            None => format!("user:{}", self.username),
        };
        Actor {
            name,
            source_addr: self.source_addr.clone(),
        }
    }
}

/// The client's address as this server saw it (proxies' headers are not trusted).
pub fn source_addr(req: &HttpRequest) -> Option<String> {
    req.peer_addr().map(|a| a.ip().to_string())
}

impl FromRequest for Principal {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let state = req
                .app_data::<web::Data<AppState>>()
                .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no app state"))?
                .clone();
            let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, m);
            let value = req
                .headers()
                .get(header::AUTHORIZATION)
                .ok_or_else(|| {
                    unauthorized("send Authorization: Bearer with a token from POST /api/v1/auth/login or an API token")
                })?
                .to_str()
                .map_err(|_| unauthorized("the Authorization header is not readable text"))?;
            let token = value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
                .map(str::trim)
                .ok_or_else(|| unauthorized("the Authorization header must be 'Bearer TOKEN'"))?;
            let (user, role, token_name) = if token.starts_with(api_tokens::PREFIX) {
                let t = api_tokens::authenticate(&state.store, token).await?;
                let user = load_user(&state, &t.user_id).await?;
                let token_role = Role::parse("role", &t.role).unwrap_or(Role::Viewer);
                let role = token_role.min(user.role());
                (user, role, Some(t.name))
            } else {
                let claims = state.jwt.verify(token)?;
                let user = load_user(&state, &claims.sub).await?;
                let role = user.role();
                (user, role, None)
            };
            let principal = Principal {
                user_id: user.id,
                username: user.username,
                role,
                token_name,
                source_addr: source_addr(&req),
            };
            req.extensions_mut().insert(principal.clone());
            Ok(principal)
        })
    }
}

async fn load_user(state: &AppState, id: &str) -> Result<User, ApiError> {
    users::get(&state.store, id).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "the account behind this token no longer exists",
        )
    })
}

/// A dashboard user with a live session.
#[derive(Debug, Clone)]
pub struct WebUser {
    /// The account.
    pub user: User,
    /// The session (holds the CSRF token).
    pub session: Session,
    /// Alerts firing as the request arrived (the navigation shows the count).
    pub firing_alerts: i64,
}

impl WebUser {
    /// The user's role.
    pub fn role(&self) -> Role {
        self.user.role()
    }

    /// Refuses with 403 unless the user has at least `role`.
    pub fn require(&self, role: Role) -> Result<(), WebError> {
        if self.role() >= role {
            Ok(())
        } else {
            Err(WebError::Forbidden(format!(
                "this needs the {role} role; you are a {}",
                self.role()
            )))
        }
    }

    /// The audit actor.
    pub fn actor(&self, req: &HttpRequest) -> Actor {
        Actor {
            name: format!("user:{}", self.user.username),
            source_addr: source_addr(req),
        }
    }
}

impl FromRequest for WebUser {
    type Error = WebError;
    type Future = LocalBoxFuture<'static, Result<Self, WebError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move { web_user(&req).await })
    }
}

async fn web_user(req: &HttpRequest) -> Result<WebUser, WebError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| WebError::Internal("no app state".into()))?;
    let login = || WebError::LoginRequired(req.uri().path_and_query().map(|p| p.to_string()));
    let cookie = req.cookie(SESSION_COOKIE).ok_or_else(login)?;
    let session = users::sessions::find(&state.store, cookie.value())
        .await
        .map_err(WebError::from)?
        .ok_or_else(login)?;
    let user = users::get(&state.store, &session.user_id)
        .await
        .map_err(WebError::from)?
        .ok_or_else(login)?;
    let path = req.path();
    if user.must_change_password && !(path.starts_with("/account") || path == "/logout") {
        return Err(WebError::Redirect("/account".into()));
    }
    Ok(WebUser {
        user,
        session,
        firing_alerts: state.alerts.firing(),
    })
}

/// A state-changing dashboard request: a signed-in user, a valid CSRF token, and the form `T`.
#[derive(Debug)]
pub struct Mutation<T> {
    /// Who.
    pub who: WebUser,
    /// The submitted form (without the CSRF field).
    pub form: T,
}

/// Largest dashboard form body.
const FORM_LIMIT: usize = 64 * 1024;

impl<T: DeserializeOwned + 'static> FromRequest for Mutation<T> {
    type Error = WebError;
    type Future = LocalBoxFuture<'static, Result<Self, WebError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let mut payload = payload.take();
        Box::pin(async move {
            let mut body = web::BytesMut::new();
            while let Some(chunk) = payload.next().await {
                let chunk = chunk
                    .map_err(|e| WebError::BadInput(format!("reading the form failed: {e}")))?;
                if body.len() + chunk.len() > FORM_LIMIT {
                    return Err(WebError::BadInput("the form is too large".into()));
                }
                body.extend_from_slice(&chunk);
            }
            let who = web_user(&req).await?;
            let fields: Vec<(String, String)> =
                serde_urlencoded::from_bytes(&body).unwrap_or_default();
            let presented = req
                .headers()
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .or_else(|| {
                    fields
                        .iter()
                        .find(|(k, _)| k == "csrf_token")
                        .map(|(_, v)| v.clone())
                });
            let valid = presented.is_some_and(|p| {
                secrets::constant_time_eq(p.as_bytes(), who.session.csrf_token.as_bytes())
            });
            if !valid {
                return Err(WebError::Csrf);
            }
            let form = serde_urlencoded::from_bytes::<T>(&body)
                .map_err(|e| WebError::BadInput(format!("the form is incomplete: {e}")))?;
            Ok(Mutation { who, form })
        })
    }
}

/// Outcome of a login attempt, shared by the API and the dashboard form.
pub async fn attempt_login(
    state: &AppState,
    req: &HttpRequest,
    username: &str,
    password: &str,
) -> Result<users::User, Error> {
    let addr = source_addr(req).unwrap_or_default();
    let now = std::time::Instant::now();
    let name: String = username.chars().take(64).collect();
    let actor = Actor {
        name: format!("user:{name}"),
        source_addr: source_addr(req),
    };
    if let Some(retry_after_s) = state.throttle.check(&name, &addr, now) {
        audit::record(
            &state.store,
            &actor,
            "auth.login",
            None,
            Outcome::Denied,
            Some("throttled"),
        )
        .await;
        return Err(Error::Throttled { retry_after_s });
    }
    match users::authenticate(&state.store, &name, password).await {
        Ok(user) => {
            state.throttle.succeed(&name);
            audit::record(
                &state.store,
                &actor,
                "auth.login",
                None,
                Outcome::Success,
                None,
            )
            .await;
            Ok(user)
        }
        Err(Error::Unauthorized(m)) => {
            state.throttle.fail(&name, &addr, now);
            audit::record(
                &state.store,
                &actor,
                "auth.login",
                None,
                Outcome::Denied,
                Some(&m),
            )
            .await;
            Err(Error::Unauthorized(m))
        }
        Err(e) => Err(e),
    }
}
