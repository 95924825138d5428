//! Webhooks in the dashboard: the targets with their delivery counts and the create form (the
//! new secret shown once), deletion, and a target's delivery log. Viewers see the pages
//! without the forms; the create form comes back with the server's message when it fails.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use askama::Template;
use serde::Deserialize;

use super::account::NoFields;
use super::{Nav, WebError, html_status, see_other};
use crate::audit;
use crate::error::Error;
use crate::http::AppState;
use crate::http::auth::{Mutation, WebUser};
use crate::paging::{Page, PageQuery};
use crate::users::Role;
use crate::webhooks::{self, DeliveryView, Event, NewWebhook, WebhookView};

/// Registers the webhook pages.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(list_page)
        .service(create)
        .service(remove)
        .service(webhook_page);
}

/// The create form's fields as typed (the secret is never shown back).
#[derive(Debug, Clone, Default)]
struct Form {
    url: String,
    events: Vec<String>,
}

impl Form {
    fn has(&self, event: &str) -> bool {
        self.events.iter().any(|e| e == event)
    }
}

#[derive(Template)]
#[template(path = "webhooks.html")]
struct WebhooksPage {
    nav: Nav,
    webhooks: Vec<WebhookView>,
    events: Vec<&'static str>,
    form: Form,
    new_secret: Option<String>,
    error: Option<String>,
    notice: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DoneQuery {
    done: Option<String>,
}

/// Everything a page of the list needs besides the user.
struct Shown {
    form: Form,
    new_secret: Option<String>,
    error: Option<String>,
    notice: Option<String>,
}

async fn render_list(
    state: &AppState,
    who: &WebUser,
    status: StatusCode,
    shown: Shown,
) -> Result<HttpResponse, WebError> {
    // At most MAX_WEBHOOKS targets exist, so one page holds them all.
    let page = Page {
        page: 1,
        per_page: u32::try_from(webhooks::MAX_WEBHOOKS).unwrap_or(100),
    };
    let (rows, _) = webhooks::list(&state.store, page).await?;
    html_status(
        status,
        &WebhooksPage {
            nav: Nav::new(who, "webhooks"),
            webhooks: webhooks::views(&state.store, &rows).await?,
            events: Event::ALL.iter().map(|e| e.as_str()).collect(),
            form: shown.form,
            new_secret: shown.new_secret,
            error: shown.error,
            notice: shown.notice,
        },
    )
}

#[get("/webhooks")]
async fn list_page(
    state: web::Data<AppState>,
    who: WebUser,
    query: web::Query<DoneQuery>,
) -> Result<HttpResponse, WebError> {
    let notice = (query.done.as_deref() == Some("deleted"))
        .then(|| "Webhook deleted; its pending deliveries were cancelled.".to_string());
    let form = Form {
        url: String::new(),
        events: Event::ALL.iter().map(|e| e.as_str().to_string()).collect(),
    };
    render_list(
        &state,
        &who,
        StatusCode::OK,
        Shown {
            form,
            new_secret: None,
            error: None,
            notice,
        },
    )
    .await
}

/// The create form: repeated `events` check boxes, so it arrives as pairs.
#[post("/webhooks")]
async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    m: Mutation<Vec<(String, String)>>,
) -> Result<HttpResponse, WebError> {
    let Mutation { who, form: fields } = m;
    who.require(Role::Operator)?;
    let one = |key: &str| {
        fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let form = Form {
        url: one("url"),
        events: fields
            .iter()
            .filter(|(k, _)| k == "events")
            .map(|(_, v)| v.clone())
            .collect(),
    };
    let secret = one("secret");
    let actor = who.actor(&req);
    let result = async {
        // An empty secret field means "generate one".
        let secret = (!secret.trim().is_empty()).then_some(secret.as_str());
        let new = NewWebhook::parse(&form.url, &form.events, secret)?;
        webhooks::create(&state.store, &new, &actor.name).await
    }
    .await;
    let target = match &result {
        Ok(c) => c.webhook.id.clone(),
        Err(_) => form.url.chars().take(200).collect(),
    };
    match audit::record_result(
        &state.store,
        &actor,
        "webhook.create",
        Some(&target),
        result,
    )
    .await
    {
        Ok(created) => {
            let notice = format!("Webhook for {} created.", created.webhook.url);
            render_list(
                &state,
                &who,
                StatusCode::OK,
                Shown {
                    form: Form::default(),
                    new_secret: Some(created.secret.expose().to_string()),
                    error: None,
                    notice: Some(notice),
                },
            )
            .await
        }
        Err(e @ (Error::Invalid { .. } | Error::Conflict(_))) => {
            let status = if matches!(e, Error::Conflict(_)) {
                StatusCode::CONFLICT
            } else {
                StatusCode::BAD_REQUEST
            };
            render_list(
                &state,
                &who,
                status,
                Shown {
                    form,
                    new_secret: None,
                    error: Some(e.to_string()),
                    notice: None,
                },
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}

#[post("/webhooks/{id}/delete")]
async fn remove(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    m: Mutation<NoFields>,
) -> Result<HttpResponse, WebError> {
    let who = m.who;
    who.require(Role::Operator)?;
    let result = webhooks::delete(&state.store, &id).await;
    audit::record_result(
        &state.store,
        &who.actor(&req),
        "webhook.delete",
        Some(&id),
        result,
    )
    .await?;
    Ok(see_other("/webhooks?done=deleted"))
}

#[derive(Template)]
#[template(path = "webhook.html")]
struct WebhookPage {
    nav: Nav,
    w: WebhookView,
    deliveries: Vec<DeliveryView>,
    page: u32,
    pages: i64,
    total: i64,
}

impl WebhookPage {
    fn page_link(&self, page: i64) -> String {
        super::page_link(&format!("/webhooks/{}", self.w.id), &[], page)
    }
}

#[get("/webhooks/{id}")]
async fn webhook_page(
    state: web::Data<AppState>,
    who: WebUser,
    id: web::Path<String>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, WebError> {
    let page = query.page().map_err(WebError::from)?;
    let w = webhooks::get(&state.store, &id).await?;
    let (rows, total) = webhooks::deliveries(&state.store, &id, page).await?;
    html_status(
        StatusCode::OK,
        &WebhookPage {
            nav: Nav::new(&who, "webhooks"),
            w: webhooks::view(&state.store, &w).await?,
            deliveries: rows.into_iter().map(DeliveryView::from).collect(),
            page: page.page,
            pages: page.pages(total),
            total,
        },
    )
}
