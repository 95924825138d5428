//! The JSON body extractor of the API: checks the content type, enforces the
//! size limit while reading (413), and names the field at fault on 400 —
//! including unknown fields, which every request type rejects.

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use super::errors::ApiError;

/// A request body parsed from JSON into `T`.
#[derive(Debug)]
pub struct Json<T>(pub T);

/// The body limit, set once per app from the settings.
#[derive(Debug, Clone, Copy)]
pub struct JsonLimit(pub usize);

impl<T: DeserializeOwned + 'static> FromRequest for Json<T> {
    type Error = ApiError;
    type Future = futures_util::future::LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let limit = req
            .app_data::<web::Data<JsonLimit>>()
            .map(|l| l.0)
            .unwrap_or(1 << 20);
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let mut payload = payload.take();
        Box::pin(async move {
            let essence = content_type.split(';').next().unwrap_or("").trim();
            if essence != "application/json" && !essence.ends_with("+json") {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "send the body as JSON with Content-Type: application/json",
                ));
            }
            let too_large = || {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the request body is larger than the limit of {limit} bytes"),
                )
            };
            if declared.is_some_and(|n| n > limit) {
                return Err(too_large());
            }
            let mut body = web::BytesMut::new();
            while let Some(chunk) = payload.next().await {
                let chunk = chunk.map_err(|e| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("reading the body failed: {e}"),
                    )
                })?;
                if body.len() + chunk.len() > limit {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            parse(&body).map(Json)
        })
    }
}

/// Parses JSON, naming the path of the field at fault.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        if let Some(name) = backticked(&message, "unknown field `") {
            return ApiError::bad_field(
                join(&path, &name),
                format!("is not a known field ({message})"),
            );
        }
        if let Some(name) = backticked(&message, "missing field `") {
            return ApiError::bad_field(join(&path, &name), "is required");
        }
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("the body is not valid JSON: {message}"),
            );
        }
        if path == "." || path.is_empty() {
            return ApiError::new(StatusCode::BAD_REQUEST, format!("the body: {message}"));
        }
        ApiError::bad_field(path, message)
    })?;
    de.end().map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    Ok(value)
}

fn backticked(message: &str, marker: &str) -> Option<String> {
    let rest = &message[message.find(marker)? + marker.len()..];
    Some(rest[..rest.find('`')?].to_string())
}

fn join(path: &str, name: &str) -> String {
    // serde_path_to_error already ends the path with an unknown field's name.
    if path == name || path.ends_with(&format!(".{name}")) {
        path.to_string()
    } else if path == "." || path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Login {
        username: String,
        uses: u32,
    }

    #[test]
    fn names_unknown_missing_and_mistyped_fields() {
        let e = parse::<Login>(br#"{"username":"a","uses":1,"colour":"red"}"#).unwrap_err();
        assert_eq!(e.problem().field.as_deref(), Some("colour"));
        let e = parse::<Login>(br#"{"username":"a","uses":1,"x":1}"#).unwrap_err();
        assert_eq!(e.problem().field.as_deref(), Some("x"));
        let e = parse::<Login>(br#"{"uses":1}"#).unwrap_err();
        assert_eq!(e.problem().field.as_deref(), Some("username"));
        let e = parse::<Login>(br#"{"username":"a","uses":"many"}"#).unwrap_err();
        assert_eq!(e.problem().field.as_deref(), Some("uses"));
        let e = parse::<Login>(br#"{"username":"a","#).unwrap_err();
        assert!(e.problem().detail.contains("not valid JSON"));
        let e = parse::<Login>(br#"{"username":"a","uses":1} trailing"#).unwrap_err();
        assert!(e.problem().detail.contains("not valid JSON"));
    }
}
