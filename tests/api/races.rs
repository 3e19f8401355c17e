//! Crawlers, floods and races: cookieless visitors write nothing, concurrent requests of one
//! session lose no change and bring back no ended login, revocations are durable.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix_session::storage::SessionStore;
use actix_web::cookie::time::Duration as CookieDuration;
use futures_util::{StreamExt, stream};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use storefront::session::{PgSessionStore, SessionTimeouts};
use tokio_util::sync::CancellationToken;

use crate::fake_idp::TokenEndpoint;
use crate::helpers::{TestApp, page_csrf_token, spawn_app};

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// A shop with `n` products of its own (slugs `p0`, `p1`, …), ids in slug order.
async fn shop_with_products(
    opts: PgPoolOptions,
    db: PgConnectOptions,
    n: usize,
) -> (TestApp, Vec<i64>) {
    let app = spawn_app(opts, db).await;
    let mut ids = Vec::new();
    for i in 0..n {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO products (slug, name, price_cents, stock) VALUES ($1, $2, 500, 1000)
             RETURNING product_id",
        )
        .bind(format!("p{i}"))
        .bind(format!("Product {i}"))
        .fetch_one(&app.pool)
        .await
        .unwrap();
        ids.push(id);
    }
    (app, ids)
}

/// `POST /cart/items` adding `quantity` of product `id` with the page's `token`.
async fn add(app: &TestApp, token: &str, id: i64, quantity: &str) -> u16 {
    app.post_form(
        "/cart/items",
        &[
            ("csrf_token", token),
            ("product_id", &id.to_string()),
            ("quantity", quantity),
        ],
    )
    .await
    .status()
    .as_u16()
}

/// The cart's product ids and quantities, read from the session row.
async fn cart_in_db(pool: &PgPool) -> Vec<(i64, u32)> {
    let carts: Vec<Option<String>> = sqlx::query_scalar("SELECT state->>'cart' FROM sessions")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(carts.len(), 1, "one session");
    let Some(json) = &carts[0] else {
        return Vec::new();
    };
    let lines: Vec<serde_json::Value> = serde_json::from_str(json).unwrap();
    lines
        .iter()
        .map(|l| {
            (
                l["product_id"].as_i64().unwrap(),
                l["quantity"].as_u64().unwrap() as u32,
            )
        })
        .collect()
}

#[sqlx::test]
async fn cookieless_page_views_write_no_session_row(opts: PgPoolOptions, db: PgConnectOptions) {
    let app = spawn_app(opts, db).await;
    storefront::shop::demo::load(&app.pool).await.unwrap();
    // A crawler: no cookie jar, every request a stranger.
    let crawler = reqwest::Client::new();
    let pages = [
        "/",
        "/cart",
        "/products/ceramic-mug",
        "/products/soy-candle",
        "/nope",
    ];
    let views = 10_000;
    let statuses: Vec<u16> = stream::iter(0..views)
        .map(|i| {
            let url = app.url(pages[i % pages.len()]);
            let crawler = crawler.clone();
            async move { crawler.get(url).send().await.unwrap().status().as_u16() }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        views / 5 * 4
    );
    assert_eq!(count(&app.pool, "SELECT count(*) FROM sessions").await, 0);

    // The page's forms still work: the token is bound to the CSRF cookie, and the first
    // thing stored (the cart) creates the one session row.
    let html = app.get("/products/ceramic-mug").await.text().await.unwrap();
    let token = page_csrf_token(&html).expect("a token without a session");
    assert_eq!(count(&app.pool, "SELECT count(*) FROM sessions").await, 0);
    let id: i64 = sqlx::query_scalar("SELECT product_id FROM products WHERE slug = 'ceramic-mug'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(add(&app, &token, id, "1").await, 303);
    assert_eq!(count(&app.pool, "SELECT count(*) FROM sessions").await, 1);
    // The same token in a browser without the cookie is refused.
    let stranger = app.other_browser();
    assert_eq!(add(&stranger, &token, id, "1").await, 403);
    assert_eq!(count(&app.pool, "SELECT count(*) FROM sessions").await, 1);
}

#[sqlx::test]
async fn twenty_concurrent_adds_keep_twenty_lines(opts: PgPoolOptions, db: PgConnectOptions) {
    let (app, ids) = shop_with_products(opts, db, 20).await;
    let html = app.get("/").await.text().await.unwrap();
    let token = page_csrf_token(&html).unwrap();
    // The session exists before the burst (a first add creates it).
    assert_eq!(add(&app, &token, ids[0], "1").await, 303);
    let statuses: Vec<u16> = stream::iter(ids[1..].iter().copied())
        .map(|id| {
            let app = app.clone();
            let token = token.clone();
            async move { add(&app, &token, id, "1").await }
        })
        .buffer_unordered(19)
        .collect()
        .await;
    assert_eq!(statuses, vec![303; 19]);
    let mut cart = cart_in_db(&app.pool).await;
    cart.sort();
    let expected: Vec<(i64, u32)> = ids.iter().map(|id| (*id, 1)).collect();
    assert_eq!(cart, expected, "every line kept");
    // And adding to the same product at once adds up.
    let statuses: Vec<u16> = stream::iter(0..10)
        .map(|_| {
            let app = app.clone();
            let token = token.clone();
            let id = ids[0];
            async move { add(&app, &token, id, "2").await }
        })
        .buffer_unordered(10)
        .collect()
        .await;
    assert_eq!(statuses, vec![303; 10]);
    let cart = cart_in_db(&app.pool).await;
    assert_eq!(
        cart.iter().find(|(id, _)| *id == ids[0]),
        Some(&(ids[0], 21))
    );
}

fn store(pool: &PgPool) -> PgSessionStore {
    PgSessionStore::new(
        pool.clone(),
        SessionTimeouts {
            idle: Duration::from_secs(3600),
            absolute: Duration::from_secs(7200),
            touch_interval: Duration::from_secs(60),
        },
    )
}

const TTL: CookieDuration = CookieDuration::hours(1);

fn with_cart(
    mut state: HashMap<String, String>,
    lines: &[(i64, u32)],
    changes: serde_json::Value,
) -> HashMap<String, String> {
    let cart: Vec<serde_json::Value> = lines
        .iter()
        .map(|(id, q)| serde_json::json!({ "product_id": id, "quantity": q }))
        .collect();
    if cart.is_empty() {
        state.remove("cart");
    } else {
        state.insert("cart".into(), serde_json::to_string(&cart).unwrap());
    }
    state.insert("__cart_changes".into(), changes.to_string());
    state
}

#[sqlx::test]
async fn an_add_racing_a_checkout_keeps_the_add_and_never_restores_ordered_lines(pool: PgPool) {
    let store = store(&pool);
    let seed = with_cart(HashMap::new(), &[(1, 2)], serde_json::json!([]));
    let key = store.save(seed, &TTL).await.unwrap();
    // Two requests read the session at once: a checkout of product 1, an add of product 2.
    let checkout = store.load(&key).await.unwrap().unwrap();
    let add = store.load(&key).await.unwrap().unwrap();
    let checkout = with_cart(
        checkout,
        &[],
        serde_json::json!([{ "change": "ordered", "lines": [{ "product_id": 1, "quantity": 2 }] }]),
    );
    let add = with_cart(
        add,
        &[(1, 2), (2, 1)],
        serde_json::json!([{ "change": "add", "product_id": 2, "quantity": 1 }]),
    );
    // The checkout writes first; the add, written second, meets a newer version.
    let key = store.update(key, checkout, &TTL).await.unwrap();
    store.update(key, add, &TTL).await.unwrap();
    assert_eq!(cart_in_db(&pool).await, vec![(2, 1)]);

    // The other order: the add first, then the checkout of what it had read.
    sqlx::query("DELETE FROM sessions")
        .execute(&pool)
        .await
        .unwrap();
    let seed = with_cart(HashMap::new(), &[(1, 2)], serde_json::json!([]));
    let key = store.save(seed, &TTL).await.unwrap();
    let checkout = store.load(&key).await.unwrap().unwrap();
    let add = store.load(&key).await.unwrap().unwrap();
    let add = with_cart(
        add,
        &[(1, 2), (2, 1)],
        serde_json::json!([{ "change": "add", "product_id": 2, "quantity": 1 }]),
    );
    let checkout = with_cart(
        checkout,
        &[],
        serde_json::json!([{ "change": "ordered", "lines": [{ "product_id": 1, "quantity": 2 }] }]),
    );
    let key = store.update(key, add, &TTL).await.unwrap();
    store.update(key, checkout, &TTL).await.unwrap();
    assert_eq!(cart_in_db(&pool).await, vec![(2, 1)]);
}

#[sqlx::test]
async fn a_request_ending_after_logout_or_expiry_never_writes_the_login_back(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app(opts, db).await;
    app.login_as("alice").await;
    let token_id: uuid::Uuid = sqlx::query_scalar("SELECT token_id FROM sessions")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let store = store(&app.pool);
    // A session row as a request of this login reads it.
    let key_of = |state: &HashMap<String, String>| state.contains_key("token_id");
    let seed: HashMap<String, String> = [(
        "token_id".to_owned(),
        serde_json::to_string(&token_id).unwrap(),
    )]
    .into();
    let key = store.save(seed, &TTL).await.unwrap();
    let read = store.load(&key).await.unwrap().unwrap();
    assert!(key_of(&read) && read.contains_key("__auth"));

    // The login ends (logout in another tab, an admin's revoke) while the request runs.
    storefront::auth::tokens::end_logins(
        &app.pool,
        &[token_id],
        storefront::auth::tokens::EndReason::Logout,
    )
    .await
    .unwrap();
    let changed = with_cart(
        read,
        &[(1, 1)],
        serde_json::json!([{ "change": "add", "product_id": 1, "quantity": 1 }]),
    );
    store.update(key, changed, &TTL).await.unwrap();
    assert_eq!(
        count(&app.pool, "SELECT count(*) FROM sessions").await,
        0,
        "nothing written back"
    );
    assert_eq!(
        count(&app.pool, "SELECT count(*) FROM oauth_tokens").await,
        0
    );

    // Expiry mid-request: the session expires between the read and the write.
    app.login_as("bob").await;
    let token_id: uuid::Uuid = sqlx::query_scalar("SELECT token_id FROM sessions")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let seed: HashMap<String, String> = [
        (
            "token_id".to_owned(),
            serde_json::to_string(&token_id).unwrap(),
        ),
        ("marker".to_owned(), "1".to_owned()),
    ]
    .into();
    let key = store.save(seed, &TTL).await.unwrap();
    let read = store.load(&key).await.unwrap().unwrap();
    sqlx::query(
        "UPDATE sessions SET expires_at = now() - interval '1 second' WHERE state ? 'marker'",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let changed = with_cart(
        read,
        &[(1, 1)],
        serde_json::json!([{ "change": "add", "product_id": 1, "quantity": 1 }]),
    );
    store.update(key, changed, &TTL).await.unwrap();
    assert_eq!(
        count(
            &app.pool,
            "SELECT count(*) FROM sessions WHERE expires_at > now()"
        )
        .await,
        1,
        "only the browser's own session of bob is live"
    );
    assert_eq!(
        count(
            &app.pool,
            "SELECT count(*) FROM sessions WHERE state ? 'cart'"
        )
        .await,
        0,
        "the expired session was neither written nor brought back"
    );
}

#[sqlx::test]
async fn a_second_login_in_one_session_ends_and_revokes_the_first(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app(opts, db).await;
    // Two tabs start a login; the first completes as alice, the second as bob.
    let (state_a, nonce_a) = app.start_login("/").await;
    let (state_b, nonce_b) = app.start_login("/").await;
    let code_a = app.idp.code_for("alice", &nonce_a);
    let done = app
        .callback(&[("code", &code_a), ("state", &state_a)])
        .await;
    assert_eq!(done.status().as_u16(), 302);
    let first: uuid::Uuid = sqlx::query_scalar("SELECT token_id FROM oauth_tokens")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let code_b = app.idp.code_for("bob", &nonce_b);
    let done = app
        .callback(&[("code", &code_b), ("state", &state_b)])
        .await;
    assert_eq!(done.status().as_u16(), 302);

    let tokens: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT token_id FROM oauth_tokens")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        tokens.len(),
        1,
        "the first login is gone, not left for the refresher"
    );
    assert_ne!(tokens[0], first);
    assert_eq!(
        count(
            &app.pool,
            "SELECT count(*) FROM revocation_outbox WHERE reason = 'replaced'"
        )
        .await,
        2,
        "its refresh and access tokens are queued"
    );
    assert_eq!(app.send_revocations().await, 2);
    let profile = app.get("/profile").await;
    assert_eq!(profile.status().as_u16(), 200);
    assert!(profile.text().await.unwrap().contains("bob"));
}

#[sqlx::test]
async fn a_logout_during_a_refresh_in_flight_revokes_what_the_refresh_returns(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app(opts, db).await;
    app.login_as("alice").await;
    sqlx::query("UPDATE oauth_tokens SET refresh_due_at = now()")
        .execute(&app.pool)
        .await
        .unwrap();
    // The answer is held long enough for the logout below, well within the call's deadline.
    app.idp
        .set_token_endpoint(TokenEndpoint::Delay(Duration::from_millis(2000)));
    let calls = app.idp.token_calls.load(Ordering::SeqCst);
    let refresher = app.state.refresher.clone();
    let refreshing = tokio::spawn(async move {
        let stop = CancellationToken::new();
        refresher.refresh_due(&stop).await.unwrap()
    });
    // The refresh has claimed the login and its call has reached the provider.
    crate::refresh::eventually(Duration::from_secs(10), "the refresh call", || async {
        app.idp.token_calls.load(Ordering::SeqCst) > calls
    })
    .await;
    let csrf = app.csrf_token().await;
    let logout = app.post_form("/logout", &[("csrf_token", &csrf)]).await;
    assert_eq!(logout.status().as_u16(), 303);
    refreshing.await.unwrap();

    assert_eq!(
        count(&app.pool, "SELECT count(*) FROM oauth_tokens").await,
        0,
        "nothing written back"
    );
    assert_eq!(count(&app.pool, "SELECT count(*) FROM sessions").await, 0);
    assert_eq!(
        count(
            &app.pool,
            "SELECT count(*) FROM revocation_outbox WHERE reason = 'ended_during_refresh'"
        )
        .await,
        2,
        "the refresh's new refresh and access tokens"
    );
    app.idp.set_token_endpoint(TokenEndpoint::Normal);
    assert_eq!(
        app.send_revocations().await,
        4,
        "the logout's two and the refresh's two"
    );
    assert_eq!(app.idp.revocations.load(Ordering::SeqCst), 4);
}

#[sqlx::test]
async fn revocations_survive_a_provider_outage_and_are_sent_once_it_answers(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app(opts, db).await;
    app.login_as("alice").await;
    app.idp.set_down(true);
    let csrf = app.csrf_token().await;
    let logout = app.post_form("/logout", &[("csrf_token", &csrf)]).await;
    assert_eq!(logout.status().as_u16(), 303);
    assert_eq!(app.send_revocations().await, 0);
    assert_eq!(app.queued_revocations().await, 2, "kept for a retry");
    let failing: i64 = count(
        &app.pool,
        "SELECT count(*) FROM revocation_outbox WHERE attempts = 1 AND last_error IS NOT NULL
           AND next_attempt_at > now()",
    )
    .await;
    assert_eq!(failing, 2, "backing off");
    let overview = storefront::admin::overview(&app.pool).await.unwrap();
    assert_eq!(
        (overview.revocations.pending, overview.revocations.failing),
        (2, 2),
        "the dashboard shows the queue"
    );
    // A restart loses nothing: the queue is in Postgres. The provider is back; the backoff ends.
    app.idp.set_down(false);
    sqlx::query("UPDATE revocation_outbox SET next_attempt_at = now()")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(app.send_revocations().await, 2);
    assert_eq!(app.queued_revocations().await, 0);
    assert_eq!(app.idp.revocations.load(Ordering::SeqCst), 2);
}

#[sqlx::test]
async fn cleanup_queues_the_revocation_of_expired_logins(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app(opts, db).await;
    app.login_as("alice").await;
    sqlx::query("UPDATE sessions SET expires_at = now() - interval '1 second'")
        .execute(&app.pool)
        .await
        .unwrap();
    let report = storefront::session::cleanup::delete_expired(&app.pool, 100)
        .await
        .unwrap();
    assert_eq!((report.sessions, report.tokens), (1, 1));
    assert_eq!(
        count(
            &app.pool,
            "SELECT count(*) FROM revocation_outbox WHERE reason = 'expired'"
        )
        .await,
        2
    );
    assert_eq!(app.send_revocations().await, 2);
}
