//! Builds a running server from `Settings`: data directory, store and
//! migrations, secrets, first admin, listeners. `main` and the tests both use
//! `build`, so tests exercise the same wiring on port 0 with a fresh store.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{HttpServer, web};
use serde::Serialize;

use crate::config::Settings;
use crate::http::device::{DeviceState, EnrollLimiter};
use crate::http::{self, AppState};
use crate::identity::ca::FleetCa;
use crate::identity::devices;
use crate::identity::enroll::Identity;
use crate::identity::revocation::RevokedSerials;
use crate::keys::{self, Keyring};
use crate::mqtt::broker;
use crate::mqtt::client::MqttLink;
use crate::mqtt::external::{BrokerEndpoint, RevocationSync, SERVER_CLIENT_NAME};
use crate::mqtt::gateway::{Gateway, GatewayMetrics, Sessions, Upstream};
use crate::store::{Store, StoreError};
use crate::telemetry::Catalog;
use crate::telemetry::ingest::{Ingest, IngestMetrics};
use crate::users::{self, jwt::JwtKeys, throttle::LoginThrottle};
use rumqttc::MqttOptions;

/// Why the server could not start; `exit_code` follows the CONTRACT (2 = configuration).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database URL is wrong or the database is unreachable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A listener's port is taken.
    #[error(
        "cannot listen on {addr} for the {what}: the port is already in use; set {var} to another address (port 0 picks a free one)"
    )]
    PortInUse {
        /// Which listener.
        what: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The variable that changes it.
        var: &'static str,
    },
    /// A listener could not be opened for another reason.
    #[error("cannot listen on {addr} for the {what}: {source}; set {var} to another address")]
    Listen {
        /// Which listener.
        what: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The variable that changes it.
        var: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The data directory or a file in it is not usable.
    #[error(
        "cannot use the data directory {path}: {source}; set DROVER_DATA_DIR to a writable directory"
    )]
    DataDir {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A domain step of the first start failed.
    #[error("{0}")]
    Domain(#[from] crate::error::Error),
}

impl StartError {
    /// Process exit code: 2 for what the operator fixes in the configuration, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::Store(_)
            | StartError::PortInUse { .. }
            | StartError::Listen { .. }
            | StartError::DataDir { .. } => 2,
            StartError::Domain(crate::error::Error::Invalid { .. }) => 2,
            StartError::Domain(_) => 1,
        }
    }
}

/// The addresses the server actually bound, as written to `DATA_DIR/ports.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Ports {
    /// Dashboard and REST API.
    pub http: String,
    /// Device API (mutual TLS).
    pub device: String,
    /// MQTT for devices (the gateway of the embedded broker); absent with an external broker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<String>,
}

/// Stops every listener of a running server.
#[derive(Clone)]
pub struct StopHandle {
    handles: Vec<ServerHandle>,
    live: crate::live::Live,
}

impl StopHandle {
    /// Stops accepting; with `graceful`, lets requests in flight finish first.
    pub async fn stop(&self, graceful: bool) {
        // Open dashboard streams never finish on their own.
        self.live.close();
        for h in &self.handles {
            h.stop(graceful).await;
        }
    }
}

/// A built server, listening but not yet driven.
pub struct Application {
    mqtt: MqttLink,
    server: Server,
    device_server: Server,
    device_addr: SocketAddr,
    identity: Arc<Identity>,
    store: Store,
    ports: Ports,
    http_addr: SocketAddr,
    /// The generated password of the first admin, on the very first start only.
    pub initial_admin_password: Option<String>,
    background: Vec<tokio::task::JoinHandle<()>>,
    /// The MQTT gateway's accept loop and its sessions (embedded broker only).
    gateway: Option<(tokio::task::JoinHandle<()>, Arc<Sessions>)>,
    ingest: Arc<IngestMetrics>,
    live: crate::live::Live,
}

impl Application {
    /// The bound dashboard/API address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The bound addresses.
    pub fn ports(&self) -> &Ports {
        &self.ports
    }

    /// The store the server uses.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The bound device API address.
    pub fn device_addr(&self) -> SocketAddr {
        self.device_addr
    }

    /// Enrollment and certificates (the CA hash for join commands, say).
    pub fn identity(&self) -> &Arc<Identity> {
        &self.identity
    }

    /// The server's MQTT connection (commands out, device messages in).
    pub fn mqtt(&self) -> &MqttLink {
        &self.mqtt
    }

    /// A handle that stops every listener.
    pub fn handle(&self) -> StopHandle {
        StopHandle {
            handles: vec![self.server.handle(), self.device_server.handle()],
            live: self.live.clone(),
        }
    }

    /// Serves until stopped, then lets requests in flight finish and closes the store.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let (http, device) = tokio::join!(self.server, self.device_server);
        let result = http.and(device);
        if let Some((accept, sessions)) = &self.gateway {
            accept.abort();
            sessions.close_all();
        }
        drain(&self.mqtt, &self.ingest).await;
        for task in &self.background {
            task.abort();
        }
        self.store.close().await;
        result
    }
}

/// Waits (up to 5 s) until device messages stop arriving and ingest has
/// stored what it holds: the embedded broker keeps messages in memory only,
/// so what it acknowledged to devices must reach the store before it ends.
async fn drain(mqtt: &MqttLink, ingest: &IngestMetrics) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        let (quiet_ms, queued) = mqtt.backlog();
        if quiet_ms >= 300 && queued == 0 && !ingest.busy.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::warn!("stopping with device messages still arriving or unstored");
}

/// Prepares everything and binds the listeners.
pub async fn build(settings: Settings) -> Result<Application, StartError> {
    // One crypto provider for every TLS user in the process (STACK.md).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let data_dir = settings.data_dir.clone();
    create_private_dir(&data_dir)?;
    let store = Store::connect(&settings.database_url).await?;
    store.migrate().await?;
    let jwt = JwtKeys::load_or_create(&data_dir, settings.jwt_ttl_minutes).map_err(|source| {
        StartError::DataDir {
            path: data_dir.clone(),
            source,
        }
    })?;
    let initial_admin_password = users::ensure_first_admin(&store).await?;
    if initial_admin_password.is_some() {
        crate::audit::record(
            &store,
            &crate::audit::Actor::system(),
            "user.create",
            Some("admin"),
            crate::audit::Outcome::Success,
            Some("first start: admin with a one-time password"),
        )
        .await;
    }

    let ca = Arc::new(FleetCa::load_or_create(
        &data_dir,
        settings.ca_passphrase.as_ref().map(|p| p.0.as_str()),
    )?);
    let keyring = Arc::new(Keyring::load_or_create(
        &data_dir,
        settings.ca_passphrase.as_ref().map(|p| p.0.as_str()),
    )?);
    let blobs = crate::blobs::BlobStore::open_url(&settings.blob_url)?;
    keys::ensure_trust(&store, &keyring, ca.cert_pem()).await?;
    let revoked = Arc::new(RevokedSerials::default());
    revoked.replace(devices::revoked_serials(&store).await?);
    let device_listener = bind(settings.device_listen, "device API", "DROVER_DEVICE_LISTEN")?;
    let device_addr = device_listener
        .local_addr()
        .map_err(|source| StartError::Listen {
            what: "device API",
            addr: settings.device_listen,
            var: "DROVER_DEVICE_LISTEN",
            source,
        })?;
    let public_host = settings
        .public_hostnames
        .first()
        .cloned()
        .unwrap_or_else(|| "localhost".into());
    // The gateway's port is bound now so that enrollment answers name the real one.
    let mqtt_listener = match settings.mqtt_url {
        None => Some(bind(
            settings.mqtt_listen,
            "MQTT gateway",
            "DROVER_MQTT_LISTEN",
        )?),
        Some(_) => None,
    };
    let mqtt_addr = mqtt_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()
        .map_err(|source| StartError::Listen {
            what: "MQTT gateway",
            addr: settings.mqtt_listen,
            var: "DROVER_MQTT_LISTEN",
            source,
        })?;
    let mqtt_url = match (&settings.mqtt_url, mqtt_addr) {
        (Some(url), _) => settings
            .mqtt_device_url
            .clone()
            .unwrap_or_else(|| url.clone()),
        (None, Some(addr)) => format!("mqtts://{public_host}:{}", addr.port()),
        (None, None) => unreachable!("the gateway listener exists without an external broker"),
    };
    let (revocations, _) = tokio::sync::broadcast::channel(1024);
    let identity = Arc::new(Identity {
        store: store.clone(),
        ca,
        keys: keyring,
        revoked: revoked.clone(),
        cert_lifetime: settings.device_cert_lifetime,
        recovery_grace: settings.recovery_grace,
        mqtt_url,
        revocations,
    });
    let tls = http::device::tls_config(&identity, &settings.public_hostnames, false)?;

    let live = crate::live::Live::default();
    // Names this process among replicas: the rollout lease's holder, and the origin that
    // tells a replica its own live notifications apart. A fresh one per start is enough.
    let instance = uuid::Uuid::now_v7().simple().to_string();
    // Replicas sharing PostgreSQL show each other's changes.
    let relay_tasks = match &store {
        crate::store::Store::Postgres(pool) => {
            crate::live::relay::start(&live, pool.clone(), instance.clone())
        }
        crate::store::Store::Sqlite(_) => Vec::new(),
    };
    let catalog = Arc::new(Catalog::default());
    let ingest_metrics = Arc::new(IngestMetrics::default());
    let (ingest_tx, ingest_rx) = tokio::sync::mpsc::channel(10_000);
    let ingest_task = tokio::spawn(
        Ingest {
            store: store.clone(),
            catalog: catalog.clone(),
            metrics: ingest_metrics.clone(),
            live: live.clone(),
        }
        .run(ingest_rx),
    );
    let (mqtt, mqtt_task, sync_task, gateway) = start_mqtt(
        &settings,
        &store,
        &identity,
        mqtt_listener,
        ingest_tx,
        &live,
    )?;
    let gateway_metrics = gateway.as_ref().map(|g| g.metrics.clone());

    let openapi_json = serde_json::to_string_pretty(&http::api::openapi())
        .map_err(|e| crate::error::Error::Internal(format!("OpenAPI document: {e}")))?;
    let rollout_wake = Arc::new(tokio::sync::Notify::new());
    let (alerts, alert_tasks) =
        crate::alerts::engine::Engine::start(store.clone(), live.clone(), settings.drift_pace)
            .await?;
    let state = web::Data::new(AppState {
        store: store.clone(),
        settings: Arc::new(settings.clone()),
        jwt,
        throttle: LoginThrottle::default(),
        metrics: http::metrics::Metrics::default(),
        openapi_json,
        identity: identity.clone(),
        device_url: format!("https://{public_host}:{}", device_addr.port()),
        gateway: gateway_metrics,
        catalog,
        ingest: ingest_metrics.clone(),
        blobs: blobs.clone(),
        rollouts: rollout_wake.clone(),
        live: live.clone(),
        alerts,
    });

    let listener = bind(
        settings.http_listen,
        "dashboard and API",
        "DROVER_HTTP_LISTEN",
    )?;
    let http_addr = listener.local_addr().map_err(|source| StartError::Listen {
        what: "dashboard and API",
        addr: settings.http_listen,
        var: "DROVER_HTTP_LISTEN",
        source,
    })?;
    let workers = std::thread::available_parallelism()
        .map(|n| n.get().min(4))
        .unwrap_or(2);
    let app_state = state.clone();
    let server = HttpServer::new(move || http::app(app_state.clone()))
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(10)
        .listen(listener)
        .map_err(|source| StartError::Listen {
            what: "dashboard and API",
            addr: settings.http_listen,
            var: "DROVER_HTTP_LISTEN",
            source,
        })?
        .run();

    let device_state = web::Data::new(DeviceState {
        identity: identity.clone(),
        limiter: EnrollLimiter::new(settings.enroll_rate_per_minute),
        max_json_bytes: settings.max_json_bytes,
        blobs,
        rollouts: rollout_wake.clone(),
        live: live.clone(),
    });
    let device_server = HttpServer::new(move || http::device::app(device_state.clone()))
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(10)
        .on_connect(http::device::on_connect)
        .listen_rustls_0_23(device_listener, tls)
        .map_err(|source| StartError::Listen {
            what: "device API",
            addr: settings.device_listen,
            var: "DROVER_DEVICE_LISTEN",
            source,
        })?
        .run();

    let ports = Ports {
        http: http_addr.to_string(),
        device: device_addr.to_string(),
        mqtt: mqtt_addr.map(|a| a.to_string()),
    };
    let ports_json = serde_json::to_vec_pretty(&ports)
        .map_err(|e| crate::error::Error::Internal(format!("ports.json: {e}")))?;
    std::fs::write(data_dir.join("ports.json"), ports_json).map_err(|source| {
        StartError::DataDir {
            path: data_dir.clone(),
            source,
        }
    })?;

    let mut background = vec![
        tokio::spawn(purge_sessions(store.clone())),
        tokio::spawn(reload_revocations(store.clone(), revoked)),
        mqtt_task,
        ingest_task,
        tokio::spawn(keys::announce(store.clone(), mqtt.clone())),
        tokio::spawn(crate::rollouts::engine::run(
            store.clone(),
            mqtt.clone(),
            rollout_wake,
            live.clone(),
            instance,
        )),
        tokio::spawn(crate::telemetry::retention::run(
            store.clone(),
            crate::telemetry::retention::Retention {
                raw: settings.telemetry_raw_retention,
                rollups: settings.telemetry_rollup_retention,
                deliveries: settings.webhook_delivery_retention,
            },
            settings.offline_after,
            live.clone(),
        )),
        tokio::spawn(crate::webhooks::outbox::run(store.clone())),
        tokio::spawn(crate::fleet::tallies::run(store.clone())),
    ];
    background.extend(sync_task);
    background.extend(alert_tasks);
    background.extend(relay_tasks);
    Ok(Application {
        mqtt,
        server,
        device_server,
        device_addr,
        identity,
        store,
        ports,
        http_addr,
        initial_admin_password,
        background,
        gateway: gateway.map(|g| (g.task, g.sessions)),
        ingest: ingest_metrics,
        live,
    })
}

/// The running gateway of the embedded broker.
struct GatewayParts {
    task: tokio::task::JoinHandle<()>,
    sessions: Arc<Sessions>,
    metrics: Arc<GatewayMetrics>,
}

/// The server's link, its task, the CRL sync task (external broker) and the gateway (embedded).
type MqttParts = (
    MqttLink,
    tokio::task::JoinHandle<()>,
    Option<tokio::task::JoinHandle<()>>,
    Option<GatewayParts>,
);

/// Starts the embedded broker and gateway (or points at the external
/// broker), and the server's own client.
fn start_mqtt(
    settings: &Settings,
    store: &Store,
    identity: &Arc<Identity>,
    listener: Option<TcpListener>,
    ingest: tokio::sync::mpsc::Sender<crate::mqtt::client::Inbound>,
    live: &crate::live::Live,
) -> Result<MqttParts, StartError> {
    let Some(listener) = listener else {
        let url = settings.mqtt_url.clone().unwrap_or_default();
        let endpoint = BrokerEndpoint::parse(&url, &identity.ca, &settings.data_dir)?;
        let client_id = format!("{SERVER_CLIENT_NAME}-{}", replica_id(&settings.data_dir)?);
        let (link, task) = MqttLink::start(
            endpoint.options(&client_id),
            store.clone(),
            Some(ingest),
            &crate::mqtt::client::SHARED_SUBSCRIPTIONS,
            live.clone(),
        );
        let sync = RevocationSync {
            store: store.clone(),
            ca: identity.ca.clone(),
            crl_path: settings.data_dir.join("pki").join("crl.pem"),
            reload_command: settings.mqtt_crl_reload_command.clone(),
            endpoint,
        };
        let sync_task = tokio::spawn(sync.run(identity.revocations.subscribe()));
        return Ok((link, task, Some(sync_task), None));
    };
    let listen_err = |source| StartError::Listen {
        what: "MQTT gateway",
        addr: settings.mqtt_listen,
        var: "DROVER_MQTT_LISTEN",
        source,
    };
    let broker = broker::start(64)?;
    let mut options = MqttOptions::new(
        "drover-server",
        broker.addr.ip().to_string(),
        broker.addr.port(),
    );
    options.set_credentials("drover-server", broker.secret.clone());
    let (link, task) = MqttLink::start(
        options,
        store.clone(),
        Some(ingest),
        &crate::mqtt::client::PLAIN_SUBSCRIPTIONS,
        live.clone(),
    );
    let tls = http::device::tls_config(identity, &settings.public_hostnames, true)?;
    let metrics = Arc::new(GatewayMetrics::default());
    let sessions = Arc::new(Sessions::default());
    let gateway = Arc::new(Gateway {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
        upstream: Upstream::start(broker.addr, broker.secret, sessions.clone()),
        store: store.clone(),
        link: link.clone(),
        sessions: sessions.clone(),
        metrics: metrics.clone(),
    });
    listener.set_nonblocking(true).map_err(listen_err)?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(listen_err)?;
    let gateway_task = tokio::spawn(gateway.run(listener, identity.revocations.subscribe()));
    Ok((
        link,
        task,
        None,
        Some(GatewayParts {
            task: gateway_task,
            sessions,
            metrics,
        }),
    ))
}

/// A stable id for this server's broker session (kept in the data directory).
fn replica_id(data_dir: &std::path::Path) -> Result<String, StartError> {
    let bytes = crate::secrets::load_or_create(&data_dir.join("replica.id"), || {
        hex::encode(rand::random::<[u8; 16]>()).into_bytes()
    })
    .map_err(|source| StartError::DataDir {
        path: data_dir.to_path_buf(),
        source,
    })?;
    let id = String::from_utf8_lossy(&bytes).trim().to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(StartError::Domain(crate::error::Error::invalid(
            "data_dir",
            "replica.id in the data directory is not alphanumeric; delete it to generate a new one",
        )));
    }
    Ok(id)
}

fn bind(
    addr: SocketAddr,
    what: &'static str,
    var: &'static str,
) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            StartError::PortInUse { what, addr, var }
        } else {
            StartError::Listen {
                what,
                addr,
                var,
                source,
            }
        }
    })
}

fn create_private_dir(path: &std::path::Path) -> Result<(), StartError> {
    let err = |source| StartError::DataDir {
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(path).map_err(err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

/// Re-reads revoked serials so revocations made through another replica are refused here too.
async fn reload_revocations(store: Store, revoked: Arc<RevokedSerials>) {
    let mut every = tokio::time::interval(Duration::from_secs(10));
    loop {
        every.tick().await;
        match devices::revoked_serials(&store).await {
            Ok(serials) => revoked.replace(serials),
            Err(e) => tracing::warn!(error = %e, "could not reload revoked certificates"),
        }
    }
}

async fn purge_sessions(store: Store) {
    let mut every = tokio::time::interval(Duration::from_secs(3600));
    loop {
        every.tick().await;
        if let Err(e) = users::sessions::purge_expired(&store).await {
            tracing::warn!(error = %e, "could not purge expired sessions");
        }
    }
}
