//! Signing keys and the trust document: list, rotate, revoke, and publish
//! a trust document signed offline by the root.

use actix_web::{HttpResponse, get, post, web};
use drover_proto::{Envelope, TrustDocument};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use crate::audit;
use crate::error::Error;
use crate::http::AppState;
use crate::http::auth::Principal;
use crate::http::errors::{ApiResult, Problem};
use crate::http::json::Json;
use crate::keys::{self, Change, KeyView};
use crate::paging::{PageQuery, Paged};
use crate::users::Role;

pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(list_keys)
        .service(rotate_key)
        .service(revoke_key)
        .service(get_trust)
        .service(publish_trust);
}

/// The current trust document.
#[derive(Debug, Serialize, ToSchema)]
pub struct TrustView {
    /// Its version.
    version: u64,
    /// The document (schema 1).
    #[schema(value_type = Object)]
    document: TrustDocument,
    /// The DSSE envelope agents receive.
    #[schema(value_type = Object)]
    envelope: serde_json::Value,
}

impl TrustView {
    fn new(envelope: &Envelope) -> ApiResult<TrustView> {
        let document = TrustDocument::from_json(envelope.payload())
            .map_err(|e| Error::Internal(format!("trust document: {e}")))?;
        let envelope = serde_json::from_str(&envelope.to_json())
            .map_err(|e| Error::Internal(format!("trust envelope: {e}")))?;
        Ok(TrustView {
            version: document.version,
            document,
            envelope,
        })
    }
}

/// What a key change did.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyChange {
    /// The new signing key, when one was created.
    keyid: Option<String>,
    /// True when the new trust document is signed and published; false when
    /// the root key is offline and the draft waits for `drover trust sign`.
    published: bool,
    /// The published document, when published.
    trust: Option<TrustView>,
    /// The unsigned next document, when the root is offline.
    #[schema(value_type = Option<Object>)]
    draft: Option<TrustDocument>,
    /// What to do next, in a sentence.
    message: String,
}

fn key_change(change: Change, keyid: Option<String>) -> ApiResult<(bool, KeyChange)> {
    Ok(match change {
        Change::Published(envelope) => {
            let trust = TrustView::new(&envelope)?;
            let message = format!(
                "trust document version {} is published; agents fetch it when told",
                trust.version
            );
            (
                true,
                KeyChange {
                    keyid,
                    published: true,
                    trust: Some(trust),
                    draft: None,
                    message,
                },
            )
        }
        Change::NeedsRootSignature { document, path } => (
            false,
            KeyChange {
                keyid,
                published: false,
                message: format!(
                    "the root key is offline: sign the draft (also written to {}) with `drover \
                     trust sign --root-key ROOT --document FILE` and POST the envelope to \
                     /api/v1/trust",
                    path.display()
                ),
                trust: None,
                draft: Some(*document),
            },
        ),
    })
}

/// Lists the signing keys the trust document names, revoked ones included (viewer).
#[utoipa::path(tag = "keys", security(("bearer" = [])), params(PageQuery), responses(
    (status = 200, body = Paged<KeyView>), (status = 401, body = Problem)))]
#[get("/keys")]
async fn list_keys(
    state: web::Data<AppState>,
    who: Principal,
    query: web::Query<PageQuery>,
) -> ApiResult<web::Json<Paged<KeyView>>> {
    who.require(Role::Viewer)?;
    let page = query.page()?;
    let all = keys::list(&state.store, &state.identity.keys).await?;
    let total = i64::try_from(all.len()).unwrap_or(i64::MAX);
    let items = all
        .into_iter()
        .skip(usize::try_from(page.offset()).unwrap_or(usize::MAX))
        .take(usize::try_from(page.limit()).unwrap_or(0))
        .collect();
    Ok(web::Json(page.wrap(items, total)))
}

/// Adds a signing key and retires the active one (admin). 201 when published;
/// 202 with the draft when the root key is offline.
#[utoipa::path(tag = "keys", security(("bearer" = [])), responses(
    (status = 201, body = KeyChange), (status = 202, body = KeyChange), (status = 401, body = Problem),
    (status = 403, body = Problem)))]
#[post("/keys/rotate")]
async fn rotate_key(state: web::Data<AppState>, who: Principal) -> ApiResult<HttpResponse> {
    who.require(Role::Admin)?;
    let result = keys::rotate(&state.store, &state.identity.keys).await;
    let (change, keyid) = audit::record_result(
        &state.store,
        &who.actor(),
        "keys.rotate",
        None,
        result.map(|(c, id)| (c, id.to_string())),
    )
    .await?;
    let (published, body) = key_change(change, Some(keyid))?;
    Ok(if published {
        HttpResponse::Created().json(body)
    } else {
        HttpResponse::Accepted().json(body)
    })
}

/// Revokes a signing key (admin): agents that take the next trust document
/// refuse everything it signed. 200 when published; 202 with the draft when
/// the root key is offline.
#[utoipa::path(tag = "keys", security(("bearer" = [])), params(("keyid" = String, Path, description = "Key id (hex sha256 of the public key)")), responses(
    (status = 200, body = KeyChange), (status = 202, body = KeyChange), (status = 400, body = Problem),
    (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
    (status = 409, body = Problem)))]
#[post("/keys/{keyid}/revoke")]
async fn revoke_key(
    state: web::Data<AppState>,
    who: Principal,
    keyid: web::Path<String>,
) -> ApiResult<HttpResponse> {
    who.require(Role::Admin)?;
    let result = keys::revoke(&state.store, &state.identity.keys, &keyid).await;
    let change = audit::record_result(
        &state.store,
        &who.actor(),
        "keys.revoke",
        Some(&keyid),
        result,
    )
    .await?;
    let (published, body) = key_change(change, None)?;
    Ok(if published {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::Accepted().json(body)
    })
}

/// The current trust document and its envelope (viewer).
#[utoipa::path(tag = "keys", security(("bearer" = [])), responses(
    (status = 200, body = TrustView), (status = 401, body = Problem)))]
#[get("/trust")]
async fn get_trust(state: web::Data<AppState>, who: Principal) -> ApiResult<web::Json<TrustView>> {
    who.require(Role::Viewer)?;
    let envelope = keys::current_trust(&state.store)
        .await?
        .ok_or_else(|| Error::Internal("no trust document".into()))?;
    Ok(web::Json(TrustView::new(&envelope)?))
}

/// Publishes a trust document envelope signed offline by the root (admin):
/// it must pass the checks agents make (signed by the current root, by both
/// roots for a root change; a newer version; not expired).
#[utoipa::path(tag = "keys", security(("bearer" = [])), request_body(content = Object, description = "The DSSE envelope printed by `drover trust sign`"), responses(
    (status = 201, body = TrustView), (status = 400, body = Problem), (status = 401, body = Problem),
    (status = 403, body = Problem), (status = 409, body = Problem)))]
#[post("/trust")]
async fn publish_trust(
    state: web::Data<AppState>,
    who: Principal,
    body: Json<serde_json::Value>,
) -> ApiResult<HttpResponse> {
    who.require(Role::Admin)?;
    let bytes = serde_json::to_vec(&body.0)
        .map_err(|e| Error::Internal(format!("re-encoding the body: {e}")))?;
    let result = match Envelope::from_json(&bytes) {
        Ok(envelope) => keys::publish(&state.store, &envelope).await,
        Err(e) => Err(Error::invalid("envelope", e.to_string())),
    };
    let published =
        audit::record_result(&state.store, &who.actor(), "trust.publish", None, result).await?;
    Ok(HttpResponse::Created().json(TrustView::new(&published)?))
}
