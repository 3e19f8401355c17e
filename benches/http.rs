//! The shop over HTTP, side by side with a baseline, in one run:
//!
//! - the release binary serves a fresh `storefront_bench` database holding `BENCH_SESSIONS`
//!   synthetic sessions (default 100,000) and the demo catalogue, with the local provider;
//! - `BENCH_USERS` users (default 64) log in through the provider's form;
//! - `wrk` (a second process) drives `BENCH_CONNECTIONS` connections (default 64) for
//!   `BENCH_SECONDS` (default 10) against: the baseline (`/_bench/baseline`, one primary-key
//!   select), a public page (`/`, catalogue), and authenticated pages (`/cart`: session +
//!   token state only; `/orders`: plus the user's orders), rotating the users' cookies;
//! - Postgres round trips per request come from `pg_stat_database` (transactions committed
//!   in the bench database during the run, divided by the requests);
//! - the login round trip is timed apart from the provider's own time (the shop's
//!   `provider_request_duration_seconds` metric);
//! - peak RSS of the server is read from `/proc/<pid>/status` (`VmHWM`).
//!
//! Run with `bench/run.sh`.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use support::load::{log_in, wrk};
use support::{env_usize, fill, free_port, fresh_database, millis, random_b64, root};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run())
}

fn peak_rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .context("VmHWM")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kb / 1024.0)
}

/// Sum and count of a histogram in the shop's `/metrics`.
async fn histogram(shop: &str, name: &str, label: &str) -> anyhow::Result<(f64, f64)> {
    let text = reqwest::get(format!("{shop}/metrics"))
        .await?
        .text()
        .await?;
    let value = |suffix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(&format!("{name}_{suffix}{{{label}}}")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    Ok((value("sum"), value("count")))
}

async fn run() -> anyhow::Result<()> {
    let sessions = env_usize("BENCH_SESSIONS", 100_000);
    let users = env_usize("BENCH_USERS", 64);
    let connections = env_usize("BENCH_CONNECTIONS", 64);
    let seconds = env_usize("BENCH_SECONDS", 10);

    let (pool, db_url) = fresh_database().await?;
    let filled = fill(&pool, sessions).await?;
    storefront::shop::demo::load(&pool).await?;
    println!(
        "filled {sessions} synthetic sessions in {:.1} s",
        filled.as_secs_f64()
    );

    let port = free_port()?;
    let shop = format!("http://127.0.0.1:{port}");
    let secret = random_b64(24);
    let idp = support::provider_login::start(&shop, &secret, 3600).await;
    let session_secret = random_b64(64);
    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_storefront"))
            .arg("serve")
            .env("STOREFRONT_CONFIG_DIR", root().join("config"))
            .env("STOREFRONT_ENV", "test")
            .env("RUST_LOG", "warn")
            .env("DATABASE_URL", &db_url)
            .env("STOREFRONT__DATABASE__MAX_CONNECTIONS", "16")
            .env("STOREFRONT__SERVER__PORT", port.to_string())
            .env("STOREFRONT__SERVER__PUBLIC_URL", &shop)
            .env("STOREFRONT__SERVER__BASELINE_ROUTE", "true")
            .env(
                "STOREFRONT__SERVER__TEMPLATES_DIR",
                root().join("templates"),
            )
            .env("STOREFRONT__SERVER__STATIC_DIR", root().join("static"))
            .env("STOREFRONT__OIDC__ISSUER_URL", &idp.issuer)
            .env("STOREFRONT__OIDC__CLIENT_ID", "storefront")
            .env("STOREFRONT__OIDC__CLIENT_SECRET", &secret)
            .env("STOREFRONT__OIDC__HTTP_TIMEOUT_SECS", "5")
            .env("STOREFRONT__SESSION__SECRET_KEY", &session_secret)
            .env("STOREFRONT__TOKENS__ENCRYPTION_KEY", random_b64(32))
            .env("STOREFRONT__RATE_LIMIT__ENABLED", "false")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the release binary")?,
    );
    let ready_by = Instant::now() + Duration::from_secs(30);
    while !reqwest::get(format!("{shop}/health"))
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        anyhow::ensure!(Instant::now() < ready_by, "the server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Logins, one at a time, so the shop's share of each is measured without queueing.
    let (provider_sum_before, provider_count_before) = histogram(
        &shop,
        "storefront_provider_request_duration_seconds",
        "call=\"token_exchange\"",
    )
    .await?;
    let mut cookies = Vec::new();
    let mut shop_times = Vec::new();
    for i in 0..users {
        let (cookie, shop_time) = log_in(&shop, &format!("user{i}")).await?;
        cookies.push(cookie);
        shop_times.push(shop_time);
    }
    let (provider_sum, provider_count) = histogram(
        &shop,
        "storefront_provider_request_duration_seconds",
        "call=\"token_exchange\"",
    )
    .await?;
    let provider_mean_ms =
        (provider_sum - provider_sum_before) * 1000.0 / (provider_count - provider_count_before);
    shop_times.sort();
    let shop_p50 = millis(support::percentile(&shop_times, 0.5));
    let shop_mean = shop_times.iter().map(|d| millis(*d)).sum::<f64>() / users as f64;
    println!(
        "\nlogin round trip ({users} logins): /login + /callback p50 {shop_p50:.2} ms, mean {shop_mean:.2} ms; \
         of that, the provider's token endpoint (code exchange) mean {provider_mean_ms:.2} ms; \
         the shop's own share: mean {:.2} ms",
        shop_mean - provider_mean_ms
    );

    // Every session in memory, as a busy day leaves them: one request with each synthetic
    // session's cookie (signed as the shop signs it) before the measured runs.
    println!(
        "peak RSS before the cache fills: {:.1} MiB",
        peak_rss_mib(server.0.id())?
    );
    let warmed = Instant::now();
    let loaded = support::load::visit_all(
        &format!("{shop}/cart"),
        &support::load::synthetic_cookies(&pool, &session_secret).await?,
        32,
    )
    .await?;
    println!(
        "{loaded} synthetic sessions loaded into the cache in {:.1} s; peak RSS so far {:.1} MiB",
        warmed.elapsed().as_secs_f64(),
        peak_rss_mib(server.0.id())?
    );

    let targets: [(&str, &str, Vec<String>); 4] = [
        ("baseline (1 PK select)", "/_bench/baseline", Vec::new()),
        ("cookieless catalogue /", "/", Vec::new()),
        ("authenticated /cart", "/cart", cookies.clone()),
        ("authenticated /orders", "/orders", cookies.clone()),
    ];
    println!(
        "\nwrk -t2 -c{connections} -d{seconds}s, {users} users, {sessions} sessions in the table:"
    );
    println!(
        "{:<26} {:>10} {:>9} {:>9} {:>12} {:>11} {:>7}",
        "target", "req/s", "p50 ms", "p99 ms", "vs baseline", "round trips", "non-2xx"
    );
    let mut baseline = None;
    let mut measured = Vec::new();
    for (name, path, cookies) in &targets {
        let (load, round_trips) = wrk(
            &format!("{shop}{path}"),
            cookies,
            connections,
            seconds,
            &pool,
        )
        .await?;
        let base = *baseline.get_or_insert(load.per_sec);
        measured.push((*name, load.per_sec));
        println!(
            "{name:<26} {:>10.0} {:>9.2} {:>9.2} {:>11.0}% {:>11.2} {:>7}",
            load.per_sec,
            load.p50_ms,
            load.p99_ms,
            100.0 * load.per_sec / base,
            round_trips,
            load.non_2xx
        );
    }
    let rss = peak_rss_mib(server.0.id())?;
    println!("\npeak RSS of the server: {rss:.1} MiB ({loaded} sessions in its cache)");

    // The stack people use for this in Node, on the same machine, against its own copy of the
    // local provider: Express, express-session in Redis, openid-client, and `/me`.
    match support::express::start(users, &secret).await {
        Ok(express) => {
            let (me, _) = wrk(
                &express.url("/me"),
                &express.cookies,
                connections,
                seconds,
                &pool,
            )
            .await?;
            println!(
                "\nExpress + express-session + connect-redis `/me`: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, non-2xx {}",
                me.per_sec, me.p50_ms, me.p99_ms, me.non_2xx
            );
            for (name, per_sec) in &measured {
                if name.starts_with("authenticated") {
                    println!("{name} / Express /me = {:.2}", per_sec / me.per_sec);
                }
            }
        }
        Err(e) => println!("\nExpress comparison skipped: {e:#}"),
    }
    Ok(())
}
