//! Load from outside: `wrk` against a URL with the users' cookies, Postgres round trips from
//! `pg_stat_database`, a login through the provider that yields a session cookie.

use std::io::Write as _;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use reqwest::cookie::{CookieStore, Jar};
use sqlx::PgPool;

use super::root;

/// What `wrk --latency` reports.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub requests: u64,
    pub per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub non_2xx: u64,
}

fn parse_ms(value: &str) -> f64 {
    let value = value.trim();
    let (number, factor) = if let Some(v) = value.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = value.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = value.strip_suffix('s') {
        (v, 1000.0)
    } else {
        (value, 1.0)
    };
    number.parse::<f64>().unwrap_or(f64::NAN) * factor
}

fn parse_wrk(output: &str) -> anyhow::Result<Load> {
    let mut load = Load {
        requests: 0,
        per_sec: 0.0,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        non_2xx: 0,
    };
    for line in output.lines().map(str::trim) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["50%", v] => load.p50_ms = parse_ms(v),
            ["99%", v] => load.p99_ms = parse_ms(v),
            ["Requests/sec:", v] => load.per_sec = v.parse()?,
            [n, "requests", "in", ..] => load.requests = n.parse()?,
            ["Non-2xx", "or", "3xx", "responses:", n] => load.non_2xx = n.parse()?,
            _ => {}
        }
    }
    if load.requests == 0 {
        bail!("could not read wrk's output:\n{output}");
    }
    Ok(load)
}

/// Transactions committed in the bench database so far (each statement outside a
/// transaction is one, so this counts round trips).
pub async fn transactions(pool: &PgPool) -> anyhow::Result<i64> {
    // Backends publish their counts at most once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(pool)
        .await?;
    Ok(sqlx::query_scalar(
        "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(pool)
    .await?)
}

pub async fn wrk(
    url: &str,
    cookies: &[String],
    connections: usize,
    seconds: usize,
    pool: &PgPool,
) -> anyhow::Result<(Load, f64)> {
    let mut script = tempfile("wrk-cookies.lua")?;
    writeln!(script.1, "local cookies = {{")?;
    for cookie in cookies {
        writeln!(script.1, "  {cookie:?},")?;
    }
    writeln!(
        script.1,
        "}}\nlocal i = 0\nrequest = function()\n  i = i + 1\n  if #cookies == 0 then return wrk.format(nil) end\n  return wrk.format(nil, nil, {{ [\"Cookie\"] = cookies[(i % #cookies) + 1] }})\nend"
    )?;
    drop(script.1);
    let before = transactions(pool).await?;
    let output = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
        ])
        .args(["-s", &script.0])
        .arg(url)
        .output()
        .context("running wrk (Debian package `wrk`)")?;
    let after = transactions(pool).await?;
    let text = String::from_utf8_lossy(&output.stdout);
    let load = parse_wrk(&text)?;
    // The two snapshot queries themselves are transactions too.
    let round_trips = (after - before - 2) as f64 / load.requests as f64;
    Ok((load, round_trips))
}

pub fn tempfile(name: &str) -> anyhow::Result<(String, std::fs::File)> {
    let dir = root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(name);
    Ok((path.display().to_string(), std::fs::File::create(&path)?))
}

/// One login through the provider; returns the session cookie and the time spent in the
/// shop's `/login` and `/callback` (the provider's pages are not counted).
pub async fn log_in(shop: &str, user: &str) -> anyhow::Result<(String, Duration)> {
    let jar = Arc::new(Jar::default());
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_provider(jar.clone())
        .build()?;
    let provider = super::provider_login::cookie_client();
    let started = Instant::now();
    let login = client.get(format!("{shop}/login")).send().await?;
    let mut shop_time = started.elapsed();
    let authorize = login
        .headers()
        .get("location")
        .context("a redirect to the provider")?
        .to_str()?
        .to_owned();
    let back = super::provider_login::through_provider(&provider, &authorize, shop, user).await;
    let started = Instant::now();
    let callback = client.get(&back).send().await?;
    shop_time += started.elapsed();
    anyhow::ensure!(
        callback.status().as_u16() == 302,
        "callback: {}",
        callback.status()
    );
    let url = reqwest::Url::parse(shop)?;
    let cookie = jar
        .cookies(&url)
        .context("a session cookie")?
        .to_str()?
        .to_owned();
    Ok((cookie, shop_time))
}

/// The signed session cookies of the synthetic sessions `fill` made (their session keys are
/// their token ids), as the shop signs them with `session_secret` (base64).
pub async fn synthetic_cookies(pool: &PgPool, session_secret: &str) -> anyhow::Result<Vec<String>> {
    use actix_web::cookie::{Cookie, CookieJar, Key};
    use base64::Engine as _;
    let secret = base64::engine::general_purpose::STANDARD.decode(session_secret)?;
    let key = Key::from(&secret);
    let keys: Vec<String> = sqlx::query_scalar(
        "SELECT t.token_id::text FROM oauth_tokens t JOIN users u USING (user_id)
         WHERE u.issuer = 'synthetic'",
    )
    .fetch_all(pool)
    .await?;
    Ok(keys
        .into_iter()
        .map(|value| {
            let mut jar = CookieJar::new();
            jar.signed_mut(&key)
                .add(Cookie::new("storefront_session", value));
            let signed = jar.get("storefront_session").expect("just added");
            format!("storefront_session={}", signed.value())
        })
        .collect())
}

/// One GET of `url` with each cookie, `parallel` at a time; returns how many answered 2xx.
pub async fn visit_all(url: &str, cookies: &[String], parallel: usize) -> anyhow::Result<usize> {
    use futures_util::{StreamExt, stream};
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let ok = stream::iter(cookies)
        .map(|cookie| {
            let client = client.clone();
            async move {
                client
                    .get(url)
                    .header("cookie", cookie)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .buffer_unordered(parallel)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await;
    Ok(ok)
}
