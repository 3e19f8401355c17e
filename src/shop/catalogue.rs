//! Products and their stock, always read from Postgres: a price never comes from a form.

use serde::Serialize;
use sqlx::PgExecutor;

use super::format_price;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Product {
    pub product_id: i64,
    pub slug: String,
    pub name: String,
    pub description: String,
    pub price_cents: i32,
    pub currency: String,
    pub image_path: Option<String>,
    pub image_alt: String,
    pub stock: i32,
}

impl Product {
    pub fn price(&self) -> String {
        format_price(self.price_cents.into(), &self.currency)
    }
}

const COLUMNS: &str =
    "product_id, slug, name, description, price_cents, currency, image_path, image_alt, stock";

/// Every product on sale, in catalogue order.
pub async fn list(db: impl PgExecutor<'_>) -> Result<Vec<Product>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM products WHERE active ORDER BY name"
    ))
    .fetch_all(db)
    .await
}

pub async fn by_slug(db: impl PgExecutor<'_>, slug: &str) -> Result<Option<Product>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM products WHERE slug = $1 AND active"
    ))
    .bind(slug)
    .fetch_optional(db)
    .await
}

pub async fn by_id(
    db: impl PgExecutor<'_>,
    product_id: i64,
) -> Result<Option<Product>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM products WHERE product_id = $1 AND active"
    ))
    .bind(product_id)
    .fetch_optional(db)
    .await
}

/// The products on sale among `ids`, in no particular order.
pub async fn by_ids(db: impl PgExecutor<'_>, ids: &[i64]) -> Result<Vec<Product>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM products WHERE product_id = ANY($1) AND active"
    ))
    .bind(ids)
    .fetch_all(db)
    .await
}
