//! The REST API under /api/v1: thin handlers over the domain modules, each
//! described by `#[utoipa::path]` and registered through utoipa-actix-web, so
//! the OpenAPI document is generated from the very routes that are served.

mod alerts;
mod audit;
mod bundles;
mod devices;
mod drift;
mod enrollment;
mod fleet;
mod keys;
mod rollouts;
mod telemetry;
mod webhooks;
pub use self::alerts::AlertQuery;
pub use self::audit::AuditQuery;
pub(crate) use self::bundles::{check_declared_length, file_response};
pub use self::devices::DeviceQuery;
pub use self::enrollment::{CreateEnrollmentToken, DurationInput, new_token};
mod auth;
mod tokens;
mod users;

use actix_web::{HttpResponse, get, web};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_actix_web::AppExt;
use utoipa_actix_web::scope::Scope;

use super::AppState;
use super::errors::{Problem, api_not_found};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Drover API",
        description = "Fleet management for IoT devices: identities, bundles, rollouts, telemetry. Authenticate with `POST /api/v1/auth/login` (JWT) or an API token, sent as `Authorization: Bearer`. Errors are `application/problem+json`.",
        license(name = "Apache-2.0")
    ),
    components(schemas(Problem)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A JWT from /api/v1/auth/login or an API token (drv_…)",
                    ))
                    .build(),
            ),
        );
    }
}

/// The /api/v1 scope with every endpoint.
pub fn scope() -> Scope<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    utoipa_actix_web::scope("/api/v1")
        .service(openapi_json)
        .configure(auth::routes)
        .configure(users::routes)
        .configure(tokens::routes)
        .configure(audit::routes)
        .configure(enrollment::routes)
        .configure(devices::routes)
        .configure(telemetry::routes)
        .configure(keys::routes)
        .configure(bundles::routes)
        .configure(rollouts::routes)
        .configure(webhooks::routes)
        .configure(alerts::routes)
        .configure(drift::routes)
        .configure(fleet::routes)
        .default_service(web::to(api_not_found))
}

/// The OpenAPI document, built from the same registrations the server uses.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, api) = actix_web::App::new()
        .into_utoipa_app()
        .openapi(ApiDoc::openapi())
        .service(scope())
        .split_for_parts();
    api
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(tag = "meta", responses((status = 200, description = "The OpenAPI document", content_type = "application/json")))]
#[get("/openapi.json")]
async fn openapi_json(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(state.openapi_json.clone())
}
