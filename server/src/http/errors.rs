//! The one place errors become HTTP answers: `application/problem+json` under
//! /api (with the field named on 400), and readable pages in the dashboard.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::error::Error;

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the kind.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// What went wrong here and how to fix it.
    pub detail: String,
    /// The request field at fault, for 400 answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// An error answered by the REST API.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    detail: String,
    field: Option<String>,
    retry_after_s: Option<u64>,
}

impl ApiError {
    /// An error with a status and a sentence.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            detail: detail.into(),
            field: None,
            retry_after_s: None,
        }
    }

    /// 400 naming a field.
    pub fn bad_field(field: impl Into<String>, detail: impl Into<String>) -> Self {
        let field = field.into();
        ApiError {
            status: StatusCode::BAD_REQUEST,
            detail: format!("{field}: {}", detail.into()),
            field: Some(field),
            retry_after_s: None,
        }
    }

    /// The status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The problem document.
    pub fn problem(&self) -> Problem {
        Problem {
            kind: format!("urn:drover:problem:{}", slug(self.status)),
            title: self
                .status
                .canonical_reason()
                .unwrap_or("Error")
                .to_string(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            field: self.field.clone(),
        }
    }
}

fn slug(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad-request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not-found",
        405 => "method-not-allowed",
        409 => "conflict",
        413 => "payload-too-large",
        415 => "unsupported-media-type",
        422 => "unprocessable",
        429 => "rate-limited",
        503 => "unavailable",
        _ => "internal",
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status);
        res.insert_header((header::CONTENT_TYPE, "application/problem+json"));
        if self.status == StatusCode::UNAUTHORIZED {
            res.insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"drover\""));
        }
        if let Some(s) = self.retry_after_s {
            res.insert_header((header::RETRY_AFTER, HeaderValue::from(s)));
        }
        res.body(serde_json::to_string(&self.problem()).unwrap_or_default())
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid { field, message } => ApiError::bad_field(field, message),
            Error::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, m),
            Error::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
            Error::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, m),
            Error::Unauthorized(m) => ApiError::new(StatusCode::UNAUTHORIZED, m),
            Error::TooLarge(m) => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, m),
            Error::Unprocessable(m) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, m),
            Error::Throttled { retry_after_s } => ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                detail: format!("too many failed attempts; try again in {retry_after_s} s"),
                field: None,
                retry_after_s: Some(retry_after_s),
            },
            Error::Store(e) => {
                tracing::error!(error = %e, "store error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the server could not reach its database; try again shortly",
                )
            }
            Error::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; see the server log",
                )
            }
        }
    }
}

/// Result of an API handler.
pub type ApiResult<T> = Result<T, ApiError>;

/// Answers /api requests that match no route with problem+json.
pub async fn api_not_found(req: actix_web::HttpRequest) -> HttpResponse {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no endpoint {} {}; the API is described at /api/v1/openapi.json",
            req.method(),
            req.path()
        ),
    )
    .error_response()
}

/// Maps a query-string error to a 400 problem.
pub fn query_error(
    err: actix_web::error::QueryPayloadError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    ApiError::new(StatusCode::BAD_REQUEST, format!("query string: {err}")).into()
}

/// Maps a path-segment error to a 400 problem.
pub fn path_error(
    err: actix_web::error::PathError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    ApiError::new(StatusCode::BAD_REQUEST, format!("path: {err}")).into()
}
