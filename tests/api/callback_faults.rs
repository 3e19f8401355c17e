//! Every way a callback can be wrong ends in a clear 4xx/5xx page and no logged-in session.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::fake_idp::{Grant, Signing, TokenEndpoint};
use crate::helpers::{TestApp, spawn_app};

/// Starts a login, lets `tamper` change the ID token, and completes the callback.
async fn callback_with(
    app: &TestApp,
    tamper: impl FnOnce(&mut Value),
    signing: Signing,
) -> reqwest::Response {
    let (state, nonce) = app.start_login("/").await;
    let mut claims = app.idp.valid_claims("mallory", &nonce);
    tamper(&mut claims);
    let code = uuid::Uuid::new_v4().to_string();
    app.idp.add_code(&code, Grant { claims, signing });
    app.callback(&[("code", &code), ("state", &state)]).await
}

async fn assert_rejected(app: &TestApp, response: reqwest::Response, status: u16, says: &str) {
    assert_eq!(response.status().as_u16(), status);
    let html = response.text().await.unwrap();
    assert!(html.contains(says), "page should say {says:?}: {html}");
    assert!(
        html.contains("class=\"error-page\""),
        "the shared error page"
    );
    assert_eq!(app.logged_in_sessions().await, 0, "no logged-in session");
}

#[sqlx::test]
async fn id_tokens_that_fail_validation_are_rejected(opts: PgPoolOptions, db: PgConnectOptions) {
    let app = spawn_app(opts, db).await;
    let now = chrono::Utc::now().timestamp();
    type Tamper = Box<dyn FnOnce(&mut Value)>;
    let cases: Vec<(&str, Tamper, Signing)> = vec![
        ("bad signature", Box::new(|_| {}), Signing::Forged),
        ("alg none", Box::new(|_| {}), Signing::None),
        (
            "wrong iss",
            Box::new(|c| c["iss"] = "http://evil.example".into()),
            Signing::Key(0),
        ),
        (
            "wrong aud",
            Box::new(|c| c["aud"] = "another-client".into()),
            Signing::Key(0),
        ),
        (
            "wrong nonce",
            Box::new(|c| c["nonce"] = "guessed".into()),
            Signing::Key(0),
        ),
        (
            "missing nonce",
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("nonce");
            }),
            Signing::Key(0),
        ),
        (
            "expired",
            Box::new(move |c| {
                c["exp"] = (now - 600).into();
                c["iat"] = (now - 900).into();
            }),
            Signing::Key(0),
        ),
        (
            "issued in the future",
            Box::new(move |c| c["iat"] = (now + 3600).into()),
            Signing::Key(0),
        ),
        (
            "foreign azp",
            Box::new(|c| {
                c["aud"] = serde_json::json!([crate::fake_idp::CLIENT_ID, "other"]);
                c["azp"] = "other".into();
            }),
            Signing::Key(0),
        ),
    ];
    for (name, tamper, signing) in cases {
        let response = callback_with(&app, tamper, signing).await;
        assert_eq!(response.status().as_u16(), 403, "{name}");
        let html = response.text().await.unwrap();
        assert!(html.contains("could not be verified"), "{name}: {html}");
        assert_eq!(app.logged_in_sessions().await, 0, "{name}");
    }
}

#[sqlx::test]
async fn a_rotated_signing_key_is_picked_up_by_refetching_the_jwks(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app(opts, db).await;
    let fetched = app.idp.jwks_calls.load(Ordering::SeqCst);
    app.idp.publish_keys(&[1]);
    let response = callback_with(&app, |_| {}, Signing::Key(1)).await;
    assert_eq!(
        response.status().as_u16(),
        302,
        "login succeeds after one JWKS refetch"
    );
    assert_eq!(app.idp.jwks_calls.load(Ordering::SeqCst), fetched + 1);
    assert_eq!(app.logged_in_sessions().await, 1);
}

#[sqlx::test]
async fn an_unknown_kid_does_not_make_us_hammer_the_jwks(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app(opts, db).await;
    app.idp.publish_keys(&[0]);
    let fetched = app.idp.jwks_calls.load(Ordering::SeqCst);
    for _ in 0..3 {
        let response = callback_with(&app, |_| {}, Signing::Key(1)).await;
        assert_eq!(response.status().as_u16(), 403);
    }
    assert_eq!(
        app.idp.jwks_calls.load(Ordering::SeqCst),
        fetched + 1,
        "the first unknown kid refetches once; the next ones within the interval do not"
    );
}

#[sqlx::test]
async fn token_endpoint_failures_give_error_pages_quickly(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app(opts, db).await;
    app.idp.set_token_endpoint(TokenEndpoint::Status(500));
    let response = callback_with(&app, |_| {}, Signing::Key(0)).await;
    assert_eq!(
        response.status().as_u16(),
        502,
        "an error answer that is not OAuth JSON is unusable"
    );
    assert_eq!(app.logged_in_sessions().await, 0);

    app.idp.set_token_endpoint(TokenEndpoint::Garbage);
    let response = callback_with(&app, |_| {}, Signing::Key(0)).await;
    assert_rejected(&app, response, 502, "could not use").await;

    // The test configuration's provider timeout is 2 s.
    app.idp
        .set_token_endpoint(TokenEndpoint::Delay(Duration::from_secs(30)));
    let started = Instant::now();
    let response = callback_with(&app, |_| {}, Signing::Key(0)).await;
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "no hang: {:?}",
        started.elapsed()
    );
    assert_rejected(&app, response, 503, "temporarily unavailable").await;
}

#[sqlx::test]
async fn state_must_match_a_login_started_in_this_session(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app(opts, db).await;
    // Login CSRF: a callback with no login started in this browser.
    let response = app.callback(&[("code", "c"), ("state", "made-up")]).await;
    assert_rejected(
        &app,
        response,
        403,
        "invalid, was already used or has expired",
    )
    .await;
    let (_state, _) = app.start_login("/").await;
    let response = app.callback(&[("code", "c"), ("state", "wrong")]).await;
    assert_rejected(&app, response, 403, "invalid").await;
    let response = app.callback(&[("code", "c")]).await;
    assert_rejected(&app, response, 403, "invalid").await;
    assert_eq!(
        app.idp.token_calls.load(Ordering::SeqCst),
        0,
        "no code was exchanged"
    );
}

#[sqlx::test]
async fn replaying_a_callback_never_exchanges_the_code_twice(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app(opts, db).await;
    let (state, nonce) = app.start_login("/").await;
    let code = app.idp.code_for("alice", &nonce);
    let query = [("code", code.as_str()), ("state", state.as_str())];
    assert_eq!(app.callback(&query).await.status().as_u16(), 302);
    let replay = app.callback(&query).await;
    assert_eq!(replay.status().as_u16(), 403);
    assert_eq!(app.idp.token_calls.load(Ordering::SeqCst), 1);

    // A stolen code replayed from another browser with its own login.
    let mut other = app.clone();
    other.client = crate::helpers::browser_client();
    let (state2, _) = other.start_login("/").await;
    let response = other.callback(&[("code", &code), ("state", &state2)]).await;
    assert_eq!(response.status().as_u16(), 400);
    assert!(response.text().await.unwrap().contains("already used"));
}

#[sqlx::test]
async fn provider_errors_and_mixed_up_issuers_are_explained(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app(opts, db).await;
    let (state, _) = app.start_login("/").await;
    let response = app
        .callback(&[
            ("error", "access_denied"),
            ("error_description", "<script>x</script>"),
            ("state", &state),
        ])
        .await;
    assert_rejected(&app, response, 400, "cancelled").await;

    let (state, _) = app.start_login("/").await;
    let response = app
        .callback(&[
            ("error", "server_error"),
            ("error_description", "<b>boom</b>"),
            ("state", &state),
        ])
        .await;
    assert_eq!(response.status().as_u16(), 400);
    let html = response.text().await.unwrap();
    assert!(
        html.contains("&lt;b&gt;boom&lt;&#x2F;b&gt;") || html.contains("&lt;b&gt;boom"),
        "escaped: {html}"
    );
    assert!(!html.contains("<b>boom</b>"));

    let (state, nonce) = app.start_login("/").await;
    let code = app.idp.code_for("a", &nonce);
    let response = app
        .callback(&[
            ("code", &code),
            ("state", &state),
            ("iss", "http://other-idp.example"),
        ])
        .await;
    assert_rejected(&app, response, 403, "unexpected identity provider").await;
    assert_eq!(app.idp.token_calls.load(Ordering::SeqCst), 0);
}

#[sqlx::test]
async fn return_to_only_accepts_same_site_paths(opts: PgPoolOptions, db: PgConnectOptions) {
    let app = spawn_app(opts, db).await;
    for (attack, expected) in [
        ("https://evil.example/", "/"),
        ("//evil.example", "/"),
        ("/\\evil.example", "/"),
        ("javascript:alert(1)", "/"),
        ("/%2F%2Fevil.example", "/"),
        ("/cart?x=1", "/cart?x=1"),
    ] {
        let mut app = app.clone();
        app.client = crate::helpers::browser_client();
        let (state, nonce) = app.start_login(attack).await;
        let code = app.idp.code_for("alice", &nonce);
        let response = app.callback(&[("code", &code), ("state", &state)]).await;
        crate::helpers::assert_found(&response, expected);
    }
}

#[sqlx::test]
async fn an_oversized_query_string_gets_a_4xx(opts: PgPoolOptions, db: PgConnectOptions) {
    let app = spawn_app(opts, db).await;
    let (state, _) = app.start_login("/").await;
    let huge = "a".repeat(64_000);
    let response = app
        .client
        .get(format!(
            "{}/callback?code={huge}&state={state}",
            app.address
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 414);
    assert!(response.text().await.unwrap().contains("too long"));
    assert_eq!(app.logged_in_sessions().await, 0);
    assert_eq!(
        app.get("/health").await.status().as_u16(),
        200,
        "still serving"
    );
}

#[sqlx::test]
async fn a_callback_without_the_announced_iss_is_refused_before_the_code_is_redeemed(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app(opts.clone(), db.clone()).await;
    let (state, nonce) = app.start_login("/").await;
    let code = app.idp.code_for("alice", &nonce);
    let response = app
        .callback_exactly(&[("code", &code), ("state", &state)])
        .await;
    assert_eq!(response.status().as_u16(), 403);
    assert_eq!(
        app.idp.token_calls.load(Ordering::SeqCst),
        0,
        "code not redeemed"
    );
    assert_eq!(app.logged_in_sessions().await, 0);

    // A provider that does not announce RFC 9207 need not send `iss`.
    let idp = crate::fake_idp::FakeIdp::start().await;
    idp.set_announces_iss(false);
    let quiet = crate::helpers::spawn_app_with_idp(opts, db, idp, |_| {}).await;
    let (state, nonce) = quiet.start_login("/").await;
    let code = quiet.idp.code_for("alice", &nonce);
    let response = quiet
        .callback_exactly(&[("code", &code), ("state", &state)])
        .await;
    assert_eq!(response.status().as_u16(), 302);
}
