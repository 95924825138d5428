//! The few REST calls the benchmark makes as the first admin: sign in and
//! create one enrollment token for the whole simulated fleet (or its agents'
//! join command).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// A REST client for the server's API on `http://ADDR`.
pub struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    /// A client for the API at `addr`.
    pub fn new(addr: SocketAddr) -> Result<Api> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            // Idle keep-alive connections would hold up the server's graceful stop.
            .pool_idle_timeout(Duration::from_secs(2))
            .build()
            .context("building the API client")?;
        Ok(Api {
            client,
            base: format!("http://{addr}"),
        })
    }

    /// `POST /api/v1/auth/login` as `admin`; answers the JWT.
    pub async fn login(&self, password: &str) -> Result<String> {
        let body = self
            .post(
                None,
                "/api/v1/auth/login",
                &json!({"username": "admin", "password": password}),
            )
            .await
            .context("signing in as the first admin")?;
        text_field(&body, "token")
    }

    /// `POST /api/v1/enrollment-tokens` for `uses` devices, valid for a day; answers the secret.
    pub async fn enrollment_token(&self, jwt: &str, uses: u32) -> Result<String> {
        let body = self
            .post(
                Some(jwt),
                "/api/v1/enrollment-tokens",
                &json!({"uses": uses, "expires_in": "24h"}),
            )
            .await
            .context("creating the enrollment token")?;
        text_field(&body, "token")
    }

    /// Like [`Api::enrollment_token`], but answers the agents' join command
    /// (`drover-agent enroll --server URL --token T --ca-hash sha256:HEX`).
    pub async fn join_command(&self, jwt: &str, uses: u32) -> Result<String> {
        let body = self
            .post(
                Some(jwt),
                "/api/v1/enrollment-tokens",
                &json!({"uses": uses, "expires_in": "24h"}),
            )
            .await
            .context("creating the enrollment token")?;
        text_field(&body, "join_command")
    }

    /// Uploads an artifact; answers its id.
    pub async fn upload_artifact(&self, jwt: &str, name: &str, bytes: Vec<u8>) -> Result<String> {
        let res = self
            .client
            .post(format!("{}/api/v1/artifacts", self.base))
            .bearer_auth(jwt)
            .header("X-Artifact-Name", name)
            .body(bytes)
            .send()
            .await
            .context("POST /api/v1/artifacts")?;
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("POST /api/v1/artifacts answered {status}: {text}");
        }
        let body: Value = serde_json::from_str(&text).context("the artifact answer")?;
        text_field(&body, "id")
    }

    /// `GET path` as JSON.
    pub async fn get(&self, jwt: &str, path: &str) -> Result<Value> {
        let res = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(jwt)
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("GET {path} answered {status}: {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("GET {path} did not answer JSON"))
    }

    /// Readings the server has committed since it started, from its `/metrics` counter: a
    /// poll that costs the store nothing, where counting rows read a growing table while it
    /// was being written.
    pub async fn readings_stored(&self) -> Result<u64> {
        self.counter("drover_telemetry_readings_stored_total").await
    }

    /// The value of the unlabelled counter `name` on the server's `/metrics`.
    pub async fn counter(&self, name: &str) -> Result<u64> {
        let text = self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .context("GET /metrics")?
            .error_for_status()
            .context("GET /metrics")?
            .text()
            .await
            .context("GET /metrics")?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .with_context(|| format!("/metrics has no {name}"))?
            .trim()
            .parse()
            .with_context(|| format!("{name} is not a count"))
    }

    /// `POST path` with a JSON body; answers the JSON answer (an error for a non-2xx status).
    pub async fn post(&self, jwt: Option<&str>, path: &str, body: &Value) -> Result<Value> {
        let mut req = self.client.post(format!("{}{path}", self.base)).json(body);
        if let Some(jwt) = jwt {
            req = req.bearer_auth(jwt);
        }
        let res = req.send().await.with_context(|| format!("POST {path}"))?;
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!(
                "POST {path} answered {status}: {}",
                text.chars().take(300).collect::<String>()
            );
        }
        serde_json::from_str(&text).with_context(|| format!("POST {path} did not answer JSON"))
    }
}

/// A string field of an answer.
pub fn text_field(body: &Value, name: &str) -> Result<String> {
    body.get(name)
        .and_then(Value::as_str)
        .map(str::to_string)
        .with_context(|| format!("the answer has no {name:?}"))
}
