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
        migrations::check_ready(&status).is_err(),
        "serve refuses pending migrations"
    );

    let applied = migrations::apply(&pool).await.unwrap();
    assert_eq!(applied, status.len());
    let full = tables(&pool).await;
    for t in ["oauth_tokens", "sessions", "users"] {
        assert!(full.contains(&t.to_owned()), "{t} in {full:?}");
    }
    migrations::check_ready(&migrations::status(&pool).await.unwrap()).unwrap();

    while migrations::revert_last(&pool).await.unwrap().is_some() {}
    assert!(
        tables(&pool).await.is_empty(),
        "down migrations remove everything"
    );

    migrations::apply(&pool).await.unwrap();
    assert_eq!(tables(&pool).await, full);
}

#[sqlx::test(migrations = false)]
async fn a_database_ahead_of_the_binary_is_refused(pool: PgPool) {
    migrations::apply(&pool).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (99990101000000, 'from the future', true, '\\x00', 1)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let status = migrations::status(&pool).await.unwrap();
    assert!(status.iter().any(|m| m.state == MigrationState::Unknown));
    let err = migrations::check_ready(&status).unwrap_err().to_string();
    assert!(err.contains("newer than this build"), "{err}");
    assert!(migrations::apply(&pool).await.is_err());
}
