//! Checkout and order history. An order is written in one transaction that takes the stock
//! it needs or nothing, and the idempotency key from the checkout form makes a double
//! submission the same order.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::Money;
use super::cart::Cart;
use crate::db::notifications::{Generation, Hearing, ORDERS, Subscriber};

#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("Your cart is empty.")]
    EmptyCart,
    /// Names (with what is left) of the products short of stock; nothing was written.
    #[error("Sorry, there is not enough stock for: {}. Your cart is unchanged; please adjust it.", .0.join(", "))]
    OutOfStock(Vec<String>),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// A placed order; `created` is false when the idempotency key named an earlier order.
pub struct Placed {
    pub order_id: Uuid,
    pub created: bool,
}

/// A cart line whose stock was taken, at the catalogue's price of that moment.
#[derive(sqlx::FromRow)]
struct TakenLine {
    product_id: i64,
    name: String,
    price_cents: i32,
    quantity: i32,
    currency: String,
}

/// A product there is not enough of, with what is left.
#[derive(sqlx::FromRow)]
struct ShortLine {
    name: String,
    left_in_stock: i32,
}

/// Places the cart as an order for `user_id`. A second call with the same key returns the
/// first order and changes nothing, even when both run at once (the unique key serialises them).
pub async fn place_order(
    pool: &PgPool,
    user_id: Uuid,
    idempotency_key: Uuid,
    cart: &Cart,
) -> Result<Placed, CheckoutError> {
    let mut tx = crate::db::begin(pool).await?;
    let order_id: Option<Uuid> = crate::db::query_scalar(
        r#"
        INSERT INTO orders (order_id, user_id, idempotency_key, total_cents, currency)
        VALUES ($1, $2, $3, 0, 'EUR')
        ON CONFLICT ON CONSTRAINT orders_idempotency_key DO NOTHING
        RETURNING order_id
        "#,
    )
    .bind(Uuid::now_v7())
    .bind(user_id)
    .bind(idempotency_key)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(order_id) = order_id else {
        let existing: Uuid = crate::db::query_scalar(
            "SELECT order_id FROM orders WHERE user_id = $1 AND idempotency_key = $2",
        )
        .bind(user_id)
        .bind(idempotency_key)
        .fetch_one(&mut *tx)
        .await?;
        return Ok(Placed {
            order_id: existing,
            created: false,
        });
    };
    if cart.is_empty() {
        return Err(CheckoutError::EmptyCart);
    }
    let ids: Vec<i64> = cart.lines().iter().map(|l| l.product_id).collect();
    let quantities: Vec<i32> = cart
        .lines()
        .iter()
        .map(|l| i32::try_from(l.quantity).unwrap_or(i32::MAX))
        .collect();
    // Takes the stock of every line that has enough, at the catalogue's current price; rows
    // are locked in product order so concurrent checkouts cannot deadlock.
    let taken: Vec<TakenLine> = crate::db::query_as(
        r#"
        WITH wanted AS (
            SELECT * FROM unnest($1::bigint[], $2::int[]) AS w(product_id, quantity)
        ), locked AS (
            SELECT p.product_id FROM products p JOIN wanted w USING (product_id)
            WHERE p.active AND p.stock >= w.quantity
            ORDER BY p.product_id
            FOR UPDATE OF p
        )
        UPDATE products p SET stock = p.stock - w.quantity
        FROM wanted w, locked l
        WHERE p.product_id = w.product_id AND l.product_id = p.product_id
          AND p.stock >= w.quantity
        RETURNING p.product_id, p.name, p.price_cents, w.quantity, p.currency
        "#,
    )
    .bind(&ids)
    .bind(&quantities)
    .fetch_all(&mut *tx)
    .await?;
    if taken.len() != ids.len() {
        tx.rollback().await?;
        let short: Vec<ShortLine> = crate::db::query_as(
            r#"
            SELECT p.name, CASE WHEN p.active THEN p.stock ELSE 0 END AS left_in_stock
            FROM unnest($1::bigint[], $2::int[]) AS w(product_id, quantity)
            JOIN products p USING (product_id)
            WHERE NOT p.active OR p.stock < w.quantity
            ORDER BY p.name
            "#,
        )
        .bind(&ids)
        .bind(&quantities)
        .fetch_all(pool)
        .await?;
        return Err(CheckoutError::OutOfStock(
            short
                .into_iter()
                .map(|s| format!("{} ({} left)", s.name, s.left_in_stock))
                .collect(),
        ));
    }
    let currency = taken[0].currency.clone();
    let total: i64 = taken
        .iter()
        .map(|t| i64::from(t.price_cents) * i64::from(t.quantity))
        .sum();
    crate::db::query(
        r#"
        INSERT INTO order_items (order_id, product_id, name, unit_price_cents, quantity)
        SELECT $1, * FROM unnest($2::bigint[], $3::text[], $4::int[], $5::int[])
        "#,
    )
    .bind(order_id)
    .bind(taken.iter().map(|t| t.product_id).collect::<Vec<_>>())
    .bind(taken.iter().map(|t| t.name.clone()).collect::<Vec<_>>())
    .bind(taken.iter().map(|t| t.price_cents).collect::<Vec<_>>())
    .bind(taken.iter().map(|t| t.quantity).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    crate::db::query("UPDATE orders SET total_cents = $2, currency = $3 WHERE order_id = $1")
        .bind(order_id)
        .bind(total)
        .bind(&currency)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(%order_id, %user_id, total_cents = total, "Order placed");
    Ok(Placed {
        order_id,
        created: true,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct OrderItem {
    pub name: String,
    pub quantity: i32,
    pub unit_price: Money,
    pub line_total: Money,
}

#[derive(Debug, Clone, Serialize)]
pub struct Order {
    pub order_id: Uuid,
    pub status: String,
    pub created_at: DateTime<Utc>,
    /// `created_at` as shoppers read it.
    pub placed_on: String,
    pub total: Money,
    pub items: Vec<OrderItem>,
}

#[derive(sqlx::FromRow)]
struct OrderRow {
    order_id: Uuid,
    status: String,
    created_at: DateTime<Utc>,
    total_cents: i64,
    currency: String,
    name: String,
    quantity: i32,
    unit_price_cents: i32,
}

/// The user's orders, newest first, with their items (one query). `only` picks one order.
pub async fn for_user(
    pool: &PgPool,
    user_id: Uuid,
    only: Option<Uuid>,
) -> Result<Vec<Order>, sqlx::Error> {
    let rows: Vec<OrderRow> = crate::db::query_as(
        r#"
        SELECT o.order_id, o.status, o.created_at, o.total_cents, o.currency,
               i.name, i.quantity, i.unit_price_cents
        FROM orders o JOIN order_items i USING (order_id)
        WHERE o.user_id = $1 AND ($2::uuid IS NULL OR o.order_id = $2)
        ORDER BY o.created_at DESC, o.order_id, i.name
        LIMIT 1000
        "#,
    )
    .bind(user_id)
    .bind(only)
    .fetch_all(pool)
    .await?;
    let mut orders: Vec<Order> = Vec::new();
    for row in rows {
        let unit_price = Money::from_columns(row.unit_price_cents, &row.currency);
        let item = OrderItem {
            unit_price,
            line_total: unit_price.times(row.quantity.max(0) as u32),
            name: row.name,
            quantity: row.quantity,
        };
        match orders.last_mut() {
            Some(order) if order.order_id == row.order_id => order.items.push(item),
            _ => orders.push(Order {
                order_id: row.order_id,
                status: row.status,
                created_at: row.created_at,
                placed_on: row.created_at.format("%Y-%m-%d %H:%M UTC").to_string(),
                total: Money::from_columns(row.total_cents, &row.currency),
                items: vec![item],
            }),
        }
    }
    Ok(orders)
}

/// Each user's orders in memory, as `/orders` lists them, while the instance hears Postgres'
/// notifications (an order placed or changed on any instance drops that user's entry).
/// Bounded by an estimate of the bytes held.
pub struct OrdersCache {
    entries: Option<quick_cache::sync::Cache<Uuid, Arc<Vec<Order>>, OrderBytes>>,
    hearing: Arc<Hearing>,
    generation: Generation,
}

#[derive(Clone)]
struct OrderBytes;

impl quick_cache::Weighter<Uuid, Arc<Vec<Order>>> for OrderBytes {
    fn weight(&self, _key: &Uuid, orders: &Arc<Vec<Order>>) -> u64 {
        let items: usize = orders.iter().map(|o| o.items.len()).sum();
        (100 + orders.len() * 200 + items * 100) as u64
    }
}

impl OrdersCache {
    /// At most `max_bytes` (estimated); 0 turns it off.
    pub fn new(max_bytes: u64, hearing: Arc<Hearing>) -> Self {
        Self {
            entries: (max_bytes > 0).then(|| {
                quick_cache::sync::Cache::with_weighter(
                    (max_bytes / 500).max(16) as usize,
                    max_bytes,
                    OrderBytes,
                )
            }),
            hearing,
            generation: Generation::default(),
        }
    }

    /// The user's orders, newest first.
    pub async fn for_user(
        &self,
        pool: &PgPool,
        user_id: Uuid,
    ) -> Result<Arc<Vec<Order>>, sqlx::Error> {
        let entries = self.entries.as_ref().filter(|_| self.hearing.usable());
        if let Some(hit) = entries.and_then(|e| e.get(&user_id)) {
            return Ok(hit);
        }
        let start = self.generation.current();
        let orders = Arc::new(for_user(pool, user_id, None).await?);
        if let Some(entries) = entries
            && self.hearing.usable()
            && self.generation.unchanged_since(start)
        {
            entries.insert(user_id, orders.clone());
        }
        Ok(orders)
    }
}

impl Subscriber for OrdersCache {
    fn notified(&self, channel: &str, payload: &str) {
        if channel != ORDERS {
            return;
        }
        self.generation.advance();
        if let (Some(entries), Ok(user_id)) = (&self.entries, Uuid::parse_str(payload)) {
            entries.remove(&user_id);
        }
    }

    fn flush(&self) {
        self.generation.advance();
        if let Some(entries) = &self.entries {
            entries.clear();
        }
    }
}
