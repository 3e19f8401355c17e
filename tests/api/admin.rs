//! The admin dashboard: who may see it, the session table's filters and pages, revocation
//! and its audit trail.

use std::sync::atomic::Ordering;

use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

use crate::helpers::TestLogin;
use crate::helpers::{TestApp, assert_redirect_to, spawn_app, spawn_app_with};

fn as_admin(claims: &mut Value) {
    claims["groups"] = json!(["customers", "admins"]);
}

fn other_browser(app: &TestApp) -> TestApp {
    app.other_browser()
}

#[sqlx::test]
async fn anonymous_visitors_log_in_and_non_admins_are_refused(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app(opts, db).await;
    for (path, back) in [
        ("/admin", "/login?return_to=%2Fadmin"),
        ("/admin/sessions", "/login?return_to=%2Fadmin%2Fsessions"),
        ("/admin/audit", "/login?return_to=%2Fadmin%2Faudit"),
    ] {
        assert_redirect_to(&app.get(path).await, back);
    }
    let api = app.get("/admin/api/sessions").await;
    assert_eq!(api.status().as_u16(), 401);
    assert_eq!(
        api.json::<Value>().await.unwrap()["error"],
        "login required"
    );

    app.login_as("bob").await;
    for path in ["/admin", "/admin/sessions", "/admin/audit"] {
        let response = app.get(path).await;
        assert_eq!(response.status().as_u16(), 403, "{path}");
        let html = response.text().await.unwrap();
        assert!(html.contains("administrators only"), "{html}");
    }
    assert_eq!(app.get("/admin/api/sessions").await.status().as_u16(), 403);
    let csrf = app.csrf_token().await;
    let revoke = app
        .post_form(
            &format!("/admin/sessions/{}/revoke", Uuid::new_v4()),
            &[("csrf_token", &csrf), ("confirm", "yes")],
        )
        .await;
    assert_eq!(revoke.status().as_u16(), 403);
}

#[sqlx::test]
async fn admins_by_group_email_or_subject_see_the_dashboard(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app_with(opts, db, |s| {
        s.admin.emails = vec!["Carol@Example.com".into()];
        s.admin.subjects = vec!["dave".into()];
    })
    .await;
    let by_group = other_browser(&app);
    by_group.login_with_claims("alice", as_admin).await;
    let by_email = other_browser(&app);
    by_email.login_as("carol").await;
    let by_subject = other_browser(&app);
    by_subject.login_as("dave").await;
    for admin in [&by_group, &by_email, &by_subject] {
        let page = admin.get("/admin").await;
        assert_eq!(page.status().as_u16(), 200);
        assert_eq!(page.headers()["cache-control"], "no-store");
        let html = page.text().await.unwrap();
        assert!(html.contains("id=\"activity-chart\""));
        let doc = scraper::Html::parse_document(&html);
        let stat = |id: &str| {
            let sel = scraper::Selector::parse(&format!("#{id}")).unwrap();
            doc.select(&sel).next().unwrap().text().collect::<String>()
        };
        assert_eq!(stat("stat-active-sessions"), "3");
        assert_eq!(stat("stat-logins-24h"), "3");
        assert_eq!(stat("stat-users-online"), "3");
        let api = admin.get("/admin/api/sessions").await;
        assert_eq!(api.status().as_u16(), 200);
        assert_eq!(api.headers()["cache-control"], "no-store");
    }
    // Group membership is read at every request: once a new login shows alice without the
    // group, her existing session loses access too.
    other_browser(&app).login_with_claims("alice", |_| {}).await;
    assert_eq!(by_group.get("/admin").await.status().as_u16(), 403);
}

#[sqlx::test]
async fn groups_from_a_refreshed_id_token_take_admin_rights_away(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app(opts, db).await;
    app.login_with_claims("alice", as_admin).await;
    assert_eq!(app.get("/admin").await.status().as_u16(), 200);
    // The provider removes alice from `admins`; her next refresh says so.
    app.idp.set_refresh_groups("alice", &["customers"]);
    sqlx::query("UPDATE oauth_tokens SET access_expires_at = now()")
        .execute(&app.pool)
        .await
        .unwrap();
    let claimed = app
        .state
        .refresher
        .refresh_due(&tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(claimed, 1);
    assert_eq!(app.get("/admin").await.status().as_u16(), 403);
    assert_eq!(
        app.get("/orders").await.status().as_u16(),
        200,
        "still logged in"
    );
}

/// `n` live sessions of `n` users, the i-th seen i minutes ago; every third needs login and
/// every fifth is retrying.
async fn seed_sessions(app: &TestApp, n: usize) {
    let mut tx = app.pool.begin().await.unwrap();
    for i in 0..n {
        let sub = format!("shopper{i:03}");
        let status = if i % 3 == 0 {
            "needs_login"
        } else if i % 5 == 0 {
            "retrying"
        } else {
            "ok"
        };
        TestLogin::new(&sub)
            .email(format!("{sub}@shop.example"))
            .name(format!("Shopper {i}"))
            .provider_sid(format!("sid-{i}"))
            .status(status)
            .with_session(i as i32)
            .insert(app, &mut tx)
            .await;
    }
    tx.commit().await.unwrap();
}

async fn api(app: &TestApp, query: &str) -> Value {
    let response = app.get(&format!("/admin/api/sessions?{query}")).await;
    assert_eq!(response.status().as_u16(), 200, "{query}");
    response.json().await.unwrap()
}

fn subjects(page: &Value) -> Vec<String> {
    page["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["subject"].as_str().unwrap().to_owned())
        .collect()
}

#[sqlx::test]
async fn the_session_table_searches_filters_sorts_and_pages(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app(opts, db).await;
    seed_sessions(&app, 45).await;
    app.login_with_claims("alice", as_admin).await;

    // Keyset pages of 10 cover every session once, most recently seen first.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = api(&app, &format!("limit=10&cursor={cursor}")).await;
        seen.extend(subjects(&page));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen.len(), 46, "45 shoppers and the admin");
    assert_eq!(seen[0], "alice", "the admin was seen last");
    assert_eq!(seen[1], "shopper000");
    assert_eq!(seen[45], "shopper044");
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 46, "no session twice");

    let needs_login = subjects(&api(&app, "status=needs_login&limit=500").await);
    assert_eq!(needs_login.len(), 15);
    assert!(
        needs_login
            .iter()
            .all(|s| s[8..].parse::<u32>().unwrap() % 3 == 0)
    );
    let retrying = api(&app, "status=retrying").await;
    assert!(
        retrying["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["refresh_status"] == "retrying")
    );

    // Search by email or name; `%` is a literal character.
    assert_eq!(subjects(&api(&app, "q=shopper01").await).len(), 10);
    assert_eq!(
        subjects(&api(&app, "q=SHOPPER042%40shop").await),
        vec!["shopper042"]
    );
    assert_eq!(
        subjects(&api(&app, "q=Shopper%207").await),
        vec!["shopper007"]
    );
    assert!(subjects(&api(&app, "q=%25").await).is_empty());

    // Oldest sessions first when sorted by creation, keyset too.
    let created = api(&app, "sort=created&limit=2").await;
    assert_eq!(subjects(&created), vec!["alice", "shopper000"]);
    let next = api(
        &app,
        &format!(
            "sort=created&limit=2&cursor={}",
            created["next_cursor"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(subjects(&next), vec!["shopper001", "shopper002"]);

    // Bad input is a 400 with a reason, never a 500.
    for bad in [
        "status=bogus",
        "sort=password",
        "cursor=xyz",
        "limit=0",
        "limit=100000",
    ] {
        let response = app.get(&format!("/admin/api/sessions?{bad}")).await;
        assert_eq!(response.status().as_u16(), 400, "{bad}");
        assert!(response.json::<Value>().await.unwrap()["error"].is_string());
    }

    // The page shows the same rows, with the browser named and a link to the next page.
    let html = app
        .get("/admin/sessions?status=needs_login")
        .await
        .text()
        .await
        .unwrap();
    let doc = scraper::Html::parse_document(&html);
    let rows = scraper::Selector::parse("tr[data-session]").unwrap();
    assert_eq!(doc.select(&rows).count(), 15);
    assert!(html.contains("Firefox 128 on Linux"));
    assert!(html.contains("needs login"));
    assert_eq!(
        app.get("/admin/sessions?sort=nope").await.status().as_u16(),
        400
    );
}

async fn session_of(pool: &PgPool, subject: &str) -> Vec<Uuid> {
    sqlx::query_scalar(
        r#"SELECT s.session_id FROM sessions s JOIN oauth_tokens t USING (token_id)
           JOIN users u USING (user_id) WHERE u.subject = $1 ORDER BY s.created_at"#,
    )
    .bind(subject)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[sqlx::test]
async fn revoking_ends_the_session_at_once_revokes_the_token_and_is_audited(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let admin = spawn_app(opts, db).await;
    admin.login_with_claims("alice", as_admin).await;
    let bob = other_browser(&admin);
    bob.login_as("bob").await;
    let bob_phone = other_browser(&admin);
    bob_phone.login_as("bob").await;
    assert_eq!(bob.get("/orders").await.status().as_u16(), 200);
    let bob_sessions = session_of(&admin.pool, "bob").await;
    assert_eq!(bob_sessions.len(), 2);

    let csrf = admin.csrf_token().await;
    let path = format!("/admin/sessions/{}/revoke", bob_sessions[0]);
    // Without the CSRF token: refused, nothing ended.
    let forged = admin
        .post_form(&path, &[("csrf_token", "x"), ("confirm", "yes")])
        .await;
    assert_eq!(forged.status().as_u16(), 403);
    // First the confirmation step: nothing ended yet.
    let confirm = admin.post_form(&path, &[("csrf_token", &csrf)]).await;
    assert_eq!(confirm.status().as_u16(), 200);
    let html = confirm.text().await.unwrap();
    assert!(html.contains("id=\"confirm-revoke\""), "{html}");
    assert_eq!(session_of(&admin.pool, "bob").await.len(), 2);

    let done = admin
        .post_form(&path, &[("csrf_token", &csrf), ("confirm", "yes")])
        .await;
    assert_redirect_to(&done, "/admin/sessions?revoked=1");
    // Bob's very next request on that browser is anonymous; his phone is still logged in.
    assert_redirect_to(&bob.get("/orders").await, "/login?return_to=%2Forders");
    assert_eq!(bob_phone.get("/orders").await.status().as_u16(), 200);
    // The refresh and access tokens are queued with the revoke and sent by the outbox.
    assert_eq!(admin.send_revocations().await, 2);
    assert_eq!(admin.idp.revocations.load(Ordering::SeqCst), 2);

    // Then every session of the user.
    let remaining = session_of(&admin.pool, "bob").await;
    let path = format!("/admin/sessions/{}/revoke", remaining[0]);
    let done = admin
        .post_form(
            &path,
            &[("csrf_token", &csrf), ("scope", "user"), ("confirm", "yes")],
        )
        .await;
    assert_redirect_to(&done, "/admin/sessions?revoked=1");
    assert_redirect_to(
        &bob_phone.get("/orders").await,
        "/login?return_to=%2Forders",
    );
    // Revoking what is gone is a 404 page.
    let again = admin
        .post_form(&path, &[("csrf_token", &csrf), ("confirm", "yes")])
        .await;
    assert_eq!(again.status().as_u16(), 404);

    let audit: Vec<(String, String, String, i32, Option<String>)> = sqlx::query_as(
        r#"SELECT admin_subject, action, target_subject, sessions_ended, host(ip)
           FROM admin_audit ORDER BY at"#,
    )
    .fetch_all(&admin.pool)
    .await
    .unwrap();
    assert_eq!(
        audit,
        vec![
            (
                "alice".into(),
                "revoke_session".into(),
                "bob".into(),
                1,
                Some("127.0.0.1".into())
            ),
            (
                "alice".into(),
                "revoke_user_sessions".into(),
                "bob".into(),
                1,
                Some("127.0.0.1".into())
            ),
        ]
    );
    let html = admin.get("/admin/audit").await.text().await.unwrap();
    assert!(html.contains("revoked all sessions of a user"), "{html}");
    assert!(html.contains("bob@example.com"));
    // The admin's own session is untouched.
    assert_eq!(admin.get("/admin").await.status().as_u16(), 200);
}

#[sqlx::test]
async fn a_refreshed_id_token_without_the_groups_claim_means_no_groups(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app(opts, db).await;
    app.login_with_claims("alice", as_admin).await;
    assert_eq!(app.get("/admin").await.status().as_u16(), 200);
    // Okta, Entra ID and Keycloak leave the claim out once the user is in no group.
    sqlx::query("UPDATE oauth_tokens SET access_expires_at = now()")
        .execute(&app.pool)
        .await
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    assert_eq!(app.state.refresher.refresh_due(&stop).await.unwrap(), 1);
    assert_eq!(app.get("/admin").await.status().as_u16(), 403);
    let groups: Vec<String> =
        sqlx::query_scalar("SELECT groups FROM users WHERE subject = 'alice'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(groups.is_empty(), "{groups:?}");
}

#[sqlx::test]
async fn admin_by_email_needs_a_verified_email_and_groups_follow_the_configured_claim(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app_with(opts, db, |s| {
        s.admin.emails = vec!["carol@example.com".into()];
        s.oidc.groups_claim = "realm_access.roles".into();
    })
    .await;
    let unverified = other_browser(&app);
    unverified
        .login_with_claims("carol", |c| c["email_verified"] = serde_json::json!(false))
        .await;
    assert_eq!(unverified.get("/admin").await.status().as_u16(), 403);
    let verified = other_browser(&app);
    verified.login_as("carol").await;
    assert_eq!(verified.get("/admin").await.status().as_u16(), 200);
    // Keycloak puts realm roles under `realm_access.roles`; a top-level `groups` is ignored.
    let keycloak = other_browser(&app);
    keycloak
        .login_with_claims("kim", |c| {
            c["realm_access"] = serde_json::json!({"roles": ["admins"]});
            c["groups"] = serde_json::json!(["customers"]);
        })
        .await;
    assert_eq!(keycloak.get("/admin").await.status().as_u16(), 200);
    let plain = other_browser(&app);
    plain
        .login_with_claims("pat", |c| c["groups"] = serde_json::json!(["admins"]))
        .await;
    assert_eq!(plain.get("/admin").await.status().as_u16(), 403);
}
