//! The update engine: drives one journal through the contract's states. Every transition is
//! written (with its report) before the side effects it announces, and every side effect is safe
//! to repeat, so [`Engine::drive`] can pick up a journal at any point after a crash, a power cut
//! or a reboot, and end with the old or the new version running — never something in between.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use drover_proto::{
    DeviceFacts, InstalledBundle, Installer, Kind, Manifest, UpdateOffer, UpdateState, Version,
    verify_bundle,
};
use tokio::sync::Notify;

use super::installer::{self, Env, Ran, StagedPayload};
use super::journal::{Journal, Operation, Step, UpdateDoc, UpdateStore};
use crate::bundle::staging::Staging;
use crate::bundle::{BundleError, download};
use crate::config::{AgentConfig, InstallerConfig};
use crate::device_api::DeviceApi;
use crate::error::{Error, Result};
use crate::fault;
use crate::report::SharedState;
use crate::state::StateDir;

/// Longest an installer command (writing a slot, a script) may run.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Longest a short command (`switch_once`, `booted_slot`, `confirm`, `restart`) may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the agent waits to be stopped after ordering a reboot or its own restart.
pub const STOP_WAIT: Duration = Duration::from_secs(300);
/// Trial boots of a new slot before a fallback counts as the bootloader's verdict.
const TRIAL_BOOTS: u32 = 2;
/// Starts of a new agent inside its commit window before it counts as crashing.
const AGENT_STARTS: u32 = 3;
/// Download attempts before a transient failure ends the update.
const DOWNLOAD_ATTEMPTS: u32 = 5;
/// Pause between attempts to reach the server inside the commit window.
const SERVER_RETRY: Duration = Duration::from_secs(3);

/// How a drive ended.
#[derive(Debug)]
pub enum Ended {
    /// A final state.
    Final(Box<Journal>),
    /// A reboot or restart was ordered: the process should wait to be stopped.
    Stopping(&'static str),
}

/// The engine of one state directory.
#[derive(Clone, Debug)]
pub struct Engine {
    state: StateDir,
    config: AgentConfig,
    store: UpdateStore,
    shared: Option<SharedState>,
    outbox: Arc<Notify>,
    online: bool,
    simulation: Option<Arc<Simulation>>,
}

/// A simulated device's installer (the fleet simulator): downloads and verification are real,
/// installing changes nothing outside the state directory, and the health check fails on the
/// listed versions.
#[derive(Clone, Debug, Default)]
pub struct Simulation {
    /// Versions whose health check fails (`--fail-versions`).
    pub fail_versions: Vec<Version>,
}

/// Why an update stopped short of success.
enum Stop {
    /// Nothing was changed.
    Failed(String),
    /// Installed, but must return to the previous version.
    Revert(String),
}

impl Engine {
    /// An engine for `state`; `online` is false for an offline install (no server is contacted
    /// and `require_server` does not apply).
    pub fn new(
        state: StateDir,
        config: AgentConfig,
        shared: Option<SharedState>,
        outbox: Arc<Notify>,
        online: bool,
    ) -> Engine {
        let store = UpdateStore::new(&state);
        Engine {
            state,
            config,
            store,
            shared,
            outbox,
            online,
            simulation: None,
        }
    }

    /// The same engine with a simulated installer for every bundle kind.
    pub fn simulated(mut self, simulation: Arc<Simulation>) -> Engine {
        self.simulation = Some(simulation);
        self
    }

    /// The state directory.
    pub fn state_dir(&self) -> &StateDir {
        &self.state
    }

    /// The journal store.
    pub fn store(&self) -> &UpdateStore {
        &self.store
    }

    /// Writes `j` (and queues its report when `report`), then tells health and the outbox.
    fn save(&self, j: &Journal, report: bool) -> Result<()> {
        self.store.modify(|doc| {
            doc.journal = Some(j.clone());
            if report {
                doc.queue_report();
            }
        })?;
        if let Some(shared) = &self.shared {
            shared.lock().update_state = Some(j.state);
        }
        if report {
            self.outbox.notify_one();
        }
        Ok(())
    }

    /// Moves `j` to `state` with `detail`, durably and reported.
    fn enter(&self, j: &mut Journal, state: UpdateState, detail: impl Into<String>) -> Result<()> {
        j.state = state;
        j.detail = detail.into();
        tracing::info!(bundle = %j.name, version = %j.version, state = %state, detail = %j.detail, "update state");
        self.save(j, true)
    }

    /// Queues a refusal for an offer that never became the journal.
    pub fn refuse(&self, rollout_id: &str, detail: String) -> Result<()> {
        tracing::warn!(rollout_id, %detail, "update offer refused");
        self.store
            .modify(|doc| doc.queue_refusal(rollout_id, UpdateState::Failed, detail))?;
        self.outbox.notify_one();
        Ok(())
    }

    /// The installer table for `kind`.
    fn installer_config(&self, kind: Kind) -> Option<&InstallerConfig> {
        self.config.installers.get(&kind)
    }

    /// Checks an offer against the device (trust, signature, device type, expiry, version,
    /// installer) and turns it into a journal in `downloading`; a refusal is reported `failed`.
    pub fn accept_offer(&self, offer: &UpdateOffer) -> Result<Option<Journal>> {
        match self.check_offer(offer) {
            Ok(journal) => {
                let mut j = journal;
                self.enter(&mut j, UpdateState::Downloading, "downloading payloads")?;
                fault::point("downloading");
                Ok(Some(j))
            }
            Err(detail) => {
                self.refuse(&offer.rollout_id, detail)?;
                Ok(None)
            }
        }
    }

    fn check_offer(&self, offer: &UpdateOffer) -> std::result::Result<Journal, String> {
        let (enrollment, trust) = self.state.trust_store().map_err(|e| e.to_string())?;
        let device_type = enrollment
            .require_device_type(&self.state)
            .map_err(|e| e.to_string())?
            .to_owned();
        let installed = self.state.installed().map_err(|e| e.to_string())?;
        let trusted = trust
            .current()
            .ok_or("trust check failed: the device holds no trust document")?;
        let verified = verify_bundle(
            trusted,
            &offer.envelope,
            &DeviceFacts {
                device_type: &device_type,
                installed: &installed.versions(),
                now: crate::now(),
                signed_time_floor: installed.signed_time_floor,
            },
        )
        .map_err(|e| e.to_string())?;
        let manifest = verified.manifest().clone();
        if manifest.payloads.len() != offer.payloads.len()
            || manifest.payloads.iter().any(|p| {
                !offer
                    .payloads
                    .iter()
                    .any(|o| o.name == p.name && o.size == p.size && o.sha256 == p.sha256)
            })
        {
            return Err(
                "payload check failed: the offer's payload list does not match the signed manifest"
                    .into(),
            );
        }
        self.check_installer(&manifest)?;
        Ok(Journal {
            operation: Operation::Install,
            rollout_id: Some(offer.rollout_id.clone()),
            name: manifest.name.clone(),
            kind: manifest.kind,
            installer: manifest.installer,
            version: manifest.version.clone(),
            previous: installed.version_of(manifest.name.as_str()).cloned(),
            payloads: offer.payloads.clone(),
            manifest: Some(manifest),
            state: UpdateState::Downloading,
            step: Step::default(),
            deadline_ms: None,
            revert_reason: None,
            detail: String::new(),
            log: String::new(),
        })
    }

    fn check_installer(&self, manifest: &Manifest) -> std::result::Result<(), String> {
        if self.simulation.is_some() {
            return Ok(());
        }
        match self.installer_config(manifest.kind) {
            Some(table) if table.installer == manifest.installer => Ok(()),
            Some(table) => Err(format!(
                "installer check failed: the bundle is a {} bundle for the `{}` installer, and agent.toml has [installers.{}] of type \"{}\"",
                manifest.kind, manifest.installer, manifest.kind, table.installer
            )),
            None => Err(format!(
                "installer check failed: agent.toml has no [installers.{}] table",
                manifest.kind
            )),
        }
    }

    /// A journal for a bundle staged from a file (offline install), entering `installing`.
    pub fn accept_staged(&self, manifest: &Manifest) -> Result<Journal> {
        let installed = self.state.installed()?;
        let mut j = Journal {
            operation: Operation::Install,
            rollout_id: None,
            name: manifest.name.clone(),
            kind: manifest.kind,
            installer: manifest.installer,
            version: manifest.version.clone(),
            previous: installed.version_of(manifest.name.as_str()).cloned(),
            payloads: Vec::new(),
            manifest: Some(manifest.clone()),
            state: UpdateState::Installing,
            step: Step::default(),
            deadline_ms: None,
            revert_reason: None,
            detail: String::new(),
            log: String::new(),
        };
        self.enter(&mut j, UpdateState::Installing, "installing")?;
        fault::point("installing");
        Ok(j)
    }

    /// A journal for a server-ordered rollback of what `rollout_id` installed; `Err` explains
    /// why there is nothing to roll back.
    pub fn accept_rollback(
        &self,
        rollout_id: &str,
    ) -> Result<std::result::Result<Journal, String>> {
        let installed = self.state.installed()?;
        let Some(kept) = installed
            .kept
            .iter()
            .find(|k| k.rollout_id.as_deref() == Some(rollout_id))
        else {
            return Ok(Err(format!(
                "rollback refused: nothing installed here by rollout {rollout_id} has a kept previous release"
            )));
        };
        let Some(current) = installed
            .bundles
            .iter()
            .find(|b| b.name.as_str() == kept.name)
        else {
            return Ok(Err(format!(
                "rollback refused: {} is not installed",
                kept.name
            )));
        };
        let installer = match (self.installer_config(current.kind), &self.simulation) {
            (_, Some(_)) => Installer::Files,
            (Some(table), None) => table.installer,
            (None, None) => {
                return Ok(Err(format!(
                    "rollback refused: agent.toml has no [installers.{}] table",
                    current.kind
                )));
            }
        };
        let mut j = Journal {
            operation: Operation::Rollback,
            rollout_id: Some(rollout_id.to_owned()),
            name: current.name.clone(),
            kind: current.kind,
            installer,
            version: kept.version.clone(),
            previous: Some(current.version.clone()),
            payloads: Vec::new(),
            manifest: None,
            state: UpdateState::Installing,
            step: Step::default(),
            deadline_ms: None,
            revert_reason: None,
            detail: String::new(),
            log: String::new(),
        };
        self.enter(
            &mut j,
            UpdateState::Installing,
            format!("rolling back to {}", kept.version),
        )?;
        Ok(Ok(j))
    }

    /// Drives `j` until a final state, or until the process must wait for a reboot or restart.
    pub async fn drive(&self, mut j: Journal) -> Result<Ended> {
        loop {
            if j.state.is_final() && j.state != UpdateState::Deferred {
                self.after_final(&j).await;
                return Ok(Ended::Final(Box::new(j)));
            }
            let outcome = match (j.operation, j.state) {
                (_, UpdateState::Downloading) => self.download(&mut j).await,
                (_, UpdateState::Verifying) => self.verify(&mut j).await,
                (_, UpdateState::Deferred) => self.hold(&mut j).await,
                (Operation::Install, UpdateState::Installing) => self.install(&mut j).await,
                (Operation::Rollback, UpdateState::Installing) => self.roll_back(&mut j).await,
                (_, UpdateState::Rebooting) => self.rebooted(&mut j).await,
                (_, UpdateState::Committing) => self.commit_window(&mut j).await,
                (_, state) => Err(Stop::Failed(format!("unexpected journal state {state}"))),
            };
            match outcome {
                Ok(Some(waiting)) => return Ok(Ended::Stopping(waiting)),
                Ok(None) => {}
                Err(Stop::Failed(detail)) => {
                    self.clean_failed(&j).await;
                    self.enter(&mut j, UpdateState::Failed, detail)?;
                }
                Err(Stop::Revert(reason)) => {
                    if let Some(waiting) = self.revert(&mut j, reason).await? {
                        return Ok(Ended::Stopping(waiting));
                    }
                }
            }
        }
    }

    async fn download(&self, j: &mut Journal) -> Result<Option<&'static str>, Stop> {
        let staging = self.open_staging().await?;
        let api = self
            .api()
            .map_err(|e| Stop::Failed(format!("download failed: {e}")))?;
        let mut attempt = 0;
        'payloads: for payload in j.payloads.clone() {
            loop {
                match download::fetch(&api, &staging, &payload).await {
                    Ok(_) => continue 'payloads,
                    Err(Error::Bundle {
                        source:
                            e @ (BundleError::NoSpace { .. }
                            | BundleError::Payload(_)
                            | BundleError::BadDownload { .. }),
                        ..
                    }) => return Err(Stop::Failed(e.to_string())),
                    Err(e) => {
                        attempt += 1;
                        if attempt >= DOWNLOAD_ATTEMPTS {
                            return Err(Stop::Failed(format!(
                                "download failed after {attempt} attempts: {e}"
                            )));
                        }
                        tracing::warn!(error = %e, attempt, "download interrupted; resuming");
                        tokio::time::sleep(Duration::from_secs(2u64 << attempt.min(4))).await;
                    }
                }
            }
        }
        drop(staging);
        fault::point("downloaded");
        self.enter(j, UpdateState::Verifying, "verifying payloads")
            .map_err(stop_io)?;
        fault::point("verifying");
        Ok(None)
    }

    async fn verify(&self, j: &mut Journal) -> Result<Option<&'static str>, Stop> {
        let staging = self.open_staging().await?;
        let manifest = j
            .manifest
            .clone()
            .ok_or_else(|| Stop::Failed("the journal lost its manifest".into()))?;
        let dir = staging.dir().to_owned();
        let checked = tokio::task::spawn_blocking(move || {
            for payload in &manifest.payloads {
                let path = dir.join(payload.sha256.to_string());
                let mut hasher = drover_proto::PayloadHasher::new(payload);
                let mut file = std::fs::File::open(&path)
                    .map_err(|e| format!("verification failed: {}: {e}", path.display()))?;
                let mut buffer = vec![0u8; 256 * 1024];
                loop {
                    let n = std::io::Read::read(&mut file, &mut buffer)
                        .map_err(|e| format!("verification failed: {}: {e}", path.display()))?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buffer[..n]).map_err(|e| e.to_string())?;
                }
                hasher.finish().map_err(|e| e.to_string())?;
            }
            Ok::<(), String>(())
        })
        .await
        .map_err(|e| Stop::Failed(format!("verification failed: {e}")))?;
        checked.map_err(Stop::Failed)?;
        drop(staging);
        fault::point("verified");
        if self.held_until().is_some() {
            self.enter(
                j,
                UpdateState::Deferred,
                "held by the device's program (defer_updates)",
            )
            .map_err(stop_io)?;
        } else {
            self.enter(j, UpdateState::Installing, "installing")
                .map_err(stop_io)?;
            fault::point("installing");
        }
        Ok(None)
    }

    /// The end of a `defer_updates` hold, when one is in force.
    fn held_until(&self) -> Option<i64> {
        let shared = self.shared.as_ref()?;
        let until = shared.lock().defer_until?;
        (until > crate::now().unix_millis()).then_some(until)
    }

    async fn hold(&self, j: &mut Journal) -> Result<Option<&'static str>, Stop> {
        while let Some(until) = self.held_until() {
            let wait = until - crate::now().unix_millis();
            let wait = Duration::from_millis(u64::try_from(wait).unwrap_or(0).min(1000));
            tokio::time::sleep(wait).await;
        }
        self.enter(j, UpdateState::Installing, "the hold ended; installing")
            .map_err(stop_io)?;
        fault::point("installing");
        Ok(None)
    }

    fn table(&self, j: &Journal) -> Result<&InstallerConfig, Stop> {
        self.installer_config(j.kind)
            .filter(|t| t.installer == j.installer)
            .ok_or_else(|| {
                Stop::Failed(format!(
                    "installer check failed: agent.toml no longer has a `{}` installer for {} bundles",
                    j.installer, j.kind
                ))
            })
    }

    fn env(&self, j: &Journal) -> Env {
        Env::for_update(
            self.state.root(),
            &j.name,
            j.kind,
            &j.version,
            j.previous.as_ref(),
        )
    }

    /// The staged payloads of `j`, as installers take them.
    fn staged(&self, j: &Journal) -> Result<Vec<StagedPayload>, Stop> {
        let manifest = j
            .manifest
            .as_ref()
            .ok_or_else(|| Stop::Failed("the journal lost its manifest".into()))?;
        let dir = self.state.file(crate::state::STAGING_DIR);
        Ok(manifest
            .payloads
            .iter()
            .map(|p| StagedPayload {
                name: p.name.clone(),
                format: p.format,
                path: dir.join(p.sha256.to_string()),
            })
            .collect())
    }

    async fn install(&self, j: &mut Journal) -> Result<Option<&'static str>, Stop> {
        if self.simulation.is_some() {
            fault::point("installed");
            j.step.switched = true;
            fault::point("switched");
            self.enter_window(j)?;
            return Ok(None);
        }
        let table = self.table(j)?.clone();
        match j.installer {
            Installer::Files => {
                let target = files_target(&table)?;
                let payloads = self.staged(j)?;
                let (name, kind, version) = (j.name.clone(), j.kind, j.version.clone());
                let built = tokio::task::spawn_blocking(move || {
                    installer::build_release(&target, &name, kind, &version, &payloads)?;
                    fault::point("installed");
                    installer::switch_current(&target, &name, Some(&version))
                })
                .await
                .map_err(|e| Stop::Failed(format!("install failed: {e}")))?;
                built.map_err(|e| Stop::Failed(format!("install failed: {e}")))?;
                fault::point("switched");
                j.step.switched = true;
                self.enter_window(j)?;
            }
            Installer::Script => {
                let ran = self.run_script(j, "install").await?;
                j.append_log(&ran.log);
                if !ran.ok {
                    return Err(Stop::Failed(format!(
                        "install failed: the install script ended with {}",
                        ran.how
                    )));
                }
                fault::point("installed");
                j.step.switched = true;
                fault::point("switched");
                self.enter_window(j)?;
            }
            Installer::Ab => {
                let from = self.booted_slot(j, &table).await?;
                let to = other_slot(&from).ok_or_else(|| {
                    Stop::Failed(format!(
                        "install failed: booted_slot printed `{from}`; slots must be a/b, A/B or 0/1"
                    ))
                })?;
                j.step.from_slot = Some(from);
                j.step.to_slot = Some(to.clone());
                self.save(j, false).map_err(stop_io)?;
                let payload = self.staged(j)?.into_iter().next().ok_or_else(|| {
                    Stop::Failed("install failed: the bundle has no payload".into())
                })?;
                let command = installer::expand(
                    table.install.as_deref().unwrap_or_default(),
                    Some(&payload.path),
                    Some(&to),
                );
                let ran = installer::run(&command, &self.env(j), INSTALL_TIMEOUT).await;
                j.append_log(&ran.log);
                if !ran.ok {
                    return Err(Stop::Failed(format!(
                        "install failed: writing slot {to} ended with {}",
                        ran.how
                    )));
                }
                fault::point("installed");
                self.arm(j, &table, &to).await.map_err(Stop::Failed)?;
                j.step.switched = true;
                fault::point("switched");
                self.enter(
                    j,
                    UpdateState::Rebooting,
                    format!("rebooting into slot {to}"),
                )
                .map_err(stop_io)?;
            }
        }
        Ok(None)
    }

    /// Enters the commit window (state `committing`, deadline from `[health] commit_window_s`).
    fn enter_window(&self, j: &mut Journal) -> Result<(), Stop> {
        let window = self
            .config
            .health
            .as_ref()
            .map_or(300, |h| h.commit_window_s);
        j.deadline_ms = Some(
            crate::now().unix_millis() + i64::try_from(window.saturating_mul(1000)).unwrap_or(0),
        );
        self.enter(
            j,
            UpdateState::Committing,
            format!("installed; commit window of {window} s"),
        )
        .map_err(stop_io)?;
        fault::point("committing");
        Ok(())
    }

    async fn run_script(&self, j: &Journal, action: &str) -> Result<Ran, Stop> {
        let payloads = self.staged(j)?;
        let script = payloads
            .first()
            .ok_or_else(|| Stop::Failed("install failed: the bundle has no payload".into()))?;
        let work = self.store.dir().join("script");
        let prepared = prepare_script(&work, &payloads)
            .map_err(|e| Stop::Failed(format!("install failed: preparing the script: {e}")))?;
        let env = self
            .env(j)
            .with("DROVER_ACTION", action)
            .with("DROVER_PAYLOAD_DIR", work.display().to_string());
        let command = installer::expand(
            "{payload}",
            Some(&prepared.join(script.name.as_str())),
            None,
        );
        Ok(installer::run(&command, &env, INSTALL_TIMEOUT).await)
    }

    async fn booted_slot(&self, j: &Journal, table: &InstallerConfig) -> Result<String, Stop> {
        let ran = installer::run(
            table.booted_slot.as_deref().unwrap_or_default(),
            &self.env(j),
            COMMAND_TIMEOUT,
        )
        .await;
        if !ran.ok {
            return Err(Stop::Failed(format!(
                "booted_slot ended with {}: {}",
                ran.how,
                ran.log.lines().last().unwrap_or_default()
            )));
        }
        Ok(ran.stdout.trim().to_owned())
    }

    /// `switch_once {slot}`.
    async fn arm(
        &self,
        j: &mut Journal,
        table: &InstallerConfig,
        slot: &str,
    ) -> Result<(), String> {
        let command = installer::expand(
            table.switch_once.as_deref().unwrap_or_default(),
            None,
            Some(slot),
        );
        let ran = installer::run(&command, &self.env(j), COMMAND_TIMEOUT).await;
        j.append_log(&ran.log);
        if ran.ok {
            Ok(())
        } else {
            Err(format!("switch_once {slot} ended with {}", ran.how))
        }
    }

    /// Counts a trial boot in the journal, then runs `reboot`.
    async fn reboot(&self, j: &mut Journal, table: &InstallerConfig) -> Result<&'static str, Stop> {
        j.step.starts += 1;
        j.step.reboot_ordered = true;
        self.save(j, false).map_err(stop_io)?;
        let ran = installer::run(
            table.reboot.as_deref().unwrap_or_default(),
            &self.env(j),
            COMMAND_TIMEOUT,
        )
        .await;
        j.append_log(&ran.log);
        if !ran.ok {
            return Err(Stop::Failed(format!("reboot ended with {}", ran.how)));
        }
        Ok("reboot")
    }

    /// `rebooting`: before the reboot, (re)arm and reboot; after it, see which slot runs.
    async fn rebooted(&self, j: &mut Journal) -> Result<Option<&'static str>, Stop> {
        let table = self.table(j)?.clone();
        let (Some(from), Some(to)) = (j.step.from_slot.clone(), j.step.to_slot.clone()) else {
            return Err(Stop::Failed("the journal lost its slots".into()));
        };
        let booted = self.booted_slot(j, &table).await?;
        if booted == to {
            return match j.operation {
                Operation::Install => {
                    self.enter_window(j)?;
                    Ok(None)
                }
                Operation::Rollback => {
                    self.confirm(j, &table).await.map_err(Stop::Failed)?;
                    self.finish_rollback(j).map_err(stop_io)?;
                    Ok(None)
                }
            };
        }
        if booted != from {
            return Err(Stop::Failed(format!(
                "the device runs slot {booted}, neither {from} nor {to}"
            )));
        }
        if j.step.starts >= TRIAL_BOOTS {
            let why = format!(
                "the device booted slot {from} again instead of {to}: the bootloader fell back, so the new system never started the agent"
            );
            return match j.operation {
                Operation::Install => {
                    j.step.switched_back = true;
                    self.enter(j, UpdateState::Reverted, why).map_err(stop_io)?;
                    Ok(None)
                }
                Operation::Rollback => Err(Stop::Failed(format!("rollback failed: {why}"))),
            };
        }
        // Not rebooted yet (or the first trial fell back): arm the trial boot and reboot.
        self.arm(j, &table, &to).await.map_err(Stop::Failed)?;
        self.reboot(j, &table).await.map(Some)
    }

    async fn confirm(&self, j: &mut Journal, table: &InstallerConfig) -> Result<(), String> {
        let ran = installer::run(
            table.confirm.as_deref().unwrap_or_default(),
            &self.env(j),
            COMMAND_TIMEOUT,
        )
        .await;
        j.append_log(&ran.log);
        if ran.ok {
            Ok(())
        } else {
            Err(format!("confirm ended with {}", ran.how))
        }
    }

    /// `committing`: restart, health check, the server when required; then commit.
    async fn commit_window(&self, j: &mut Journal) -> Result<Option<&'static str>, Stop> {
        if let Some(reason) = j.revert_reason.clone() {
            return Err(Stop::Revert(reason));
        }
        if let Some(simulation) = &self.simulation {
            j.step.restarted = true;
            if simulation.fail_versions.contains(&j.version) {
                j.append_log(&format!(
                    "simulated health check: version {} is in --fail-versions\n",
                    j.version
                ));
                return Err(Stop::Revert(
                    "the health check ended with exit status 1".into(),
                ));
            }
            if self.online && j.rollout_id.is_some() {
                self.reach_server(j).await?;
            }
            fault::point("healthy");
            self.commit(j).map_err(stop_io)?;
            return Ok(None);
        }
        let table = self.table(j)?.clone();
        let self_update = j.kind == Kind::Agent && j.installer == Installer::Files;
        if !j.step.restarted {
            if let Some(restart) = table.restart.as_deref() {
                if self_update {
                    // The restart ends this process; the new agent runs the window.
                    j.step.restarted = true;
                    self.save(j, false).map_err(stop_io)?;
                    fault::point("restarted");
                    let ran = installer::run(restart, &self.env(j), COMMAND_TIMEOUT).await;
                    j.append_log(&ran.log);
                    if !ran.ok {
                        return Err(Stop::Revert(format!(
                            "the restart command ended with {}",
                            ran.how
                        )));
                    }
                    return Ok(Some("restart"));
                }
                let ran = installer::run(restart, &self.env(j), COMMAND_TIMEOUT).await;
                j.append_log(&ran.log);
                if !ran.ok {
                    return Err(Stop::Revert(format!(
                        "the restart command ended with {}",
                        ran.how
                    )));
                }
            }
            j.step.restarted = true;
            self.save(j, false).map_err(stop_io)?;
            fault::point("restarted");
        } else if self_update {
            j.step.starts += 1;
            self.save(j, false).map_err(stop_io)?;
            if j.step.starts > AGENT_STARTS {
                return Err(Stop::Revert(format!(
                    "the new agent started {} times without finishing its commit window",
                    j.step.starts - 1
                )));
            }
        }
        if let Some(health) = &self.config.health {
            let env = self.env(j).with("DROVER_UPDATE_STATE", "committing");
            let ran =
                installer::run(&health.command, &env, Duration::from_secs(health.timeout_s)).await;
            j.append_log(&ran.log);
            if !ran.ok {
                return Err(Stop::Revert(format!(
                    "the health check ended with {}",
                    ran.how
                )));
            }
        }
        if self.online && j.rollout_id.is_some() && table.require_server() {
            self.reach_server(j).await?;
        }
        fault::point("healthy");
        if j.installer == Installer::Ab {
            self.confirm(j, &table).await.map_err(Stop::Revert)?;
        }
        self.commit(j).map_err(stop_io)?;
        Ok(None)
    }

    /// Reaches the server (`GET /device/v1/trust`) before the deadline, retrying.
    async fn reach_server(&self, j: &Journal) -> Result<(), Stop> {
        let deadline = j.deadline_ms.unwrap_or(0);
        loop {
            let last = match self.api() {
                Ok(api) => match api.trust().await {
                    Ok(_) => return Ok(()),
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            if crate::now().unix_millis() + 1000 >= deadline {
                return Err(Stop::Revert(format!(
                    "the server could not be reached within the commit window ({last})"
                )));
            }
            tokio::time::sleep(SERVER_RETRY).await;
        }
    }

    /// Records the new version as committed, then the final state.
    fn commit(&self, j: &mut Journal) -> Result<()> {
        let mut installed = self.state.installed()?;
        installed.commit(
            InstalledBundle {
                name: j.name.clone(),
                kind: j.kind,
                version: j.version.clone(),
            },
            j.previous.clone(),
            j.rollout_id.clone(),
        );
        if let Some(manifest) = &j.manifest {
            installed.signed_time_floor = installed.signed_time_floor.max(manifest.created_at);
        }
        self.state.write_installed(&installed)?;
        self.enter(
            j,
            UpdateState::Succeeded,
            format!("{} {} committed", j.name, j.version),
        )?;
        fault::point("succeeded");
        Ok(())
    }

    /// Returns to the previous version after a failed commit window; `Some` when a reboot or
    /// restart was ordered to get there.
    async fn revert(&self, j: &mut Journal, reason: String) -> Result<Option<&'static str>> {
        if j.revert_reason.is_none() {
            tracing::warn!(bundle = %j.name, version = %j.version, %reason, "reverting");
            j.revert_reason = Some(reason.clone());
            j.detail = format!("reverting: {reason}");
            self.save(j, false)?;
            fault::point("reverting");
        }
        if self.simulation.is_some() {
            j.step.switched_back = true;
            self.enter(j, UpdateState::Reverted, reason)?;
            fault::point("reverted");
            return Ok(None);
        }
        let Ok(table) = self.table(j).cloned() else {
            self.enter(j, UpdateState::Failed, format!("{reason}; and agent.toml no longer has its installer, so the previous version could not be restored"))?;
            return Ok(None);
        };
        match j.installer {
            Installer::Files => {
                let target = files_target(&table)
                    .map_err(|_| Error::Config("[installers] files table without target".into()))?;
                if !j.step.switched_back {
                    let (name, previous) = (j.name.clone(), j.previous.clone());
                    let t = target.clone();
                    tokio::task::spawn_blocking(move || {
                        installer::switch_current(&t, &name, previous.as_ref())
                    })
                    .await
                    .map_err(|e| Error::Runtime(e.to_string()))?
                    .map_err(|e| Error::io("switch back", &target, e))?;
                    fault::point("switched_back");
                    j.step.switched_back = true;
                    self.save(j, false)?;
                }
                let restart = table.restart.clone().filter(|_| j.step.restarted);
                if j.kind == Kind::Agent {
                    // The old agent must come back: record the end first, then restart.
                    self.enter(j, UpdateState::Reverted, reason)?;
                    fault::point("reverted");
                    if let Some(restart) = restart {
                        installer::run(&restart, &self.env(j), COMMAND_TIMEOUT).await;
                        return Ok(Some("restart"));
                    }
                    return Ok(None);
                }
                if let Some(restart) = restart {
                    let ran = installer::run(&restart, &self.env(j), COMMAND_TIMEOUT).await;
                    j.append_log(&ran.log);
                }
                let _ = installer::remove_release(&target, &j.name, &j.version);
            }
            Installer::Script => {
                if !j.step.switched_back {
                    let ran = match self.run_script(j, "revert").await {
                        Ok(ran) => ran,
                        Err(Stop::Failed(e) | Stop::Revert(e)) => {
                            self.enter(
                                j,
                                UpdateState::Failed,
                                format!("{reason}; and the revert could not run: {e}"),
                            )?;
                            return Ok(None);
                        }
                    };
                    j.append_log(&ran.log);
                    if !ran.ok {
                        self.enter(j, UpdateState::Failed, format!("{reason}; and the revert script ended with {}: the device needs attention", ran.how))?;
                        return Ok(None);
                    }
                    fault::point("switched_back");
                    j.step.switched_back = true;
                }
            }
            Installer::Ab => {
                let from = j.step.from_slot.clone().unwrap_or_default();
                let booted = match self.booted_slot(j, &table).await {
                    Ok(b) => b,
                    Err(Stop::Failed(e) | Stop::Revert(e)) => {
                        self.enter(j, UpdateState::Failed, format!("{reason}; and {e}"))?;
                        return Ok(None);
                    }
                };
                if booted != from {
                    // Back to the old slot: it is still the default, since the new one was
                    // never confirmed; arming it too covers bootloaders without one-shot boots.
                    if let Err(e) = self.arm(j, &table, &from).await {
                        tracing::warn!(error = %e, "cannot arm the old slot; rebooting anyway");
                    }
                    j.step.reboot_ordered = true;
                    self.save(j, false)?;
                    let ran = installer::run(
                        table.reboot.as_deref().unwrap_or_default(),
                        &self.env(j),
                        COMMAND_TIMEOUT,
                    )
                    .await;
                    j.append_log(&ran.log);
                    return Ok(Some("reboot"));
                }
                fault::point("switched_back");
                j.step.switched_back = true;
            }
        }
        self.enter(j, UpdateState::Reverted, reason)?;
        fault::point("reverted");
        Ok(None)
    }

    /// A server-ordered rollback to the kept release or slot.
    async fn roll_back(&self, j: &mut Journal) -> Result<Option<&'static str>, Stop> {
        if self.simulation.is_some() {
            fault::point("switched_back");
            self.finish_rollback(j).map_err(stop_io)?;
            return Ok(None);
        }
        let table = self.table(j)?.clone();
        match j.installer {
            Installer::Files => {
                let target = files_target(&table)?;
                let release = installer::release_dir(&target, &j.name, &j.version);
                if !release.is_dir() {
                    return Err(Stop::Failed(format!(
                        "rollback failed: the kept release {} is gone",
                        release.display()
                    )));
                }
                installer::switch_current(&target, &j.name, Some(&j.version))
                    .map_err(|e| Stop::Failed(format!("rollback failed: {e}")))?;
                fault::point("switched_back");
                if j.kind == Kind::Agent {
                    self.finish_rollback(j).map_err(stop_io)?;
                    if let Some(restart) = &table.restart {
                        installer::run(restart, &self.env(j), COMMAND_TIMEOUT).await;
                        return Ok(Some("restart"));
                    }
                    return Ok(None);
                }
                if let Some(restart) = &table.restart {
                    let ran = installer::run(restart, &self.env(j), COMMAND_TIMEOUT).await;
                    j.append_log(&ran.log);
                }
                self.finish_rollback(j).map_err(stop_io)?;
            }
            Installer::Script => {
                let ran = self.run_script(j, "rollback").await?;
                j.append_log(&ran.log);
                if !ran.ok {
                    return Err(Stop::Failed(format!(
                        "rollback failed: the script ended with {}",
                        ran.how
                    )));
                }
                self.finish_rollback(j).map_err(stop_io)?;
            }
            Installer::Ab => {
                let from = self.booted_slot(j, &table).await?;
                let to = other_slot(&from).ok_or_else(|| {
                    Stop::Failed(format!("rollback failed: booted_slot printed `{from}`"))
                })?;
                j.step.from_slot = Some(from);
                j.step.to_slot = Some(to.clone());
                self.arm(j, &table, &to).await.map_err(Stop::Failed)?;
                self.enter(
                    j,
                    UpdateState::Rebooting,
                    format!("rebooting into slot {to}"),
                )
                .map_err(stop_io)?;
            }
        }
        Ok(None)
    }

    fn finish_rollback(&self, j: &mut Journal) -> Result<()> {
        let mut installed = self.state.installed()?;
        installed.roll_back(j.name.as_str(), j.version.clone());
        self.state.write_installed(&installed)?;
        self.enter(
            j,
            UpdateState::RolledBack,
            format!("{} rolled back to {}", j.name, j.version),
        )
    }

    /// Undoes what a failed install left (nothing of it runs).
    async fn clean_failed(&self, j: &Journal) {
        if j.installer == Installer::Files
            && j.operation == Operation::Install
            && let Some(Ok(target)) = self.installer_config(j.kind).map(files_target)
        {
            let (name, version) = (j.name.clone(), j.version.clone());
            let _ = tokio::task::spawn_blocking(move || {
                installer::remove_release(&target, &name, &version)
            })
            .await;
        }
    }

    /// After a final state: staged payloads removed, old releases pruned, health told.
    async fn after_final(&self, j: &Journal) {
        if let Some(manifest) = &j.manifest {
            let dir = self.state.file(crate::state::STAGING_DIR);
            for payload in &manifest.payloads {
                let _ = std::fs::remove_file(dir.join(payload.sha256.to_string()));
                let _ = std::fs::remove_file(dir.join(format!("{}.part", payload.sha256)));
            }
        }
        let _ = std::fs::remove_dir_all(self.store.dir().join("script"));
        if j.installer == Installer::Files
            && let Some(Ok(target)) = self.installer_config(j.kind).map(files_target)
            && let Ok(installed) = self.state.installed()
        {
            let mut keep: Vec<Version> = installed
                .version_of(j.name.as_str())
                .cloned()
                .into_iter()
                .collect();
            keep.extend(
                installed
                    .kept
                    .iter()
                    .filter(|k| k.name == j.name.as_str())
                    .map(|k| k.version.clone()),
            );
            let name = j.name.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let keep: Vec<&Version> = keep.iter().collect();
                installer::prune(&target, &name, &keep)
            })
            .await;
        }
        self.publish_installed();
    }

    /// Tells health and telemetry what is installed now.
    pub fn publish_installed(&self) {
        let (Some(shared), Ok(installed), Ok(doc)) =
            (&self.shared, self.state.installed(), self.store.read())
        else {
            return;
        };
        let mut shared = shared.lock();
        shared.versions = installed.versions();
        shared.installed = installed.bundles;
        shared.update_state = doc.update_state();
    }

    async fn open_staging(&self) -> Result<Staging, Stop> {
        // An offline install may hold the staging directory for a moment.
        for _ in 0..30 {
            match Staging::open(&self.state) {
                Ok(staging) => return Ok(staging),
                Err(Error::State(_)) => tokio::time::sleep(Duration::from_secs(1)).await,
                Err(e) => return Err(Stop::Failed(e.to_string())),
            }
        }
        Err(Stop::Failed(
            "the staging directory stayed in use by another drover-agent".into(),
        ))
    }

    fn api(&self) -> Result<DeviceApi> {
        DeviceApi::for_device(&self.state)
    }
}

/// The current journal of `doc` that a starting agent must pick up.
pub fn resumable(doc: &UpdateDoc) -> Option<Journal> {
    doc.active().cloned()
}

fn files_target(table: &InstallerConfig) -> Result<PathBuf, Stop> {
    table
        .target
        .clone()
        .ok_or_else(|| Stop::Failed("agent.toml's files installer has no target".into()))
}

fn stop_io(e: Error) -> Stop {
    Stop::Failed(e.to_string())
}

/// The other slot of an A/B pair.
pub fn other_slot(slot: &str) -> Option<String> {
    let other = match slot {
        "a" => "b",
        "b" => "a",
        "A" => "B",
        "B" => "A",
        "0" => "1",
        "1" => "0",
        _ => return None,
    };
    Some(other.to_owned())
}

/// Copies the payloads under their manifest names into `work` (fresh), the first one executable.
fn prepare_script(work: &Path, payloads: &[StagedPayload]) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work)?;
    for (i, payload) in payloads.iter().enumerate() {
        let to = work.join(payload.name.as_str());
        std::fs::copy(&payload.path, &to)?;
        let mode = if i == 0 { 0o755 } else { 0o644 };
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(work.to_owned())
}
