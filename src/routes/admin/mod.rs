//! The admin dashboard. Every handler checks the admin rule on every request, from the
//! session's freshly loaded user (no cached verdict), and every answer is `no-store`.

mod chart;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::admin::{
    self, Actor, AuditEntry, Cursor, Overview, RevokeScope, SessionQuery, SessionRow, SortOrder,
    StatusFilter, user_agent,
};
use crate::auth::{is_admin, tokens};
use crate::error::{AppError, Result};
use crate::routes::client_ip;
use crate::routes::respond::{NoStore, see_other};
use crate::routes::page::page_layout;
use crate::routes::require_csrf;
use crate::session::{AuthState, TypedSession};
use crate::state::State;
use crate::routes::page::render;

const PAGE_SIZE: i64 = 50;

/// The logged-in admin, or the reason this request may not see admin pages: anonymous
/// visitors log in first (and come back), everyone else gets a 403 page.
fn require_admin(state: &State, session: &TypedSession, here: &str) -> Result<AuthState> {
    let auth = session.auth().ok_or_else(|| AppError::LoginRequired {
        return_to: here.to_owned(),
    })?;
    if is_admin(&state.settings.admin, &auth) {
        Ok(auth)
    } else {
        tracing::warn!(user_id = %auth.user_id, path = here, "Admin page refused to a non-admin");
        Err(AppError::Forbidden(
            "This page is for the shop's administrators only.".into(),
        ))
    }
}

/// "5 min ago", "in 3 h": how long from now, for people.
fn relative(at: DateTime<Utc>) -> String {
    let secs = (at - Utc::now()).num_seconds();
    let span = secs.unsigned_abs();
    let amount = match span {
        0..60 => format!("{span} s"),
        60..3600 => format!("{} min", span / 60),
        3600..86400 => format!("{} h", span / 3600),
        _ => format!("{} d", span / 86400),
    };
    if secs >= 0 {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

#[derive(Serialize)]
struct DashboardPage {
    overview: Overview,
    chart: chart::Chart,
}

#[tracing::instrument(name = "Admin dashboard", skip_all)]
pub async fn dashboard(state: State, session: TypedSession) -> Result<HttpResponse> {
    require_admin(&state, &session, "/admin")?;
    let (overview, hours) = tokio::try_join!(
        admin::overview(&state.pool, state.settings.refresh.lead_secs),
        admin::hourly_activity(&state.pool)
    )?;
    let layout = page_layout(&state, &session);
    let page = DashboardPage {
        overview,
        chart: chart::chart(&hours),
    };
    Ok(render(&state.tera, "admin/dashboard.html", &layout, page)?.with_no_store())
}

/// The session table's query string, shared by the page and the JSON API.
#[derive(Debug, Default, Deserialize)]
pub struct SessionParams {
    #[serde(default)]
    q: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    sort: String,
    /// The page link's cursor (`cursor` is accepted too, for API clients).
    #[serde(default, alias = "cursor")]
    after: String,
    limit: Option<i64>,
}

impl SessionParams {
    /// Checks every value; the message says which one is wrong.
    fn parse(&self) -> std::result::Result<SessionQuery, String> {
        let status = match self.status.as_str() {
            "" | "any" => None,
            "ok" => Some(StatusFilter::Ok),
            "retrying" => Some(StatusFilter::Retrying),
            "needs_login" => Some(StatusFilter::NeedsLogin),
            other => {
                return Err(format!(
                    "Unknown status filter `{other}`: use ok, retrying or needs_login."
                ));
            }
        };
        let sort = match self.sort.as_str() {
            "" | "last_seen" => SortOrder::LastSeen,
            "created" => SortOrder::Created,
            "expires" => SortOrder::Expires,
            other => {
                return Err(format!(
                    "Unknown sort `{other}`: use last_seen, created or expires."
                ));
            }
        };
        let after = match self.after.as_str() {
            "" => None,
            s => Some(
                Cursor::decode(s)
                    .ok_or("The page cursor is invalid; start from the first page.")?,
            ),
        };
        let search = self.q.trim();
        if search.chars().count() > 200 {
            return Err("The search is too long (200 characters at most).".into());
        }
        let limit = self.limit.unwrap_or(PAGE_SIZE);
        if !(1..=500).contains(&limit) {
            return Err("`limit` must be between 1 and 500.".into());
        }
        Ok(SessionQuery {
            search: (!search.is_empty()).then(|| search.to_owned()),
            status,
            sort,
            after,
            limit,
        })
    }

    /// The query string of the page after `cursor` (the first page without one), keeping
    /// the filters.
    fn page_link(&self, cursor: Option<&Cursor>) -> String {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (key, value) in [
            ("q", &self.q),
            ("status", &self.status),
            ("sort", &self.sort),
        ] {
            if !value.is_empty() {
                query.append_pair(key, value);
            }
        }
        if let Some(cursor) = cursor {
            query.append_pair("after", &cursor.encode());
        }
        query.finish()
    }
}

#[derive(Serialize)]
struct SessionView {
    session_id: Uuid,
    user_id: Uuid,
    user: String,
    subject: String,
    email: Option<String>,
    provider_sid: Option<String>,
    created: String,
    created_at: String,
    last_seen: String,
    last_seen_at: String,
    ip: Option<String>,
    browser: String,
    access_expires: String,
    access_expires_at: String,
    access_expired: bool,
    refresh_status: String,
    failure_count: i32,
    last_refreshed: Option<String>,
    needs_login: bool,
}

impl From<SessionRow> for SessionView {
    fn from(r: SessionRow) -> Self {
        Self {
            session_id: r.session_id,
            user_id: r.user_id,
            user: r.name.clone().unwrap_or_else(|| r.subject.clone()),
            subject: r.subject,
            email: r.email,
            provider_sid: r.provider_sid,
            created: relative(r.created_at),
            created_at: timestamp(r.created_at),
            last_seen: relative(r.last_seen_at),
            last_seen_at: timestamp(r.last_seen_at),
            ip: r.ip,
            browser: user_agent::describe(r.user_agent.as_deref()),
            access_expires: relative(r.access_expires_at),
            access_expires_at: timestamp(r.access_expires_at),
            access_expired: r.access_expires_at <= Utc::now(),
            needs_login: r.refresh_status == "needs_login",
            refresh_status: r.refresh_status,
            failure_count: r.failure_count,
            last_refreshed: r.last_refreshed_at.map(relative),
        }
    }
}

#[derive(Serialize)]
struct SessionsPage {
    sessions: Vec<SessionView>,
    q: String,
    status: String,
    sort: String,
    next_page: Option<String>,
    /// Set when this is not the first page.
    first_page: Option<String>,
    notice: Option<String>,
}

#[derive(Deserialize)]
pub struct Notice {
    revoked: Option<u32>,
}

#[tracing::instrument(name = "Admin sessions", skip_all)]
pub async fn sessions_page(
    state: State,
    session: TypedSession,
    params: web::Query<SessionParams>,
    notice: web::Query<Notice>,
) -> Result<HttpResponse> {
    require_admin(&state, &session, "/admin/sessions")?;
    let query = params.parse().map_err(AppError::BadRequest)?;
    let page = admin::sessions(&state.pool, &query).await?;
    session.csrf_token();
    let layout = page_layout(&state, &session);
    let view = SessionsPage {
        next_page: page.next.as_ref().map(|c| params.page_link(Some(c))),
        first_page: query.after.map(|_| params.page_link(None)),
        sessions: page.rows.into_iter().map(SessionView::from).collect(),
        q: params.q.clone(),
        status: params.status.clone(),
        sort: params.sort.clone(),
        notice: notice
            .revoked
            .map(|n| format!("Revoked: {n} session(s) ended, tokens revoked at the provider.")),
    };
    Ok(render(&state.tera, "admin/sessions.html", &layout, view)?.with_no_store())
}

/// JSON errors for the API, with the same statuses the pages use.
fn api_error(status: StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({ "error": message }))
}

/// `GET /admin/api/sessions`: the session table for automation, same filters and rules.
#[tracing::instrument(name = "Admin sessions API", skip_all)]
pub async fn sessions_api(
    state: State,
    session: TypedSession,
    params: web::Query<SessionParams>,
) -> Result<HttpResponse> {
    match require_admin(&state, &session, "/admin/api/sessions") {
        Ok(_) => {}
        Err(AppError::LoginRequired { .. }) => {
            return Ok(api_error(StatusCode::UNAUTHORIZED, "login required"));
        }
        Err(_) => return Ok(api_error(StatusCode::FORBIDDEN, "admins only")),
    }
    let query = match params.parse() {
        Ok(q) => q,
        Err(message) => return Ok(api_error(StatusCode::BAD_REQUEST, &message)),
    };
    let page = admin::sessions(&state.pool, &query).await?;
    let body = json!({
        "sessions": page.rows.iter().map(|r| json!({
            "session_id": r.session_id,
            "user_id": r.user_id,
            "subject": r.subject,
            "email": r.email,
            "name": r.name,
            "provider_sid": r.provider_sid,
            "created_at": r.created_at,
            "last_seen_at": r.last_seen_at,
            "ip": r.ip,
            "user_agent": r.user_agent,
            "browser": user_agent::describe(r.user_agent.as_deref()),
            "access_expires_at": r.access_expires_at,
            "refresh_status": r.refresh_status,
            "failure_count": r.failure_count,
            "last_refreshed_at": r.last_refreshed_at,
            "needs_login": r.refresh_status == "needs_login",
        })).collect::<Vec<_>>(),
        "next_cursor": page.next.map(|c| c.encode()),
    });
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(body))
}

#[derive(Deserialize)]
pub struct RevokeForm {
    csrf_token: String,
    #[serde(default = "default_scope")]
    scope: RevokeScope,
    /// Absent: show the confirmation page. `yes`: revoke.
    #[serde(default)]
    confirm: String,
}

fn default_scope() -> RevokeScope {
    RevokeScope::Session
}

#[derive(Serialize)]
struct ConfirmPage {
    target: SessionView,
    all_of_user: bool,
}

/// `POST /admin/sessions/{id}/revoke`: first a confirmation page, then (with `confirm=yes`)
/// the revocation: rows deleted, audit written, tokens revoked at the provider.
#[tracing::instrument(name = "Admin revoke", skip_all, fields(session_id = %session_id))]
pub async fn revoke(
    state: State,
    session: TypedSession,
    req: HttpRequest,
    session_id: web::Path<Uuid>,
    form: web::Form<RevokeForm>,
) -> Result<HttpResponse> {
    let admin = require_admin(&state, &session, "/admin/sessions")?;
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
    tokens::revoke_at_provider(state.oidc.clone(), revoked.logins);
    Ok(see_other(&format!(
        "/admin/sessions?revoked={}",
        revoked.sessions_ended
    )))
}

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
    params: web::Query<AuditParams>,
) -> Result<HttpResponse> {
    require_admin(&state, &session, "/admin/audit")?;
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
