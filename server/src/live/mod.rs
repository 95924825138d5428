//! Live updates for the dashboard. Whatever changes the fleet (a device's
//! presence, status, health or update; readings; a rollout's progress)
//! announces it here after it is stored, and every open dashboard page
//! listens over Server-Sent Events (`GET /live`).
//!
//! Pages are told *that* something changed, coalesced to at most one note a
//! second, and fetch the part they show again; only readings carry their
//! values, so charts grow without asking. A page that falls behind (the
//! broadcast lags) is told to refresh everything it shows, so nothing it
//! displays stays stale.
//!
//! On PostgreSQL, [`relay`] carries the changes between replicas.

pub mod relay;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// How many changes wait for a slow listener before it lags and resyncs.
const CAPACITY: usize = 8192;

/// Least time between two refresh notes of one kind on one connection.
const COALESCE: Duration = Duration::from_secs(1);

/// A comment line sent when nothing else was, so proxies keep the stream open.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// One stored change.
#[derive(Debug, Clone)]
pub enum Change {
    /// A device's presence, status, identity, events or update changed:
    /// fleet-wide counts move.
    Device(Arc<str>),
    /// A device came online or went offline.
    Presence(Arc<str>, bool),
    /// A device's health report arrived (its own page only), with its figures.
    Health(Arc<HealthFigures>),
    /// An alert fired or resolved on a device.
    Alert(Arc<str>),
    /// Readings of one device were stored.
    Readings(Arc<Readings>),
    /// A rollout moved, or bundles changed.
    Rollout(Arc<str>),
    /// Changes were lost on the way from another replica: refresh everything.
    Resync,
    /// Alert rules changed (the judging replica reads them again).
    Rules,
}

/// Readings of one device stored in one batch.
#[derive(Debug, Serialize)]
pub struct Readings {
    /// The device.
    #[serde(skip)]
    pub device_id: String,
    /// (metric, ts ms, value), oldest first.
    pub points: Vec<(String, i64, f64)>,
}

/// The figures of a health report that alert rules can watch (as `health.NAME`).
#[derive(Debug, Default)]
pub struct HealthFigures {
    /// The device.
    pub device_id: String,
    /// (name, value): cpu_pct, mem_pct, disk_free, temp_c, spool_depth, spool_dropped.
    pub figures: Vec<(&'static str, f64)>,
}

/// The hub: cheap to clone, shared by everything that stores changes.
#[derive(Clone)]
pub struct Live {
    tx: broadcast::Sender<Change>,
    closed: CancellationToken,
    /// Alerts firing now: every fleet note carries it, for the navigation's count.
    firing: Arc<std::sync::atomic::AtomicI64>,
    /// Where this replica's changes go to the others (PostgreSQL only).
    relay: Arc<OnceLock<tokio::sync::mpsc::Sender<Change>>>,
    /// A change could not be queued for the other replicas.
    relay_overflow: Arc<AtomicBool>,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            tx: broadcast::channel(CAPACITY).0,
            closed: CancellationToken::new(),
            firing: Arc::default(),
            relay: Arc::default(),
            relay_overflow: Arc::default(),
        }
    }
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("listeners", &self.tx.receiver_count())
            .finish()
    }
}

impl Live {
    /// Announces a change stored here, to this replica's pages and the others'
    /// (nobody listening is fine).
    pub fn send(&self, change: Change) {
        if let Some(relay) = self.relay.get()
            && relay.try_send(change.clone()).is_err()
        {
            self.relay_overflow
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let _ = self.tx.send(change);
    }

    /// Announces a change another replica stored, to this replica's pages only.
    fn deliver(&self, change: Change) {
        let _ = self.tx.send(change);
    }

    /// A device changed in a way the fleet overview shows.
    pub fn device(&self, id: &str) {
        self.send(Change::Device(id.into()));
    }

    /// A device came online (true) or went offline.
    pub fn presence(&self, id: &str, online: bool) {
        self.send(Change::Presence(id.into(), online));
    }

    /// Listens to every change (the alert engine does).
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.tx.subscribe()
    }

    /// A rollout (or the bundles a rollout uses) changed.
    pub fn rollout(&self, id: &str) {
        self.send(Change::Rollout(id.into()));
    }

    /// Sets the number of alerts firing (the alert engine keeps it).
    pub fn set_firing(&self, n: i64) {
        self.firing.store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Ends every open stream, so that a stopping server does not wait for them.
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Open streams (for /metrics and tests).
    pub fn listeners(&self) -> usize {
        self.tx.receiver_count()
    }

    /// The Server-Sent Events a page with `focus` receives, as a stream of
    /// chunks that ends when the server stops.
    pub fn stream(
        &self,
        focus: Focus,
    ) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::convert::Infallible>> + use<>
    {
        let (out, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(64);
        let changes = self.tx.subscribe();
        let closed = self.closed.clone();
        tokio::spawn(pump(changes, focus, out, closed, self.firing.clone()));
        futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (Ok(chunk), rx))
        })
    }
}

/// What one page shows besides the fleet.
#[derive(Debug, Clone, Default)]
pub struct Focus {
    /// A device page: its changes and readings.
    pub device: Option<String>,
    /// A rollout page: its changes.
    pub rollout: Option<String>,
}

/// Refresh notes waiting to go out on one connection.
#[derive(Default)]
struct Dirty {
    fleet: bool,
    device: bool,
    rollout: bool,
}

impl Dirty {
    fn all() -> Dirty {
        Dirty {
            fleet: true,
            device: true,
            rollout: true,
        }
    }

    fn take(&mut self, focus: &Focus, firing: i64) -> String {
        let mut text = String::new();
        if std::mem::take(&mut self.fleet) {
            text.push_str(&format!("event: fleet\ndata: {{\"firing\":{firing}}}\n\n"));
        }
        if std::mem::take(&mut self.device) && focus.device.is_some() {
            text.push_str("event: device\ndata: {}\n\n");
        }
        if std::mem::take(&mut self.rollout) && focus.rollout.is_some() {
            text.push_str("event: rollout\ndata: {}\n\n");
        }
        text
    }
}

/// Moves changes of interest to one connection until it closes or the server stops.
async fn pump(
    mut changes: broadcast::Receiver<Change>,
    focus: Focus,
    out: tokio::sync::mpsc::Sender<bytes::Bytes>,
    closed: CancellationToken,
    firing: Arc<std::sync::atomic::AtomicI64>,
) {
    // The browser retries after 3 s when the stream ends (a restart, say).
    let hello = "retry: 3000\nevent: hello\ndata: {}\n\n";
    if out
        .send(bytes::Bytes::from_static(hello.as_bytes()))
        .await
        .is_err()
    {
        return;
    }
    let mut dirty = Dirty::default();
    // The first note waits a full period too: an immediate first tick would
    // split a burst that arrives with the connection into two notes.
    let mut flush = tokio::time::interval_at(tokio::time::Instant::now() + COALESCE, COALESCE);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut idle = tokio::time::Instant::now();
    loop {
        let chunk = tokio::select! {
            _ = closed.cancelled() => return,
            _ = out.closed() => return,
            change = changes.recv() => match change {
                Ok(change) => note(&focus, &mut dirty, change),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    dirty = Dirty::all();
                    None
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = flush.tick() => {
                let text = dirty.take(&focus, firing.load(std::sync::atomic::Ordering::Relaxed));
                if !text.is_empty() {
                    Some(text)
                } else if idle.elapsed() >= KEEPALIVE {
                    Some(": keepalive\n\n".to_string())
                } else {
                    None
                }
            }
        };
        if let Some(text) = chunk {
            idle = tokio::time::Instant::now();
            if out.send(bytes::Bytes::from(text)).await.is_err() {
                return;
            }
        }
    }
}

/// Marks what a change makes stale; readings for the focused device go out at once.
fn note(focus: &Focus, dirty: &mut Dirty, change: Change) -> Option<String> {
    let mine = |id: &str| focus.device.as_deref() == Some(id);
    match change {
        Change::Device(id) | Change::Presence(id, _) | Change::Alert(id) => {
            dirty.fleet = true;
            dirty.device |= mine(&id);
            None
        }
        Change::Health(h) => {
            dirty.device |= mine(&h.device_id);
            None
        }
        Change::Readings(r) if mine(&r.device_id) => {
            dirty.device = true;
            let data = serde_json::to_string(&*r).ok()?;
            Some(format!("event: readings\ndata: {data}\n\n"))
        }
        Change::Readings(_) => None,
        Change::Rollout(id) => {
            dirty.fleet = true;
            dirty.rollout |= focus.rollout.as_deref() == Some(&*id);
            None
        }
        Change::Resync => {
            *dirty = Dirty::all();
            None
        }
        Change::Rules => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    async fn next_text(
        s: &mut (
                 impl futures_util::Stream<Item = Result<bytes::Bytes, std::convert::Infallible>> + Unpin
             ),
    ) -> String {
        let chunk = tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .expect("a chunk within 5 s")
            .expect("the stream is open")
            .unwrap();
        String::from_utf8(chunk.to_vec()).unwrap()
    }

    // Paused time: the coalescing period passes only when both sides wait, so
    // a slow machine cannot slip a tick between the test's sends.
    #[tokio::test(start_paused = true)]
    async fn a_device_page_gets_its_readings_and_coalesced_refreshes() {
        let live = Live::default();
        let mut s = Box::pin(live.stream(Focus {
            device: Some("d1".into()),
            rollout: None,
        }));
        assert!(next_text(&mut s).await.contains("event: hello"));
        live.send(Change::Readings(Arc::new(Readings {
            device_id: "d2".into(),
            points: vec![("temp_c".into(), 1, 1.0)],
        })));
        live.send(Change::Readings(Arc::new(Readings {
            device_id: "d1".into(),
            points: vec![("temp_c".into(), 2, 40.5)],
        })));
        let text = next_text(&mut s).await;
        assert_eq!(
            text, "event: readings\ndata: {\"points\":[[\"temp_c\",2,40.5]]}\n\n",
            "only the focused device's readings, at once"
        );
        for _ in 0..50 {
            live.device("d1");
        }
        let text = next_text(&mut s).await;
        assert_eq!(
            text.matches("event: fleet").count(),
            1,
            "fifty changes, one note: {text}"
        );
        assert_eq!(text.matches("event: device").count(), 1, "{text}");
        assert!(!text.contains("rollout"), "{text}");
    }

    #[tokio::test]
    async fn a_stopping_server_ends_every_stream() {
        let live = Live::default();
        let mut s = Box::pin(live.stream(Focus::default()));
        assert!(next_text(&mut s).await.contains("hello"));
        assert_eq!(live.listeners(), 1);
        live.close();
        let end = tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .unwrap();
        assert!(end.is_none(), "the stream ends");
    }
}
