//! `drover-agent run`: the daemon. For now it validates `agent.toml` and keeps the device's
//! identity alive until SIGTERM or Ctrl-C, on which it exits cleanly; heartbeats, telemetry and
//! the update engine join it here.

use crate::config::AgentConfig;
use crate::device_api::ServerUrl;
use crate::error::{Error, Result};
use crate::identity::renewal::Keeper;
use crate::state::{CONFIG_FILE, StateDir};

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
    tracing::info!(
        device_id = %enrolled.enrollment.device_id,
        server = %server,
        heartbeat_s = config.heartbeat_s,
        installers = config.installers.len(),
        "drover-agent running"
    );
    let keeper = Keeper::new(
        state.clone(),
        server,
        enrolled.key,
        enrolled.certificate,
        enrolled.ca_der,
    );
    let stop = stop_signal()?;
    tokio::select! {
        () = keeper.keep_alive(crate::now) => Ok(()),
        signal = stop => {
            tracing::info!(signal, "stopping");
            Ok(())
        }
    }
}

/// Resolves with the signal's name on SIGTERM or SIGINT (Ctrl-C).
fn stop_signal() -> Result<impl Future<Output = &'static str>> {
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
