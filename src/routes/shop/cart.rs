use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{AppError, Result};
use crate::routes::identity::CurrentUser;
use crate::routes::page::page_layout;
use crate::routes::page::render_with_status;
use crate::routes::require_csrf;
use crate::routes::respond::NoStore;
use crate::routes::respond::see_other;
use crate::session::TypedSession;
use crate::shop::cart::{self, CartChange, MAX_QUANTITY, PricedCart};
use crate::shop::orders::{self, CheckoutError};
use crate::state::State;

#[derive(Serialize)]
struct CartPage {
    cart: PricedCart,
    /// A fresh key per rendering: submitting this form twice places one order.
    idempotency_key: Uuid,
    logged_in: bool,
    max_quantity: u32,
    /// Something the shopper must know (stock ran out, a product left the catalogue).
    notice: Option<String>,
}

/// Renders the cart with the catalogue's current prices; products no longer on sale drop out.
async fn cart_page(
    state: &State,
    session: &TypedSession,
    status: StatusCode,
    mut notice: Option<String>,
) -> Result<HttpResponse> {
    let mut cart = session.cart();
    let ids: Vec<i64> = cart.lines().iter().map(|l| l.product_id).collect();
    let products = if ids.is_empty() {
        Vec::new()
    } else {
        state.catalogue.by_ids(&state.pool, &ids).await?
    };
    let dropped = cart.retain_available(&products);
    if !dropped.is_empty() {
        session
            .change_cart(&cart, dropped)
            .map_err(|e| AppError::Unexpected(e.into()))?;
        notice.get_or_insert_with(|| {
            "A product in your cart is no longer available and was removed.".to_owned()
        });
    }
    session.csrf_token();
    let layout = page_layout(state, session);
    let page = CartPage {
        cart: cart::price(&cart, &products),
        idempotency_key: Uuid::new_v4(),
        logged_in: session.auth().is_some(),
        max_quantity: MAX_QUANTITY,
        notice,
    };
    Ok(render_with_status(&state.tera, status, "shop/cart.html", &layout, page)?.with_no_store())
}

#[tracing::instrument(name = "Cart page", skip_all)]
pub async fn show_cart(state: State, session: TypedSession) -> Result<HttpResponse> {
    cart_page(&state, &session, StatusCode::OK, None).await
}

#[derive(Deserialize)]
pub struct CartItemForm {
    csrf_token: String,
    product_id: i64,
    quantity: u32,
    /// `add` (the default) adds to what is in the cart; `set` replaces it (0 removes).
    #[serde(default)]
    action: CartAction,
}

#[derive(Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum CartAction {
    #[default]
    Add,
    Set,
}

/// Adds a product, or changes its quantity. Bounds and stock are checked against the
/// catalogue; a refused change leaves the cart as it was.
#[tracing::instrument(name = "Change cart", skip_all, fields(product_id = form.product_id))]
pub async fn change_item(
    state: State,
    session: TypedSession,
    form: web::Form<CartItemForm>,
) -> Result<HttpResponse> {
    require_csrf(&session, &form.csrf_token)?;
    let product = state
        .catalogue
        .by_id(&state.pool, form.product_id)
        .await?
        .ok_or_else(|| AppError::BadRequest("That product is not available.".into()))?;
    let mut cart = session.cart();
    let (product_id, quantity) = (product.product_id, form.quantity);
    let change = match form.action {
        CartAction::Add => cart.add(&product, quantity).map(|()| CartChange::Add {
            product_id,
            quantity,
        }),
        CartAction::Set => cart.set(&product, quantity).map(|()| CartChange::Set {
            product_id,
            quantity,
        }),
    };
    let change = change.map_err(|e| AppError::BadRequest(e.to_string()))?;
    session
        .change_cart(&cart, [change])
        .map_err(|e| AppError::Unexpected(e.into()))?;
    Ok(see_other("/cart"))
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf_token: String,
}

#[tracing::instrument(name = "Remove from cart", skip_all)]
pub async fn remove_item(
    session: TypedSession,
    product_id: web::Path<i64>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse> {
    require_csrf(&session, &form.csrf_token)?;
    let mut cart = session.cart();
    let change = CartChange::Remove {
        product_id: *product_id,
    };
    cart.replay(&change);
    session
        .change_cart(&cart, [change])
        .map_err(|e| AppError::Unexpected(e.into()))?;
    Ok(see_other("/cart"))
}

#[derive(Deserialize)]
pub struct CheckoutForm {
    csrf_token: String,
    idempotency_key: String,
}

/// Places the order: login required (anonymous shoppers go through `/login` and come back
/// to their cart), one transaction with a stock check, idempotent per checkout form.
#[tracing::instrument(name = "Checkout", skip_all)]
pub async fn checkout(
    state: State,
    session: TypedSession,
    user: Option<CurrentUser>,
    form: web::Form<CheckoutForm>,
) -> Result<HttpResponse> {
    require_csrf(&session, &form.csrf_token)?;
    // Back to the cart after logging in, whatever page the form was on.
    let user = user.ok_or(AppError::LoginRequired {
        return_to: "/cart".into(),
    })?;
    let key = Uuid::parse_str(&form.idempotency_key).map_err(|_| {
        AppError::BadRequest("The checkout form is damaged. Please reload your cart.".into())
    })?;
    let cart = session.cart();
    if let Some(step_up) = step_up_needed(&state, &user, &cart).await? {
        return Ok(step_up);
    }
    match orders::place_order(&state.pool, user.user_id, key, &cart).await {
        Ok(placed) => {
            if placed.created {
                // The ordered lines leave the cart; a line another tab added meanwhile stays.
                let ordered = CartChange::Ordered {
                    lines: cart.lines().to_vec(),
                };
                let mut left = cart.clone();
                left.replay(&ordered);
                session
                    .change_cart(&left, [ordered])
                    .map_err(|e| AppError::Unexpected(e.into()))?;
            }
            Ok(see_other(&format!("/orders/{}", placed.order_id)))
        }
        Err(e @ CheckoutError::EmptyCart) => Err(AppError::BadRequest(e.to_string())),
        Err(e @ CheckoutError::OutOfStock(_)) => {
            cart_page(&state, &session, StatusCode::CONFLICT, Some(e.to_string())).await
        }
        Err(CheckoutError::Database(e)) => Err(e.into()),
    }
}

/// An order over `checkout.step_up_above_cents` from a login whose authentication is older
/// than `checkout.step_up_max_age_secs` (or not at one of `step_up_acr_values`) goes through
/// the provider again first: a 303 to `/login?step_up=1`, back to this cart, with a sentence.
async fn step_up_needed(
    state: &State,
    user: &CurrentUser,
    cart: &crate::shop::cart::Cart,
) -> Result<Option<HttpResponse>> {
    let c = &state.settings.checkout;
    if c.step_up_above_cents <= 0
        || user.authenticated_recently(c.step_up_max_age_secs, &c.step_up_acr_values)
    {
        return Ok(None);
    }
    let ids: Vec<i64> = cart.lines().iter().map(|l| l.product_id).collect();
    if ids.is_empty() {
        return Ok(None);
    }
    let products = state.catalogue.by_ids(&state.pool, &ids).await?;
    let total = cart::price(cart, &products).total;
    if total.cents <= c.step_up_above_cents {
        return Ok(None);
    }
    tracing::info!(user_id = %user.user_id, "Large order: re-authentication first");
    Ok(Some(see_other("/login?return_to=%2Fcart&step_up=1")))
}
