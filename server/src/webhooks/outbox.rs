//! The delivery worker: sends each target's pending deliveries in `seq` order, one target per
//! task, so a slow or hanging receiver delays only itself. Every attempt's outcome is written
//! before the next one, so a restart continues where the last process stopped (at least once:
//! a delivery in flight when the process dies is sent again, with the same id). On PostgreSQL
//! one replica delivers at a time, holding an advisory lock; on SQLite the one process does.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::{Delivery, DeliveryState};
use crate::error::Result;
use crate::leader::Hold;
use crate::on_store;
use crate::store::{Store, now_ms};

/// How often the worker looks for pending deliveries without being woken (enqueues in another
/// replica cannot wake this one).
const POLL: Duration = Duration::from_secs(1);
/// How long a follower waits before trying to become the one that delivers.
const FOLLOW: Duration = Duration::from_secs(5);
/// How long one POST may take, connecting included.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// First retry delay; each later one doubles.
const BACKOFF_BASE_MS: i64 = 1_000;
/// Longest retry delay.
const BACKOFF_CAP_MS: i64 = 10 * 60 * 1_000;
/// Up to this fraction of a delay is added at random, so retries to one receiver spread out.
const JITTER: f64 = 0.1;
/// A delivery is given up when it still fails this long after its first attempt.
const GIVE_UP_AFTER_MS: i64 = 24 * 3600 * 1_000;
/// Longest sleep of a target's task between looks at its head delivery.
const NAP: Duration = Duration::from_secs(5);
/// Longest `last_error` kept.
const MAX_ERROR_CHARS: usize = 500;
/// The PostgreSQL advisory lock key of the outbox ("drover-w" as bytes).
const ADVISORY_KEY: i64 = 0x6472_6f76_6572_2d77;

/// Wakes the worker of this process at once (after an enqueue); other replicas poll.
static WAKE: Notify = Notify::const_new();

/// Tells the worker that deliveries were queued.
pub fn wake() {
    WAKE.notify_one();
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The receiver answered with this HTTP status.
    Answered(u16),
    /// No answer: refused, unreachable, TLS failure or timeout.
    NoAnswer(String),
}

/// What happens to a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Its new state (`Pending` to retry).
    pub state: DeliveryState,
    /// When it is tried next, for a retry (ms).
    pub next_attempt_at: i64,
}

/// Delay before retry number `failures` (1 for the first retry): 1 s, 2 s, 4 s … capped at
/// 10 min, plus up to 10 % of it at random (`jitter` in 0..1).
pub fn backoff_ms(failures: u32, jitter: f64) -> i64 {
    let exponent = failures.saturating_sub(1).min(30);
    let delay = BACKOFF_BASE_MS
        .saturating_mul(1_i64 << exponent)
        .min(BACKOFF_CAP_MS);
    delay + (delay as f64 * JITTER * jitter.clamp(0.0, 1.0)) as i64
}

/// The transition of a pending delivery after attempt number `attempts` (1 for the first),
/// whose first attempt was at `first_attempt_at`: delivered on 2xx; otherwise retried with
/// backoff, or failed once it has been tried for a day.
pub fn decide(
    attempt: &Attempt,
    attempts: u32,
    first_attempt_at: i64,
    now: i64,
    jitter: f64,
) -> Decision {
    if matches!(attempt, Attempt::Answered(status) if (200..300).contains(status)) {
        return Decision {
            state: DeliveryState::Delivered,
            next_attempt_at: now,
        };
    }
    if now.saturating_sub(first_attempt_at) >= GIVE_UP_AFTER_MS {
        return Decision {
            state: DeliveryState::Failed,
            next_attempt_at: now,
        };
    }
    Decision {
        state: DeliveryState::Pending,
        next_attempt_at: now + backoff_ms(attempts, jitter),
    }
}

/// `sha256=HEX`: the HMAC-SHA256 of `body` keyed with `secret`, as sent in `X-Drover-Signature`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The HTTP client of every delivery: no redirects (a 3xx is a failed attempt, so a receiver
/// cannot bounce signed events elsewhere), a 10 s limit per POST.
fn client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(concat!("drover/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(TIMEOUT)
        .timeout(TIMEOUT)
        .build()
}

/// Runs forever: waits until it may deliver, then delivers until it loses the hold.
pub async fn run(store: Store) {
    let client = match client() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhooks are not delivered: no HTTP client");
            return;
        }
    };
    loop {
        let mut hold = match Hold::acquire(&store, ADVISORY_KEY).await {
            Ok(Some(h)) => h,
            Ok(None) => {
                tokio::time::sleep(FOLLOW).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "the webhook outbox cannot reach the store");
                tokio::time::sleep(FOLLOW).await;
                continue;
            }
        };
        deliver(&store, &client, &mut hold).await;
        tracing::warn!("no longer delivering webhooks");
        hold.release().await;
        tokio::time::sleep(FOLLOW).await;
    }
}

/// Keeps one task per target with pending deliveries until the hold is lost; dropping the
/// task set then stops them all.
async fn deliver(store: &Store, client: &reqwest::Client, hold: &mut Hold) {
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut running: HashMap<tokio::task::Id, String> = HashMap::new();
    loop {
        while let Some(done) = tasks.try_join_next_with_id() {
            let id = match done {
                Ok((id, ())) => id,
                Err(e) => {
                    tracing::error!(error = %e, "a webhook target's task ended abnormally");
                    e.id()
                }
            };
            running.remove(&id);
        }
        if !hold.alive().await {
            return;
        }
        match targets_with_pending(store).await {
            Ok(targets) => {
                let busy: HashSet<&String> = running.values().collect();
                let new: Vec<String> = targets.into_iter().filter(|t| !busy.contains(t)).collect();
                for target in new {
                    let handle = tasks.spawn(drive(store.clone(), client.clone(), target.clone()));
                    running.insert(handle.id(), target);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read pending webhook deliveries"),
        }
        tokio::select! {
            _ = WAKE.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// What a target's task does next.
enum Step {
    /// Nothing pending: the task ends (the worker starts another when work arrives).
    Idle,
    /// The head delivery is not due yet.
    Wait(Duration),
    /// An attempt was made and recorded.
    Tried,
}

/// Delivers one target's pending deliveries, in order, until none is left.
async fn drive(store: Store, client: reqwest::Client, webhook_id: String) {
    loop {
        match step(&store, &client, &webhook_id).await {
            Ok(Step::Idle) => return,
            Ok(Step::Wait(d)) => tokio::time::sleep(d.min(NAP)).await,
            Ok(Step::Tried) => {}
            Err(e) => {
                tracing::warn!(webhook_id, error = %e, "webhook delivery could not be recorded");
                tokio::time::sleep(NAP).await;
            }
        }
    }
}

/// Looks at the target's first pending delivery and tries it if it is due.
async fn step(store: &Store, client: &reqwest::Client, webhook_id: &str) -> Result<Step> {
    let target: Option<(String, String, Option<i64>)> = on_store!(store, pool => sqlx::query_as(
        "SELECT url, secret, deleted_at FROM webhooks WHERE id = $1")
        .bind(webhook_id).fetch_optional(pool).await)?;
    let Some((url, secret, None)) = target else {
        // Deleted meanwhile (an enqueue may have raced the deletion's cancel).
        cancel_pending(store, webhook_id).await?;
        return Ok(Step::Idle);
    };
    let Some(d) = head(store, webhook_id).await? else {
        return Ok(Step::Idle);
    };
    let now = now_ms();
    if d.next_attempt_at > now {
        let ms = u64::try_from(d.next_attempt_at - now).unwrap_or(0);
        return Ok(Step::Wait(Duration::from_millis(ms)));
    }
    let attempt = send(client, &url, &secret, &d).await;
    let now = now_ms();
    let attempts = u32::try_from(d.attempts + 1).unwrap_or(u32::MAX);
    let first = d.first_attempt_at.unwrap_or(now);
    let decision = decide(&attempt, attempts, first, now, rand::random::<f64>());
    match (&attempt, decision.state) {
        (_, DeliveryState::Delivered) => {
            tracing::debug!(webhook_id, delivery = %d.id, attempts, "webhook delivered")
        }
        (_, DeliveryState::Failed) => {
            tracing::warn!(webhook_id, delivery = %d.id, attempts, "webhook delivery given up after a day of failures")
        }
        (Attempt::Answered(status), _) => {
            tracing::info!(webhook_id, delivery = %d.id, attempts, status, "webhook delivery refused; will retry")
        }
        (Attempt::NoAnswer(error), _) => {
            tracing::info!(webhook_id, delivery = %d.id, attempts, error, "webhook receiver did not answer; will retry")
        }
    }
    record(store, &d, &attempt, decision, first, now).await?;
    Ok(Step::Tried)
}

/// Targets that have pending deliveries.
async fn targets_with_pending(store: &Store) -> Result<Vec<String>> {
    Ok(on_store!(store, pool => sqlx::query_scalar(
        "SELECT DISTINCT webhook_id FROM webhook_deliveries WHERE state = 'pending'")
        .fetch_all(pool).await)?)
}

/// The target's first pending delivery: the only one that may be sent.
async fn head(store: &Store, webhook_id: &str) -> Result<Option<Delivery>> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {} FROM webhook_deliveries WHERE webhook_id = $1 AND state = 'pending' ORDER BY seq LIMIT 1",
        super::DELIVERY_COLUMNS
    ));
    Ok(on_store!(store, pool => sqlx::query_as(sql)
        .bind(webhook_id).fetch_optional(pool).await)?)
}

async fn cancel_pending(store: &Store, webhook_id: &str) -> Result<()> {
    on_store!(store, pool => sqlx::query(
        "UPDATE webhook_deliveries SET state = 'cancelled', last_error = 'the webhook was deleted'
          WHERE webhook_id = $1 AND state = 'pending'")
        .bind(webhook_id).execute(pool).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// Writes an attempt's outcome; a delivery cancelled meanwhile stays cancelled.
async fn record(
    store: &Store,
    d: &Delivery,
    attempt: &Attempt,
    decision: Decision,
    first_attempt_at: i64,
    now: i64,
) -> Result<()> {
    let (status, error) = match attempt {
        Attempt::Answered(s) if (200..300).contains(s) => (Some(i64::from(*s)), None),
        Attempt::Answered(s) => (
            Some(i64::from(*s)),
            Some(format!("the receiver answered HTTP {s}")),
        ),
        Attempt::NoAnswer(e) => (None, Some(e.chars().take(MAX_ERROR_CHARS).collect())),
    };
    let delivered_at = (decision.state == DeliveryState::Delivered).then_some(now);
    on_store!(store, pool => sqlx::query(
        "UPDATE webhook_deliveries
            SET state = $1, attempts = attempts + 1, first_attempt_at = $2, last_attempt_at = $3,
                last_status = $4, last_error = $5, next_attempt_at = $6, delivered_at = $7
          WHERE seq = $8 AND state = 'pending'")
        .bind(decision.state.as_str()).bind(first_attempt_at).bind(now).bind(status)
        .bind(error).bind(decision.next_attempt_at).bind(delivered_at).bind(d.seq)
        .execute(pool).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// One signed POST of a delivery's stored body.
async fn send(client: &reqwest::Client, url: &str, secret: &str, d: &Delivery) -> Attempt {
    let sent = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-Drover-Delivery", &d.id)
        .header("X-Drover-Event", &d.event)
        .header("X-Drover-Signature", signature(secret, d.body.as_bytes()))
        .body(d.body.clone())
        .send()
        .await;
    match sent {
        // The body of the answer is not needed; dropping it closes the connection if unread.
        Ok(res) => Attempt::Answered(res.status().as_u16()),
        Err(e) => Attempt::NoAnswer(describe(&e)),
    }
}

/// The error and its causes in one line, without the URL (it may carry credentials).
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return format!("no answer within {} s", TIMEOUT.as_secs());
    }
    let mut text = String::new();
    let mut cause: Option<&dyn std::error::Error> = Some(e);
    while let Some(c) = cause {
        let part = match c.downcast_ref::<reqwest::Error>() {
            Some(r) if r.url().is_some() => {
                // Display of a reqwest error names its URL; show only the kind of failure.
                if r.is_connect() {
                    "cannot connect".to_string()
                } else if r.is_request() {
                    "the request failed".to_string()
                } else {
                    "error".to_string()
                }
            }
            _ => c.to_string(),
        };
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_to_ten_minutes_with_small_jitter() {
        assert_eq!(backoff_ms(1, 0.0), 1_000);
        assert_eq!(backoff_ms(2, 0.0), 2_000);
        assert_eq!(backoff_ms(3, 0.0), 4_000);
        assert_eq!(backoff_ms(10, 0.0), 512_000);
        assert_eq!(backoff_ms(11, 0.0), 600_000);
        assert_eq!(backoff_ms(1_000, 0.0), 600_000);
        assert_eq!(backoff_ms(1, 0.999), 1_099);
        assert_eq!(backoff_ms(1_000, 1.0), 660_000);
    }

    #[test]
    fn a_2xx_delivers_anything_else_retries_until_a_day_has_passed() {
        let first = 1_000_000;
        let ok = decide(&Attempt::Answered(204), 1, first, first, 0.0);
        assert_eq!(ok.state, DeliveryState::Delivered);
        for attempt in [
            Attempt::Answered(503),
            Attempt::Answered(302),
            Attempt::Answered(404),
            Attempt::NoAnswer("cannot connect".into()),
        ] {
            let d = decide(&attempt, 3, first, first + 10_000, 0.0);
            assert_eq!(d.state, DeliveryState::Pending, "{attempt:?}");
            assert_eq!(d.next_attempt_at, first + 10_000 + 4_000);
        }
        let late = first + GIVE_UP_AFTER_MS - 1;
        assert_eq!(
            decide(&Attempt::Answered(500), 150, first, late, 0.5).state,
            DeliveryState::Pending
        );
        let day = first + GIVE_UP_AFTER_MS;
        assert_eq!(
            decide(&Attempt::Answered(500), 151, first, day, 0.5).state,
            DeliveryState::Failed
        );
        assert_eq!(
            decide(&Attempt::Answered(200), 152, first, day + 1, 0.5).state,
            DeliveryState::Delivered,
            "a success is a success, however late"
        );
    }

    #[test]
    fn the_signature_is_the_rfc_4231_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
