//! The agent's one error type at the crate boundary. Every variant renders as one sentence that
//! names the thing and the fix, and maps to the contract's exit codes: 2 for bad usage or
//! configuration, 1 for everything else.

use std::io;
use std::path::{Path, PathBuf};

/// Everything that can stop an agent command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command-line flag is malformed or contradicts the state directory.
    #[error("{0}")]
    Usage(String),
    /// `agent.toml` is not valid; the message names the key and the fix.
    #[error("{0}")]
    Config(String),
    /// The state directory holds no enrollment.
    #[error(
        "not enrolled; run drover-agent enroll --server https://HOST:8443 --token TOKEN --ca-hash sha256:HEX (state directory {})",
        .state_dir.display()
    )]
    NotEnrolled {
        /// The state directory looked at.
        state_dir: PathBuf,
    },
    /// The CA the server presented does not match the `--ca-hash` pin; nothing secret was sent.
    #[error(
        "the server's CA certificate has hash {found} but --ca-hash pins {expected}; the token was not sent: check --server and the hash printed by `drover token create`"
    )]
    CaHashMismatch {
        /// The pin given on the command line.
        expected: String,
        /// The hash of the CA the server sent.
        found: String,
    },
    /// The server answered a device API call with an error (its problem+json `detail` is kept).
    #[error("{what} failed: the server answered HTTP {status}: {detail}")]
    Refused {
        /// What was attempted (`enrollment`, `certificate renewal`, …).
        what: &'static str,
        /// The HTTP status.
        status: u16,
        /// The problem's `detail`, or a short description of the body.
        detail: String,
    },
    /// The server could not be reached, or TLS failed.
    #[error("{what} failed: could not reach {url}: {cause}")]
    Unreachable {
        /// What was attempted.
        what: &'static str,
        /// The URL requested.
        url: String,
        /// The transport error and its causes, in one line.
        cause: String,
    },
    /// The server's answer is not what the contract promises.
    #[error("{what} failed: the server's answer is not valid: {reason}")]
    BadAnswer {
        /// What was attempted.
        what: &'static str,
        /// Which check failed.
        reason: String,
    },
    /// A file in the state directory is missing, unreadable or damaged.
    #[error("{0}")]
    State(String),
    /// Reading or writing a file failed.
    #[error("cannot {action} {}: {source}", .path.display())]
    Io {
        /// What was being done (`read`, `write`, `create`).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// Key or certificate handling failed locally.
    #[error("{0}")]
    Crypto(String),
    /// The process could not set itself up (runtime, signals).
    #[error("{0}")]
    Runtime(String),
    /// A bundle (a `.drover` file or an offered update) failed a check; nothing was installed.
    #[error("{} refused: {source}", .bundle.display())]
    Bundle {
        /// The bundle file, or what was offered.
        bundle: PathBuf,
        /// The check that failed.
        source: crate::bundle::BundleError,
    },
    /// An update did not succeed: it failed, or was reverted; the message says why and the log
    /// tail follows.
    #[error("{0}")]
    Update(String),
    /// A trust document (from the server or a bundle file) was not taken; the held one stays.
    #[error(transparent)]
    Trust(#[from] drover_proto::TrustError),
}

impl Error {
    /// The process exit code for this error: 2 for usage and configuration, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) | Error::Config(_) => 2,
            _ => 1,
        }
    }

    /// An I/O error on `path` while doing `action`.
    pub fn io(action: &'static str, path: &Path, source: io::Error) -> Error {
        Error::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
