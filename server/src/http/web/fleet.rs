//! The fleet metrics page: one metric compared across versions, device
//! types or tag values, as a chart and a table (see `crate::fleet::metrics`),
//! and, grouped by version, each version's drift scores (`crate::fleet::drift`).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, get, web};
use askama::Template;
use serde::Deserialize;

use super::{Nav, WebError, html_status};
use crate::error::Error;
use crate::fleet::drift::{self, FleetDrift};
use crate::fleet::metrics::{self, Choices, FleetMetrics, GroupBy, MetricName, Window};
use crate::http::AppState;
use crate::http::auth::WebUser;
use crate::store::now_ms;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(fleet_page);
}

/// The windows offered: (value, label, length in ms).
const WINDOWS: &[(&str, &str, i64)] = &[
    ("1h", "Last hour", 3_600_000),
    ("24h", "Last 24 hours", 86_400_000),
    ("7d", "Last 7 days", 7 * 86_400_000),
];

/// The form as given in the query string; every field optional.
#[derive(Debug, Default, Deserialize)]
struct FleetForm {
    #[serde(default)]
    metric: String,
    #[serde(default)]
    group_by: String,
    #[serde(default)]
    window: String,
    /// `1`: also score each version's drift (as costly as `/api/v1/fleet/drift`).
    #[serde(default)]
    drift: String,
}

#[derive(Template)]
#[template(path = "fleet.html")]
struct FleetPage {
    nav: Nav,
    choices: Choices,
    metric: String,
    group_by: String,
    window: &'static str,
    windows: &'static [(&'static str, &'static str, i64)],
    answer: Option<FleetMetrics>,
    /// Present when grouped by version, asked for, and the metrics answered.
    drift: Option<FleetDrift>,
    /// Grouped by version without drift asked for: the page offers to score it.
    offer_drift: bool,
    error: Option<String>,
}

impl FleetPage {
    /// The groupings offered: (value, label).
    fn groupings(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .choices
            .bundles
            .iter()
            .map(|b| (format!("version:{b}"), format!("Version of {b}")))
            .collect();
        out.push(("device_type".into(), "Device type".into()));
        out.extend(
            self.choices
                .tag_keys
                .iter()
                .map(|k| (format!("tag:{k}"), format!("Tag {k}"))),
        );
        out
    }

    /// The column heading of the group keys.
    fn key_heading(&self) -> String {
        match GroupBy::parse("group_by", &self.group_by) {
            Ok(GroupBy::Version(b)) => format!("Version of {b}"),
            Ok(GroupBy::Tag(k)) => format!("Tag {k}"),
            _ => "Device type".into(),
        }
    }

    /// The window read, for the heading.
    fn window_text(&self) -> String {
        match &self.answer {
            Some(a) => format!(
                "{} to {} (whole {}s)",
                crate::timefmt::rfc3339(a.from),
                crate::timefmt::rfc3339(a.to),
                a.resolution.as_str()
            ),
            None => String::new(),
        }
    }

    /// A statistic for people: at most three decimals.
    fn num(&self, v: &f64) -> String {
        let s = format!("{v:.3}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        if s == "-0" { "0".into() } else { s.to_string() }
    }

    /// A drift score as the page shows it: two decimals.
    fn score(&self, v: &f64) -> String {
        format!("{v:.2}")
    }

    /// The window chosen, in words ("last hour").
    fn window_label(&self) -> String {
        self.windows
            .iter()
            .find(|(w, _, _)| *w == self.window)
            .map_or_else(String::new, |(_, label, _)| label.to_lowercase())
    }

    /// Minutes with readings each drift window needs, for the explanation.
    fn drift_min_minutes(&self) -> usize {
        drift::MIN_BUCKETS
    }
}

#[get("/fleet")]
async fn fleet_page(
    state: web::Data<AppState>,
    who: WebUser,
    form: web::Query<FleetForm>,
) -> Result<HttpResponse, WebError> {
    let choices = metrics::choices(&state.store).await?;
    let form = form.into_inner();
    let metric = Some(form.metric)
        .filter(|m| !m.is_empty())
        .or_else(|| choices.metrics.first().cloned())
        .unwrap_or_default();
    let group_by = Some(form.group_by)
        .filter(|g| !g.is_empty())
        .or_else(|| choices.bundles.first().map(|b| format!("version:{b}")))
        .unwrap_or_else(|| "device_type".into());
    let (window, _, span) = WINDOWS
        .iter()
        .find(|(w, _, _)| *w == form.window)
        .copied()
        .unwrap_or(WINDOWS[0]);
    let mut page = FleetPage {
        nav: Nav::new(&who, "overview"),
        choices,
        metric,
        group_by,
        window,
        windows: WINDOWS,
        answer: None,
        drift: None,
        offer_drift: false,
        error: None,
    };
    let want_drift = form.drift == "1";
    if page.metric.is_empty() {
        // Nothing stored yet: the page explains that instead of an error.
        return html_status(StatusCode::OK, &page);
    }
    let answer = async {
        let metric = MetricName::parse("metric", &page.metric)?;
        let group_by = GroupBy::parse("group_by", &page.group_by)?;
        let now = now_ms();
        let window = Window::new(Some(now - span), Some(now), now)?;
        let answer =
            metrics::compare(&state.store, &state.catalog, &metric, &group_by, window).await?;
        // Drift is scored per device on its installed version, the API's
        // /fleet/drift answer: as costly (up to drift::MAX_FLEET_DEVICES
        // devices, several queries each), so only when asked for.
        let drift = match &group_by {
            GroupBy::Version(bundle) if want_drift => {
                let window = drift::Window::parse("window", Some(page.window))?;
                Some(drift::fleet(&state.store, metric.as_str(), bundle, window, now).await?)
            }
            _ => None,
        };
        Ok::<_, Error>((answer, drift))
    }
    .await;
    match answer {
        Ok((a, d)) => {
            page.answer = Some(a);
            page.offer_drift = d.is_none() && page.group_by.starts_with("version:");
            page.drift = d;
            html_status(StatusCode::OK, &page)
        }
        Err(e @ Error::Invalid { .. }) => {
            page.error = Some(e.to_string());
            html_status(StatusCode::BAD_REQUEST, &page)
        }
        Err(e) => Err(e.into()),
    }
}
