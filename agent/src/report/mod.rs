//! Telemetry and health (ARCHITECTURE flow 2): device programs hand readings to the local
//! [`intake`], which stamps them and makes them durable in the on-disk [`spool`] before it
//! answers; the [`publisher`] sends them over MQTT and removes only what the broker acknowledged,
//! and reports [`health`] on every heartbeat.

pub mod health;
pub mod intake;
pub mod publisher;
pub mod spool;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use drover_proto::{InstalledBundle, UpdateState, Version};

/// What the intake, the publisher and the update engine share while `run` lives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shared {
    /// Installs and reboots are held until this time (ms since the epoch), as a device program
    /// asked with `defer_updates`, already capped by `max_defer_s`.
    pub defer_until: Option<i64>,
    /// Installed version of each bundle name, stamped on every reading.
    pub versions: BTreeMap<String, Version>,
    /// Installed bundles, as health reports them.
    pub installed: Vec<InstalledBundle>,
    /// The state of the current or last update.
    pub update_state: Option<UpdateState>,
}

/// [`Shared`] behind a lock, cloned into each task.
#[derive(Clone, Debug, Default)]
pub struct SharedState(Arc<Mutex<Shared>>);

impl SharedState {
    /// Locks the state; a panic elsewhere never leaves it half-written (plain assignments), so
    /// a poisoned lock is still usable.
    pub fn lock(&self) -> MutexGuard<'_, Shared> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
