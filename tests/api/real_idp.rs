//! End to end against the real local OpenID provider (`idp/`, npm `oidc-provider`), with two
//! cookie jars as a browser has: one for the shop, one for the provider.

use std::net::TcpListener;
use std::time::Duration;

use reqwest::Url;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::{TestApp, browser_client, location, random_b64, spawn_on, test_settings};
use crate::provider_login;

pub use crate::provider_login::LocalProvider as RealIdp;

pub async fn spawn_with_real_idp(opts: PgPoolOptions, db: PgConnectOptions) -> (TestApp, RealIdp) {
    spawn_with_real_idp_ttl(opts, db, 3600).await
}

pub async fn spawn_with_real_idp_ttl(
    opts: PgPoolOptions,
    db: PgConnectOptions,
    access_ttl_secs: u32,
) -> (TestApp, RealIdp) {
    spawn_with_real_idp_with(opts, db, access_ttl_secs, |_| {}).await
}

/// As [`spawn_with_real_idp_ttl`], with settings changed by `customize`.
pub async fn spawn_with_real_idp_with(
    opts: PgPoolOptions,
    db: PgConnectOptions,
    access_ttl_secs: u32,
    customize: impl FnOnce(&mut storefront::configuration::Settings),
) -> (TestApp, RealIdp) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let secret = random_b64(24);
    let idp = provider_login::start(&base, &secret, access_ttl_secs).await;
    let mut settings = test_settings(&idp.issuer, "storefront", &secret);
    settings.server.public_url = Url::parse(&base).unwrap();
    // Node answers slowly on a loaded machine; the tests' 2 s is for the fake provider.
    settings.oidc.http_timeout_secs = 10;
    customize(&mut settings);
    let pool = storefront::db::without_reaper(opts).connect_lazy_with(db);
    let fake = crate::fake_idp::FakeIdp::start().await;
    (spawn_on(settings, pool, listener, fake).await, idp)
}

async fn log_in(app: &TestApp, provider: &reqwest::Client, user: &str) {
    let back = provider_login::log_in(&app.client, provider, &app.address, "/profile", user).await;
    assert_eq!(back, "/profile");
}

#[sqlx::test]
async fn login_profile_and_logout_against_the_real_provider(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let (app, idp) = spawn_with_real_idp(opts, db).await;
    let provider = browser_client();
    log_in(&app, &provider, "alice").await;

    let profile = app.get("/profile").await;
    assert_eq!(profile.status().as_u16(), 200);
    let html = profile.text().await.unwrap();
    assert!(html.contains("alice@example.com"), "userinfo claims shown");
    let groups: Vec<String> =
        sqlx::query_scalar("SELECT groups FROM users WHERE subject = 'alice'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(groups, vec!["admins"]);

    let csrf = app.csrf_token().await;
    let response = app.post_form("/logout", &[("csrf_token", &csrf)]).await;
    assert_eq!(response.status().as_u16(), 303);
    let end_session = location(&response).to_owned();
    assert!(end_session.starts_with(&format!("{}/session/end", idp.issuer)));
    assert!(end_session.contains("id_token_hint="));
    assert_eq!(app.logged_in_sessions().await, 0);
    // The provider shows its own "sign out?" page; the browser confirms it.
    let page = provider.get(&end_session).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.unwrap();
    let doc = scraper::Html::parse_document(&html);
    let xsrf = doc
        .select(&scraper::Selector::parse("input[name=xsrf]").unwrap())
        .next()
        .and_then(|e| e.value().attr("value"))
        .expect("the provider's logout form")
        .to_owned();
    let confirm = provider
        .post(format!("{}/session/end/confirm", idp.issuer))
        .form(&[("xsrf", xsrf.as_str()), ("logout", "yes")])
        .send()
        .await
        .unwrap();
    assert_eq!(confirm.status().as_u16(), 303);
    assert!(location(&confirm).starts_with(&format!("{}/", app.address)));
    assert_eq!(
        location(&app.get("/profile").await),
        "/login?return_to=%2Fprofile"
    );
}

#[sqlx::test]
async fn the_real_provider_ends_sessions_by_back_channel(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let (app, idp) = spawn_with_real_idp(opts, db).await;
    log_in(&app, &browser_client(), "bob").await;
    assert_eq!(app.logged_in_sessions().await, 1);
    let ended: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/_test/end-sessions?sub=bob", idp.issuer))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ended["backchannel_logouts_sent"], 1, "{ended}");
    assert_eq!(ended["backchannel_logouts_failed"], 0, "{ended}");
    assert_eq!(app.logged_in_sessions().await, 0);
    assert_eq!(
        location(&app.get("/profile").await),
        "/login?return_to=%2Fprofile"
    );
}

#[sqlx::test]
async fn the_refresher_keeps_a_real_login_alive_past_its_access_token(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    // Access tokens live 10 s; the refresher renews them 5 s ahead.
    let (app, idp) = spawn_with_real_idp_ttl(opts, db, 10).await;
    log_in(&app, &browser_client(), "carol").await;
    let stop = tokio_util::sync::CancellationToken::new();
    let refresher = tokio::spawn(app.state.refresher.clone().run_until_stopped(stop.clone()));
    tokio::time::sleep(Duration::from_secs(12)).await;

    let profile = app.get("/profile").await;
    assert_eq!(profile.status().as_u16(), 200);
    assert!(profile.text().await.unwrap().contains("carol@example.com"));
    let stats: serde_json::Value = reqwest::get(format!("{}/_test/stats", idp.issuer))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let refreshes = stats["grants"]["refresh_token"].as_u64().unwrap();
    assert!(refreshes >= 1, "the provider saw a refresh grant: {stats}");
    assert_eq!(stats["grant_errors"], serde_json::json!({}), "{stats}");
    stop.cancel();
    refresher.await.unwrap();
    assert_eq!(
        app.state
            .refresher
            .stats()
            .total(storefront::auth::refresh::Outcome::Ok),
        refreshes
    );
}
