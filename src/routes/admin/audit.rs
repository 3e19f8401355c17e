//! `GET /admin/audit`: the audit log, newest first.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};

use super::{PAGE_SIZE, timestamp};
use crate::admin::{self, AuditEntry, Cursor};
use crate::error::{AppError, Result};
use crate::routes::identity::Admin;
use crate::routes::page::{page_layout, render};
use crate::routes::respond::NoStore;
use crate::session::TypedSession;
use crate::state::State;

#[derive(Serialize)]
struct AuditView {
    #[serde(flatten)]
    entry: AuditEntry,
    when: String,
}

#[derive(Serialize)]
struct AuditPage {
    entries: Vec<AuditView>,
    next_page: Option<String>,
}

#[derive(Deserialize)]
pub struct AuditParams {
    before: Option<String>,
}

#[tracing::instrument(name = "Admin audit", skip_all)]
pub async fn audit_page(
    state: State,
    session: TypedSession,
    _admin: Admin,
    params: web::Query<AuditParams>,
) -> Result<HttpResponse> {
    let before = match params.before.as_deref() {
        None | Some("") => None,
        Some(s) => Some(Cursor::decode(s).ok_or_else(|| {
            AppError::BadRequest("The page link is invalid; start from the first page.".into())
        })?),
    };
    let audit = admin::audit(&state.pool, before, PAGE_SIZE).await?;
    let layout = page_layout(&state, &session);
    let page = AuditPage {
        entries: audit
            .entries
            .into_iter()
            .map(|entry| AuditView {
                when: timestamp(entry.at),
                entry,
            })
            .collect(),
        next_page: audit.next.map(|c| format!("before={}", c.encode())),
    };
    Ok(render(&state.tera, "admin/audit.html", &layout, page)?.with_no_store())
}
