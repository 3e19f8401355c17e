//! The real local provider (`idp/`, npm `oidc-provider`): starting it for a shop, and logging
//! in through it the way a browser does (the shop's `/login`, the provider's redirects and
//! login form, back to the shop's `/callback`). Shared by the integration tests and the
//! benchmarks.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::Url;

/// The provider's Node process; killed when dropped.
pub struct LocalProvider {
    pub issuer: String,
    child: Child,
}

impl Drop for LocalProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the provider on a free port for the shop at `shop` (client `storefront` with
/// `secret`), access tokens living `access_ttl_secs`; returns once discovery answers.
pub async fn start(shop: &str, secret: &str, access_ttl_secs: u32) -> LocalProvider {
    start_with(shop, secret, access_ttl_secs, &[]).await
}

/// As [`start`], with more of the provider's settings (`IDP_CLIENT_AUTH`, `IDP_REQUIRE_PAR`…).
///
/// The port is picked free and then handed to Node, so another process may take it in
/// between: a provider that cannot listen is started again on another port. One that exits
/// for any other reason, or does not answer discovery within a minute (a loaded machine
/// starts Node slowly), fails the test with what it printed.
pub async fn start_with(
    shop: &str,
    secret: &str,
    access_ttl_secs: u32,
    env: &[(&str, String)],
) -> LocalProvider {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("idp");
    assert!(
        dir.join("node_modules/oidc-provider").exists(),
        "run `scripts/idp.sh install` (npm ci in idp/) first"
    );
    for _ in 0..3 {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log =
            std::env::temp_dir().join(format!("storefront-idp-{}-{port}.log", std::process::id()));
        let output = std::fs::File::create(&log).expect("a log file for the provider");
        let child = Command::new("node")
            .arg("server.js")
            .current_dir(&dir)
            .env("IDP_PORT", port.to_string())
            .env("IDP_CLIENT_ID", "storefront")
            .env("IDP_CLIENT_SECRET", secret)
            .env("IDP_REDIRECT_URIS", format!("{shop}/callback"))
            .env("IDP_POST_LOGOUT_REDIRECT_URIS", format!("{shop}/"))
            .env(
                "IDP_BACKCHANNEL_LOGOUT_URI",
                format!("{shop}/backchannel-logout"),
            )
            .env("IDP_LOG_REQUESTS", "0")
            .env("IDP_ACCESS_TOKEN_TTL", access_ttl_secs.to_string())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::from(output.try_clone().expect("the log file")))
            .stderr(Stdio::from(output))
            .spawn()
            .expect("node runs");
        // Owned at once, so the process is killed however this function ends.
        let mut provider = LocalProvider {
            issuer: format!("http://127.0.0.1:{port}"),
            child,
        };
        let started = provider.wait_until_ready(&log).await;
        let printed = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        match started {
            Ready::Yes => return provider,
            Ready::Exited if printed.contains("cannot listen") => continue,
            Ready::Exited => panic!("the local provider exited at start:\n{printed}"),
            Ready::TimedOut => panic!("the local provider did not start in time:\n{printed}"),
        }
    }
    panic!("the local provider found no free port in three tries");
}

enum Ready {
    Yes,
    Exited,
    TimedOut,
}

impl LocalProvider {
    /// Waits until the process says it listens (so the port is its own, not another
    /// process's that took it first) and discovery answers.
    async fn wait_until_ready(&mut self, log: &std::path::Path) -> Ready {
        let url = format!("{}/.well-known/openid-configuration", self.issuer);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        for _ in 0..600 {
            if self
                .child
                .try_wait()
                .expect("the provider's status")
                .is_some()
            {
                return Ready::Exited;
            }
            let listening = std::fs::read_to_string(log)
                .is_ok_and(|printed| printed.contains("storefront-idp listening on"));
            if listening
                && client
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            {
                return Ready::Yes;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ready::TimedOut
    }
}

fn location(response: &reqwest::Response) -> &str {
    response
        .headers()
        .get("location")
        .expect("a Location header")
        .to_str()
        .expect("an ASCII Location")
}

/// Follows the provider's redirects with its own cookie jar, logging in with the form when
/// asked, until the provider sends the browser back to the shop (`shop` is its base URL).
/// Returns the URL on the shop it was sent to (the `/callback?code=…` address).
pub async fn through_provider(
    provider: &reqwest::Client,
    start: &str,
    shop: &str,
    user: &str,
) -> String {
    let mut url = Url::parse(start).unwrap();
    for _ in 0..10 {
        if url.as_str().starts_with(shop) {
            return url.to_string();
        }
        let response = provider.get(url.clone()).send().await.unwrap();
        if response.status().is_redirection() {
            url = url.join(location(&response)).unwrap();
            continue;
        }
        assert_eq!(response.status().as_u16(), 200, "at {url}");
        let html = response.text().await.unwrap();
        assert!(html.contains("id=\"login\""), "a login form at {url}");
        let action = url.join(&format!("{}/login", url.path())).unwrap();
        let response = provider
            .post(action)
            .form(&[("login", user), ("password", &format!("{user}-password"))])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 303, "login accepted");
        url = url.join(location(&response)).unwrap();
    }
    panic!("the provider never sent the browser back");
}

/// A browser's cookie jar that does not follow redirects.
pub fn cookie_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .build()
        .unwrap()
}

/// A complete login as `user`: `shop_client` keeps the shop's cookies, `provider` the
/// provider's. Returns where the callback sent the browser.
pub async fn log_in(
    shop_client: &reqwest::Client,
    provider: &reqwest::Client,
    shop: &str,
    return_to: &str,
    user: &str,
) -> String {
    log_in_with(
        shop_client,
        provider,
        shop,
        &[("return_to", return_to)],
        user,
    )
    .await
}

/// As [`log_in`], starting at `/login` with `query` (`provider=…`, `return_to=…`).
pub async fn log_in_with(
    shop_client: &reqwest::Client,
    provider: &reqwest::Client,
    shop: &str,
    query: &[(&str, &str)],
    user: &str,
) -> String {
    let response = shop_client
        .get(format!("{shop}/login"))
        .query(query)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status().as_u16(),
        302,
        "login redirects to the provider"
    );
    let back = through_provider(provider, location(&response), shop, user).await;
    let callback = shop_client.get(&back).send().await.unwrap();
    assert_eq!(callback.status().as_u16(), 302, "callback completes");
    location(&callback).to_owned()
}
