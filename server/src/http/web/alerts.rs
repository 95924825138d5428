//! Alerts in the dashboard: what is firing now (live), what resolved
//! lately, the rules with a create form and delete buttons for operators.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use askama::Template;
use serde::Deserialize;

use super::account::NoFields;
use super::{Nav, WebError, html_status, see_other};
use crate::alerts::{self, Alert, AlertFilter, Rule, RuleInput, Scope};
use crate::audit;
use crate::error::Error;
use crate::http::AppState;
use crate::http::auth::{Mutation, WebUser};
use crate::paging::Page;
use crate::users::Role;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(alerts_page)
        .service(create_rule)
        .service(delete_rule);
}

#[derive(Template)]
#[template(path = "alerts.html")]
struct AlertsPage {
    nav: Nav,
    firing: Vec<Alert>,
    firing_total: i64,
    resolved: Vec<Alert>,
    rules: Vec<Rule>,
    error: Option<String>,
    notice: Option<String>,
    form: RuleForm,
    figures: &'static [&'static str],
}

impl AlertsPage {
    fn scope_text(&self, s: &Scope) -> String {
        let mut parts = Vec::new();
        if let Some(t) = &s.device_type {
            parts.push(format!("type {t}"));
        }
        parts.extend(s.tags.iter().map(|(k, v)| format!("{k}={v}")));
        if parts.is_empty() {
            "every device".into()
        } else {
            parts.join(", ")
        }
    }
}

/// The create form as typed (kept when it comes back with an error).
#[derive(Debug, Clone, Deserialize)]
struct RuleForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    metric: String,
    #[serde(default)]
    device_type: String,
    #[serde(default)]
    tags: String,
    #[serde(default)]
    op: String,
    #[serde(default)]
    value: String,
    #[serde(default)]
    for_seconds: String,
    #[serde(default)]
    severity: String,
}

impl Default for RuleForm {
    fn default() -> Self {
        RuleForm {
            name: String::new(),
            metric: String::new(),
            device_type: String::new(),
            tags: String::new(),
            op: ">".into(),
            value: String::new(),
            for_seconds: "60".into(),
            severity: "warning".into(),
        }
    }
}

impl RuleForm {
    fn input(&self) -> Result<RuleInput, Error> {
        let mut tags = std::collections::BTreeMap::new();
        for pair in self
            .tags
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                Error::invalid("scope.tags", format!("`{pair}` is not KEY=VALUE"))
            })?;
            tags.insert(k.trim().to_string(), v.trim().to_string());
        }
        let value: f64 = self.value.trim().parse().map_err(|_| {
            Error::invalid(
                "condition.value",
                format!("`{}` is not a number", self.value),
            )
        })?;
        let for_seconds: i64 = self.for_seconds.trim().parse().map_err(|_| {
            Error::invalid(
                "for_seconds",
                format!("`{}` is not whole seconds", self.for_seconds),
            )
        })?;
        let device_type = Some(self.device_type.trim().to_string()).filter(|t| !t.is_empty());
        Ok(RuleInput {
            name: Some(self.name.clone()),
            metric: Some(self.metric.clone()),
            scope: Some(Scope { device_type, tags }),
            condition: Some(serde_json::json!({"op": self.op, "value": value})),
            for_seconds: Some(serde_json::json!(for_seconds)),
            severity: Some(self.severity.clone()),
        })
    }
}

async fn render(
    state: &AppState,
    who: &WebUser,
    status: StatusCode,
    error: Option<String>,
    notice: Option<String>,
    form: RuleForm,
) -> Result<HttpResponse, WebError> {
    let firing_filter = AlertFilter {
        state: Some("firing".into()),
        device_id: None,
    };
    let (firing, firing_total) = alerts::alerts(
        &state.store,
        &firing_filter,
        Page {
            page: 1,
            per_page: 100,
        },
    )
    .await?;
    let resolved_filter = AlertFilter {
        state: Some("resolved".into()),
        device_id: None,
    };
    let (resolved, _) = alerts::alerts(
        &state.store,
        &resolved_filter,
        Page {
            page: 1,
            per_page: 20,
        },
    )
    .await?;
    html_status(
        status,
        &AlertsPage {
            nav: Nav::new(who, "alerts"),
            firing,
            firing_total,
            resolved,
            rules: alerts::rules(&state.store).await?,
            error,
            notice,
            form,
            figures: &alerts::HEALTH_FIGURES,
        },
    )
}

#[derive(Debug, Deserialize)]
struct DoneQuery {
    done: Option<String>,
}

#[get("/alerts")]
async fn alerts_page(
    state: web::Data<AppState>,
    who: WebUser,
    query: web::Query<DoneQuery>,
) -> Result<HttpResponse, WebError> {
    let notice = match query.done.as_deref() {
        Some("created") => Some("Rule created: it judges readings from now on.".to_string()),
        Some("deleted") => Some("Rule deleted; its firing alerts resolved.".to_string()),
        _ => None,
    };
    render(
        &state,
        &who,
        StatusCode::OK,
        None,
        notice,
        RuleForm::default(),
    )
    .await
}

#[post("/alerts/rules")]
async fn create_rule(
    state: web::Data<AppState>,
    req: HttpRequest,
    m: Mutation<RuleForm>,
) -> Result<HttpResponse, WebError> {
    let Mutation { who, form } = m;
    who.require(Role::Operator)?;
    let actor = who.actor(&req);
    let result = match form.input() {
        Ok(input) => alerts::create(&state.store, &input, &actor.name).await,
        Err(e) => Err(e),
    };
    let target = result.as_ref().ok().map(|r| r.id.clone());
    match audit::record_result(
        &state.store,
        &actor,
        "alert_rule.create",
        target.as_deref(),
        result,
    )
    .await
    {
        Ok(_) => {
            state.alerts.rules_changed();
            Ok(see_other("/alerts?done=created"))
        }
        Err(e @ Error::Invalid { .. }) => {
            render(
                &state,
                &who,
                StatusCode::BAD_REQUEST,
                Some(e.to_string()),
                None,
                form,
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}

#[post("/alerts/rules/{id}/delete")]
async fn delete_rule(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    m: Mutation<NoFields>,
) -> Result<HttpResponse, WebError> {
    m.who.require(Role::Operator)?;
    let result = alerts::delete(&state.store, &id).await;
    audit::record_result(
        &state.store,
        &m.who.actor(&req),
        "alert_rule.delete",
        Some(&id),
        result,
    )
    .await?;
    state.alerts.rules_changed();
    Ok(see_other("/alerts?done=deleted"))
}
