//! Live changes between replicas sharing one PostgreSQL store. Each change a
//! replica stores also goes out as a `NOTIFY` on one channel; every replica
//! `LISTEN`s there and hands the other replicas' changes to its own pages, so
//! a page open on one replica follows readings another replica ingested.
//!
//! Changes travel in batches (one notification carries as many as fit in
//! PostgreSQL's 8,000-byte payload), so a flood of readings costs a
//! notification per batch rather than one per reading. Notifications are not
//! stored: when the listening connection drops, or this replica cannot send
//! fast enough, pages are told to refresh everything (`Change::Resync`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::mpsc;

use super::{Change, HealthFigures, Live, Readings};

/// The notification channel every replica listens on.
const CHANNEL: &str = "drover_live";

/// Largest payload sent; PostgreSQL refuses 8,000 bytes and more.
const PAYLOAD_LIMIT: usize = 7_800;

/// Largest encoded change; longer reading batches are split.
const ITEM_LIMIT: usize = 6_000;

/// Changes waiting to be sent before the relay gives up on them and asks the
/// other replicas' pages to refresh instead.
pub(super) const QUEUE: usize = 16_384;

/// Starts relaying `live`'s changes through `pool` under the name `origin`
/// (unique per running replica) until the hub closes.
pub fn start(live: &Live, pool: PgPool, origin: String) -> Vec<tokio::task::JoinHandle<()>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    if live.relay.set(tx).is_err() {
        tracing::warn!("the live relay was started twice; keeping the first");
        return Vec::new();
    }
    vec![
        tokio::spawn(publish(
            pool.clone(),
            origin.clone(),
            rx,
            live.relay_overflow.clone(),
            live.closed.clone(),
        )),
        tokio::spawn(listen(pool, origin, live.clone())),
    ]
}

/// Sends this replica's changes, batched, until the hub closes.
async fn publish(
    pool: PgPool,
    origin: String,
    mut rx: mpsc::Receiver<Change>,
    overflow: Arc<AtomicBool>,
    closed: tokio_util::sync::CancellationToken,
) {
    loop {
        let first = tokio::select! {
            _ = closed.cancelled() => return,
            change = rx.recv() => match change {
                Some(c) => c,
                None => return,
            },
        };
        let mut items = Vec::new();
        if overflow.swap(false, Ordering::Relaxed) {
            items.push(json!(["s"]).to_string());
        }
        encode(&first, &mut items);
        // Whatever queued meanwhile rides along; the round trip itself batches a flood.
        while items.len() < 512 {
            match rx.try_recv() {
                Ok(c) => encode(&c, &mut items),
                Err(_) => break,
            }
        }
        for payload in pack(&origin, &items) {
            if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(&payload)
                .execute(&pool)
                .await
            {
                // The other replicas' pages refresh once notes flow again.
                tracing::warn!(error = %e, "cannot relay live changes to other replicas");
                overflow.store(true, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(500)).await;
                break;
            }
        }
    }
}

/// Hands the other replicas' changes to this replica's pages until the hub closes.
async fn listen(pool: PgPool, origin: String, live: Live) {
    let closed = live.closed.clone();
    let mut listener = loop {
        let attempt = async {
            let mut l = PgListener::connect_with(&pool).await?;
            l.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        tokio::select! {
            _ = closed.cancelled() => return,
            got = attempt => match got {
                Ok(l) => break l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for other replicas' live changes; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
        }
    };
    loop {
        let next = tokio::select! {
            _ = closed.cancelled() => return,
            n = listener.try_recv() => n,
        };
        match next {
            Ok(Some(n)) => {
                for change in decode(n.payload(), &origin) {
                    live.deliver(change);
                }
            }
            // The connection dropped (try_recv reconnects on the next call): what was
            // sent meanwhile is gone, so every page refreshes.
            Ok(None) => live.deliver(Change::Resync),
            Err(e) => {
                tracing::warn!(error = %e, "the live listener lost PostgreSQL; reconnecting");
                live.deliver(Change::Resync);
                tokio::select! {
                    _ = closed.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// Appends `change` as one or more JSON items (long reading batches split).
fn encode(change: &Change, items: &mut Vec<String>) {
    match change {
        Change::Device(id) => items.push(json!(["d", &**id]).to_string()),
        Change::Presence(id, online) => items.push(json!(["p", &**id, online]).to_string()),
        Change::Alert(id) => items.push(json!(["a", &**id]).to_string()),
        Change::Rollout(id) => items.push(json!(["o", &**id]).to_string()),
        Change::Resync => items.push(json!(["s"]).to_string()),
        Change::Rules => items.push(json!(["u"]).to_string()),
        Change::Health(h) => items.push(json!(["h", h.device_id, h.figures]).to_string()),
        Change::Readings(r) => {
            let mut chunk: Vec<Value> = Vec::new();
            let mut size = 0;
            for (metric, ts, value) in &r.points {
                let point = json!([metric, ts, value]);
                let len = point.to_string().len() + 1;
                if size + len > ITEM_LIMIT && !chunk.is_empty() {
                    items.push(json!(["r", r.device_id, std::mem::take(&mut chunk)]).to_string());
                    size = 0;
                }
                size += len;
                chunk.push(point);
            }
            if !chunk.is_empty() {
                items.push(json!(["r", r.device_id, chunk]).to_string());
            }
        }
    }
}

/// Packs items into payloads under the limit: `{"o":ORIGIN,"c":[ITEM,…]}`.
fn pack(origin: &str, items: &[String]) -> Vec<String> {
    let head = format!("{{\"o\":{},\"c\":[", Value::from(origin));
    let mut payloads = Vec::new();
    let mut current = head.clone();
    for item in items {
        let empty = current.len() == head.len();
        if !empty && current.len() + item.len() + 3 > PAYLOAD_LIMIT {
            current.push_str("]}");
            payloads.push(std::mem::replace(&mut current, head.clone()));
        } else if !empty {
            current.push(',');
        }
        current.push_str(item);
    }
    if current.len() > head.len() {
        current.push_str("]}");
        payloads.push(current);
    }
    payloads
}

/// The changes of another replica's payload; this replica's own and anything
/// malformed are skipped.
fn decode(payload: &str, origin: &str) -> Vec<Change> {
    let Ok(v) = serde_json::from_str::<Value>(payload) else {
        tracing::warn!("a live notification is not JSON; skipped");
        return Vec::new();
    };
    if v["o"].as_str() == Some(origin) {
        return Vec::new();
    }
    let Some(items) = v["c"].as_array() else {
        return Vec::new();
    };
    items.iter().filter_map(change).collect()
}

fn change(item: &Value) -> Option<Change> {
    let id = || item.get(1)?.as_str().map(Arc::<str>::from);
    match item.get(0)?.as_str()? {
        "d" => Some(Change::Device(id()?)),
        "p" => Some(Change::Presence(id()?, item.get(2)?.as_bool()?)),
        "a" => Some(Change::Alert(id()?)),
        "o" => Some(Change::Rollout(id()?)),
        "s" => Some(Change::Resync),
        "u" => Some(Change::Rules),
        "h" => {
            let figures = item
                .get(2)?
                .as_array()?
                .iter()
                .filter_map(|f| {
                    let name = f.get(0)?.as_str()?;
                    // Received names become the static ones the hub carries; unknown ones are dropped.
                    let name = crate::alerts::HEALTH_FIGURES
                        .into_iter()
                        .find(|k| *k == name)?;
                    Some((name, f.get(1)?.as_f64()?))
                })
                .collect();
            Some(Change::Health(Arc::new(HealthFigures {
                device_id: item.get(1)?.as_str()?.to_string(),
                figures,
            })))
        }
        "r" => {
            let points = item
                .get(2)?
                .as_array()?
                .iter()
                .filter_map(|p| {
                    Some((
                        p.get(0)?.as_str()?.to_string(),
                        p.get(1)?.as_i64()?,
                        p.get(2)?.as_f64()?,
                    ))
                })
                .collect();
            Some(Change::Readings(Arc::new(Readings {
                device_id: item.get(1)?.as_str()?.to_string(),
                points,
            })))
        }
        other => {
            tracing::debug!(
                kind = other,
                "unknown live change from another replica; skipped"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(changes: &[Change]) -> Vec<Change> {
        let mut items = Vec::new();
        changes.iter().for_each(|c| encode(c, &mut items));
        pack("a", &items)
            .iter()
            .inspect(|p| assert!(p.len() < 8000, "{} bytes", p.len()))
            .flat_map(|p| decode(p, "b"))
            .collect()
    }

    #[test]
    fn every_change_crosses_and_long_batches_split_under_the_limit() {
        let points: Vec<(String, i64, f64)> = (0..2_000)
            .map(|i| (format!("metric_\"{}\"", i % 7), i, i as f64 / 4.0 - 100.0))
            .collect();
        let got = round_trip(&[
            Change::Device("d<1>".into()),
            Change::Presence("d1".into(), false),
            Change::Alert("d2".into()),
            Change::Rollout("r1".into()),
            Change::Resync,
            Change::Rules,
            Change::Health(Arc::new(HealthFigures {
                device_id: "d1".into(),
                figures: vec![("cpu_pct", 12.5), ("temp_c", -3.0)],
            })),
            Change::Readings(Arc::new(Readings {
                device_id: "d1".into(),
                points: points.clone(),
            })),
        ]);
        assert!(matches!(&got[0], Change::Device(id) if &**id == "d<1>"));
        assert!(matches!(&got[1], Change::Presence(id, false) if &**id == "d1"));
        assert!(matches!(&got[2], Change::Alert(id) if &**id == "d2"));
        assert!(matches!(&got[3], Change::Rollout(id) if &**id == "r1"));
        assert!(matches!(&got[4], Change::Resync));
        assert!(matches!(&got[5], Change::Rules));
        let Change::Health(h) = &got[6] else {
            panic!("health: {:?}", got[6]);
        };
        assert_eq!(h.figures, vec![("cpu_pct", 12.5), ("temp_c", -3.0)]);
        let mut back = Vec::new();
        for c in &got[7..] {
            let Change::Readings(r) = c else {
                panic!("readings: {c:?}");
            };
            assert_eq!(r.device_id, "d1");
            back.extend(r.points.iter().cloned());
        }
        assert!(got.len() > 8, "2,000 points need several notifications");
        assert_eq!(back.len(), points.len(), "every point exactly once");
        assert!(back == points, "every point, in order, unchanged");
    }

    #[test]
    fn own_and_malformed_payloads_are_skipped() {
        let mut items = Vec::new();
        encode(&Change::Device("d1".into()), &mut items);
        let payload = pack("me", &items).remove(0);
        assert!(decode(&payload, "me").is_empty(), "a replica's own changes");
        assert_eq!(decode(&payload, "other").len(), 1);
        assert!(decode("not json", "me").is_empty());
        let mixed = r#"{"o":"x","c":[["zz","d1"],["p","d1"],["d",5],["d","ok"]]}"#;
        assert_eq!(decode(mixed, "me").len(), 1, "only the well-formed change");
        let unknown_figure = r#"{"o":"x","c":[["h","d1",[["rootkit",1.0],["cpu_pct",2.0]]]]}"#;
        let Some(Change::Health(h)) = decode(unknown_figure, "me").pop() else {
            panic!("a health change");
        };
        assert_eq!(h.figures, vec![("cpu_pct", 2.0)]);
    }
}
