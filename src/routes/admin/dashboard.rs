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
    };
    Ok(render(&state.tera, "admin/dashboard.html", &layout, page)?.with_no_store())
}
