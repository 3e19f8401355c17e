//! The Node stack the shop is compared with (`bench/express/`): Express, express-session in
//! Redis through connect-redis, openid-client, logged in through its own copy of the local
//! provider, and a `/me` that checks the session's token expiry.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::provider_login::{self, LocalProvider};
use super::{free_port, random_b64, root};

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Express {
    base: String,
    /// One logged-in session cookie per user.
    pub cookies: Vec<String>,
    _node: Process,
    _redis: Process,
    _provider: LocalProvider,
}

impl Express {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// Starts Redis, the provider and the Express app, and logs `users` users in.
pub async fn start(users: usize, _shop_secret: &str) -> anyhow::Result<Express> {
    let dir = root().join("bench/express");
    if !dir.join("node_modules/express-session").exists() {
        bail!("bench/express has no node_modules (bench/run.sh runs npm ci there)");
    }
    let redis_port = free_port()?;
    let redis = Process(
        Command::new("redis-server")
            .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .context("starting redis-server (Debian package `redis-server`)")?,
    );
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let secret = random_b64(24);
    let provider = provider_login::start(&base, &secret, 3600).await;
    let node = Process(
        Command::new("node")
            .arg("server.js")
            .current_dir(&dir)
            .env("PORT", port.to_string())
            .env("ISSUER", &provider.issuer)
            .env("CLIENT_ID", "storefront")
            .env("CLIENT_SECRET", &secret)
            .env("REDIS_URL", format!("redis://127.0.0.1:{redis_port}"))
            .env("SESSION_SECRET", random_b64(32))
            .env("NODE_ENV", "production")
            .stdout(Stdio::null())
            .spawn()
            .context("starting node")?,
    );
    let ready_by = Instant::now() + Duration::from_secs(30);
    while !reqwest::get(format!("{base}/me"))
        .await
        .is_ok_and(|r| r.status().as_u16() == 401)
    {
        anyhow::ensure!(Instant::now() < ready_by, "the Express app did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut cookies = Vec::new();
    for i in 0..users {
        cookies.push(super::load::log_in(&base, &format!("user{i}")).await?.0);
    }
    Ok(Express {
        base,
        cookies,
        _node: node,
        _redis: redis,
        _provider: provider,
    })
}
