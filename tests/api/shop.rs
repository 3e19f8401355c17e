//! The shop: catalogue, cart bounds, price tampering, stock, idempotent checkout, CSRF, and
//! whose orders are whose.

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::{
    TestApp, assert_found, assert_redirect_to, attr, browser_client, location, same_secrets,
    spawn_app, spawn_app_with, spawn_app_with_idp,
};

async fn shop(opts: PgPoolOptions, db: PgConnectOptions) -> TestApp {
    let app = spawn_app(opts, db).await;
    storefront::shop::demo::load(&app.pool).await.unwrap();
    app
}

async fn product_id(pool: &PgPool, slug: &str) -> i64 {
    sqlx::query_scalar("SELECT product_id FROM products WHERE slug = $1")
        .bind(slug)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn stock(pool: &PgPool, slug: &str) -> i32 {
    sqlx::query_scalar("SELECT stock FROM products WHERE slug = $1")
        .bind(slug)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn order_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(pool)
        .await
        .unwrap()
}

fn select_all(html: &str, css: &str) -> Vec<String> {
    let doc = scraper::Html::parse_document(html);
    let sel = scraper::Selector::parse(css).unwrap();
    doc.select(&sel)
        .map(|e| e.text().collect::<String>().trim().to_owned())
        .collect()
}

impl TestApp {
    async fn add(&self, slug: &str, quantity: &str) -> reqwest::Response {
        let id = product_id(&self.pool, slug).await.to_string();
        let csrf = self.csrf_token().await;
        self.post_form(
            "/cart/items",
            &[
                ("csrf_token", &csrf),
                ("product_id", &id),
                ("quantity", quantity),
            ],
        )
        .await
    }

    /// The cart as (product slug, quantity) rows, from the cart page.
    async fn cart(&self) -> Vec<(String, String)> {
        let html = self.get("/cart").await.text().await.unwrap();
        let doc = scraper::Html::parse_document(&html);
        let row = scraper::Selector::parse("tr[data-product]").unwrap();
        let qty = scraper::Selector::parse("input[name=quantity]").unwrap();
        doc.select(&row)
            .map(|r| {
                let q = r
                    .select(&qty)
                    .next()
                    .unwrap()
                    .value()
                    .attr("value")
                    .unwrap();
                (
                    r.value().attr("data-product").unwrap().to_owned(),
                    q.to_owned(),
                )
            })
            .collect()
    }

    /// Submits the cart page's checkout form; returns the response.
    async fn checkout(&self) -> reqwest::Response {
        let html = self.get("/cart").await.text().await.unwrap();
        let csrf = attr(&html, "form.checkout input[name=csrf_token]", "value").unwrap();
        let key = attr(&html, "input[name=idempotency_key]", "value").unwrap();
        self.post_form(
            "/checkout",
            &[("csrf_token", &csrf), ("idempotency_key", &key)],
        )
        .await
    }
}

#[sqlx::test]
async fn the_catalogue_lists_products_and_has_a_page_for_each(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = shop(opts, db).await;
    let html = app.get("/").await.text().await.unwrap();
    let names = select_all(&html, ".product-card .product-name");
    assert_eq!(names.len(), 12, "{names:?}");
    assert!(names.contains(&"Ceramic Mug".to_owned()));
    assert!(html.contains("€12.90"));
    let doc = scraper::Html::parse_document(&html);
    let images = scraper::Selector::parse(".product-card img").unwrap();
    assert_eq!(doc.select(&images).count(), 12);
    assert!(
        doc.select(&images)
            .all(|img| img.value().attr("alt").is_some_and(|a| !a.is_empty())),
        "every image has alt text"
    );

    let page = app.get("/products/ceramic-mug").await;
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.unwrap();
    assert_eq!(select_all(&html, "h1"), vec!["Ceramic Mug"]);
    assert_eq!(
        attr(&html, "label[for=quantity]", "for").as_deref(),
        Some("quantity")
    );

    let missing = app.get("/products/no-such-thing").await;
    assert_eq!(missing.status().as_u16(), 404);
    let html = missing.text().await.unwrap();
    assert!(html.contains("class=\"error-page\""), "{html}");
    assert!(html.contains("could not find that product"), "{html}");

    // Running the loader again changes nothing (idempotent).
    storefront::shop::demo::load(&app.pool).await.unwrap();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM products")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, 12);
}

#[sqlx::test]
async fn cart_quantities_are_bounded_and_refusals_change_nothing(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = shop(opts, db).await;
    for bad in ["0", "100", "-1", "abc", "1.5", ""] {
        let response = app.add("coffee-beans", bad).await;
        assert_eq!(response.status().as_u16(), 400, "quantity {bad:?}");
    }
    assert!(app.cart().await.is_empty());
    assert_redirect_to(&app.add("coffee-beans", "60").await, "/cart");
    let response = app.add("coffee-beans", "40").await;
    assert_eq!(response.status().as_u16(), 400);
    assert!(response.text().await.unwrap().contains("at most 99"));
    assert_eq!(app.cart().await, vec![("coffee-beans".into(), "60".into())]);

    // More than the stock (3 candles) is refused with the number left.
    let response = app.add("soy-candle", "4").await;
    assert_eq!(response.status().as_u16(), 400);
    assert!(response.text().await.unwrap().contains("only 3"));

    // An unknown product is a 400 page, not a 500.
    let csrf = app.csrf_token().await;
    let response = app
        .post_form(
            "/cart/items",
            &[
                ("csrf_token", &csrf),
                ("product_id", "999999"),
                ("quantity", "1"),
            ],
        )
        .await;
    assert_eq!(response.status().as_u16(), 400);

    // Change the quantity, then remove.
    let id = product_id(&app.pool, "coffee-beans").await.to_string();
    let response = app
        .post_form(
            "/cart/items",
            &[
                ("csrf_token", &csrf),
                ("product_id", &id),
                ("quantity", "2"),
                ("action", "set"),
            ],
        )
        .await;
    assert_redirect_to(&response, "/cart");
    assert_eq!(app.cart().await, vec![("coffee-beans".into(), "2".into())]);
    let response = app
        .post_form(
            &format!("/cart/items/{id}/remove"),
            &[("csrf_token", &csrf)],
        )
        .await;
    assert_redirect_to(&response, "/cart");
    assert!(app.cart().await.is_empty());
    let response = app
        .post_form("/cart/items/not-a-number/remove", &[("csrf_token", &csrf)])
        .await;
    assert_eq!(response.status().as_u16(), 404);
}

#[sqlx::test]
async fn prices_come_from_the_catalogue_never_from_the_form(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = shop(opts, db).await;
    let id = product_id(&app.pool, "headphones").await.to_string();
    let csrf = app.csrf_token().await;
    let response = app
        .post_form(
            "/cart/items",
            &[
                ("csrf_token", &csrf),
                ("product_id", &id),
                ("quantity", "2"),
                ("price", "1"),
                ("price_cents", "1"),
                ("total", "0.01"),
            ],
        )
        .await;
    assert_redirect_to(&response, "/cart");
    let html = app.get("/cart").await.text().await.unwrap();
    assert_eq!(select_all(&html, "#cart-total"), vec!["€179.80"]);
    app.login_as("alice").await;
    let placed = app.checkout().await;
    assert_eq!(placed.status().as_u16(), 303);
    let total: i64 = sqlx::query_scalar("SELECT total_cents FROM orders")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(total, 17_980);
}

#[sqlx::test]
async fn checkout_with_too_little_stock_writes_nothing(opts: PgPoolOptions, db: PgConnectOptions) {
    let app = shop(opts, db).await;
    app.add("soy-candle", "3").await;
    app.add("ceramic-mug", "1").await;
    app.login_as("alice").await;
    // Someone else bought two candles meanwhile.
    sqlx::query("UPDATE products SET stock = 1 WHERE slug = 'soy-candle'")
        .execute(&app.pool)
        .await
        .unwrap();
    let response = app.checkout().await;
    assert_eq!(response.status().as_u16(), 409);
    let html = response.text().await.unwrap();
    assert!(html.contains("Soy Candle (1 left)"), "{html}");
    assert_eq!(order_count(&app.pool).await, 0);
    assert_eq!(stock(&app.pool, "soy-candle").await, 1);
    assert_eq!(
        stock(&app.pool, "ceramic-mug").await,
        40,
        "no partial order"
    );
    assert_eq!(app.cart().await.len(), 2, "the cart is kept");
}

#[sqlx::test]
async fn a_checkout_submitted_twice_places_one_order(opts: PgPoolOptions, db: PgConnectOptions) {
    let app = shop(opts, db).await;
    app.add("fountain-pen", "2").await;
    app.login_as("alice").await;
    let html = app.get("/cart").await.text().await.unwrap();
    let csrf = attr(&html, "form.checkout input[name=csrf_token]", "value").unwrap();
    let key = attr(&html, "input[name=idempotency_key]", "value").unwrap();
    let form = [
        ("csrf_token", csrf.as_str()),
        ("idempotency_key", key.as_str()),
    ];
    // Two submissions at once (a double click), then a third after the fact.
    let (a, b) = tokio::join!(
        app.post_form("/checkout", &form),
        app.post_form("/checkout", &form)
    );
    let c = app.post_form("/checkout", &form).await;
    let targets: Vec<String> = [&a, &b, &c]
        .iter()
        .map(|r| location(r).to_owned())
        .collect();
    assert!(targets[0].starts_with("/orders/"), "{targets:?}");
    assert!(targets.iter().all(|t| *t == targets[0]), "{targets:?}");
    assert_eq!(order_count(&app.pool).await, 1);
    assert_eq!(
        stock(&app.pool, "fountain-pen").await,
        8,
        "stock taken once"
    );

    let confirmation = app.get(&targets[0]).await;
    assert_eq!(confirmation.status().as_u16(), 200);
    let html = confirmation.text().await.unwrap();
    assert!(html.contains("Thank you for your order"));
    assert!(html.contains("Fountain Pen"));
    assert!(app.cart().await.is_empty(), "the cart is emptied");
    // A damaged key is a 400, not a 500.
    let response = app
        .post_form(
            "/checkout",
            &[("csrf_token", &csrf), ("idempotency_key", "nope")],
        )
        .await;
    assert_eq!(response.status().as_u16(), 400);
}

#[sqlx::test]
async fn every_post_form_needs_the_sessions_csrf_token(opts: PgPoolOptions, db: PgConnectOptions) {
    let app = shop(opts, db).await;
    app.add("backpack", "1").await;
    app.login_as("alice").await;
    let id = product_id(&app.pool, "backpack").await.to_string();
    // A token from another session is as bad as none.
    let other = spawn_app_with_idp(
        PgPoolOptions::new(),
        app.pool.connect_options().as_ref().clone(),
        app.idp.clone(),
        |s| same_secrets(s, &app),
    )
    .await;
    let foreign = other.csrf_token().await;
    for token in ["", "forged", foreign.as_str()] {
        let attempts = [
            (
                "/cart/items".to_owned(),
                vec![
                    ("csrf_token", token),
                    ("product_id", id.as_str()),
                    ("quantity", "1"),
                ],
            ),
            (
                format!("/cart/items/{id}/remove"),
                vec![("csrf_token", token)],
            ),
            (
                "/checkout".to_owned(),
                vec![
                    ("csrf_token", token),
                    ("idempotency_key", "7f0a3c5e-2a4b-4c1d-9e8f-0123456789ab"),
                ],
            ),
        ];
        for (path, form) in attempts {
            let response = app.post_form(&path, &form).await;
            assert_eq!(response.status().as_u16(), 403, "{path} with {token:?}");
            let html = response.text().await.unwrap();
            assert!(html.contains("class=\"error-page\""));
        }
        // A form without the field at all.
        let response = app.post_form("/checkout", &[]).await;
        assert_eq!(response.status().as_u16(), 400);
    }
    assert_eq!(app.cart().await, vec![("backpack".into(), "1".into())]);
    assert_eq!(order_count(&app.pool).await, 0);
}

#[sqlx::test]
async fn anonymous_checkout_goes_through_login_and_back_to_an_intact_cart(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = shop(opts, db).await;
    app.add("ceramic-mug", "2").await;
    app.add("wool-socks", "1").await;
    let response = app.checkout().await;
    assert_redirect_to(&response, "/login?return_to=%2Fcart");
    let callback = app.login_returning_to("bob", "/cart").await;
    assert_found(&callback, "/cart");
    assert_eq!(
        app.cart().await,
        vec![
            ("ceramic-mug".into(), "2".into()),
            ("wool-socks".into(), "1".into())
        ]
    );
    let placed = app.checkout().await;
    assert!(location(&placed).starts_with("/orders/"));
    let html = app.get("/orders").await.text().await.unwrap();
    assert!(html.contains("2 × Ceramic Mug"), "{html}");
}

#[sqlx::test]
async fn the_cart_survives_a_restart(opts: PgPoolOptions, db: PgConnectOptions) {
    let app = spawn_app_with(opts.clone(), db.clone(), |_| {}).await;
    storefront::shop::demo::load(&app.pool).await.unwrap();
    app.add("plant-pot", "3").await;
    // A new process with the same configuration, the same browser.
    let mut restarted =
        spawn_app_with_idp(opts, db, app.idp.clone(), |s| same_secrets(s, &app)).await;
    restarted.client = app.client.clone();
    assert_eq!(
        restarted.cart().await,
        vec![("plant-pot".into(), "3".into())]
    );
}

#[sqlx::test]
async fn orders_are_visible_to_their_owner_only(opts: PgPoolOptions, db: PgConnectOptions) {
    let alice = shop(opts, db).await;
    alice.add("desk-lamp", "1").await;
    alice.login_as("alice").await;
    let order_page = location(&alice.checkout().await).to_owned();

    let mut bob = alice.clone();
    bob.client = browser_client();
    assert_redirect_to(&bob.get("/orders").await, "/login?return_to=%2Forders");
    bob.login_as("bob").await;
    let html = bob.get("/orders").await.text().await.unwrap();
    assert!(!html.contains("LED Desk Lamp"), "{html}");
    assert!(html.contains("not ordered anything yet"));
    let response = bob.get(&order_page).await;
    assert_eq!(response.status().as_u16(), 404);
    assert_eq!(bob.get("/orders/not-a-uuid").await.status().as_u16(), 404);

    let html = alice.get("/orders").await.text().await.unwrap();
    assert!(html.contains("1 × LED Desk Lamp"), "{html}");
    assert_eq!(alice.get(&order_page).await.status().as_u16(), 200);
}
