//! The Drover fleet server as a library: `main.rs` and the end-to-end tests
//! drive it through `startup::build`.

pub mod alerts;
pub mod artifacts;
pub mod audit;
pub mod backup;
pub mod blobs;
pub mod bundles;
pub mod cli;
pub mod config;
pub mod duration;
pub mod error;
pub mod fleet;
pub mod http;
pub mod identity;
pub mod keys;
pub mod leader;
pub mod live;
pub mod mqtt;
pub mod paging;
pub mod rollouts;
pub mod secrets;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod timefmt;
pub mod updates;
pub mod users;
pub mod webhooks;
