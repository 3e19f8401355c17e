use std::collections::HashMap;
use std::time::Duration;

use actix_session::storage::SessionStore;
use actix_web::cookie::time::Duration as CookieDuration;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use storefront::session::cleanup::delete_expired;
use storefront::session::{PgSessionStore, SessionTimeouts};

use crate::helpers::{browser_client, spawn_app, spawn_app_with};

fn store(pool: &PgPool, idle: u64, absolute: u64, touch: u64) -> PgSessionStore {
    PgSessionStore::new(
        pool.clone(),
        SessionTimeouts {
            idle: Duration::from_secs(idle),
            absolute: Duration::from_secs(absolute),
            touch_interval: Duration::from_secs(touch),
        },
    )
}

fn state(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::to_string(v).unwrap()))
        .collect()
}

const TTL: CookieDuration = CookieDuration::hours(1);

#[sqlx::test]
async fn state_round_trips_and_only_the_key_hash_is_stored(pool: PgPool) {
    let store = store(&pool, 3600, 7200, 60);
    let key = store
        .save(state(&[("cart", "two mugs")]), &TTL)
        .await
        .unwrap();
    let loaded = store.load(&key).await.unwrap().expect("session found");
    assert_eq!(loaded["cart"], "\"two mugs\"");
    assert!(key.as_ref().len() >= 43, "256-bit key");

    let dump: String = sqlx::query_scalar("SELECT string_agg(s::text, '|') FROM sessions s")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        !dump.contains(key.as_ref()),
        "the raw key must not be stored"
    );
    let hashes: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sessions WHERE length(key_hash) = 32")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(hashes, 1);
}

#[sqlx::test]
async fn updates_keep_the_key_and_deletes_end_the_session(pool: PgPool) {
    let store = store(&pool, 3600, 7200, 60);
    let key = store.save(state(&[("a", "1")]), &TTL).await.unwrap();
    let same = store.update(key, state(&[("a", "2")]), &TTL).await.unwrap();
    assert_eq!(store.load(&same).await.unwrap().unwrap()["a"], "\"2\"");
    store.delete(&same).await.unwrap();
    assert!(store.load(&same).await.unwrap().is_none());
}

#[sqlx::test]
async fn idle_expiry_ends_a_session(pool: PgPool) {
    let store = store(&pool, 1, 3600, 0);
    let key = store.save(state(&[("a", "1")]), &TTL).await.unwrap();
    assert!(store.load(&key).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(store.load(&key).await.unwrap().is_none());
}

#[sqlx::test]
async fn use_extends_idle_expiry_but_never_past_the_absolute_limit(pool: PgPool) {
    let store = store(&pool, 2, 3, 0);
    let key = store.save(state(&[("a", "1")]), &TTL).await.unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            store.load(&key).await.unwrap().is_some(),
            "kept alive by use"
        );
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        store.load(&key).await.unwrap().is_none(),
        "absolute expiry wins"
    );
}

#[sqlx::test]
async fn loads_do_not_write_until_the_touch_interval_has_passed(pool: PgPool) {
    let store = store(&pool, 3600, 7200, 60);
    let key = store.save(state(&[("a", "1")]), &TTL).await.unwrap();
    let seen = || async {
        sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>("SELECT last_seen_at FROM sessions")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let before = seen().await;
    store.load(&key).await.unwrap();
    assert_eq!(seen().await, before, "no write within the touch interval");
    sqlx::query("UPDATE sessions SET last_seen_at = now() - interval '2 minutes'")
        .execute(&pool)
        .await
        .unwrap();
    let stale = seen().await;
    store.load(&key).await.unwrap();
    assert!(seen().await > stale, "touched once the interval passed");
}

#[sqlx::test]
async fn cleanup_deletes_only_expired_sessions(pool: PgPool) {
    let store = store(&pool, 3600, 7200, 60);
    for _ in 0..7 {
        store.save(state(&[("a", "1")]), &TTL).await.unwrap();
    }
    let live = store.save(state(&[("keep", "me")]), &TTL).await.unwrap();
    sqlx::query("UPDATE sessions SET expires_at = now() - interval '1 second' WHERE state ? 'a'")
        .execute(&pool)
        .await
        .unwrap();
    let report = delete_expired(&pool, 3).await.unwrap();
    assert_eq!(report.sessions, 7, "all expired rows, in batches of 3");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 1);
    assert!(store.load(&live).await.unwrap().is_some());
}

#[sqlx::test]
async fn cleanup_removes_logins_whose_session_was_never_saved(pool: PgPool) {
    // Two logins an hour and a half old: one with a session, one orphaned by a crash; and a
    // fresh orphan that may still be waiting for its session.
    sqlx::query(
        r#"
        WITH u AS (
            INSERT INTO users (user_id, issuer, subject) VALUES (gen_random_uuid(), 'i', 's')
            RETURNING user_id
        ), t AS (
            INSERT INTO oauth_tokens (token_id, user_id, key_id, access_token, access_expires_at,
                                      created_at)
            SELECT id, u.user_id, 'k1', '\x00', now(), created
            FROM u, (VALUES ('00000000-0000-0000-0000-000000000001'::uuid, now() - interval '90 minutes'),
                            ('00000000-0000-0000-0000-000000000002'::uuid, now() - interval '90 minutes'),
                            ('00000000-0000-0000-0000-000000000003'::uuid, now())) AS v(id, created)
            RETURNING token_id
        )
        INSERT INTO sessions (session_id, key_hash, token_id, expires_at, absolute_expires_at)
        SELECT gen_random_uuid(), '\x01', token_id, now() + interval '1 hour', now() + interval '1 day'
        FROM t WHERE token_id = '00000000-0000-0000-0000-000000000001'
        "#,
    )
    .execute(&pool)
    .await
    .unwrap();
    let report = delete_expired(&pool, 10).await.unwrap();
    assert_eq!((report.sessions, report.tokens), (0, 1));
    let left: Vec<String> =
        sqlx::query_scalar("SELECT token_id::text FROM oauth_tokens ORDER BY token_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        left,
        vec![
            "00000000-0000-0000-0000-000000000001",
            "00000000-0000-0000-0000-000000000003"
        ]
    );
}

#[sqlx::test]
async fn cleanup_runs_on_one_instance_at_a_time(pool: PgPool) {
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(0x5e55_c1ea_i64)
        .execute(&mut *holder)
        .await
        .unwrap();
    let report = delete_expired(&pool, 10).await.unwrap();
    assert!(report.skipped, "another instance holds the cleanup lock");
    holder.rollback().await.unwrap();
    assert!(!delete_expired(&pool, 10).await.unwrap().skipped);
}

fn session_cookie(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("storefront_session="))
        .map(|v| v.split(';').next().unwrap().to_owned())
}

#[sqlx::test]
async fn login_renews_the_session_key_and_the_old_cookie_stops_working(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app(opts, db).await;
    let (old_cookie, new_cookie) = {
        let response = app.client.get(app.url("/login")).send().await.unwrap();
        let before = session_cookie(&response).expect("a session cookie for the login");
        let url = reqwest::Url::parse(crate::helpers::location(&response)).unwrap();
        let get = |n: &str| {
            url.query_pairs()
                .find(|(k, _)| k == n)
                .unwrap()
                .1
                .into_owned()
        };
        let code = app.idp.code_for("alice", &get("nonce"));
        let response = app
            .callback(&[("code", &code), ("state", &get("state"))])
            .await;
        assert_eq!(response.status().as_u16(), 302);
        let after = session_cookie(&response).expect("a new cookie at login");
        assert_ne!(before, after, "the session key is renewed at login");
        (before, after)
    };
    // The pre-login cookie is worthless now; the new one is logged in.
    assert!(
        home_page_with(&app, &old_cookie)
            .await
            .contains("id=\"login-link\"")
    );
    assert!(
        home_page_with(&app, &new_cookie)
            .await
            .contains("User alice")
    );
}

/// The home page as a browser holding only `cookie` sees it.
async fn home_page_with(app: &crate::helpers::TestApp, cookie: &str) -> String {
    browser_client()
        .get(app.url("/"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[sqlx::test]
async fn a_tampered_cookie_gives_a_fresh_anonymous_session(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app(opts, db).await;
    assert_eq!(app.login_as("alice").await.status().as_u16(), 302);
    let cookie = app.client.get(app.url("/")).send().await.unwrap();
    assert!(cookie.text().await.unwrap().contains("User alice"));
    let stranger = browser_client();
    for forged in [
        "storefront_session=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "storefront_session=%%%",
        "storefront_session=",
    ] {
        let response = stranger
            .get(app.url("/"))
            .header("cookie", forged)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{forged}");
        assert!(response.text().await.unwrap().contains("id=\"login-link\""));
    }
}

#[sqlx::test]
async fn a_session_survives_an_app_restart(opts: PgPoolOptions, db: PgConnectOptions) {
    let first = spawn_app(opts.clone(), db.clone()).await;
    assert_eq!(first.login_as("alice").await.status().as_u16(), 302);
    let secret = first.settings.session.secret_key.clone();
    let issuer = first.settings.oidc.issuer_url.clone();
    let token_key = first.settings.tokens.encryption_key.clone();
    let mut second = spawn_app_with(opts, db, |s| {
        s.session.secret_key = secret;
        s.oidc.issuer_url = issuer;
        s.tokens.encryption_key = token_key;
    })
    .await;
    // Same browser (cookie jar), another instance on the same database.
    second.client = first.client.clone();
    let html = second.get("/").await.text().await.unwrap();
    assert!(
        html.contains("User alice"),
        "logged in on the second instance"
    );
}
