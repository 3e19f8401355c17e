//! `PgSessionStore`: actix-session state in Postgres.
//!
//! - The cookie carries a random 256-bit key; the table stores only its SHA-256.
//! - A load is one statement. It also pushes the idle expiry forward, but at most once per
//!   `touch_interval`, so steady-state requests do not write.
//! - The same statement joins the login's user and token health and hands them to the request
//!   as the read-only [`AUTH_KEY`] entry: "who is this and must they log in again" costs no
//!   second round trip, and a revoked session is anonymous on its very next request.
//! - A write is a compare-and-set on the row's `version`: when another request of the session
//!   wrote first, the fresh state is read and this request's changes merged into it
//!   ([`super::merge`]), a few times at most; a merge that is impossible is a 409. A session
//!   that ended meanwhile (logout, revoke, expiry) is never written back with its login.
//! - Renewing the key (at login) is the same compare-and-set, with a new `key_hash`.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix_session::storage::{LoadError, SaveError, SessionKey, SessionStore, UpdateError};
use actix_web::cookie::time::Duration as CookieDuration;
use anyhow::Context;
use sqlx::PgPool;
use uuid::Uuid;

use super::cache::{CachedSession, KeyHash, SessionCache};
use super::merge::{Conflict, merge};
use super::{
    AUTH_KEY, AuthState, BASE_KEY, CART_CHANGES_KEY, CLIENT_KEY, ClientInfo, DERIVED_KEYS,
    REKEY_KEY, TOKEN_KEY, VERSION_KEY,
};
use crate::auth::tokens::{self, EndReason, RefreshStatus};
use crate::crypto::{random_token, sha256};
use crate::shop::cart::CartChange;

type State = HashMap<String, String>;

/// What went wrong in the store while serving a request. actix-session turns every store
/// error into an opaque 500; this is how the error page learns the real status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StoreTrouble {
    #[default]
    None,
    /// Postgres was unreachable: 503.
    Outage,
    /// Another request changed the same part of the session at the same time: 409.
    Conflict,
}

tokio::task_local! {
    static TROUBLE: Cell<StoreTrouble>;
}

/// Runs `request` and reports what trouble the session store met in it.
pub async fn watch_store<F: Future>(request: F) -> (F::Output, StoreTrouble) {
    TROUBLE
        .scope(Cell::new(StoreTrouble::None), async {
            let output = request.await;
            (output, TROUBLE.with(Cell::get))
        })
        .await
}

fn report(trouble: StoreTrouble) {
    // Outside a watched request (a test calling the store directly) there is no one to tell.
    let _ = TROUBLE.try_with(|t| t.set(trouble));
}

/// How many times a write is merged into a fresher state before giving up with a 409: enough
/// for every tab of one person writing at once, with a short random pause between tries.
const MAX_MERGES: u32 = 32;

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
    cache: Arc<SessionCache>,
}

impl PgSessionStore {
    /// A store that reads Postgres on every load.
    pub fn new(pool: PgPool, timeouts: SessionTimeouts) -> Self {
        Self::with_cache(pool, timeouts, Arc::new(SessionCache::off()))
    }

    /// A store that serves steady-state loads from `cache` (shared by the workers).
    pub fn with_cache(pool: PgPool, timeouts: SessionTimeouts, cache: Arc<SessionCache>) -> Self {
        Self {
            pool,
            timeouts,
            cache,
        }
    }

    fn idle(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.timeouts.idle).unwrap_or(chrono::Duration::MAX)
    }

    /// A request's state from a loaded session: a copy with the store's own entries (the base
    /// for the merge, the version, the login).
    fn state_of(cached: &CachedSession) -> Result<State, serde_json::Error> {
        let (mut state, auth) = cached.contents();
        state.insert(BASE_KEY.to_owned(), serde_json::to_string(&state)?);
        state.insert(VERSION_KEY.to_owned(), cached.version().to_string());
        if let Some(auth) = auth {
            state.insert(AUTH_KEY.to_owned(), serde_json::to_string(&auth)?);
        }
        Ok(state)
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
        crate::db::query(
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
        crate::db::query(
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
    /// The compare-and-set: writes `columns` (under `new_key`) if the row still has
    /// `version` and has not expired. Returns whether it wrote.
    async fn write(
        &self,
        key: &SessionKey,
        new_key: &SessionKey,
        version: Option<i64>,
        columns: &Columns,
    ) -> Result<bool, sqlx::Error> {
        // A token id that no longer exists (revoked meanwhile) is stored as NULL.
        let updated = crate::db::query(
            r#"
            UPDATE sessions
            SET key_hash = $2,
                state = $3,
                token_id = (SELECT token_id FROM logins WHERE token_id = $4),
                ip = COALESCE($5::inet, ip),
                user_agent = COALESCE($6, user_agent),
                last_seen_at = now(),
                expires_at = LEAST(now() + make_interval(secs => $7), absolute_expires_at)
            WHERE key_hash = $1 AND ($8::bigint IS NULL OR version = $8)
              AND expires_at > now() AND absolute_expires_at > now()
            "#,
        )
        .bind(hash(key))
        .bind(hash(new_key))
        .bind(&columns.state)
        .bind(columns.token_id)
        .bind(&columns.client.ip)
        .bind(&columns.client.user_agent)
        .bind(self.idle_secs())
        .bind(version)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// The session's state and version as they are now; `None` if it has ended.
    async fn fresh(&self, key: &SessionKey) -> Result<Option<(State, i64)>, sqlx::Error> {
        let row: Option<(serde_json::Value, i64, Option<Uuid>)> = crate::db::query_as(
            r#"
            SELECT state, version, token_id FROM sessions
            WHERE key_hash = $1 AND expires_at > now() AND absolute_expires_at > now()
            "#,
        )
        .bind(hash(key))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(state, version, token_id)| {
            let mut state: State = serde_json::from_value(state).unwrap_or_default();
            if token_id.is_none() {
                state.remove(TOKEN_KEY);
            }
            (state, version)
        }))
    }

    /// The session ended while the request ran (logout, revoke, expiry). Its login is never
    /// written back: a request that held one writes nothing. A request that completed a new
    /// login, or an anonymous one (a cart, a login on its way), starts a new session.
    async fn ended_meanwhile(
        &self,
        key: SessionKey,
        write: Write,
    ) -> Result<SessionKey, UpdateError> {
        let held = write.base.get(TOKEN_KEY);
        let holds = write.mine.get(TOKEN_KEY);
        if holds.is_some() && holds == held {
            tracing::info!("The session ended while a request ran; its changes are dropped");
            return Ok(key);
        }
        self.insert(write.mine).await.map_err(UpdateError::Other)
    }

    /// A new login completed in a session that held another: the old one ends (its tokens
    /// are queued for revocation) rather than being refreshed on with no session.
    async fn end_replaced_login(&self, base: &State, now: Option<Uuid>) {
        let Some(before) = base
            .get(TOKEN_KEY)
            .and_then(|v| serde_json::from_str::<Uuid>(v).ok())
        else {
            return;
        };
        if now.is_none() || now == Some(before) {
            return;
        }
        if let Err(e) = tokens::end_logins(&self.pool, &[before], EndReason::Replaced).await {
            // Cleanup ends it later as an orphan.
            tracing::warn!(error = %e, token_id = %before, "Cannot end the login a new one replaced");
        }
    }
}

/// A request's write: its state, the state and version it read, and what the store must know.
struct Write {
    mine: State,
    base: State,
    version: Option<i64>,
    cart_changes: Vec<CartChange>,
    rekey: bool,
}

impl Write {
    fn from_state(mut state: State) -> anyhow::Result<Self> {
        let version = state
            .remove(VERSION_KEY)
            .map(|v| v.parse::<i64>())
            .transpose()
            .context("session version")?;
        let base = match state.remove(BASE_KEY) {
            Some(json) => serde_json::from_str(&json).context("session base state")?,
            None => State::new(),
        };
        let cart_changes = match state.remove(CART_CHANGES_KEY) {
            Some(json) => serde_json::from_str(&json).context("cart changes")?,
            None => Vec::new(),
        };
        let rekey = state.remove(REKEY_KEY).is_some();
        state.remove(AUTH_KEY);
        Ok(Self {
            mine: state,
            base,
            version,
            cart_changes,
            rekey,
        })
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
        // Derived on every load or written for the store; never persisted.
        for key in DERIVED_KEYS {
            state.remove(key);
        }
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

/// Up to 1, 2, 4 … 16 ms at random: concurrent writers of one session spread out instead of
/// colliding again.
async fn pause_before_retry(attempt: u32) {
    use rand::Rng;
    let most = 1u64 << attempt.min(4);
    let micros = rand::thread_rng().gen_range(0..most * 1000);
    tokio::time::sleep(Duration::from_micros(micros)).await;
}

fn same_key(key: &SessionKey) -> SessionKey {
    key.as_ref()
        .to_owned()
        .try_into()
        .expect("a valid session key stays valid")
}

fn hash(key: &SessionKey) -> Vec<u8> {
    key_hash(key).to_vec()
}

fn key_hash(key: &SessionKey) -> KeyHash {
    sha256(key.as_ref().as_bytes())
}

/// Logs a failed query and notes an outage for [`watch_for_outage`].
fn classify(err: sqlx::Error) -> anyhow::Error {
    tracing::warn!(error = ?err, "Session store query failed");
    if crate::db::is_unavailable(&err) {
        report(StoreTrouble::Outage);
    }
    anyhow::Error::new(err)
}

#[derive(sqlx::FromRow)]
struct LoadedRow {
    session_id: Uuid,
    state: serde_json::Value,
    version: i64,
    last_seen_at: chrono::DateTime<chrono::Utc>,
    expires_at: chrono::DateTime<chrono::Utc>,
    absolute_expires_at: chrono::DateTime<chrono::Utc>,
    user_id: Option<Uuid>,
    subject: Option<String>,
    issuer: Option<String>,
    email: Option<String>,
    email_verified: Option<bool>,
    name: Option<String>,
    groups: Option<Vec<String>>,
    token_id: Option<Uuid>,
    access_expires_at: Option<chrono::DateTime<chrono::Utc>>,
    refresh_status: Option<RefreshStatus>,
    auth_time: Option<chrono::DateTime<chrono::Utc>>,
    acr: Option<String>,
    login_created_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl SessionStore for PgSessionStore {
    async fn load(&self, session_key: &SessionKey) -> Result<Option<State>, LoadError> {
        let key = key_hash(session_key);
        // Steady state: from memory, while this instance hears Postgres' notifications.
        if let Some(cached) = self.cache.get(&key) {
            if chrono::Utc::now() - cached.last_seen_at() > self.touch_interval() {
                self.touch(cached.session_id())
                    .await
                    .map_err(|e| LoadError::Other(classify(e)))?;
                self.cache.replace(key, cached.touched(self.idle()));
            }
            let state =
                Self::state_of(&cached).map_err(|e| LoadError::Deserialization(e.into()))?;
            return Ok(Some(state));
        }
        let epoch = self.cache.epoch();
        // Otherwise one query: the session, its login and the user.
        let row: Option<LoadedRow> = crate::db::query_as(
            r#"
            SELECT s.session_id, s.state, s.version, s.last_seen_at, s.expires_at,
                   s.absolute_expires_at, l.user_id, l.subject, l.issuer, l.email,
                   l.email_verified, l.name, l.groups, l.token_id, l.access_expires_at,
                   l.refresh_status, l.auth_time, l.acr, l.created_at AS login_created_at
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
        for key in DERIVED_KEYS {
            state.remove(key);
        }
        let auth = match (row.user_id, row.token_id, row.access_expires_at) {
            (Some(user_id), Some(token_id), Some(access_expires_at)) => Some(AuthState {
                user_id,
                token_id,
                subject: row.subject.unwrap_or_default(),
                issuer: row.issuer.unwrap_or_default(),
                email: row.email,
                email_verified: row.email_verified.unwrap_or(false),
                name: row.name,
                groups: row.groups.unwrap_or_default(),
                access_expires_at,
                refresh_status: row.refresh_status.unwrap_or(RefreshStatus::Ok),
                auth_time: row.auth_time.or(row.login_created_at),
                acr: row.acr,
            }),
            // The login behind this session is gone (logout elsewhere, revoked): anonymous.
            _ => {
                state.remove(TOKEN_KEY);
                None
            }
        };
        let touched = chrono::Utc::now() - row.last_seen_at > self.touch_interval();
        let cached = CachedSession::new(
            row.session_id,
            state,
            row.version,
            auth,
            row.last_seen_at,
            row.expires_at,
            row.absolute_expires_at,
        );
        // What this request read, for the compare-and-set and the merge on save.
        let request_state =
            Self::state_of(&cached).map_err(|e| LoadError::Deserialization(e.into()))?;
        let cached = if touched {
            cached.touched(self.idle())
        } else {
            cached
        };
        self.cache.put(key, cached, epoch);
        Ok(Some(request_state))
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
        let mut write = Write::from_state(state).map_err(UpdateError::Serialization)?;
        let new_key = if write.rekey {
            new_session_key()
        } else {
            same_key(&session_key)
        };
        for attempt in 0..MAX_MERGES {
            if attempt > 0 {
                pause_before_retry(attempt).await;
            }
            let columns =
                Columns::from_state(write.mine.clone()).map_err(UpdateError::Serialization)?;
            let written = self
                .write(&session_key, &new_key, write.version, &columns)
                .await
                .map_err(|e| UpdateError::Other(classify(e)));
            // Whatever happened, what this instance remembered of the session is stale.
            self.cache.forget(&key_hash(&session_key));
            if written? {
                self.end_replaced_login(&write.base, columns.token_id).await;
                return Ok(new_key);
            }
            let Some((fresh, version)) = self
                .fresh(&session_key)
                .await
                .map_err(|e| UpdateError::Other(classify(e)))?
            else {
                return self.ended_meanwhile(session_key, write).await;
            };
            write.mine = merge(&write.base, &write.mine, &fresh, &write.cart_changes).map_err(
                |conflict: Conflict| {
                    tracing::info!(%conflict, "Session write refused");
                    report(StoreTrouble::Conflict);
                    UpdateError::Other(conflict.into())
                },
            )?;
            write.base = fresh;
            write.version = Some(version);
        }
        tracing::warn!("Session write still racing after {MAX_MERGES} merges; refused");
        report(StoreTrouble::Conflict);
        Err(UpdateError::Other(anyhow::anyhow!(
            "session write kept racing"
        )))
    }

    async fn update_ttl(
        &self,
        session_key: &SessionKey,
        _ttl: &CookieDuration,
    ) -> anyhow::Result<()> {
        crate::db::query(
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
        self.cache.forget(&key_hash(session_key));
        crate::db::query("DELETE FROM sessions WHERE key_hash = $1")
            .bind(hash(session_key))
            .execute(&self.pool)
            .await
            .map_err(classify)?;
        Ok(())
    }
}
