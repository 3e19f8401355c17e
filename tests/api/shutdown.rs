//! The real binary under SIGTERM: it stops accepting, finishes the request in flight, stops
//! the background tasks and exits 0.

use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::fake_idp::{CLIENT_ID, CLIENT_SECRET, FakeIdp, TokenEndpoint};
use crate::helpers::{browser_client, config_dir, random_b64, state_and_nonce};

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
    let exited_by = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < exited_by,
            "the binary exits after draining"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
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
    assert!(status.success(), "exit status {status:?}\n{output}");
    assert!(output.contains("Token refresher stopped"), "{output}");
    assert!(!output.contains("panicked"), "{output}");
    assert!(
        client.get(format!("{base}/health")).send().await.is_err(),
        "no longer accepting"
    );
}
