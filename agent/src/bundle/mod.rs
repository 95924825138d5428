//! Signed bundles on the device: the `.drover` file reader ([`file`]), the checks `verify` and
//! `install` share ([`checks`]), payload staging ([`staging`]) and the resumable download the
//! update engine will use ([`download`]). Every signature, trust, manifest and digest rule is
//! drover-proto's; this module only feeds it bytes, in the contract's order, and nothing leaves
//! the staging directory before every check has passed.

pub mod checks;
pub mod download;
pub mod file;
pub mod staging;

use drover_proto::{Installer, Kind, PayloadError, TrustError, VerifyError};

pub use checks::{Checked, Device, EnrolledDevice, Summary, stage, verify};
pub use file::{BundleFile, FileError};

/// Why a bundle was refused; each message starts with the name of the check that failed.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The file's structure, or its entries against the signed manifest.
    #[error(transparent)]
    File(#[from] FileError),
    /// The bundle's trust document is not one this device takes.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// Signature, manifest, device type, expiry or version.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// A payload's size or sha256.
    #[error(transparent)]
    Payload(PayloadError),
    /// `agent.toml` has no installer for the bundle's kind, or one of another type.
    #[error(
        "installer check failed: the bundle is a {kind} bundle for the `{wanted}` installer, and agent.toml has {found}"
    )]
    NoInstaller {
        /// The manifest's kind.
        kind: Kind,
        /// The manifest's installer.
        wanted: Installer,
        /// What the configuration has instead, in words.
        found: String,
    },
    /// Not enough free space to stage the payloads.
    #[error(
        "free space check failed: staging needs {needed} bytes plus a {reserve}-byte reserve in {dir}, and {available} are free"
    )]
    NoSpace {
        /// Bytes still to stage.
        needed: u64,
        /// Bytes kept free for the agent's own state.
        reserve: u64,
        /// Bytes available to the agent.
        available: u64,
        /// The staging directory.
        dir: String,
    },
    /// A payload download ended early; the `.part` file is kept and the next attempt resumes.
    #[error(
        "download of {name} stopped at {received} of {size} bytes ({cause}); the next attempt resumes there"
    )]
    Interrupted {
        /// The payload.
        name: String,
        /// Bytes held in the `.part` file.
        received: u64,
        /// Declared size.
        size: u64,
        /// What ended it.
        cause: String,
    },
    /// The server answered a download in a way the contract does not allow.
    #[error("download of {name} failed: {reason}")]
    BadDownload {
        /// The payload.
        name: String,
        /// What was wrong.
        reason: String,
    },
}

impl BundleError {
    /// The short name of the failed check: `file`, `trust`, `signature`, `manifest`, `device_type`,
    /// `expiry`, `version`, `payload`, `installer`, `free_space` or `download`.
    pub fn check(&self) -> &'static str {
        match self {
            BundleError::File(FileError::SizeMismatch { .. }) | BundleError::Payload(_) => {
                "payload"
            }
            BundleError::File(_) => "file",
            BundleError::Trust(_) => "trust",
            BundleError::Verify(e) => e.check(),
            BundleError::NoInstaller { .. } => "installer",
            BundleError::NoSpace { .. } => "free_space",
            BundleError::Interrupted { .. } | BundleError::BadDownload { .. } => "download",
        }
    }
}
