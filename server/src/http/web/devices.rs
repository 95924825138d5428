//! Devices in the dashboard: the list with filters and paging, a device's
//! page with its identity, certificates, latest values, health, installed
//! versions, update history, events, alerts, drift scores and charts (whose
//! data, with the alerts to mark on them, the page fetches from
//! `/devices/{id}/series` and then grows from the live readings), and the
//! operator's actions.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError, get, post, web};
use askama::Template;
use serde::{Deserialize, Serialize};

use super::account::NoFields;
use super::{Nav, WebError, html, html_status, see_other};
use crate::alerts::{self, Alert};
use crate::audit;
use crate::error::Error;
use crate::fleet::drift::{self, DeviceDrift};
use crate::http::AppState;
use crate::http::api::DeviceQuery;
use crate::http::auth::{Mutation, WebUser};
use crate::http::errors::ApiError;
use crate::identity::Tags;
use crate::identity::devices::{self, DeviceCertificate, Presence, Status};
use crate::identity::views::{self, CertificateView, DeviceView};
use crate::paging::Page;
use crate::store::now_ms;
use crate::telemetry::events;
use crate::telemetry::views::{self as telemetry, ChartRange, EventRow, HealthView, LatestView};
use crate::timefmt::rfc3339;
use crate::updates::{self, HistoryEntry};
use crate::users::Role;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(devices_page)
        .service(device_page)
        .service(device_series)
        .service(device_accept)
        .service(device_revoke)
        .service(device_decommission)
        .service(device_update);
}

#[derive(Template)]
#[template(path = "devices.html")]
struct DevicesPage {
    nav: Nav,
    devices: Vec<DeviceView>,
    statuses: [Status; 4],
    status: String,
    presences: [Presence; 3],
    presence: String,
    device_type: String,
    tag: String,
    q: String,
    version: String,
    sorts: [devices::Sort; 8],
    sort: String,
    per_page: String,
    page: u32,
    pages: i64,
    total: i64,
    now: i64,
    error: Option<String>,
}

impl DevicesPage {
    fn page_link(&self, page: i64) -> String {
        let filters = [
            ("status", self.status.as_str()),
            ("presence", self.presence.as_str()),
            ("type", self.device_type.as_str()),
            ("tag", self.tag.as_str()),
            ("q", self.q.as_str()),
            ("version", self.version.as_str()),
            ("sort", self.sort.as_str()),
            ("per_page", self.per_page.as_str()),
        ];
        super::page_link("/devices", &filters, page)
    }

    /// Whether the order select shows `s` (the default when none was asked for).
    fn sorted_by(&self, s: &devices::Sort) -> bool {
        match self.sort.trim() {
            "" => *s == devices::Sort::default(),
            asked => s.as_str() == asked,
        }
    }

    /// How long ago the device was last heard from.
    fn last_seen(&self, d: &DeviceView) -> String {
        d.last_seen_at
            .as_deref()
            .and_then(|t| crate::timefmt::parse_rfc3339("last_seen_at", t).ok())
            .map_or_else(|| "never".to_string(), |ms| telemetry::age(self.now, ms))
    }

    /// Whether any filter narrows the list (so an empty list is not an empty fleet).
    fn filtered(&self) -> bool {
        [
            &self.status,
            &self.presence,
            &self.device_type,
            &self.tag,
            &self.q,
            &self.version,
        ]
        .iter()
        .any(|f| !f.trim().is_empty())
    }
}

#[get("/devices")]
async fn devices_page(
    state: web::Data<AppState>,
    who: WebUser,
    query: web::Query<DeviceQuery>,
) -> Result<HttpResponse, WebError> {
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    let mut page = DevicesPage {
        nav: Nav::new(&who, "devices"),
        devices: Vec::new(),
        statuses: Status::ALL,
        status: text(&query.status),
        presences: Presence::ALL,
        presence: text(&query.presence),
        device_type: text(&query.device_type),
        tag: text(&query.tag),
        q: text(&query.q),
        version: text(&query.version),
        sorts: devices::Sort::ALL,
        sort: text(&query.sort),
        per_page: text(&query.per_page),
        page: 1,
        pages: 1,
        total: 0,
        now: now_ms(),
        error: None,
    };
    match query.parse() {
        Ok((filter, sort, p)) => {
            let (devices, total) = views::devices(&state.store, &filter, sort, p).await?;
            page.devices = devices;
            page.total = total;
            page.page = p.page;
            page.pages = p.pages(total);
            html(&page)
        }
        Err(e) => {
            page.error = Some(e.to_string());
            html_status(StatusCode::BAD_REQUEST, &page)
        }
    }
}

#[derive(Template)]
#[template(path = "device.html")]
struct DevicePage {
    nav: Nav,
    device: DeviceView,
    certificates: Vec<CertificateView>,
    /// The edit form's values: the stored ones, or what was typed when it was refused.
    name_text: String,
    tags_text: String,
    latest: Vec<LatestView>,
    health: Option<HealthView>,
    updates: Vec<UpdateRow>,
    events: Vec<EventRow>,
    events_total: i64,
    alerts: Vec<AlertRow>,
    /// Changes whenever an alert of the device fires or resolves, so the
    /// charts (static/charts.js) fetch their alert marks again only then.
    alerts_key: String,
    /// Absent on a live refresh, which swaps only the `data-live` sections.
    drift: Option<DriftSection>,
    range: ChartRange,
    ranges: [ChartRange; 3],
    error: Option<String>,
    notice: Option<String>,
}

impl DevicePage {
    /// Whether any metric has readings in the charted hour.
    fn has_recent(&self) -> bool {
        self.latest.iter().any(|l| l.recent)
    }

    /// What the charts say while they load, or when the range holds nothing.
    fn charts_status(&self) -> &'static str {
        match (self.range, self.has_recent()) {
            (ChartRange::Hour, false) => "No readings in the last hour.",
            _ => "Loading charts…",
        }
    }

    /// A drift score as the page shows it: two decimals.
    fn drift_score(&self, score: &f64) -> String {
        format!("{score:.2}")
    }

    /// A window's time to the minute, for the drift table ("2026-12-06
    /// 09:44"); the exact time is in the `<time>` element's attribute.
    fn drift_minute(&self, rfc3339: &str) -> String {
        rfc3339.get(..16).unwrap_or(rfc3339).replacen('T', " ", 1)
    }

    /// The drift threshold, for the explanation.
    fn drift_threshold(&self) -> f64 {
        drift::THRESHOLD
    }

    /// Minutes with readings each window needs, for the explanation.
    fn drift_min_minutes(&self) -> usize {
        drift::MIN_BUCKETS
    }
}

/// Metrics the page scores for drift at most. Each score costs four queries,
/// one of them reading up to a week of the metric's minute rollups (10,080
/// rows), so a device with dozens of metrics would slow every view of its
/// page; the API scores any metric.
const DRIFT_METRICS: usize = 8;

/// The window the page scores drift over: the last hour, as alert rules on
/// `drift.METRIC` do.
const DRIFT_WINDOW: drift::Window = drift::Window::Hour;

/// The page's drift section: the device's metrics, each scored.
struct DriftSection {
    scores: Vec<DeviceDrift>,
    /// Metrics the device reports beyond the scored ones.
    unscored: usize,
}

/// Scores the device's metrics for drift: those with readings in the last
/// hour first (only they can have a score), then by name, at most
/// [`DRIFT_METRICS`].
async fn drift_section(
    state: &AppState,
    id: &str,
    latest: &[LatestView],
    now: i64,
) -> Result<DriftSection, Error> {
    let mut metrics: Vec<&LatestView> = latest.iter().collect();
    metrics.sort_by_key(|l| !l.recent);
    let mut scores = Vec::with_capacity(metrics.len().min(DRIFT_METRICS));
    for l in metrics.into_iter().take(DRIFT_METRICS) {
        scores.push(drift::device(&state.store, id, &l.metric, DRIFT_WINDOW, now).await?);
    }
    Ok(DriftSection {
        scores,
        unscored: latest.len().saturating_sub(DRIFT_METRICS),
    })
}

/// Whether the request is static/live.js fetching the page again to swap its
/// `data-live` sections (the drift section is not one of them).
fn live_refresh(req: &HttpRequest) -> bool {
    req.headers().contains_key("x-drover-live")
}

/// How many updates and events the page lists; the API has them all.
const PAGE_ROWS: u32 = 20;

/// How many resolved alerts the page lists; the Alerts page and API have more.
const RESOLVED_ROWS: i64 = 10;

/// One row of the page's alerts: a firing one, or a resolved one.
struct AlertRow {
    rule_name: String,
    severity: String,
    condition: String,
    value: String,
    fired_at: String,
    fired_age: String,
    /// (RFC 3339, age) once resolved.
    resolved: Option<(String, String)>,
}

impl AlertRow {
    fn new(a: Alert, now: i64) -> AlertRow {
        AlertRow {
            value: a.value_text(),
            fired_at: a.fired(),
            fired_age: telemetry::age(now, a.fired_at),
            resolved: a.resolved_at.map(|r| (rfc3339(r), telemetry::age(now, r))),
            rule_name: a.rule_name,
            severity: a.severity,
            condition: a.condition,
        }
    }
}

/// One row of the page's update history.
struct UpdateRow {
    rollout_id: String,
    rollout_name: Option<String>,
    /// "name version" of the bundle, or its id when neither is known any more.
    bundle: String,
    state: String,
    detail: String,
    version: Option<String>,
    log_tail: Option<String>,
    at: String,
    age: String,
}

impl UpdateRow {
    fn new(u: HistoryEntry, now: i64) -> UpdateRow {
        let bundle = match (&u.bundle_name, &u.bundle_version, &u.bundle_id) {
            (Some(name), Some(version), _) => format!("{name} {version}"),
            (_, _, Some(id)) => id.clone(),
            _ => String::new(),
        };
        UpdateRow {
            bundle,
            at: rfc3339(u.updated_at),
            age: telemetry::age(now, u.updated_at),
            rollout_id: u.rollout_id,
            rollout_name: u.rollout_name,
            state: u.state,
            detail: u.detail,
            version: u.version,
            log_tail: u.log_tail.filter(|t| !t.trim().is_empty()),
        }
    }
}

async fn render_device(
    state: &AppState,
    req: &HttpRequest,
    who: &WebUser,
    id: &str,
    range: ChartRange,
    status: StatusCode,
    said: Said,
) -> Result<HttpResponse, WebError> {
    let Said {
        error,
        notice,
        typed,
    } = said;
    let device = views::device(&state.store, id).await?;
    let now = now_ms();
    let certificates = devices::certificates(&state.store, id)
        .await?
        .iter()
        .map(|c: &DeviceCertificate| CertificateView::new(c, now))
        .collect();
    let latest = telemetry::latest(&state.store, id, now).await?;
    let drift = if live_refresh(req) {
        None
    } else {
        Some(drift_section(state, id, &latest, now).await?)
    };
    let health = telemetry::health(&state.store, id, now).await?;
    let updates = updates::history(&state.store, id, i64::from(PAGE_ROWS))
        .await?
        .into_iter()
        .map(|u| UpdateRow::new(u, now))
        .collect();
    let rows = Page {
        page: 1,
        per_page: PAGE_ROWS,
    };
    let (events, events_total) = events::list(&state.store, id, rows).await?;
    let events = events.iter().map(|e| EventRow::new(e, now)).collect();
    let (firing, resolved) = alerts::on_device(&state.store, id, RESOLVED_ROWS).await?;
    // A firing makes a newer alert and a resolution lowers the number
    // firing; the newest alert is always listed, firing or resolved.
    let newest = firing.iter().chain(&resolved).map(|a| a.id).max();
    let alerts_key = format!("{}-{}", newest.unwrap_or(0), firing.len());
    let alerts = firing
        .into_iter()
        .chain(resolved)
        .map(|a| AlertRow::new(a, now))
        .collect();
    let (name_text, tags_text) = match typed {
        Some(form) => (form.name, form.tags),
        None => (
            device.name.clone(),
            device
                .tags
                .0
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
    };
    html_status(
        status,
        &DevicePage {
            nav: Nav::new(who, "devices"),
            device,
            certificates,
            name_text,
            tags_text,
            latest,
            health,
            updates,
            events,
            events_total,
            alerts,
            alerts_key,
            drift,
            range,
            ranges: ChartRange::ALL,
            error,
            notice,
        },
    )
}

#[derive(Debug, Deserialize)]
struct DevicePageQuery {
    done: Option<String>,
    range: Option<String>,
}

#[get("/devices/{id}")]
async fn device_page(
    state: web::Data<AppState>,
    req: HttpRequest,
    who: WebUser,
    id: web::Path<String>,
    query: web::Query<DevicePageQuery>,
) -> Result<HttpResponse, WebError> {
    let notice = match query.done.as_deref() {
        Some("accepted") => Some("Accepted: the device may now use the device API.".to_string()),
        Some("revoked") => {
            Some("Revoked: the device's certificates are refused from now on.".to_string())
        }
        Some("decommissioned") => Some("Decommissioned.".to_string()),
        Some("updated") => Some("Saved.".to_string()),
        _ => None,
    };
    // The page still shows the device under a bad range, charting the hour.
    let (range, status, error) = match ChartRange::parse(query.range.as_deref()) {
        Ok(range) => (range, StatusCode::OK, None),
        Err(e) => (
            ChartRange::default(),
            StatusCode::BAD_REQUEST,
            Some(e.to_string()),
        ),
    };
    let said = Said {
        error,
        notice,
        typed: None,
    };
    render_device(&state, &req, &who, &id, range, status, said).await
}

/// What a device page says besides the device.
#[derive(Debug, Default)]
struct Said {
    error: Option<String>,
    notice: Option<String>,
    /// The edit form as the operator typed it, shown again when it was refused.
    typed: Option<UpdateForm>,
}

#[derive(Debug, Deserialize)]
struct SeriesQuery {
    range: Option<String>,
}

/// Every metric the device sent in the asked range (`?range=1h|24h|7d`,
/// default 1h), and its alerts holding at some time in it, as JSON for the
/// page's charts. It sits beside the page
/// rather than in /api/v1 so that it takes the dashboard session, with the
/// page's access rule: any signed-in role. A bad range is a 400 problem
/// naming `range`, as the API would answer.
#[get("/devices/{id}/series")]
async fn device_series(
    state: web::Data<AppState>,
    _who: WebUser,
    id: web::Path<String>,
    query: web::Query<SeriesQuery>,
) -> Result<HttpResponse, WebError> {
    let range = match ChartRange::parse(query.range.as_deref()) {
        Ok(range) => range,
        Err(e) => return Ok(ApiError::from(e).error_response()),
    };
    devices::require(&state.store, &id).await?;
    let recent = telemetry::series(&state.store, &state.catalog, &id, range, now_ms()).await?;
    let alerts = alerts::overlapping(&state.store, &id, recent.from, recent.to)
        .await?
        .into_iter()
        .map(ChartAlert::from)
        .collect();
    Ok(HttpResponse::Ok()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(SeriesAnswer { recent, alerts }))
}

/// What the page's charts load: the series, and the alerts to mark on them.
#[derive(Serialize)]
struct SeriesAnswer {
    #[serde(flatten)]
    recent: telemetry::Recent,
    /// Newest first; at most `alerts::OVERLAPPING_LIMIT`.
    alerts: Vec<ChartAlert>,
}

/// An alert as a chart marks it (times in ms, as the series' are).
#[derive(Serialize)]
struct ChartAlert {
    metric: String,
    rule_name: String,
    severity: String,
    started_at: i64,
    fired_at: i64,
    resolved_at: Option<i64>,
    state: String,
}

impl From<Alert> for ChartAlert {
    fn from(a: Alert) -> ChartAlert {
        ChartAlert {
            metric: a.metric,
            rule_name: a.rule_name,
            severity: a.severity,
            started_at: a.started_at,
            fired_at: a.fired_at,
            resolved_at: a.resolved_at,
            state: a.state,
        }
    }
}

async fn act(
    state: &AppState,
    req: &HttpRequest,
    who: &WebUser,
    id: &str,
    (action, done): (&str, &str),
    result: crate::error::Result<crate::identity::devices::Device>,
    typed: Option<UpdateForm>,
) -> Result<HttpResponse, WebError> {
    match audit::record_result(&state.store, &who.actor(req), action, Some(id), result).await {
        Ok(_) => {
            state.live.device(id);
            Ok(see_other(&format!("/devices/{id}?done={done}")))
        }
        Err(e @ (Error::Conflict(_) | Error::Invalid { .. })) => {
            // A bad form is the operator's input to fix (400); a conflict is the device's
            // state forbidding the action (409). Either way the page shows why.
            let status = if matches!(e, Error::Invalid { .. }) {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::CONFLICT
            };
            render_device(
                state,
                req,
                who,
                id,
                ChartRange::default(),
                status,
                Said {
                    error: Some(e.to_string()),
                    notice: None,
                    typed,
                },
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}

#[post("/devices/{id}/accept")]
async fn device_accept(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    m: Mutation<NoFields>,
) -> Result<HttpResponse, WebError> {
    m.who.require(Role::Operator)?;
    let result = devices::accept(&state.store, &id).await;
    act(
        &state,
        &req,
        &m.who,
        &id,
        ("device.accept", "accepted"),
        result,
        None,
    )
    .await
}

#[post("/devices/{id}/revoke")]
async fn device_revoke(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    m: Mutation<NoFields>,
) -> Result<HttpResponse, WebError> {
    m.who.require(Role::Operator)?;
    let result = state.identity.cut_off(&id, Status::Revoked).await;
    act(
        &state,
        &req,
        &m.who,
        &id,
        ("device.revoke", "revoked"),
        result,
        None,
    )
    .await
}

#[post("/devices/{id}/decommission")]
async fn device_decommission(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    m: Mutation<NoFields>,
) -> Result<HttpResponse, WebError> {
    m.who.require(Role::Operator)?;
    let result = state.identity.cut_off(&id, Status::Decommissioned).await;
    act(
        &state,
        &req,
        &m.who,
        &id,
        ("device.decommission", "decommissioned"),
        result,
        None,
    )
    .await
}

#[derive(Debug, Deserialize)]
struct UpdateForm {
    name: String,
    tags: String,
}

#[post("/devices/{id}")]
async fn device_update(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    m: Mutation<UpdateForm>,
) -> Result<HttpResponse, WebError> {
    let Mutation { who, form } = m;
    who.require(Role::Operator)?;
    let result = async {
        let pairs: Vec<String> = form
            .tags
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        let tags = Tags::from_pairs("tags", &pairs, '=')?;
        devices::update(&state.store, &id, Some(&form.name), Some(&tags)).await
    }
    .await;
    act(
        &state,
        &req,
        &who,
        &id,
        ("device.update", "updated"),
        result,
        Some(form),
    )
    .await
}
