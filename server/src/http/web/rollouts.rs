//! Rollouts in the dashboard: the list with the create form (and a live preview of the target
//! through htmx), a rollout's page with its counts, devices and events, and the controls.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use askama::Template;
use serde::Deserialize;

use super::account::NoFields;
use super::{Nav, WebError, html_status, see_other};
use crate::audit;
use crate::bundles::{self, BundleView};
use crate::error::Error;
use crate::http::AppState;
use crate::http::auth::{Mutation, WebUser};
use crate::paging::{Page, PageQuery};
use crate::rollouts::{
    self, Control, DeviceView, EventView, MaintenanceWindow, NewRollout, PhaseSpec, Preview,
    RolloutView, Target,
};
use crate::users::Role;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(list_page)
        .service(create)
        .service(preview)
        .service(rollout_page)
        .service(act);
}

#[derive(Template)]
#[template(path = "rollouts.html")]
struct RolloutsPage {
    nav: Nav,
    rollouts: Vec<RolloutView>,
    bundles: Vec<BundleView>,
    page: u32,
    pages: i64,
    total: i64,
    error: Option<String>,
    notice: Option<String>,
    form: Form,
}

impl RolloutsPage {
    fn page_link(&self, page: i64) -> String {
        super::page_link("/rollouts", &[], page)
    }

    fn count(&self, r: &RolloutView, state: &str) -> i64 {
        r.counts.get(state).copied().unwrap_or(0)
    }

    fn total_devices(&self, r: &RolloutView) -> i64 {
        r.counts.values().sum()
    }
}

/// The create form's fields, as typed (kept when the form comes back with an error).
#[derive(Debug, Clone, Default, Deserialize)]
struct Form {
    #[serde(default)]
    name: String,
    #[serde(default)]
    bundle_id: String,
    #[serde(default)]
    device_type: String,
    #[serde(default)]
    tags: String,
    #[serde(default)]
    device_ids: String,
    #[serde(default = "default_phases")]
    phases: String,
    #[serde(default)]
    failure_threshold_pct: String,
    #[serde(default)]
    max_in_flight: String,
    #[serde(default)]
    auto_rollback: Option<String>,
    #[serde(default)]
    window_days: String,
    #[serde(default)]
    window_start: String,
    #[serde(default)]
    window_end: String,
    #[serde(default)]
    window_tz: String,
    #[serde(default)]
    start_at: String,
}

fn default_phases() -> String {
    "10:600, 50:600, 100".into()
}

/// `10:600, 50:600, 100`: percent, and optionally `:soak seconds`, per phase.
fn parse_phases(text: &str) -> Result<Vec<PhaseSpec>, Error> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (percent, soak) = p.split_once(':').unwrap_or((p, "0"));
            let bad = || {
                Error::invalid(
                    "phases",
                    format!("`{p}` is not PERCENT or PERCENT:SOAK_SECONDS (such as 10:600)"),
                )
            };
            Ok(PhaseSpec {
                percent: percent
                    .trim()
                    .trim_end_matches('%')
                    .parse()
                    .map_err(|_| bad())?,
                soak_seconds: soak.trim().parse().map_err(|_| bad())?,
            })
        })
        .collect()
}

impl Form {
    fn target(&self) -> Result<Target, Error> {
        let mut tags = std::collections::BTreeMap::new();
        for pair in self
            .tags
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| Error::invalid("tags", format!("`{pair}` is not KEY=VALUE")))?;
            tags.insert(k.trim().to_owned(), v.trim().to_owned());
        }
        Ok(Target {
            device_type: Some(self.device_type.trim().to_owned()).filter(|t| !t.is_empty()),
            tags,
            device_ids: self
                .device_ids
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        })
    }

    fn rollout(&self) -> Result<NewRollout, Error> {
        let number = |field: &str, text: &str| -> Result<Option<f64>, Error> {
            let t = text.trim();
            if t.is_empty() {
                return Ok(None);
            }
            t.parse()
                .map(Some)
                .map_err(|_| Error::invalid(field, "must be a number"))
        };
        let window = if self.window_start.trim().is_empty() && self.window_end.trim().is_empty() {
            None
        } else {
            Some(MaintenanceWindow {
                days: self
                    .window_days
                    .split(',')
                    .map(str::trim)
                    .filter(|d| !d.is_empty())
                    .map(str::to_owned)
                    .collect(),
                start: self.window_start.trim().to_owned(),
                end: self.window_end.trim().to_owned(),
                tz: Some(self.window_tz.trim().to_owned())
                    .filter(|t| !t.is_empty())
                    .unwrap_or_else(|| "UTC".into()),
            })
        };
        Ok(NewRollout {
            name: self.name.clone(),
            bundle_id: self.bundle_id.clone(),
            target: self.target()?,
            phases: parse_phases(&self.phases)?,
            failure_threshold_pct: number("failure_threshold_pct", &self.failure_threshold_pct)?
                .unwrap_or(0.0),
            max_in_flight: number("max_in_flight", &self.max_in_flight)?.map(|n| n as u32),
            auto_rollback: self.auto_rollback.is_some(),
            maintenance_window: window,
            offline_timeout_seconds: None,
            start_at: Some(self.start_at.trim().to_owned()).filter(|s| !s.is_empty()),
            gates: None,
        })
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    page: Option<String>,
    per_page: Option<String>,
}

async fn render_list(
    state: &AppState,
    who: &WebUser,
    page: Page,
    status: StatusCode,
    error: Option<String>,
    form: Form,
) -> Result<HttpResponse, WebError> {
    let (rows, total) = rollouts::list(&state.store, page).await?;
    let mut items = Vec::with_capacity(rows.len());
    for r in rows {
        items.push(rollouts::view(&state.store, r).await?);
    }
    let (bundles, _) = bundles::list(
        &state.store,
        Page {
            page: 1,
            per_page: 200,
        },
    )
    .await?;
    html_status(
        status,
        &RolloutsPage {
            nav: Nav::new(who, "rollouts"),
            rollouts: items,
            bundles: bundles.iter().map(BundleView::from).collect(),
            page: page.page,
            pages: page.pages(total),
            total,
            error,
            notice: None,
            form,
        },
    )
}

#[get("/rollouts")]
async fn list_page(
    state: web::Data<AppState>,
    who: WebUser,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, WebError> {
    let page = PageQuery {
        page: query.page.clone(),
        per_page: query.per_page.clone(),
    }
    .page()
    .map_err(WebError::from)?;
    render_list(
        &state,
        &who,
        page,
        StatusCode::OK,
        None,
        Form {
            phases: default_phases(),
            ..Form::default()
        },
    )
    .await
}

#[post("/rollouts")]
async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    m: Mutation<Form>,
) -> Result<HttpResponse, WebError> {
    let Mutation { who, form } = m;
    who.require(Role::Operator)?;
    let actor = who.actor(&req);
    let result = match form.rollout() {
        Ok(new) => rollouts::create(&state.store, &new, &actor.name).await,
        Err(e) => Err(e),
    };
    let target = result.as_ref().ok().map(|r| r.id.clone());
    match audit::record_result(
        &state.store,
        &actor,
        "rollout.create",
        target.as_deref(),
        result,
    )
    .await
    {
        Ok(r) => {
            state.rollouts.notify_one();
            Ok(see_other(&format!("/rollouts/{}", r.id)))
        }
        Err(e @ (Error::Invalid { .. } | Error::Conflict(_) | Error::Unprocessable(_))) => {
            let status = match e {
                Error::Conflict(_) => StatusCode::CONFLICT,
                Error::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
                _ => StatusCode::BAD_REQUEST,
            };
            render_list(
                &state,
                &who,
                Page::default(),
                status,
                Some(e.to_string()),
                form,
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Template)]
#[template(path = "rollout_preview.html")]
struct PreviewFragment {
    preview: Option<Preview>,
    error: Option<String>,
}

/// The create form's live preview (htmx): how many devices match and the phase sizes.
#[post("/rollouts/preview")]
async fn preview(state: web::Data<AppState>, m: Mutation<Form>) -> Result<HttpResponse, WebError> {
    let form = m.form;
    let fragment = match (form.target(), parse_phases(&form.phases)) {
        _ if form.bundle_id.trim().is_empty() => PreviewFragment {
            preview: None,
            error: Some("Choose a bundle to see the target.".into()),
        },
        (Ok(target), Ok(phases)) => {
            match rollouts::preview(&state.store, &form.bundle_id, &target, &phases).await {
                Ok(p) => PreviewFragment {
                    preview: Some(p),
                    error: None,
                },
                Err(e @ Error::Invalid { .. }) => PreviewFragment {
                    preview: None,
                    error: Some(e.to_string()),
                },
                Err(e) => return Err(e.into()),
            }
        }
        (Err(e), _) | (_, Err(e)) => PreviewFragment {
            preview: None,
            error: Some(e.to_string()),
        },
    };
    html_status(StatusCode::OK, &fragment)
}

#[derive(Template)]
#[template(path = "rollout.html")]
struct RolloutPage {
    nav: Nav,
    r: RolloutView,
    devices: Vec<DeviceView>,
    device_total: i64,
    events: Vec<EventView>,
    error: Option<String>,
    notice: Option<String>,
}

impl RolloutPage {
    /// A gate's rule in words.
    fn gate_text(&self, g: &crate::rollouts::gates::Gate) -> String {
        let mut limits = Vec::new();
        if let Some(m) = g.max_increase_pct {
            limits.push(format!("rises by more than {m}%"));
        }
        if let Some(m) = g.max_decrease_pct {
            limits.push(format!("falls by more than {m}%"));
        }
        format!(
            "{}: halts when it {} (at least {} readings a side)",
            match g.stat {
                crate::rollouts::gates::Stat::Mean => "mean",
                crate::rollouts::gates::Stat::P95 => "p95",
            },
            limits.join(" or "),
            g.min_samples
        )
    }

    fn num(&self, v: &Option<f64>) -> String {
        v.map_or("n/a".into(), |x| format!("{x:.3}"))
    }

    fn pct(&self, v: &Option<f64>) -> String {
        v.map_or("n/a".into(), |x| format!("{x:+.1}%"))
    }

    fn verdict_class(&self, outcome: &str) -> &'static str {
        match outcome {
            "pass" => "succeeded",
            "fail" => "failed",
            _ => "paused",
        }
    }

    /// Devices done with the rollout, and in its target.
    fn progress(&self) -> (i64, i64) {
        (
            crate::rollouts::finished_count(&self.r.counts),
            self.r.counts.values().sum(),
        )
    }

    /// Whether phase `i` (from 0) is behind, at or ahead of the current one.
    fn phase_state(&self, i: &usize) -> &'static str {
        let current = usize::try_from(self.r.phase - 1).unwrap_or(0);
        let finished = matches!(self.r.state.as_str(), "completed");
        match (*i).cmp(&current) {
            std::cmp::Ordering::Less => "done",
            std::cmp::Ordering::Equal if finished => "done",
            std::cmp::Ordering::Equal => "current",
            std::cmp::Ordering::Greater => "waiting",
        }
    }

    /// The controls the rollout's state allows.
    fn actions(&self) -> Vec<Action> {
        let s = self.r.state.as_str();
        let mut out = Vec::new();
        if matches!(s, "running" | "scheduled") {
            out.push(Action::new("pause", "Pause", false));
        }
        if s == "paused" {
            out.push(Action::new("resume", "Resume", false));
        }
        if matches!(s, "running" | "paused" | "halted" | "completed") {
            out.push(Action::new("rollback", "Roll back", true));
        }
        if matches!(
            s,
            "scheduled" | "running" | "paused" | "halted" | "rolling_back"
        ) {
            out.push(Action::new("abort", "Abort", true));
        }
        out
    }
}

/// A control button.
struct Action {
    path: &'static str,
    label: &'static str,
    class: &'static str,
    confirm: bool,
}

impl Action {
    fn new(path: &'static str, label: &'static str, dangerous: bool) -> Action {
        Action {
            path,
            label,
            class: if dangerous { "danger" } else { "" },
            confirm: dangerous,
        }
    }
}

async fn render_rollout(
    state: &AppState,
    who: &WebUser,
    id: &str,
    status: StatusCode,
    error: Option<String>,
) -> Result<HttpResponse, WebError> {
    let r = rollouts::get(&state.store, id).await?;
    let view = rollouts::view(&state.store, r).await?;
    let (devices, device_total) = rollouts::devices(
        &state.store,
        id,
        None,
        Page {
            page: 1,
            per_page: 500,
        },
    )
    .await?;
    let mut events = rollouts::events(&state.store, id).await?;
    events.reverse();
    html_status(
        status,
        &RolloutPage {
            nav: Nav::new(who, "rollouts"),
            r: view,
            devices,
            device_total,
            events,
            error,
            notice: None,
        },
    )
}

#[get("/rollouts/{id}")]
async fn rollout_page(
    state: web::Data<AppState>,
    who: WebUser,
    id: web::Path<String>,
) -> Result<HttpResponse, WebError> {
    render_rollout(&state, &who, &id, StatusCode::OK, None).await
}

#[post("/rollouts/{id}/{action}")]
async fn act(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    m: Mutation<NoFields>,
) -> Result<HttpResponse, WebError> {
    let who = m.who;
    who.require(Role::Operator)?;
    let (id, action) = path.into_inner();
    let control = match action.as_str() {
        "pause" => Control::Pause,
        "resume" => Control::Resume,
        "abort" => Control::Abort,
        "rollback" => Control::Rollback,
        _ => return Err(Error::NotFound(format!("no rollout action {action}")).into()),
    };
    let actor = who.actor(&req);
    let result = rollouts::control(&state.store, &id, control, &actor.name).await;
    match audit::record_result(
        &state.store,
        &actor,
        &format!("rollout.{action}"),
        Some(&id),
        result,
    )
    .await
    {
        Ok(_) => {
            state.rollouts.notify_one();
            Ok(see_other(&format!("/rollouts/{id}")))
        }
        Err(e @ Error::Conflict(_)) => {
            render_rollout(&state, &who, &id, StatusCode::CONFLICT, Some(e.to_string())).await
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_typed_as_percent_and_soak() {
        let p = parse_phases("10:600, 50%:60 ,100").unwrap();
        assert_eq!(
            p.iter()
                .map(|p| (p.percent, p.soak_seconds))
                .collect::<Vec<_>>(),
            vec![(10.0, 600), (50.0, 60), (100.0, 0)]
        );
        assert!(
            parse_phases("ten")
                .unwrap_err()
                .to_string()
                .contains("`ten`")
        );
    }

    #[test]
    fn the_form_makes_a_target_and_a_window() {
        let form = Form {
            name: "r".into(),
            bundle_id: "b".into(),
            device_type: " rpi4 ".into(),
            tags: "site=berlin, line = 2".into(),
            device_ids: "a, b\nc".into(),
            phases: "100".into(),
            window_start: "02:00".into(),
            window_end: "04:00".into(),
            window_days: "mon, tue".into(),
            ..Form::default()
        };
        let new = form.rollout().unwrap();
        assert_eq!(new.target.device_type.as_deref(), Some("rpi4"));
        assert_eq!(new.target.tags.get("line").map(String::as_str), Some("2"));
        assert_eq!(new.target.device_ids, vec!["a", "b", "c"]);
        let w = new.maintenance_window.unwrap();
        assert_eq!((w.days.len(), w.tz.as_str()), (2, "UTC"));
        let bad = Form {
            tags: "site".into(),
            ..form
        };
        assert!(bad.rollout().unwrap_err().to_string().contains("tags"));
    }
}
