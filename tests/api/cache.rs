//! Sessions and the catalogue in memory: served without a query in steady state, right on
//! every instance within a second of any change (through Postgres' notifications), and not
//! used at all while an instance cannot hear them.

use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio_util::sync::CancellationToken;

use crate::helpers::{
    TcpProxy, TestApp, assert_redirect_to, same_secrets, spawn_app_with, spawn_app_with_idp,
};

/// The URL of `db` (for `database.listen_url`), optionally through a proxy's port.
fn url_of(db: &PgConnectOptions, port: Option<u16>) -> String {
    format!(
        "postgres://{}@127.0.0.1:{}/{}",
        db.get_username(),
        port.unwrap_or(db.get_port()),
        db.get_database().expect("a test database")
    )
}

/// Starts `app`'s listener and waits until it hears its own pings.
async fn listening(app: &TestApp, stop: &CancellationToken) {
    storefront::startup::spawn_notifications(&app.state, stop.clone()).expect("a listener");
    until(
        Duration::from_secs(5),
        "the instance hears notifications",
        || app.state.hearing.usable(),
    )
    .await;
}

async fn until(within: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < within, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// Polls `path` on `app` until it redirects to `/login`; returns how long that took.
async fn until_logged_out(app: &TestApp, path: &str) -> Duration {
    let started = Instant::now();
    loop {
        let response = app.get(path).await;
        if response.status().as_u16() == 303 {
            assert_redirect_to(
                &response,
                &format!("/login?return_to={}", path.replace('/', "%2F")),
            );
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{path} still served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn two_instances_settings(s: &mut storefront::configuration::Settings) {
    s.database.max_connections = 4;
}

/// Two instances of one deployment on one database, both listening; `second` adjusts the
/// second one's settings. Cancel the token to stop their listeners.
async fn two_listening_instances(
    opts: PgPoolOptions,
    db: PgConnectOptions,
    second: impl FnOnce(&mut storefront::configuration::Settings),
) -> (TestApp, TestApp, CancellationToken) {
    let one = spawn_app_with(opts.clone(), db.clone(), two_instances_settings).await;
    let two = spawn_app_with_idp(opts, db, one.idp.clone(), |s| {
        two_instances_settings(s);
        same_secrets(s, &one);
        second(s);
    })
    .await;
    let stop = CancellationToken::new();
    listening(&one, &stop).await;
    listening(&two, &stop).await;
    (one, two, stop)
}

#[sqlx::test]
async fn a_steady_page_view_needs_no_query(opts: PgPoolOptions, db: PgConnectOptions) {
    // The request pool goes through a proxy the test can cut; the listener does not.
    let proxy = TcpProxy::start(db.get_host(), db.get_port()).await;
    let direct = url_of(&db, None);
    let via_proxy = db.clone().host("127.0.0.1").port(proxy.port());
    let app = spawn_app_with(opts, via_proxy, move |s| {
        s.database.listen_url = Some(direct.into());
    })
    .await;
    storefront::shop::demo::load(&app.pool).await.unwrap();
    let stop = CancellationToken::new();
    listening(&app, &stop).await;
    app.login_as("alice").await;
    let anonymous = app.other_browser();
    for _ in 0..2 {
        assert_eq!(app.get("/cart").await.status().as_u16(), 200);
        assert_eq!(anonymous.get("/").await.status().as_u16(), 200);
        assert_eq!(
            anonymous
                .get("/products/ceramic-mug")
                .await
                .status()
                .as_u16(),
            200
        );
    }
    assert!(!app.state.sessions.is_empty(), "the session is held");

    // Postgres is unreachable for requests (the listener's own connection is not): what is in
    // memory still serves, what needs a query says so.
    proxy.set_down(true);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        app.get("/orders").await.status().as_u16(),
        503,
        "orders need a query"
    );
    assert!(app.state.hearing.usable());
    assert_eq!(
        app.get("/cart").await.status().as_u16(),
        200,
        "session and catalogue"
    );
    assert_eq!(
        anonymous.get("/").await.status().as_u16(),
        200,
        "the catalogue"
    );
    proxy.set_down(false);
    stop.cancel();
}

/// The session cookie a login set.
fn session_cookie(callback: &reqwest::Response) -> String {
    callback
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("storefront_session="))
        .and_then(|v| v.split(';').next())
        .expect("a session cookie")
        .to_owned()
}

/// A GET on `app` with exactly this cookie, redirects not followed: the status.
async fn status_with(app: &TestApp, cookie: &str, path: &str) -> u16 {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(app.url(path))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[sqlx::test]
async fn every_ending_reaches_the_other_instance_within_a_second(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let (one, two, stop) = two_listening_instances(opts, db, |s| s.session.max_per_user = 1).await;
    let mut taken = Vec::new();
    for case in [
        "logout",
        "admin revoke",
        "back-channel logout",
        "session limit",
        "refresh refused",
        "admin group removed",
    ] {
        // A login on `one`; its cookie, held apart, warms `two`'s cache.
        let browser = one.other_browser();
        let callback = if case == "admin group removed" {
            browser
                .login_with_claims("alice", |c| c["groups"] = serde_json::json!(["admins"]))
                .await
        } else {
            browser.login_as("alice").await
        };
        let cookie = session_cookie(&callback);
        let (page, gone) = if case == "admin group removed" {
            ("/admin", 403)
        } else {
            ("/orders", 303)
        };
        assert_eq!(status_with(&two, &cookie, page).await, 200, "{case}: warm");
        assert_eq!(
            status_with(&two, &cookie, page).await,
            200,
            "{case}: cached"
        );
        let token_id: uuid::Uuid = sqlx::query_scalar(
            "SELECT token_id FROM sessions WHERE token_id IS NOT NULL ORDER BY created_at DESC LIMIT 1",
        )
        .fetch_one(&one.pool)
        .await
        .unwrap();
        let started = Instant::now();
        match case {
            "logout" => {
                let csrf = browser.csrf_token().await;
                let out = browser.post_form("/logout", &[("csrf_token", &csrf)]).await;
                assert_eq!(out.status().as_u16(), 303);
            }
            "admin revoke" => {
                storefront::auth::tokens::end_logins(
                    &one.pool,
                    &[token_id],
                    storefront::auth::tokens::EndReason::AdminRevoke,
                )
                .await
                .unwrap();
            }
            "back-channel logout" => {
                let mut conn = one.pool.acquire().await.unwrap();
                storefront::auth::tokens::end_provider_sessions(
                    &mut conn,
                    &one.idp.issuer,
                    Some("alice"),
                    None,
                )
                .await
                .unwrap();
            }
            "session limit" => {
                // Another login of alice, on `two`, whose limit is one session.
                let mut elsewhere = one.other_browser();
                elsewhere.address = two.address.clone();
                elsewhere.login_as("alice").await;
            }
            "refresh refused" => {
                sqlx::query(
                    "UPDATE oauth_tokens SET refresh_status = 'needs_login' WHERE token_id = $1",
                )
                .bind(token_id)
                .execute(&one.pool)
                .await
                .unwrap();
            }
            "admin group removed" => {
                sqlx::query("UPDATE users SET groups = '{}' WHERE subject = 'alice'")
                    .execute(&one.pool)
                    .await
                    .unwrap();
            }
            _ => unreachable!(),
        }
        let acted = started.elapsed();
        loop {
            if status_with(&two, &cookie, page).await == gone {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{case}: still served"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        taken.push((case, started.elapsed() - acted));
    }
    println!("seen on the other instance after: {taken:?}");
    for (case, took) in &taken {
        assert!(*took < Duration::from_secs(1), "{case}: {took:?}");
    }
    stop.cancel();
}

#[sqlx::test]
async fn a_cut_notification_connection_turns_the_cache_off_until_it_is_back(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let proxy = TcpProxy::start(db.get_host(), db.get_port()).await;
    let listen = url_of(&db, Some(proxy.port()));
    let app = spawn_app_with(opts, db, move |s| {
        s.database.listen_url = Some(listen.into())
    })
    .await;
    let stop = CancellationToken::new();
    listening(&app, &stop).await;
    app.login_as("alice").await;
    assert_eq!(app.get("/orders").await.status().as_u16(), 200);
    assert!(!app.state.sessions.is_empty());

    proxy.set_down(true);
    let deaf_after = until(Duration::from_secs(3), "the cache turns off", || {
        !app.state.hearing.usable()
    })
    .await;
    println!("cache off {deaf_after:?} after the cut");
    assert!(app.state.sessions.is_empty(), "and forgets");
    // A revoke this instance cannot hear of takes effect on its next request all the same.
    sqlx::query("DELETE FROM oauth_tokens")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_redirect_to(&app.get("/orders").await, "/login?return_to=%2Forders");

    proxy.set_down(false);
    until(Duration::from_secs(5), "the cache is back", || {
        app.state.hearing.usable()
    })
    .await;
    stop.cancel();
}

#[sqlx::test]
async fn expiry_holds_for_a_cached_session(opts: PgPoolOptions, db: PgConnectOptions) {
    let app = spawn_app_with(opts, db, |_| {}).await;
    let stop = CancellationToken::new();
    listening(&app, &stop).await;
    app.login_as("alice").await;
    assert_eq!(app.get("/orders").await.status().as_u16(), 200);
    assert_eq!(app.get("/orders").await.status().as_u16(), 200);

    // The absolute expiry arrives while the session sits in memory.
    sqlx::query(
        "UPDATE sessions SET absolute_expires_at = now() + interval '1 second',
                             expires_at = now() + interval '1 second'",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    assert_eq!(app.get("/orders").await.status().as_u16(), 200, "not yet");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_redirect_to(&app.get("/orders").await, "/login?return_to=%2Forders");

    // Idle expiry moved into the past by someone else.
    let other = app.other_browser();
    other.login_as("bob").await;
    assert_eq!(other.get("/orders").await.status().as_u16(), 200);
    sqlx::query(
        "UPDATE sessions SET expires_at = now() - interval '1 second' WHERE token_id IS NOT NULL",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    until_logged_out(&other, "/orders").await;
    stop.cancel();
}

#[sqlx::test]
async fn an_order_placed_anywhere_shows_in_the_cached_list_within_a_second(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let (one, two, stop) = two_listening_instances(opts, db, |_| {}).await;
    storefront::shop::demo::load(&one.pool).await.unwrap();
    let cookie = session_cookie(&one.login_as("alice").await);
    let list = || async {
        reqwest::Client::new()
            .get(two.url("/orders"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let before = list().await;
    assert_eq!(before, list().await, "cached");
    let (user_id, product_id): (uuid::Uuid, i64) = sqlx::query_as(
        "SELECT (SELECT user_id FROM users WHERE subject = 'alice'),
                (SELECT product_id FROM products WHERE slug = 'ceramic-mug')",
    )
    .fetch_one(&one.pool)
    .await
    .unwrap();
    let mut cart = storefront::shop::cart::Cart::default();
    cart.replay(&storefront::shop::cart::CartChange::Add {
        product_id,
        quantity: 1,
    });
    let started = Instant::now();
    storefront::shop::orders::place_order(&one.pool, user_id, uuid::Uuid::new_v4(), &cart)
        .await
        .unwrap();
    loop {
        if list().await.contains("Ceramic Mug") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the new order is listed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("listed on the other instance after {:?}", started.elapsed());
    stop.cancel();
}
