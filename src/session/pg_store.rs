//! `PgSessionStore`: actix-session state in Postgres.
//!
//! - The cookie carries a random 256-bit key; the table stores only its SHA-256.
//! - A load is one statement. It also pushes the idle expiry forward, but at most once per
//!   `touch_interval`, so steady-state requests do not write.
//! - The same statement joins the login's user and token health and hands them to the request
//!   as the read-only [`AUTH_KEY`] entry: "who is this and must they log in again" costs no
//!   second round trip, and a revoked session is anonymous on its very next request.

use std::cell::Cell;
use std::collections::HashMap;
use std::time::Duration;

use actix_session::storage::{LoadError, SaveError, SessionKey, SessionStore, UpdateError};
use actix_web::cookie::time::Duration as CookieDuration;
use anyhow::Context;
use sqlx::PgPool;
use uuid::Uuid;

use super::{AUTH_KEY, AuthState, CLIENT_KEY, ClientInfo, TOKEN_KEY};
use crate::auth::tokens::RefreshStatus;
use crate::crypto::{random_token, sha256};

type State = HashMap<String, String>;

tokio::task_local! {
    /// Whether the store found Postgres unreachable while serving the current request.
    /// actix-session turns every store error into an opaque 500; this is how the error page
    /// learns that it was an outage (503) rather than a bug.
    static OUTAGE: Cell<bool>;
}

/// Runs `request` and reports whether the session store met a database outage in it.
pub async fn watch_for_outage<F: Future>(request: F) -> (F::Output, bool) {
    OUTAGE
        .scope(Cell::new(false), async {
            let output = request.await;
            (output, OUTAGE.with(Cell::get))
        })
        .await
}

#[derive(Debug, Clone, Copy)]
pub struct SessionTimeouts {
    pub idle: Duration,
    pub absolute: Duration,
    pub touch_interval: Duration,
}

#[derive(Clone)]
pub struct PgSessionStore {
    pool: PgPool,
    timeouts: SessionTimeouts,
}

impl PgSessionStore {
    pub fn new(pool: PgPool, timeouts: SessionTimeouts) -> Self {
        Self { pool, timeouts }
    }

    fn idle_secs(&self) -> f64 {
        self.timeouts.idle.as_secs_f64()
    }

    fn touch_interval(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.timeouts.touch_interval).unwrap_or(chrono::Duration::MAX)
    }

    /// Records use of the session and pushes its idle expiry forward (never past the
    /// absolute expiry). Concurrent requests touch once: the second finds it fresh.
    async fn touch(&self, session_id: Uuid) -> Result<(), sqlx::Error> {
        sqlx::query(
            r#"
            UPDATE sessions
            SET last_seen_at = now(),
                expires_at = LEAST(now() + make_interval(secs => $2), absolute_expires_at)
            WHERE session_id = $1 AND last_seen_at < now() - make_interval(secs => $3)
            "#,
        )
        .bind(session_id)
        .bind(self.idle_secs())
        .bind(self.timeouts.touch_interval.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn insert(&self, state: State) -> anyhow::Result<SessionKey> {
        let columns = Columns::from_state(state)?;
        let key = new_session_key();
        sqlx::query(
            r#"
            INSERT INTO sessions (session_id, key_hash, state, token_id, ip, user_agent,
                                  expires_at, absolute_expires_at)
            VALUES ($1, $2, $3,
                    (SELECT token_id FROM logins WHERE token_id = $4),
                    $5::inet, $6,
                    now() + make_interval(secs => LEAST($7, $8)),
                    now() + make_interval(secs => $8))
            "#,
        )
        .bind(Uuid::now_v7())
        .bind(&sha256(key.as_ref().as_bytes())[..])
        .bind(&columns.state)
        .bind(columns.token_id)
        .bind(columns.client.ip)
        .bind(columns.client.user_agent)
        .bind(self.idle_secs())
        .bind(self.timeouts.absolute.as_secs_f64())
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        Ok(key)
    }
}

/// What the `sessions` row keeps outside the jsonb state.
struct Columns {
    state: serde_json::Value,
    token_id: Option<Uuid>,
    client: ClientInfo,
}

impl Columns {
    fn from_state(mut state: State) -> anyhow::Result<Self> {
        // Derived on every load; never persisted.
        state.remove(AUTH_KEY);
        let token_id = match state.get(TOKEN_KEY) {
            Some(v) => Some(serde_json::from_str::<Uuid>(v).context("token id in session")?),
            None => None,
        };
        let client = match state.get(CLIENT_KEY) {
            Some(v) => serde_json::from_str(v).unwrap_or_default(),
            None => ClientInfo::default(),
        };
        Ok(Self {
            state: serde_json::to_value(state)?,
            token_id,
            client,
        })
    }
}

fn new_session_key() -> SessionKey {
    random_token(32)
        .try_into()
        .expect("43 characters is a valid session key")
}

fn hash(key: &SessionKey) -> Vec<u8> {
    sha256(key.as_ref().as_bytes()).to_vec()
}

/// Logs a failed query and notes an outage for [`watch_for_outage`].
fn classify(err: sqlx::Error) -> anyhow::Error {
    tracing::warn!(error = ?err, "Session store query failed");
    if crate::db::is_unavailable(&err) {
        // Outside a watched request (a test calling the store directly) there is no one to tell.
        let _ = OUTAGE.try_with(|outage| outage.set(true));
    }
    anyhow::Error::new(err)
}

#[derive(sqlx::FromRow)]
struct LoadedRow {
    session_id: Uuid,
    state: serde_json::Value,
    last_seen_at: chrono::DateTime<chrono::Utc>,
    user_id: Option<Uuid>,
    subject: Option<String>,
    email: Option<String>,
    email_verified: Option<bool>,
    name: Option<String>,
    groups: Option<Vec<String>>,
    token_id: Option<Uuid>,
    access_expires_at: Option<chrono::DateTime<chrono::Utc>>,
    refresh_status: Option<RefreshStatus>,
}

impl SessionStore for PgSessionStore {
    async fn load(&self, session_key: &SessionKey) -> Result<Option<State>, LoadError> {
        // A plain read in steady state: the session, its login and the user in one query.
        let row: Option<LoadedRow> = sqlx::query_as(
            r#"
            SELECT s.session_id, s.state, s.last_seen_at, l.user_id, l.subject, l.email,
                   l.email_verified, l.name, l.groups, l.token_id, l.access_expires_at,
                   l.refresh_status
            FROM sessions s
            LEFT JOIN logins l ON l.token_id = s.token_id
            WHERE s.key_hash = $1 AND s.expires_at > now() AND s.absolute_expires_at > now()
            "#,
        )
        .bind(hash(session_key))
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| LoadError::Other(classify(e)))?;
        // Idle expiry moves forward at most once per `touch_interval`: a second round trip
        // about once a minute per session, none in between.
        if let Some(row) = &row
            && chrono::Utc::now() - row.last_seen_at > self.touch_interval()
        {
            self.touch(row.session_id)
                .await
                .map_err(|e| LoadError::Other(classify(e)))?;
        }
        let Some(row) = row else { return Ok(None) };
        let mut state: State =
            serde_json::from_value(row.state).map_err(|e| LoadError::Deserialization(e.into()))?;
        state.remove(AUTH_KEY);
        match (row.user_id, row.token_id, row.access_expires_at) {
            (Some(user_id), Some(token_id), Some(access_expires_at)) => {
                let auth = AuthState {
                    user_id,
                    token_id,
                    subject: row.subject.unwrap_or_default(),
                    email: row.email,
                    email_verified: row.email_verified.unwrap_or(false),
                    name: row.name,
                    groups: row.groups.unwrap_or_default(),
                    access_expires_at,
                    refresh_status: row.refresh_status.unwrap_or(RefreshStatus::Ok),
                };
                let json = serde_json::to_string(&auth)
                    .map_err(|e| LoadError::Deserialization(e.into()))?;
                state.insert(AUTH_KEY.to_owned(), json);
            }
            // The login behind this session is gone (logout elsewhere, revoked): anonymous.
            _ => {
                state.remove(TOKEN_KEY);
            }
        }
        Ok(Some(state))
    }

    async fn save(&self, state: State, _ttl: &CookieDuration) -> Result<SessionKey, SaveError> {
        self.insert(state).await.map_err(SaveError::Other)
    }

    async fn update(
        &self,
        session_key: SessionKey,
        state: State,
        _ttl: &CookieDuration,
    ) -> Result<SessionKey, UpdateError> {
        let columns = Columns::from_state(state.clone()).map_err(UpdateError::Serialization)?;
        // A token id that no longer exists (revoked meanwhile) is stored as NULL: the session
        // stays, the login does not come back.
        let updated = sqlx::query(
            r#"
            UPDATE sessions
            SET state = $2,
                token_id = (SELECT token_id FROM logins WHERE token_id = $3),
                ip = COALESCE($4::inet, ip),
                user_agent = COALESCE($5, user_agent),
                last_seen_at = now(),
                expires_at = LEAST(now() + make_interval(secs => $6), absolute_expires_at)
            WHERE key_hash = $1 AND expires_at > now()
            "#,
        )
        .bind(hash(&session_key))
        .bind(&columns.state)
        .bind(columns.token_id)
        .bind(columns.client.ip)
        .bind(columns.client.user_agent)
        .bind(self.idle_secs())
        .execute(&self.pool)
        .await
        .map_err(|e| UpdateError::Other(classify(e)))?;
        if updated.rows_affected() == 1 {
            Ok(session_key)
        } else {
            // Expired or deleted while this request ran: start a new session with a new key.
            self.insert(state).await.map_err(UpdateError::Other)
        }
    }

    async fn update_ttl(
        &self,
        session_key: &SessionKey,
        _ttl: &CookieDuration,
    ) -> anyhow::Result<()> {
        sqlx::query(
            r#"
            UPDATE sessions
            SET last_seen_at = now(),
                expires_at = LEAST(now() + make_interval(secs => $2), absolute_expires_at)
            WHERE key_hash = $1 AND expires_at > now()
            "#,
        )
        .bind(hash(session_key))
        .bind(self.idle_secs())
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        Ok(())
    }

    async fn delete(&self, session_key: &SessionKey) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM sessions WHERE key_hash = $1")
            .bind(hash(session_key))
            .execute(&self.pool)
            .await
            .map_err(classify)?;
        Ok(())
    }
}
