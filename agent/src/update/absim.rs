//! A simulated A/B firmware backend, built into the agent for tests and demos
//! (`drover-agent ab-sim --dir DIR COMMAND`), so the `ab` installer runs through its real command
//! path without a bootloader. `DIR` holds two slot directories (`slot-a/image`, `slot-b/image`)
//! and `boot.json`, the boot pointer: the default slot, an armed one-shot slot, and the slot
//! running now. `reboot` simulates the power cycle — the one-shot slot boots once, and an image
//! containing `PANIC` is a kernel that never reaches the agent, so the bootloader falls back to
//! the default — then stops the agent (SIGTERM to `DROVER_AGENT_PID`) as a real reboot would.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::atomic_write::{PUBLIC, write_atomic};
use crate::error::{Error, Result};

/// The marker that makes a simulated kernel panic before the agent starts.
pub const PANIC_MARKER: &[u8] = b"PANIC";

/// `boot.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootPointer {
    /// The slot the bootloader boots by default.
    pub default: String,
    /// The slot to boot on the next boot only.
    pub once: Option<String>,
    /// The slot running now.
    pub booted: String,
    /// Boots so far (fallbacks included).
    pub boots: u64,
}

/// One `ab-sim` command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SimCommand {
    /// Write `payload` into `slot`.
    Install {
        /// The staged payload.
        payload: PathBuf,
        /// `a` or `b`.
        slot: String,
    },
    /// Boot `slot` on the next boot only.
    SwitchOnce {
        /// `a` or `b`.
        slot: String,
    },
    /// Simulate a reboot, then stop the agent.
    Reboot,
    /// Print the running slot.
    BootedSlot,
    /// Make the running slot the default.
    Confirm,
}

fn pointer_path(dir: &Path) -> PathBuf {
    dir.join("boot.json")
}

/// Reads the boot pointer (slot `a`, freshly booted, when there is none yet).
pub fn read_pointer(dir: &Path) -> Result<BootPointer> {
    let path = pointer_path(dir);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| Error::State(format!("{} is damaged: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BootPointer {
            default: "a".into(),
            once: None,
            booted: "a".into(),
            boots: 0,
        }),
        Err(e) => Err(Error::io("read", &path, e)),
    }
}

fn write_pointer(dir: &Path, pointer: &BootPointer) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
    let path = pointer_path(dir);
    let bytes = serde_json::to_vec_pretty(pointer).expect("a boot pointer always serializes");
    write_atomic(&path, &bytes, PUBLIC).map_err(|e| Error::io("write", &path, e))
}

fn check_slot(slot: &str) -> Result<()> {
    if slot == "a" || slot == "b" {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "ab-sim: slot `{slot}` does not exist; the simulated slots are a and b"
        )))
    }
}

/// Runs one command against the backend in `dir`; returns what to print.
pub fn run(dir: &Path, command: &SimCommand) -> Result<String> {
    let mut pointer = read_pointer(dir)?;
    match command {
        SimCommand::Install { payload, slot } => {
            check_slot(slot)?;
            if *slot == pointer.booted {
                return Err(Error::Usage(format!(
                    "ab-sim: slot {slot} is running; write the other one"
                )));
            }
            let slot_dir = dir.join(format!("slot-{slot}"));
            fs::create_dir_all(&slot_dir).map_err(|e| Error::io("create", &slot_dir, e))?;
            let bytes = fs::read(payload).map_err(|e| Error::io("read", payload, e))?;
            let image = slot_dir.join("image");
            write_atomic(&image, &bytes, PUBLIC).map_err(|e| Error::io("write", &image, e))?;
            write_pointer(dir, &pointer)?;
            Ok(format!("wrote {} bytes into slot {slot}", bytes.len()))
        }
        SimCommand::SwitchOnce { slot } => {
            check_slot(slot)?;
            pointer.once = Some(slot.clone());
            write_pointer(dir, &pointer)?;
            Ok(format!("slot {slot} boots on the next boot only"))
        }
        SimCommand::Reboot => {
            let trial = pointer.once.take();
            let mut next = trial.clone().unwrap_or_else(|| pointer.default.clone());
            pointer.boots += 1;
            let image =
                fs::read(dir.join(format!("slot-{next}")).join("image")).unwrap_or_default();
            if image.windows(PANIC_MARKER.len()).any(|w| w == PANIC_MARKER) {
                // The kernel panics before userspace; the one-shot is spent, so the next boot
                // is the default slot's.
                pointer.boots += 1;
                next = pointer.default.clone();
            }
            pointer.booted = next.clone();
            write_pointer(dir, &pointer)?;
            stop_agent();
            Ok(format!("rebooted into slot {next}"))
        }
        SimCommand::BootedSlot => Ok(pointer.booted),
        SimCommand::Confirm => {
            pointer.default = pointer.booted.clone();
            write_pointer(dir, &pointer)?;
            Ok(format!("slot {} is the default", pointer.default))
        }
    }
}

/// A reboot stops every process: SIGTERM to the agent that ran us, when it said who it is.
fn stop_agent() {
    let pid = std::env::var("DROVER_AGENT_PID")
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trial_boot_happens_once_and_a_panicking_kernel_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        let sim = dir.path().join("ab");
        let payload = dir.path().join("image");
        fs::write(&payload, b"kernel 2").unwrap();
        let install = SimCommand::Install {
            payload: payload.clone(),
            slot: "b".into(),
        };
        run(&sim, &install).unwrap();
        run(&sim, &SimCommand::SwitchOnce { slot: "b".into() }).unwrap();
        run(&sim, &SimCommand::Reboot).unwrap();
        assert_eq!(run(&sim, &SimCommand::BootedSlot).unwrap(), "b");
        // Not confirmed: the next boot is the default again.
        run(&sim, &SimCommand::Reboot).unwrap();
        assert_eq!(run(&sim, &SimCommand::BootedSlot).unwrap(), "a");

        fs::write(&payload, b"kernel 3 PANIC").unwrap();
        run(&sim, &install).unwrap();
        run(&sim, &SimCommand::SwitchOnce { slot: "b".into() }).unwrap();
        run(&sim, &SimCommand::Reboot).unwrap();
        assert_eq!(run(&sim, &SimCommand::BootedSlot).unwrap(), "a");
        assert!(run(&sim, &SimCommand::SwitchOnce { slot: "c".into() }).is_err());
        assert!(
            run(
                &sim,
                &SimCommand::Install {
                    payload,
                    slot: "a".into()
                }
            )
            .is_err()
        );
    }
}
