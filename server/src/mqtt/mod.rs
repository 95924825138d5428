//! MQTT for devices: the embedded broker (rumqttd, loopback only), our
//! device gateway in front of it (TLS with fleet certificates, per-device
//! topic rights, revocation that closes open sessions), and the server's own
//! client, which works the same against an external broker.

pub mod broker;
pub mod client;
pub mod external;
pub mod gateway;
