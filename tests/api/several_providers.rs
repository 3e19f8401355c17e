//! Two real providers at once (the local oidc-provider twice, on two ports): one with a client
//! secret, the other requiring pushed authorization requests (RFC 9126) and authenticating
//! the shop with `private_key_jwt` (RFC 7523), its public key fetched from the shop's
//! `/.well-known/jwks.json`.

use std::net::TcpListener;

use reqwest::Url;
use rsa::pkcs8::EncodePrivateKey;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use storefront::configuration::{ClientKey, Par, ProviderEntry, Settings, TokenEndpointAuthMethod};
use tokio_util::sync::CancellationToken;

use crate::helpers::{
    TestApp, attr, browser_client, location, random_b64, spawn_on, test_settings,
};
use crate::provider_login::{self, LocalProvider};

pub struct TwoProviders {
    pub app: TestApp,
    pub staff: LocalProvider,
    pub shoppers: LocalProvider,
}

fn entry(id: &str, name: &str, issuer: &str) -> ProviderEntry {
    ProviderEntry {
        id: id.into(),
        display_name: Some(name.into()),
        issuer_url: issuer.parse().unwrap(),
        client_id: "storefront".into(),
        client_secret: None,
        redirect_url: None,
        post_logout_redirect_url: None,
        scopes: None,
        groups_claim: None,
        extra_auth_params: None,
        par: None,
        token_endpoint_auth_method: None,
        link_verified_emails: false,
    }
}

/// The shop with provider `staff` (client secret; PAR switched off for it) and provider
/// `shoppers` (PAR required by the provider, private_key_jwt), `customize` applied last.
pub async fn spawn_two(
    opts: PgPoolOptions,
    db: PgConnectOptions,
    customize: impl FnOnce(&mut Settings),
) -> TwoProviders {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let secret = random_b64(24);
    let staff = provider_login::start(&base, &secret, 3600).await;
    let shoppers = provider_login::start_with(
        &base,
        "unused",
        3600,
        &[
            ("IDP_CLIENT_AUTH", "private_key_jwt".into()),
            (
                "IDP_CLIENT_JWKS_URI",
                format!("{base}/.well-known/jwks.json"),
            ),
            ("IDP_REQUIRE_PAR", "1".into()),
        ],
    )
    .await;
    let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
    let pem = key.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF).unwrap();

    let mut settings = test_settings(&staff.issuer, "storefront", &secret);
    settings.server.public_url = Url::parse(&base).unwrap();
    // Node answers slowly on a loaded machine (and the second calls back for the shop's keys).
    settings.oidc.http_timeout_secs = 10;
    settings.oidc.issuer_url = None;
    settings.oidc.client_id = None;
    settings.oidc.client_secret = None;
    settings.admin.providers = vec!["staff".into()];
    settings.oidc.client_keys = vec![ClientKey::from_pem(&pem).unwrap()];
    let mut first = entry("staff", "Staff sign-in", &staff.issuer);
    first.client_secret = Some(secret.into());
    first.par = Some(Par::Off);
    let mut second = entry("shoppers", "Shopper ID", &shoppers.issuer);
    second.token_endpoint_auth_method = Some(TokenEndpointAuthMethod::PrivateKeyJwt);
    // Off here, and pushed anyway: the provider's discovery says it requires it.
    second.par = Some(Par::Off);
    settings.oidc.providers = vec![first, second];
    customize(&mut settings);
    settings.validate().expect("a valid configuration");
    let pool = storefront::db::without_reaper(opts).connect_lazy_with(db);
    let fake = crate::fake_idp::FakeIdp::start().await;
    TwoProviders {
        app: spawn_on(settings, pool, listener, fake).await,
        staff,
        shoppers,
    }
}

/// Logs `user` in at provider `id` in a browser of its own; returns that browser's view.
async fn log_in_at(app: &TestApp, id: &str, user: &str) -> TestApp {
    let browser = app.other_browser();
    let back = provider_login::log_in_with(
        &browser.client,
        &browser_client(),
        &app.address,
        &[("provider", id), ("return_to", "/profile")],
        user,
    )
    .await;
    assert_eq!(back, "/profile");
    browser
}

async fn stats(provider: &LocalProvider) -> serde_json::Value {
    reqwest::get(format!("{}/_test/stats", provider.issuer))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn end_sessions_at(provider: &LocalProvider, sub: &str) -> serde_json::Value {
    reqwest::Client::new()
        .post(format!("{}/_test/end-sessions?sub={sub}", provider.issuer))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn logins_at(app: &TestApp, issuer: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM sessions s JOIN oauth_tokens t USING (token_id) WHERE t.issuer = $1",
    )
    .bind(issuer)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

#[sqlx::test]
async fn two_providers_sign_in_side_by_side_and_end_only_their_own_sessions(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let TwoProviders {
        app,
        staff,
        shoppers,
    } = spawn_two(opts, db, |_| {}).await;

    // The chooser: a page without script, each provider a link that keeps return_to.
    let chooser = app.get("/login?return_to=%2Fcart").await;
    assert_eq!(chooser.status().as_u16(), 200);
    let html = chooser.text().await.unwrap();
    assert_eq!(
        attr(&html, "#provider-staff", "href").as_deref(),
        Some("/login?provider=staff&return_to=%2Fcart")
    );
    assert_eq!(
        attr(&html, "#provider-shoppers", "href").as_deref(),
        Some("/login?provider=shoppers&return_to=%2Fcart")
    );
    assert!(html.contains("Sign in with Shopper ID"), "{html}");
    assert!(!html.contains("<script"), "no script on the chooser");
    // A re-authentication asked for while logged out keeps asking for it at either provider.
    let html = app
        .get("/login?return_to=%2Fcart&step_up=1")
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(
        attr(&html, "#provider-shoppers", "href").as_deref(),
        Some("/login?provider=shoppers&return_to=%2Fcart&step_up=1")
    );
    let unknown = app.get("/login?provider=nobody").await;
    assert_eq!(unknown.status().as_u16(), 400);

    // Staff: a plain authorization request (PAR off), its parameters in the URL.
    let to_staff = app.other_browser().get("/login?provider=staff").await;
    assert_eq!(to_staff.status().as_u16(), 302);
    let staff_url = Url::parse(location(&to_staff)).unwrap();
    assert!(staff_url.as_str().starts_with(&staff.issuer));
    let params: Vec<String> = staff_url
        .query_pairs()
        .map(|(k, _)| k.into_owned())
        .collect();
    assert!(params.contains(&"state".to_owned()) && params.contains(&"code_challenge".into()));
    // Shoppers: pushed first, so the browser sees only the client and a request_uri.
    let to_shoppers = app.other_browser().get("/login?provider=shoppers").await;
    assert_eq!(to_shoppers.status().as_u16(), 302);
    let shoppers_url = Url::parse(location(&to_shoppers)).unwrap();
    assert!(shoppers_url.as_str().starts_with(&shoppers.issuer));
    let mut params: Vec<String> = shoppers_url
        .query_pairs()
        .map(|(k, _)| k.into_owned())
        .collect();
    params.sort();
    assert_eq!(params, ["client_id", "request_uri"]);

    // The shop's public client key, as the second provider fetched it.
    let jwks: serde_json::Value = app
        .get("/.well-known/jwks.json")
        .await
        .json()
        .await
        .unwrap();
    let kid = &app.settings.oidc.client_keys[0].kid;
    assert_eq!(jwks["keys"][0]["kid"], kid.as_str());
    assert_eq!(jwks["keys"][0]["kty"], "RSA");
    assert!(jwks["keys"][0].get("d").is_none(), "no private part");

    // The same person at both: two accounts (keyed by issuer and subject), no merging.
    let at_staff = log_in_at(&app, "staff", "alice").await;
    let at_shoppers = log_in_at(&app, "shoppers", "alice").await;
    let bob = log_in_at(&app, "shoppers", "bob").await;
    let accounts: i64 =
        sqlx::query_scalar("SELECT count(*) FROM users WHERE email = 'alice@example.com'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(accounts, 2);
    assert_eq!(logins_at(&app, &staff.issuer).await, 1);
    assert_eq!(logins_at(&app, &shoppers.issuer).await, 2);
    for browser in [&at_staff, &at_shoppers, &bob] {
        assert_eq!(browser.get("/profile").await.status().as_u16(), 200);
    }
    // Admin rights only through the provider `admin.providers` names: alice is in the
    // `admins` group at both providers, but only her staff sign-in opens the dashboard.
    assert_eq!(at_staff.get("/admin").await.status().as_u16(), 200);
    assert_eq!(at_shoppers.get("/admin").await.status().as_u16(), 403);

    // The admin table names each session's provider.
    let table = at_staff.get("/admin/sessions").await.text().await.unwrap();
    assert!(table.contains("Staff sign-in") && table.contains("Shopper ID"));

    // A refresh of a shoppers login: the token endpoint takes the signed assertion.
    sqlx::query("UPDATE oauth_tokens SET refresh_due_at = now() WHERE issuer = $1")
        .bind(&shoppers.issuer)
        .execute(&app.pool)
        .await
        .unwrap();
    let refreshed = app
        .state
        .refresher
        .refresh_due(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(refreshed, 2);
    let shopper_stats = stats(&shoppers).await;
    assert_eq!(
        shopper_stats["grants"]["refresh_token"], 2,
        "{shopper_stats}"
    );
    assert_eq!(
        shopper_stats["grant_errors"],
        serde_json::json!({}),
        "{shopper_stats}"
    );
    assert_eq!(stats(&staff).await["grants"]["refresh_token"], 0);

    // Back-channel logout from the shoppers provider ends alice's session there only.
    let ended = end_sessions_at(&shoppers, "alice").await;
    assert_eq!(ended["backchannel_logouts_sent"], 1, "{ended}");
    assert_eq!(logins_at(&app, &shoppers.issuer).await, 1, "bob's stays");
    assert_eq!(
        logins_at(&app, &staff.issuer).await,
        1,
        "alice at staff stays"
    );
    assert_eq!(at_shoppers.get("/profile").await.status().as_u16(), 303);
    assert_eq!(at_staff.get("/profile").await.status().as_u16(), 200);
    // And from the staff provider, the staff session only.
    let ended = end_sessions_at(&staff, "alice").await;
    assert_eq!(ended["backchannel_logouts_sent"], 1, "{ended}");
    assert_eq!(logins_at(&app, &staff.issuer).await, 0);
    assert_eq!(logins_at(&app, &shoppers.issuer).await, 1);
    assert_eq!(bob.get("/profile").await.status().as_u16(), 200);

    // Revocations go to each login's own provider, authenticated its own way.
    let queued: Vec<(String, i64)> = sqlx::query_as(
        "SELECT issuer, count(*) FROM revocation_outbox GROUP BY issuer ORDER BY issuer",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(queued.len(), 2, "{queued:?}");
    let before = (
        stats(&staff).await["revocations"].as_i64().unwrap(),
        stats(&shoppers).await["revocations"].as_i64().unwrap(),
    );
    let sent = app.send_revocations().await;
    assert_eq!(sent as i64, queued.iter().map(|(_, n)| n).sum::<i64>());
    assert_eq!(app.queued_revocations().await, 0);
    let after = (
        stats(&staff).await["revocations"].as_i64().unwrap(),
        stats(&shoppers).await["revocations"].as_i64().unwrap(),
    );
    let per_issuer = |issuer: &str| {
        queued
            .iter()
            .find(|(i, _)| i == issuer)
            .map_or(0, |(_, n)| *n)
    };
    assert_eq!(after.0 - before.0, per_issuer(&staff.issuer));
    assert_eq!(after.1 - before.1, per_issuer(&shoppers.issuer));

    // Logging out at the shop sends the browser to its own provider's end-session page.
    let csrf = bob.csrf_token().await;
    let out = bob.post_form("/logout", &[("csrf_token", &csrf)]).await;
    assert_eq!(out.status().as_u16(), 303);
    assert!(location(&out).starts_with(&format!("{}/session/end", shoppers.issuer)));
}

#[sqlx::test]
async fn a_logout_token_of_one_provider_cannot_end_another_providers_sessions(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let TwoProviders { app, staff, .. } = spawn_two(opts, db, |_| {}).await;
    log_in_at(&app, "staff", "carol").await;
    // Unsigned, naming the other provider: refused, nothing ends.
    let forged = format!(
        "e30.{}.",
        base64_url(&serde_json::json!({ "iss": "http://127.0.0.1:1", "sub": "carol" }).to_string())
    );
    let response = reqwest::Client::new()
        .post(app.url("/backchannel-logout"))
        .form(&[("logout_token", forged.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(logins_at(&app, &staff.issuer).await, 1);
}

fn base64_url(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[sqlx::test]
async fn linking_takes_only_verified_emails_and_only_when_configured(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let TwoProviders {
        app,
        staff,
        shoppers,
    } = spawn_two(opts, db, |s| {
        s.oidc.providers[0].link_verified_emails = true;
        s.oidc.providers[1].link_verified_emails = true;
    })
    .await;
    let at_staff = log_in_at(&app, "staff", "alice").await;
    let alice: uuid::Uuid =
        sqlx::query_scalar("SELECT user_id FROM users WHERE issuer = $1 AND subject = 'alice'")
            .bind(&staff.issuer)
            .fetch_one(&app.pool)
            .await
            .unwrap();

    // mallory says she is alice@example.com, unverified: an account of her own.
    let mallory = log_in_at(&app, "shoppers", "mallory").await;
    let mallorys: uuid::Uuid =
        sqlx::query_scalar("SELECT user_id FROM oauth_tokens WHERE subject = 'mallory'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_ne!(mallorys, alice);
    let links: i64 = sqlx::query_scalar("SELECT count(*) FROM linked_identities")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(links, 0);
    assert_eq!(mallory.get("/admin").await.status().as_u16(), 403);

    // alice at the shoppers provider, verified: signed in as the same account…
    let linked = log_in_at(&app, "shoppers", "alice").await;
    let (user_id, issuer): (uuid::Uuid, String) = sqlx::query_as(
        "SELECT user_id, issuer FROM oauth_tokens WHERE subject = 'alice' AND issuer = $1",
    )
    .bind(&shoppers.issuer)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (user_id, issuer.as_str()),
        (alice, shoppers.issuer.as_str())
    );
    let link: (uuid::Uuid, String) = sqlx::query_as(
        "SELECT user_id, email FROM linked_identities WHERE issuer = $1 AND subject = 'alice'",
    )
    .bind(&shoppers.issuer)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(link, (alice, "alice@example.com".to_owned()));
    // …without the staff provider's groups: no dashboard through the other provider.
    assert_eq!(linked.get("/admin").await.status().as_u16(), 403);
    assert_eq!(at_staff.get("/admin").await.status().as_u16(), 200);
    let groups: Vec<String> = sqlx::query_scalar("SELECT groups FROM users WHERE user_id = $1")
        .bind(alice)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(groups, ["admins"], "the account's own groups are kept");
    // One account, two ways in: its devices page lists both, each with its provider.
    let page = linked.get("/account/sessions").await.text().await.unwrap();
    assert!(page.contains("signed in with Staff sign-in"), "{page}");
    assert!(page.contains("signed in with Shopper ID"), "{page}");
}

#[sqlx::test]
async fn an_account_at_a_provider_not_trusted_for_linking_is_never_linked_onto(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    // Only the shoppers provider links: an account made at staff (which is not trusted with
    // emails for linking) could have been registered by someone who merely claimed the address.
    // (Both providers kept running: dropping one stops it.)
    let TwoProviders {
        app,
        staff: _staff,
        shoppers: _shoppers,
    } = spawn_two(opts, db, |s| {
        s.oidc.providers[1].link_verified_emails = true;
    })
    .await;
    log_in_at(&app, "staff", "alice").await;
    log_in_at(&app, "shoppers", "alice").await;
    let accounts: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT user_id) FROM oauth_tokens WHERE subject = 'alice'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(accounts, 2);
    let links: i64 = sqlx::query_scalar("SELECT count(*) FROM linked_identities")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(links, 0);
}

#[sqlx::test]
async fn a_login_whose_provider_is_no_longer_configured_asks_for_a_new_login(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let two = spawn_two(opts, db, |_| {}).await;
    let browser = log_in_at(&two.app, "shoppers", "bob").await;
    // The same database and secrets, configured with the staff provider only.
    let mut settings = two.app.settings.clone();
    settings.oidc.providers.truncate(1);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    settings.server.public_url = Url::parse(&address).unwrap();
    let staff_only = spawn_on(
        settings,
        two.app.pool.clone(),
        listener,
        crate::fake_idp::FakeIdp::start().await,
    )
    .await;
    // The browser's cookie reaches the other instance (cookies ignore the port).
    let profile = browser
        .client
        .get(format!("{address}/profile"))
        .send()
        .await
        .unwrap();
    assert_eq!(location(&profile), "/login?return_to=%2Fprofile");
    // /login explains instead of sending the browser back to /profile (no loop).
    let login = browser
        .client
        .get(format!("{address}/login?return_to=%2Fprofile"))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status().as_u16(), 200);
    assert!(login.text().await.unwrap().contains("log in again"));
    // Its refresh cannot go anywhere: the login needs a new one, not retries forever.
    sqlx::query("UPDATE oauth_tokens SET refresh_due_at = now()")
        .execute(&staff_only.pool)
        .await
        .unwrap();
    staff_only
        .state
        .refresher
        .refresh_due(&CancellationToken::new())
        .await
        .unwrap();
    let status: String = sqlx::query_scalar("SELECT refresh_status FROM oauth_tokens")
        .fetch_one(&staff_only.pool)
        .await
        .unwrap();
    assert_eq!(status, "needs_login");
}
