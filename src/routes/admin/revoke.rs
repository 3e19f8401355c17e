//! `POST /admin/sessions/{id}/revoke`: first a confirmation page, then (with `confirm=yes`)
//! the revocation: rows deleted, audit written, tokens revoked at the provider.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::sessions::SessionView;
use crate::admin::{self, Actor, RevokeScope};
use crate::error::{AppError, Result};
use crate::routes::identity::Admin;
use crate::routes::page::{page_layout, render};
use crate::routes::respond::{NoStore, see_other};
use crate::routes::{client_ip, require_csrf};
use crate::session::TypedSession;
use crate::state::State;

#[derive(Deserialize)]
pub struct RevokeForm {
    csrf_token: String,
    #[serde(default)]
    scope: RevokeScope,
    /// Absent: show the confirmation page. `yes`: revoke.
    #[serde(default)]
    confirm: String,
}

#[derive(Serialize)]
struct ConfirmPage {
    target: SessionView,
    all_of_user: bool,
}

#[tracing::instrument(name = "Admin revoke", skip_all, fields(session_id = %session_id))]
pub async fn revoke(
    state: State,
    session: TypedSession,
    admin: Admin,
    req: HttpRequest,
    session_id: web::Path<Uuid>,
    form: web::Form<RevokeForm>,
) -> Result<HttpResponse> {
    require_csrf(&session, &form.csrf_token)?;
    let gone = || AppError::NotFound("That session has already ended.".into());
    if form.confirm != "yes" {
        let target = admin::session(&state.pool, *session_id)
            .await?
            .ok_or_else(gone)?;
        let layout = page_layout(&state, &session);
        let page = ConfirmPage {
            target: target.into(),
            all_of_user: form.scope == RevokeScope::User,
        };
        return Ok(
            render(&state.tera, "admin/confirm_revoke.html", &layout, page)?.with_no_store(),
        );
    }
    let actor = Actor {
        user_id: admin.user_id,
        subject: &admin.subject,
        email: admin.email.as_deref(),
        ip: client_ip(&req),
    };
    let revoked = admin::revoke(&state.pool, &state.cipher, &actor, *session_id, form.scope)
        .await?
        .ok_or_else(gone)?;
    state.revoker.nudge();
    Ok(see_other(&format!(
        "/admin/sessions?revoked={}",
        revoked.sessions_ended
    )))
}
