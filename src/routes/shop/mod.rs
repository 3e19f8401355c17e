//! The shop's pages.

use actix_web::HttpResponse;
use serde::Serialize;

use crate::error::Result;
use crate::session::TypedSession;
use crate::startup::State;
use crate::templates::{Layout, render};

/// The number of items in the session's cart, for the header.
pub fn cart_count(session: &TypedSession) -> u32 {
    session
        .get::<Vec<(i64, u32)>>("cart")
        .ok()
        .flatten()
        .map(|items| items.iter().map(|(_, q)| *q).sum())
        .unwrap_or(0)
}

#[derive(Serialize)]
struct HomePage {}

#[tracing::instrument(name = "Home page", skip_all)]
pub async fn home(state: State, session: TypedSession) -> Result<HttpResponse> {
    let layout = page_layout(&state, &session);
    Ok(render(&state.tera, "shop/home.html", &layout, HomePage {})?)
}

pub fn page_layout(state: &State, session: &TypedSession) -> Layout {
    Layout::for_session(session, &state.settings.admin)
}
