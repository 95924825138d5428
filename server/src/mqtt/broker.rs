//! The embedded MQTT broker (rumqttd) for a server that needs no other
//! process. It listens on loopback only and admits only clients that know
//! this process's random secret: devices reach it through our gateway,
//! which authenticates them, and the server's own client uses the secret.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

use crate::error::{Error, Result};

/// A running embedded broker.
#[derive(Clone)]
pub struct EmbeddedBroker {
    /// Its loopback address.
    pub addr: SocketAddr,
    /// The password every client of it must present.
    pub secret: String,
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Largest MQTT packet the broker and gateway accept.
pub const MAX_PACKET_BYTES: usize = 256 * 1024;

/// Starts the broker on its own OS thread (it blocks forever and starts its
/// own runtimes) and waits until it accepts connections.
pub fn start(max_connections: usize) -> Result<EmbeddedBroker> {
    // rumqttd does not report the port it bound, so reserve one first.
    let addr = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| Error::Internal(format!("reserving a port for the embedded broker: {e}")))?;
    let secret = crate::secrets::random_token();
    let expected = secret.clone();
    let mut connections = ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: MAX_PACKET_BYTES,
        max_inflight_count: 200,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    connections.set_auth_handler(move |_client, _user, password: String| {
        let ok = crate::secrets::constant_time_eq(password.as_bytes(), expected.as_bytes());
        async move { ok }
    });
    let server = ServerSettings {
        name: "drover-internal".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 0,
        connections,
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections,
            max_outgoing_packet_count: 1000,
            // The commit log per filter: large enough that a subscriber that
            // falls behind for a while (a restarting server) loses nothing.
            max_segment_size: 64 * 1024 * 1024,
            max_segment_count: 16,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("internal".to_string(), server)])),
        ..Default::default()
    };
    std::thread::Builder::new()
        .name("drover-broker".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "the embedded MQTT broker stopped");
            }
        })
        .map_err(|e| Error::Internal(format!("starting the embedded broker: {e}")))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !listening(&addr) {
        if Instant::now() > deadline {
            return Err(Error::Internal(format!(
                "the embedded MQTT broker did not start listening on {addr}"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(EmbeddedBroker { addr, secret })
}

/// Whether the broker listens on `addr`. On Linux the kernel's socket table says so without a
/// connection: rumqttd logs an ERROR for every connection that ends, a probe's included.
fn listening(addr: &SocketAddr) -> bool {
    match std::fs::read_to_string("/proc/net/tcp") {
        Ok(table) => listed_as_listening(&table, addr.port()),
        Err(_) => TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_ok(),
    }
}

/// Whether `/proc/net/tcp` lists a socket in LISTEN state (`0A`) on `port`. The port was
/// reserved by this process a moment ago, so whoever listens on it is the broker.
fn listed_as_listening(table: &str, port: u16) -> bool {
    let local = format!(":{port:04X}");
    table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        let (Some(address), Some(_remote), Some(state)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return false;
        };
        address.ends_with(&local) && state == "0A"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_table_is_read_for_a_listener_on_the_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:A2D1 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:1F90 0100007F:A2D1 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
";
        assert!(listed_as_listening(table, 0xA2D1));
        // Connected (01), not listening: a client's socket whose peer is that port.
        assert!(!listed_as_listening(table, 0x1F90));
        assert!(!listed_as_listening(table, 0xA2D2));
        assert!(!listed_as_listening("garbage\nmore garbage", 0xA2D1));
    }

    #[test]
    fn a_started_broker_is_found_listening() {
        let broker = start(16).expect("broker");
        assert!(listening(&broker.addr));
        let free = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a port");
        assert!(!listening(&free));
    }
}
