//! Production hardening: security headers and cookie flags, rate limits and trusted proxies,
//! size limits and an exhausted pool, metrics, and faults (Postgres cut under load, the
//! provider unreachable).

use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use url::Url;

use crate::helpers::{
    TcpProxy, TestApp, assert_redirect_to, browser_client, spawn_app, spawn_app_with,
};

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("a {name} header"))
        .to_str()
        .unwrap()
}

#[sqlx::test]
async fn every_response_carries_the_security_headers(opts: PgPoolOptions, db: PgConnectOptions) {
    let app = spawn_app(opts, db).await;
    for path in ["/", "/no-such-page", "/static/css/site.css", "/health"] {
        let response = app.get(path).await;
        let csp = header(&response, "content-security-policy");
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "frame-ancestors 'none'",
            "object-src 'none'",
            "base-uri 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
            "{csp}"
        );
        assert!(
            csp.contains(&format!("form-action 'self' {}", app.idp.issuer)),
            "{csp}"
        );
        assert_eq!(header(&response, "x-content-type-options"), "nosniff");
        assert_eq!(header(&response, "x-frame-options"), "DENY");
        assert_eq!(header(&response, "referrer-policy"), "same-origin");
        assert!(
            response
                .headers()
                .get("strict-transport-security")
                .is_none(),
            "http: no HSTS"
        );
    }
    // Over http the cookies are HttpOnly and SameSite=Lax, without the https-only parts: the
    // CSRF cookie of a page with forms, and the session cookie once a login starts.
    let home = browser_client().get(app.url("/")).send().await.unwrap();
    let login = browser_client()
        .get(app.url("/login"))
        .send()
        .await
        .unwrap();
    for (response, name) in [(home, "storefront_csrf="), (login, "storefront_session=")] {
        let cookie = header(&response, "set-cookie");
        assert!(cookie.starts_with(name), "{cookie}");
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
            "{cookie}"
        );
        assert!(!cookie.contains("Secure"), "{cookie}");
    }
}

#[sqlx::test]
async fn under_https_the_cookie_is_host_prefixed_and_secure_and_hsts_is_sent(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app_with(opts, db, |s| {
        s.server.public_url = Url::parse("https://shop.example").unwrap();
    })
    .await;
    let home = app.get("/").await;
    assert_eq!(
        header(&home, "strict-transport-security"),
        "max-age=63072000; includeSubDomains"
    );
    let login = app.get("/login").await;
    for (response, name) in [
        (home, "__Host-storefront_csrf="),
        (login, "__Host-storefront_session="),
    ] {
        let cookie = header(&response, "set-cookie");
        assert!(cookie.starts_with(name), "{cookie}");
        for part in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
            assert!(cookie.contains(part), "{part} in {cookie}");
        }
        assert!(!cookie.contains("Domain="), "{cookie}");
    }
}

#[test]
fn templates_have_no_inline_script_or_handlers() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    let mut stack = vec![dir];
    let mut checked = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap().to_lowercase();
            checked += 1;
            assert!(!text.contains("<script"), "{} has a script", path.display());
            assert!(
                !text.contains(" style="),
                "{} has an inline style",
                path.display()
            );
            for handler in [
                " onclick=",
                " onload=",
                " onsubmit=",
                " onerror=",
                "javascript:",
            ] {
                assert!(!text.contains(handler), "{} has {handler}", path.display());
            }
        }
    }
    assert!(checked >= 10, "found the templates ({checked})");
}

async fn flood(
    app: &TestApp,
    client: &reqwest::Client,
    n: usize,
    forwarded: Option<&str>,
) -> Vec<u16> {
    let mut statuses = Vec::new();
    for _ in 0..n {
        let mut request = client.get(app.url("/login"));
        if let Some(ip) = forwarded {
            request = request.header("X-Forwarded-For", ip);
        }
        statuses.push(request.send().await.unwrap().status().as_u16());
    }
    statuses
}

#[sqlx::test]
async fn a_flood_of_logins_gets_429s_and_the_shop_stays_responsive(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app_with(opts, db, |s| {
        s.rate_limit.per_minute = 6;
        s.rate_limit.burst = 5;
    })
    .await;
    let statuses = flood(&app, &browser_client(), 40, None).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 302).count(),
        5,
        "{statuses:?}"
    );
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");

    let limited = app.get("/login").await;
    assert_eq!(limited.status().as_u16(), 429);
    let retry_after: u64 = header(&limited, "retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let html = limited.text().await.unwrap();
    assert!(
        html.contains("class=\"error-page\"") && html.contains("Too many attempts"),
        "{html}"
    );

    // Everything else is not limited, and answers.
    assert_eq!(app.get("/").await.status().as_u16(), 200);
    assert_eq!(app.get("/health").await.status().as_u16(), 200);
    // Sending X-Forwarded-For does not help a client that is not behind a trusted proxy.
    let spoofed = flood(&app, &browser_client(), 3, Some("198.51.100.77")).await;
    assert_eq!(spoofed, vec![429, 429, 429]);
}

#[sqlx::test]
async fn behind_a_trusted_proxy_each_client_has_its_own_limit_and_address(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app_with(opts, db, |s| {
        s.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        s.rate_limit.per_minute = 6;
        s.rate_limit.burst = 3;
    })
    .await;
    let first = flood(&app, &browser_client(), 5, Some("198.51.100.1")).await;
    assert_eq!(first, vec![302, 302, 302, 429, 429]);
    let second = flood(&app, &browser_client(), 3, Some("198.51.100.2")).await;
    assert_eq!(
        second,
        vec![302, 302, 302],
        "another client behind the proxy"
    );

    // The address recorded for a session is the client's, not the proxy's.
    let (state, nonce) = {
        let response = app
            .client
            .get(app.url("/login"))
            .header("X-Forwarded-For", "203.0.113.50")
            .send()
            .await
            .unwrap();
        crate::helpers::state_and_nonce(&response)
    };
    let code = app.idp.code_for("alice", &nonce);
    let callback = app
        .client
        .get(app.url("/callback"))
        .header("X-Forwarded-For", "203.0.113.50, 127.0.0.1")
        .query(&[
            ("code", code.as_str()),
            ("state", &state),
            ("iss", &app.idp.issuer),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(callback.status().as_u16(), 302);
    let ip: String = sqlx::query_scalar("SELECT host(ip) FROM sessions WHERE token_id IS NOT NULL")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(ip, "203.0.113.50");
}

#[sqlx::test]
async fn oversized_bodies_are_refused_and_an_exhausted_pool_answers_503_fast(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app_with(opts, db, |s| {
        s.database.max_connections = 1;
        s.database.acquire_timeout_ms = 300;
    })
    .await;
    let big = "x".repeat(64 * 1024);
    let response = app
        .client
        .post(app.url("/cart/items"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf_token={big}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    assert!(response.text().await.unwrap().contains("too large"));

    // Hold the only connection: requests that need the database fail fast with 503.
    let held = app.pool.acquire().await.unwrap();
    let started = Instant::now();
    let response = app.get("/").await;
    let waited = started.elapsed();
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().get("retry-after").is_some());
    assert!(waited < Duration::from_secs(3), "no hang: {waited:?}");
    drop(held);
    assert_eq!(app.get("/").await.status().as_u16(), 200);
}

#[sqlx::test]
async fn metrics_count_requests_logins_and_refreshes(opts: PgPoolOptions, db: PgConnectOptions) {
    let app = spawn_app(opts, db).await;
    storefront::shop::demo::load(&app.pool).await.unwrap();
    app.login_as("alice").await;
    app.get("/products/ceramic-mug").await;
    app.get("/products/soy-candle").await;
    app.get("/nope").await;
    sqlx::query("UPDATE oauth_tokens SET access_expires_at = now()")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        app.get("/profile").await.status().as_u16(),
        200,
        "one inline refresh"
    );

    // The gauges that need SQL are read by a background task (driven here), not by a scrape.
    app.state.metrics.read_database_gauges(&app.pool).await;
    let response = browser_client()
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(header(&response, "content-type").starts_with("text/plain; version=0.0.4"));
    let text = response.text().await.unwrap();
    for line in [
        "storefront_http_requests_total{method=\"GET\",route=\"/products/{slug}\",status=\"200\"} 2",
        "storefront_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"} 1",
        "storefront_logins_total{outcome=\"ok\"} 1",
        "storefront_token_refreshes_total{outcome=\"ok\"} 1",
        "storefront_active_sessions 1",
        "storefront_due_tokens 0",
        "storefront_db_pool_max_connections 4\n",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    assert!(text.contains("storefront_http_request_duration_seconds_bucket{method=\"GET\",route=\"/products/{slug}\",le=\"0.1\"}"));
    assert!(text.contains("storefront_db_pool_connections{state=\"in_use\"}"));
    assert!(
        !text.contains("ceramic-mug"),
        "raw paths never become labels"
    );
}

#[sqlx::test]
async fn under_https_metrics_need_a_token_or_their_own_address(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let https = |s: &mut storefront::configuration::Settings| {
        s.server.public_url = Url::parse("https://shop.example").unwrap();
    };
    let open = spawn_app_with(opts.clone(), db.clone(), https).await;
    assert_eq!(
        open.get("/metrics").await.status().as_u16(),
        404,
        "not on the public listener of a production shop without a token"
    );

    let separate = spawn_app_with(opts, db, |s| {
        https(s);
        s.metrics.listen = Some("127.0.0.1:0".into());
    })
    .await;
    assert_eq!(separate.get("/metrics").await.status().as_u16(), 404);
    let port = separate.metrics_port.expect("a metrics listener");
    let scrape = browser_client()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(scrape.status().as_u16(), 200);
    assert!(
        scrape
            .text()
            .await
            .unwrap()
            .contains("storefront_revocations_pending")
    );
}

#[sqlx::test]
async fn metrics_can_require_a_bearer_token(opts: PgPoolOptions, db: PgConnectOptions) {
    let app = spawn_app_with(opts, db, |s| {
        s.metrics.token = Some("scrape-secret-1234".to_owned().into());
    })
    .await;
    let client = browser_client();
    let anonymous = client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    let wrong = client
        .get(app.url("/metrics"))
        .bearer_auth("guess")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let right = client
        .get(app.url("/metrics"))
        .bearer_auth("scrape-secret-1234")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status().as_u16(), 200);
}

#[sqlx::test]
async fn postgres_cut_under_load_fails_fast_and_recovers_with_every_session(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let proxy = TcpProxy::start(db.get_host(), db.get_port()).await;
    let via_proxy = db.clone().host("127.0.0.1").port(proxy.port());
    let app = spawn_app_with(opts, via_proxy, |s| {
        s.database.max_connections = 8;
        s.database.acquire_timeout_ms = 500;
    })
    .await;
    // Eight shoppers, logged in.
    let mut shoppers = Vec::new();
    for i in 0..8 {
        let mut shopper = app.clone();
        shopper.client = browser_client();
        shopper.login_as(&format!("shopper{i}")).await;
        shoppers.push(shopper);
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let load: Vec<_> = shoppers
        .iter()
        .cloned()
        .map(|shopper| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.is_cancelled() {
                    let started = Instant::now();
                    let status = shopper.get("/orders").await.status().as_u16();
                    seen.push((status, started.elapsed()));
                }
                seen
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.set_down(true); // Postgres "restarts": every connection cut, new ones refused.
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.set_down(false);
    let recovered_by = Instant::now() + Duration::from_secs(10);
    loop {
        let mut all_ok = true;
        for shopper in &shoppers {
            all_ok &= shopper.get("/orders").await.status().as_u16() == 200;
        }
        if all_ok {
            break;
        }
        assert!(Instant::now() < recovered_by, "the app recovers by itself");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.cancel();
    let mut outcomes = Vec::new();
    for task in load {
        outcomes.extend(task.await.unwrap());
    }
    let statuses: std::collections::BTreeSet<u16> = outcomes.iter().map(|(s, _)| *s).collect();
    assert!(
        statuses.contains(&200) && statuses.contains(&503),
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| [200, 503].contains(s)),
        "only 200 or 503: {statuses:?}"
    );
    let slowest = outcomes.iter().map(|(_, d)| *d).max().unwrap();
    assert!(
        slowest < Duration::from_secs(3),
        "failures are fast: {slowest:?}"
    );
    // Every session survived, still logged in.
    for shopper in &shoppers {
        assert_eq!(shopper.get("/orders").await.status().as_u16(), 200);
    }
    assert_eq!(app.logged_in_sessions().await, 8);
}

#[sqlx::test]
async fn with_the_provider_unreachable_public_pages_and_sessions_keep_working(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let app = spawn_app(opts, db).await;
    storefront::shop::demo::load(&app.pool).await.unwrap();
    app.login_as("alice").await;
    app.idp.set_down(true);
    for path in ["/", "/products/ceramic-mug", "/cart", "/orders"] {
        assert_eq!(app.get(path).await.status().as_u16(), 200, "{path}");
    }
    // A page that needs the provider says so, and the shopper stays logged in.
    let profile = app.get("/profile").await;
    assert_eq!(profile.status().as_u16(), 503);
    let anonymous = browser_client();
    let login = anonymous.get(app.url("/login")).send().await.unwrap();
    assert_eq!(
        login.status().as_u16(),
        302,
        "discovery is cached: the login redirects without asking the provider"
    );
    assert_eq!(app.get("/orders").await.status().as_u16(), 200);
    app.idp.set_down(false);
    assert_eq!(app.get("/profile").await.status().as_u16(), 200);
    assert_redirect_to(
        &anonymous.get(app.url("/orders")).send().await.unwrap(),
        "/login?return_to=%2Forders",
    );
}
