//! The client side of the device API (`/device/v1`). Only `fetch_ca_unverified` ever talks to a
//! server without checking its certificate, and it sends nothing secret; every other call goes
//! through a client that trusts the pinned fleet CA and nothing else.

use std::time::Duration;

use drover_proto::{
    CaResponse, CertificateResponse, EnrollRequest, EnrollResponse, Envelope, RecoverRequest,
    RenewRequest, UpdateOffer, UpdateStatusRecorded, UpdateStatusReport,
};
use reqwest::{Certificate, Client, Identity, Method, StatusCode, Url, redirect};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Largest answer body read from the server (certificates and a trust document fit easily).
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest one payload download may run; a stalled one is caught sooner by the reader's own
/// per-chunk timeout, and resumes where it stopped.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Longest server-provided text quoted in an error.
const MAX_DETAIL_CHARS: usize = 300;

/// The server's device API address: `https://HOST[:PORT][/PATH]`, without a trailing slash.
#[derive(Clone, Debug)]
pub struct ServerUrl {
    text: String,
    url: Url,
}

impl ServerUrl {
    /// Parses `--server`: an absolute `https` URL with a host and no query or fragment.
    pub fn parse(text: &str) -> Result<ServerUrl, String> {
        let trimmed = text.trim().trim_end_matches('/');
        let url = Url::parse(trimmed).map_err(|e| format!("`{text}` is not a URL ({e})"))?;
        if url.scheme() != "https" {
            return Err(format!(
                "`{text}` must start with https:// (the device API always uses TLS)"
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("`{text}` has no host name"));
        }
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            return Err(format!(
                "`{text}` must be only https://HOST:PORT, without user, query or fragment"
            ));
        }
        Ok(ServerUrl {
            text: trimmed.to_owned(),
            url,
        })
    }

    /// The address as given, without a trailing slash.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True if both name the same server (`https://h:443/` equals `https://h`).
    pub fn same_server(&self, other: &ServerUrl) -> bool {
        self.url == other.url
    }

    /// The full URL of a device API path such as `/device/v1/enroll`.
    fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.text)
    }
}

impl std::fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Fetches the fleet CA from `GET /device/v1/ca` WITHOUT verifying the server's certificate.
/// The answer is worthless until its hash matches the `--ca-hash` pin; nothing secret is sent.
pub async fn fetch_ca_unverified(server: &ServerUrl) -> Result<CaResponse> {
    let client = base_builder()
        .tls_danger_accept_invalid_certs(true)
        .build()
        .map_err(|e| client_error("fetching the fleet CA", &e))?;
    call(
        &client,
        server,
        Method::GET,
        "/device/v1/ca",
        None::<&()>,
        "fetching the fleet CA",
    )
    .await
}

/// A device API client that trusts only the pinned fleet CA, optionally presenting a client
/// certificate (mutual TLS).
pub struct DeviceApi {
    server: ServerUrl,
    client: Client,
}

impl DeviceApi {
    /// A client trusting only `ca_der`, without a client certificate (enrollment, recovery).
    pub fn pinned(server: &ServerUrl, ca_der: &[u8]) -> Result<DeviceApi> {
        DeviceApi::build(server, ca_der, None)
    }

    /// A client trusting only `ca_der` that presents `identity_pem` (key + certificate PEM).
    pub fn with_identity(
        server: &ServerUrl,
        ca_der: &[u8],
        identity_pem: &[u8],
    ) -> Result<DeviceApi> {
        DeviceApi::build(server, ca_der, Some(identity_pem))
    }

    fn build(server: &ServerUrl, ca_der: &[u8], identity_pem: Option<&[u8]>) -> Result<DeviceApi> {
        let what = "setting up TLS";
        let ca = Certificate::from_der(ca_der).map_err(|e| client_error(what, &e))?;
        let mut builder = base_builder().tls_certs_only([ca]);
        if let Some(pem) = identity_pem {
            builder =
                builder.identity(Identity::from_pem(pem).map_err(|e| client_error(what, &e))?);
        }
        let client = builder.build().map_err(|e| client_error(what, &e))?;
        Ok(DeviceApi {
            server: server.clone(),
            client,
        })
    }

    /// A client for the enrolled device in `state`: its current key and certificate, its pinned CA.
    pub fn for_device(state: &crate::state::StateDir) -> Result<DeviceApi> {
        let enrolled = state.load()?;
        let server = ServerUrl::parse(&enrolled.enrollment.server).map_err(|e| {
            Error::State(format!(
                "{}: server {e}; remove the state directory and enroll again",
                state.file(crate::state::ENROLLMENT_FILE).display()
            ))
        })?;
        let identity = enrolled.key.identity_pem(&enrolled.certificate);
        DeviceApi::with_identity(&server, &enrolled.ca_der, &identity)
    }

    /// `GET /device/v1/update`: the offered update, or `None` (204) when there is none.
    pub async fn update_offer(&self) -> Result<Option<UpdateOffer>> {
        call(
            &self.client,
            &self.server,
            Method::GET,
            "/device/v1/update",
            None::<&()>,
            "fetching the update offer",
        )
        .await
    }

    /// `POST /device/v1/update/{rollout_id}/status`.
    pub async fn report_status(
        &self,
        rollout_id: &str,
        report: &UpdateStatusReport,
    ) -> Result<UpdateStatusRecorded> {
        if rollout_id.is_empty()
            || !rollout_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(Error::BadAnswer {
                what: "update status report",
                reason: format!(
                    "the rollout id `{}` is not a plain id",
                    one_line(rollout_id)
                ),
            });
        }
        self.post(
            &format!("/device/v1/update/{rollout_id}/status"),
            report,
            "update status report",
        )
        .await
    }

    /// `POST /device/v1/enroll`.
    pub async fn enroll(&self, request: &EnrollRequest) -> Result<EnrollResponse> {
        self.post("/device/v1/enroll", request, "enrollment").await
    }

    /// `POST /device/v1/renew` (needs a client certificate).
    pub async fn renew(&self, request: &RenewRequest) -> Result<CertificateResponse> {
        self.post("/device/v1/renew", request, "certificate renewal")
            .await
    }

    /// `POST /device/v1/recover` (no client certificate).
    pub async fn recover(&self, request: &RecoverRequest) -> Result<CertificateResponse> {
        self.post("/device/v1/recover", request, "certificate recovery")
            .await
    }

    /// `GET /device/v1/trust` (needs a client certificate): the current trust document envelope.
    pub async fn trust(&self) -> Result<Envelope> {
        call(
            &self.client,
            &self.server,
            Method::GET,
            "/device/v1/trust",
            None::<&()>,
            "fetching the trust document",
        )
        .await
    }

    /// Starts `GET` of a payload at `path` (relative to the device API, as an update offer gives
    /// it) from byte `from` on: a `Range: bytes=FROM-` request when `from` > 0. The caller judges
    /// the status and reads the body; `what` names the download in errors.
    pub async fn get_payload(
        &self,
        path: &str,
        from: u64,
        what: &'static str,
    ) -> Result<reqwest::Response> {
        if !path.starts_with('/') || path.starts_with("//") || path.split('/').any(|s| s == "..") {
            return Err(Error::BadAnswer {
                what,
                reason: format!(
                    "the payload url `{}` is not a path on the device API",
                    one_line(path)
                ),
            });
        }
        let url = self.server.endpoint(path);
        let mut request = self.client.get(&url).timeout(DOWNLOAD_TIMEOUT);
        if from > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={from}-"));
        }
        request.send().await.map_err(|e| Error::Unreachable {
            what,
            url: url.clone(),
            cause: causes(&e.without_url()),
        })
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        what: &'static str,
    ) -> Result<T> {
        call(
            &self.client,
            &self.server,
            Method::POST,
            path,
            Some(body),
            what,
        )
        .await
    }
}

impl DeviceApi {
    /// A plain-HTTP client for `base` (`http://127.0.0.1:PORT`), for the download tests' local
    /// server only: it exists in test builds alone.
    #[cfg(test)]
    pub(crate) fn plain_http_for_tests(base: &str) -> DeviceApi {
        let url = Url::parse(base).expect("a test server URL");
        DeviceApi {
            server: ServerUrl {
                text: base.trim_end_matches('/').to_owned(),
                url,
            },
            client: Client::builder()
                .redirect(redirect::Policy::none())
                .build()
                .expect("a plain test client builds"),
        }
    }
}

fn base_builder() -> reqwest::ClientBuilder {
    Client::builder()
        .https_only(true)
        // A redirect would carry the token or the CSR somewhere the pin never looked at.
        .redirect(redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("drover-agent/", env!("CARGO_PKG_VERSION")))
}

async fn call<B: Serialize, T: DeserializeOwned>(
    client: &Client,
    server: &ServerUrl,
    method: Method,
    path: &str,
    body: Option<&B>,
    what: &'static str,
) -> Result<T> {
    let url = server.endpoint(path);
    let mut request = client.request(method, &url);
    if let Some(body) = body {
        request = request.json(body);
    }
    // The URL is in the message already; reqwest would repeat it.
    let unreachable = |e: reqwest::Error| Error::Unreachable {
        what,
        url: url.clone(),
        cause: causes(&e.without_url()),
    };
    let mut response = request.send().await.map_err(unreachable)?;
    let status = response.status();
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
        if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(Error::BadAnswer {
                what,
                reason: format!("the answer is larger than {MAX_ANSWER_BYTES} bytes"),
            });
        }
        bytes.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        return Err(Error::Refused {
            what,
            status: status.as_u16(),
            detail: problem_detail(status, &bytes),
        });
    }
    // 204 No Content reads as JSON `null`: an `Option` answer becomes `None`.
    let bytes = if status == StatusCode::NO_CONTENT && bytes.is_empty() {
        b"null".to_vec()
    } else {
        bytes
    };
    serde_json::from_slice(&bytes).map_err(|e| Error::BadAnswer {
        what,
        reason: format!("the JSON does not match the device API: {e}"),
    })
}

/// The `detail` of a problem+json body, else its `title`, else a short quote of the body.
pub fn problem_detail(status: StatusCode, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Problem {
        title: Option<String>,
        detail: Option<String>,
    }
    let text = match serde_json::from_slice::<Problem>(body) {
        Ok(Problem {
            detail: Some(detail),
            ..
        }) if !detail.trim().is_empty() => detail,
        Ok(Problem {
            title: Some(title), ..
        }) if !title.trim().is_empty() => title,
        _ => {
            let body = String::from_utf8_lossy(body);
            if body.trim().is_empty() {
                status
                    .canonical_reason()
                    .unwrap_or("no explanation given")
                    .to_owned()
            } else {
                body.into_owned()
            }
        }
    };
    one_line(&text)
}

/// `text` on one line (whitespace runs collapsed) and at most `MAX_DETAIL_CHARS` long.
pub(crate) fn one_line(text: &str) -> String {
    let mut line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() > MAX_DETAIL_CHARS {
        line = line.chars().take(MAX_DETAIL_CHARS).collect::<String>() + "…";
    }
    line
}

/// An error and its chain of causes on one line, without repeats.
pub(crate) fn causes(error: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    one_line(&parts.join(": "))
}

fn client_error(what: &'static str, e: &reqwest::Error) -> Error {
    Error::Crypto(format!("{what} failed: {}", causes(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_must_be_https_with_a_host() {
        let url = ServerUrl::parse("https://drover.example:8443/").unwrap();
        assert_eq!(url.as_str(), "https://drover.example:8443");
        assert_eq!(
            url.endpoint("/device/v1/ca"),
            "https://drover.example:8443/device/v1/ca"
        );
        for bad in [
            "http://drover.example:8443",
            "drover.example:8443",
            "https://",
            "https://h/?x=1",
            "https://u@h",
            "",
        ] {
            assert!(ServerUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_same_server_compares_equal_however_written() {
        let a = ServerUrl::parse("https://h:443").unwrap();
        let b = ServerUrl::parse("https://H/").unwrap();
        let c = ServerUrl::parse("https://h:8443").unwrap();
        assert!(a.same_server(&b));
        assert!(!a.same_server(&c));
    }

    #[test]
    fn problem_detail_prefers_detail_then_title_then_body() {
        let problem = br#"{"type":"about:blank","title":"Forbidden","status":403,"detail":"the token is used up"}"#;
        assert_eq!(
            problem_detail(StatusCode::FORBIDDEN, problem),
            "the token is used up"
        );
        assert_eq!(
            problem_detail(StatusCode::FORBIDDEN, br#"{"title":"Forbidden"}"#),
            "Forbidden"
        );
        assert_eq!(
            problem_detail(StatusCode::BAD_GATEWAY, b"upstream\n  down"),
            "upstream down"
        );
        assert_eq!(problem_detail(StatusCode::BAD_GATEWAY, b""), "Bad Gateway");
        assert!(problem_detail(StatusCode::BAD_GATEWAY, &[b'x'; 1000]).ends_with('…'));
    }
}
