use actix_web::{HttpResponse, web};
use serde::Serialize;

use crate::error::{AppError, Result};
use crate::routes::page::page_layout;
use crate::routes::page::render;
use crate::session::TypedSession;
use crate::shop::cart::MAX_QUANTITY;
use crate::shop::catalogue::Product;
use crate::state::State;

#[derive(Serialize)]
struct HomePage {
    products: Vec<Product>,
    max_quantity: u32,
}

#[tracing::instrument(name = "Home page", skip_all)]
pub async fn home(state: State, session: TypedSession) -> Result<HttpResponse> {
    let products = state.catalogue.list(&state.pool).await?.to_vec();
    // The add-to-cart forms need the session's CSRF token.
    session.csrf_token();
    let layout = page_layout(&state, &session);
    let page = HomePage {
        products,
        max_quantity: MAX_QUANTITY,
    };
    Ok(render(&state.tera, "shop/home.html", &layout, page)?)
}

#[derive(Serialize)]
struct ProductPage {
    product: Product,
    max_quantity: u32,
}

#[tracing::instrument(name = "Product page", skip_all, fields(slug = %slug))]
pub async fn product_page(
    state: State,
    session: TypedSession,
    slug: web::Path<String>,
) -> Result<HttpResponse> {
    let product = state
        .catalogue
        .by_slug(&state.pool, &slug)
        .await?
        .ok_or(AppError::NotFound(
            "We could not find that product. It may have been removed from the catalogue.".into(),
        ))?;
    session.csrf_token();
    let layout = page_layout(&state, &session);
    let page = ProductPage {
        max_quantity: MAX_QUANTITY.min(product.stock.max(0) as u32).max(1),
        product,
    };
    Ok(render(&state.tera, "shop/product.html", &layout, page)?)
}
