use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::sync::atomic::Ordering;

use crate::fake_idp::Signing;
use crate::helpers::{assert_found, assert_redirect_to, location, spawn_app, state_and_nonce};

#[sqlx::test]
async fn login_redirects_to_the_provider_with_state_nonce_and_pkce(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app(opts, db).await;
    let response = app.get("/login?return_to=/profile").await;
    assert_eq!(response.status().as_u16(), 302);
    let url = reqwest::Url::parse(location(&response)).unwrap();
    assert!(
        url.as_str()
            .starts_with(&format!("{}/authorize", app.idp.issuer))
    );
    let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert!(
        q["state"].len() >= 22 && q["nonce"].len() >= 22,
        "≥ 128 bits each"
    );
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["client_id"], crate::fake_idp::CLIENT_ID);
    assert!(q["scope"].split(' ').any(|s| s == "openid"));
    // Nothing secret in the cookie: it is an opaque key.
    let cookie = response.headers()["set-cookie"].to_str().unwrap();
    assert!(!cookie.contains(&q["state"]) && !cookie.contains(&q["nonce"]));
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"));
}

#[sqlx::test]
async fn a_full_login_stores_encrypted_tokens_and_returns_to_the_page(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app(opts, db).await;
    let response = app.login_as("alice").await;
    assert_found(&response, "/profile");
    assert_eq!(app.logged_in_sessions().await, 1);

    let (sub, groups): (String, Vec<String>) = sqlx::query_as("SELECT subject, groups FROM users")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(sub, "alice");
    assert_eq!(groups, vec!["customers"]);
    let dump: String = sqlx::query_scalar("SELECT string_agg(t::text, '|') FROM oauth_tokens t")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(
        !dump.contains("at-") && !dump.contains("rt-"),
        "tokens are encrypted at rest"
    );

    let profile = app.get("/profile").await;
    assert_eq!(profile.status().as_u16(), 200);
    assert_eq!(profile.headers()["cache-control"], "no-store");
    let html = profile.text().await.unwrap();
    assert!(html.contains("alice@example.com"), "claims from userinfo");
}

#[sqlx::test]
async fn several_tabs_can_log_in_at_once(opts: PgPoolOptions, db: PgConnectOptions) {
    let app = spawn_app(opts, db).await;
    let (state_a, nonce_a) = app.start_login("/a").await;
    let (state_b, nonce_b) = app.start_login("/b").await;
    let code_b = app.idp.code_for("bob", &nonce_b);
    assert_found(
        &app.callback(&[("code", &code_b), ("state", &state_b)])
            .await,
        "/b",
    );
    // The first tab's login is still pending, and still completes.
    let code_a = app.idp.code_for("bob", &nonce_a);
    assert_found(
        &app.callback(&[("code", &code_a), ("state", &state_a)])
            .await,
        "/a",
    );
}

#[sqlx::test]
async fn profile_requires_login(opts: PgPoolOptions, db: PgConnectOptions) {
    let app = spawn_app(opts, db).await;
    assert_redirect_to(&app.get("/profile").await, "/login?return_to=%2Fprofile");
}

#[sqlx::test]
async fn profile_refreshes_an_expired_access_token_once(opts: PgPoolOptions, db: PgConnectOptions) {
    let app = spawn_app(opts, db).await;
    app.idp.set_access_ttl(1);
    app.login_as("alice").await;
    assert_eq!(
        app.get("/profile").await.status().as_u16(),
        200,
        "inline refresh"
    );
    assert_eq!(app.idp.refresh_calls.load(Ordering::SeqCst), 1);
}

#[sqlx::test]
async fn logout_needs_a_csrf_token(opts: PgPoolOptions, db: PgConnectOptions) {
    let app = spawn_app(opts, db).await;
    app.login_as("alice").await;
    let response = app.post_form("/logout", &[("csrf_token", "forged")]).await;
    assert_eq!(response.status().as_u16(), 403);
    let response = app.post_form("/logout", &[]).await;
    assert_eq!(response.status().as_u16(), 403);
    assert_eq!(app.logged_in_sessions().await, 1, "still logged in");
}

#[sqlx::test]
async fn logout_revokes_deletes_and_goes_to_the_end_session_endpoint(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app(opts, db).await;
    app.login_as("alice").await;
    let csrf = app.csrf_token().await;
    let response = app.post_form("/logout", &[("csrf_token", &csrf)]).await;
    assert_eq!(response.status().as_u16(), 303);
    let url = reqwest::Url::parse(location(&response)).unwrap();
    assert!(
        url.as_str()
            .starts_with(&format!("{}/end-session", app.idp.issuer))
    );
    let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert!(q.contains_key("id_token_hint") && q.contains_key("state"));
    assert_eq!(q["post_logout_redirect_uri"], format!("{}/", app.address));
    assert_eq!(app.logged_in_sessions().await, 0);
    let tokens: i64 = sqlx::query_scalar("SELECT count(*) FROM oauth_tokens")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(tokens, 0);
    // Queued with the logout in the same statement, sent by the outbox's sender.
    assert_eq!(app.queued_revocations().await, 2);
    assert_eq!(app.send_revocations().await, 2);
    assert_eq!(app.queued_revocations().await, 0);
    assert_eq!(
        app.idp.revocations.load(Ordering::SeqCst),
        2,
        "refresh and access token"
    );
    assert_redirect_to(&app.get("/profile").await, "/login?return_to=%2Fprofile");
}

fn logout_claims(
    app: &crate::helpers::TestApp,
    sub: Option<&str>,
    sid: Option<&str>,
) -> serde_json::Value {
    let now = chrono::Utc::now().timestamp();
    let mut claims = serde_json::json!({
        "iss": app.idp.issuer, "aud": crate::fake_idp::CLIENT_ID, "iat": now, "exp": now + 120,
        "jti": uuid::Uuid::new_v4().to_string(),
        "events": { "http://schemas.openid.net/event/backchannel-logout": {} },
    });
    if let Some(sub) = sub {
        claims["sub"] = sub.into();
    }
    if let Some(sid) = sid {
        claims["sid"] = sid.into();
    }
    claims
}

#[sqlx::test]
async fn backchannel_logout_ends_the_named_sessions(opts: PgPoolOptions, db: PgConnectOptions) {
    let app = spawn_app(opts, db).await;
    app.login_as("alice").await;
    let mut bob_app = app.clone();
    bob_app.client = crate::helpers::browser_client();
    bob_app.login_as("bob").await;
    assert_eq!(app.logged_in_sessions().await, 2);

    let token = app.idp.sign(
        &logout_claims(&app, Some("alice"), Some("sid-alice")),
        Signing::Key(0),
        "logout+jwt",
    );
    let response = app
        .post_form("/backchannel-logout", &[("logout_token", &token)])
        .await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        app.logged_in_sessions().await,
        1,
        "only alice's session ended"
    );
    assert_redirect_to(&app.get("/profile").await, "/login?return_to=%2Fprofile");
    assert_eq!(bob_app.get("/profile").await.status().as_u16(), 200);
}

#[sqlx::test]
async fn invalid_logout_tokens_get_a_400_json_error(opts: PgPoolOptions, db: PgConnectOptions) {
    let app = spawn_app(opts, db).await;
    app.login_as("alice").await;
    let mut with_nonce = logout_claims(&app, Some("alice"), None);
    with_nonce["nonce"] = "n".into();
    let mut no_event = logout_claims(&app, Some("alice"), None);
    no_event["events"] = serde_json::json!({});
    let mut wrong_aud = logout_claims(&app, Some("alice"), None);
    wrong_aud["aud"] = "someone-else".into();
    let cases = [
        app.idp.sign(&with_nonce, Signing::Key(0), "logout+jwt"),
        app.idp.sign(&no_event, Signing::Key(0), "logout+jwt"),
        app.idp.sign(&wrong_aud, Signing::Key(0), "logout+jwt"),
        app.idp.sign(
            &logout_claims(&app, None, None),
            Signing::Key(0),
            "logout+jwt",
        ),
        app.idp.sign(
            &logout_claims(&app, Some("alice"), None),
            Signing::Forged,
            "logout+jwt",
        ),
        app.idp.sign(
            &logout_claims(&app, Some("alice"), None),
            Signing::None,
            "logout+jwt",
        ),
        "not-a-jwt".to_owned(),
    ];
    for token in cases {
        let response = app
            .post_form("/backchannel-logout", &[("logout_token", &token)])
            .await;
        assert_eq!(response.status().as_u16(), 400, "{token}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "invalid_request");
    }
    let response = app.post_form("/backchannel-logout", &[]).await;
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(app.logged_in_sessions().await, 1, "nothing ended");
}

#[sqlx::test]
async fn an_unreachable_provider_leaves_public_pages_up_and_login_answers_503(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = crate::helpers::spawn_app_with(opts, db, |s| {
        // Nothing listens on port 1.
        s.oidc.issuer_url = Some("http://127.0.0.1:1".parse().unwrap());
    })
    .await;
    assert_eq!(app.get("/").await.status().as_u16(), 200);
    let response = app.get("/login").await;
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("Sign-in is temporarily unavailable")
    );
    let health: serde_json::Value = app.get("/health").await.json().await.unwrap();
    assert_eq!(health["identity_provider"], "unavailable");
}

#[sqlx::test]
async fn discovery_is_retried_until_the_provider_answers(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let idp = crate::fake_idp::FakeIdp::start().await;
    idp.set_discovery_down(true);
    // This test polls /login; the rate limit is not what it is about.
    let app =
        crate::helpers::spawn_app_with_idp(opts, db, idp, |s| s.rate_limit.enabled = false).await;
    assert_eq!(app.get("/login").await.status().as_u16(), 503);
    app.idp.set_discovery_down(false);
    // Requests retry discovery at most every 2 s.
    let mut status = 0;
    for _ in 0..30 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        status = app.get("/login").await.status().as_u16();
        if status == 302 {
            break;
        }
    }
    assert_eq!(status, 302, "sign-in works once the provider is back");
    assert_eq!(app.login_as("alice").await.status().as_u16(), 302);
}

#[sqlx::test]
async fn a_provider_that_only_takes_client_secret_post_gets_it(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let idp = crate::fake_idp::FakeIdp::start().await;
    idp.set_secret_post_only();
    let app = crate::helpers::spawn_app_with_idp(opts, db, idp, |_| {}).await;
    assert_found(&app.login_as("alice").await, "/profile");
    assert_eq!(app.logged_in_sessions().await, 1);
}

#[sqlx::test]
async fn a_rejected_access_token_is_refreshed_once_then_the_user_logs_in_again(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app(opts, db).await;
    app.login_as("alice").await;
    // Userinfo answers 401 although the token has not expired: one refresh, then success.
    app.idp.forget_access_tokens();
    assert_eq!(app.get("/profile").await.status().as_u16(), 200);
    assert_eq!(app.idp.refresh_calls.load(Ordering::SeqCst), 1);
    // 401 again, and the refresh token is refused too: back to login.
    app.idp.forget_access_tokens();
    app.idp.revoke_refresh_tokens();
    assert_redirect_to(&app.get("/profile").await, "/login?return_to=%2Fprofile");
    assert_eq!(app.idp.refresh_calls.load(Ordering::SeqCst), 2);
}

#[sqlx::test]
async fn the_header_login_link_comes_back_to_the_page_it_was_on(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app(opts, db).await;
    let log_in_from = |referer: String| {
        let app = app.clone();
        async move {
            let response = app
                .client
                .get(app.url("/login"))
                .header("referer", referer)
                .send()
                .await
                .unwrap();
            let (state, nonce) = state_and_nonce(&response);
            let code = app.idp.code_for("alice", &nonce);
            let callback = app
                .callback(&[("code", &code), ("state", &state), ("iss", &app.idp.issuer)])
                .await;
            let back = location(&callback).to_owned();
            // Log out locally for the next round.
            sqlx::query("DELETE FROM oauth_tokens")
                .execute(&app.pool)
                .await
                .unwrap();
            back
        }
    };
    assert_eq!(
        log_in_from(app.url("/products/ceramic-mug?ref=header")).await,
        "/products/ceramic-mug?ref=header"
    );
    assert_eq!(log_in_from("https://evil.example/phish".into()).await, "/");
    assert_eq!(log_in_from(app.url("/login")).await, "/");
}

#[sqlx::test]
async fn a_userinfo_answer_for_another_subject_is_ignored_with_a_notice(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app(opts, db).await;
    app.login_as("alice").await;
    app.idp.set_userinfo_subject("mallory");
    let page = app.get("/profile").await;
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("answered for another account"), "{html}");
    let doc = scraper::Html::parse_document(&html);
    let sel = scraper::Selector::parse("td[data-claim=sub]").unwrap();
    let sub: String = doc.select(&sel).next().unwrap().text().collect();
    assert_eq!(sub, "alice", "the ID token's subject, not userinfo's");
    assert!(!html.contains("mallory"), "{html}");
}

#[sqlx::test]
async fn logout_tokens_per_spec_and_from_older_providers(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app(opts, db).await;
    let post = |token: String| {
        let app = app.clone();
        async move {
            let response = app
                .post_form("/backchannel-logout", &[("logout_token", &token)])
                .await;
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        }
    };

    // A pre-errata token: `typ: JWT`, no `exp`, a `jti`; and `sid` alone names the session.
    app.login_as("alice").await;
    let mut legacy = logout_claims(&app, None, Some("sid-alice"));
    legacy.as_object_mut().unwrap().remove("exp");
    let token = app.idp.sign(&legacy, Signing::Key(0), "JWT");
    assert_eq!(post(token.clone()).await.0, 200);
    assert_eq!(
        app.logged_in_sessions().await,
        0,
        "the sid-only token ended alice's session"
    );

    // The same token again is a replay.
    let (status, body) = post(token).await;
    assert_eq!(status, 400);
    assert!(body.contains("already used"), "{body}");

    // Without exp and without jti there is nothing to stop a replay: refused, saying why.
    let mut bare = logout_claims(&app, Some("alice"), None);
    let claims = bare.as_object_mut().unwrap();
    claims.remove("exp");
    claims.remove("jti");
    let (status, body) = post(app.idp.sign(&bare, Signing::Key(0), "JWT")).await;
    assert_eq!(status, 400);
    assert!(body.contains("neither exp nor jti"), "{body}");

    // Another typ is not a logout token.
    let (status, body) = post(app.idp.sign(
        &logout_claims(&app, Some("alice"), None),
        Signing::Key(0),
        "at+jwt",
    ))
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("typ"), "{body}");
}
