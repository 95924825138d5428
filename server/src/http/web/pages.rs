//! The fleet overview: the first page after signing in (see `crate::fleet`).

use actix_web::{HttpResponse, get, web};
use askama::Template;

use super::{Nav, WebError, html};
use crate::fleet::Overview;
use crate::http::AppState;
use crate::http::auth::WebUser;
use crate::store::now_ms;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(overview);
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
