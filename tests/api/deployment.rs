//! The deployment of `deploy/cluster.sh`, with real parts: HAProxy in front of three
//! `storefront serve` processes, PgBouncer in transaction pooling, and a Patroni-managed
//! primary with a synchronous standby behind HAProxy's primary route. Shoppers log in through
//! the load balancer (at the fake provider, which counts refresh-token reuse), browse, fill
//! carts and check out while the primary is killed and, later, while every instance is
//! restarted in turn. Slow by nature: it runs once, bounded in time, and prints its figures.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::fake_idp::{CLIENT_ID, CLIENT_SECRET, FakeIdp};
use crate::helpers::{browser_client, page_csrf_token, state_and_nonce};

const BASE: u16 = 27400;
const SHOPPERS: usize = 20;

struct Cluster {
    dir: PathBuf,
    env_file: PathBuf,
    issuer: String,
}

impl Cluster {
    /// `deploy/cluster.sh ARGS` for this test's topology.
    fn command(&self, args: &[&str]) -> Command {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut command = Command::new("bash");
        command
            .arg(root.join("deploy/cluster.sh"))
            .args(args)
            .env("CLUSTER_DIR", &self.dir)
            .env("CLUSTER_PORT_BASE", BASE.to_string())
            .env("STOREFRONT_BIN", env!("CARGO_BIN_EXE_storefront"))
            .env("OIDC_ISSUER", &self.issuer)
            .env("OIDC_CLIENT_ID", CLIENT_ID)
            .env("OIDC_CLIENT_SECRET", CLIENT_SECRET)
            .env("STOREFRONT_ENV_FILE", &self.env_file);
        command
    }

    fn script(&self, args: &[&str]) -> String {
        let output = self.command(args).output().expect("bash runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success(),
            "cluster.sh {args:?} failed:\n{text}"
        );
        text
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{BASE}{path}")
    }

    /// The shop's database through the primary route, as a DBA would reach it.
    async fn database(&self) -> PgPool {
        storefront::db::without_reaper(PgPoolOptions::new())
            .max_connections(2)
            .connect(&format!(
                "postgres://postgres@127.0.0.1:{}/storefront",
                BASE + 10
            ))
            .await
            .unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.command(&["destroy"]).output();
    }
}

/// What the shoppers saw, request by request.
#[derive(Default)]
struct Seen {
    statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
    /// The first few transport errors, for the report.
    errors: Vec<String>,
    without_retry_after: u64,
    slowest: Duration,
    /// (seconds since the load started, whether the request succeeded)
    timeline: Vec<(f64, bool)>,
}

impl Seen {
    fn record(
        &mut self,
        started: Instant,
        t0: Instant,
        result: &Result<reqwest::Response, reqwest::Error>,
    ) -> bool {
        let elapsed = started.elapsed();
        self.slowest = self.slowest.max(elapsed);
        let ok = match result {
            Ok(r) => {
                let status = r.status().as_u16();
                *self.statuses.entry(status).or_default() += 1;
                if status == 503 && r.headers().get("retry-after").is_none() {
                    self.without_retry_after += 1;
                }
                status < 400
            }
            Err(e) => {
                self.transport_errors += 1;
                if self.errors.len() < 5 {
                    self.errors.push(format!("{e:?}"));
                }
                false
            }
        };
        self.timeline.push(((started - t0).as_secs_f64(), ok));
        ok
    }

    fn failed(&self) -> u64 {
        self.transport_errors
            + self
                .statuses
                .iter()
                .filter(|(s, _)| **s >= 400)
                .map(|(_, n)| n)
                .sum::<u64>()
    }
}

struct Shopper {
    client: reqwest::Client,
    csrf: String,
    sub: String,
    /// Adds the shop acknowledged (303) and the ones whose fate is unknown (error answers).
    acked_adds: u32,
    unsure_adds: u32,
    acked_orders: Vec<String>,
}

impl Shopper {
    async fn assert_logged_in(&self, cluster: &Cluster) {
        let orders = self
            .client
            .get(cluster.url("/orders"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            orders.status().as_u16(),
            200,
            "{} still logged in",
            self.sub
        );
    }
}

async fn log_in(cluster: &Cluster, idp: &FakeIdp, sub: &str) -> Shopper {
    let client = browser_client();
    let login = client
        .get(cluster.url("/login?return_to=/cart"))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status().as_u16(), 302, "{sub}: login starts");
    let (state, nonce) = state_and_nonce(&login);
    let code = idp.code_for(sub, &nonce);
    let callback = client
        .get(cluster.url("/callback"))
        .query(&[
            ("code", code.as_str()),
            ("state", &state),
            ("iss", &idp.issuer),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(callback.status().as_u16(), 302, "{sub}: logged in");
    let cart = client.get(cluster.url("/cart")).send().await.unwrap();
    let html = cart.text().await.unwrap();
    let csrf = page_csrf_token(&html).unwrap_or_else(|| panic!("a CSRF token in\n{html}"));
    Shopper {
        client,
        csrf,
        sub: sub.to_owned(),
        acked_adds: 0,
        unsure_adds: 0,
        acked_orders: Vec::new(),
    }
}

/// One shopper's loop until `stop`: browse, add, and (every other shopper) check out.
async fn shop(
    cluster: Arc<Cluster>,
    mut shopper: Shopper,
    products: Vec<i64>,
    checks_out: bool,
    seen: Arc<Mutex<Seen>>,
    t0: Instant,
    stop: Arc<AtomicBool>,
) -> Shopper {
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let product = products[n % products.len()].to_string();
        let started = Instant::now();
        let add = shopper
            .client
            .post(cluster.url("/cart/items"))
            .form(&[
                ("csrf_token", shopper.csrf.as_str()),
                ("product_id", &product),
                ("quantity", "1"),
            ])
            .send()
            .await;
        let ok = seen.lock().unwrap().record(started, t0, &add);
        match &add {
            Ok(r) if r.status().as_u16() == 303 => shopper.acked_adds += 1,
            _ => shopper.unsure_adds += 1,
        }
        if !ok {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let started = Instant::now();
        let page = shopper
            .client
            .get(cluster.url(if n.is_multiple_of(2) {
                "/orders"
            } else {
                "/cart"
            }))
            .send()
            .await;
        seen.lock().unwrap().record(started, t0, &page);
        if checks_out && n.is_multiple_of(5) {
            let key = uuid::Uuid::new_v4().to_string();
            let started = Instant::now();
            let checkout = shopper
                .client
                .post(cluster.url("/checkout"))
                .form(&[
                    ("csrf_token", shopper.csrf.as_str()),
                    ("idempotency_key", &key),
                ])
                .send()
                .await;
            seen.lock().unwrap().record(started, t0, &checkout);
            if let Ok(r) = &checkout
                && r.status().as_u16() == 303
            {
                let location = r.headers()["location"].to_str().unwrap();
                shopper
                    .acked_orders
                    .push(location.trim_start_matches("/orders/").to_owned());
            }
        }
    }
    shopper
}

async fn run_load(
    cluster: &Arc<Cluster>,
    shoppers: Vec<Shopper>,
    products: &[i64],
    during: impl AsyncFnOnce(Instant),
) -> (Vec<Shopper>, Seen) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let tasks: Vec<_> = shoppers
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            tokio::spawn(shop(
                cluster.clone(),
                s,
                products.to_vec(),
                i % 2 == 0,
                seen.clone(),
                t0,
                stop.clone(),
            ))
        })
        .collect();
    during(t0).await;
    stop.store(true, Ordering::Relaxed);
    let mut shoppers = Vec::new();
    for task in tasks {
        shoppers.push(task.await.unwrap());
    }
    let seen = Arc::try_unwrap(seen).ok().unwrap().into_inner().unwrap();
    (shoppers, seen)
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployment_survives_a_primary_failover_and_a_rolling_deploy() {
    let idp = FakeIdp::start().await;
    // Tokens that need refreshing during the run: due at half of 20 s.
    idp.set_access_ttl(20);
    let dir = std::env::temp_dir().join(format!("storefront-cluster-test-{}", std::process::id()));
    let env_file = std::env::temp_dir().join(format!(
        "storefront-cluster-test-{}.env",
        std::process::id()
    ));
    std::fs::write(
        &env_file,
        "STOREFRONT__REFRESH__INTERVAL_SECS=1\nSTOREFRONT__RATE_LIMIT__ENABLED=false\n\
         STOREFRONT__OIDC__HTTP_TIMEOUT_SECS=3\nRUST_LOG=info,sqlx::postgres::notice=error\n",
    )
    .unwrap();
    let cluster = Arc::new(Cluster {
        dir,
        env_file,
        issuer: idp.issuer.clone(),
    });
    let started = Instant::now();
    cluster.script(&["start"]);
    println!("topology up in {:.1} s", started.elapsed().as_secs_f64());
    let db = cluster.database().await;
    sqlx::query("UPDATE products SET stock = 1000000")
        .execute(&db)
        .await
        .unwrap();
    let products: Vec<i64> =
        sqlx::query_scalar("SELECT product_id FROM products ORDER BY product_id")
            .fetch_all(&db)
            .await
            .unwrap();
    db.close().await;

    let mut shoppers = Vec::new();
    for i in 0..SHOPPERS {
        shoppers.push(log_in(&cluster, &idp, &format!("shopper{i}")).await);
    }

    // Failover: kill -9 the primary (Postgres and its Patroni) under load.
    let killed = Arc::new(Mutex::new(None::<(String, f64)>));
    let (shoppers, seen) = run_load(&cluster, shoppers, &products, {
        let cluster = cluster.clone();
        let killed = killed.clone();
        async move |t0: Instant| {
            tokio::time::sleep(Duration::from_secs(4)).await;
            let node = cluster.script(&["kill-primary"]);
            *killed.lock().unwrap() = Some((node.trim().to_owned(), t0.elapsed().as_secs_f64()));
            // Until requests succeed again, then a while longer; never more than a minute.
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    })
    .await;
    let (node, killed_at) = killed.lock().unwrap().clone().unwrap();
    let failures_after_kill = || {
        seen.timeline
            .iter()
            .filter(|(t, ok)| !ok && *t >= killed_at)
            .map(|(t, _)| *t)
    };
    let first_failure = failures_after_kill().fold(f64::NAN, f64::min);
    // Every request started after the last failure succeeded.
    let recovered = failures_after_kill().fold(killed_at, f64::max);
    println!(
        "failover: killed {node} at {killed_at:.1} s; first failed request at {first_failure:.1} s; \
         every request succeeding again from {recovered:.1} s ({:.1} s after the kill); \
         statuses {:?}, transport errors {}, slowest request {:.2} s",
        recovered - killed_at,
        seen.statuses,
        seen.transport_errors,
        seen.slowest.as_secs_f64()
    );
    assert!(
        !seen.statuses.contains_key(&500),
        "no 500: {:?}",
        seen.statuses
    );
    assert!(
        seen.statuses.keys().all(|s| matches!(s, 200 | 303 | 503)),
        "only 503 while the database moves: {:?}",
        seen.statuses
    );
    assert_eq!(seen.without_retry_after, 0, "every 503 says when to retry");
    assert_eq!(
        seen.transport_errors, 0,
        "every request answered: {:?}",
        seen.errors
    );
    assert!(
        seen.slowest < Duration::from_secs(10),
        "no request hangs: {:?}",
        seen.slowest
    );
    assert!(recovered - killed_at < 25.0, "requests succeed again");
    assert!(
        seen.timeline.iter().any(|(t, ok)| *ok && *t > recovered),
        "and keep succeeding"
    );

    // Afterwards: everyone still logged in, nothing acknowledged lost, no token used twice.
    let db = cluster.database().await;
    for shopper in &shoppers {
        shopper.assert_logged_in(&cluster).await;
        for order in &shopper.acked_orders {
            let found: i64 =
                sqlx::query_scalar("SELECT count(*) FROM orders WHERE order_id::text = $1")
                    .bind(order)
                    .fetch_one(&db)
                    .await
                    .unwrap();
            assert_eq!(found, 1, "{}'s acknowledged order {order}", shopper.sub);
        }
    }
    let orders_acked: usize = shoppers.iter().map(|s| s.acked_orders.len()).sum();
    let adds_acked: u32 = shoppers.iter().map(|s| s.acked_adds).sum();
    println!("acknowledged: {orders_acked} orders, {adds_acked} cart additions; all found");
    // Cart shoppers never check out: their carts hold every acknowledged addition.
    for shopper in shoppers.iter().skip(1).step_by(2) {
        let cart: Option<String> = sqlx::query_scalar(
            "SELECT s.state->>'cart' FROM sessions s JOIN logins l USING (token_id) WHERE l.subject = $1",
        )
        .bind(&shopper.sub)
        .fetch_one(&db)
        .await
        .unwrap();
        let lines: Vec<serde_json::Value> =
            serde_json::from_str(&cart.unwrap_or_else(|| "[]".into())).unwrap();
        let total: u32 = lines
            .iter()
            .map(|l| l["quantity"].as_u64().unwrap() as u32)
            .sum();
        assert!(
            total >= shopper.acked_adds && total <= shopper.acked_adds + shopper.unsure_adds,
            "{}: cart holds {total}, acknowledged {} (+{} unsure)",
            shopper.sub,
            shopper.acked_adds,
            shopper.unsure_adds
        );
    }
    // The refresher carried on by itself: tokens refreshed after the failover, none twice.
    let refreshes_before = idp.refresh_calls.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(12)).await;
    let refreshes_after = idp.refresh_calls.load(Ordering::SeqCst);
    println!(
        "refresh grants: {refreshes_before} by the end of the load, {refreshes_after} 12 s later; reuses {}",
        idp.reuses.load(Ordering::SeqCst)
    );
    assert!(refreshes_after > refreshes_before, "the refresher resumed");
    assert_eq!(
        idp.reuses.load(Ordering::SeqCst),
        0,
        "no refresh token used twice"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM oauth_tokens WHERE refresh_status <> 'ok'"
        )
        .await,
        0,
        "no login lost its tokens"
    );
    db.close().await;

    // The old primary comes back as a standby of the new one.
    let started = Instant::now();
    cluster.script(&["rejoin"]);
    let status = cluster.script(&["status"]);
    println!(
        "{node} rejoined as a standby in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{node}:")))
        .unwrap_or_default();
    assert!(
        line.contains("\"state\": \"running\"") && line.contains("\"role\": \"replica\""),
        "{status}"
    );

    // Rolling deploy under load: every instance restarted in turn, no request fails.
    let deploy_took = Arc::new(Mutex::new(0.0));
    let (shoppers, seen) = run_load(&cluster, shoppers, &products, {
        let cluster = cluster.clone();
        let deploy_took = deploy_took.clone();
        async move |_t0: Instant| {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let started = Instant::now();
            let cluster = cluster.clone();
            tokio::task::spawn_blocking(move || cluster.script(&["deploy"]))
                .await
                .unwrap();
            *deploy_took.lock().unwrap() = started.elapsed().as_secs_f64();
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    })
    .await;
    let requests: u64 = seen.statuses.values().sum::<u64>() + seen.transport_errors;
    println!(
        "rolling deploy of 3 instances in {:.1} s under load: {requests} requests, statuses {:?}, {} failed, slowest {:.2} s",
        *deploy_took.lock().unwrap(),
        seen.statuses,
        seen.failed(),
        seen.slowest.as_secs_f64()
    );
    assert_eq!(
        seen.failed(),
        0,
        "zero failed requests: {:?}",
        seen.statuses
    );
    for shopper in &shoppers {
        shopper.assert_logged_in(&cluster).await;
    }
}
