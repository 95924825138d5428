//! The audit log: who did what to which thing, from where, when, and whether
//! it worked. Every state-changing action of the API, the dashboard and the
//! CLI writes one entry; entries are never updated or deleted by the server.

use serde::Serialize;

use crate::error::Result;
use crate::on_store;
use crate::paging::Page;
use crate::store::{Store, now_ms};

/// Who acted and from where.
#[derive(Debug, Clone)]
pub struct Actor {
    /// `user:NAME`, `token:NAME (user:NAME)`, `cli:OSUSER` or `system`.
    pub name: String,
    /// Client address, when the action came over the network.
    pub source_addr: Option<String>,
}

impl Actor {
    /// The server itself (first start, background jobs).
    pub fn system() -> Actor {
        Actor {
            name: "system".into(),
            source_addr: None,
        }
    }

    /// An administrator at the server's command line.
    pub fn cli() -> Actor {
        let who = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "unknown".into());
        Actor {
            name: format!("cli:{who}"),
            source_addr: Some("local".into()),
        }
    }
}

/// How an action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done.
    Success,
    /// Attempted and refused for a reason other than permissions (bad input, conflict).
    Failure,
    /// Refused: wrong credentials or missing rights.
    Denied,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Denied => "denied",
        }
    }
}

/// A stored entry.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Entry {
    /// Increasing id.
    pub id: i64,
    /// When (ms).
    pub at: i64,
    /// Who.
    pub actor: String,
    /// What, as `noun.verb` (`user.create`).
    pub action: String,
    /// Which thing.
    pub target: Option<String>,
    /// From where.
    pub source_addr: Option<String>,
    /// `success`, `failure` or `denied`.
    pub outcome: String,
    /// The reason, for failures.
    pub detail: Option<String>,
}

/// Writes one entry. A failure to audit is logged loudly rather than undoing the action.
pub async fn record(
    store: &Store,
    actor: &Actor,
    action: &str,
    target: Option<&str>,
    outcome: Outcome,
    detail: Option<&str>,
) {
    let written = on_store!(store, pool => sqlx::query(
        "INSERT INTO audit_log (at, actor, action, target, source_addr, outcome, detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .bind(now_ms()).bind(&actor.name).bind(action).bind(target)
        .bind(actor.source_addr.as_deref()).bind(outcome.as_str()).bind(detail)
        .execute(pool).await.map(|r| r.rows_affected()));
    if let Err(e) = written {
        tracing::error!(action, actor = %actor.name, error = %e, "could not write the audit log");
    }
}

/// Records the outcome of a domain call and hands the result back unchanged.
pub async fn record_result<T>(
    store: &Store,
    actor: &Actor,
    action: &str,
    target: Option<&str>,
    result: Result<T>,
) -> Result<T> {
    match &result {
        Ok(_) => record(store, actor, action, target, Outcome::Success, None).await,
        Err(e) => {
            let outcome = match e {
                crate::error::Error::Forbidden(_) | crate::error::Error::Unauthorized(_) => {
                    Outcome::Denied
                }
                _ => Outcome::Failure,
            };
            record(store, actor, action, target, outcome, Some(&e.to_string())).await;
        }
    }
    result
}

/// Filters of the audit list; all optional.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// Exact actor.
    pub actor: Option<String>,
    /// Exact action, or a prefix before a dot (`user` matches `user.create`).
    pub action: Option<String>,
    /// From this time (ms, inclusive).
    pub from: Option<i64>,
    /// Up to this time (ms, exclusive).
    pub to: Option<i64>,
}

/// One page of entries, newest first, and the total matching.
pub async fn list(store: &Store, filter: &Filter, page: Page) -> Result<(Vec<Entry>, i64)> {
    let prefix = filter.action.as_ref().map(|a| format!("{a}.%"));
    const WHERE: &str = "WHERE ($1 IS NULL OR actor = $1)
          AND ($2 IS NULL OR action = $2 OR action LIKE $3)
          AND ($4 IS NULL OR at >= $4) AND ($5 IS NULL OR at < $5)";
    let items_sql = sqlx::AssertSqlSafe(format!(
        "SELECT id, at, actor, action, target, source_addr, outcome, detail FROM audit_log {WHERE}
         ORDER BY id DESC LIMIT $6 OFFSET $7"
    ));
    let count_sql = sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM audit_log {WHERE}"));
    let items = on_store!(store, pool => sqlx::query_as::<_, Entry>(items_sql)
        .bind(filter.actor.as_deref()).bind(filter.action.as_deref()).bind(prefix.as_deref())
        .bind(filter.from).bind(filter.to).bind(page.limit()).bind(page.offset())
        .fetch_all(pool).await)?;
    let total: i64 = on_store!(store, pool => sqlx::query_scalar(count_sql)
        .bind(filter.actor.as_deref()).bind(filter.action.as_deref()).bind(prefix.as_deref())
        .bind(filter.from).bind(filter.to)
        .fetch_one(pool).await)?;
    Ok((items, total))
}

/// The entry as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EntryView {
    /// Increasing id.
    pub id: i64,
    /// RFC 3339 UTC.
    pub at: String,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// Which thing.
    pub target: Option<String>,
    /// From where.
    pub source_addr: Option<String>,
    /// `success`, `failure` or `denied`.
    pub outcome: String,
    /// The reason, for failures.
    pub detail: Option<String>,
}

impl From<Entry> for EntryView {
    fn from(e: Entry) -> Self {
        EntryView {
            id: e.id,
            at: crate::timefmt::rfc3339(e.at),
            actor: e.actor,
            action: e.action,
            target: e.target,
            source_addr: e.source_addr,
            outcome: e.outcome,
            detail: e.detail,
        }
    }
}
