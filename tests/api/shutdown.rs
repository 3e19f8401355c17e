//! The real binary under SIGTERM: it stops accepting, finishes the request in flight, stops
//! the background tasks and exits 0.

use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::fake_idp::{CLIENT_ID, CLIENT_SECRET, FakeIdp, TokenEndpoint};
use crate::helpers::{browser_client, config_dir, random_b64, spawn_app_with_idp, state_and_nonce};

fn database_url(db: &PgConnectOptions) -> String {
    format!(
        "postgres://{}@{}:{}/{}",
        db.get_username(),
        if db.get_host().starts_with('/') {
            "127.0.0.1"
        } else {
            db.get_host()
        },
        db.get_port(),
        db.get_database().expect("a test database")
    )
}

#[sqlx::test]
async fn sigterm_drains_the_request_in_flight_and_stops_cleanly(
    _opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let idp = FakeIdp::start().await;
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let root = config_dir().join("..");
    let mut child = Command::new(env!("CARGO_BIN_EXE_storefront"))
        .arg("serve")
        .env("STOREFRONT_CONFIG_DIR", config_dir())
        .env("STOREFRONT_ENV", "test")
        .env("RUST_LOG", "info")
        .env("DATABASE_URL", database_url(&db))
        .env("STOREFRONT__DATABASE__MIGRATE_ON_START", "true")
        .env("STOREFRONT__SERVER__PORT", port.to_string())
        .env("STOREFRONT__SERVER__PUBLIC_URL", &base)
        .env("STOREFRONT__SERVER__TEMPLATES_DIR", root.join("templates"))
        .env("STOREFRONT__SERVER__STATIC_DIR", root.join("static"))
        .env("STOREFRONT__OIDC__ISSUER_URL", &idp.issuer)
        .env("STOREFRONT__OIDC__CLIENT_ID", CLIENT_ID)
        .env("STOREFRONT__OIDC__CLIENT_SECRET", CLIENT_SECRET)
        .env("STOREFRONT__SESSION__SECRET_KEY", random_b64(64))
        .env("STOREFRONT__TOKENS__ENCRYPTION_KEY", random_b64(32))
        .env("STOREFRONT__REFRESH__ENABLED", "true")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = browser_client();
    let ready_by = Instant::now() + Duration::from_secs(20);
    while !client
        .get(format!("{base}/health"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < ready_by, "the binary starts");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A login whose code exchange takes a second and a half is in flight when SIGTERM arrives
    // (the provider timeout in tests is two seconds).
    let login = client.get(format!("{base}/login")).send().await.unwrap();
    let (state, nonce) = state_and_nonce(&login);
    let code = idp.code_for("alice", &nonce);
    let secrets_sent = [code.clone(), state.clone()];
    idp.set_token_endpoint(TokenEndpoint::Delay(Duration::from_millis(1500)));
    let callback = {
        let client = client.clone();
        let url = format!("{base}/callback");
        let issuer = idp.issuer.clone();
        tokio::spawn(async move {
            client
                .get(url)
                .query(&[("code", code.as_str()), ("state", &state), ("iss", &issuer)])
                .send()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());

    let response = callback
        .await
        .unwrap()
        .expect("the request in flight is answered");
    assert_eq!(
        response.status().as_u16(),
        302,
        "the login completed during the drain"
    );
    let (status, output) = exit_of(&mut child, Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status:?}\n{output}");
    assert!(output.contains("Token refresher stopped"), "{output}");
    assert!(!output.contains("panicked"), "{output}");
    // The request was logged (its span is on "User logged in"), its query was not.
    assert!(output.contains("User logged in"), "{output}");
    for secret in &secrets_sent {
        assert!(
            !output.contains(secret.as_str()),
            "a code or state in the log:\n{output}"
        );
    }
    assert!(
        client.get(format!("{base}/health")).send().await.is_err(),
        "no longer accepting"
    );
}

/// The real binary as another instance of `app`'s deployment (same database, keys and
/// provider), with its background refresher on.
async fn spawn_instance(
    db: &PgConnectOptions,
    issuer: &str,
    secrets: &Secrets,
    env: &[(&str, &str)],
) -> Instance {
    let root = config_dir().join("..");
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_storefront"))
        .arg("serve")
        .env("STOREFRONT_CONFIG_DIR", config_dir())
        .env("STOREFRONT_ENV", "test")
        .env("RUST_LOG", "info")
        .env("DATABASE_URL", database_url(db))
        .env("STOREFRONT__SERVER__PORT", port.to_string())
        .env(
            "STOREFRONT__SERVER__PUBLIC_URL",
            format!("http://127.0.0.1:{port}"),
        )
        .env("STOREFRONT__SERVER__TEMPLATES_DIR", root.join("templates"))
        .env("STOREFRONT__SERVER__STATIC_DIR", root.join("static"))
        .env("STOREFRONT__OIDC__ISSUER_URL", issuer)
        .env("STOREFRONT__OIDC__CLIENT_ID", CLIENT_ID)
        .env("STOREFRONT__OIDC__CLIENT_SECRET", CLIENT_SECRET)
        .env("STOREFRONT__SESSION__SECRET_KEY", &secrets.session)
        .env("STOREFRONT__TOKENS__ENCRYPTION_KEY", &secrets.tokens)
        .env("STOREFRONT__REFRESH__ENABLED", "true")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let child = Instance(child, port);
    // Up, and its provider discovered.
    let client = browser_client();
    until(
        Duration::from_secs(20),
        "the binary is ready",
        async || match client
            .get(format!("http://127.0.0.1:{port}/health"))
            .send()
            .await
        {
            Ok(r) => r
                .json::<serde_json::Value>()
                .await
                .is_ok_and(|h| h["identity_provider"] == "ok"),
            Err(_) => false,
        },
    )
    .await;
    child
}

/// A running binary, killed if the test ends (or fails) before it exits.
struct Instance(std::process::Child, u16);

impl Instance {
    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.1)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The keys an in-process app and a binary share.
struct Secrets {
    session: String,
    tokens: String,
}

impl Secrets {
    fn new() -> Self {
        Self {
            session: random_b64(64),
            tokens: random_b64(32),
        }
    }

    fn apply(&self, s: &mut storefront::configuration::Settings) {
        s.session.secret_key = serde_json::from_value(serde_json::json!(self.session)).unwrap();
        s.tokens.encryption_key = serde_json::from_value(serde_json::json!(self.tokens)).unwrap();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits for `child` to exit (failing after `within`); returns its status and output.
async fn exit_of(
    child: &mut std::process::Child,
    within: Duration,
) -> (std::process::ExitStatus, String) {
    let exited_by = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < exited_by,
            "the binary exits within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut output = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut output)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut output)
        .unwrap();
    (status, output)
}

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

async fn until(within: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[sqlx::test]
async fn sigterm_mid_refresh_writes_the_answers_releases_the_rest_and_exits_promptly(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let (idp, proxy) = FakeIdp::start_behind_proxy().await;
    let secrets = Secrets::new();
    let app = spawn_app_with_idp(opts, db.clone(), idp.clone(), |s| secrets.apply(s)).await;
    // A call's deadline well beyond the answers' 2 s, so a slow machine cannot turn an answer
    // into a timeout.
    let mut child = spawn_instance(
        &db,
        &idp.issuer,
        &secrets,
        &[
            ("STOREFRONT__REFRESH__CALL_TIMEOUT_SECS", "10"),
            ("STOREFRONT__REFRESH__LEAD_SECS", "15"),
        ],
    )
    .await;
    // The provider acts at once; its answers take 2 s to come back.
    proxy.delay_responses(Duration::from_secs(2));
    crate::refresh::seed_logins(&app, 5).await;
    until(
        Duration::from_secs(20),
        "the refreshes are sent",
        async || idp.refresh_calls.load(Ordering::SeqCst) == 5,
    )
    .await;
    let term = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let signalled = Instant::now();
    let (status, output) = exit_of(&mut child.0, Duration::from_secs(5)).await;
    println!("exited {:.2?} after SIGTERM", signalled.elapsed());
    assert!(status.success(), "exit status {status:?}\n{output}");
    assert!(!output.contains("being shutdown"), "{output}");
    assert!(!output.contains("Refresh not recorded"), "{output}");
    assert_eq!(
        count(&app.pool, "SELECT count(*) FROM oauth_tokens WHERE access_expires_at > now() + interval '1 minute' AND refresh_status = 'ok'").await,
        5,
        "every answer written"
    );
    assert_eq!(
        count(
            &app.pool,
            "SELECT count(*) FROM oauth_tokens WHERE refresh_claim IS NOT NULL"
        )
        .await,
        0,
        "no claim left behind"
    );
    assert_eq!(idp.reuses.load(Ordering::SeqCst), 0);
}

#[sqlx::test]
async fn kill_9_mid_call_lets_the_claim_lapse_within_the_lease_and_the_next_page_answers_fast(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let (idp, proxy) = FakeIdp::start_behind_proxy().await;
    let secrets = Secrets::new();
    let app = spawn_app_with_idp(opts, db.clone(), idp.clone(), |s| secrets.apply(s)).await;
    app.login_as("alice").await;
    let mut child = spawn_instance(
        &db,
        &idp.issuer,
        &secrets,
        &[
            ("STOREFRONT__REFRESH__CALL_TIMEOUT_SECS", "20"),
            ("STOREFRONT__REFRESH__LEAD_SECS", "25"),
        ],
    )
    .await;
    // The refresh request is held on its way to the provider, so the instance dies mid-call.
    proxy.delay_requests(Duration::from_secs(30));
    sqlx::query("UPDATE oauth_tokens SET access_expires_at = now()")
        .execute(&app.pool)
        .await
        .unwrap();
    until(
        Duration::from_secs(20),
        "the instance claims the token",
        async || {
            count(
                &app.pool,
                "SELECT count(*) FROM oauth_tokens WHERE refresh_claim IS NOT NULL",
            )
            .await
                == 1
        },
    )
    .await;
    // Its claim is renewed while the call runs: one lease (2 s) is never the limit of a call.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        count(
            &app.pool,
            "SELECT count(*) FROM oauth_tokens WHERE refresh_claimed_until > now()"
        )
        .await,
        1,
        "the claim is kept alive during a long call"
    );
    child.0.kill().unwrap();
    let killed = Instant::now();
    let _ = child.0.wait();
    proxy.delay_requests(Duration::ZERO);
    until(
        Duration::from_secs(5),
        "the dead instance's claim lapses",
        async || {
            count(
                &app.pool,
                "SELECT count(*) FROM oauth_tokens WHERE refresh_claimed_until > now()",
            )
            .await
                == 0
        },
    )
    .await;
    let lapsed = killed.elapsed();
    println!("claim lapsed {lapsed:.2?} after kill -9");
    assert!(
        lapsed < Duration::from_millis(2500),
        "within the 2 s lease: {lapsed:?}"
    );

    let asked = Instant::now();
    let page = app.get("/profile").await;
    let answered = asked.elapsed();
    println!("next page answered in {answered:.2?}");
    assert_eq!(
        page.status().as_u16(),
        200,
        "the held request never reached the provider"
    );
    assert!(answered < Duration::from_secs(3), "{answered:?}");
    assert_eq!(
        idp.refresh_calls.load(Ordering::SeqCst),
        1,
        "only the survivor's call"
    );
    assert_eq!(idp.reuses.load(Ordering::SeqCst), 0);
}

#[sqlx::test]
async fn the_log_of_a_login_an_admin_search_and_a_logout_holds_no_secret(
    _opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let idp = FakeIdp::start().await;
    let secrets = Secrets::new();
    // Debug for the shop itself, as an operator chasing a problem would set it.
    let mut instance = spawn_instance(
        &db,
        &idp.issuer,
        &secrets,
        &[
            ("RUST_LOG", "info,storefront=debug,tracing_actix_web=debug"),
            ("STOREFRONT__ADMIN__SUBJECTS", "alice"),
        ],
    )
    .await;
    let base = instance.base_url();
    let client = browser_client();
    let mut secrets_seen: Vec<String> = Vec::new();

    let login = client
        .get(format!("{base}/login?return_to=/admin"))
        .send()
        .await
        .unwrap();
    let (state, nonce) = state_and_nonce(&login);
    let code = idp.code_for("alice", &nonce);
    secrets_seen.extend([state.clone(), nonce, code.clone()]);
    let callback = client
        .get(format!("{base}/callback"))
        .query(&[
            ("code", code.as_str()),
            ("state", &state),
            ("iss", &idp.issuer),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(callback.status().as_u16(), 302);
    for cookie in callback.headers().get_all("set-cookie") {
        let value = cookie.to_str().unwrap();
        let value = value.split(';').next().unwrap().split_once('=').unwrap().1;
        secrets_seen.push(value.to_owned());
    }

    let term = "searched-person-7f3a@example.org";
    let search = client
        .get(format!("{base}/admin/sessions"))
        .query(&[("q", term)])
        .send()
        .await
        .unwrap();
    assert_eq!(search.status().as_u16(), 200, "alice is an admin");
    secrets_seen.push(term.to_owned());

    let home = client.get(format!("{base}/")).send().await.unwrap();
    let csrf = crate::helpers::page_csrf_token(&home.text().await.unwrap()).unwrap();
    secrets_seen.push(csrf.clone());
    let logout = client
        .post(format!("{base}/logout"))
        .form(&[("csrf_token", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status().as_u16(), 303);

    let term_signal = Command::new("kill")
        .args(["-TERM", &instance.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term_signal.success());
    let (status, output) = exit_of(&mut instance.0, Duration::from_secs(15)).await;
    assert!(status.success(), "{output}");
    assert!(
        output.contains("User logged in"),
        "the log was captured:\n{output}"
    );
    assert!(output.contains("User logged out"), "{output}");
    for secret in &secrets_seen {
        assert!(
            !output.contains(secret.as_str()),
            "{secret:?} in the log:\n{output}"
        );
    }
    // The provider's tokens: access `at-<uuid>`, refresh `rt-<uuid>`, ID tokens (JWTs).
    assert!(!output.contains("eyJ"), "a JWT in the log:\n{output}");
    for prefix in ["at-", "rt-"] {
        for (at, _) in output.match_indices(prefix) {
            let candidate = output.get(at + 3..at + 39).unwrap_or_default();
            assert!(
                uuid::Uuid::parse_str(candidate).is_err(),
                "a token in the log: {prefix}{candidate}"
            );
        }
    }
}
