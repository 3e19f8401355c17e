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

/// One session as loaded, in one allocation: its fields encoded into a byte string (times as
/// milliseconds, strings length-prefixed), so a hundred thousand logged-in sessions cost a few
/// hundred bytes each and cloning one out of the cache is a reference count.
#[derive(Debug, Clone)]
pub struct CachedSession {
    bytes: Arc<[u8]>,
}

// The fixed head of the encoding: session id, version, last seen, idle and absolute expiry.
const SESSION_ID: usize = 0;
const VERSION: usize = 16;
const LAST_SEEN: usize = 24;
const EXPIRES: usize = 32;
const ABSOLUTE_EXPIRES: usize = 40;
const HEAD: usize = 48;
/// Written for an absent time.
const NO_TIME: i64 = i64::MIN;

fn millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

fn time(millis: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(millis).unwrap_or_default()
}

/// Appends the fields of the encoding.
struct Writer(Vec<u8>);

impl Writer {
    fn len(&mut self, mut n: usize) {
        // LEB128: one byte below 128.
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                self.0.push(byte);
                return;
            }
            self.0.push(byte | 0x80);
        }
    }

    fn str(&mut self, s: &str) {
        self.len(s.len());
        self.0.extend_from_slice(s.as_bytes());
    }

    /// An absent string is length 0, a present one its length plus one.
    fn opt_str(&mut self, s: Option<&str>) {
        match s {
            None => self.len(0),
            Some(s) => {
                self.len(s.len() + 1);
                self.0.extend_from_slice(s.as_bytes());
            }
        }
    }

    fn i64(&mut self, n: i64) {
        self.0.extend_from_slice(&n.to_le_bytes());
    }
}

/// Reads the encoding back; it was written by [`Writer`] in this process, so a short read is a
/// bug and panics.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }

    fn len(&mut self) -> usize {
        let mut n = 0;
        let mut shift = 0;
        loop {
            let byte = self.take(1)[0];
            n |= usize::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return n;
            }
            shift += 7;
        }
    }

    fn str(&mut self) -> &'a str {
        let n = self.len();
        std::str::from_utf8(self.take(n)).expect("written from a str")
    }

    fn opt_str(&mut self) -> Option<&'a str> {
        match self.len() {
            0 => None,
            n => Some(std::str::from_utf8(self.take(n - 1)).expect("written from a str")),
        }
    }

    fn i64(&mut self) -> i64 {
        i64::from_le_bytes(self.take(8).try_into().expect("eight bytes"))
    }

    fn uuid(&mut self) -> Uuid {
        Uuid::from_bytes(self.take(16).try_into().expect("sixteen bytes"))
    }
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
        let mut w = Writer(Vec::with_capacity(128));
        w.0.extend_from_slice(session_id.as_bytes());
        w.i64(version);
        w.i64(millis(last_seen_at));
        w.i64(millis(expires_at));
        w.i64(millis(absolute_expires_at));
        match auth {
            None => w.0.push(0),
            Some(a) => {
                w.0.push(1);
                w.0.extend_from_slice(a.user_id.as_bytes());
                w.0.extend_from_slice(a.token_id.as_bytes());
                w.i64(millis(a.access_expires_at));
                w.i64(a.auth_time.map_or(NO_TIME, millis));
                w.0.push(
                    RefreshStatus::ALL
                        .iter()
                        .position(|s| *s == a.refresh_status)
                        .unwrap_or_default() as u8,
                );
                w.0.push(u8::from(a.email_verified));
                w.str(&a.subject);
                w.str(&a.issuer);
                w.opt_str(a.email.as_deref());
                w.opt_str(a.name.as_deref());
                w.opt_str(a.acr.as_deref());
                w.len(a.groups.len());
                for group in &a.groups {
                    w.str(group);
                }
            }
        }
        w.len(state.len());
        for (k, v) in &state {
            w.str(k);
            w.str(v);
        }
        Self {
            bytes: Arc::from(w.0),
        }
    }

    fn at(&self, offset: usize) -> i64 {
        Reader(&self.bytes[offset..]).i64()
    }

    pub fn session_id(&self) -> Uuid {
        Reader(&self.bytes[SESSION_ID..]).uuid()
    }

    pub fn version(&self) -> i64 {
        self.at(VERSION)
    }

    /// The login and user, if logged in, and the reader placed at the state.
    fn read_auth(&self) -> (Option<AuthState>, Reader<'_>) {
        let mut r = Reader(&self.bytes[HEAD..]);
        if r.take(1)[0] == 0 {
            return (None, r);
        }
        let user_id = r.uuid();
        let token_id = r.uuid();
        let access_expires_at = time(r.i64());
        let auth_time = Some(r.i64()).filter(|t| *t != NO_TIME).map(time);
        let refresh_status = RefreshStatus::ALL
            .get(usize::from(r.take(1)[0]))
            .copied()
            .unwrap_or(RefreshStatus::Ok);
        let email_verified = r.take(1)[0] == 1;
        let subject = r.str().to_owned();
        let issuer = r.str().to_owned();
        let email = r.opt_str().map(str::to_owned);
        let name = r.opt_str().map(str::to_owned);
        let acr = r.opt_str().map(str::to_owned);
        let groups = (0..r.len()).map(|_| r.str().to_owned()).collect();
        let auth = AuthState {
            user_id,
            token_id,
            subject,
            issuer,
            email,
            email_verified,
            name,
            groups,
            access_expires_at,
            refresh_status,
            auth_time,
            acr,
        };
        (Some(auth), r)
    }

    /// The persisted state, as the store hands it to a request, and the login and user if
    /// logged in: the encoding read once.
    pub fn contents(&self) -> (HashMap<String, String>, Option<AuthState>) {
        let (auth, mut r) = self.read_auth();
        let state = (0..r.len())
            .map(|_| (r.str().to_owned(), r.str().to_owned()))
            .collect();
        (state, auth)
    }

    pub fn last_seen_at(&self) -> DateTime<Utc> {
        time(self.at(LAST_SEEN))
    }

    /// The same session, used now: idle expiry pushed forward (never past the absolute one).
    pub fn touched(&self, idle: chrono::Duration) -> Self {
        let now = Utc::now();
        let mut bytes = self.bytes.to_vec();
        let expires = millis(now + idle).min(self.at(ABSOLUTE_EXPIRES));
        bytes[LAST_SEEN..LAST_SEEN + 8].copy_from_slice(&millis(now).to_le_bytes());
        bytes[EXPIRES..EXPIRES + 8].copy_from_slice(&expires.to_le_bytes());
        Self {
            bytes: Arc::from(bytes),
        }
    }

    fn live(&self, now: DateTime<Utc>) -> bool {
        let now = millis(now);
        self.at(EXPIRES) > now && self.at(ABSOLUTE_EXPIRES) > now
    }

    /// What it costs to hold: the encoding, the reference counts and the cache's slot.
    fn weight(&self) -> u64 {
        self.bytes.len() as u64 + 16 + 64
    }

    #[cfg(test)]
    fn expire_now(&mut self) {
        let mut bytes = self.bytes.to_vec();
        bytes[EXPIRES..EXPIRES + 8].copy_from_slice(&(millis(Utc::now()) - 1000).to_le_bytes());
        self.bytes = Arc::from(bytes);
    }
}

/// Each entry weighs its bytes, and at least its share of the byte budget by entry count,
/// so the cache holds at most `max_entries` entries and `max_bytes` bytes.
#[derive(Clone)]
struct Bytes {
    floor: u64,
}

impl Weighter<KeyHash, CachedSession> for Bytes {
    fn weight(&self, _key: &KeyHash, value: &CachedSession) -> u64 {
        value.weight().max(self.floor)
    }
}

pub struct SessionCache {
    entries: Option<Cache<KeyHash, CachedSession, Bytes>>,
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

    fn usable(&self) -> Option<&Cache<KeyHash, CachedSession, Bytes>> {
        self.entries.as_ref().filter(|_| self.hearing.usable())
    }

    /// The live session under `key`, if this instance may trust its memory of it.
    pub fn get(&self, key: &KeyHash) -> Option<CachedSession> {
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
            entries.insert(key, session);
        }
    }

    /// Replaces an entry this instance just changed (a touch), keeping its place.
    pub fn replace(&self, key: KeyHash, session: CachedSession) {
        if let Some(entries) = self.usable()
            && entries.get(&key).is_some()
        {
            entries.insert(key, session);
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
                if entries.get(&key).is_some_and(|e| e.version() < version) {
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
    fn a_session_reads_back_as_it_was_kept() {
        let now = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
        let auth = AuthState {
            user_id: Uuid::new_v4(),
            token_id: Uuid::new_v4(),
            subject: "s".repeat(300),
            issuer: "https://op.example".into(),
            email: Some("zoë@example.com".into()),
            email_verified: true,
            name: None,
            groups: vec!["admins".into(), String::new(), "ß".repeat(70)],
            access_expires_at: now + chrono::Duration::minutes(5),
            refresh_status: RefreshStatus::NeedsLogin,
            auth_time: None,
            acr: Some(String::new()),
        };
        let state = HashMap::from([
            ("cart".to_owned(), "[1,2]".to_owned()),
            (String::new(), "x".repeat(20_000)),
        ]);
        let id = Uuid::new_v4();
        let kept = CachedSession::new(
            id,
            state.clone(),
            i64::MAX,
            Some(auth.clone()),
            now - chrono::Duration::minutes(2),
            now + chrono::Duration::minutes(28),
            now + chrono::Duration::minutes(30),
        );
        assert_eq!(kept.session_id(), id);
        assert_eq!(kept.version(), i64::MAX);
        let (kept_state, kept_auth) = kept.contents();
        assert_eq!(kept_state, state);
        assert_eq!(
            serde_json::to_value(kept_auth.unwrap()).unwrap(),
            serde_json::to_value(&auth).unwrap()
        );
        assert_eq!(kept.last_seen_at(), now - chrono::Duration::minutes(2));
        let touched = kept.touched(chrono::Duration::hours(1));
        assert!(touched.last_seen_at() > kept.last_seen_at());
        assert_eq!(
            touched.at(EXPIRES),
            kept.at(ABSOLUTE_EXPIRES),
            "not past the absolute expiry"
        );
        assert_eq!(touched.contents().0, state);

        let anonymous = CachedSession::new(id, HashMap::new(), 1, None, now, now, now);
        let (empty, nobody) = anonymous.contents();
        assert!(nobody.is_none());
        assert!(empty.is_empty());
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

#[cfg(all(test, target_os = "linux"))]
mod footprint {
    use super::*;

    fn resident_bytes() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    #[test]
    #[ignore = "measures memory; run alone"]
    fn bytes_per_cached_login() {
        let hearing = Arc::new(Hearing::default());
        hearing.set_usable_for_tests();
        let cache = SessionCache::new(100_000, 64 << 20, hearing);
        let before = resident_bytes();
        let now = Utc::now();
        for i in 0..100_000u32 {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            let auth = AuthState {
                user_id: Uuid::new_v4(),
                token_id: Uuid::new_v4(),
                subject: format!("synthetic-{i}"),
                issuer: "synthetic".into(),
                email: Some(format!("synthetic-{i}@example.com")),
                email_verified: false,
                name: Some(format!("Synthetic Shopper {i}")),
                groups: vec![],
                access_expires_at: now,
                refresh_status: RefreshStatus::Ok,
                auth_time: Some(now),
                acr: None,
            };
            let session = CachedSession::new(
                Uuid::new_v4(),
                HashMap::new(),
                1,
                Some(auth),
                now,
                now + chrono::Duration::hours(1),
                now + chrono::Duration::hours(2),
            );
            cache.put(key, session, cache.epoch());
        }
        let after = resident_bytes();
        eprintln!(
            "{} entries, {} bytes each",
            cache.len(),
            (after - before) / cache.len() as u64
        );
    }
}
