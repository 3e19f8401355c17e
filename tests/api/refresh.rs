//! The token lifecycle: background refresh ahead of expiry, exactly once across instances,
//! single flight for concurrent requests, backoff through provider outages, `invalid_grant`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use storefront::auth::refresh::Outcome;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::fake_idp::{FakeIdp, TokenEndpoint};
use crate::helpers::{
    TestApp, assert_redirect_to, location, same_secrets, spawn_app_with, spawn_app_with_idp,
};
use crate::helpers::{TestLogin, use_token_keys};

/// Runs the app's background refresher until the returned token is cancelled.
pub(crate) fn start_refresher(app: &TestApp) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let task = tokio::spawn(app.state.refresher.clone().run_until_stopped(stop.clone()));
    (stop, task)
}

async fn access_expiry(pool: &PgPool) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT access_expires_at FROM oauth_tokens")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn expire_access_tokens(pool: &PgPool) {
    sqlx::query("UPDATE oauth_tokens SET access_expires_at = now()")
        .execute(pool)
        .await
        .unwrap();
}

/// Polls `check` every 100 ms until it holds or `within` passes.
pub(crate) async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[sqlx::test]
async fn a_token_is_refreshed_before_it_expires_without_any_request(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app_with(opts, db, |_| {}).await;
    app.idp.set_access_ttl(10);
    app.login_as("alice").await;
    let first_expiry = access_expiry(&app.pool).await;
    let (stop, task) = start_refresher(&app);

    // Waits for the answer to be stored, not only for the call (the provider counts a call
    // before the refresher has written what it returned).
    eventually(Duration::from_secs(15), "a background refresh", || async {
        access_expiry(&app.pool).await > first_expiry
    })
    .await;
    let refreshed_at: DateTime<Utc> =
        sqlx::query_scalar("SELECT last_refreshed_at FROM oauth_tokens")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(
        refreshed_at < first_expiry,
        "refreshed ahead of expiry ({refreshed_at} < {first_expiry})"
    );
    assert_eq!(app.idp.refresh_calls.load(Ordering::SeqCst), 1);
    // The session now uses the new token without a refresh of its own.
    assert_eq!(app.get("/profile").await.status().as_u16(), 200);
    assert_eq!(app.idp.refresh_calls.load(Ordering::SeqCst), 1);
    stop.cancel();
    task.await.unwrap();
    assert_eq!(app.state.refresher.stats().total(Outcome::Ok), 1);
    let recorded: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(count), 0)::bigint FROM activity_stats WHERE event = 'refresh_ok'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(recorded, 1, "outcome written for the dashboard");
}

#[sqlx::test]
async fn concurrent_requests_on_two_instances_share_one_refresh(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    // Two instances' request pools (6 each) and background pools (4 each) within the 20
    // connections `#[sqlx::test]` lends its pools.
    let more_connections = |s: &mut storefront::configuration::Settings| {
        s.database.max_connections = 6;
    };
    let one = spawn_app_with(opts.clone(), db.clone(), more_connections).await;
    let two = spawn_app_with_idp(opts, db, one.idp.clone(), |s| {
        more_connections(s);
        same_secrets(s, &one);
    })
    .await;
    one.login_as("alice").await;
    expire_access_tokens(&one.pool).await;

    // The same browser session (cookie) hits both instances 25 times each, all at once. The
    // provider enforces single-use rotation: a second use of the refresh token would fail and
    // revoke the family.
    let cookie_jar_client = one.client.clone();
    let requests = (0..50).map(|i| {
        let base = if i % 2 == 0 {
            one.address.clone()
        } else {
            two.address.clone()
        };
        let client = cookie_jar_client.clone();
        async move {
            client
                .get(format!("{base}/profile"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    let statuses = futures_util::future::join_all(requests).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(one.idp.refresh_calls.load(Ordering::SeqCst), 1);
    assert_eq!(one.idp.reuses.load(Ordering::SeqCst), 0);
}

/// Logins created directly in the database: one user and one token row each, with a refresh
/// token the provider knows and an access token that is already due.
pub(crate) async fn seed_logins(app: &TestApp, n: usize) {
    let mut tx = app.pool.begin().await.unwrap();
    for i in 0..n {
        let sub = format!("user{i}");
        TestLogin::new(&sub)
            .refresh_token(app.idp.issue_refresh_token(&sub))
            .expires_in(Duration::ZERO)
            .insert(app, &mut tx)
            .await;
    }
    tx.commit().await.unwrap();
}

#[sqlx::test]
async fn three_instances_refresh_a_thousand_tokens_exactly_once(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let idp = FakeIdp::start().await;
    idp.set_access_ttl(3600);
    let small_batches = |s: &mut storefront::configuration::Settings| {
        s.refresh.batch_size = 50;
    };
    let first = spawn_app_with_idp(opts.clone(), db.clone(), idp.clone(), small_batches).await;
    let mut apps = vec![first.clone()];
    for _ in 0..2 {
        let app = spawn_app_with_idp(opts.clone(), db.clone(), idp.clone(), |s| {
            small_batches(s);
            same_secrets(s, &first);
        })
        .await;
        apps.push(app);
    }
    seed_logins(&first, 1000).await;
    let runners: Vec<_> = apps.iter().map(start_refresher).collect();

    eventually(Duration::from_secs(120), "all 1000 refreshed", || async {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM oauth_tokens WHERE access_expires_at < now() + interval '10 minutes'",
        )
        .fetch_one(&first.pool)
        .await
        .unwrap();
        left == 0
    })
    .await;
    let mut per_instance = Vec::new();
    for ((stop, task), app) in runners.into_iter().zip(&apps) {
        stop.cancel();
        task.await.unwrap();
        per_instance.push(app.state.refresher.stats().total(Outcome::Ok));
    }
    assert_eq!(
        idp.refresh_calls.load(Ordering::SeqCst),
        1000,
        "{per_instance:?}"
    );
    assert_eq!(idp.reuses.load(Ordering::SeqCst), 0, "no token used twice");
    assert_eq!(per_instance.iter().sum::<u64>(), 1000);
    let unhealthy: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM oauth_tokens WHERE refresh_status <> 'ok' OR refresh_claim IS NOT NULL",
    )
    .fetch_one(&first.pool)
    .await
    .unwrap();
    assert_eq!(unhealthy, 0);
}

#[sqlx::test]
async fn a_provider_outage_keeps_sessions_and_refreshes_after_it_returns(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app_with(opts, db, |_| {}).await;
    app.idp.set_access_ttl(10);
    app.login_as("alice").await;
    app.idp.set_token_endpoint(TokenEndpoint::Status(503));
    let (stop, task) = start_refresher(&app);

    // 30 s of outage: first the access token still works, then the shopper is told the
    // provider is unavailable; never logged out.
    let outage_ends = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut saw_unavailable = false;
    while tokio::time::Instant::now() < outage_ends {
        let response = app.get("/profile").await;
        match response.status().as_u16() {
            200 => {}
            503 => {
                let html = response.text().await.unwrap();
                assert!(html.contains("retrying"), "{html}");
                saw_unavailable = true;
            }
            other => panic!("unexpected {other} during the outage"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert!(
        saw_unavailable,
        "the access token expired during the outage"
    );
    let (status, failures): (String, i32) =
        sqlx::query_as("SELECT refresh_status, failure_count FROM oauth_tokens")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(status, "retrying");
    assert!(failures >= 3, "backed off and retried ({failures})");
    // Backoff is capped (3 s in tests), so the calls stayed few.
    let calls = app.idp.refresh_calls.load(Ordering::SeqCst);
    assert!(calls <= 20, "no refresh storm: {calls} calls in 30 s");
    assert_eq!(app.logged_in_sessions().await, 1);

    app.idp.set_token_endpoint(TokenEndpoint::Normal);
    eventually(
        Duration::from_secs(10),
        "refreshed after the outage",
        || async {
            sqlx::query_scalar::<_, String>("SELECT refresh_status FROM oauth_tokens")
                .fetch_one(&app.pool)
                .await
                .unwrap()
                == "ok"
        },
    )
    .await;
    assert_eq!(app.get("/profile").await.status().as_u16(), 200);
    stop.cancel();
    task.await.unwrap();
    assert!(app.state.refresher.stats().total(Outcome::TransientFailure) >= 3);
}

/// A logged-in app whose access token has expired and whose refresh token the provider has
/// revoked.
async fn refused_login(opts: PgPoolOptions, db: PgConnectOptions) -> TestApp {
    let app = spawn_app_with(opts, db, |_| {}).await;
    app.login_as("alice").await;
    expire_access_tokens(&app.pool).await;
    app.idp.revoke_refresh_tokens();
    app
}

#[sqlx::test]
async fn a_refused_refresh_token_sends_the_next_request_to_login(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = refused_login(opts, db).await;
    // The background refresher meets the refusal first.
    let claimed = app
        .state
        .refresher
        .refresh_due(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(claimed, 1);
    let status: String = sqlx::query_scalar("SELECT refresh_status FROM oauth_tokens")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(status, "needs_login");

    // Any page: to login, with the page kept as return_to.
    let response = app.get("/?page=2").await;
    assert_redirect_to(&response, "/login?return_to=%2F%3Fpage%3D2");
    assert_redirect_to(&app.get("/profile").await, "/login?return_to=%2Fprofile");
    // /login explains, and its link starts a fresh login that comes back to the page.
    let page = app.get("/login?return_to=/profile").await;
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("Please log in again"), "{html}");
    let doc = scraper::Html::parse_document(&html);
    let link = doc
        .select(&scraper::Selector::parse("a#login-again").unwrap())
        .next()
        .and_then(|a| a.value().attr("href"))
        .expect("a link to log in again");
    assert_eq!(link, "/login?return_to=%2Fprofile");
    // The session itself (and so the cart) is kept, without the dead login.
    let (sessions, logged_in): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(token_id) FROM sessions")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((sessions, logged_in), (1, 0));
    let again = app.get("/login?return_to=/profile").await;
    assert_eq!(again.status().as_u16(), 302);
    assert!(location(&again).starts_with(&app.idp.issuer));
    assert_eq!(
        app.idp.refresh_calls.load(Ordering::SeqCst),
        1,
        "no retries"
    );
}

#[sqlx::test]
async fn an_inline_refresh_refused_sends_the_request_to_login(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = refused_login(opts, db).await;
    assert_redirect_to(&app.get("/profile").await, "/login?return_to=%2Fprofile");
    assert_eq!(app.state.refresher.stats().total(Outcome::InvalidGrant), 1);
}

#[sqlx::test]
async fn shutdown_finishes_or_releases_every_claim(opts: PgPoolOptions, db: PgConnectOptions) {
    let app = spawn_app_with(opts, db, |s| {
        // Two calls a second: most of the batch is still waiting when the stop comes.
        s.refresh.max_per_sec = 2;
    })
    .await;
    seed_logins(&app, 20).await;
    let (stop, task) = start_refresher(&app);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the refresher stops promptly")
        .unwrap();
    let (claimed, refreshed): (i64, i64) = sqlx::query_as(
        r#"SELECT count(*) FILTER (WHERE refresh_claim IS NOT NULL),
                  count(*) FILTER (WHERE access_expires_at > now() + interval '1 minute')
           FROM oauth_tokens"#,
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(claimed, 0, "no claim left behind");
    let calls = app.idp.refresh_calls.load(Ordering::SeqCst) as i64;
    assert!(calls > 0 && calls < 20, "stopped mid-batch ({calls} calls)");
    assert_eq!(refreshed, calls, "every call's result was stored");
}

#[sqlx::test]
async fn refresh_traffic_is_capped_per_instance(opts: PgPoolOptions, db: PgConnectOptions) {
    let app = spawn_app_with(opts, db, |s| s.refresh.max_concurrency = 3).await;
    app.idp
        .set_token_endpoint(TokenEndpoint::Delay(Duration::from_millis(200)));
    seed_logins(&app, 12).await;
    let claimed = app
        .state
        .refresher
        .refresh_due(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(claimed, 12);
    assert_eq!(app.idp.refresh_calls.load(Ordering::SeqCst), 12);
    assert_eq!(
        app.idp.max_in_flight.load(Ordering::SeqCst),
        3,
        "never more than refresh.max_concurrency calls at once"
    );
}

#[sqlx::test]
async fn invalid_grant_after_another_instance_refreshed_keeps_the_login(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app_with(opts, db, |_| {}).await;
    seed_logins(&app, 1).await;
    // The provider is slow; while our call is in flight, another instance (whose lease we
    // pretend lapsed) stores newer tokens, and the provider then refuses our now-stale token.
    app.idp
        .set_token_endpoint(TokenEndpoint::Delay(Duration::from_millis(2000)));
    let calls = app.idp.token_calls.load(Ordering::SeqCst);
    let refresher = app.state.refresher.clone();
    let scan = tokio::spawn(async move { refresher.refresh_due(&CancellationToken::new()).await });
    // Claimed, and the call is at the provider (which looks at the token after its delay).
    eventually(Duration::from_secs(10), "the refresh call", || async {
        app.idp.token_calls.load(Ordering::SeqCst) > calls
    })
    .await;
    sqlx::query(
        r#"UPDATE oauth_tokens
           SET refresh_token = refresh_token || '\x00'::bytea,
               access_expires_at = now() + interval '1 hour'"#,
    )
    .execute(&app.pool)
    .await
    .unwrap();
    app.idp.revoke_refresh_tokens();
    assert_eq!(scan.await.unwrap().unwrap(), 1);

    let (status, claim): (String, Option<Uuid>) =
        sqlx::query_as("SELECT refresh_status, refresh_claim FROM oauth_tokens")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        status, "ok",
        "the newer tokens are kept, not marked needs-login"
    );
    assert_eq!(claim, None, "the claim was released");
    let stats = app.state.refresher.stats();
    assert_eq!(stats.total(Outcome::RaceRecovered), 1);
    assert_eq!(stats.total(Outcome::InvalidGrant), 0);
}

#[sqlx::test]
async fn tokens_shorter_lived_than_the_lead_are_refreshed_about_once_per_lifetime(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    // Lead 300 s, tokens living 4 s: each is refreshed at half its lifetime, not every scan.
    let app = spawn_app_with(opts, db, |s| s.refresh.lead_secs = 300).await;
    app.idp.set_access_ttl(4);
    app.login_as("alice").await;
    let (stop, task) = start_refresher(&app);
    let elapsed = Duration::from_secs(12);
    tokio::time::sleep(elapsed).await;
    stop.cancel();
    task.await.unwrap();
    let grants = app.idp.refresh_calls.load(Ordering::SeqCst);
    // Every 2 s (half of 4 s) plus up to one 1 s scan: 4 to 6 grants in 12 s, where a due rule
    // of "expires within 300 s" would refresh on every scan (12).
    println!("{grants} refresh grants in {elapsed:?} with 4 s tokens");
    assert!((4..=6).contains(&grants), "{grants} grants");
    assert_eq!(app.get("/profile").await.status().as_u16(), 200);
}

#[sqlx::test]
async fn tokens_survive_key_rotation_with_a_provider_that_keeps_its_refresh_token(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let (k1, k2) = (
        crate::helpers::random_b64(32),
        crate::helpers::random_b64(32),
    );
    let idp = FakeIdp::start().await;
    idp.set_rotation(false);
    let old = spawn_app_with_idp(opts.clone(), db.clone(), idp.clone(), |s| {
        use_token_keys(s, "k1", &k1, &[]);
    })
    .await;
    old.login_as("alice").await;
    let bob = old.other_browser();
    bob.login_as("bob").await;

    // Rotated: k2 seals, k1 still opens.
    let rotated = spawn_app_with_idp(opts.clone(), db.clone(), idp.clone(), |s| {
        same_secrets(s, &old);
        use_token_keys(s, "k2", &k2, &[("k1", &k1)]);
    })
    .await;
    // A refresh that returns no refresh token re-seals the one kept, under k2.
    sqlx::query("UPDATE oauth_tokens SET access_expires_at = now()")
        .execute(&old.pool)
        .await
        .unwrap();
    let stop = CancellationToken::new();
    assert_eq!(rotated.state.refresher.refresh_due(&stop).await.unwrap(), 2);
    assert_eq!(rotated.state.refresher.stats().total(Outcome::Ok), 2);
    let keys: Vec<String> = sqlx::query_scalar("SELECT DISTINCT key_id FROM oauth_tokens")
        .fetch_all(&old.pool)
        .await
        .unwrap();
    assert_eq!(keys, ["k2"]);

    // With k1 retired, both logins still refresh, and logging out revokes at the provider.
    let retired = spawn_app_with_idp(opts, db, idp.clone(), |s| {
        same_secrets(s, &old);
        use_token_keys(s, "k2", &k2, &[]);
    })
    .await;
    sqlx::query("UPDATE oauth_tokens SET access_expires_at = now()")
        .execute(&old.pool)
        .await
        .unwrap();
    assert_eq!(retired.state.refresher.refresh_due(&stop).await.unwrap(), 2);
    assert_eq!(retired.state.refresher.stats().total(Outcome::Ok), 2);
    assert_eq!(
        retired.state.refresher.stats().total(Outcome::InvalidGrant),
        0
    );
    assert_eq!(idp.reuses.load(Ordering::SeqCst), 0);
}

#[sqlx::test]
async fn the_re_seal_pass_moves_every_login_to_the_current_key(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let (k1, k2) = (
        crate::helpers::random_b64(32),
        crate::helpers::random_b64(32),
    );
    let old = spawn_app_with(opts.clone(), db.clone(), |s| {
        use_token_keys(s, "k1", &k1, &[]);
    })
    .await;
    old.login_as("alice").await;
    let rotated = spawn_app_with_idp(opts, db, old.idp.clone(), |s| {
        same_secrets(s, &old);
        use_token_keys(s, "k2", &k2, &[("k1", &k1)]);
    })
    .await;
    let before = storefront::auth::tokens::key_usage(&old.pool)
        .await
        .unwrap();
    assert_eq!(
        before.iter().map(|u| u.key_id.as_str()).collect::<Vec<_>>(),
        ["k1"]
    );
    let report = storefront::auth::tokens::rekey_all(&rotated.pool, &rotated.state.cipher, 500)
        .await
        .unwrap();
    assert_eq!(report.resealed, 1);
    assert_eq!(report.unreadable, 0);
    let after = storefront::auth::tokens::key_usage(&old.pool)
        .await
        .unwrap();
    assert_eq!(
        after.iter().map(|u| u.key_id.as_str()).collect::<Vec<_>>(),
        ["k2"]
    );
    // The re-sealed login still works through the rotated instance.
    let token_id: Uuid = sqlx::query_scalar("SELECT token_id FROM oauth_tokens")
        .fetch_one(&old.pool)
        .await
        .unwrap();
    let stored = storefront::auth::tokens::load(&rotated.pool, &rotated.state.cipher, token_id)
        .await
        .unwrap()
        .expect("the login");
    assert!(stored.refresh_token.is_some() && stored.id_token.is_some());
}

#[sqlx::test]
async fn a_bare_400_ends_the_login_and_a_bare_401_keeps_it_and_alerts_the_dashboard(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app_with(opts, db, |s| s.admin.subjects = vec!["alice".into()]).await;
    app.login_as("alice").await;
    let stop = CancellationToken::new();
    let status = || async {
        sqlx::query_scalar::<_, String>("SELECT refresh_status FROM oauth_tokens")
            .fetch_one(&app.pool)
            .await
            .unwrap()
    };

    // 401 with no OAuth error: the shop's own credentials, not the login, are at fault.
    app.idp.set_token_endpoint(TokenEndpoint::Status(401));
    expire_access_tokens(&app.pool).await;
    assert_eq!(app.state.refresher.refresh_due(&stop).await.unwrap(), 1);
    assert_eq!(
        app.state.refresher.stats().total(Outcome::ClientRejected),
        1
    );
    assert_eq!(status().await, "retrying");
    app.idp.set_token_endpoint(TokenEndpoint::Normal);
    let dashboard = app.get("/admin").await.text().await.unwrap();
    assert!(dashboard.contains("id=\"client-rejected\""), "{dashboard}");

    // 400 with an empty or non-OAuth body: RFC 6749 says `invalid_grant`; a new login is due.
    app.idp.set_token_endpoint(TokenEndpoint::Status(400));
    sqlx::query("UPDATE oauth_tokens SET next_attempt_at = NULL, access_expires_at = now()")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(app.state.refresher.refresh_due(&stop).await.unwrap(), 1);
    assert_eq!(app.state.refresher.stats().total(Outcome::InvalidGrant), 1);
    assert_eq!(status().await, "needs_login");
    assert_redirect_to(&app.get("/orders").await, "/login?return_to=%2Forders");
}
