//! End-to-end suites by capability, one test binary so the server links once.
//! Each test starts a real server on port 0 with a fresh data directory and
//! database (SQLite, or PostgreSQL with `DROVER_TEST_DATABASE_URL`).

mod agent_identity;
mod agent_updates;
mod alerts;
mod api_conventions;
mod audit;
mod auth;
mod backup;
mod blobs_s3;
mod browser;
mod bundles;
mod bundles_agent;
mod cli;
mod dashboard;
mod dashboard_workflows;
mod deploy;
mod device_page;
mod devices_list;
mod drift;
mod edge_inference;
mod escaping;
mod fleet_metrics;
mod gates;
mod identity;
mod keys;
mod live;
mod mosquitto;
mod mqtt;
mod ops;
mod python_sdk;
mod replicas;
mod rollouts;
mod simulator;
mod telemetry;
mod telemetry_agent;
mod updates;
mod webhooks;
