//! Providers other than the one in `idp/`, reproduced by the fake provider from their
//! documented behaviour: what a refresh answer holds, which endpoints exist, claim shapes.

use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use storefront::auth::refresh::Outcome;
use tokio_util::sync::CancellationToken;

use crate::fake_idp::FakeIdp;
use crate::helpers::{assert_redirect_to, authorize_param, spawn_app_with_idp, use_token_keys};

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

/// A provider's documented behaviour, as far as the shop sees it.
struct Profile {
    /// Access-token lifetime in seconds (scaled down: the ratios are what matter).
    lifetime: u64,
    /// Refresh answers carry a new refresh token and spend the old one.
    rotates: bool,
    /// No end-session or revocation endpoint (Google).
    google: bool,
    /// `oidc.groups_claim`.
    groups_claim: &'static str,
    /// Claims that make alice an admin, in this provider's shape.
    admin: serde_json::Value,
}

/// Login as an admin, background refresh over three lifetimes with a key rotation in the
/// middle, then the groups claim disappears (demotion), then logout.
async fn journey(profile: Profile, opts: PgPoolOptions, db: PgConnectOptions) {
    use serde_json::json;
    let (k1, k2) = (
        crate::helpers::random_b64(32),
        crate::helpers::random_b64(32),
    );
    let idp = FakeIdp::start().await;
    idp.set_access_ttl(profile.lifetime);
    idp.set_rotation(profile.rotates);
    if profile.google {
        idp.behave_like_google();
    }
    let groups_claim = profile.groups_claim.to_owned();
    let before = spawn_app_with_idp(opts.clone(), db.clone(), idp.clone(), |s| {
        s.oidc.groups_claim = groups_claim.clone();
        s.refresh.lead_secs = 300;
        use_token_keys(s, "k1", &k1, &[]);
    })
    .await;
    let admin = profile.admin.clone();
    before
        .login_with_claims("alice", |c| {
            for (k, v) in admin.as_object().unwrap() {
                c[k] = v.clone();
            }
        })
        .await;
    assert_eq!(before.get("/admin").await.status().as_u16(), 200);
    idp.set_refresh_claims("alice", profile.admin.clone());

    let lifetime = Duration::from_secs(profile.lifetime);
    let (stop, task) = crate::refresh::start_refresher(&before);
    tokio::time::sleep(lifetime.mul_f64(1.5)).await;
    stop.cancel();
    task.await.unwrap();
    // The keys rotate: a new instance seals with k2 and still opens k1.
    let after = spawn_app_with_idp(opts, db, idp.clone(), |s| {
        crate::helpers::same_secrets(s, &before);
        s.oidc.groups_claim = groups_claim.clone();
        s.refresh.lead_secs = 300;
        use_token_keys(s, "k2", &k2, &[("k1", &k1)]);
    })
    .await;
    let after = crate::helpers::TestApp {
        client: before.client.clone(),
        ..after
    };
    let (stop, task) = crate::refresh::start_refresher(&after);
    tokio::time::sleep(lifetime.mul_f64(1.5)).await;
    stop.cancel();
    task.await.unwrap();

    // About once per lifetime (at half of it, plus up to a 1 s scan): 3 lifetimes, 3 to 7.
    let grants = idp.refresh_calls.load(Ordering::SeqCst);
    println!("{grants} refresh grants over 3 lifetimes of {lifetime:?}");
    assert!((3..=7).contains(&grants), "{grants} grants");
    assert_eq!(idp.reuses.load(Ordering::SeqCst), 0);
    let keys: Vec<String> = sqlx::query_scalar("SELECT key_id FROM oauth_tokens")
        .fetch_all(&after.pool)
        .await
        .unwrap();
    assert_eq!(
        keys,
        ["k2"],
        "re-sealed by the refreshes after the rotation"
    );
    assert_eq!(after.get("/admin").await.status().as_u16(), 200);

    // The provider drops alice from every group: its ID tokens leave the claim out.
    idp.set_refresh_claims("alice", json!({}));
    sqlx::query("UPDATE oauth_tokens SET refresh_due_at = now()")
        .execute(&after.pool)
        .await
        .unwrap();
    let stop = CancellationToken::new();
    assert_eq!(after.state.refresher.refresh_due(&stop).await.unwrap(), 1);
    assert_eq!(after.get("/admin").await.status().as_u16(), 403);
    assert_eq!(
        after.get("/profile").await.status().as_u16(),
        200,
        "still logged in"
    );

    let csrf = after.csrf_token().await;
    let logout = after.post_form("/logout", &[("csrf_token", &csrf)]).await;
    assert_eq!(logout.status().as_u16(), 303);
    let location = logout.headers()["location"].to_str().unwrap().to_owned();
    if profile.google {
        assert_eq!(location, "/signed-out");
    } else {
        assert!(
            location.starts_with(&format!("{}/end-session", idp.issuer)),
            "{location}"
        );
    }
    // Queued with the logout, sent by the outbox's sender (here, driven by the test).
    after.send_revocations().await;
    let revoked = idp.revocations.load(Ordering::SeqCst);
    assert_eq!(revoked, if profile.google { 0 } else { 2 });
    assert_eq!(after.logged_in_sessions().await, 0);
}

#[sqlx::test]
async fn keycloak(opts: PgPoolOptions, db: PgConnectOptions) {
    // 300 s tokens scaled to 6 s, rotation on, realm roles under realm_access.roles.
    let admin = serde_json::json!({"realm_access": {"roles": ["admins"]}});
    journey(
        Profile {
            lifetime: 6,
            rotates: true,
            google: false,
            groups_claim: "realm_access.roles",
            admin,
        },
        opts,
        db,
    )
    .await;
}

#[sqlx::test]
async fn entra_id(opts: PgPoolOptions, db: PgConnectOptions) {
    // App roles in `roles`; refresh answers keep the old refresh token valid.
    let admin = serde_json::json!({"roles": ["admins"]});
    journey(
        Profile {
            lifetime: 6,
            rotates: false,
            google: false,
            groups_claim: "roles",
            admin,
        },
        opts,
        db,
    )
    .await;
}

#[sqlx::test]
async fn google(opts: PgPoolOptions, db: PgConnectOptions) {
    // No rotation, no end-session or revocation endpoint; groups from a claim of our own.
    let admin = serde_json::json!({"groups": ["admins"]});
    journey(
        Profile {
            lifetime: 6,
            rotates: false,
            google: true,
            groups_claim: "groups",
            admin,
        },
        opts,
        db,
    )
    .await;
}

#[sqlx::test]
async fn okta(opts: PgPoolOptions, db: PgConnectOptions) {
    // Rotation after every use; `groups` omitted once the user is in none.
    let admin = serde_json::json!({"groups": ["admins"]});
    journey(
        Profile {
            lifetime: 6,
            rotates: true,
            google: false,
            groups_claim: "groups",
            admin,
        },
        opts,
        db,
    )
    .await;
}

#[sqlx::test]
async fn auth0(opts: PgPoolOptions, db: PgConnectOptions) {
    // Rotation on; roles only through a namespaced claim set by an Action.
    let admin = serde_json::json!({"https://shop.example/roles": ["admins"]});
    journey(
        Profile {
            lifetime: 6,
            rotates: true,
            google: false,
            groups_claim: "https://shop.example/roles",
            admin,
        },
        opts,
        db,
    )
    .await;
}

/// RFC 9126 against a provider that offers pushed requests: the whole request goes to the
/// provider from the server, authenticated; the browser carries only a reference to it.
#[sqlx::test]
async fn a_pushed_authorization_request_leaves_the_browser_only_a_reference(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let idp = FakeIdp::start().await;
    idp.offer_par(201, false);
    let app = spawn_app_with_idp(opts, db, idp.clone(), |_| {}).await;
    let login = app.get("/login?return_to=%2Fcart").await;
    assert_eq!(login.status().as_u16(), 302);
    assert_eq!(
        crate::helpers::location(&login),
        format!(
            "{}/authorize?client_id=storefront-test&request_uri=urn%3Aietf%3Aparams%3Aoauth%3Arequest_uri%3Afake-123",
            idp.issuer
        )
    );
    let (form, authorization) = idp.last_pushed().expect("the request was pushed");
    for field in ["state", "nonce", "code_challenge", "redirect_uri", "scope"] {
        assert!(form.contains_key(field), "{field} pushed: {form:?}");
    }
    assert_eq!(form["code_challenge_method"], "S256");
    assert_eq!(form["response_type"], "code");
    assert_eq!(form["client_id"], "storefront-test");
    assert!(
        !form.contains_key("client_secret"),
        "the secret goes in the header"
    );
    assert!(authorization.is_some_and(|a| a.starts_with("Basic ")));

    // The login completes with the pushed state and nonce.
    let code = idp.code_for("alice", &form["nonce"]);
    let back = app
        .callback(&[("code", &code), ("state", &form["state"])])
        .await;
    crate::helpers::assert_found(&back, "/cart");

    // `oidc.par = "off"`: the request is in the URL and nothing is pushed.
    let off = FakeIdp::start().await;
    off.offer_par(201, false);
    let app = spawn_app_with_idp(PgPoolOptions::new(), app_db(&app), off.clone(), |s| {
        s.oidc.par = storefront::configuration::Par::Off
    })
    .await;
    let login = app.get("/login").await;
    assert_eq!(authorize_param(&login, "response_type"), "code");
    assert!(off.last_pushed().is_none());
    // …unless the provider demands pushed requests.
    let demands = FakeIdp::start().await;
    demands.offer_par(201, true);
    let app = spawn_app_with_idp(PgPoolOptions::new(), app_db(&app), demands.clone(), |s| {
        s.oidc.par = storefront::configuration::Par::Off
    })
    .await;
    assert_eq!(app.get("/login").await.status().as_u16(), 302);
    assert!(demands.last_pushed().is_some());
}

fn app_db(app: &crate::helpers::TestApp) -> PgConnectOptions {
    app.pool.connect_options().as_ref().clone()
}

#[sqlx::test]
async fn a_pushed_request_the_provider_refuses_or_cannot_take_is_a_clear_error(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    // Down: 503, try again later.
    let down = FakeIdp::start().await;
    down.offer_par(503, false);
    let app = spawn_app_with_idp(opts, db, down, |_| {}).await;
    let login = app.get("/login").await;
    assert_eq!(login.status().as_u16(), 503);
    assert!(login.headers().contains_key("retry-after"));
    assert_eq!(app.logged_in_sessions().await, 0);
    // Refused (the client's credentials): 502, the provider's fault or ours, not the shopper's.
    let refuses = FakeIdp::start().await;
    refuses.offer_par(400, false);
    let app = spawn_app_with_idp(PgPoolOptions::new(), app_db(&app), refuses, |_| {}).await;
    let login = app.get("/login").await;
    assert_eq!(login.status().as_u16(), 502);
    assert!(
        login
            .text()
            .await
            .unwrap()
            .contains("refused to start the sign-in")
    );
    // `par = "required"` and a provider without the endpoint: no sign-in sent unprotected.
    let plain = FakeIdp::start().await;
    let app = spawn_app_with_idp(PgPoolOptions::new(), app_db(&app), plain, |s| {
        s.oidc.par = storefront::configuration::Par::Required
    })
    .await;
    assert_eq!(app.get("/login").await.status().as_u16(), 503);
}
