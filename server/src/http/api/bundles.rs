//! Artifacts and bundles: streamed uploads, bundles signed here or imported
//! pre-signed, and the `.drover` file. Viewers read; operators write.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, delete, get, post, web};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use crate::artifacts::{self, ArtifactView};
use crate::audit;
use crate::bundles::file::BundleFile;
use crate::bundles::{self, BundleDetail, BundleView, NewBundle};
use crate::error::Error;
use crate::http::AppState;
use crate::http::auth::Principal;
use crate::http::errors::{ApiResult, Problem};
use crate::http::json::Json;
use crate::paging::{PageQuery, Paged};
use crate::users::Role;

pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(upload_artifact)
        .service(list_artifacts)
        .service(delete_artifact)
        .service(create_bundle)
        .service(list_bundles)
        .service(get_bundle)
        .service(bundle_file)
        .service(delete_bundle);
}

/// Refuses a declared body over the limit before reading a byte of it.
pub(crate) fn check_declared_length(req: &HttpRequest, limit: u64) -> crate::error::Result<()> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(crate::blobs::too_large(limit));
    }
    Ok(())
}

/// Uploads an artifact: the body is the file, streamed to storage while it is
/// hashed. The same bytes again answer the existing artifact with 200 (operator).
#[utoipa::path(tag = "artifacts", security(("bearer" = [])),
    params(("X-Artifact-Name" = String, Header, description = "The file name: 1 to 200 characters, no '/', '\\' or control characters")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The file's bytes"),
    responses(
    (status = 201, body = ArtifactView, description = "Stored"),
    (status = 200, body = ArtifactView, description = "These bytes were uploaded before; the existing artifact"),
    (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
    (status = 413, body = Problem, description = "Larger than max_artifact_bytes; nothing was kept")))]
#[post("/artifacts")]
async fn upload_artifact(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: Principal,
    body: web::Payload,
) -> ApiResult<HttpResponse> {
    who.require(Role::Operator)?;
    let limit = state.settings.max_artifact_bytes;
    let raw_name = req.headers().get("x-artifact-name").map(|v| v.as_bytes());
    let result = async {
        let name = artifacts::parse_name("X-Artifact-Name", raw_name)?;
        check_declared_length(&req, limit)?;
        artifacts::upload(
            &state.store,
            &state.blobs,
            &name,
            body,
            limit,
            &who.actor().name,
        )
        .await
    }
    .await;
    let target = match &result {
        Ok((a, _)) => a.id.clone(),
        Err(_) => String::from_utf8_lossy(raw_name.unwrap_or_default())
            .chars()
            .take(200)
            .collect(),
    };
    let (artifact, created) = audit::record_result(
        &state.store,
        &who.actor(),
        "artifact.create",
        Some(&target),
        result,
    )
    .await?;
    let mut res = if created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(res.json(ArtifactView::from(artifact)))
}

/// Lists artifacts, newest first.
#[utoipa::path(tag = "artifacts", security(("bearer" = [])), params(PageQuery), responses(
    (status = 200, body = Paged<ArtifactView>), (status = 400, body = Problem), (status = 401, body = Problem)))]
#[get("/artifacts")]
async fn list_artifacts(
    state: web::Data<AppState>,
    _who: Principal,
    query: web::Query<PageQuery>,
) -> ApiResult<web::Json<Paged<ArtifactView>>> {
    let page = query.page()?;
    let (items, total) = artifacts::list(&state.store, page).await?;
    Ok(web::Json(page.wrap(
        items.into_iter().map(ArtifactView::from).collect(),
        total,
    )))
}

/// Deletes an artifact no bundle uses; its bytes go with it (operator).
#[utoipa::path(tag = "artifacts", security(("bearer" = [])), params(("id" = String, Path, description = "Artifact id")), responses(
    (status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
    (status = 409, body = Problem, description = "A bundle uses it")))]
#[delete("/artifacts/{id}")]
async fn delete_artifact(
    state: web::Data<AppState>,
    who: Principal,
    id: web::Path<String>,
) -> ApiResult<HttpResponse> {
    who.require(Role::Operator)?;
    let result = artifacts::delete(&state.store, &state.blobs, &id).await;
    audit::record_result(
        &state.store,
        &who.actor(),
        "artifact.delete",
        Some(&id),
        result,
    )
    .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// A bundle to build and sign on the server, or an envelope signed offline.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBundle {
    /// A DSSE envelope signed offline (`drover bundle sign`); alone, without the other fields.
    #[schema(value_type = Option<Object>)]
    envelope: Option<serde_json::Value>,
    /// Bundle name: a file name of 1 to 128 bytes.
    name: Option<String>,
    /// firmware, application, model, config or agent.
    kind: Option<String>,
    /// Semantic version, such as 1.2.0.
    version: Option<String>,
    /// Device types that may install it.
    device_types: Option<Vec<String>>,
    /// files, ab or script.
    installer: Option<String>,
    /// Artifact ids; each becomes a payload named after the artifact.
    artifacts: Option<Vec<String>>,
    /// Days until devices refuse it (1 to 3650, default 365).
    expires_in_days: Option<u32>,
    /// Lets devices install it over a newer version (default false).
    allow_downgrade: Option<bool>,
}

fn required<T>(field: &str, value: Option<T>) -> crate::error::Result<T> {
    value.ok_or_else(|| Error::invalid(field, "is required"))
}

/// Creates a bundle: built and signed with the server's active signing key,
/// or imported from an envelope signed offline, verified against the current
/// trust document either way. Name and version together are unique (operator).
#[utoipa::path(tag = "bundles", security(("bearer" = [])), request_body = CreateBundle, responses(
    (status = 201, body = BundleDetail), (status = 400, body = Problem), (status = 401, body = Problem),
    (status = 403, body = Problem), (status = 409, body = Problem, description = "This name and version exist"),
    (status = 422, body = Problem, description = "An unknown artifact or payload, or a refused signature")))]
#[post("/bundles")]
async fn create_bundle(
    state: web::Data<AppState>,
    who: Principal,
    body: Json<CreateBundle>,
) -> ApiResult<HttpResponse> {
    who.require(Role::Operator)?;
    let b = body.0;
    let actor = who.actor();
    let keyring = &state.identity.keys;
    let result = async {
        if let Some(envelope) = b.envelope {
            let others = b.name.is_some()
                || b.kind.is_some()
                || b.version.is_some()
                || b.device_types.is_some()
                || b.installer.is_some()
                || b.artifacts.is_some()
                || b.expires_in_days.is_some()
                || b.allow_downgrade.is_some();
            if others {
                return Err(Error::invalid(
                    "envelope",
                    "send a pre-signed envelope alone; the other fields are for bundles the server signs",
                ));
            }
            let bytes = serde_json::to_vec(&envelope).map_err(|e| Error::Internal(e.to_string()))?;
            return bundles::import(&state.store, keyring, &bytes, &actor.name).await;
        }
        let new = NewBundle {
            name: required("name", b.name)?,
            kind: required("kind", b.kind)?,
            version: required("version", b.version)?,
            device_types: required("device_types", b.device_types)?,
            installer: required("installer", b.installer)?,
            artifacts: required("artifacts", b.artifacts)?,
            expires_in_days: b.expires_in_days,
            allow_downgrade: b.allow_downgrade.unwrap_or(false),
        };
        bundles::create(&state.store, keyring, &new, &actor.name).await
    }
    .await;
    let target = result.as_ref().ok().map(|b| b.id.clone());
    let bundle = audit::record_result(
        &state.store,
        &actor,
        "bundle.create",
        target.as_deref(),
        result,
    )
    .await?;
    Ok(HttpResponse::Created().json(bundles::detail(&state.store, &bundle.id).await?))
}

/// Lists bundles, newest first.
#[utoipa::path(tag = "bundles", security(("bearer" = [])), params(PageQuery), responses(
    (status = 200, body = Paged<BundleView>), (status = 400, body = Problem), (status = 401, body = Problem)))]
#[get("/bundles")]
async fn list_bundles(
    state: web::Data<AppState>,
    _who: Principal,
    query: web::Query<PageQuery>,
) -> ApiResult<web::Json<Paged<BundleView>>> {
    let page = query.page()?;
    let (items, total) = bundles::list(&state.store, page).await?;
    Ok(web::Json(
        page.wrap(items.iter().map(BundleView::from).collect(), total),
    ))
}

/// One bundle with its payloads, manifest, envelope and signing key.
#[utoipa::path(tag = "bundles", security(("bearer" = [])), params(("id" = String, Path, description = "Bundle id")), responses(
    (status = 200, body = BundleDetail), (status = 401, body = Problem), (status = 404, body = Problem)))]
#[get("/bundles/{id}")]
async fn get_bundle(
    state: web::Data<AppState>,
    _who: Principal,
    id: web::Path<String>,
) -> ApiResult<web::Json<BundleDetail>> {
    Ok(web::Json(bundles::detail(&state.store, &id).await?))
}

/// The `.drover` file for offline installs: a tar of envelope.json,
/// trust.json and payloads/NAME, streamed.
#[utoipa::path(tag = "bundles", security(("bearer" = [])), params(("id" = String, Path, description = "Bundle id")), responses(
    (status = 200, description = "The tar archive", content_type = "application/x-tar"),
    (status = 401, body = Problem), (status = 404, body = Problem)))]
#[get("/bundles/{id}/file")]
async fn bundle_file(
    state: web::Data<AppState>,
    _who: Principal,
    id: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let file = bundles::file::bundle_file(&state.store, &state.blobs, &id).await?;
    Ok(file_response(file))
}

/// Streams a `.drover` file as a download of known length, never compressed.
pub(crate) fn file_response(file: BundleFile) -> HttpResponse {
    let safe: String = file
        .file_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    HttpResponse::Ok()
        .content_type("application/x-tar")
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{safe}\""),
        ))
        // Payloads are usually compressed already; and the length must hold.
        .insert_header((header::CONTENT_ENCODING, "identity"))
        .no_chunking(file.length)
        .streaming(file.stream)
}

/// Deletes a bundle; its artifacts stay (operator).
#[utoipa::path(tag = "bundles", security(("bearer" = [])), params(("id" = String, Path, description = "Bundle id")), responses(
    (status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
#[delete("/bundles/{id}")]
async fn delete_bundle(
    state: web::Data<AppState>,
    who: Principal,
    id: web::Path<String>,
) -> ApiResult<HttpResponse> {
    who.require(Role::Operator)?;
    let result = bundles::delete(&state.store, &id).await;
    audit::record_result(
        &state.store,
        &who.actor(),
        "bundle.delete",
        Some(&id),
        result,
    )
    .await?;
    Ok(HttpResponse::NoContent().finish())
}
