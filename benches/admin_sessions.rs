//! The admin session table with `BENCH_SESSIONS` (default 100,000) live sessions: server time
//! of `GET /admin/sessions` for the first page, a deep keyset page, a search, a status filter
//! and each sort, measured over HTTP on loopback (so it includes the session load, the admin
//! check, the query and rendering), plus the plan of the default query.
//!
//! Run with `bench/admin.sh`, or `cargo bench --bench admin_sessions`.

mod support;

use std::time::{Duration, Instant};

use sqlx::Executor;
use support::{env_usize, fill, fresh_database, millis, percentile, start_stack};

const RUNS: usize = 40;

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn time_page(
    client: &reqwest::Client,
    url: &str,
) -> anyhow::Result<(Duration, Duration, usize)> {
    let mut times = Vec::with_capacity(RUNS);
    let mut rows = 0;
    for _ in 0..RUNS {
        let started = Instant::now();
        let response = client.get(url).send().await?;
        anyhow::ensure!(
            response.status().is_success(),
            "{url}: {}",
            response.status()
        );
        let html = response.text().await?;
        times.push(started.elapsed());
        rows = html.matches("<tr data-session=").count();
    }
    times.sort();
    Ok((percentile(&times, 0.5), percentile(&times, 0.99), rows))
}

async fn run() -> anyhow::Result<()> {
    let sessions = env_usize("BENCH_SESSIONS", 100_000);
    let (pool, db_url) = fresh_database().await?;
    let filled = fill(&pool, sessions).await?;
    println!(
        "filled {sessions} synthetic sessions in {:.1} s",
        filled.as_secs_f64()
    );
    let stack = start_stack(pool.clone(), db_url, &[]).await?;
    let admin = stack
        .log_in_all(std::iter::once("alice".to_owned()), 1)
        .await
        .pop()
        .expect("one client");
    pool.execute("ANALYZE").await?;

    // A cursor about halfway down, from the JSON API.
    let mut cursor = String::new();
    for _ in 0..(sessions / 2 / 500).max(1) {
        let page: serde_json::Value = admin
            .get(format!(
                "{}/admin/api/sessions?limit=500&cursor={cursor}",
                stack.shop
            ))
            .send()
            .await?
            .json()
            .await?;
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }

    let cases = [
        ("first page (last seen)", "".to_owned()),
        ("page halfway down (keyset)", format!("after={cursor}")),
        ("search \"shopper 4242\"", "q=Shopper+4242".to_owned()),
        ("search by email fragment", "q=synthetic-99%40".to_owned()),
        ("status = needs_login", "status=needs_login".to_owned()),
        (
            "status = retrying, newest",
            "status=retrying&sort=created".to_owned(),
        ),
        ("sort by newest", "sort=created".to_owned()),
        ("sort by token expiry", "sort=expires".to_owned()),
    ];
    println!(
        "\nGET /admin/sessions with {sessions} sessions, {RUNS} runs each (ms, client-side over loopback):"
    );
    println!("{:<30} {:>8} {:>8} {:>6}", "query", "p50", "p99", "rows");
    for (name, query) in &cases {
        let url = format!("{}/admin/sessions?{query}", stack.shop);
        let (p50, p99, rows) = time_page(&admin, &url).await?;
        println!(
            "{name:<30} {:>8.2} {:>8.2} {rows:>6}",
            millis(p50),
            millis(p99)
        );
    }
    let (p50, p99, _) = time_page(&admin, &format!("{}/admin", stack.shop)).await?;
    println!(
        "{:<30} {:>8.2} {:>8.2}",
        "GET /admin (counts + chart)",
        millis(p50),
        millis(p99)
    );
    Ok(())
}
