//! Bundles in the dashboard: the list with the artifacts they are made from,
//! a bundle's page, the create form, deletion, the `.drover` download, and
//! artifact upload. The upload is streamed by a small script
//! (`static/upload.js`, XMLHttpRequest for its progress events) to a route
//! here that checks the session's CSRF token in a header, since the body is
//! the file itself and not a form.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use askama::Template;
use serde::Deserialize;

use super::account::NoFields;
use super::{Nav, WebError, html_status, see_other};
use crate::artifacts::{self, ArtifactView};
use crate::audit;
use crate::bundles::{self, BundleView, NewBundle, PayloadView};
use crate::error::Error;
use crate::http::AppState;
use crate::http::api::{check_declared_length, file_response};
use crate::http::auth::{Mutation, WebUser};
use crate::http::errors::ApiError;
use crate::paging::{Page, PageQuery};
use crate::secrets;
use crate::users::Role;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(bundles_page)
        .service(bundle_create)
        .service(artifact_upload)
        .service(artifact_delete)
        .service(bundle_page)
        .service(bundle_delete)
        .service(bundle_download);
}

/// Human-readable bytes (1.5 MiB).
pub fn human_size(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[derive(Template)]
#[template(path = "bundles.html")]
struct BundlesPage {
    nav: Nav,
    bundles: Vec<BundleView>,
    artifacts: Vec<ArtifactView>,
    kinds: [&'static str; 5],
    installers: [&'static str; 3],
    page: u32,
    pages: i64,
    total: i64,
    max_upload: String,
    error: Option<String>,
    notice: Option<String>,
}

impl BundlesPage {
    fn size(&self, bytes: &i64) -> String {
        human_size(*bytes)
    }

    fn page_link(&self, page: i64) -> String {
        super::page_link("/bundles", &[], page)
    }

    /// The first 16 characters of a digest or key id, for narrow columns.
    fn short(&self, hex: &str) -> String {
        hex.chars().take(16).collect()
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    page: Option<String>,
    per_page: Option<String>,
    done: Option<String>,
}

fn notice(done: Option<&str>) -> Option<String> {
    let text = match done? {
        "deleted" => "Bundle deleted.",
        "artifact-deleted" => "Artifact deleted.",
        _ => return None,
    };
    Some(text.to_string())
}

async fn render_list(
    state: &AppState,
    who: &WebUser,
    page: Page,
    status: StatusCode,
    error: Option<String>,
    notice: Option<String>,
) -> Result<HttpResponse, WebError> {
    let (items, total) = bundles::list(&state.store, page).await?;
    // The create form offers the newest artifacts; older ones are a page of the API away.
    let (artifacts, _) = artifacts::list(
        &state.store,
        Page {
            page: 1,
            per_page: 500,
        },
    )
    .await?;
    html_status(
        status,
        &BundlesPage {
            nav: Nav::new(who, "bundles"),
            bundles: items.iter().map(BundleView::from).collect(),
            artifacts: artifacts.into_iter().map(ArtifactView::from).collect(),
            kinds: ["firmware", "application", "model", "config", "agent"],
            installers: ["files", "ab", "script"],
            page: page.page,
            pages: page.pages(total),
            total,
            max_upload: human_size(
                i64::try_from(state.settings.max_artifact_bytes).unwrap_or(i64::MAX),
            ),
            error,
            notice,
        },
    )
}

#[get("/bundles")]
async fn bundles_page(
    state: web::Data<AppState>,
    who: WebUser,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, WebError> {
    let page = PageQuery {
        page: query.page.clone(),
        per_page: query.per_page.clone(),
    }
    .page()
    .map_err(WebError::from)?;
    render_list(
        &state,
        &who,
        page,
        StatusCode::OK,
        None,
        notice(query.done.as_deref()),
    )
    .await
}

/// The create form: repeated `artifact` fields, so it arrives as pairs.
fn new_bundle(fields: &[(String, String)]) -> NewBundle {
    let one = |key: &str| {
        fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    NewBundle {
        name: one("name"),
        kind: one("kind"),
        version: one("version"),
        device_types: one("device_types")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        installer: one("installer"),
        artifacts: fields
            .iter()
            .filter(|(k, _)| k == "artifact")
            .map(|(_, v)| v.clone())
            .collect(),
        expires_in_days: None,
        allow_downgrade: one("allow_downgrade") == "on",
    }
}

#[post("/bundles")]
async fn bundle_create(
    state: web::Data<AppState>,
    req: HttpRequest,
    m: Mutation<Vec<(String, String)>>,
) -> Result<HttpResponse, WebError> {
    let Mutation { who, form } = m;
    who.require(Role::Operator)?;
    let actor = who.actor(&req);
    let result = async {
        let mut new = new_bundle(&form);
        let days = form
            .iter()
            .find(|(k, _)| k == "expires_in_days")
            .map(|(_, v)| v.trim())
            .unwrap_or("");
        if !days.is_empty() {
            new.expires_in_days = Some(days.parse::<u32>().map_err(|_| {
                Error::invalid(
                    "expires_in_days",
                    "use a whole number of days from 1 to 3650",
                )
            })?);
        }
        bundles::create(&state.store, &state.identity.keys, &new, &actor.name).await
    }
    .await;
    let target = result.as_ref().ok().map(|b| b.id.clone());
    match audit::record_result(
        &state.store,
        &actor,
        "bundle.create",
        target.as_deref(),
        result,
    )
    .await
    {
        Ok(bundle) => Ok(see_other(&format!("/bundles/{}?done=created", bundle.id))),
        Err(e @ (Error::Invalid { .. } | Error::Conflict(_) | Error::Unprocessable(_))) => {
            render_list(
                &state,
                &who,
                Page::default(),
                StatusCode::BAD_REQUEST,
                Some(e.to_string()),
                None,
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize)]
struct UploadQuery {
    name: Option<String>,
}

/// The dashboard's upload: the body is the file; the name comes in the query
/// (a header cannot carry every file name a browser may have), the CSRF token
/// in `X-CSRF-Token`. Answers JSON, as the API does, for the script to read.
#[post("/bundles/artifacts")]
async fn artifact_upload(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: WebUser,
    query: web::Query<UploadQuery>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let presented = req
        .headers()
        .get("x-csrf-token")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !secrets::constant_time_eq(presented, who.session.csrf_token.as_bytes()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            WebError::Csrf.to_string(),
        ));
    }
    if who.role() < Role::Operator {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("this needs the operator role; you are a {}", who.role()),
        ));
    }
    let limit = state.settings.max_artifact_bytes;
    let actor = who.actor(&req);
    let result = async {
        let name = artifacts::parse_name("name", query.name.as_deref().map(str::as_bytes))?;
        check_declared_length(&req, limit)?;
        artifacts::upload(&state.store, &state.blobs, &name, body, limit, &actor.name).await
    }
    .await;
    let target = match &result {
        Ok((a, _)) => a.id.clone(),
        Err(_) => query
            .name
            .clone()
            .unwrap_or_default()
            .chars()
            .take(200)
            .collect(),
    };
    let (artifact, created) = audit::record_result(
        &state.store,
        &actor,
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

#[post("/bundles/artifacts/{id}/delete")]
async fn artifact_delete(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    m: Mutation<NoFields>,
) -> Result<HttpResponse, WebError> {
    let who = m.who;
    who.require(Role::Operator)?;
    let result = artifacts::delete(&state.store, &state.blobs, &id).await;
    match audit::record_result(
        &state.store,
        &who.actor(&req),
        "artifact.delete",
        Some(&id),
        result,
    )
    .await
    {
        Ok(_) => Ok(see_other("/bundles?done=artifact-deleted")),
        Err(e @ Error::Conflict(_)) => {
            render_list(
                &state,
                &who,
                Page::default(),
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
#[template(path = "bundle.html")]
struct BundlePage {
    nav: Nav,
    bundle: BundleView,
    payloads: Vec<PayloadView>,
    signed_at: String,
    allow_downgrade: bool,
    envelope: String,
    notice: Option<String>,
    error: Option<String>,
}

impl BundlePage {
    fn size(&self, bytes: &i64) -> String {
        human_size(*bytes)
    }
}

#[derive(Debug, Deserialize)]
struct DoneQuery {
    done: Option<String>,
}

#[get("/bundles/{id}")]
async fn bundle_page(
    state: web::Data<AppState>,
    who: WebUser,
    id: web::Path<String>,
    query: web::Query<DoneQuery>,
) -> Result<HttpResponse, WebError> {
    let bundle = bundles::get(&state.store, &id).await?;
    let manifest = bundle.manifest()?;
    let envelope: serde_json::Value =
        serde_json::from_str(&bundle.envelope).map_err(|e| WebError::Internal(e.to_string()))?;
    html_status(
        StatusCode::OK,
        &BundlePage {
            nav: Nav::new(&who, "bundles"),
            payloads: bundles::payloads(&state.store, &id).await?,
            bundle: BundleView::from(&bundle),
            signed_at: manifest.created_at.to_string(),
            allow_downgrade: manifest.allow_downgrade,
            envelope: serde_json::to_string_pretty(&envelope).unwrap_or_default(),
            notice: (query.done.as_deref() == Some("created"))
                .then(|| "Bundle created and signed.".to_string()),
            error: None,
        },
    )
}

#[post("/bundles/{id}/delete")]
async fn bundle_delete(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    m: Mutation<NoFields>,
) -> Result<HttpResponse, WebError> {
    let who = m.who;
    who.require(Role::Operator)?;
    let result = bundles::delete(&state.store, &id).await;
    audit::record_result(
        &state.store,
        &who.actor(&req),
        "bundle.delete",
        Some(&id),
        result,
    )
    .await?;
    Ok(see_other("/bundles?done=deleted"))
}

#[get("/bundles/{id}/download")]
async fn bundle_download(
    state: web::Data<AppState>,
    _who: WebUser,
    id: web::Path<String>,
) -> Result<HttpResponse, WebError> {
    let file = bundles::file::bundle_file(&state.store, &state.blobs, &id).await?;
    Ok(file_response(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(human_size(0), "0 bytes");
        assert_eq!(human_size(1023), "1023 bytes");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(4 << 30), "4.0 GiB");
    }

    #[test]
    fn the_form_collects_repeated_artifacts_and_device_types() {
        let pairs = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        let new = new_bundle(&pairs(&[
            ("name", " det "),
            ("device_types", "rpi4, jetson ,"),
            ("artifact", "a"),
            ("artifact", "b"),
            ("allow_downgrade", "on"),
        ]));
        assert_eq!(new.name, "det");
        assert_eq!(new.device_types, ["rpi4", "jetson"]);
        assert_eq!(new.artifacts, ["a", "b"]);
        assert!(new.allow_downgrade);
    }
}
