//! Providers other than the one in `idp/`, reproduced by the fake provider from their
//! documented behaviour: what a refresh answer holds, which endpoints exist, claim shapes.

use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use storefront::auth::refresh::Outcome;
use tokio_util::sync::CancellationToken;

use crate::fake_idp::FakeIdp;
use crate::helpers::{assert_redirect_to, authorize_param, spawn_app_with_idp};

#[sqlx::test]
async fn google_shaped_provider_refreshes_without_rotation_and_logout_ends_on_our_page(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let idp = FakeIdp::start().await;
    idp.behave_like_google();
    let app = spawn_app_with_idp(opts, db, idp.clone(), |s| {
        s.oidc.extra_auth_params = [("access_type", "offline"), ("prompt", "consent")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into();
    })
    .await;
    let login = app.client.get(app.url("/login")).send().await.unwrap();
    assert_eq!(authorize_param(&login, "access_type"), "offline");
    assert_eq!(authorize_param(&login, "prompt"), "consent");
    app.login_as("alice").await;

    // Three refreshes of the same (unrotated) refresh token, each answer without one.
    let stop = CancellationToken::new();
    for _ in 0..3 {
        sqlx::query("UPDATE oauth_tokens SET access_expires_at = now()")
            .execute(&app.pool)
            .await
            .unwrap();
        assert_eq!(app.state.refresher.refresh_due(&stop).await.unwrap(), 1);
    }
    assert_eq!(app.state.refresher.stats().total(Outcome::Ok), 3);
    let rotates: Option<bool> = sqlx::query_scalar("SELECT refresh_rotates FROM oauth_tokens")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        rotates,
        Some(false),
        "recorded: this provider does not rotate"
    );
    assert_eq!(app.get("/profile").await.status().as_u16(), 200);

    // No end_session_endpoint: logout ends on the shop's own page; no revocation endpoint:
    // nothing is sent.
    let csrf = app.csrf_token().await;
    let logout = app.post_form("/logout", &[("csrf_token", &csrf)]).await;
    assert_redirect_to(&logout, "/signed-out");
    let page = app.get("/signed-out").await;
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.text().await.unwrap().contains("You are signed out"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(idp.revocations.load(Ordering::SeqCst), 0);
    assert_eq!(app.logged_in_sessions().await, 0);
}

#[sqlx::test]
async fn a_login_without_a_refresh_token_works_until_its_access_token_expires(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let idp = FakeIdp::start().await;
    idp.set_refresh_at_login(false);
    idp.set_access_ttl(2);
    let app = spawn_app_with_idp(opts, db, idp.clone(), |_| {}).await;
    app.login_as("alice").await;
    assert_eq!(app.get("/profile").await.status().as_u16(), 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // Then a new login, coming back to the page; no error page.
    assert_redirect_to(&app.get("/profile").await, "/login?return_to=%2Fprofile");
    assert_eq!(idp.refresh_calls.load(Ordering::SeqCst), 0);
}
