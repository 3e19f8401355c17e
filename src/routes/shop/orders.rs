use actix_web::{HttpResponse, web};
use serde::Serialize;
use uuid::Uuid;

use crate::error::{AppError, Result};
use crate::routes::identity::CurrentUser;
use crate::routes::page::page_layout;
use crate::routes::page::render;
use crate::routes::respond::NoStore;
use crate::session::TypedSession;
use crate::shop::orders::{self, Order};
use crate::state::State;

#[derive(Serialize)]
struct OrdersPage<'a> {
    orders: &'a [Order],
}

/// The shopper's own orders, newest first.
#[tracing::instrument(name = "Orders page", skip_all)]
pub async fn list_orders(
    state: State,
    session: TypedSession,
    user: CurrentUser,
) -> Result<HttpResponse> {
    let orders = state.orders.for_user(&state.pool, user.user_id).await?;
    let layout = page_layout(&state, &session);
    Ok(render(
        &state.tera,
        "shop/orders.html",
        &layout,
        OrdersPage { orders: &orders },
    )?
    .with_no_store())
}

#[derive(Serialize)]
struct OrderPage {
    order: Order,
}

/// One of the shopper's orders: the confirmation after checkout. Other people's orders do
/// not exist as far as this page is concerned (404, not 403: no probing for order ids).
#[tracing::instrument(name = "Order page", skip_all)]
pub async fn show_order(
    state: State,
    session: TypedSession,
    user: CurrentUser,
    order_id: web::Path<String>,
) -> Result<HttpResponse> {
    let not_found = || AppError::NotFound("We could not find that order among yours.".into());
    let order_id = Uuid::parse_str(&order_id).map_err(|_| not_found())?;
    let order = orders::for_user(&state.pool, user.user_id, Some(order_id))
        .await?
        .pop()
        .ok_or_else(not_found)?;
    let layout = page_layout(&state, &session);
    Ok(render(&state.tera, "shop/order.html", &layout, OrderPage { order })?.with_no_store())
}
