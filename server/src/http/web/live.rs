//! `GET /live`: the Server-Sent Events every dashboard page listens to (see `crate::live`).

use actix_web::http::header;
use actix_web::{HttpResponse, get, web};
use serde::Deserialize;

use super::WebError;
use crate::http::AppState;
use crate::http::auth::WebUser;
use crate::live::Focus;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(live);
}

#[derive(Debug, Deserialize)]
struct LiveQuery {
    device: Option<String>,
    rollout: Option<String>,
}

/// Any signed-in role may listen: the notes carry nothing the pages do not show.
#[get("/live")]
async fn live(
    state: web::Data<AppState>,
    _who: WebUser,
    query: web::Query<LiveQuery>,
) -> Result<HttpResponse, WebError> {
    let id = |v: &Option<String>, what: &str| -> Result<Option<String>, WebError> {
        match v.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(s)
                if s.len() <= 64
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                Ok(Some(s.to_string()))
            }
            Some(_) => Err(WebError::BadInput(format!("{what} is not an id"))),
        }
    };
    let focus = Focus {
        device: id(&query.device, "device")?,
        rollout: id(&query.rollout, "rollout")?,
    };
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        // Compression would hold events back until a buffer fills; proxies must not buffer either.
        .insert_header((header::CONTENT_ENCODING, "identity"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(state.live.stream(focus)))
}
