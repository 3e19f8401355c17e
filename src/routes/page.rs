//! The page every HTML route renders: the layout (who is logged in, the cart, the CSRF token)
//! around a template's own context.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tera::{Context, Tera};

use crate::auth::is_admin;
use crate::configuration::Settings;
use crate::session::TypedSession;
use crate::state::State;

/// The layout every page renders in, from the freshly loaded session.
pub fn page_layout(state: &State, session: &TypedSession) -> Layout {
    Layout::for_session(session, &state.settings)
}

/// What the layout shows on every page: who is logged in, the cart, the CSRF token for forms.
#[derive(Debug, Serialize)]
pub struct Layout {
    pub user_name: Option<String>,
    pub is_admin: bool,
    pub csrf_token: String,
    pub cart_count: u32,
    /// A sentence left by an earlier request (shown once).
    pub notice: Option<String>,
}

impl Layout {
    pub fn for_session(session: &TypedSession, settings: &Settings) -> Self {
        let auth = session.auth();
        Self {
            user_name: auth.as_ref().map(|a| a.display_name().to_owned()),
            is_admin: auth.as_ref().is_some_and(|a| is_admin(settings, a)),
            // Anonymous visitors get a CSRF token (and so a session row) only from pages
            // that have a form; the layout's logout form needs one only when logged in.
            csrf_token: if auth.is_some() {
                session.csrf_token()
            } else {
                session.existing_csrf_token().unwrap_or_default()
            },
            cart_count: session.cart().count(),
            notice: session.take_notice(),
        }
    }
}

impl Layout {
    /// For pages rendered without a session.
    pub fn anonymous() -> Self {
        Self {
            user_name: None,
            is_admin: false,
            csrf_token: String::new(),
            cart_count: 0,
            notice: None,
        }
    }

    /// For error pages: reads the session but never writes to it (the store may be down).
    pub fn for_error_page(session: &TypedSession) -> Self {
        Self {
            user_name: session.auth().map(|a| a.display_name().to_owned()),
            is_admin: false,
            csrf_token: session.existing_csrf_token().unwrap_or_default(),
            cart_count: session.cart().count(),
            notice: None,
        }
    }
}

/// Renders `template` inside the layout.
pub fn render(
    tera: &Tera,
    template: &str,
    layout: &Layout,
    page: impl Serialize,
) -> anyhow::Result<HttpResponse> {
    render_with_status(tera, StatusCode::OK, template, layout, page)
}

pub fn render_with_status(
    tera: &Tera,
    status: StatusCode,
    template: &str,
    layout: &Layout,
    page: impl Serialize,
) -> anyhow::Result<HttpResponse> {
    let mut ctx = Context::from_serialize(page).context("page context")?;
    ctx.insert("layout", layout);
    let html = tera
        .render(template, &ctx)
        .with_context(|| format!("rendering {template}"))?;
    Ok(HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .body(html))
}

/// "5 min ago", "in 3 h": how long from now, for people.
pub fn relative(at: DateTime<Utc>) -> String {
    let secs = (at - Utc::now()).num_seconds();
    let span = secs.unsigned_abs();
    // The database's clock and ours differ by a few milliseconds either way.
    if span < 5 {
        return "just now".to_owned();
    }
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
