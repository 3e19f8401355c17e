//! Refresh-token rotation at its edges, with a provider that rotates strictly (a reused
//! refresh token revokes the whole grant) behind a proxy that delays its answers: a slow
//! answer is stored, never given up and resent.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use storefront::auth::refresh::Outcome;
use storefront::configuration::Settings;
use tokio_util::sync::CancellationToken;

use crate::fake_idp::FakeIdp;
use crate::helpers::{TestApp, TestLogin, same_secrets, spawn_app_with_idp};
use crate::refresh::{eventually, start_refresher};

/// Calls may take 10 s; the provider timeout for everything else stays 2 s.
fn patient(s: &mut Settings) {
    s.refresh.call_timeout_secs = 10;
    s.refresh.lead_secs = 15;
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&app.pool).await.unwrap()
}

#[sqlx::test]
async fn an_answer_later_than_the_page_waits_is_stored_and_the_login_lives_on(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let (idp, proxy) = FakeIdp::start_behind_proxy().await;
    idp.set_access_ttl(1);
    let app = spawn_app_with_idp(opts, db, idp.clone(), patient).await;
    app.login_as("alice").await;
    idp.set_access_ttl(300);
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // The provider rotates at once but its answer takes 3 s: longer than a page waits (2 s)
    // and than the provider timeout of every other call (2 s).
    proxy.delay_responses(Duration::from_secs(3));
    let started = Instant::now();
    let page = app.get("/profile").await;
    let waited = started.elapsed();
    assert_eq!(page.status().as_u16(), 503, "the access token has expired");
    assert_eq!(page.headers()["retry-after"], "5");
    assert!(
        waited < Duration::from_millis(2800),
        "the page gave up after 2 s: {waited:?}"
    );
    proxy.delay_responses(Duration::ZERO);

    // The call went on and its answer was stored: the rotated token is the one in the row.
    eventually(Duration::from_secs(5), "the late answer is stored", || async {
        count(&app, "SELECT count(*) FROM oauth_tokens WHERE access_expires_at > now() + interval '1 minute'").await == 1
    })
    .await;
    assert_eq!(app.get("/profile").await.status().as_u16(), 200);
    assert_eq!(idp.refresh_calls.load(Ordering::SeqCst), 1, "sent once");
    assert_eq!(idp.reuses.load(Ordering::SeqCst), 0);
}

#[sqlx::test]
async fn background_refreshes_answered_late_lose_no_login(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let (idp, proxy) = FakeIdp::start_behind_proxy().await;
    // Room for all twenty calls at once (rows waiting longer than a lease for a free slot are
    // released for any instance to take).
    let app = spawn_app_with_idp(opts, db, idp.clone(), |s| {
        patient(s);
        s.refresh.max_concurrency = 20;
    })
    .await;
    crate::refresh::seed_logins(&app, 20).await;

    proxy.delay_responses(Duration::from_secs(3));
    let stop = CancellationToken::new();
    let claimed = app.state.refresher.refresh_due(&stop).await.unwrap();
    assert_eq!(claimed, 20);
    assert_eq!(app.state.refresher.stats().total(Outcome::Ok), 20);
    assert_eq!(app.state.refresher.stats().total(Outcome::NoAnswer), 0);

    // Every stored (rotated) token still works: refresh them all once more, promptly.
    proxy.delay_responses(Duration::ZERO);
    sqlx::query("UPDATE oauth_tokens SET access_expires_at = now()")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(app.state.refresher.refresh_due(&stop).await.unwrap(), 20);
    assert_eq!(app.state.refresher.stats().total(Outcome::Ok), 40);
    assert_eq!(idp.reuses.load(Ordering::SeqCst), 0, "no token sent twice");
    assert_eq!(
        count(&app, "SELECT count(*) FROM oauth_tokens WHERE refresh_status <> 'ok' OR refresh_token IS NULL OR refresh_claim IS NOT NULL").await,
        0
    );
}

#[sqlx::test]
async fn a_refresh_never_answered_is_not_sent_again_with_a_rotating_token(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let (idp, proxy) = FakeIdp::start_behind_proxy().await;
    let app = spawn_app_with_idp(opts, db, idp.clone(), |s| {
        s.refresh.call_timeout_secs = 2;
        s.refresh.lead_secs = 5;
    })
    .await;
    let mut tx = app.pool.begin().await.unwrap();
    TestLogin::new("alice")
        .refresh_token(idp.issue_refresh_token("alice"))
        .expires_in(Duration::ZERO)
        .insert(&app, &mut tx)
        .await;
    tx.commit().await.unwrap();
    // The provider acts, but its answer would come after the call's deadline.
    proxy.delay_responses(Duration::from_secs(4));
    let stop = CancellationToken::new();
    app.state.refresher.refresh_due(&stop).await.unwrap();
    assert_eq!(app.state.refresher.stats().total(Outcome::NoAnswer), 1);
    proxy.delay_responses(Duration::ZERO);
    assert_eq!(
        app.state.refresher.refresh_due(&stop).await.unwrap(),
        0,
        "nothing to resend"
    );
    assert_eq!(idp.refresh_calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        idp.reuses.load(Ordering::SeqCst),
        0,
        "the grant was never put at risk"
    );
}

#[sqlx::test]
async fn three_instances_and_a_thousand_tokens_with_a_slow_provider_send_no_token_twice(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let (idp, proxy) = FakeIdp::start_behind_proxy().await;
    let busy = |s: &mut Settings| {
        patient(s);
        s.refresh.batch_size = 50;
        s.refresh.max_concurrency = 100;
    };
    let first = spawn_app_with_idp(opts.clone(), db.clone(), idp.clone(), busy).await;
    let mut apps = vec![first.clone()];
    for _ in 0..2 {
        let app = spawn_app_with_idp(opts.clone(), db.clone(), idp.clone(), |s| {
            busy(s);
            same_secrets(s, &first);
        })
        .await;
        apps.push(app);
    }
    crate::refresh::seed_logins(&first, 1000).await;

    // For 20 s every answer takes 2.5 s: longer than any page waits, within a call's deadline.
    proxy.delay_responses(Duration::from_millis(2500));
    let slow_until = Instant::now() + Duration::from_secs(20);
    let started = Instant::now();
    let runners: Vec<_> = apps.iter().map(start_refresher).collect();
    // About 15 s on an idle machine; the bound leaves room for one shared with the whole suite.
    eventually(Duration::from_secs(120), "all 1000 refreshed", || async {
        if Instant::now() > slow_until {
            proxy.delay_responses(Duration::ZERO);
        }
        count(&first, "SELECT count(*) FROM oauth_tokens WHERE access_expires_at < now() + interval '1 minute'").await == 0
    })
    .await;
    let took = started.elapsed();
    for (stop, task) in runners {
        stop.cancel();
        task.await.unwrap();
    }
    println!("1000 tokens through a 2.5 s provider on 3 instances in {took:.1?}");
    // The crash window: from the provider's answer to its committed write.
    for (i, app) in apps.iter().enumerate() {
        use prometheus::core::Metric;
        let h = &app.state.metrics.refresh_write;
        let metric = h.metric();
        let under = |limit: f64| {
            metric
                .get_histogram()
                .get_bucket()
                .iter()
                .find(|b| b.upper_bound() >= limit)
                .map_or(0, |b| b.cumulative_count())
        };
        println!(
            "instance {i}: {} writes, mean {:.2} ms, {} under 5 ms, {} under 25 ms, {} under 100 ms",
            h.get_sample_count(),
            1000.0 * h.get_sample_sum() / h.get_sample_count().max(1) as f64,
            under(0.005),
            under(0.025),
            under(0.1),
        );
    }
    assert_eq!(idp.refresh_calls.load(Ordering::SeqCst), 1000);
    assert_eq!(idp.reuses.load(Ordering::SeqCst), 0, "no token used twice");
    assert_eq!(
        count(&first, "SELECT count(*) FROM oauth_tokens WHERE refresh_status <> 'ok' OR refresh_claim IS NOT NULL").await,
        0
    );
}
