//! Moving sealed tokens to the current key, in small batches, so a previous key can be
//! retired: run by the cleanup task on every pass, and by `storefront tokens rekey`.

use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::aad;
use crate::crypto::TokenCipher;

/// How many rows each key seals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct KeyUsage {
    pub key_id: String,
    pub logins: i64,
}

/// Rows sealed under each key, the current one included: logins, and tokens still queued
/// for revocation (a key must stay until those are sent too).
pub async fn key_usage(pool: &PgPool) -> Result<Vec<KeyUsage>, sqlx::Error> {
    crate::db::query_as(
        "SELECT key_id, count(*) AS logins
         FROM (SELECT key_id FROM oauth_tokens
               UNION ALL SELECT key_id FROM revocation_outbox) AS sealed
         GROUP BY key_id ORDER BY key_id",
    )
    .fetch_all(pool)
    .await
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RekeyReport {
    /// Rows now sealed under the current key.
    pub resealed: u64,
    /// Rows whose key is not configured (or whose ciphertext is damaged): left as they are.
    pub unreadable: u64,
}

#[derive(sqlx::FromRow)]
struct SealedRow {
    token_id: Uuid,
    key_id: String,
    access_token: Vec<u8>,
    refresh_token: Option<Vec<u8>>,
    id_token: Option<Vec<u8>>,
}

/// Re-seals up to `batch` rows sealed under another key than the current one, in one short
/// transaction. Rows claimed by a refresher are left for the next pass: their refresh writes
/// them under the current key anyway.
pub async fn rekey_batch(
    pool: &PgPool,
    cipher: &TokenCipher,
    batch: i64,
) -> Result<RekeyReport, sqlx::Error> {
    let mut tx = crate::db::begin(pool).await?;
    let rows: Vec<SealedRow> = crate::db::query_as(
        r#"
        SELECT token_id, key_id, access_token, refresh_token, id_token
        FROM oauth_tokens
        WHERE key_id <> $1
          AND (refresh_claimed_until IS NULL OR refresh_claimed_until < now())
        ORDER BY token_id
        LIMIT $2
        FOR UPDATE SKIP LOCKED
        "#,
    )
    .bind(cipher.current_key_id())
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    let mut report = RekeyReport::default();
    for row in rows {
        let reseal = |column: &str, data: &[u8]| {
            let plain = cipher.decrypt(&row.key_id, data, &aad(row.token_id, column))?;
            Ok::<_, crate::crypto::CipherError>(cipher.encrypt(&plain, &aad(row.token_id, column)))
        };
        let resealed = (|| {
            Ok::<_, crate::crypto::CipherError>((
                reseal("access", &row.access_token)?,
                row.refresh_token
                    .as_deref()
                    .map(|d| reseal("refresh", d))
                    .transpose()?,
                row.id_token
                    .as_deref()
                    .map(|d| reseal("id", d))
                    .transpose()?,
            ))
        })();
        let Ok((access, refresh, id)) = resealed else {
            report.unreadable += 1;
            continue;
        };
        crate::db::query(
            r#"
            UPDATE oauth_tokens
            SET key_id = $2, access_token = $3, refresh_token = $4, id_token = $5
            WHERE token_id = $1
            "#,
        )
        .bind(row.token_id)
        .bind(cipher.current_key_id())
        .bind(access)
        .bind(refresh)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        report.resealed += 1;
    }
    tx.commit().await?;
    Ok(report)
}

/// Re-seals every row it can, batch after batch; returns the totals.
pub async fn rekey_all(
    pool: &PgPool,
    cipher: &TokenCipher,
    batch: i64,
) -> Result<RekeyReport, sqlx::Error> {
    let mut total = RekeyReport::default();
    loop {
        let report = rekey_batch(pool, cipher, batch).await?;
        total.resealed += report.resealed;
        total.unreadable += report.unreadable;
        // A batch of nothing but unreadable rows would be selected again: stop there.
        if report.resealed == 0 || report.resealed + report.unreadable < batch as u64 {
            return Ok(total);
        }
    }
}
