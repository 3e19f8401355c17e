use sqlx::PgPool;
use storefront::db::migrations::{self, MigrationState};

async fn tables(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = 'public' AND table_name <> '_sqlx_migrations' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn migrations_go_up_down_and_up_again(pool: PgPool) {
    let status = migrations::status(&pool).await.unwrap();
    assert!(status.iter().all(|m| m.state == MigrationState::Pending));
    assert!(
        migrations::check_ready(&status, None).is_err(),
        "serve refuses pending migrations"
    );

    let applied = migrations::apply(&pool).await.unwrap();
    assert_eq!(applied, status.len());
    let full = tables(&pool).await;
    for t in ["oauth_tokens", "sessions", "users"] {
        assert!(full.contains(&t.to_owned()), "{t} in {full:?}");
    }
    let min = migrations::min_binary_version(&pool).await.unwrap();
    migrations::check_ready(&migrations::status(&pool).await.unwrap(), min).unwrap();

    while migrations::revert_last(&pool).await.unwrap().is_some() {}
    assert!(
        tables(&pool).await.is_empty(),
        "down migrations remove everything"
    );

    migrations::apply(&pool).await.unwrap();
    assert_eq!(tables(&pool).await, full);
}

#[sqlx::test(migrations = false)]
async fn a_database_ahead_by_expand_migrations_serves_and_a_contracted_one_does_not(pool: PgPool) {
    migrations::apply(&pool).await.unwrap();
    // The next release's expand migration ran (a rolling deploy is under way).
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (99990101000000, 'from the future', true, '\\x00', 1)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let status = migrations::status(&pool).await.unwrap();
    assert!(status.iter().any(|m| m.state == MigrationState::Unknown));
    let min = migrations::min_binary_version(&pool).await.unwrap();
    assert_eq!(min, Some(20261207000003));
    migrations::check_ready(&status, min)
        .expect("an old binary may still serve an expanded schema");
    assert!(
        migrations::apply(&pool).await.is_err(),
        "but it does not migrate a database ahead of it"
    );

    // Its contract migration: binaries older than it must stop.
    sqlx::query("UPDATE schema_compatibility SET min_binary_version = 99990101000000")
        .execute(&pool)
        .await
        .unwrap();
    let min = migrations::min_binary_version(&pool).await.unwrap();
    let err = migrations::check_ready(&status, min)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("contracted for binaries of version 99990101000000"),
        "{err}"
    );
    // Without a compatibility record (a schema from before it), ahead means refused.
    let err = migrations::check_ready(&status, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not know"), "{err}");
}

#[sqlx::test(migrations = false)]
async fn migrate_status_tells_which_running_binaries_the_schema_serves(pool: PgPool) {
    migrations::apply(&pool).await.unwrap();
    // Two instances heard of recently: this build, and one from before the current contract.
    sqlx::query(
        "INSERT INTO running_instances (instance_id, host, pid, binary_version)
         VALUES (gen_random_uuid(), 'web-1', 101, $1), (gen_random_uuid(), 'web-2', 102, 20261201000005)",
    )
    .bind(migrations::binary_version())
    .execute(&pool)
    .await
    .unwrap();
    let opts = pool.connect_options();
    let url = format!(
        "postgres://{}@{}:{}/{}",
        opts.get_username(),
        if opts.get_host().starts_with('/') {
            "127.0.0.1"
        } else {
            opts.get_host()
        },
        opts.get_port(),
        opts.get_database().unwrap()
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_storefront"))
        .args(["migrate", "status"])
        .env("DATABASE_URL", url)
        .env("STOREFRONT_CONFIG_DIR", crate::helpers::config_dir())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("schema: serves binaries of version 20261207000003 or newer"),
        "{text}"
    );
    let line = |host: &str| {
        text.lines()
            .find(|l| l.contains(host))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(line("web-1").ends_with(", compatible"), "{text}");
    assert!(
        line("web-2").contains("INCOMPATIBLE: the schema was contracted"),
        "{text}"
    );
}
