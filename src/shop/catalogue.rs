//! Products and their stock, from Postgres or from memory kept right by its notifications
//! ([`CatalogueCache`]): a price never comes from a form, and an order checks the stock again
//! inside its transaction.

use std::sync::{Arc, RwLock};

use serde::Serialize;
use sqlx::PgPool;

use super::Money;
use crate::db::notifications::{Generation, Hearing, PRODUCTS, Subscriber};

#[derive(Debug, Clone, Serialize)]
pub struct Product {
    pub product_id: i64,
    pub slug: String,
    pub name: String,
    pub description: String,
    pub price: Money,
    pub image_path: Option<String>,
    pub image_alt: String,
    pub stock: i32,
}

/// A `products` row as stored.
#[derive(sqlx::FromRow)]
struct ProductRow {
    product_id: i64,
    slug: String,
    name: String,
    description: String,
    price_cents: i32,
    currency: String,
    image_path: Option<String>,
    image_alt: String,
    stock: i32,
}

impl From<ProductRow> for Product {
    fn from(row: ProductRow) -> Self {
        Self {
            price: Money::from_columns(row.price_cents, &row.currency),
            product_id: row.product_id,
            slug: row.slug,
            name: row.name,
            description: row.description,
            image_path: row.image_path,
            image_alt: row.image_alt,
            stock: row.stock,
        }
    }
}

const COLUMNS: &str =
    "product_id, slug, name, description, price_cents, currency, image_path, image_alt, stock";

/// Every product on sale, in catalogue order.
pub async fn list(db: impl Into<crate::db::Route<'_>>) -> Result<Vec<Product>, sqlx::Error> {
    let rows: Vec<ProductRow> = crate::db::query_as(&format!(
        "SELECT {COLUMNS} FROM products WHERE active ORDER BY name"
    ))
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(Product::from).collect())
}

/// The catalogue in memory: every product on sale, read once and again only after Postgres
/// says a product changed (a price, the stock after an order) — while the instance hears its
/// notifications; otherwise every read goes to Postgres.
pub struct CatalogueCache {
    products: RwLock<Option<Arc<Vec<Product>>>>,
    hearing: Arc<Hearing>,
    generation: Generation,
}

impl CatalogueCache {
    pub fn new(hearing: Arc<Hearing>) -> Self {
        Self {
            products: RwLock::new(None),
            hearing,
            generation: Generation::default(),
        }
    }

    /// Every product on sale, in catalogue order.
    pub async fn list(&self, pool: &PgPool) -> Result<Arc<Vec<Product>>, sqlx::Error> {
        if self.hearing.usable()
            && let Some(products) = self.products.read().expect("not poisoned").clone()
        {
            return Ok(products);
        }
        let start = self.generation.current();
        let products = Arc::new(list(pool).await?);
        if self.hearing.usable() && self.generation.unchanged_since(start) {
            *self.products.write().expect("not poisoned") = Some(products.clone());
        }
        Ok(products)
    }

    pub async fn by_slug(&self, pool: &PgPool, slug: &str) -> Result<Option<Product>, sqlx::Error> {
        Ok(self
            .list(pool)
            .await?
            .iter()
            .find(|p| p.slug == slug)
            .cloned())
    }

    pub async fn by_id(
        &self,
        pool: &PgPool,
        product_id: i64,
    ) -> Result<Option<Product>, sqlx::Error> {
        Ok(self
            .list(pool)
            .await?
            .iter()
            .find(|p| p.product_id == product_id)
            .cloned())
    }

    /// The products on sale among `ids`.
    pub async fn by_ids(&self, pool: &PgPool, ids: &[i64]) -> Result<Vec<Product>, sqlx::Error> {
        Ok(self
            .list(pool)
            .await?
            .iter()
            .filter(|p| ids.contains(&p.product_id))
            .cloned()
            .collect())
    }
}

impl Subscriber for CatalogueCache {
    fn notified(&self, channel: &str, _payload: &str) {
        if channel == PRODUCTS {
            self.flush();
        }
    }

    fn flush(&self) {
        self.generation.advance();
        *self.products.write().expect("not poisoned") = None;
    }
}
