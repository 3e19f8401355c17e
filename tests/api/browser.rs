//! Journeys in a real headless Chromium (Debian's), driven by playwright-core scripts in
//! `tests/browser/`, against the app and the real local provider. Screenshots of every step
//! are kept under `target/browser-screenshots/`.

use std::path::PathBuf;
use std::process::Command;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::real_idp::{spawn_with_real_idp, spawn_with_real_idp_with};

pub fn screenshot_dir(journey: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("browser-screenshots").join(journey);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Runs `tests/browser/<script>` with `env`; panics with its output unless it succeeds.
pub async fn run_journey(script: &str, env: &[(&str, String)]) -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "run `scripts/browser.sh install` first"
    );
    let script = script.to_owned();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    // The app runs on this test's runtime: wait for node off it.
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(&script)
            .current_dir(&dir)
            .envs(env)
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "browser journey failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[sqlx::test]
async fn a_shopper_buys_two_products_logging_in_at_checkout(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let (app, idp) = spawn_with_real_idp(opts, db).await;
    storefront::shop::demo::load(&app.pool).await.unwrap();
    let shots = screenshot_dir("shop-journey");
    let out = run_journey(
        "shop-journey.mjs",
        &[
            ("SHOP_URL", app.address.clone()),
            ("ISSUER", idp.issuer.clone()),
            ("SCREENSHOT_DIR", shots.display().to_string()),
            ("SHOPPER", "bob".into()),
        ],
    )
    .await;
    assert!(out.contains("shop journey: ok"), "{out}");
    // What the browser saw is what the database holds.
    let items: Vec<(String, i32)> = sqlx::query_as(
        r#"SELECT i.name, i.quantity FROM order_items i
           JOIN orders o USING (order_id) JOIN users u USING (user_id)
           WHERE u.subject = 'bob' ORDER BY i.name"#,
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        items,
        vec![
            ("A5 Dot-Grid Notebook".into(), 2),
            ("Ceramic Mug".into(), 1)
        ]
    );
    let pngs = std::fs::read_dir(&shots).unwrap().count();
    assert!(pngs >= 8, "a screenshot per step ({pngs})");
}

#[sqlx::test]
async fn an_admin_revokes_a_shoppers_session_from_the_dashboard(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let (app, idp) = spawn_with_real_idp(opts, db).await;
    let shots = screenshot_dir("admin-journey");
    let out = run_journey(
        "admin-journey.mjs",
        &[
            ("SHOP_URL", app.address.clone()),
            ("ISSUER", idp.issuer.clone()),
            ("SCREENSHOT_DIR", shots.display().to_string()),
        ],
    )
    .await;
    assert!(out.contains("admin journey: ok"), "{out}");
    let audit: Vec<(String, String)> =
        sqlx::query_as("SELECT admin_subject, target_subject FROM admin_audit")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(audit, vec![("alice".into(), "bob".into())]);
    let bob_sessions: i64 = sqlx::query_scalar(
        r#"SELECT count(*) FROM sessions s JOIN oauth_tokens t USING (token_id)
           JOIN users u USING (user_id) WHERE u.subject = 'bob'"#,
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(bob_sessions, 0);
}

#[sqlx::test]
async fn a_shopper_signs_out_another_browser_and_confirms_a_large_order(
    opts: PgPoolOptions,
    db: PgConnectOptions,
) {
    let max_age = 4;
    let (app, idp) = spawn_with_real_idp_with(opts, db, 3600, |s| {
        s.checkout.step_up_above_cents = 2000;
        s.checkout.step_up_max_age_secs = max_age;
    })
    .await;
    storefront::shop::demo::load(&app.pool).await.unwrap();
    let shots = screenshot_dir("account-journey");
    let out = run_journey(
        "account-journey.mjs",
        &[
            ("SHOP_URL", app.address.clone()),
            ("ISSUER", idp.issuer.clone()),
            ("SCREENSHOT_DIR", shots.display().to_string()),
            ("STEP_UP_MAX_AGE_SECS", max_age.to_string()),
        ],
    )
    .await;
    assert!(out.contains("account journey: ok"), "{out}");
    let orders: Vec<i64> = sqlx::query_scalar(
        r#"SELECT o.total_cents::bigint FROM orders o JOIN users u USING (user_id)
           WHERE u.subject = 'carol' ORDER BY o.created_at"#,
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        orders.len(),
        2,
        "the small order, then the large one: {orders:?}"
    );
    assert!(orders[0] < 2000 && orders[1] > 2000, "{orders:?}");
    let audit: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM admin_audit WHERE admin_subject = 'carol' ORDER BY at",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(audit, ["sign_out_session"]);
}

#[sqlx::test]
async fn shoppers_choose_between_two_providers(opts: PgPoolOptions, db: PgConnectOptions) {
    let two = crate::several_providers::spawn_two(opts, db, |_| {}).await;
    storefront::shop::demo::load(&two.app.pool).await.unwrap();
    let shots = screenshot_dir("providers-journey");
    let out = run_journey(
        "providers-journey.mjs",
        &[
            ("SHOP_URL", two.app.address.clone()),
            ("STAFF_ISSUER", two.staff.issuer.clone()),
            ("SHOPPERS_ISSUER", two.shoppers.issuer.clone()),
            ("SCREENSHOT_DIR", shots.display().to_string()),
        ],
    )
    .await;
    assert!(out.contains("providers journey: ok"), "{out}");
    let issuers: Vec<String> =
        sqlx::query_scalar("SELECT t.issuer FROM oauth_tokens t ORDER BY t.subject")
            .fetch_all(&two.app.pool)
            .await
            .unwrap();
    assert_eq!(
        issuers,
        [two.staff.issuer.clone(), two.shoppers.issuer.clone()]
    );
}
