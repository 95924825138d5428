//! The HTTP side for people and scripts: the REST API under /api/v1, the
//! dashboard, static assets, health and metrics. Handlers here parse and
//! authorize, call domain functions, and render; they hold no SQL.

pub mod api;
pub mod assets;
pub mod auth;
pub mod device;
pub mod errors;
pub mod json;
pub mod metrics;
pub mod web;

use std::sync::Arc;
use std::time::Instant;

use actix_web::dev::Service;
use actix_web::http::{Method, StatusCode, header};
use actix_web::middleware::{Compress, DefaultHeaders};
use actix_web::{App, HttpMessage, HttpResponse, get, web as aw};
use utoipa_actix_web::AppExt;

use crate::audit::{self, Outcome};
use crate::config::Settings;
use crate::store::Store;
use crate::users::jwt::JwtKeys;
use crate::users::throttle::LoginThrottle;

/// Everything a handler may need, shared by all workers.
pub struct AppState {
    /// The store.
    pub store: Store,
    /// Validated settings.
    pub settings: Arc<Settings>,
    /// JWT signing keys.
    pub jwt: JwtKeys,
    /// Failed-login counters.
    pub throttle: LoginThrottle,
    /// HTTP metrics.
    pub metrics: metrics::Metrics,
    /// The OpenAPI document, rendered once.
    pub openapi_json: String,
    /// Enrollment, devices and certificates.
    pub identity: std::sync::Arc<crate::identity::enroll::Identity>,
    /// The device API's URL as devices reach it (for join commands).
    pub device_url: String,
    /// Interned metric names (for telemetry queries).
    pub catalog: std::sync::Arc<crate::telemetry::Catalog>,
    /// Ingest counters.
    pub ingest: std::sync::Arc<crate::telemetry::ingest::IngestMetrics>,
    /// Artifact bytes.
    pub blobs: crate::blobs::BlobStore,
    /// The MQTT gateway's counters (embedded broker only).
    pub gateway: Option<std::sync::Arc<crate::mqtt::gateway::GatewayMetrics>>,
    /// Wakes the rollout engine (a rollout created or controlled).
    pub rollouts: std::sync::Arc<tokio::sync::Notify>,
    /// Changes for the dashboard's live pages.
    pub live: crate::live::Live,
    /// Alert rules' evaluation (reloaded when a rule changes).
    pub alerts: std::sync::Arc<crate::alerts::engine::Engine>,
}

/// Builds the actix app for one worker; `HttpServer::new` calls it per worker.
pub fn app(
    state: aw::Data<AppState>,
) -> App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let json_limit = aw::Data::new(json::JsonLimit(state.settings.max_json_bytes));
    let (app, _) = App::new()
        .into_utoipa_app()
        .app_data(state.clone())
        .app_data(json_limit)
        .app_data(aw::QueryConfig::default().error_handler(errors::query_error))
        .app_data(aw::PathConfig::default().error_handler(errors::path_error))
        .service(api::scope())
        .split_for_parts();
    let observed = state.clone();
    app.service(healthz)
        .service(readyz)
        .service(metrics_endpoint)
        .service(assets::serve)
        .configure(web::routes)
        .default_service(aw::to(web::not_found))
        .wrap(Compress::default())
        .wrap(
            DefaultHeaders::new()
                .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
                .add((header::REFERRER_POLICY, "same-origin"))
                .add((header::X_FRAME_OPTIONS, "DENY"))
                .add((
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
                )),
        )
        .wrap_fn(move |req, srv| {
            let started = Instant::now();
            let state = observed.clone();
            let method = req.method().clone();
            let fut = srv.call(req);
            async move {
                let res = fut.await?;
                let route = res
                    .request()
                    .match_pattern()
                    .unwrap_or_else(|| "unmatched".to_string());
                let status = res.status();
                state
                    .metrics
                    .observe(&route, method.as_str(), status.as_u16(), started.elapsed());
                if status == StatusCode::FORBIDDEN && is_mutation(&method) {
                    let principal = res.request().extensions().get::<auth::Principal>().cloned();
                    if let Some(p) = principal {
                        let action = format!("{} {route}", method.as_str());
                        let path = res.request().path().to_string();
                        audit::record(&state.store, &p.actor(), &action, Some(&path), Outcome::Denied, Some("missing role"))
                            .await;
                    }
                }
                Ok(res)
            }
        })
}

fn is_mutation(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Liveness: the process answers.
#[get("/healthz")]
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

/// Readiness: the store answers.
#[get("/readyz")]
async fn readyz(state: aw::Data<AppState>) -> HttpResponse {
    if state.store.ping().await {
        HttpResponse::Ok()
            .content_type("text/plain")
            .body("ready\n")
    } else {
        HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("the database does not answer\n")
    }
}

/// Prometheus text metrics.
#[get("/metrics")]
async fn metrics_endpoint(state: aw::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(format!(
            "{}{}{}",
            state.metrics.render(&state.store),
            state.ingest.render(),
            state
                .gateway
                .as_ref()
                .map(|g| g.render())
                .unwrap_or_default()
        ))
}
