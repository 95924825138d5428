//! The update engine (ARCHITECTURE flow 3 on the device): a journaled state machine
//! ([`journal`], [`engine`]) over three installers ([`installer`]: `files`, `ab`, `script`), a
//! status outbox that retries until the server acknowledges, and the daemon's update task that
//! takes offers (`update_available`, a poll at start and every hour), server-ordered rollbacks,
//! and refuses a second offer while one update runs. [`absim`] is the built-in simulated A/B
//! backend the tests and demos configure as their slot commands.

pub mod absim;
pub mod engine;
pub mod installer;
pub mod journal;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

pub use engine::{Ended, Engine, Simulation};
pub use journal::{Journal, UpdateDoc, UpdateStore};

use crate::device_api::DeviceApi;
use crate::error::Error;
use crate::state::StateDir;

/// How often an idle agent asks the server for an offer it may have missed.
const POLL_INTERVAL: Duration = Duration::from_secs(3600);
/// Longest pause between outbox attempts.
const OUTBOX_MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What the daemon hands the update task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Order {
    /// `update_available` (or a poll): fetch the offer.
    Offer,
    /// `rollback` of a rollout.
    Rollback(String),
}

/// The daemon's update task: resumes a journal left by an earlier run, then takes orders until
/// the process stops.
pub async fn serve(engine: Engine, mut orders: mpsc::Receiver<Order>) {
    engine.publish_installed();
    let mut pending_rollbacks: Vec<String> = Vec::new();
    // A journal left unfinished (crash, power cut, reboot, our own restart) comes first.
    drive_active(&engine, &mut orders, &mut pending_rollbacks).await;
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    loop {
        let order = if let Some(rollout) = pending_rollbacks.pop() {
            Order::Rollback(rollout)
        } else {
            tokio::select! {
                order = orders.recv() => match order {
                    Some(order) => order,
                    None => return,
                },
                _ = poll.tick() => Order::Offer,
            }
        };
        match order {
            Order::Offer => {
                let offer = match engine_api(&engine).await {
                    Ok(Some(offer)) => offer,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::info!(error = %e, "cannot fetch the update offer now");
                        continue;
                    }
                };
                match engine.store().read() {
                    Ok(doc) if doc.is_finished(&offer.rollout_id) => {
                        tracing::debug!(rollout_id = %offer.rollout_id, "offer already finished here");
                        continue;
                    }
                    Ok(doc) if doc.active().is_some() => {
                        // An update left unfinished (its journal could not be written before):
                        // it goes first, and never gets overwritten by a new one.
                        drive_active(&engine, &mut orders, &mut pending_rollbacks).await;
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read the update journal");
                        continue;
                    }
                }
                let Some(_claim) = claim(&engine).await else {
                    continue;
                };
                match engine.accept_offer(&offer) {
                    Ok(Some(journal)) => {
                        drive(&engine, journal, &mut orders, &mut pending_rollbacks).await;
                    }
                    Ok(None) => {}
                    Err(e) => tracing::error!(error = %e, "cannot record the update offer"),
                }
            }
            Order::Rollback(rollout) => {
                let Some(_claim) = claim(&engine).await else {
                    continue;
                };
                match engine.accept_rollback(&rollout) {
                    Ok(Ok(journal)) => {
                        drive(&engine, journal, &mut orders, &mut pending_rollbacks).await;
                    }
                    Ok(Err(detail)) => {
                        tracing::warn!(rollout_id = %rollout, %detail, "rollback refused");
                    }
                    Err(e) => tracing::error!(error = %e, "cannot record the rollback"),
                }
            }
        }
    }
}

async fn engine_api(engine: &Engine) -> Result<Option<drover_proto::UpdateOffer>, Error> {
    DeviceApi::for_device(engine.state_dir())?
        .update_offer()
        .await
}

/// Takes the engine lock, waiting while an offline install holds it.
async fn claim(engine: &Engine) -> Option<std::fs::File> {
    loop {
        match engine.store().claim() {
            Ok(Some(lock)) => return Some(lock),
            Ok(None) => tokio::time::sleep(Duration::from_secs(2)).await,
            Err(e) => {
                tracing::error!(error = %e, "cannot take the update lock");
                return None;
            }
        }
    }
}

async fn drive_active(
    engine: &Engine,
    orders: &mut mpsc::Receiver<Order>,
    pending_rollbacks: &mut Vec<String>,
) {
    let Some(_claim) = claim(engine).await else {
        return;
    };
    let journal = match engine.store().read() {
        Ok(doc) => engine::resumable(&doc),
        Err(e) => {
            tracing::error!(error = %e, "cannot read the update journal; no update resumes");
            return;
        }
    };
    if let Some(journal) = journal {
        tracing::info!(bundle = %journal.name, version = %journal.version, state = %journal.state, "resuming the update in progress");
        drive(engine, journal, orders, pending_rollbacks).await;
    }
}

/// Drives one journal while answering orders: a second offer is refused (reported `failed`), a
/// rollback waits for the update to end.
async fn drive(
    engine: &Engine,
    journal: Journal,
    orders: &mut mpsc::Receiver<Order>,
    pending_rollbacks: &mut Vec<String>,
) {
    let current = journal.rollout_id.clone();
    let describe = format!("{} {} ", journal.name, journal.version);
    let driving = engine.drive(journal);
    tokio::pin!(driving);
    let ended = loop {
        tokio::select! {
            ended = &mut driving => break ended,
            order = orders.recv() => match order {
                Some(Order::Offer) => refuse_second(engine, current.as_deref(), &describe).await,
                Some(Order::Rollback(rollout)) => pending_rollbacks.push(rollout),
                None => std::future::pending::<()>().await,
            },
        }
    };
    match ended {
        Ok(Ended::Final(j)) => {
            tracing::info!(bundle = %j.name, version = %j.version, state = %j.state, detail = %j.detail, "update finished");
        }
        Ok(Ended::Stopping(what)) => {
            tracing::info!(what, "waiting to be stopped");
            tokio::time::sleep(engine::STOP_WAIT).await;
            tracing::warn!(
                what,
                "still running long after the order; resuming the journal"
            );
            Box::pin(drive_active(engine, orders, pending_rollbacks)).await;
        }
        Err(e) => tracing::error!(error = %e, "the update stopped: its journal cannot be written"),
    }
}

/// Answers an `update_available` that arrives while an update runs.
async fn refuse_second(engine: &Engine, current: Option<&str>, describe: &str) {
    let offer = match engine_api(engine).await {
        Ok(Some(offer)) => offer,
        Ok(None) => return,
        Err(e) => {
            tracing::info!(error = %e, "cannot fetch the second offer now");
            return;
        }
    };
    if current == Some(offer.rollout_id.as_str()) {
        return;
    }
    if let Ok(doc) = engine.store().read()
        && doc.is_finished(&offer.rollout_id)
    {
        return;
    }
    let detail = format!(
        "offer refused: the device is busy with the update to {describe}(rollout {}); offer it again when that one has finished",
        current.unwrap_or("offline install")
    );
    if let Err(e) = engine.refuse(&offer.rollout_id, detail) {
        tracing::error!(error = %e, "cannot record the refusal");
    }
}

/// `drover-agent install FILE`: every check, staging, then the same engine and installers as an
/// offered update (no rollout, so no reports and no `require_server`), to a final state — or to
/// the reboot an `ab` install orders, after which `drover-agent run` finishes the commit.
pub async fn install_file(
    state: &StateDir,
    config: &crate::config::AgentConfig,
    file: &std::path::Path,
) -> Result<String, Error> {
    let engine = Engine::new(
        state.clone(),
        config.clone(),
        None,
        Arc::new(Notify::new()),
        false,
    );
    let Some(_claim) = engine.store().claim()? else {
        return Err(Error::State(
            "another drover-agent is driving an update on this device; try again when it has finished".into(),
        ));
    };
    if let Some(active) = engine.store().read()?.active() {
        return Err(Error::State(format!(
            "an update to {} {} is in progress here ({}); `drover-agent run` finishes it, then install again",
            active.name, active.version, active.state
        )));
    }
    let device = crate::bundle::Device::enrolled(state)?;
    let manifest = crate::bundle::stage(file, &device, config, crate::now())?;
    let journal = engine.accept_staged(&manifest)?;
    match engine.drive(journal).await? {
        Ended::Final(j) => match j.state {
            drover_proto::UpdateState::Succeeded => Ok(format!(
                "installed {} {} ({}); committed",
                j.name, j.version, j.kind
            )),
            state => {
                let mut message = format!("{} {} {state}: {}", j.name, j.version, j.detail);
                if !j.log.is_empty() {
                    message.push_str(
                        "
--- log tail ---
",
                    );
                    message.push_str(&j.log);
                }
                Err(Error::Update(message))
            }
        },
        Ended::Stopping(what) => Ok(format!(
            "installed {} {}; {what} ordered: `drover-agent run` commits it after the {what}",
            manifest.name, manifest.version
        )),
    }
}

/// Sends queued status reports until each is acknowledged; wakes on `wake` and retries with a
/// rising pause while the server cannot be reached.
pub async fn send_outbox(state: StateDir, wake: Arc<Notify>) {
    let store = UpdateStore::new(&state);
    let mut backoff = Duration::from_secs(1);
    loop {
        let next = match store.read() {
            Ok(doc) => doc.next_to_send().cloned(),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the outbox");
                None
            }
        };
        let Some(queued) = next else {
            let _ = tokio::time::timeout(Duration::from_secs(60), wake.notified()).await;
            continue;
        };
        let sent = match DeviceApi::for_device(&state) {
            Ok(api) => api.report_status(&queued.rollout_id, &queued.report).await,
            Err(e) => Err(e),
        };
        match sent {
            Ok(answer) => {
                tracing::debug!(rollout_id = %queued.rollout_id, seq = queued.report.seq, state = %answer.state, "status report acknowledged");
                backoff = Duration::from_secs(1);
                if let Err(e) =
                    store.modify(|doc| doc.acknowledge(&queued.rollout_id, queued.report.seq))
                {
                    tracing::error!(error = %e, "cannot update the outbox");
                }
            }
            Err(Error::Refused { status, detail, .. })
                if (400..500).contains(&status) && status != 429 =>
            {
                // The server will never take it (the rollout is gone): keeping it would block the
                // reports behind it.
                tracing::warn!(rollout_id = %queued.rollout_id, status, %detail, "status report refused; dropped");
                if let Err(e) =
                    store.modify(|doc| doc.acknowledge(&queued.rollout_id, queued.report.seq))
                {
                    tracing::error!(error = %e, "cannot update the outbox");
                }
            }
            Err(e) => {
                tracing::info!(error = %e, retry_in_s = backoff.as_secs(), "status report not delivered yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(OUTBOX_MAX_BACKOFF);
            }
        }
    }
}
