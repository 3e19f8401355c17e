use actix_web::HttpResponse;
use serde::Serialize;

use super::chart;
use crate::admin::{self, Overview};
use crate::error::Result;
use crate::routes::identity::Admin;
use crate::routes::page::{page_layout, render};
use crate::routes::respond::NoStore;
use crate::session::TypedSession;
use crate::state::State;

#[derive(Serialize)]
struct DashboardPage {
    overview: Overview,
    chart: chart::Chart,
    /// The provider refused the shop's own credentials on a refresh (this instance).
    client_rejected: Option<String>,
}

#[tracing::instrument(name = "Admin dashboard", skip_all)]
pub async fn dashboard(state: State, session: TypedSession, _admin: Admin) -> Result<HttpResponse> {
    let (overview, hours) = tokio::try_join!(
        admin::overview(&state.pool),
        admin::hourly_activity(&state.pool)
    )?;
    let layout = page_layout(&state, &session);
    let page = DashboardPage {
        overview,
        chart: chart::chart(&hours),
        client_rejected: state.refresher.client_rejected().map(|(at, error)| {
            format!(
                "The identity provider refused the shop's client credentials ({error}) at {}: refreshes are retried, sessions are kept. Check oidc.client_id and oidc.client_secret.",
                at.format("%Y-%m-%d %H:%M:%S UTC")
            )
        }),
    };
    Ok(render(&state.tera, "admin/dashboard.html", &layout, page)?.with_no_store())
}
