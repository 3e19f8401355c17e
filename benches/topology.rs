//! The whole deployment against one instance, under the same load, in one run:
//!
//! - `deploy/cluster.sh` starts the topology with the release binary: HAProxy → 3 instances →
//!   PgBouncer (transaction pooling) → the Patroni primary with its synchronous standby;
//! - a fourth instance of the same binary serves the same database straight from the primary
//!   (no load balancer, no pooler, cached prepared statements): the single-instance figure;
//!   a fifth is configured as the topology's are (through PgBouncer) but reached directly,
//!   which separates the pooler's cost from the balancer's and the shared cores';
//! - `BENCH_USERS` users (default 32) log in through the local provider, via HAProxy;
//! - `wrk` drives `BENCH_CONNECTIONS` connections (default 32) for `BENCH_SECONDS` (default 8)
//!   at each page, first through HAProxy, then at the single instance, with the users' cookies.
//!
//! Everything runs on this machine's 2 cores: HAProxy, four shops, PgBouncer, two Postgres,
//! Patroni, the provider and wrk share them, so the topology's figure is a floor, not what 3
//! machines would do. The seed's 50,000 daily users are turned into a request rate for the
//! headroom (the assumptions are printed).
//!
//! Run with `bench/topology.sh`.

mod support;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};
use sqlx::postgres::PgPoolOptions;
use support::load::{Load, log_in, wrk};
use support::{env_usize, random_b64, root};

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run())
}

struct Cluster {
    dir: PathBuf,
    base: u16,
    env: Vec<(String, String)>,
}

impl Cluster {
    fn script(&self, args: &[&str], env_file: Option<&PathBuf>) -> anyhow::Result<String> {
        let mut command = Command::new("bash");
        command
            .arg(root().join("deploy/cluster.sh"))
            .args(args)
            .env("CLUSTER_DIR", &self.dir)
            .env("CLUSTER_PORT_BASE", self.base.to_string())
            .env("STOREFRONT_BIN", env!("CARGO_BIN_EXE_storefront"))
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(file) = env_file {
            command.env("STOREFRONT_ENV_FILE", file);
        }
        let output = command.output()?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            bail!("cluster.sh {args:?}:\n{text}");
        }
        Ok(text)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.script(&["destroy"], None);
    }
}

fn row(page: &str, via: &str, load: &Load) {
    println!(
        "{page:<22} {via:<26} {:>9.0} req/s   p50 {:>7.2} ms   p99 {:>7.2} ms   non-2xx/3xx {}",
        load.per_sec, load.p50_ms, load.p99_ms, load.non_2xx
    );
}

async fn run() -> anyhow::Result<()> {
    let users = env_usize("BENCH_USERS", 32);
    let connections = env_usize("BENCH_CONNECTIONS", 32);
    let seconds = env_usize("BENCH_SECONDS", 8);
    let base: u16 = env_usize("BENCH_PORT_BASE", 7600) as u16;
    let front = format!("http://127.0.0.1:{base}");
    let secret = random_b64(24);
    let idp = support::provider_login::start(&front, &secret, 3600).await;
    let dir = std::env::temp_dir().join("storefront-bench-cluster");
    let settings = dir.with_extension("env");
    std::fs::write(
        &settings,
        "STOREFRONT__RATE_LIMIT__ENABLED=false\nRUST_LOG=warn\n",
    )?;
    let cluster = Cluster {
        dir,
        base,
        env: vec![
            ("OIDC_ISSUER".into(), idp.issuer.clone()),
            ("OIDC_CLIENT_ID".into(), "storefront".into()),
            ("OIDC_CLIENT_SECRET".into(), secret),
        ],
    };
    let _ = cluster.script(&["destroy"], None);
    cluster.script(&["start"], Some(&settings))?;

    // The single instance: straight to the primary's own port.
    let primary = (1..=2)
        .find(|n| {
            Command::new("curl")
                .args(["-fs", "-o", "/dev/null"])
                .arg(format!("http://127.0.0.1:{}/primary", base + 30 + n))
                .status()
                .is_ok_and(|s| s.success())
        })
        .context("a primary")?;
    let direct_settings = settings.with_extension("direct.env");
    std::fs::write(
        &direct_settings,
        format!(
            "STOREFRONT__RATE_LIMIT__ENABLED=false\nRUST_LOG=warn\n\
             DATABASE_URL=postgres://postgres@127.0.0.1:{}/storefront\n\
             STOREFRONT__DATABASE__POOLER=none\n",
            base + 20 + primary
        ),
    )?;
    cluster.script(&["start-instance", "4"], Some(&direct_settings))?;
    let direct = format!("http://127.0.0.1:{}", base + 4);
    // And one more as the topology's instances are (through PgBouncer, transaction pooling),
    // reached without HAProxy: what the pooler costs, apart from the balancer and the cores.
    cluster.script(&["start-instance", "5"], Some(&settings))?;
    let pooled = format!("http://127.0.0.1:{}", base + 5);

    let db = storefront::db::without_reaper(PgPoolOptions::new())
        .max_connections(2)
        .connect(&format!(
            "postgres://postgres@127.0.0.1:{}/storefront",
            base + 20 + primary
        ))
        .await?;
    let mut cookies = Vec::new();
    for i in 0..users {
        cookies.push(log_in(&front, &format!("user{i}")).await?.0);
    }
    println!(
        "\nwrk -t2 -c{connections} -d{seconds}s, {users} users; topology = HAProxy → 3 instances → \
         PgBouncer (transaction pooling) → primary + synchronous standby; single = 1 instance → primary"
    );
    let mut results = Vec::new();
    for (page, with_cookies) in [
        ("/", false),
        ("/products/ceramic-mug", false),
        ("/cart", true),
        ("/orders", true),
    ] {
        let jar: &[String] = if with_cookies { &cookies } else { &[] };
        let (topology, _) = wrk(&format!("{front}{page}"), jar, connections, seconds, &db).await?;
        row(page, "topology (via HAProxy)", &topology);
        let (through_pooler, _) =
            wrk(&format!("{pooled}{page}"), jar, connections, seconds, &db).await?;
        row(page, "1 instance via PgBouncer", &through_pooler);
        let (single, _) = wrk(&format!("{direct}{page}"), jar, connections, seconds, &db).await?;
        row(page, "single instance", &single);
        results.push((page, topology, single));
    }

    // The seed's 50,000 daily users as a request rate: 20 page views each a day, a tenth of a
    // day's traffic in the busiest hour, and bursts of three times that hour's average.
    let daily_views = 50_000.0 * 20.0;
    let peak = daily_views * 0.10 / 3600.0 * 3.0;
    println!(
        "\n50,000 daily users × 20 page views = {daily_views:.0} views/day; busiest hour 10 % of \
         them, bursts 3× that hour's average: {peak:.0} req/s to serve"
    );
    for (page, topology, single) in &results {
        println!(
            "{page:<22} topology / single = {:.2}; headroom over the peak: topology {:.0}×, single {:.0}×",
            topology.per_sec / single.per_sec,
            topology.per_sec / peak,
            single.per_sec / peak
        );
    }
    db.close().await;
    Ok(())
}
