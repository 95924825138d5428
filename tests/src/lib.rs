//! Helpers shared by the end-to-end suites: a real server on port 0 with a
//! fresh data directory and a fresh database (SQLite by default, PostgreSQL
//! when `DROVER_TEST_DATABASE_URL` is set), and clients to talk to it.

pub mod mosquitto;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use drover_server::config::Settings;
use drover_server::startup::{self, Application, StartError};
use serde_json::{Value, json};

/// A database that exists for one test and is dropped after it.
pub struct TestDb {
    /// The URL the server uses.
    pub url: String,
    postgres: Option<(String, String)>,
    /// Another replica's database: dropping this handle leaves it alone.
    shared: bool,
}

impl TestDb {
    /// A SQLite file in `dir`, or a fresh PostgreSQL database when asked for.
    pub async fn new(dir: &Path) -> TestDb {
        match std::env::var("DROVER_TEST_DATABASE_URL") {
            Ok(admin_url) if !admin_url.is_empty() => {
                let name = format!("drover_test_{}", uuid::Uuid::now_v7().simple());
                let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url)
                    .await
                    .expect("DROVER_TEST_DATABASE_URL must reach a PostgreSQL server");
                let sql = format!("CREATE DATABASE \"{name}\"");
                sqlx::Executor::execute(&mut conn, sqlx::AssertSqlSafe(sql))
                    .await
                    .expect("create test database");
                let url = replace_database(&admin_url, &name);
                TestDb {
                    url,
                    postgres: Some((admin_url, name)),
                    shared: false,
                }
            }
            _ => TestDb {
                url: format!("sqlite://{}", dir.join("drover.db").display()),
                postgres: None,
                shared: false,
            },
        }
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        if self.postgres.is_some() {
            "postgres"
        } else {
            "sqlite"
        }
    }
}

fn replace_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.shared {
            return;
        }
        let Some((admin_url, name)) = self.postgres.take() else {
            return;
        };
        // Drop runs inside the test's runtime, so the cleanup gets a thread and runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(mut conn) =
                    <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url).await
                {
                    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                    let _ = sqlx::Executor::execute(&mut conn, sqlx::AssertSqlSafe(sql)).await;
                }
            });
        })
        .join();
    }
}

/// A running server with its own data directory and database.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The first admin's generated password.
    pub admin_password: String,
    /// A client without cookies that does not follow redirects.
    pub client: reqwest::Client,
    /// The settings the server was built from.
    pub settings: Settings,
    handle: drover_server::startup::StopHandle,
    /// `https://127.0.0.1:PORT` of the device API.
    pub device_base: String,
    /// The fleet CA certificate (PEM).
    pub ca_pem: String,
    /// `sha256:HEX` of the fleet CA.
    pub ca_hash: String,
    /// The gateway's port (embedded broker), if any.
    pub mqtt_port: Option<u16>,
    /// The server's own MQTT connection.
    pub mqtt: drover_server::mqtt::client::MqttLink,
    /// The external broker, when the app uses one.
    pub broker: Option<mosquitto::Mosquitto>,
    /// The server's store, for tests that set up what no endpoint makes yet (offers).
    pub store: drover_server::store::Store,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    runtime: ServerRuntime,
    bound: Bound,
    db: TestDb,
    dir: tempfile::TempDir,
}

/// The runtime a test server runs on, apart from the test's own: stopping the server shuts it
/// down, which ends every task the server spawned (device sessions through the MQTT gateway
/// included) as the end of a `drover serve` process would. Dropped without a stop (a test that
/// ends), it is shut down in the background.
struct ServerRuntime(Option<tokio::runtime::Runtime>);

impl ServerRuntime {
    fn new() -> ServerRuntime {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("drover-test-server")
            .enable_all()
            .build()
            .expect("the test server's runtime");
        ServerRuntime(Some(runtime))
    }

    fn handle(&self) -> tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("the runtime lives until shut down")
            .handle()
            .clone()
    }

    /// Ends every task of the server and waits until its threads are gone.
    async fn shut_down(mut self) {
        if let Some(runtime) = self.0.take() {
            // Waiting for the workers blocks: not on the test's own async threads.
            let _ = tokio::task::spawn_blocking(move || {
                runtime.shutdown_timeout(Duration::from_secs(10))
            })
            .await;
        }
    }
}

impl Drop for ServerRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// The addresses a server bound, so it can start again on the same ones.
#[derive(Debug, Clone, Copy)]
struct Bound {
    http: SocketAddr,
    device: SocketAddr,
    /// The embedded broker's gateway; none with an external broker.
    mqtt: Option<SocketAddr>,
}

/// A server stopped by [`TestApp::shut_down`]: its data directory, database, external broker
/// and the addresses it had bound, ready to start again.
pub struct StoppedApp {
    admin_password: String,
    settings: Settings,
    bound: Bound,
    broker: Option<mosquitto::Mosquitto>,
    db: TestDb,
    dir: tempfile::TempDir,
}

/// How long a restart on the same ports retries while the old sockets close.
const REBIND_TIMEOUT: Duration = Duration::from_secs(5);

impl StoppedApp {
    /// Starts the server again on the same data directory, database and broker, listening on
    /// exactly the ports it bound before: agents keep the MQTT and device API addresses they
    /// learned at enrollment.
    pub async fn start_on_same_ports(self) -> TestApp {
        let bound = self.bound;
        self.start_with(move |s| {
            s.http_listen = bound.http;
            s.device_listen = bound.device;
            if let Some(mqtt) = bound.mqtt {
                s.mqtt_listen = mqtt;
            }
        })
        .await
    }

    /// Starts the server on new ports with changed settings (a restored data directory and
    /// database, say), keeping this app's database and scratch directory alive.
    pub async fn start_changed(self, change: impl FnOnce(&mut Settings)) -> TestApp {
        self.start_with(|s| {
            s.http_listen.set_port(0);
            s.device_listen.set_port(0);
            s.mqtt_listen.set_port(0);
            change(s);
        })
        .await
    }

    async fn start_with(self, listen: impl FnOnce(&mut Settings)) -> TestApp {
        let mut settings = self.settings.clone();
        listen(&mut settings);
        let deadline = tokio::time::Instant::now() + REBIND_TIMEOUT;
        let (app, runtime) = loop {
            let runtime = ServerRuntime::new();
            match start(settings.clone(), &runtime).await {
                Ok((app, again)) => {
                    assert!(again.is_none(), "a restart must not create another admin");
                    break (app, runtime);
                }
                // The old listener may still be closing.
                Err(StartError::PortInUse { .. }) if tokio::time::Instant::now() < deadline => {
                    runtime.shut_down().await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("the server starts again: {e}"),
            }
        };
        let mut app = finish(
            app,
            runtime,
            settings,
            self.admin_password,
            self.db,
            self.dir,
        );
        if let Some(broker) = self.broker {
            app.mqtt_port = Some(broker.port);
            app.broker = Some(broker);
        }
        app
    }
}

/// Starts a fresh server.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a fresh server whose MQTT broker is a private Mosquitto with TLS,
/// configured from deploy/mosquitto (per-device ACLs, the server's CRL).
pub async fn spawn_app_on_mosquitto() -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = TestDb::new(dir.path()).await;
    let mut settings = Settings::for_tests(&dir.path().join("data"), &db.url);
    // The broker needs the fleet's TLS material before the server connects to it.
    let ca =
        drover_server::identity::ca::FleetCa::load_or_create(&settings.data_dir, None).expect("ca");
    ca.server_certificate(&settings.public_hostnames)
        .expect("server certificate");
    let pki = settings.data_dir.join("pki");
    drover_server::identity::crl::write_crl(&ca, &[], &pki.join("crl.pem")).expect("crl");
    let broker = mosquitto::Mosquitto::start(&mosquitto::BrokerTls {
        ca_pem_path: pki.join("ca.crt"),
        cert_path: pki.join("server.crt"),
        key_path: pki.join("server.key"),
        crl_path: pki.join("crl.pem"),
    });
    settings.mqtt_url = Some(broker.server_url());
    settings.mqtt_device_url = Some(broker.url());
    settings.mqtt_crl_reload_command = Some(format!("kill -HUP {}", broker.pid()));
    let runtime = ServerRuntime::new();
    let (app, password) = start(settings.clone(), &runtime)
        .await
        .expect("server starts");
    let mut app = finish(
        app,
        runtime,
        settings,
        password.expect("first admin"),
        db,
        dir,
    );
    app.mqtt_port = Some(broker.port);
    app.broker = Some(broker);
    app
}

/// Starts a fresh server with adjusted settings.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = TestDb::new(dir.path()).await;
    let mut settings = Settings::for_tests(&dir.path().join("data"), &db.url);
    configure(&mut settings);
    let runtime = ServerRuntime::new();
    let (app, password) = start(settings.clone(), &runtime)
        .await
        .expect("server starts");
    let password = password.expect("a fresh server creates the first admin");
    finish(app, runtime, settings, password, db, dir)
}

/// Builds the server on `runtime`, so the tasks it spawns live there.
async fn start(
    settings: Settings,
    runtime: &ServerRuntime,
) -> Result<(Application, Option<String>), StartError> {
    let app = runtime
        .handle()
        .spawn(startup::build(settings))
        .await
        .expect("building the server does not panic")?;
    let password = app.initial_admin_password.clone();
    Ok((app, password))
}

fn finish(
    app: Application,
    runtime: ServerRuntime,
    settings: Settings,
    admin_password: String,
    db: TestDb,
    dir: tempfile::TempDir,
) -> TestApp {
    let base = format!("http://{}", app.http_addr());
    let device_base = format!("https://127.0.0.1:{}", app.device_addr().port());
    let ca_pem = app.identity().ca.cert_pem().to_string();
    let ca_hash = app.identity().ca.hash();
    let mqtt_addr = app
        .ports()
        .mqtt
        .as_ref()
        .and_then(|a| a.parse::<SocketAddr>().ok());
    let bound = Bound {
        http: app.http_addr(),
        device: app.device_addr(),
        mqtt: mqtt_addr,
    };
    let mqtt_port = mqtt_addr.map(|a| a.port());
    let mqtt = app.mqtt().clone();
    let store = app.store().clone();
    let handle = app.handle();
    let task = runtime.handle().spawn(app.run_until_stopped());
    TestApp {
        base,
        admin_password,
        client: client(),
        settings,
        handle,
        device_base,
        ca_pem,
        ca_hash,
        mqtt_port,
        mqtt,
        broker: None,
        store,
        task,
        runtime,
        bound,
        db,
        dir,
    }
}

/// A plain HTTP client that does not follow redirects.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        // The server closes idle connections after 5 s; reusing one just then loses the request.
        .pool_idle_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// A browser-like client: keeps cookies, does not follow redirects.
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

impl TestApp {
    /// Absolute URL of a path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.settings.data_dir
    }

    /// The database backend in use.
    pub fn backend(&self) -> &'static str {
        self.db.backend()
    }

    /// A scratch directory that lives as long as the app.
    pub fn scratch(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// POST /api/v1/auth/login.
    pub async fn login(&self, username: &str, password: &str) -> reqwest::Response {
        self.client
            .post(self.url("/api/v1/auth/login"))
            .json(&json!({"username": username, "password": password}))
            .send()
            .await
            .expect("login request")
    }

    /// A JWT for the first admin.
    pub async fn admin_token(&self) -> String {
        let res = self.login("admin", &self.admin_password).await;
        assert_eq!(res.status(), 200, "admin login");
        let body: Value = res.json().await.expect("json");
        body["token"].as_str().expect("token").to_string()
    }

    /// Creates a user through the API and answers a JWT for them.
    pub async fn user_token(&self, admin: &str, username: &str, role: &str) -> String {
        let password = format!("{username}-password-123");
        let res = self
            .post_json(
                admin,
                "/api/v1/users",
                &json!({"username": username, "password": password, "role": role}),
            )
            .await;
        assert_eq!(res.status(), 201, "create user {username}");
        let res = self.login(username, &password).await;
        assert_eq!(res.status(), 200, "login {username}");
        let body: Value = res.json().await.expect("json");
        body["token"].as_str().expect("token").to_string()
    }

    /// GET with a bearer token.
    pub async fn get(&self, token: &str, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    /// The alerts a query string selects (`GET /api/v1/alerts?QUERY`).
    pub async fn alerts(&self, token: &str, query: &str) -> Vec<Value> {
        let body: Value = self
            .get(token, &format!("/api/v1/alerts?{query}"))
            .await
            .json()
            .await
            .expect("alerts");
        body["items"].as_array().expect("items").clone()
    }

    /// A device's alerts, firing and resolved (`GET /api/v1/alerts?device_id=`).
    pub async fn device_alerts(&self, token: &str, device_id: &str) -> Vec<Value> {
        self.alerts(token, &format!("device_id={device_id}")).await
    }

    /// POST JSON with a bearer token.
    pub async fn post_json(&self, token: &str, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// DELETE with a bearer token.
    pub async fn delete(&self, token: &str, path: &str) -> reqwest::Response {
        self.client
            .delete(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    /// The Prometheus text of /metrics.
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// The value of the unlabelled counter `name` in `/metrics`.
    pub async fn counter(&self, name: &str) -> u64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in /metrics: {text}"))
    }

    /// A device as `GET /api/v1/devices/{id}` answers it.
    pub async fn device(&self, token: &str, id: &str) -> Value {
        self.get(token, &format!("/api/v1/devices/{id}"))
            .await
            .json()
            .await
            .expect("device json")
    }

    /// Audit entries matching a query string (newest first).
    pub async fn audit(&self, token: &str, query: &str) -> Vec<Value> {
        let res = self.get(token, &format!("/api/v1/audit?{query}")).await;
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.expect("json");
        body["items"].as_array().cloned().unwrap_or_default()
    }

    /// Stops the server gracefully and waits for it; an external broker stops too.
    pub async fn stop(self) -> (TestDb, tempfile::TempDir, Settings) {
        let stopped = self.shut_down().await;
        (stopped.db, stopped.dir, stopped.settings)
    }

    /// Stops the server as `drover serve` stops on SIGTERM (requests in flight finish, then
    /// the process ends: every task it spawned, device sessions included). An external broker
    /// keeps running; [`StoppedApp::start_on_same_ports`] brings the server back.
    pub async fn shut_down(self) -> StoppedApp {
        self.handle.stop(true).await;
        let _ = self.task.await;
        self.runtime.shut_down().await;
        StoppedApp {
            admin_password: self.admin_password,
            settings: self.settings,
            bound: self.bound,
            broker: self.broker,
            db: self.db,
            dir: self.dir,
        }
    }

    /// Starts a second replica of this server: the same PostgreSQL database, external broker
    /// and `file://` blob directory, its own ports and data directory, seeded with the keys
    /// every replica must share (fleet CA, root and signing keys, JWT secret) as
    /// docs/OPERATIONS.md tells operators to.
    pub async fn replica(&self) -> TestApp {
        assert_eq!(
            self.backend(),
            "postgres",
            "replicas share a PostgreSQL store"
        );
        assert!(
            self.settings.mqtt_url.is_some(),
            "replicas share an external broker"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        for (from, to) in [
            ("pki/ca.crt", "pki"),
            ("pki/ca.key", "pki"),
            ("jwt.secret", ""),
        ] {
            let target = data.join(to);
            std::fs::create_dir_all(&target).expect("replica data dir");
            let name = Path::new(from).file_name().expect("file name");
            std::fs::copy(self.data_dir().join(from), target.join(name)).expect("seed a key");
        }
        let keys = data.join("keys");
        std::fs::create_dir_all(&keys).expect("keys dir");
        for entry in std::fs::read_dir(self.data_dir().join("keys")).expect("keys") {
            let entry = entry.expect("key file");
            std::fs::copy(entry.path(), keys.join(entry.file_name())).expect("seed a key");
        }
        let mut settings = self.settings.clone();
        settings.data_dir = data;
        settings.http_listen.set_port(0);
        settings.device_listen.set_port(0);
        settings.mqtt_listen.set_port(0);
        let db = TestDb {
            url: self.db.url.clone(),
            postgres: self.db.postgres.clone(),
            shared: true,
        };
        let runtime = ServerRuntime::new();
        let (app, password) = start(settings.clone(), &runtime)
            .await
            .expect("the replica starts");
        assert!(password.is_none(), "a replica creates no second admin");
        let mut app = finish(app, runtime, settings, self.admin_password.clone(), db, dir);
        app.mqtt_port = self.mqtt_port;
        app
    }

    /// Ends the server the way a crash or `kill -9` does: listeners close at once, every
    /// task stops mid-flight and drops its connections (PostgreSQL sessions, the broker
    /// link), nothing is released politely. Answers what must outlive it (the database,
    /// data directory and broker, which other replicas may still use).
    pub async fn crash(self) -> Remains {
        let TestApp {
            handle,
            task,
            runtime,
            store,
            mqtt,
            broker,
            db,
            dir,
            ..
        } = self;
        // Not graceful: open requests and streams are cut, as the process's end would.
        handle.stop(false).await;
        drop((task, store, mqtt));
        // Dropped, not shut down: the runtime ends every task where it stands.
        drop(runtime);
        Remains {
            _db: db,
            _dir: dir,
            _broker: broker,
        }
    }

    /// Stops and starts again on the same data directory, database and broker (new ports).
    pub async fn restart(self) -> TestApp {
        self.shut_down()
            .await
            .start_with(|s| {
                s.http_listen.set_port(0);
                s.device_listen.set_port(0);
                s.mqtt_listen.set_port(0);
            })
            .await
    }
}

/// What a crashed server leaves for the replicas still running.
pub struct Remains {
    _db: TestDb,
    _dir: tempfile::TempDir,
    _broker: Option<mosquitto::Mosquitto>,
}

/// Asserts a problem+json answer with a status, and answers its body.
pub async fn problem(res: reqwest::Response, status: u16) -> Value {
    assert_eq!(res.status(), status, "status");
    let ct = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert_eq!(ct, "application/problem+json", "content type");
    let body: Value = res.json().await.expect("problem body");
    assert_eq!(body["status"], status);
    assert!(body["type"].is_string() && body["title"].is_string() && body["detail"].is_string());
    body
}

/// Reads a hidden input's value out of a page.
pub fn hidden_value(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')?;
    Some(html[start..start + end].to_string())
}

/// True when `raw` appears in `html` escaped as the templates write it (askama writes
/// decimal entities such as `&#60;`; named ones such as `&lt;` are accepted too).
pub fn shows_escaped(html: &str, raw: &str) -> bool {
    let decimal = raw
        .replace('&', "&#38;")
        .replace('<', "&#60;")
        .replace('>', "&#62;")
        .replace('"', "&#34;")
        .replace('\'', "&#39;");
    let named = raw
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#x27;");
    html.contains(&decimal) || html.contains(&named)
}

/// Path of a workspace binary, built once per test process.
pub fn binary(package: &str, name: &str) -> PathBuf {
    static BUILT: OnceLock<std::sync::Mutex<Vec<String>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut done = built.lock().unwrap_or_else(|p| p.into_inner());
    if !done.iter().any(|b| b == name) {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", package, "--bin", name])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build of {name} failed");
        done.push(name.to_string());
    }
    target_dir().join(name)
}

fn target_dir() -> PathBuf {
    // The test binary lives in target/debug/deps.
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target directory")
        .to_path_buf()
}

/// The `drover-agent` binary with a clean environment and its own state directory.
pub fn agent(state_dir: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(binary("drover-agent", "drover-agent"));
    for (k, _) in std::env::vars() {
        if k.starts_with("DROVER_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("DROVER_AGENT_STATE_DIR", state_dir);
    cmd.kill_on_drop(true);
    cmd
}

/// Polls `check` until it answers true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An enrolled device's identity.
#[derive(Debug, Clone)]
pub struct EnrolledDevice {
    /// Device id.
    pub id: String,
    /// Its private key (PEM).
    pub key_pem: String,
    /// Its certificate (PEM).
    pub cert_pem: String,
    /// The fleet CA (PEM).
    pub ca_pem: String,
}

impl EnrolledDevice {
    /// A topic under this device's prefix.
    pub fn topic(&self, name: &str) -> String {
        format!("drover/v1/devices/{}/{name}", self.id)
    }
}

/// Drives a device's MQTT event loop until it connects; answers the client and the loop.
pub async fn mqtt_connect(
    options: rumqttc::MqttOptions,
) -> Result<(rumqttc::AsyncClient, rumqttc::EventLoop), String> {
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 64);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let next = tokio::time::timeout_at(deadline, eventloop.poll()).await;
        match next {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)))) => {
                return Ok((client, eventloop));
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("timed out".into()),
        }
    }
}

/// A device key and the requests it signs, as an agent would make them.
pub struct DeviceKey {
    key: rcgen::KeyPair,
}

impl Default for DeviceKey {
    fn default() -> Self {
        DeviceKey::new()
    }
}

impl DeviceKey {
    /// A fresh ECDSA P-256 key.
    pub fn new() -> DeviceKey {
        DeviceKey {
            key: rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key"),
        }
    }

    /// A CSR for this key.
    pub fn csr(&self) -> String {
        rcgen::CertificateParams::new(Vec::<String>::new())
            .expect("params")
            .serialize_request(&self.key)
            .expect("csr")
            .pem()
            .expect("pem")
    }

    /// The private key as PEM.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }
}

impl TestApp {
    /// Creates an enrollment token through the API; answers its JSON (with `token` and `join_command`).
    pub async fn enrollment_token(&self, admin: &str, body: Value) -> Value {
        let res = self
            .post_json(admin, "/api/v1/enrollment-tokens", &body)
            .await;
        assert_eq!(res.status(), 201, "create enrollment token");
        res.json().await.expect("json")
    }

    /// A device-API client that trusts only the fleet CA, optionally presenting a certificate.
    pub fn device_client(&self, identity: Option<(&str, &str)>) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).expect("ca");
        let mut builder = reqwest::Client::builder()
            .tls_certs_only([ca])
            .timeout(Duration::from_secs(30));
        if let Some((key_pem, cert_pem)) = identity {
            let pem = format!("{key_pem}\n{cert_pem}");
            builder =
                builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("identity"));
        }
        builder.build().expect("client")
    }

    /// Enrolls a new device through the device API and answers its identity.
    pub async fn enrolled_device(&self, admin: &str) -> EnrolledDevice {
        self.enrolled_device_of_type(admin, "rpi4").await
    }

    /// Enrolls a new device of `device_type` through a token of its own.
    pub async fn enrolled_device_of_type(&self, admin: &str, device_type: &str) -> EnrolledDevice {
        let token = self.enrollment_token(admin, json!({"uses": 1})).await;
        let key = DeviceKey::new();
        let res = self
            .enroll(token["token"].as_str().expect("token"), &key, device_type)
            .await;
        assert_eq!(res.status(), 201);
        let answer: Value = res.json().await.expect("json");
        EnrolledDevice {
            id: answer["device_id"].as_str().expect("id").to_string(),
            key_pem: key.key_pem(),
            cert_pem: answer["certificate_pem"]
                .as_str()
                .expect("cert")
                .to_string(),
            ca_pem: self.ca_pem.clone(),
        }
    }

    /// The file of the server's signing key (the only one until a rotation).
    pub fn signing_key_path(&self) -> PathBuf {
        let keys = self.data_dir().join("keys");
        let mut found: Vec<PathBuf> = std::fs::read_dir(&keys)
            .expect("keys dir")
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("signing-") && n.ends_with(".key"))
            })
            .collect();
        assert_eq!(found.len(), 1, "one signing key in {}", keys.display());
        found.remove(0)
    }

    /// MQTT options for a device to reach the gateway with its certificate.
    pub fn mqtt_options(&self, client_id: &str, device: &EnrolledDevice) -> rumqttc::MqttOptions {
        let port = self.mqtt_port.expect("the embedded broker's gateway");
        let mut options = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(5));
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Simple {
                ca: device.ca_pem.as_bytes().to_vec(),
                alpn: None,
                client_auth: Some((
                    device.cert_pem.as_bytes().to_vec(),
                    device.key_pem.as_bytes().to_vec(),
                )),
            },
        ));
        options
    }

    /// POST /device/v1/enroll with a token and a CSR of `key`.
    pub async fn enroll(
        &self,
        token: &str,
        key: &DeviceKey,
        device_type: &str,
    ) -> reqwest::Response {
        self.device_client(None)
            .post(format!("{}/device/v1/enroll", self.device_base))
            .json(&json!({"token": token, "csr_pem": key.csr(), "device_type": device_type, "hostname": "test-host", "tags": {}}))
            .send()
            .await
            .expect("enroll request")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            replace_database("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            replace_database("postgres://u@h:5432", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            replace_database("postgres://u@h/db?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
    }
}
