//! Sessions in memory, so that a page view in steady state costs no session query. Bounded
//! by bytes (`session.cache_max_bytes`) and entries (`session.cache_max_entries`), kept right by
//! Postgres' notifications ([`crate::db::notifications`]) and used only while the instance
//! hears them. Expiry is still checked on every use against the entry's own idle and absolute
//! expiry; an entry past its idle expiry is read again (another instance may have extended
//! it), never served.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use quick_cache::Weighter;
use quick_cache::sync::Cache;
use uuid::Uuid;

use super::AuthState;
use crate::auth::tokens::RefreshStatus;
use crate::db::notifications::{Generation, Hearing, SESSIONS, Subscriber};

pub type KeyHash = [u8; 32];

/// One session as loaded, kept compact (a hundred thousand of them fit in a few tens of
/// MiB): times as milliseconds, strings boxed, an empty state and an anonymous session without
/// any allocation of their own.
#[derive(Debug, Clone)]
pub struct CachedSession {
    pub session_id: Uuid,
    /// The persisted state (without the store's own entries); `None` when empty.
    state: Option<CompactState>,
    pub version: i64,
    auth: Option<Box<CompactAuth>>,
    last_seen: i64,
    expires: i64,
    absolute_expires: i64,
    bytes: u32,
}

/// A session's state entries, boxed to their size.
type CompactState = Box<[(Box<str>, Box<str>)]>;

#[derive(Debug, Clone)]
struct CompactAuth {
    user_id: Uuid,
    token_id: Uuid,
    subject: Box<str>,
    email: Option<Box<str>>,
    name: Option<Box<str>>,
    groups: Box<[Box<str>]>,
    access_expires: i64,
    auth_time: Option<i64>,
    acr: Option<Box<str>>,
    refresh_status: RefreshStatus,
    email_verified: bool,
}

fn millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

fn time(millis: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(millis).unwrap_or_default()
}

impl CachedSession {
    pub fn new(
        session_id: Uuid,
        state: HashMap<String, String>,
        version: i64,
        auth: Option<AuthState>,
        last_seen_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
        absolute_expires_at: DateTime<Utc>,
    ) -> Self {
        let state: Option<CompactState> = (!state.is_empty()).then(|| {
            state
                .into_iter()
                .map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str()))
                .collect()
        });
        let auth = auth.map(|a| {
            Box::new(CompactAuth {
                user_id: a.user_id,
                token_id: a.token_id,
                subject: a.subject.into_boxed_str(),
                email: a.email.map(String::into_boxed_str),
                name: a.name.map(String::into_boxed_str),
                groups: a.groups.into_iter().map(String::into_boxed_str).collect(),
                access_expires: millis(a.access_expires_at),
                auth_time: a.auth_time.map(millis),
                acr: a.acr.map(String::into_boxed_str),
                refresh_status: a.refresh_status,
                email_verified: a.email_verified,
            })
        });
        let bytes =
            120 + state.as_ref().map_or(0, |s| {
                s.iter().map(|(k, v)| 48 + k.len() + v.len()).sum::<usize>()
            }) + auth.as_ref().map_or(0, |a| {
                160 + a.subject.len()
                    + a.email.as_ref().map_or(0, |e| 16 + e.len())
                    + a.name.as_ref().map_or(0, |n| 16 + n.len())
                    + a.groups.iter().map(|g| 32 + g.len()).sum::<usize>()
            });
        Self {
            session_id,
            state,
            version,
            auth,
            last_seen: millis(last_seen_at),
            expires: millis(expires_at),
            absolute_expires: millis(absolute_expires_at),
            bytes: bytes.min(u32::MAX as usize) as u32,
        }
    }

    /// The persisted state, as the store hands it to a request.
    pub fn state(&self) -> HashMap<String, String> {
        self.state
            .iter()
            .flatten()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The login and user, if logged in.
    pub fn auth(&self) -> Option<AuthState> {
        let a = self.auth.as_ref()?;
        Some(AuthState {
            user_id: a.user_id,
            token_id: a.token_id,
            subject: a.subject.to_string(),
            email: a.email.as_deref().map(str::to_owned),
            email_verified: a.email_verified,
            name: a.name.as_deref().map(str::to_owned),
            groups: a.groups.iter().map(|g| g.to_string()).collect(),
            access_expires_at: time(a.access_expires),
            refresh_status: a.refresh_status,
            auth_time: a.auth_time.map(time),
            acr: a.acr.as_deref().map(str::to_owned),
        })
    }

    pub fn last_seen_at(&self) -> DateTime<Utc> {
        time(self.last_seen)
    }

    /// The same session, used now: idle expiry pushed forward (never past the absolute one).
    pub fn touched(&self, idle: chrono::Duration) -> Self {
        let now = Utc::now();
        let mut touched = self.clone();
        touched.last_seen = millis(now);
        touched.expires = millis(now + idle).min(self.absolute_expires);
        touched
    }

    fn live(&self, now: DateTime<Utc>) -> bool {
        let now = millis(now);
        self.expires > now && self.absolute_expires > now
    }

    #[cfg(test)]
    fn expire_now(&mut self) {
        self.expires = millis(Utc::now()) - 1000;
    }
}

/// Each entry weighs its bytes, and at least its share of the byte budget by entry count,
/// so the cache holds at most `max_entries` entries and `max_bytes` bytes.
#[derive(Clone)]
struct Bytes {
    floor: u64,
}

impl Weighter<KeyHash, Arc<CachedSession>> for Bytes {
    fn weight(&self, _key: &KeyHash, value: &Arc<CachedSession>) -> u64 {
        u64::from(value.bytes).max(self.floor)
    }
}

pub struct SessionCache {
    entries: Option<Cache<KeyHash, Arc<CachedSession>, Bytes>>,
    hearing: Arc<Hearing>,
    /// Advanced by every notification and flush: a load that began before may not insert.
    generation: Generation,
}

impl SessionCache {
    /// `max_entries` 0 turns the cache off.
    pub fn new(max_entries: usize, max_bytes: u64, hearing: Arc<Hearing>) -> Self {
        let entries = (max_entries > 0 && max_bytes > 0).then(|| {
            let floor = (max_bytes / max_entries as u64).max(1);
            Cache::with_weighter(max_entries, max_bytes, Bytes { floor })
        });
        Self {
            entries,
            hearing,
            generation: Generation::default(),
        }
    }

    /// A cache that never holds anything (stores built without one).
    pub fn off() -> Self {
        Self::new(0, 0, Arc::new(Hearing::default()))
    }

    fn usable(&self) -> Option<&Cache<KeyHash, Arc<CachedSession>, Bytes>> {
        self.entries.as_ref().filter(|_| self.hearing.usable())
    }

    /// The live session under `key`, if this instance may trust its memory of it.
    pub fn get(&self, key: &KeyHash) -> Option<Arc<CachedSession>> {
        let hit = self.usable()?.get(key)?;
        hit.live(Utc::now()).then_some(hit)
    }

    /// Where a load starts: pass it to [`Self::put`].
    pub fn epoch(&self) -> u64 {
        self.generation.current()
    }

    /// Keeps a session read at `epoch`, unless something changed since.
    pub fn put(&self, key: KeyHash, session: CachedSession, epoch: u64) {
        let Some(entries) = self.usable() else { return };
        if self.generation.unchanged_since(epoch) {
            entries.insert(key, Arc::new(session));
        }
    }

    /// Replaces an entry this instance just changed (a touch), keeping its place.
    pub fn replace(&self, key: KeyHash, session: CachedSession) {
        if let Some(entries) = self.usable()
            && entries.get(&key).is_some()
        {
            entries.insert(key, Arc::new(session));
        }
    }

    pub fn forget(&self, key: &KeyHash) {
        self.generation.advance();
        if let Some(entries) = &self.entries {
            entries.remove(key);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.as_ref().map_or(0, Cache::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held, by the weighing above.
    pub fn weight(&self) -> u64 {
        self.entries.as_ref().map_or(0, Cache::weight)
    }
}

impl Subscriber for SessionCache {
    fn notified(&self, channel: &str, payload: &str) {
        if channel != SESSIONS {
            return;
        }
        let Some((hex, what)) = payload.split_once(':') else {
            return;
        };
        let Some(key) = decode_hex(hex) else { return };
        self.generation.advance();
        let Some(entries) = &self.entries else { return };
        match what.parse::<i64>() {
            // A content change: what we hold is stale unless it is that version or newer.
            Ok(version) => {
                if entries.get(&key).is_some_and(|e| e.version < version) {
                    entries.remove(&key);
                }
            }
            // Gone, expiring sooner, or its login or user changed.
            Err(_) => {
                entries.remove(&key);
            }
        }
    }

    fn flush(&self) {
        self.generation.advance();
        if let Some(entries) = &self.entries {
            entries.clear();
        }
    }
}

fn decode_hex(hex: &str) -> Option<KeyHash> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hearing(usable: bool) -> Arc<Hearing> {
        let h = Arc::new(Hearing::default());
        if usable {
            h.set_usable_for_tests();
        }
        h
    }

    fn session(version: i64) -> CachedSession {
        let now = Utc::now();
        CachedSession::new(
            Uuid::nil(),
            HashMap::from([("cart".into(), "[]".into())]),
            version,
            None,
            now,
            now + chrono::Duration::minutes(5),
            now + chrono::Duration::hours(1),
        )
    }

    fn hex(key: &KeyHash) -> String {
        key.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn notifications_forget_what_they_name() {
        let cache = SessionCache::new(100, 1 << 20, hearing(true));
        let (a, b) = ([1u8; 32], [2u8; 32]);
        cache.put(a, session(3), cache.epoch());
        cache.put(b, session(3), cache.epoch());
        cache.notified(SESSIONS, &format!("{}:3", hex(&a)));
        assert!(cache.get(&a).is_some(), "the version held is not stale");
        cache.notified(SESSIONS, &format!("{}:4", hex(&a)));
        assert!(cache.get(&a).is_none(), "a newer version is");
        cache.notified(SESSIONS, &format!("{}:*", hex(&b)));
        assert!(cache.get(&b).is_none(), "a login or user change is");
        cache.put(b, session(5), cache.epoch());
        cache.notified(SESSIONS, &format!("{}:-", hex(&b)));
        assert!(cache.get(&b).is_none(), "so is an end");
        cache.notified(SESSIONS, "garbage");
        cache.notified("other", &format!("{}:-", hex(&b)));
    }

    #[test]
    fn a_load_overtaken_by_a_notification_is_not_kept() {
        let cache = SessionCache::new(100, 1 << 20, hearing(true));
        let key = [7u8; 32];
        let began = cache.epoch();
        cache.notified(SESSIONS, &format!("{}:9", hex(&key)));
        cache.put(key, session(8), began);
        assert!(cache.get(&key).is_none());
    }

    #[test]
    fn nothing_is_served_or_kept_while_the_instance_is_deaf() {
        let cache = SessionCache::new(100, 1 << 20, hearing(false));
        let key = [3u8; 32];
        cache.put(key, session(1), cache.epoch());
        assert!(cache.get(&key).is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn an_expired_entry_is_not_served() {
        let cache = SessionCache::new(100, 1 << 20, hearing(true));
        let key = [4u8; 32];
        let mut old = session(1);
        old.expire_now();
        cache.put(key, old, cache.epoch());
        assert!(cache.get(&key).is_none());
    }

    #[test]
    fn the_cache_is_bounded_by_entries_and_bytes() {
        let cache = SessionCache::new(1_000, 1_000 * 1024, hearing(true));
        for i in 0..5_000u32 {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            cache.put(key, session(1), cache.epoch());
        }
        assert!(cache.len() <= 1_000, "{}", cache.len());
        assert!(cache.weight() <= 1_000 * 1024);
    }
}
