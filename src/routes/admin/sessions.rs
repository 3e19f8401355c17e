//! `GET /admin/sessions` and its JSON twin `GET /admin/api/sessions`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::{PAGE_SIZE, api_error, relative, timestamp};
use crate::admin::{self, Cursor, SessionQuery, SessionRow, SortOrder, user_agent};
use crate::auth::tokens::RefreshStatus;
use crate::error::{AppError, Result};
use crate::routes::identity::Admin;
use crate::routes::page::{page_layout, render};
use crate::routes::respond::NoStore;
use crate::session::TypedSession;
use crate::state::State;

/// The session table's query string, shared by the page and the JSON API. Kept as the
/// strings that came in, so page links repeat them; [`Self::parse`] gives the typed query.
#[derive(Debug, Default, Deserialize)]
pub struct SessionParams {
    #[serde(default)]
    q: String,
    /// One user's sessions (a user id).
    #[serde(default)]
    user: String,
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
            s => Some(s.parse::<RefreshStatus>().map_err(|e| {
                format!(
                    "Unknown status filter `{}`: use ok, retrying or needs_login.",
                    e.0
                )
            })?),
        };
        let sort = match self.sort.as_str() {
            "" => SortOrder::default(),
            s => s.parse::<SortOrder>().map_err(|e| {
                format!("Unknown sort `{}`: use last_seen, created or expires.", e.0)
            })?,
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
        let user = match self.user.as_str() {
            "" => None,
            s => Some(
                Uuid::parse_str(s).map_err(|_| format!("`user` must be a user id, not `{s}`."))?,
            ),
        };
        Ok(SessionQuery {
            search: (!search.is_empty()).then(|| search.to_owned()),
            user,
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
            ("user", &self.user),
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

/// A session as the table shows it.
#[derive(Serialize)]
pub(super) struct SessionView {
    session_id: Uuid,
    user_id: Uuid,
    user: String,
    subject: String,
    email: Option<String>,
    /// The provider's display name (its issuer when it is no longer configured).
    provider: String,
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
    refresh_status: RefreshStatus,
    failure_count: i32,
    last_refreshed: Option<String>,
    needs_login: bool,
}

impl SessionView {
    /// The few fields the one-user heading needs, and a session of theirs to revoke from.
    fn clone_for_heading(&self) -> SessionView {
        SessionView {
            session_id: self.session_id,
            user_id: self.user_id,
            user: self.user.clone(),
            subject: self.subject.clone(),
            email: self.email.clone(),
            provider: self.provider.clone(),
            provider_sid: None,
            created: String::new(),
            created_at: String::new(),
            last_seen: String::new(),
            last_seen_at: String::new(),
            ip: None,
            browser: String::new(),
            access_expires: String::new(),
            access_expires_at: String::new(),
            access_expired: false,
            refresh_status: self.refresh_status,
            failure_count: 0,
            last_refreshed: None,
            needs_login: false,
        }
    }
}

impl From<SessionRow> for SessionView {
    fn from(r: SessionRow) -> Self {
        Self {
            session_id: r.session_id,
            user_id: r.user_id,
            user: r.name.clone().unwrap_or_else(|| r.subject.clone()),
            subject: r.subject,
            email: r.email,
            provider: r.issuer,
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
            needs_login: r.refresh_status == RefreshStatus::NeedsLogin,
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
    /// When the table shows one user's sessions: that user, for the heading and "end all".
    user: Option<SessionView>,
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
    _admin: Admin,
    params: web::Query<SessionParams>,
    notice: web::Query<Notice>,
) -> Result<HttpResponse> {
    let query = params.parse().map_err(AppError::BadRequest)?;
    let page = admin::sessions(&state.pool, &query).await?;
    session.csrf_token();
    let layout = page_layout(&state, &session);
    let sessions: Vec<SessionView> = page
        .rows
        .into_iter()
        .map(SessionView::from)
        .map(|mut view| {
            view.provider = state.providers.display_name(&view.provider);
            view
        })
        .collect();
    let user = query
        .user
        .and_then(|id| sessions.iter().find(|s| s.user_id == id))
        .map(SessionView::clone_for_heading);
    let view = SessionsPage {
        next_page: page.next.as_ref().map(|c| params.page_link(Some(c))),
        first_page: query.after.map(|_| params.page_link(None)),
        user,
        sessions,
        q: params.q.clone(),
        status: params.status.clone(),
        sort: params.sort.clone(),
        notice: notice
            .revoked
            .map(|n| format!("Revoked: {n} session(s) ended, tokens revoked at the provider.")),
    };
    Ok(render(&state.tera, "admin/sessions.html", &layout, view)?.with_no_store())
}

/// `GET /admin/api/sessions`: the session table for automation, same filters and rules.
#[tracing::instrument(name = "Admin sessions API", skip_all)]
pub async fn sessions_api(
    state: State,
    _admin: Admin,
    params: web::Query<SessionParams>,
) -> Result<HttpResponse> {
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
            "needs_login": r.refresh_status == RefreshStatus::NeedsLogin,
        })).collect::<Vec<_>>(),
        "next_cursor": page.next.map(|c| c.encode()),
    });
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(body))
}
