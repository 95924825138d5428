//! `drover-agent run`: the daemon. Validates `agent.toml`, keeps the device's identity alive,
//! serves the local intake (socket, and HTTP when configured), publishes spooled readings and
//! health over MQTT, runs the update engine and its status outbox, and acts on the server's
//! commands, until SIGTERM or Ctrl-C: then it says `{"online":false}` (best effort), removes its
//! socket and exits 0. Everything the update engine does is journaled before it happens, so a
//! stop at any moment is safe: the next start resumes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_proto::{Command, Epoch};
use tokio::sync::{Notify, mpsc, watch};

use crate::config::AgentConfig;
use crate::device_api::ServerUrl;
use crate::error::{Error, Result};
use crate::identity::renewal::Keeper;
use crate::report::SharedState;
use crate::report::intake::{self, Intake};
use crate::report::publisher::{Publisher, PublisherConfig};
use crate::report::spool::{SPOOL_DIR, Spool};
use crate::state::{CONFIG_FILE, StateDir};
use crate::trust::{self, Taken};
use crate::update::{self, Engine, Order};

/// Commands received and not yet acted on.
const COMMAND_QUEUE: usize = 16;
/// How long a stopping agent waits for the publisher's goodbye.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs until a stop signal. Configuration errors come first (exit 2), then a missing enrollment.
pub async fn run(state: &StateDir) -> Result<()> {
    let config = AgentConfig::load(&state.file(CONFIG_FILE))?;
    let enrolled = state.load()?;
    let server = ServerUrl::parse(&enrolled.enrollment.server).map_err(|e| {
        Error::State(format!(
            "{}: server {e}; remove the state directory and enroll again",
            state.file(crate::state::ENROLLMENT_FILE).display()
        ))
    })?;
    let epoch = draw_epoch();
    let spool_dir = state.file(SPOOL_DIR);
    let max_bytes = config.spool_max_bytes;
    let open_epoch = epoch.clone();
    let open_dir = spool_dir.clone();
    let spool = tokio::task::spawn_blocking(move || Spool::open(&open_dir, max_bytes, open_epoch))
        .await
        .map_err(|e| Error::Runtime(format!("cannot open the spool: {e}")))?
        .map_err(|e| Error::io("open the spool", &spool_dir, e))?;
    tracing::info!(
        device_id = %enrolled.enrollment.device_id,
        server = %server,
        heartbeat_s = config.heartbeat_s,
        installers = config.installers.len(),
        epoch = %epoch,
        spool_depth = spool.depth(),
        spool_dropped = spool.dropped(),
        "drover-agent running"
    );
    let spool = Arc::new(Mutex::new(spool));
    let shared = SharedState::default();
    let spooled = Arc::new(Notify::new());
    let intake = Intake::new(
        Arc::clone(&spool),
        shared.clone(),
        config.max_defer_s,
        Arc::clone(&spooled),
    );
    let socket = intake::socket_path(state.root());
    let listener = intake::bind_socket(&socket)?;
    let http = match config.intake.http_listen {
        Some(addr) => {
            let listener = intake::bind_http(addr).await?;
            tracing::info!(%addr, "HTTP intake listening on POST /v1/telemetry");
            Some(listener)
        }
        None => None,
    };
    let (commands_in, commands) = mpsc::channel(COMMAND_QUEUE);
    let publisher = Publisher::new(
        PublisherConfig {
            state: state.clone(),
            device_id: enrolled.enrollment.device_id.clone(),
            mqtt_url: enrolled.enrollment.mqtt_url.clone(),
            topic_prefix: enrolled.enrollment.mqtt_topic_prefix.clone(),
            heartbeat: Duration::from_secs(config.heartbeat_s),
            shared: shared.clone(),
            health: Default::default(),
        },
        spool,
        spooled,
        commands_in,
    );
    let (stop_publisher, stopping) = watch::channel(false);
    let publishing = tokio::spawn(publisher.run(stopping));
    let keeper = Keeper::new(
        state.clone(),
        server,
        enrolled.key,
        enrolled.certificate,
        enrolled.ca_der,
    );
    let outbox = Arc::new(Notify::new());
    let engine = Engine::new(
        state.clone(),
        config.clone(),
        Some(shared.clone()),
        Arc::clone(&outbox),
        true,
    );
    let (orders_in, orders) = mpsc::channel(COMMAND_QUEUE);
    let stop = stop_signal()?;
    let http_intake = {
        let intake = intake.clone();
        async move {
            match http {
                Some(listener) => intake::serve_http(listener, intake, now_ms).await,
                None => std::future::pending().await,
            }
        }
    };
    tokio::select! {
        () = keeper.keep_alive(crate::now) => {}
        () = intake::serve_socket(listener, intake, now_ms) => {}
        () = http_intake => {}
        () = serve_commands(state.clone(), commands, orders_in) => {}
        () = update::serve(engine, orders) => {}
        () = update::send_outbox(state.clone(), outbox) => {}
        signal = stop => tracing::info!(signal, "stopping"),
    }
    let _ = stop_publisher.send(true);
    if tokio::time::timeout(STOP_TIMEOUT, publishing)
        .await
        .is_err()
    {
        tracing::warn!("the publisher did not stop in time");
    }
    if let Err(e) = std::fs::remove_file(&socket) {
        tracing::debug!(error = %e, "cannot remove the intake socket");
    }
    Ok(())
}

/// Acts on the server's commands, one at a time; never returns while `run` lives.
pub(crate) async fn serve_commands(
    state: StateDir,
    mut commands: mpsc::Receiver<Command>,
    orders: mpsc::Sender<Order>,
) {
    // A `refresh_trust` sent while the device was away is lost with its
    // session, so every start asks for the current trust document once,
    // and then for an update offer it may have missed.
    refresh_trust(&state, true).await;
    let _ = orders.send(Order::Offer).await;
    while let Some(command) = commands.recv().await {
        match command {
            Command::RefreshTrust => refresh_trust(&state, false).await,
            Command::UpdateAvailable { .. } => {
                // The trust document may have changed with the bundle's signing key.
                refresh_trust(&state, false).await;
                let _ = orders.send(Order::Offer).await;
            }
            Command::Rollback { rollout_id } => {
                let _ = orders.send(Order::Rollback(rollout_id)).await;
            }
            Command::RenewCertificate => {
                tracing::info!("renew_certificate received; the keeper renews on its schedule")
            }
        }
    }
    std::future::pending().await
}

/// Fetches and takes a newer trust document; at start an unreachable server is expected.
async fn refresh_trust(state: &StateDir, at_start: bool) {
    match trust::refresh(state, crate::now).await {
        Ok(Taken::Updated {
            from,
            to,
            root_changed,
        }) => tracing::info!(from, to, root_changed, "took a new trust document"),
        Ok(Taken::Unchanged { version }) => {
            tracing::debug!(version, "the trust document is current")
        }
        Err(error) if at_start => {
            tracing::info!(%error, "cannot check the trust document now; it is checked again when the server says so")
        }
        Err(error) => tracing::warn!(%error, "kept the held trust document"),
    }
}

/// The device clock in milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    crate::now().unix_millis()
}

/// A fresh telemetry epoch: 8 random bytes from the kernel, so a restarted agent's sequence
/// numbers (from 1 again) never collide with what it sent before.
pub(crate) fn draw_epoch() -> Epoch {
    use std::io::Read as _;
    let mut bytes = [0u8; 8];
    let from_kernel =
        std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if from_kernel.is_err() {
        // No /dev/urandom (a minimal chroot): std's randomly keyed hasher, mixed with the clock.
        let mixed = (crate::identity::schedule::jitter() * (u64::MAX as f64)) as u64;
        bytes = (mixed ^ u64::from(std::process::id())).to_le_bytes();
    }
    Epoch::from_random(&bytes)
}

/// Resolves with the signal's name on SIGTERM or SIGINT (Ctrl-C).
pub(crate) fn stop_signal() -> Result<impl Future<Output = &'static str>> {
    use tokio::signal::unix::{SignalKind, signal};
    let setup = |e| Error::Runtime(format!("cannot listen for stop signals: {e}"));
    let mut terminate = signal(SignalKind::terminate()).map_err(setup)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(setup)?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        }
    })
}
