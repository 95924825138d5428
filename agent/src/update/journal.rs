//! `STATE_DIR/update/update.json`: the update journal and the status outbox in one file, so a
//! state change and the report that announces it become durable in the same atomic write (temp
//! file, fsync, rename, fsync of the directory) — before the change's side effects begin.
//!
//! Two processes may touch the file (the daemon, and an offline `install`), so every change is a
//! read-modify-write under an exclusive `flock` on `update/.lock`. Driving an update is a separate,
//! longer claim: `update/engine.lock`, held by whichever process acts on the journal.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use drover_proto::{
    Installer, Kind, Manifest, OfferedPayload, SafeName, UpdateState, UpdateStatusReport, Version,
};
use serde::{Deserialize, Serialize};

use crate::atomic_write::{PUBLIC, write_atomic};
use crate::error::{Error, Result};
use crate::state::StateDir;

/// The update engine's directory inside the state directory.
pub const UPDATE_DIR: &str = "update";
/// The journal and outbox.
const DOC_FILE: &str = "update.json";
/// Held for each read-modify-write of [`DOC_FILE`].
const DOC_LOCK: &str = ".lock";
/// Held while a process drives the journal.
const ENGINE_LOCK: &str = "engine.lock";
/// Rollouts remembered as finished here, so a repeated offer of one is not taken twice.
const FINISHED_KEPT: usize = 256;
/// Longest log tail kept in the journal and sent with a report.
pub const LOG_TAIL_BYTES: usize = 8 * 1024;

/// What an update does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// Install a new version through its installer and commit it after the window.
    Install,
    /// Return to the release or slot kept from the previous commit (server-ordered).
    Rollback,
}

/// One update in progress (or just finished), as the journal records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Journal {
    /// Install or rollback.
    pub operation: Operation,
    /// The rollout, when the server offered or ordered it; none for an offline install.
    pub rollout_id: Option<String>,
    /// The bundle name.
    pub name: SafeName,
    /// The bundle kind.
    pub kind: Kind,
    /// The installer type.
    pub installer: Installer,
    /// The version this update goes to.
    pub version: Version,
    /// The version committed before, which a revert returns to.
    pub previous: Option<Version>,
    /// The verified manifest (installs only).
    pub manifest: Option<Manifest>,
    /// Where the payloads come from (online installs; empty when staged from a file).
    #[serde(default)]
    pub payloads: Vec<OfferedPayload>,
    /// Where the update stands.
    pub state: UpdateState,
    /// Progress inside the state; see [`Step`].
    #[serde(default)]
    pub step: Step,
    /// When the commit window ends (ms since the epoch).
    pub deadline_ms: Option<i64>,
    /// Why the update is being reverted, once the decision is made.
    pub revert_reason: Option<String>,
    /// The last report's sentence.
    #[serde(default)]
    pub detail: String,
    /// The tail of the install and health logs.
    #[serde(default)]
    pub log: String,
}

/// Side effects done inside a state, each recorded after it happened, so a resumed agent knows
/// which ones to repeat (all of them are safe to repeat).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// `files`: `current` points at the new release; `ab`: the new slot is written and armed.
    #[serde(default)]
    pub switched: bool,
    /// The restart command ran (or, for the agent itself, was about to).
    #[serde(default)]
    pub restarted: bool,
    /// `ab`: the reboot command returned.
    #[serde(default)]
    pub reboot_ordered: bool,
    /// `ab`: the slot running when the update began.
    pub from_slot: Option<String>,
    /// `ab`: the slot the update goes to.
    pub to_slot: Option<String>,
    /// A revert (or rollback) switched back.
    #[serde(default)]
    pub switched_back: bool,
    /// Times the agent started while in the commit window of an agent self-update.
    #[serde(default)]
    pub starts: u32,
}

impl Journal {
    /// The journal's status report for `state`, numbered later.
    pub fn report(&self) -> UpdateStatusReport {
        let version = match self.state {
            UpdateState::Reverted | UpdateState::RolledBack | UpdateState::Failed => {
                self.running_after_failure()
            }
            UpdateState::Succeeded => Some(self.version.to_string()),
            _ => self.previous.as_ref().map(ToString::to_string),
        };
        let log_tail =
            (self.state.counts_as_failure() && !self.log.is_empty()).then(|| self.log.clone());
        UpdateStatusReport {
            seq: 0,
            state: self.state,
            detail: self.detail.clone(),
            version,
            log_tail,
        }
    }

    /// The version running after a failure, revert or rollback.
    fn running_after_failure(&self) -> Option<String> {
        match self.operation {
            Operation::Install => self.previous.as_ref().map(ToString::to_string),
            Operation::Rollback => Some(self.version.to_string()),
        }
    }

    /// Appends `text` to the log, keeping its last [`LOG_TAIL_BYTES`].
    pub fn append_log(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        if !self.log.is_empty() && !self.log.ends_with('\n') {
            self.log.push('\n');
        }
        self.log.push_str(text);
        if self.log.len() > LOG_TAIL_BYTES {
            let mut start = self.log.len() - LOG_TAIL_BYTES;
            while !self.log.is_char_boundary(start) {
                start += 1;
            }
            self.log.drain(..start);
        }
    }
}

/// A report waiting for the server's acknowledgement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Queued {
    /// The rollout the report belongs to.
    pub rollout_id: String,
    /// The report.
    pub report: UpdateStatusReport,
}

/// Everything in `update.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateDoc {
    /// The current (or last) update.
    pub journal: Option<Journal>,
    /// Reports not acknowledged yet, oldest first.
    #[serde(default)]
    pub outbox: Vec<Queued>,
    /// The next report's seq; it only rises.
    #[serde(default)]
    pub next_seq: u64,
    /// Rollouts that reached a final state here, newest last.
    #[serde(default)]
    pub finished: Vec<String>,
}

impl UpdateDoc {
    /// The journal's state when an update is under way (not final), else `None`.
    pub fn active(&self) -> Option<&Journal> {
        self.journal
            .as_ref()
            .filter(|j| !j.state.is_final() || j.state == UpdateState::Deferred)
    }

    /// The state of the current or last update, as health and `status` show it.
    pub fn update_state(&self) -> Option<UpdateState> {
        self.journal.as_ref().map(|j| j.state)
    }

    /// Queues the journal's current report (for a rollout) with the next seq.
    pub fn queue_report(&mut self) {
        let Some(journal) = &self.journal else { return };
        let Some(rollout_id) = journal.rollout_id.clone() else {
            return;
        };
        let mut report = journal.report();
        self.next_seq += 1;
        report.seq = self.next_seq;
        if journal.state.is_final() && journal.state != UpdateState::Deferred {
            self.mark_finished(&rollout_id);
        }
        self.outbox.push(Queued { rollout_id, report });
    }

    /// Queues a report for a rollout that never became the journal (a refused offer).
    pub fn queue_refusal(&mut self, rollout_id: &str, state: UpdateState, detail: String) {
        self.next_seq += 1;
        self.outbox.push(Queued {
            rollout_id: rollout_id.to_owned(),
            report: UpdateStatusReport {
                seq: self.next_seq,
                state,
                detail,
                version: None,
                log_tail: None,
            },
        });
        if state.is_final() && state != UpdateState::Deferred {
            self.mark_finished(rollout_id);
        }
    }

    /// Remembers that `rollout_id` ended here.
    fn mark_finished(&mut self, rollout_id: &str) {
        if !self.finished.iter().any(|r| r == rollout_id) {
            self.finished.push(rollout_id.to_owned());
        }
        let excess = self.finished.len().saturating_sub(FINISHED_KEPT);
        self.finished.drain(..excess);
    }

    /// Whether `rollout_id` already ended here.
    pub fn is_finished(&self, rollout_id: &str) -> bool {
        self.finished.iter().any(|r| r == rollout_id)
    }

    /// The report to send next: the newest queued one of the oldest rollout waiting (older
    /// reports of that rollout are superseded by it: the server keeps only the highest seq).
    pub fn next_to_send(&self) -> Option<&Queued> {
        let first = self.outbox.first()?;
        self.outbox
            .iter()
            .rev()
            .find(|q| q.rollout_id == first.rollout_id)
    }

    /// Drops the reports of `rollout_id` up to `seq` (acknowledged, or never deliverable).
    pub fn acknowledge(&mut self, rollout_id: &str, seq: u64) {
        self.outbox
            .retain(|q| !(q.rollout_id == rollout_id && q.report.seq <= seq));
    }
}

/// The update directory of one state directory.
#[derive(Clone, Debug)]
pub struct UpdateStore {
    dir: PathBuf,
}

impl UpdateStore {
    /// The store in `state` (the directory is created on first write).
    pub fn new(state: &StateDir) -> UpdateStore {
        UpdateStore {
            dir: state.file(UPDATE_DIR),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads `update.json` (empty when absent); a damaged file is an error naming it.
    pub fn read(&self) -> Result<UpdateDoc> {
        let path = self.dir.join(DOC_FILE);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::State(format!(
                    "{} is damaged ({e}); it holds the update journal: restore it, or remove it to forget the update in progress",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(UpdateDoc::default()),
            Err(e) => Err(Error::io("read", &path, e)),
        }
    }

    /// Applies `change` to the document and writes it durably, under the document lock; returns
    /// what `change` returned.
    pub fn modify<T>(&self, change: impl FnOnce(&mut UpdateDoc) -> T) -> Result<T> {
        self.create_dir()?;
        let _lock = self.lock(DOC_LOCK, true)?;
        let mut doc = self.read()?;
        let out = change(&mut doc);
        let path = self.dir.join(DOC_FILE);
        let bytes = serde_json::to_vec_pretty(&doc)
            .expect("the update document is plain data and always serializes");
        write_atomic(&path, &bytes, PUBLIC).map_err(|e| Error::io("write", &path, e))?;
        Ok(out)
    }

    /// Takes the engine lock without waiting: `None` when another process drives an update.
    pub fn claim(&self) -> Result<Option<File>> {
        self.create_dir()?;
        match self.lock(ENGINE_LOCK, false) {
            Ok(file) => Ok(Some(file)),
            Err(Error::State(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn create_dir(&self) -> Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&self.dir)
            .map_err(|e| Error::io("create the update directory", &self.dir, e))
    }

    fn lock(&self, name: &str, wait: bool) -> Result<File> {
        let path = self.dir.join(name);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o644)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        let operation = if wait {
            rustix::fs::FlockOperation::LockExclusive
        } else {
            rustix::fs::FlockOperation::NonBlockingLockExclusive
        };
        match rustix::fs::flock(&file, operation) {
            Ok(()) => Ok(file),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(Error::State(format!(
                "{} is held by another drover-agent",
                path.display()
            ))),
            Err(e) => Err(Error::io("lock", &path, e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(state: UpdateState) -> Journal {
        Journal {
            operation: Operation::Install,
            rollout_id: Some("r1".into()),
            name: SafeName::parse("detector").unwrap(),
            kind: Kind::Model,
            installer: Installer::Files,
            version: "1.1.0".parse().unwrap(),
            previous: Some("1.0.0".parse().unwrap()),
            manifest: None,
            payloads: Vec::new(),
            state,
            step: Step::default(),
            deadline_ms: None,
            revert_reason: None,
            detail: String::new(),
            log: String::new(),
        }
    }

    #[test]
    fn a_state_change_and_its_report_are_written_together() {
        let dir = tempfile::tempdir().unwrap();
        let store = UpdateStore::new(&StateDir::new(dir.path()));
        assert_eq!(store.read().unwrap(), UpdateDoc::default());
        for state in [UpdateState::Downloading, UpdateState::Succeeded] {
            store
                .modify(|doc| {
                    doc.journal = Some(journal(state));
                    doc.queue_report();
                })
                .unwrap();
        }
        let doc = store.read().unwrap();
        assert_eq!(doc.outbox.len(), 2);
        assert_eq!(doc.outbox[1].report.seq, 2);
        assert_eq!(doc.outbox[1].report.version.as_deref(), Some("1.1.0"));
        assert!(doc.is_finished("r1"));
        assert!(doc.active().is_none());
        // The newest report of the oldest rollout goes first; older ones are superseded.
        assert_eq!(doc.next_to_send().unwrap().report.seq, 2);
    }

    #[test]
    fn acknowledging_drops_only_that_rollouts_reports_up_to_the_seq() {
        let mut doc = UpdateDoc::default();
        doc.queue_refusal("a", UpdateState::Failed, "x".into());
        doc.queue_refusal("b", UpdateState::Failed, "y".into());
        doc.journal = Some(journal(UpdateState::Committing));
        doc.queue_report();
        doc.acknowledge("a", 1);
        assert_eq!(doc.outbox.len(), 2);
        assert_eq!(doc.next_to_send().unwrap().rollout_id, "b");
        assert!(doc.active().is_some());
    }

    #[test]
    fn the_log_keeps_its_tail() {
        let mut j = journal(UpdateState::Committing);
        j.append_log(&"a".repeat(LOG_TAIL_BYTES));
        j.append_log("the end");
        assert_eq!(j.log.len(), LOG_TAIL_BYTES);
        assert!(j.log.ends_with("\nthe end"));
    }

    #[test]
    fn a_damaged_journal_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = UpdateStore::new(&StateDir::new(dir.path()));
        fs::create_dir_all(store.dir()).unwrap();
        fs::write(store.dir().join(DOC_FILE), b"{not json").unwrap();
        let err = store.read().unwrap_err().to_string();
        assert!(err.contains("update.json is damaged"), "{err}");
    }

    #[test]
    fn only_one_process_drives() {
        let dir = tempfile::tempdir().unwrap();
        let store = UpdateStore::new(&StateDir::new(dir.path()));
        let first = store.claim().unwrap();
        assert!(first.is_some());
        assert!(store.claim().unwrap().is_none());
        drop(first);
        assert!(store.claim().unwrap().is_some());
    }
}
