//! Reading the audit log.

use actix_web::{get, web};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_actix_web::service_config::ServiceConfig;

use crate::audit::{self, EntryView, Filter};
use crate::http::AppState;
use crate::http::auth::Principal;
use crate::http::errors::{ApiResult, Problem};
use crate::paging::Page;
use crate::paging::Paged;
use crate::timefmt::parse_rfc3339;

pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(list_audit);
}

/// Filters and paging of the audit log.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Exact actor, e.g. `user:alice`.
    pub actor: Option<String>,
    /// Action or its prefix, e.g. `user` or `user.create`.
    pub action: Option<String>,
    /// From this RFC 3339 time (inclusive).
    pub from: Option<String>,
    /// Up to this RFC 3339 time (exclusive).
    pub to: Option<String>,
    /// Page number, from 1.
    pub page: Option<String>,
    /// Items per page, 1 to 500.
    pub per_page: Option<String>,
}

impl AuditQuery {
    /// The validated filter and page.
    pub fn parse(&self) -> crate::error::Result<(Filter, Page)> {
        let non_empty = |v: &Option<String>| v.as_ref().filter(|s| !s.is_empty()).cloned();
        let filter = Filter {
            actor: non_empty(&self.actor),
            action: non_empty(&self.action),
            from: non_empty(&self.from)
                .map(|s| parse_rfc3339("from", &s))
                .transpose()?,
            to: non_empty(&self.to)
                .map(|s| parse_rfc3339("to", &s))
                .transpose()?,
        };
        Ok((
            filter,
            Page::parse(self.page.as_deref(), self.per_page.as_deref())?,
        ))
    }
}

/// Lists audit entries, newest first.
#[utoipa::path(tag = "audit", security(("bearer" = [])), params(AuditQuery), responses(
    (status = 200, body = Paged<EntryView>), (status = 400, body = Problem), (status = 401, body = Problem)))]
#[get("/audit")]
async fn list_audit(
    state: web::Data<AppState>,
    _who: Principal,
    query: web::Query<AuditQuery>,
) -> ApiResult<web::Json<Paged<EntryView>>> {
    let (filter, page) = query.parse()?;
    let (items, total) = audit::list(&state.store, &filter, page).await?;
    Ok(web::Json(page.wrap(
        items.into_iter().map(EntryView::from).collect(),
        total,
    )))
}
