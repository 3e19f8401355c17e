//! `TypedSession`: named, typed accessors instead of string keys spread over the handlers.

use std::cell::RefCell;
use std::future::{Ready, ready};
use std::rc::Rc;

use actix_session::{Session, SessionExt, SessionGetError, SessionInsertError};
use actix_web::dev::{Extensions, Payload, ServiceRequest};
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use serde::Serialize;
use uuid::Uuid;

use super::csrf::AnonymousCsrf;
use super::{
    AUTH_KEY, AuthState, CART_CHANGES_KEY, CLIENT_KEY, ClientInfo, PENDING_LOGINS_KEY,
    PendingLogin, REKEY_KEY, TOKEN_KEY,
};
use crate::crypto::{constant_time_eq, random_token};
use crate::shop::cart::{CART_KEY, Cart, CartChange};

const CSRF_KEY: &str = "csrf";
/// A sentence for the next page this session shows (once).
const NOTICE_KEY: &str = "notice";
/// Several tabs may log in at once; beyond this the oldest attempt is forgotten.
const MAX_PENDING_LOGINS: usize = 5;
/// A login attempt must come back from the provider within this many seconds.
pub const PENDING_LOGIN_TTL_SECS: i64 = 600;

/// The request's identity, parsed from the loaded session once and kept in the request's
/// extensions for every later reader (middleware, handler, layout, error page).
#[derive(Clone)]
struct Identity(Option<Rc<AuthState>>);

fn identity(session: &Session, extensions: &mut Extensions) -> Option<Rc<AuthState>> {
    if let Some(Identity(auth)) = extensions.get::<Identity>() {
        return auth.clone();
    }
    let auth = session
        .get::<AuthState>(AUTH_KEY)
        .ok()
        .flatten()
        .map(Rc::new);
    extensions.insert(Identity(auth.clone()));
    auth
}

pub struct TypedSession {
    session: Session,
    auth: RefCell<Option<Rc<AuthState>>>,
    /// The cookie-bound CSRF token of a visitor whose session holds none.
    anonymous_csrf: Option<Rc<AnonymousCsrf>>,
}

impl TypedSession {
    fn new(session: Session, extensions: &mut Extensions) -> Self {
        let auth = identity(&session, extensions);
        Self {
            session,
            auth: RefCell::new(auth),
            anonymous_csrf: extensions.get::<Rc<AnonymousCsrf>>().cloned(),
        }
    }

    /// For code that has the request rather than an extractor (the error pages).
    pub fn of(req: &HttpRequest) -> Self {
        Self::new(req.get_session(), &mut req.extensions_mut())
    }

    /// For middleware, which sees the request before extraction.
    pub fn from_service_request(req: &ServiceRequest) -> Self {
        Self::new(req.get_session(), &mut req.extensions_mut())
    }

    /// The logged-in user, if the session has a live login behind it.
    pub fn auth(&self) -> Option<Rc<AuthState>> {
        self.auth.borrow().clone()
    }

    /// Binds the session to a completed login. Renews the key first: the cookie an attacker
    /// may have planted before login is worthless afterwards (no session fixation).
    /// The store renews the key in the same compare-and-set that writes the login, so a cart
    /// line added by another tab at that moment is kept.
    pub fn log_in(&self, token_id: Uuid, client: &ClientInfo) -> Result<(), SessionInsertError> {
        self.session.insert(REKEY_KEY, true)?;
        self.session.insert(TOKEN_KEY, token_id)?;
        self.session.insert(CLIENT_KEY, client)?;
        // A fresh CSRF token for the logged-in session.
        self.session.insert(CSRF_KEY, random_token(32))
    }

    /// Drops a login the provider has ended (refresh refused) but keeps the rest of the
    /// session, such as the cart, for the shopper's next login.
    pub fn forget_login(&self) {
        self.session.remove(TOKEN_KEY);
        self.session.remove(AUTH_KEY);
        self.auth.replace(None);
    }

    pub fn log_out(&self) {
        self.session.purge();
    }

    /// The CSRF token for a page's forms: the session's own (a logged-in session has one),
    /// else the cookie-bound one ([`super::csrf`]), which costs no database write.
    pub fn csrf_token(&self) -> String {
        if let Ok(Some(token)) = self.session.get::<String>(CSRF_KEY) {
            return token;
        }
        if let Some(anonymous) = &self.anonymous_csrf {
            return anonymous.token();
        }
        // Without the cookie middleware (never in the server): a token kept in the session.
        let token = random_token(32);
        let _ = self.session.insert(CSRF_KEY, &token);
        token
    }

    /// The CSRF token if there is one already (error pages must not write).
    pub fn existing_csrf_token(&self) -> Option<String> {
        self.session
            .get::<String>(CSRF_KEY)
            .ok()
            .flatten()
            .or_else(|| self.anonymous_csrf.as_ref()?.existing_token())
    }

    /// Compares a submitted CSRF token with the session's, in constant time; without a
    /// login, the token bound to the browser's CSRF cookie is accepted too.
    pub fn check_csrf(&self, submitted: &str) -> bool {
        if let Ok(Some(expected)) = self.session.get::<String>(CSRF_KEY)
            && !submitted.is_empty()
            && constant_time_eq(&expected, submitted)
        {
            return true;
        }
        self.auth().is_none()
            && self
                .anonymous_csrf
                .as_ref()
                .is_some_and(|a| a.accepts(submitted))
    }

    pub fn begin_login(&self, login: PendingLogin) -> Result<(), SessionInsertError> {
        let now = chrono::Utc::now().timestamp();
        let mut pending = self.pending_logins();
        pending.retain(|p| now - p.created_at < PENDING_LOGIN_TTL_SECS);
        if pending.len() >= MAX_PENDING_LOGINS {
            pending.drain(..=pending.len() - MAX_PENDING_LOGINS);
        }
        pending.push(login);
        self.session.insert(PENDING_LOGINS_KEY, pending)
    }

    /// Removes and returns the login started with `state`, if it exists and has not expired.
    pub fn take_login(&self, state: &str) -> Result<Option<PendingLogin>, SessionInsertError> {
        let mut pending = self.pending_logins();
        let Some(index) = pending
            .iter()
            .position(|p| constant_time_eq(&p.state, state))
        else {
            return Ok(None);
        };
        let login = pending.remove(index);
        if pending.is_empty() {
            self.session.remove(PENDING_LOGINS_KEY);
        } else {
            self.session.insert(PENDING_LOGINS_KEY, pending)?;
        }
        let age = chrono::Utc::now().timestamp() - login.created_at;
        Ok((0..PENDING_LOGIN_TTL_SECS).contains(&age).then_some(login))
    }

    fn pending_logins(&self) -> Vec<PendingLogin> {
        self.session
            .get::<Vec<PendingLogin>>(PENDING_LOGINS_KEY)
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// Leaves a sentence for the next page (the session limit ending a device, a step-up's
    /// outcome).
    pub fn set_notice(&self, notice: impl Into<String>) -> Result<(), SessionInsertError> {
        self.session.insert(NOTICE_KEY, notice.into())
    }

    /// The sentence left for this page, if any; shown once.
    pub fn take_notice(&self) -> Option<String> {
        let notice = self.session.get::<String>(NOTICE_KEY).ok().flatten()?;
        self.session.remove(NOTICE_KEY);
        Some(notice)
    }

    /// The shopper's cart (empty when there is none or it cannot be read).
    pub fn cart(&self) -> Cart {
        self.session
            .get::<Cart>(CART_KEY)
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// Stores `cart`, the result of `changes` on [`Self::cart`]. The changes are kept for
    /// the store, which makes them again on a fresher cart if another request of this
    /// session changed it meanwhile.
    pub fn change_cart(
        &self,
        cart: &Cart,
        changes: impl IntoIterator<Item = CartChange>,
    ) -> Result<(), SessionInsertError> {
        let mut recorded: Vec<CartChange> = self
            .session
            .get(CART_CHANGES_KEY)
            .ok()
            .flatten()
            .unwrap_or_default();
        recorded.extend(changes);
        self.session.insert(CART_CHANGES_KEY, recorded)?;
        if cart.is_empty() {
            self.session.remove(CART_KEY);
            Ok(())
        } else {
            self.session.insert(CART_KEY, cart)
        }
    }

    pub fn get<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, SessionGetError> {
        self.session.get(key)
    }

    pub fn insert<T: Serialize>(&self, key: &str, value: T) -> Result<(), SessionInsertError> {
        self.session.insert(key, value)
    }
}

impl FromRequest for TypedSession {
    type Error = <Session as FromRequest>::Error;
    type Future = Ready<Result<TypedSession, Self::Error>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(Ok(TypedSession::new(
            req.get_session(),
            &mut req.extensions_mut(),
        )))
    }
}
