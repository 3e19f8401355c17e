//! Generated attacker input against the running app: callback queries, cookies, back-channel
//! logout tokens and cart forms. Whatever arrives, the answer is a redirect or a 4xx — never
//! a 5xx, never a hang — and nothing is logged in or bought by accident.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::{TestApp, browser_client, spawn_app_with};

const CASES: usize = 150;

/// `CASES` values from `strategy`, reproducible from the runner's fixed seed.
fn samples<S: Strategy>(strategy: S) -> Vec<S::Value> {
    let mut runner = TestRunner::deterministic();
    (0..CASES)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect()
}

/// Printable junk, URL-ish junk, and the occasional very long value.
fn junk() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        3 => "[ -~]{0,80}",
        2 => "(https?:)?//[a-z.]{1,12}(/[ -~]{0,20})?",
        1 => "[A-Za-z0-9_-]{3000,5000}",
    ]
}

async fn fuzz_app(opts: PgPoolOptions, db: PgConnectOptions) -> TestApp {
    // Thousands of requests from one address: the rate limit is not under test here.
    let app = spawn_app_with(opts, db, |s| s.rate_limit.enabled = false).await;
    storefront::shop::demo::load(&app.pool).await.unwrap();
    app
}

fn assert_not_a_server_error(status: u16, what: &str) {
    assert!(status < 500, "{what} got {status}");
}

#[sqlx::test]
async fn callback_queries(opts: PgPoolOptions, db: PgConnectOptions) {
    let app = fuzz_app(opts, db).await;
    let fields = prop::collection::vec(
        (
            prop::sample::select(vec![
                "code",
                "state",
                "iss",
                "error",
                "error_description",
                "x",
            ]),
            junk(),
        ),
        0..5,
    );
    for query in samples(fields) {
        // Half the time with a real pending login, so `state` can match and the code is tried.
        let mut client = browser_client();
        let mut query: Vec<(String, String)> =
            query.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        if query.len().is_multiple_of(2) {
            let mut real = app.clone();
            real.client = browser_client();
            let (state, _) = real.start_login("/").await;
            query.push(("state".into(), state));
            client = real.client;
        }
        let response = client
            .get(app.url("/callback"))
            .query(&query)
            .send()
            .await
            .unwrap();
        assert_not_a_server_error(response.status().as_u16(), &format!("/callback {query:?}"));
    }
    assert_eq!(
        app.logged_in_sessions().await,
        0,
        "no junk logged anyone in"
    );
}

#[sqlx::test]
async fn session_cookies(opts: PgPoolOptions, db: PgConnectOptions) {
    let app = fuzz_app(opts, db).await;
    let cookie = prop_oneof![
        "[!#-+.-~]{0,120}",
        "[A-Za-z0-9+/=]{0,300}",
        "[A-Za-z0-9+/=]{40,60}\\.[A-Za-z0-9+/=]{40,60}",
    ];
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for value in samples(cookie) {
        // A cookie that is not ours is no session: public pages answer, the others ask for a login.
        for (path, expected) in [
            ("/", 200),
            ("/cart", 200),
            ("/orders", 303),
            ("/admin", 303),
        ] {
            let response = client
                .get(app.url(path))
                .header("cookie", format!("storefront_session={value}"))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            assert_eq!(status, expected, "{path} with cookie {value:?}");
        }
    }
}

#[sqlx::test]
async fn back_channel_logout_tokens(opts: PgPoolOptions, db: PgConnectOptions) {
    let app = fuzz_app(opts, db).await;
    app.login_as("alice").await;
    let segment = "[A-Za-z0-9_-]{0,200}";
    let token = prop_oneof![
        junk(),
        (segment, segment, segment).prop_map(|(a, b, c)| format!("{a}.{b}.{c}")),
        // A well-formed header over junk claims.
        (segment, segment).prop_map(|(b, c)| format!(
            "eyJhbGciOiJSUzI1NiIsImtpZCI6ImtleS0wIiwidHlwIjoibG9nb3V0K2p3dCJ9.{b}.{c}"
        )),
    ];
    let client = browser_client();
    for value in samples(token) {
        let response = client
            .post(app.url("/backchannel-logout"))
            .form(&[("logout_token", value.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400, "logout_token {value:?}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(body["error"].is_string());
    }
    assert_eq!(app.logged_in_sessions().await, 1, "no junk ended a session");
}

#[sqlx::test]
async fn cart_forms(opts: PgPoolOptions, db: PgConnectOptions) {
    let app = fuzz_app(opts, db).await;
    let csrf = app.csrf_token().await;
    let number = prop_oneof![
        "-?[0-9]{1,25}",
        Just("1".to_owned()),
        Just("99".to_owned()),
        "[ -~]{0,12}",
    ];
    let form = (
        number.clone(),
        number,
        prop::sample::select(vec!["add", "set", "", "delete", "ADD"]),
        prop::sample::select(vec!["/cart/items", "/cart/items/1/remove", "/checkout"]),
    );
    for (product_id, quantity, action, path) in samples(form) {
        let response = app
            .post_form(
                path,
                &[
                    ("csrf_token", csrf.as_str()),
                    ("product_id", &product_id),
                    ("quantity", &quantity),
                    ("action", action),
                    ("idempotency_key", &quantity),
                ],
            )
            .await;
        assert_not_a_server_error(
            response.status().as_u16(),
            &format!("{path} product_id={product_id:?} quantity={quantity:?} action={action:?}"),
        );
    }
    // Whatever was accepted stayed within the cart's bounds.
    let cart: Option<serde_json::Value> =
        sqlx::query_scalar("SELECT (state->>'cart')::jsonb FROM sessions WHERE state ? 'cart'")
            .fetch_optional(&app.pool)
            .await
            .unwrap();
    if let Some(cart) = cart {
        for line in cart.as_array().unwrap() {
            let quantity = line["quantity"].as_u64().unwrap();
            assert!((1..=99).contains(&quantity), "{cart}");
        }
    }
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(orders, 0, "anonymous forms never place an order");
}
