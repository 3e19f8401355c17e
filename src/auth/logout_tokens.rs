//! `logout_token_jtis`: the back-channel logout tokens already acted on, so none is acted on
//! twice (OIDC Back-Channel Logout 2.6: the `jti` makes a token single use).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// Records `jti` of `issuer` until `until`; `false` if it was already recorded (a replay).
pub async fn remember(
    conn: &mut sqlx::PgConnection,
    issuer: &str,
    jti: &str,
    until: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let inserted = crate::db::query(
        r#"
        INSERT INTO logout_token_jtis (issuer, jti, expires_at) VALUES ($1, $2, $3)
        ON CONFLICT (issuer, jti) DO NOTHING
        "#,
    )
    .bind(issuer)
    .bind(jti)
    .bind(until)
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Forgets the tokens that can no longer be presented.
pub async fn delete_expired(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let deleted = crate::db::query("DELETE FROM logout_token_jtis WHERE expires_at < now()")
        .execute(pool)
        .await?;
    Ok(deleted.rows_affected())
}
