//! The fleet sections. Until a capability lands its page says what it will
//! hold and what to do first, rather than showing an empty table.

use actix_web::{HttpResponse, get, web};
use askama::Template;

use super::{Nav, WebError, html};
use crate::fleet::Overview;
use crate::http::AppState;
use crate::http::auth::WebUser;
use crate::store::now_ms;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(overview).service(alerts);
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    nav: Nav,
    o: Overview,
    backend: &'static str,
}

impl OverviewPage {
    fn status(&self, s: &str) -> i64 {
        self.o.by_status.get(s).copied().unwrap_or(0)
    }

    fn devices(&self) -> i64 {
        self.o.by_status.values().sum()
    }
}

#[get("/")]
async fn overview(state: web::Data<AppState>, who: WebUser) -> Result<HttpResponse, WebError> {
    html(&OverviewPage {
        nav: Nav::new(&who, "overview"),
        o: crate::fleet::overview(&state.store, now_ms()).await?,
        backend: state.store.backend(),
    })
}

#[derive(Template)]
#[template(path = "section.html")]
struct SectionPage {
    nav: Nav,
    title: &'static str,
    empty_title: &'static str,
    empty_text: &'static str,
}

fn section(
    who: &WebUser,
    key: &'static str,
    title: &'static str,
    empty_title: &'static str,
    empty_text: &'static str,
) -> Result<HttpResponse, WebError> {
    html(&SectionPage {
        nav: Nav::new(who, key),
        title,
        empty_title,
        empty_text,
    })
}

#[get("/alerts")]
async fn alerts(who: WebUser) -> Result<HttpResponse, WebError> {
    section(
        &who,
        "alerts",
        "Alerts",
        "Nothing is firing",
        "Alert rules watch device telemetry and health and fire when a condition holds for a while.",
    )
}
