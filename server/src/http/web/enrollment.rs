//! Enrollment tokens in the dashboard: create one and copy its join command.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, post, web};
use serde::Deserialize;

use super::account::NoFields;
use super::admin::render_tokens;
use super::{WebError, see_other};
use crate::audit;
use crate::error::Error;
use crate::http::AppState;
use crate::http::api::{CreateEnrollmentToken, DurationInput, new_token};
use crate::http::auth::Mutation;
use crate::identity::tokens;
use crate::identity::views::join_command;
use crate::users::Role;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(create).service(revoke);
}

#[derive(Debug, Deserialize)]
struct NewTokenForm {
    uses: String,
    expires_in: String,
    device_types: String,
    tags: String,
    approval: Option<String>,
}

#[post("/tokens/enrollment")]
async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    m: Mutation<NewTokenForm>,
) -> Result<HttpResponse, WebError> {
    let Mutation { who, form } = m;
    who.require(Role::Operator)?;
    let actor = who.actor(&req);
    let result = async {
        let uses = form
            .uses
            .trim()
            .parse::<u32>()
            .map_err(|_| Error::invalid("uses", "use a whole number from 1 to 100000"))?;
        let split = |s: &str| -> Vec<String> {
            s.split([',', '\n'])
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect()
        };
        let pairs = split(&form.tags);
        let tags = crate::identity::Tags::from_pairs("tags", &pairs, '=')?;
        let body = CreateEnrollmentToken::from_parts(
            uses,
            DurationInput::Text(form.expires_in.trim().to_string()),
            split(&form.device_types),
            tags.0,
            form.approval.is_some(),
        );
        let new = new_token(body)?;
        tokens::create(&state.store, &new, &actor.name).await
    }
    .await;
    let target = result.as_ref().ok().map(|c| c.token.id.clone());
    match audit::record_result(
        &state.store,
        &actor,
        "enrollment_token.create",
        target.as_deref(),
        result,
    )
    .await
    {
        Ok(created) => {
            let join = join_command(
                &state.device_url,
                &created.secret,
                &state.identity.ca.hash(),
            );
            render_tokens(&state, &who, StatusCode::OK, None, Some(join), None, None).await
        }
        Err(e @ Error::Invalid { .. }) => {
            render_tokens(
                &state,
                &who,
                StatusCode::BAD_REQUEST,
                None,
                None,
                Some(e.to_string()),
                None,
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}

#[post("/tokens/enrollment/{id}/revoke")]
async fn revoke(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
    m: Mutation<NoFields>,
) -> Result<HttpResponse, WebError> {
    m.who.require(Role::Operator)?;
    let result = tokens::revoke(&state.store, &id).await;
    audit::record_result(
        &state.store,
        &m.who.actor(&req),
        "enrollment_token.revoke",
        Some(&id),
        result,
    )
    .await?;
    Ok(see_other("/tokens?done=revoked"))
}
