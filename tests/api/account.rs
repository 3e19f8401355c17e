//! The shopper's own sessions: the devices page and its three sign-outs, the per-user
//! session limit, step-up before large orders, and the admin's one-user view.

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::fake_idp::{Grant, Signing};
use crate::helpers::{
    TestApp, assert_redirect_to, attr, page_csrf_token, spawn_app_with, state_and_nonce,
};

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// The session rows of the devices page: (session id, class).
fn rows(html: &str) -> Vec<(String, String)> {
    let doc = scraper::Html::parse_document(html);
    let sel = scraper::Selector::parse("#my-sessions tbody tr").unwrap();
    doc.select(&sel)
        .map(|tr| {
            (
                tr.value().attr("data-session").unwrap().to_owned(),
                tr.value().attr("class").unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

async fn devices_page(app: &TestApp) -> String {
    let page = app.get("/account/sessions").await;
    assert_eq!(page.status().as_u16(), 200);
    page.text().await.unwrap()
}

#[sqlx::test]
async fn a_shopper_sees_their_sessions_and_signs_another_out(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app_with(opts, db, |_| {}).await;
    let phone = app.other_browser();
    let bob = app.other_browser();
    app.login_as("alice").await;
    phone.login_as("alice").await;
    bob.login_as("bob").await;

    let html = devices_page(&app).await;
    let listed = rows(&html);
    assert_eq!(listed.len(), 2, "alice's two sessions, not bob's");
    assert_eq!(
        listed
            .iter()
            .filter(|(_, class)| class == "this-device")
            .count(),
        1
    );
    assert!(
        html.contains("new in the last 24 h"),
        "the other one is new"
    );
    let (phone_session, _) = listed.iter().find(|(_, c)| c != "this-device").unwrap();
    let csrf = page_csrf_token(&html).unwrap();

    let done = app
        .post_form(
            &format!("/account/sessions/{phone_session}/sign-out"),
            &[("csrf_token", &csrf)],
        )
        .await;
    assert_redirect_to(&done, "/account/sessions");
    let html = devices_page(&app).await;
    assert_eq!(rows(&html).len(), 1);
    assert!(html.contains("That session is signed out."), "{html}");
    assert_redirect_to(&phone.get("/orders").await, "/login?return_to=%2Forders");
    assert_eq!(
        app.get("/orders").await.status().as_u16(),
        200,
        "this one stays"
    );
    assert_eq!(
        count(
            &app.pool,
            "SELECT count(*) FROM revocation_outbox WHERE reason = 'signed_out'"
        )
        .await,
        2,
        "its refresh and access tokens are queued for revocation"
    );
    assert_eq!(
        count(
            &app.pool,
            "SELECT count(*) FROM admin_audit
             WHERE action = 'sign_out_session' AND admin_subject = 'alice' AND target_subject = 'alice'
               AND sessions_ended = 1"
        )
        .await,
        1,
        "audited as alice's own action"
    );

    // Someone else's session id ends nothing.
    let bobs: String = sqlx::query_scalar(
        "SELECT s.session_id::text FROM sessions s JOIN logins l USING (token_id) WHERE l.subject = 'bob'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let csrf = page_csrf_token(&devices_page(&app).await).unwrap();
    let done = app
        .post_form(
            &format!("/account/sessions/{bobs}/sign-out"),
            &[("csrf_token", &csrf)],
        )
        .await;
    assert_redirect_to(&done, "/account/sessions");
    assert_eq!(bob.get("/orders").await.status().as_u16(), 200);
    // And without the CSRF token nothing happens at all.
    let forged = app
        .post_form(
            "/account/sessions/sign-out-everywhere",
            &[("csrf_token", "x")],
        )
        .await;
    assert_eq!(forged.status().as_u16(), 403);
    assert_eq!(app.get("/orders").await.status().as_u16(), 200);
    // The page needs a login.
    assert_redirect_to(
        &app.other_browser().get("/account/sessions").await,
        "/login?return_to=%2Faccount%2Fsessions",
    );
}

#[sqlx::test]
async fn sign_out_all_others_then_everywhere(opts: PgPoolOptions, db: PgConnectOptions) {
    let app = spawn_app_with(opts, db, |_| {}).await;
    let others = [app.other_browser(), app.other_browser()];
    app.login_as("alice").await;
    for other in &others {
        other.login_as("alice").await;
    }
    let csrf = page_csrf_token(&devices_page(&app).await).unwrap();
    let done = app
        .post_form(
            "/account/sessions/sign-out-others",
            &[("csrf_token", &csrf)],
        )
        .await;
    assert_redirect_to(&done, "/account/sessions");
    for other in &others {
        assert_redirect_to(&other.get("/orders").await, "/login?return_to=%2Forders");
    }
    let html = devices_page(&app).await;
    assert_eq!(rows(&html).len(), 1);
    assert!(
        html.contains("Your 2 other sessions are signed out."),
        "{html}"
    );

    let csrf = page_csrf_token(&html).unwrap();
    let done = app
        .post_form(
            "/account/sessions/sign-out-everywhere",
            &[("csrf_token", &csrf)],
        )
        .await;
    assert_eq!(done.status().as_u16(), 303);
    let location = done.headers()["location"].to_str().unwrap();
    assert!(
        location.starts_with(&format!("{}/end-session", app.idp.issuer)),
        "RP-initiated logout at the end: {location}"
    );
    assert!(location.contains("id_token_hint="), "{location}");
    assert_redirect_to(&app.get("/orders").await, "/login?return_to=%2Forders");
    assert_eq!(app.logged_in_sessions().await, 0);
    assert_eq!(
        count(
            &app.pool,
            "SELECT count(*) FROM admin_audit WHERE action IN ('sign_out_other_sessions', 'sign_out_everywhere')"
        )
        .await,
        2
    );
}

#[sqlx::test]
async fn a_login_beyond_the_limit_ends_the_least_recently_used_session(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app_with(opts, db, |s| {
        s.session.max_per_user = 2;
        s.admin.max_sessions = 1;
        s.admin.subjects = vec!["carol".into()];
    })
    .await;
    let [old, recent, newest] = [
        app.other_browser(),
        app.other_browser(),
        app.other_browser(),
    ];
    old.login_as("alice").await;
    recent.login_as("alice").await;
    // The first browser was last used an hour ago, the second just now.
    sqlx::query(
        "UPDATE sessions SET last_seen_at = now() - interval '1 hour'
         WHERE session_id = (SELECT session_id FROM sessions ORDER BY created_at LIMIT 1)",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    newest.login_as("alice").await;

    assert_redirect_to(&old.get("/orders").await, "/login?return_to=%2Forders");
    assert_eq!(recent.get("/orders").await.status().as_u16(), 200);
    let page = newest.get("/orders").await;
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.unwrap();
    let notice = attr(&html, "#flash-notice", "role").map(|_| html.clone());
    assert!(
        notice.is_some_and(|h| h.contains("at most 2 devices at once")),
        "the shopper is told which session ended:\n{html}"
    );
    assert!(
        !newest
            .get("/orders")
            .await
            .text()
            .await
            .unwrap()
            .contains("flash-notice"),
        "once"
    );
    assert_eq!(
        count(
            &app.pool,
            "SELECT count(*) FROM admin_audit WHERE action = 'session_limit'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &app.pool,
            "SELECT count(*) FROM revocation_outbox WHERE reason = 'session_limit'"
        )
        .await,
        2
    );

    // Admins have a lower limit: carol may be signed in once.
    let [first, second] = [app.other_browser(), app.other_browser()];
    first.login_as("carol").await;
    second.login_as("carol").await;
    assert_redirect_to(&first.get("/orders").await, "/login?return_to=%2Forders");
    assert_eq!(second.get("/admin").await.status().as_u16(), 200);
}

/// The app with the demo catalogue and step-up above €20.00 within 5 minutes.
async fn step_up_shop(opts: PgPoolOptions, db: PgConnectOptions, acr: &[&str]) -> TestApp {
    let acr: Vec<String> = acr.iter().map(|s| s.to_string()).collect();
    let app = spawn_app_with(opts, db, move |s| {
        s.checkout.step_up_above_cents = 2000;
        s.checkout.step_up_max_age_secs = 300;
        s.checkout.step_up_acr_values = acr;
    })
    .await;
    storefront::shop::demo::load(&app.pool).await.unwrap();
    app
}

/// Logs `sub` in with an authentication `age_secs` old.
async fn log_in_authenticated_ago(app: &TestApp, sub: &str, age_secs: i64) {
    let auth_time = chrono::Utc::now().timestamp() - age_secs;
    let done = app
        .login_with_claims(sub, |c| c["auth_time"] = auth_time.into())
        .await;
    assert_eq!(done.status().as_u16(), 302);
}

async fn add(app: &TestApp, slug: &str, quantity: &str) {
    let id: i64 = sqlx::query_scalar("SELECT product_id FROM products WHERE slug = $1")
        .bind(slug)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let html = app.get("/").await.text().await.unwrap();
    let csrf = page_csrf_token(&html).unwrap();
    let added = app
        .post_form(
            "/cart/items",
            &[
                ("csrf_token", &csrf),
                ("product_id", &id.to_string()),
                ("quantity", quantity),
            ],
        )
        .await;
    assert_eq!(added.status().as_u16(), 303);
}

async fn checkout(app: &TestApp) -> reqwest::Response {
    let html = app.get("/cart").await.text().await.unwrap();
    let csrf = attr(&html, "form.checkout input[name=csrf_token]", "value").unwrap();
    let key = attr(&html, "input[name=idempotency_key]", "value").unwrap();
    app.post_form(
        "/checkout",
        &[("csrf_token", &csrf), ("idempotency_key", &key)],
    )
    .await
}

/// Follows checkout's step-up to the provider; returns the authorize URL's state and nonce
/// and the URL itself.
async fn step_up_at_provider(app: &TestApp) -> (String, String, String) {
    let sent = checkout(app).await;
    assert_redirect_to(&sent, "/login?return_to=%2Fcart&step_up=1");
    let login = app.get("/login?return_to=%2Fcart&step_up=1").await;
    assert_eq!(
        login.status().as_u16(),
        302,
        "logged in, and still sent to the provider"
    );
    let url = login.headers()["location"].to_str().unwrap().to_owned();
    let (state, nonce) = state_and_nonce(&login);
    (state, nonce, url)
}

async fn orders(pool: &PgPool) -> i64 {
    count(pool, "SELECT count(*) FROM orders").await
}

#[sqlx::test]
async fn a_large_order_needs_a_recent_sign_in_and_a_small_one_does_not(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = step_up_shop(opts, db, &[]).await;
    log_in_authenticated_ago(&app, "alice", 3600).await;
    // €9.90: under the threshold, placed at once with an hour-old sign-in.
    add(&app, "notebook-a5", "1").await;
    assert_eq!(checkout(&app).await.status().as_u16(), 303);
    assert_eq!(orders(&app.pool).await, 1);

    // €49.90: over it. Checkout sends alice through the provider with max_age.
    add(&app, "desk-lamp", "1").await;
    let (state, nonce, url) = step_up_at_provider(&app).await;
    assert!(url.contains("max_age=300"), "{url}");
    assert!(!url.contains("acr_values"), "{url}");
    assert_eq!(orders(&app.pool).await, 1, "nothing placed yet");
    let mut claims = app.idp.valid_claims("alice", &nonce);
    claims["auth_time"] = chrono::Utc::now().timestamp().into();
    let code = "code-step-up";
    app.idp.add_code(
        code,
        Grant {
            claims,
            signing: Signing::Key(0),
        },
    );
    let back = app.callback(&[("code", code), ("state", &state)]).await;
    assert_eq!(back.status().as_u16(), 302);
    assert_eq!(back.headers()["location"], "/cart");
    let cart = app.get("/cart").await.text().await.unwrap();
    assert!(
        cart.contains("Large orders need a recent sign-in"),
        "{cart}"
    );
    assert!(
        cart.contains("desk-lamp") || cart.contains("Desk lamp"),
        "the same cart"
    );
    let placed = checkout(&app).await;
    assert_eq!(placed.status().as_u16(), 303);
    assert!(
        placed.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/orders/")
    );
    assert_eq!(orders(&app.pool).await, 2);
    assert_eq!(
        count(&app.pool, "SELECT count(*) FROM oauth_tokens").await,
        1,
        "the re-authentication replaced the old login"
    );
}

#[sqlx::test]
async fn a_refused_or_stale_re_authentication_places_no_order(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = step_up_shop(opts, db, &["gold"]).await;
    log_in_authenticated_ago(&app, "alice", 3600).await;
    add(&app, "desk-lamp", "1").await;

    // The shopper cancels at the provider.
    let (state, _, url) = step_up_at_provider(&app).await;
    assert!(url.contains("acr_values=gold"), "{url}");
    let back = app
        .callback(&[("error", "access_denied"), ("state", &state)])
        .await;
    assert_eq!(back.status().as_u16(), 302);
    assert_eq!(back.headers()["location"], "/cart");
    let cart = app.get("/cart").await.text().await.unwrap();
    assert!(cart.contains("your order was not placed"), "{cart}");

    // The provider answers with an old authentication, or without the acr asked for.
    for edit in [
        (|c: &mut serde_json::Value| {
            c["auth_time"] = (chrono::Utc::now().timestamp() - 3600).into()
        }) as fn(&mut serde_json::Value),
        |c: &mut serde_json::Value| {
            c["auth_time"] = chrono::Utc::now().timestamp().into();
            c["acr"] = "bronze".into();
        },
    ] {
        let (state, nonce, _) = step_up_at_provider(&app).await;
        let mut claims = app.idp.valid_claims("alice", &nonce);
        edit(&mut claims);
        let code = format!("code-{}", uuid::Uuid::new_v4());
        app.idp.add_code(
            &code,
            Grant {
                claims,
                signing: Signing::Key(0),
            },
        );
        let back = app.callback(&[("code", &code), ("state", &state)]).await;
        assert_eq!(back.headers()["location"], "/cart");
        let cart = app.get("/cart").await.text().await.unwrap();
        assert!(cart.contains("We could not confirm it was you"), "{cart}");
    }
    assert_eq!(orders(&app.pool).await, 0);
    assert_eq!(
        app.get("/orders").await.status().as_u16(),
        200,
        "still logged in"
    );

    // With the acr asked for and a fresh authentication, the order goes through.
    let (state, nonce, _) = step_up_at_provider(&app).await;
    let mut claims = app.idp.valid_claims("alice", &nonce);
    claims["auth_time"] = chrono::Utc::now().timestamp().into();
    claims["acr"] = "gold".into();
    app.idp.add_code(
        "code-gold",
        Grant {
            claims,
            signing: Signing::Key(0),
        },
    );
    app.callback(&[("code", "code-gold"), ("state", &state)])
        .await;
    assert_eq!(checkout(&app).await.status().as_u16(), 303);
    assert_eq!(orders(&app.pool).await, 1);
}

#[sqlx::test]
async fn an_admin_opens_one_users_sessions_and_can_end_them_all(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app_with(opts, db, |s| s.admin.subjects = vec!["alice".into()]).await;
    app.login_as("alice").await;
    let [bob1, bob2, carol] = [
        app.other_browser(),
        app.other_browser(),
        app.other_browser(),
    ];
    bob1.login_as("bob").await;
    bob2.login_as("bob").await;
    carol.login_as("carol").await;
    let bob: String = sqlx::query_scalar("SELECT user_id::text FROM users WHERE subject = 'bob'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let all = app.get("/admin/sessions").await.text().await.unwrap();
    assert!(
        all.contains(&format!("/admin/sessions?user={bob}")),
        "each user links to their view"
    );
    let page = app.get(&format!("/admin/sessions?user={bob}")).await;
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.unwrap();
    let doc = scraper::Html::parse_document(&html);
    let sel = scraper::Selector::parse("#sessions tbody tr").unwrap();
    let subjects: Vec<&str> = doc
        .select(&sel)
        .map(|tr| tr.value().attr("data-subject").unwrap())
        .collect();
    assert_eq!(subjects, ["bob", "bob"]);
    assert!(html.contains("End all sessions of"), "{html}");
    let form = attr(&html, "#end-all-of-user", "action").unwrap();
    let csrf = page_csrf_token(&html).unwrap();
    let confirm = app
        .post_form(
            &form,
            &[("csrf_token", &csrf), ("scope", "user"), ("confirm", "yes")],
        )
        .await;
    assert_eq!(confirm.status().as_u16(), 303);
    assert_redirect_to(&bob1.get("/orders").await, "/login?return_to=%2Forders");
    assert_redirect_to(&bob2.get("/orders").await, "/login?return_to=%2Forders");
    assert_eq!(carol.get("/orders").await.status().as_u16(), 200);
    assert_eq!(
        app.get("/admin/sessions?user=not-a-uuid")
            .await
            .status()
            .as_u16(),
        400
    );
}
