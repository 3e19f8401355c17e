use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use reqwest::Url;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use storefront::configuration::{Settings, get_configuration_with};
use storefront::startup::Application;
use storefront::state::State;

use crate::fake_idp::{CLIENT_ID, CLIENT_SECRET, FakeIdp};

pub fn random_b64(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut bytes);
    STANDARD.encode(bytes)
}

pub fn config_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config")
}

pub fn base_database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Test settings with fresh random secrets, pointed at `issuer`.
pub fn test_settings(issuer: &str, client_id: &str, client_secret: &str) -> Settings {
    get_configuration_with(
        &config_dir(),
        Some("test"),
        &[
            ("database.url", base_database_url()),
            ("oidc.issuer_url", issuer.to_owned()),
            ("oidc.client_id", client_id.to_owned()),
            ("oidc.client_secret", client_secret.to_owned()),
            ("session.secret_key", random_b64(64)),
            ("tokens.encryption_key", random_b64(32)),
            (
                "server.templates_dir",
                config_dir().join("../templates").display().to_string(),
            ),
            (
                "server.static_dir",
                config_dir().join("../static").display().to_string(),
            ),
        ],
    )
    .expect("test configuration")
}

#[derive(Clone)]
pub struct TestApp {
    pub address: String,
    pub pool: PgPool,
    pub client: reqwest::Client,
    pub idp: FakeIdp,
    pub settings: Settings,
    /// The app's shared state (the refresher, the cipher), for driving background work.
    pub state: State,
    /// The port of `metrics.listen`, when set.
    pub metrics_port: Option<u16>,
}

pub use crate::provider_login::cookie_client as browser_client;

/// Token keys as configuration holds them: seal with `key` (base64) under `id`, and still
/// open the `previous` (`(id, base64)`) ones.
pub fn use_token_keys(settings: &mut Settings, id: &str, key: &str, previous: &[(&str, &str)]) {
    fn parse<T: serde::de::DeserializeOwned>(v: String) -> T {
        serde_json::from_value(serde_json::json!(v)).unwrap()
    }
    settings.tokens.key_id = id.to_owned();
    settings.tokens.encryption_key = parse(key.to_owned());
    settings.tokens.previous_keys = previous
        .iter()
        .map(|(id, key)| parse(format!("{id}:{key}")))
        .collect();
}

/// Another instance of the same deployment: the same cookie and token keys as `app`.
pub fn same_secrets(settings: &mut Settings, app: &TestApp) {
    settings.session.secret_key = app.settings.session.secret_key.clone();
    settings.tokens = app.settings.tokens.clone();
}

pub async fn spawn_app(pool_opts: PgPoolOptions, db: PgConnectOptions) -> TestApp {
    spawn_app_with(pool_opts, db, |_| {}).await
}

pub async fn spawn_app_with(
    pool_opts: PgPoolOptions,
    db: PgConnectOptions,
    customize: impl FnOnce(&mut Settings),
) -> TestApp {
    spawn_app_with_idp(pool_opts, db, FakeIdp::start().await, customize).await
}

/// As [`spawn_app_with`], against a fake provider the test has prepared (e.g. one that is down).
pub async fn spawn_app_with_idp(
    pool_opts: PgPoolOptions,
    db: PgConnectOptions,
    idp: FakeIdp,
    customize: impl FnOnce(&mut Settings),
) -> TestApp {
    if std::env::var_os("TEST_LOG").is_some() {
        storefront::telemetry::init(storefront::configuration::LogFormat::Pretty);
    }
    let mut settings = test_settings(&idp.issuer, CLIENT_ID, CLIENT_SECRET);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let address = format!("http://127.0.0.1:{port}");
    settings.server.public_url = Url::parse(&address).unwrap();
    customize(&mut settings);
    let pool = storefront::db::without_reaper(pool_opts)
        .max_connections(settings.database.max_connections)
        .acquire_timeout(settings.database.acquire_timeout())
        .connect_lazy_with(settings.database.tune(db));
    spawn_on(settings, pool, listener, idp).await
}

pub async fn spawn_on(
    settings: Settings,
    pool: PgPool,
    listener: TcpListener,
    idp: FakeIdp,
) -> TestApp {
    let port = listener.local_addr().unwrap().port();
    let app = Application::build_on(settings.clone(), pool.clone(), listener)
        .await
        .expect("app builds");
    let state = app.state().clone();
    let metrics_port = app.metrics_port();
    // Cleanup and refresh are driven by the tests themselves.
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        pool,
        client: browser_client(),
        idp,
        settings,
        state,
        metrics_port,
    }
}

impl TestApp {
    /// The same app, seen from another browser (a cookie jar of its own).
    pub fn other_browser(&self) -> TestApp {
        let mut other = self.clone();
        other.client = browser_client();
        other
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .form(form)
            .send()
            .await
            .unwrap()
    }

    /// `GET /login`; returns the provider URL's `state` and `nonce`.
    pub async fn start_login(&self, return_to: &str) -> (String, String) {
        let response = self
            .client
            .get(self.url("/login"))
            .query(&[("return_to", return_to)])
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status().as_u16(),
            302,
            "login redirects to the provider"
        );
        assert_eq!(authorize_param(&response, "code_challenge_method"), "S256");
        assert_eq!(authorize_param(&response, "response_type"), "code");
        state_and_nonce(&response)
    }

    /// `GET /callback` as the provider sends it: with its `iss` (RFC 9207, which the fake
    /// provider announces) unless the query names one, or an error with `state` only.
    pub async fn callback(&self, query: &[(&str, &str)]) -> reqwest::Response {
        let mut query = query.to_vec();
        if !query.iter().any(|(k, _)| *k == "iss") && query.iter().any(|(k, _)| *k == "code") {
            query.push(("iss", &self.idp.issuer));
        }
        self.callback_exactly(&query).await
    }

    /// `GET /callback` with exactly this query.
    pub async fn callback_exactly(&self, query: &[(&str, &str)]) -> reqwest::Response {
        self.client
            .get(self.url("/callback"))
            .query(query)
            .send()
            .await
            .unwrap()
    }

    /// A complete login as `sub` through the fake provider; returns the callback response.
    pub async fn login_as(&self, sub: &str) -> reqwest::Response {
        self.login_returning_to(sub, "/profile").await
    }

    /// A complete login as `sub` whose ID token claims `edit` may change (groups, email).
    pub async fn login_with_claims(
        &self,
        sub: &str,
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> reqwest::Response {
        let (state, nonce) = self.start_login("/").await;
        let mut claims = self.idp.valid_claims(sub, &nonce);
        edit(&mut claims);
        let code = format!("code-{}", uuid::Uuid::new_v4());
        self.idp.add_code(
            &code,
            crate::fake_idp::Grant {
                claims,
                signing: crate::fake_idp::Signing::Key(0),
            },
        );
        self.callback(&[
            ("code", &code),
            ("state", &state),
            ("iss", &self.idp.issuer),
        ])
        .await
    }

    /// A complete login as `sub` started from `/login?return_to=…`.
    pub async fn login_returning_to(&self, sub: &str, return_to: &str) -> reqwest::Response {
        let (state, nonce) = self.start_login(return_to).await;
        let code = self.idp.code_for(sub, &nonce);
        self.callback(&[
            ("code", &code),
            ("state", &state),
            ("iss", &self.idp.issuer),
        ])
        .await
    }

    /// Sends what the revocation outbox holds, as the background sender would; returns how
    /// many revocations the provider accepted.
    pub async fn send_revocations(&self) -> u64 {
        self.state.revoker.send_due().await.unwrap().sent
    }

    /// Revocations waiting in the outbox.
    pub async fn queued_revocations(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM revocation_outbox")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    pub async fn logged_in_sessions(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM sessions WHERE token_id IS NOT NULL")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// The session's CSRF token, from the home page's forms (creating the session).
    pub async fn csrf_token(&self) -> String {
        let html = self.get("/").await.text().await.unwrap();
        page_csrf_token(&html).expect("a CSRF token on the home page")
    }
}

/// The attribute `name` of the first element matching `css` in `html`.
pub fn attr(html: &str, css: &str, name: &str) -> Option<String> {
    let doc = scraper::Html::parse_document(html);
    let sel = scraper::Selector::parse(css).unwrap();
    doc.select(&sel)
        .next()
        .and_then(|e| e.value().attr(name))
        .map(str::to_owned)
}

/// The CSRF token of a page's forms.
pub fn page_csrf_token(html: &str) -> Option<String> {
    attr(html, "input[name=csrf_token]", "value")
}

/// A login written straight into the database (a user, its token row, optionally a session),
/// for tests that need many logins or one in a particular state.
pub struct TestLogin {
    subject: String,
    email: Option<String>,
    name: Option<String>,
    provider_sid: Option<String>,
    access_token: String,
    refresh_token: Option<String>,
    expires_in: std::time::Duration,
    status: &'static str,
    /// Minutes since the session was last seen; `None`: no session.
    session_seen_minutes_ago: Option<i32>,
}

impl TestLogin {
    pub fn new(subject: &str) -> Self {
        Self {
            subject: subject.to_owned(),
            email: None,
            name: None,
            provider_sid: None,
            access_token: format!("at-{subject}"),
            refresh_token: Some(format!("rt-{subject}")),
            expires_in: std::time::Duration::from_secs(3600),
            status: "ok",
            session_seen_minutes_ago: None,
        }
    }

    pub fn email(mut self, email: impl Into<String>) -> Self {
        self.email = Some(email.into());
        self
    }

    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    pub fn provider_sid(mut self, sid: impl Into<String>) -> Self {
        self.provider_sid = Some(sid.into());
        self
    }

    pub fn refresh_token(mut self, token: impl Into<String>) -> Self {
        self.refresh_token = Some(token.into());
        self
    }

    pub fn expires_in(mut self, ttl: std::time::Duration) -> Self {
        self.expires_in = ttl;
        self
    }

    /// `ok`, `retrying` or `needs_login`.
    pub fn status(mut self, status: &'static str) -> Self {
        self.status = status;
        self
    }

    /// With a live session (Firefox on Linux, from 10.0.0.1) last seen this long ago.
    pub fn with_session(mut self, seen_minutes_ago: i32) -> Self {
        self.session_seen_minutes_ago = Some(seen_minutes_ago);
        self
    }

    /// Writes the login at `app`'s provider; returns its `token_id`.
    pub async fn insert(self, app: &TestApp, conn: &mut sqlx::PgConnection) -> uuid::Uuid {
        let user_id: uuid::Uuid = sqlx::query_scalar(
            "INSERT INTO users (user_id, issuer, subject, email, name) VALUES ($1, $2, $3, $4, $5) RETURNING user_id",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(&app.idp.issuer)
        .bind(&self.subject)
        .bind(&self.email)
        .bind(&self.name)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        let tokens = storefront::auth::oidc::TokenSet {
            access_token: self.access_token.into(),
            refresh_token: self.refresh_token.map(Into::into),
            id_token: None,
            expires_in: Some(self.expires_in),
        };
        let token_id = storefront::auth::tokens::insert_tokens(
            &mut *conn,
            &app.state.cipher,
            &app.settings.refresh.cadence(),
            user_id,
            self.provider_sid.as_deref(),
            &tokens,
        )
        .await
        .unwrap();
        sqlx::query("UPDATE oauth_tokens SET refresh_status = $2 WHERE token_id = $1")
            .bind(token_id)
            .bind(self.status)
            .execute(&mut *conn)
            .await
            .unwrap();
        if let Some(minutes) = self.session_seen_minutes_ago {
            sqlx::query(
                r#"INSERT INTO sessions (session_id, key_hash, token_id, ip, user_agent, created_at,
                                        last_seen_at, expires_at, absolute_expires_at)
                   VALUES ($1, sha256($1::text::bytea), $2, '10.0.0.1',
                           'Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0',
                           now() - make_interval(mins => $3 + 60), now() - make_interval(mins => $3),
                           now() + interval '1 day', now() + interval '7 days')"#,
            )
            .bind(uuid::Uuid::now_v7())
            .bind(token_id)
            .bind(minutes)
            .execute(&mut *conn)
            .await
            .unwrap();
        }
        token_id
    }
}

/// A parameter of the provider URL a `/login` response redirects to.
pub fn authorize_param(login: &reqwest::Response, name: &str) -> String {
    let url = Url::parse(location(login)).unwrap();
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("no {name} in {url}"))
}

/// The `state` and `nonce` a `/login` response sends to the provider.
pub fn state_and_nonce(login: &reqwest::Response) -> (String, String) {
    (
        authorize_param(login, "state"),
        authorize_param(login, "nonce"),
    )
}

pub fn location(response: &reqwest::Response) -> &str {
    response
        .headers()
        .get("location")
        .expect("a Location header")
        .to_str()
        .unwrap()
}

/// 303 See Other to `expected`: where forms, logout and "please log in" send the browser.
pub fn assert_redirect_to(response: &reqwest::Response, expected: &str) {
    assert_eq!(
        response.status().as_u16(),
        303,
        "expected 303 to {expected}, got {}",
        response.status()
    );
    assert_eq!(location(response), expected);
}

/// 302 Found to `expected`: the redirects of the login flow (`/login`, `/callback`).
pub fn assert_found(response: &reqwest::Response, expected: &str) {
    assert_eq!(
        response.status().as_u16(),
        302,
        "expected 302 to {expected}, got {}",
        response.status()
    );
    assert_eq!(location(response), expected);
}

/// A TCP proxy that a test can take down and bring back, and slow down in either direction:
/// in front of Postgres to simulate an outage without touching the shared server, in front of
/// the provider to delay its answers (it has acted, the answer arrives late) or the requests
/// themselves (a request whose sender dies while it is held never reaches the provider).
pub struct TcpProxy {
    port: u16,
    down: Arc<AtomicBool>,
    generation: Arc<AtomicUsize>,
    request_delay_ms: Arc<AtomicU64>,
    response_delay_ms: Arc<AtomicU64>,
}

/// Copies `from` to `to`, holding each chunk for the current delay. While a chunk is held, a
/// sender that closes its side makes the whole chunk vanish.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay_ms: Arc<AtomicU64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut held = chunk[..n].to_vec();
        let delay = delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            let until = tokio::time::Instant::now() + Duration::from_millis(delay);
            loop {
                let mut more = vec![0u8; 16 * 1024];
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => break,
                    read = from.read(&mut more) => match read {
                        Ok(0) | Err(_) => return,
                        Ok(m) => held.extend_from_slice(&more[..m]),
                    },
                }
            }
        }
        if to.write_all(&held).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl TcpProxy {
    pub async fn start(host: &str, port: u16) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = listener.local_addr().unwrap().port();
        let proxy = TcpProxy {
            port: local,
            down: Default::default(),
            generation: Default::default(),
            request_delay_ms: Default::default(),
            response_delay_ms: Default::default(),
        };
        let target = format!(
            "{}:{port}",
            if host.starts_with('/') {
                "127.0.0.1"
            } else {
                host
            }
        );
        let (d, g) = (proxy.down.clone(), proxy.generation.clone());
        let (up, back) = (
            proxy.request_delay_ms.clone(),
            proxy.response_delay_ms.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                if d.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused-ish
                }
                let target = target.clone();
                let (d, g, up, back) = (d.clone(), g.clone(), up.clone(), back.clone());
                let born = g.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let (client_read, client_write) = inbound.into_split();
                    let (server_read, server_write) = outbound.into_split();
                    let copy = async {
                        tokio::join!(
                            pipe(client_read, server_write, up),
                            pipe(server_read, client_write, back)
                        )
                    };
                    let watch = async {
                        while !d.load(Ordering::SeqCst) && g.load(Ordering::SeqCst) == born {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! { _ = copy => {}, _ = watch => {} }
                });
            }
        });
        proxy
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Down: open connections are cut and new ones are closed at once.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Holds what clients send for `delay` before passing it on.
    pub fn delay_requests(&self, delay: Duration) {
        self.request_delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Holds what the server answers for `delay` before passing it on.
    pub fn delay_responses(&self, delay: Duration) {
        self.response_delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }
}
