//! Static assets (vendored htmx and uPlot, our stylesheet and scripts),
//! embedded in the binary so the dashboard needs nothing from outside it.
//! Served with a strong ETag; pages add it as `?v=` to bust caches.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, get, web};
use sha2::{Digest, Sha256};

struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:literal) => {
        Asset {
            name: $name,
            content_type: $type,
            bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../static/", $name)),
        }
    };
}

const ASSETS: &[Asset] = &[
    asset!("htmx.min.js", "text/javascript; charset=utf-8"),
    asset!("drover.css", "text/css; charset=utf-8"),
    asset!("drover.js", "text/javascript; charset=utf-8"),
    asset!("charts.js", "text/javascript; charset=utf-8"),
    asset!("fleet.js", "text/javascript; charset=utf-8"),
    asset!("upload.js", "text/javascript; charset=utf-8"),
    asset!("live.js", "text/javascript; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("uPlot.iife.min.js", "text/javascript; charset=utf-8"),
    asset!("uPlot.min.css", "text/css; charset=utf-8"),
    // uPlot's MIT licence asks that its notice travel with every copy.
    asset!("uPlot.LICENSE", "text/plain; charset=utf-8"),
];

/// The ETag of an asset, also used to bust caches in templates.
pub fn etag(name: &str) -> Option<String> {
    let asset = ASSETS.iter().find(|a| a.name == name)?;
    Some(hex::encode(&Sha256::digest(asset.bytes)[..8]))
}

/// Serves `/static/{name}`.
#[get("/static/{name}")]
pub async fn serve(req: HttpRequest, name: web::Path<String>) -> HttpResponse {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name.as_str()) else {
        return HttpResponse::NotFound()
            .content_type("text/plain")
            .body("no such asset\n");
    };
    let tag = format!("\"{}\"", etag(asset.name).unwrap_or_default());
    let matches = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == tag);
    if matches {
        return HttpResponse::NotModified().finish();
    }
    HttpResponse::Ok()
        .content_type(asset.content_type)
        .insert_header((header::ETAG, tag))
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .body(asset.bytes)
}
