//! The Drover device agent as a library; `main.rs` is a thin command line over it. Every
//! fallible function returns the crate's one [`Error`], whose message is one sentence and whose
//! exit code follows the contract (2 usage or configuration, 1 otherwise).

pub mod atomic_write;
pub mod bundle;
pub mod config;
pub mod daemon;
pub mod device_api;
pub mod enroll;
pub mod error;
pub mod fault;
pub mod identity;
pub mod report;
pub mod simulate;
pub mod state;
pub mod status;
pub mod trust;
pub mod update;

pub use error::{Error, Result};

use drover_proto::Timestamp;

/// The device clock as a [`Timestamp`] (the epoch if the clock is before it).
pub fn now() -> Timestamp {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    Timestamp::from_unix_millis(millis).unwrap_or(Timestamp::UNIX_EPOCH)
}
