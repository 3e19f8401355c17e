//! CSRF tokens for visitors without a session row. A page with a form needs a token, but a
//! visitor who only browses must cost no database write, so the token is not stored: it is an
//! HMAC, under a key derived from `session.secret_key`, of a random value the browser keeps in
//! its own cookie (`HttpOnly`, `SameSite=Lax`, `__Host-` under https). A form is accepted when
//! its token matches the cookie sent with it; another site can neither read the cookie nor
//! compute the token. A logged-in session has a token of its own, renewed at login.

use std::cell::RefCell;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::crypto::{constant_time_eq, random_token};

/// The cookie's name; `__Host-` is prefixed under https, as for the session cookie.
pub const CSRF_COOKIE: &str = "storefront_csrf";
/// Random values are 32 bytes, base64url without padding.
const VALUE_LEN: usize = 43;

/// The HMAC key, derived once from the session secret.
#[derive(Clone)]
pub struct CsrfKey(Arc<[u8; 32]>);

impl CsrfKey {
    pub fn derive(session_secret: &[u8]) -> Self {
        let mut mac = Hmac::<Sha256>::new_from_slice(session_secret).expect("any key length");
        mac.update(b"storefront anonymous csrf v1");
        Self(Arc::new(mac.finalize().into_bytes().into()))
    }

    /// The form token for a cookie value.
    pub fn token_for(&self, cookie_value: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0[..]).expect("any key length");
        mac.update(cookie_value.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }
}

/// One request's anonymous CSRF state: the cookie it came with (if well formed), or the one
/// it will set if a token is handed out.
pub struct AnonymousCsrf {
    key: CsrfKey,
    sent: Option<String>,
    issued: RefCell<Option<String>>,
}

impl AnonymousCsrf {
    pub fn new(key: CsrfKey, cookie: Option<&str>) -> Self {
        let sent = cookie
            .filter(|v| v.len() == VALUE_LEN && v.bytes().all(is_base64url))
            .map(str::to_owned);
        Self {
            key,
            sent,
            issued: RefCell::new(None),
        }
    }

    /// The token for this browser's cookie, creating the cookie (set on the response) if it
    /// has none.
    pub fn token(&self) -> String {
        if let Some(value) = &self.sent {
            return self.key.token_for(value);
        }
        let mut issued = self.issued.borrow_mut();
        let value = issued.get_or_insert_with(|| random_token(32));
        self.key.token_for(value)
    }

    /// The token, if the browser already has the cookie or this request created it.
    pub fn existing_token(&self) -> Option<String> {
        let issued = self.issued.borrow();
        self.sent
            .as_ref()
            .or(issued.as_ref())
            .map(|v| self.key.token_for(v))
    }

    /// Whether `submitted` is the token of the cookie this request came with.
    pub fn accepts(&self, submitted: &str) -> bool {
        self.sent.as_ref().is_some_and(|v| {
            !submitted.is_empty() && constant_time_eq(&self.key.token_for(v), submitted)
        })
    }

    /// The cookie value to set on the response, if this request created one.
    pub fn cookie_to_set(&self) -> Option<String> {
        self.issued.borrow().clone()
    }
}

fn is_base64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_accepted_only_with_its_own_cookie() {
        let key = CsrfKey::derive(&[7u8; 64]);
        let first = AnonymousCsrf::new(key.clone(), None);
        let token = first.token();
        let value = first
            .cookie_to_set()
            .expect("a cookie is set with the first token");
        assert_eq!(first.token(), token, "one cookie per request");

        let next = AnonymousCsrf::new(key.clone(), Some(&value));
        assert!(next.accepts(&token));
        assert!(next.cookie_to_set().is_none(), "the browser has it already");
        assert!(!next.accepts(""));
        assert!(!next.accepts(&key.token_for(&random_token(32))));

        let other_key = AnonymousCsrf::new(CsrfKey::derive(&[8u8; 64]), Some(&value));
        assert!(!other_key.accepts(&token), "bound to the shop's secret");
        let no_cookie = AnonymousCsrf::new(key, None);
        assert!(!no_cookie.accepts(&token), "a token alone is not enough");
    }

    #[test]
    fn malformed_cookies_are_ignored() {
        let key = CsrfKey::derive(&[7u8; 64]);
        for bad in [
            "",
            "short",
            &"x".repeat(44),
            &format!("{}!", "a".repeat(42)),
        ] {
            let anon = AnonymousCsrf::new(key.clone(), Some(bad));
            assert!(anon.existing_token().is_none(), "{bad:?}");
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1000))]

            /// Whatever cookie and token a request carries, it is accepted only when the token
            /// is the one the shop computed for that very cookie.
            #[test]
            fn only_the_cookies_own_token_is_accepted(cookie in any::<String>(), submitted in any::<String>(), valid in "[A-Za-z0-9_-]{43}") {
                let key = CsrfKey::derive(&[3u8; 64]);
                let anon = AnonymousCsrf::new(key.clone(), Some(&cookie));
                prop_assert!(!anon.accepts(&submitted) || submitted == key.token_for(&cookie));
                let anon = AnonymousCsrf::new(key.clone(), Some(&valid));
                prop_assert!(anon.accepts(&key.token_for(&valid)));
                prop_assert_eq!(anon.accepts(&submitted), submitted == key.token_for(&valid));
            }
        }
    }
}
