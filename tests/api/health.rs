use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::helpers::{TcpProxy, spawn_app, spawn_app_with};

#[sqlx::test]
async fn health_is_ok_when_postgres_answers(opts: PgPoolOptions, db: PgConnectOptions) {
    let app = spawn_app(opts, db).await;
    let response = app.get("/health").await;
    assert_eq!(response.status().as_u16(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["identity_provider"], "ok");
}

#[sqlx::test]
async fn health_is_503_within_two_seconds_when_postgres_is_unreachable(
    opts: PgPoolOptions,
    _db: PgConnectOptions,
) {
    // Nothing listens on port 1.
    let unreachable = PgConnectOptions::new().host("127.0.0.1").port(1);
    let app = spawn_app_with(opts, unreachable, |_| {}).await;
    let started = std::time::Instant::now();
    let response = app.get("/health").await;
    let elapsed = started.elapsed();
    assert_eq!(response.status().as_u16(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "unavailable");
    assert!(elapsed.as_secs_f64() < 2.5, "took {elapsed:?}");
}

#[sqlx::test]
async fn a_postgres_outage_gives_503s_and_loses_no_session(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let proxy = TcpProxy::start(db.get_host(), db.get_port()).await;
    let via_proxy = db.clone().host("127.0.0.1").port(proxy.port());
    let app = spawn_app_with(opts, via_proxy, |_| {}).await;
    assert_eq!(app.login_as("alice").await.status().as_u16(), 302);

    proxy.set_down(true);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let response = app.get("/").await;
    assert_eq!(response.status().as_u16(), 503, "fail fast, not 500");
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    assert!(response.text().await.unwrap().contains("unavailable"));
    assert_eq!(app.get("/health").await.status().as_u16(), 503);

    proxy.set_down(false);
    let html = app.get("/").await.text().await.unwrap();
    assert!(
        html.contains("User alice"),
        "the session survived the outage"
    );
    assert_eq!(app.get("/health").await.status().as_u16(), 200);
}

#[sqlx::test]
async fn unknown_pages_get_the_shared_404_page(opts: PgPoolOptions, db: PgConnectOptions) {
    let app = spawn_app(opts, db).await;
    let response = app.get("/no/such/page").await;
    assert_eq!(response.status().as_u16(), 404);
    let html = response.text().await.unwrap();
    assert!(html.contains("does not exist"));
    assert!(
        html.contains("/static/css/site.css"),
        "rendered in the layout"
    );
}

#[sqlx::test]
async fn static_files_are_served_with_cache_headers(opts: PgPoolOptions, db: PgConnectOptions) {
    let app = spawn_app(opts, db).await;
    let response = app.get("/static/css/site.css").await;
    assert_eq!(response.status().as_u16(), 200);
    let cache = response.headers()["cache-control"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cache.contains("max-age"), "{cache}");
    assert!(response.headers().contains_key("etag"));
}

/// Runs `sql` on the server's maintenance database, outside the database under test.
async fn on_server(sql: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&crate::helpers::base_database_url())
        .await
        .unwrap();
    sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
}

#[sqlx::test]
async fn a_database_refusing_connections_answers_503_then_the_same_session_carries_on(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let name = db.get_database().expect("a test database").to_owned();
    let app = spawn_app(opts, db).await;
    app.login_as("alice").await;
    assert_eq!(app.get("/orders").await.status().as_u16(), 200);

    // New connections are refused with SQLSTATE 55000; the pool's open ones are cut, so
    // every request needs a new one.
    on_server(&format!(
        r#"ALTER DATABASE "{name}" ALLOW_CONNECTIONS false;
           SELECT pg_terminate_backend(pid) FROM pg_stat_activity
           WHERE datname = '{name}' AND pid <> pg_backend_pid();"#
    ))
    .await;
    for path in ["/profile", "/orders", "/cart", "/"] {
        let response = app.get(path).await;
        assert_eq!(response.status().as_u16(), 503, "{path}");
        assert_eq!(
            response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap()),
            Some("5"),
            "{path}"
        );
        assert!(
            response.text().await.unwrap().contains("unavailable"),
            "{path}"
        );
    }

    on_server(&format!(
        r#"ALTER DATABASE "{name}" ALLOW_CONNECTIONS true"#
    ))
    .await;
    let profile = app.get("/profile").await;
    assert_eq!(
        profile.status().as_u16(),
        200,
        "the same session, still logged in"
    );
    assert!(profile.text().await.unwrap().contains("alice"));
}

#[sqlx::test]
async fn liveness_stays_up_while_readiness_fails_for_the_drain(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app(opts, db).await;
    assert_eq!(app.get("/health/live").await.status().as_u16(), 200);
    let ready = app.get("/health").await;
    assert_eq!(ready.status().as_u16(), 200);
    assert!(
        ready
            .headers()
            .get("connection")
            .is_none_or(|c| c != "close")
    );

    // SIGTERM sets this before the drain (`server.drain_secs`).
    app.state
        .draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let ready = app.get("/health").await;
    assert_eq!(ready.status().as_u16(), 503);
    assert_eq!(ready.headers()["connection"], "close");
    assert_eq!(ready.headers()["retry-after"], "1");
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "draining");
    let page = app.get("/").await;
    assert_eq!(page.status().as_u16(), 200, "requests are still served");
    assert_eq!(
        page.headers()["connection"],
        "close",
        "and keep-alive clients are asked to reconnect elsewhere"
    );
    assert_eq!(app.get("/health/live").await.status().as_u16(), 200);
}

#[sqlx::test]
async fn a_table_locked_by_a_dba_gives_fast_503s_then_service_resumes(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app_with(opts, db, |s| {
        s.database.lock_timeout_ms = 300;
        s.database.max_connections = 8;
    })
    .await;
    assert_eq!(app.login_as("alice").await.status().as_u16(), 302);
    assert_eq!(app.get("/orders").await.status().as_u16(), 200);

    // A DBA's ALTER TABLE (or a stray LOCK) holds sessions for much longer than any request
    // may wait.
    let mut dba = app.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *dba)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let answers: Vec<reqwest::Response> =
        futures_util::future::join_all((0..16).map(|_| app.get("/orders"))).await;
    let took = started.elapsed();
    for response in &answers {
        assert_eq!(response.status().as_u16(), 503);
        assert_eq!(response.headers()["retry-after"], "5");
    }
    // A hang detector, not a speed measurement: the lock would hold them for ever.
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    dba.rollback().await.unwrap();
    assert_eq!(
        app.get("/orders").await.status().as_u16(),
        200,
        "the same session carries on"
    );
}
