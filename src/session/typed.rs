//! `TypedSession`: named, typed accessors instead of string keys spread over the handlers.

use std::cell::RefCell;
use std::future::{Ready, ready};
use std::rc::Rc;

use actix_session::{Session, SessionExt, SessionGetError, SessionInsertError};
use actix_web::dev::{Extensions, Payload, ServiceRequest};
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use serde::Serialize;
use uuid::Uuid;

use super::{AUTH_KEY, AuthState, CLIENT_KEY, ClientInfo, PendingLogin, TOKEN_KEY};
use crate::crypto::{constant_time_eq, random_token};
use crate::shop::cart::{CART_KEY, Cart};

const CSRF_KEY: &str = "csrf";
const PENDING_LOGINS_KEY: &str = "pending_logins";
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
}

impl TypedSession {
    fn new(session: Session, extensions: &mut Extensions) -> Self {
        let auth = identity(&session, extensions);
        Self {
            session,
            auth: RefCell::new(auth),
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
    pub fn log_in(&self, token_id: Uuid, client: &ClientInfo) -> Result<(), SessionInsertError> {
        self.session.renew();
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

    /// The session's CSRF token, created on first use.
    pub fn csrf_token(&self) -> String {
        if let Ok(Some(token)) = self.session.get::<String>(CSRF_KEY) {
            return token;
        }
        let token = random_token(32);
        // Inserting a String cannot fail to serialize.
        let _ = self.session.insert(CSRF_KEY, &token);
        token
    }

    /// The CSRF token if the session has one already (error pages must not write).
    pub fn existing_csrf_token(&self) -> Option<String> {
        self.session.get::<String>(CSRF_KEY).ok().flatten()
    }

    /// Compares a submitted CSRF token with the session's, in constant time.
    pub fn check_csrf(&self, submitted: &str) -> bool {
        match self.session.get::<String>(CSRF_KEY) {
            Ok(Some(expected)) => !submitted.is_empty() && constant_time_eq(&expected, submitted),
            _ => false,
        }
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

    /// The shopper's cart (empty when there is none or it cannot be read).
    pub fn cart(&self) -> Cart {
        self.session
            .get::<Cart>(CART_KEY)
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    pub fn set_cart(&self, cart: &Cart) -> Result<(), SessionInsertError> {
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
