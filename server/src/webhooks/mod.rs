//! Webhooks: targets that receive a signed JSON POST for alert and rollout events, and the
//! durable outbox of their deliveries. A delivery's body is fixed when it is enqueued, in one
//! transaction for every subscribed target; [`outbox`] sends each target's deliveries in order.

pub mod outbox;

use std::collections::HashMap;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::on_store;
use crate::paging::Page;
use crate::store::{Store, now_ms};
use crate::timefmt::rfc3339;

/// Longest accepted target URL.
pub const MAX_URL_CHARS: usize = 2048;
/// Shortest secret a caller may choose.
pub const MIN_SECRET_CHARS: usize = 16;
/// Longest secret a caller may choose.
pub const MAX_SECRET_CHARS: usize = 256;
/// Most targets at once: each one is a task and a share of every event's fan-out.
pub const MAX_WEBHOOKS: i64 = 100;

/// What a target can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Event {
    /// An alert fired or resolved.
    Alert,
    /// A rollout changed state (created, phase started, halted, finished …).
    Rollout,
}

impl Event {
    /// Every event, in the order they are shown.
    pub const ALL: [Event; 2] = [Event::Alert, Event::Rollout];

    /// The stored and sent name.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Alert => "alert",
            Event::Rollout => "rollout",
        }
    }

    /// Parses an event name submitted in `field`.
    pub fn parse(field: &str, s: &str) -> Result<Event> {
        match s {
            "alert" => Ok(Event::Alert),
            "rollout" => Ok(Event::Rollout),
            other => Err(Error::invalid(
                field,
                format!("{other:?} is not an event; use alert or rollout"),
            )),
        }
    }
}

/// A target URL: `http://` or `https://` with a host, at most [`MAX_URL_CHARS`] characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl(String);

impl WebhookUrl {
    /// Parses a submitted URL (surrounding blanks are dropped), naming the field `url`.
    pub fn parse(s: &str) -> Result<WebhookUrl> {
        let s = s.trim();
        let bad = |m: &str| Error::invalid("url", m.to_string());
        if s.is_empty() {
            return Err(bad(
                "is required; give the http:// or https:// address that receives the events",
            ));
        }
        if s.chars().count() > MAX_URL_CHARS {
            return Err(bad(&format!("is longer than {MAX_URL_CHARS} characters")));
        }
        let url = reqwest::Url::parse(s).map_err(|e| {
            bad(&format!(
                "is not a URL ({e}); use an address such as https://hooks.example.com/drover"
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad(&format!(
                "uses the scheme {:?}; only http:// and https:// are accepted",
                url.scheme()
            )));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad(
                "has no host; use an address such as https://hooks.example.com/drover",
            ));
        }
        if url.fragment().is_some() {
            return Err(bad("has a #fragment, which is never sent; remove it"));
        }
        Ok(WebhookUrl(url.to_string()))
    }

    /// The URL as stored and called.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A non-empty set of events, without repeats, in a stable order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Events(Vec<Event>);

impl Events {
    /// Parses submitted event names, naming the field `events`.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Events> {
        let mut events = Vec::new();
        for name in names {
            events.push(Event::parse("events", name.as_ref().trim())?);
        }
        events.sort();
        events.dedup();
        if events.is_empty() {
            return Err(Error::invalid(
                "events",
                "needs at least one event: alert, rollout or both",
            ));
        }
        Ok(Events(events))
    }

    /// Reads the stored form; unknown names (from a newer server) are skipped.
    fn from_stored(s: &str) -> Vec<Event> {
        s.split(',')
            .filter_map(|n| Event::parse("events", n).ok())
            .collect()
    }

    /// The stored form: names joined by commas.
    fn stored(&self) -> String {
        self.0
            .iter()
            .map(|e| e.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The key deliveries are signed with: chosen (16 to 256 characters) or generated.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(String);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(***)")
    }
}

impl WebhookSecret {
    /// The caller's secret, or 32 random bytes as hex when none is given.
    pub fn parse(given: Option<&str>) -> Result<WebhookSecret> {
        let Some(s) = given else {
            return Ok(WebhookSecret(hex::encode(rand::random::<[u8; 32]>())));
        };
        let chars = s.chars().count();
        if chars < MIN_SECRET_CHARS {
            return Err(Error::invalid(
                "secret",
                format!(
                    "is {chars} characters; use at least {MIN_SECRET_CHARS}, or leave it out to have one generated"
                ),
            ));
        }
        if chars > MAX_SECRET_CHARS {
            return Err(Error::invalid(
                "secret",
                format!("is longer than {MAX_SECRET_CHARS} characters"),
            ));
        }
        if s.chars().any(char::is_control) {
            return Err(Error::invalid(
                "secret",
                "contains control characters; use printable text",
            ));
        }
        Ok(WebhookSecret(s.to_string()))
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A validated new target.
#[derive(Debug, Clone)]
pub struct NewWebhook {
    /// Where deliveries go.
    pub url: WebhookUrl,
    /// What it receives.
    pub events: Events,
    /// What deliveries are signed with.
    pub secret: WebhookSecret,
}

impl NewWebhook {
    /// Parses the three submitted fields, naming the first one at fault.
    pub fn parse<S: AsRef<str>>(
        url: &str,
        events: &[S],
        secret: Option<&str>,
    ) -> Result<NewWebhook> {
        Ok(NewWebhook {
            url: WebhookUrl::parse(url)?,
            events: Events::parse(events)?,
            secret: WebhookSecret::parse(secret)?,
        })
    }
}

/// A stored target, without its secret.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Webhook {
    /// Id.
    pub id: String,
    /// Where deliveries go.
    pub url: String,
    /// Stored event names, comma-separated.
    pub events: String,
    /// Who created it.
    pub created_by: String,
    /// When (ms).
    pub created_at: i64,
    /// When it was deleted (ms); deleted targets keep their log.
    pub deleted_at: Option<i64>,
}

impl Webhook {
    /// The events it receives.
    pub fn events(&self) -> Vec<Event> {
        Events::from_stored(&self.events)
    }
}

/// A new target and its secret, which is shown only this once.
#[derive(Debug)]
pub struct Created {
    /// The target.
    pub webhook: Webhook,
    /// The signing secret (its Debug form hides it).
    pub secret: WebhookSecret,
}

/// A delivery's state, stored by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Waiting for its turn or its next attempt.
    Pending,
    /// The target answered 2xx.
    Delivered,
    /// Given up after a day of trying.
    Failed,
    /// Its target was deleted before it was delivered.
    Cancelled,
}

impl DeliveryState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
            DeliveryState::Cancelled => "cancelled",
        }
    }
}

/// Deliveries of a target per state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Counts {
    /// Waiting to be sent or retried.
    pub pending: i64,
    /// Answered 2xx.
    pub delivered: i64,
    /// Given up.
    pub failed: i64,
    /// Stopped by the target's deletion.
    pub cancelled: i64,
}

impl Counts {
    fn add(&mut self, state: &str, n: i64) {
        match state {
            "pending" => self.pending += n,
            "delivered" => self.delivered += n,
            "failed" => self.failed += n,
            "cancelled" => self.cancelled += n,
            _ => {}
        }
    }
}

/// A target as the API and dashboard show it (never with its secret).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WebhookView {
    /// Id.
    pub id: String,
    /// Where deliveries go.
    pub url: String,
    /// `alert`, `rollout`.
    pub events: Vec<String>,
    /// Who created it.
    pub created_by: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, when deleted.
    pub deleted_at: Option<String>,
    /// Its deliveries per state.
    pub deliveries: Counts,
}

impl WebhookView {
    /// The view of a target with its delivery counts.
    pub fn new(w: &Webhook, deliveries: Counts) -> WebhookView {
        WebhookView {
            id: w.id.clone(),
            url: w.url.clone(),
            events: w.events().iter().map(|e| e.as_str().to_string()).collect(),
            created_by: w.created_by.clone(),
            created_at: rfc3339(w.created_at),
            deleted_at: w.deleted_at.map(rfc3339),
            deliveries,
        }
    }
}

/// A stored delivery.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Delivery {
    /// Order within the target.
    pub seq: i64,
    /// Id, sent as `X-Drover-Delivery` and in the body.
    pub id: String,
    /// The target.
    pub webhook_id: String,
    /// `alert` or `rollout`.
    pub event: String,
    /// The JSON body, fixed at enqueue time.
    pub body: String,
    /// State name.
    pub state: String,
    /// Attempts made.
    pub attempts: i64,
    /// When the next attempt is due (ms).
    pub next_attempt_at: i64,
    /// First attempt (ms).
    pub first_attempt_at: Option<i64>,
    /// Last attempt (ms).
    pub last_attempt_at: Option<i64>,
    /// HTTP status of the last answer.
    pub last_status: Option<i64>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// Enqueued (ms).
    pub created_at: i64,
    /// Delivered (ms).
    pub delivered_at: Option<i64>,
}

/// A delivery as the API and dashboard show it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    /// Id (`X-Drover-Delivery`).
    pub id: String,
    /// `alert` or `rollout`.
    pub event: String,
    /// `pending`, `delivered`, `failed` or `cancelled`.
    pub state: String,
    /// Attempts made.
    pub attempts: i64,
    /// HTTP status of the last answer, if there was one.
    pub last_status: Option<i64>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// RFC 3339, when enqueued.
    pub created_at: String,
    /// RFC 3339, when delivered.
    pub delivered_at: Option<String>,
    /// RFC 3339, when a pending delivery is tried next.
    pub next_attempt_at: Option<String>,
}

impl From<Delivery> for DeliveryView {
    fn from(d: Delivery) -> Self {
        let pending = d.state == DeliveryState::Pending.as_str();
        DeliveryView {
            id: d.id,
            event: d.event,
            state: d.state,
            attempts: d.attempts,
            last_status: d.last_status,
            last_error: d.last_error,
            created_at: rfc3339(d.created_at),
            delivered_at: d.delivered_at.map(rfc3339),
            next_attempt_at: pending.then(|| rfc3339(d.next_attempt_at)),
        }
    }
}

const COLUMNS: &str = "id, url, events, created_by, created_at, deleted_at";
const DELIVERY_COLUMNS: &str = "seq, id, webhook_id, event, body, state, attempts, next_attempt_at, first_attempt_at, last_attempt_at, last_status, last_error, created_at, delivered_at";

fn new_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// Stores a new target; answers it with its secret.
pub async fn create(store: &Store, new: &NewWebhook, created_by: &str) -> Result<Created> {
    let active: i64 = on_store!(store, pool => sqlx::query_scalar(
        "SELECT COUNT(*) FROM webhooks WHERE deleted_at IS NULL").fetch_one(pool).await)?;
    if active >= MAX_WEBHOOKS {
        return Err(Error::Conflict(format!(
            "there are already {MAX_WEBHOOKS} webhooks; delete one before adding another"
        )));
    }
    let webhook = Webhook {
        id: new_id(),
        url: new.url.as_str().to_string(),
        events: new.events.stored(),
        created_by: created_by.to_string(),
        created_at: now_ms(),
        deleted_at: None,
    };
    on_store!(store, pool => sqlx::query(
        "INSERT INTO webhooks (id, url, events, secret, created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(&webhook.id).bind(&webhook.url).bind(&webhook.events).bind(new.secret.expose())
        .bind(&webhook.created_by).bind(webhook.created_at)
        .execute(pool).await.map(|r| r.rows_affected()))?;
    Ok(Created {
        webhook,
        secret: new.secret.clone(),
    })
}

/// One page of the targets that are not deleted, newest first, and their total.
pub async fn list(store: &Store, page: Page) -> Result<(Vec<Webhook>, i64)> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM webhooks WHERE deleted_at IS NULL ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2"
    ));
    let rows: Vec<Webhook> = on_store!(store, pool => sqlx::query_as(sql)
        .bind(page.limit()).bind(page.offset()).fetch_all(pool).await)?;
    let total: i64 = on_store!(store, pool => sqlx::query_scalar(
        "SELECT COUNT(*) FROM webhooks WHERE deleted_at IS NULL").fetch_one(pool).await)?;
    Ok((rows, total))
}

/// A target by id, deleted ones included (their log stays readable).
pub async fn get(store: &Store, id: &str) -> Result<Webhook> {
    let sql = sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM webhooks WHERE id = $1"));
    let row: Option<Webhook> =
        on_store!(store, pool => sqlx::query_as(sql).bind(id).fetch_optional(pool).await)?;
    row.ok_or_else(|| Error::NotFound(format!("no webhook {id}")))
}

/// Forgets finished deliveries (delivered, failed or cancelled) that ended before `cutoff` (ms),
/// then deleted targets left without a delivery; pending ones stay whatever their age. Answers
/// (deliveries, targets) removed.
pub async fn prune(store: &Store, cutoff: i64) -> Result<(u64, u64)> {
    Ok(on_store!(store, pool => {
        let mut tx = pool.begin().await?;
        let deliveries = sqlx::query(
            "DELETE FROM webhook_deliveries
              WHERE state <> 'pending' AND COALESCE(delivered_at, last_attempt_at, created_at) < $1")
            .bind(cutoff).execute(&mut *tx).await?.rows_affected();
        let targets = sqlx::query(
            "DELETE FROM webhooks
              WHERE deleted_at < $1
                AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.webhook_id = webhooks.id)")
            .bind(cutoff).execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        Ok::<_, sqlx::Error>((deliveries, targets))
    })?)
}

/// Deletes a target: its pending deliveries are cancelled, its log and row kept, its secret
/// forgotten. Answers how many deliveries were cancelled.
pub async fn delete(store: &Store, id: &str) -> Result<u64> {
    let now = now_ms();
    let (deleted, cancelled) = on_store!(store, pool => {
        let mut tx = pool.begin().await?;
        let deleted = sqlx::query(
            "UPDATE webhooks SET deleted_at = $1, secret = '' WHERE id = $2 AND deleted_at IS NULL")
            .bind(now).bind(id).execute(&mut *tx).await?.rows_affected();
        let cancelled = sqlx::query(
            "UPDATE webhook_deliveries SET state = 'cancelled', last_error = 'the webhook was deleted'
              WHERE webhook_id = $1 AND state = 'pending'")
            .bind(id).execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        Ok::<_, sqlx::Error>((deleted, cancelled))
    })?;
    if deleted == 0 {
        return Err(Error::NotFound(format!(
            "no webhook {id}, or it is already deleted"
        )));
    }
    Ok(cancelled)
}

/// Delivery counts per state of the given targets.
pub async fn counts(store: &Store, ids: &[&str]) -> Result<HashMap<String, Counts>> {
    let mut all: HashMap<String, Counts> = HashMap::new();
    for id in ids {
        let rows: Vec<(String, i64)> = on_store!(store, pool => sqlx::query_as(
            "SELECT state, COUNT(*) FROM webhook_deliveries WHERE webhook_id = $1 GROUP BY state")
            .bind(id).fetch_all(pool).await)?;
        let c = all.entry((*id).to_string()).or_default();
        for (state, n) in rows {
            c.add(&state, n);
        }
    }
    Ok(all)
}

/// The views of targets, with their delivery counts.
pub async fn views(store: &Store, webhooks: &[Webhook]) -> Result<Vec<WebhookView>> {
    let ids: Vec<&str> = webhooks.iter().map(|w| w.id.as_str()).collect();
    let counts = counts(store, &ids).await?;
    Ok(webhooks
        .iter()
        .map(|w| WebhookView::new(w, counts.get(&w.id).copied().unwrap_or_default()))
        .collect())
}

/// The view of one target, with its delivery counts.
pub async fn view(store: &Store, webhook: &Webhook) -> Result<WebhookView> {
    let counts = counts(store, &[webhook.id.as_str()]).await?;
    let c = counts.get(&webhook.id).copied().unwrap_or_default();
    Ok(WebhookView::new(webhook, c))
}

/// One page of a target's deliveries, newest first, and their total.
pub async fn deliveries(
    store: &Store,
    webhook_id: &str,
    page: Page,
) -> Result<(Vec<Delivery>, i64)> {
    get(store, webhook_id).await?;
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE webhook_id = $1 ORDER BY seq DESC LIMIT $2 OFFSET $3"
    ));
    let rows: Vec<Delivery> = on_store!(store, pool => sqlx::query_as(sql)
        .bind(webhook_id).bind(page.limit()).bind(page.offset()).fetch_all(pool).await)?;
    let total: i64 = on_store!(store, pool => sqlx::query_scalar(
        "SELECT COUNT(*) FROM webhook_deliveries WHERE webhook_id = $1")
        .bind(webhook_id).fetch_one(pool).await)?;
    Ok((rows, total))
}

/// Ids of the targets subscribed to `event` that are not deleted.
async fn subscribers(store: &Store, event: Event) -> Result<Vec<String>> {
    let rows: Vec<(String, String)> = on_store!(store, pool => sqlx::query_as(
        "SELECT id, events FROM webhooks WHERE deleted_at IS NULL ORDER BY id")
        .fetch_all(pool).await)?;
    Ok(rows
        .into_iter()
        .filter(|(_, events)| Events::from_stored(events).contains(&event))
        .map(|(id, _)| id)
        .collect())
}

/// Queues `data` for every target subscribed to `event`, in one transaction, each delivery with
/// its body fixed now: `{"id", "event", "created_at", "data"}`. Answers how many were queued;
/// the outbox sends them in order per target, retrying for a day.
pub async fn enqueue(store: &Store, event: Event, data: serde_json::Value) -> Result<usize> {
    // A plain read first, so that events nobody subscribes to cost no write lock.
    if subscribers(store, event).await?.is_empty() {
        return Ok(0);
    }
    let now = now_ms();
    let created_at = rfc3339(now);
    let (begin, lock) = match store {
        // IMMEDIATE takes SQLite's write lock up front: no read-to-write upgrade to fail.
        Store::Sqlite(_) => ("BEGIN IMMEDIATE", ""),
        // Locking the targets orders concurrent enqueues, so `seq` order is commit order and
        // the worker never sees a later delivery of a target before an earlier one.
        Store::Postgres(_) => ("BEGIN", " FOR UPDATE"),
    };
    let select = sqlx::AssertSqlSafe(format!(
        "SELECT id, events FROM webhooks WHERE deleted_at IS NULL ORDER BY id{lock}"
    ));
    let queued = on_store!(store, pool => {
        let mut tx = pool.begin_with(begin).await?;
        let targets: Vec<(String, String)> = sqlx::query_as(select).fetch_all(&mut *tx).await?;
        let mut queued = 0usize;
        for (webhook_id, events) in targets {
            if !Events::from_stored(&events).contains(&event) {
                continue;
            }
            let id = new_id();
            let body = serde_json::json!({
                "id": id,
                "event": event.as_str(),
                "created_at": created_at,
                "data": data,
            })
            .to_string();
            sqlx::query(
                "INSERT INTO webhook_deliveries (id, webhook_id, event, body, state, next_attempt_at, created_at)
                 VALUES ($1, $2, $3, $4, 'pending', $5, $5)")
                .bind(&id).bind(&webhook_id).bind(event.as_str()).bind(&body).bind(now)
                .execute(&mut *tx).await?;
            queued += 1;
        }
        tx.commit().await?;
        Ok::<_, sqlx::Error>(queued)
    })?;
    if queued > 0 {
        outbox::wake();
    }
    Ok(queued)
}

/// Queues a rollout's event for the `rollout` targets (called where the event is recorded).
/// A failure is logged, not returned: the rollout's own transition has already happened.
pub async fn rollout_event(store: &Store, rollout_id: &str, kind: &str, detail: &str, at: i64) {
    let result = async {
        if subscribers(store, Event::Rollout).await?.is_empty() {
            return Ok(0);
        }
        let (name, state) = match crate::rollouts::get(store, rollout_id).await {
            Ok(r) => (Some(r.name), Some(r.state)),
            Err(Error::NotFound(_)) => (None, None),
            Err(e) => return Err(e),
        };
        let data = serde_json::json!({
            "rollout_id": rollout_id,
            "name": name,
            "state": state,
            "kind": kind,
            "detail": detail,
            "at": rfc3339(at),
        });
        enqueue(store, Event::Rollout, data).await
    }
    .await;
    if let Err(e) = result {
        tracing::error!(rollout_id, kind, error = %e, "could not queue the rollout event for webhooks");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(e: Error) -> String {
        match e {
            Error::Invalid { field, .. } => field,
            other => panic!("not a field error: {other}"),
        }
    }

    #[test]
    fn only_http_and_https_urls_with_a_host_are_targets() {
        for ok in [
            "https://hooks.example.com/drover",
            "http://127.0.0.1:9000/in?x=1",
            "  https://example.com  ",
        ] {
            assert!(WebhookUrl::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "ftp://example.com/x",
            "javascript:alert(1)",
            "file:///etc/passwd",
            "data:text/plain,hi",
            "example.com/x",
            "http://",
            "https://example.com/#frag",
            &format!("https://example.com/{}", "a".repeat(MAX_URL_CHARS)),
        ] {
            let e = WebhookUrl::parse(bad).expect_err(bad);
            assert_eq!(field(e), "url", "{bad}");
        }
    }

    #[test]
    fn events_are_a_non_empty_set_of_known_names() {
        let e = Events::parse(&["rollout", "alert", "alert"]).expect("valid");
        assert_eq!(e.stored(), "alert,rollout");
        assert_eq!(
            Events::from_stored(&e.stored()),
            vec![Event::Alert, Event::Rollout]
        );
        assert_eq!(field(Events::parse::<&str>(&[]).unwrap_err()), "events");
        assert_eq!(
            field(Events::parse(&["alert", "deploy"]).unwrap_err()),
            "events"
        );
    }

    #[test]
    fn secrets_are_generated_or_long_enough() {
        let generated = WebhookSecret::parse(None).expect("generated");
        assert_eq!(generated.expose().len(), 64);
        assert!(generated.expose().chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(generated, WebhookSecret::parse(None).expect("generated"));
        assert_eq!(
            field(WebhookSecret::parse(Some("short")).unwrap_err()),
            "secret"
        );
        assert_eq!(field(WebhookSecret::parse(Some("")).unwrap_err()), "secret");
        assert!(WebhookSecret::parse(Some("sixteen-chars-ok")).is_ok());
        assert!(!format!("{generated:?}").contains(generated.expose()));
    }
}
