//! A small in-test OpenID provider for fault injection: every token it issues is built by
//! hand so tests can break any part of it (signature, alg, iss, aud, nonce, exp, kid).

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use rsa::RsaPrivateKey;
use rsa::pkcs1v15::SigningKey;
use rsa::signature::{SignatureEncoding, Signer};
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};
use sha2::Sha256;

pub const CLIENT_ID: &str = "storefront-test";
pub const CLIENT_SECRET: &str = "fake-idp-client-secret";

/// Generating RSA keys is slow: three per test binary, shared.
static KEYS: LazyLock<Vec<RsaPrivateKey>> = LazyLock::new(|| {
    (0..3)
        .map(|_| RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("rsa keygen"))
        .collect()
});

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signing {
    /// Signed with published key `n` (kid `key-n`).
    Key(usize),
    /// Signed with an unpublished key that claims kid `key-0`.
    Forged,
    /// `alg: none`, no signature.
    None,
}

#[derive(Clone, Debug)]
pub enum TokenEndpoint {
    Normal,
    Status(u16),
    Delay(Duration),
    Garbage,
}

/// What the token endpoint answers for one authorization code.
#[derive(Clone, Debug)]
pub struct Grant {
    pub claims: Value,
    pub signing: Signing,
}

struct State {
    published: Vec<usize>,
    codes: HashMap<String, Grant>,
    used_codes: Vec<String>,
    token_endpoint: TokenEndpoint,
    /// refresh token → (subject, still valid)
    refresh_tokens: HashMap<String, (String, bool)>,
    access_tokens: HashMap<String, String>,
    access_ttl: u64,
    /// Discovery answers 503 (the provider is down).
    discovery_down: bool,
    /// Advertise and accept only client_secret_post.
    secret_post_only: bool,
    /// `groups` claims put in ID tokens from refreshes, per subject.
    refresh_groups: HashMap<String, Vec<String>>,
    /// Claims merged into ID tokens from refreshes, per subject (provider-shaped groups).
    refresh_claims: HashMap<String, Value>,
    /// Every endpoint answers 503 (the whole provider is down).
    down: bool,
    /// Refresh answers carry a new refresh token and spend the old one (Okta, Auth0,
    /// Keycloak with rotation); off, they carry none and the old one stays valid (Google,
    /// Entra ID by default).
    rotation: bool,
    /// Userinfo answers for this subject instead of the token's (a confused provider).
    userinfo_sub: Option<String>,
    /// Discovery announces RFC 9207's `iss` in authorization responses.
    announces_iss: bool,
    /// Discovery lists `end_session_endpoint` and `revocation_endpoint` (Google lists neither).
    logout_endpoints: bool,
    /// A code exchange returns a refresh token (Google without `access_type=offline` does not).
    refresh_at_login: bool,
    /// Discovery lists a pushed authorization request endpoint (RFC 9126), which answers
    /// with this status (201: a `request_uri`).
    par: Option<u16>,
    /// Discovery says `require_pushed_authorization_requests`.
    par_required: bool,
    /// What the last pushed request carried: its form, and its `Authorization` header.
    pushed: Option<(HashMap<String, String>, Option<String>)>,
}

#[derive(Clone)]
pub struct FakeIdp {
    pub issuer: String,
    state: Arc<Mutex<State>>,
    pub token_calls: Arc<AtomicUsize>,
    pub refresh_calls: Arc<AtomicUsize>,
    pub revocations: Arc<AtomicUsize>,
    pub jwks_calls: Arc<AtomicUsize>,
    /// Refresh tokens presented a second time (each revoked a whole family).
    pub reuses: Arc<AtomicUsize>,
    /// The most token requests ever in progress at once.
    pub max_in_flight: Arc<AtomicUsize>,
}

impl FakeIdp {
    pub async fn start() -> FakeIdp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let issuer = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        Self::start_on(listener, issuer).await
    }

    /// A provider reached only through a [`TcpProxy`]: its issuer (and so every endpoint it
    /// announces) is the proxy's address, so the test can slow down or cut every call.
    pub async fn start_behind_proxy() -> (FakeIdp, crate::helpers::TcpProxy) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let proxy = crate::helpers::TcpProxy::start("127.0.0.1", port).await;
        let issuer = format!("http://127.0.0.1:{}", proxy.port());
        (Self::start_on(listener, issuer).await, proxy)
    }

    async fn start_on(listener: TcpListener, issuer: String) -> FakeIdp {
        LazyLock::force(&KEYS);
        let state = Arc::new(Mutex::new(State {
            published: vec![0],
            codes: HashMap::new(),
            used_codes: Vec::new(),
            token_endpoint: TokenEndpoint::Normal,
            refresh_tokens: HashMap::new(),
            access_tokens: HashMap::new(),
            access_ttl: 300,
            discovery_down: false,
            secret_post_only: false,
            refresh_groups: HashMap::new(),
            refresh_claims: HashMap::new(),
            down: false,
            rotation: true,
            userinfo_sub: None,
            announces_iss: true,
            logout_endpoints: true,
            refresh_at_login: true,
            par: None,
            par_required: false,
            pushed: None,
        }));
        let idp = FakeIdp {
            issuer: issuer.clone(),
            state: state.clone(),
            token_calls: Default::default(),
            refresh_calls: Default::default(),
            revocations: Default::default(),
            jwks_calls: Default::default(),
            reuses: Default::default(),
            max_in_flight: Default::default(),
        };
        let ctx = web::Data::new(Ctx {
            issuer,
            state,
            token_calls: idp.token_calls.clone(),
            refresh_calls: idp.refresh_calls.clone(),
            revocations: idp.revocations.clone(),
            jwks_calls: idp.jwks_calls.clone(),
            reuses: idp.reuses.clone(),
            in_flight: Default::default(),
            max_in_flight: idp.max_in_flight.clone(),
        });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(ctx.clone())
                .wrap(actix_web::middleware::from_fn(unless_down))
                .route(
                    "/.well-known/openid-configuration",
                    web::get().to(discovery),
                )
                .route("/jwks", web::get().to(jwks))
                .route("/token", web::post().to(token))
                .route("/userinfo", web::get().to(userinfo))
                .route("/revoke", web::post().to(revoke))
                .route("/par", web::post().to(par))
        })
        .workers(1)
        .listen(listener)
        .unwrap()
        .run();
        tokio::spawn(server);
        idp
    }

    /// Claims of a valid ID token for `sub` answering `nonce`.
    pub fn valid_claims(&self, sub: &str, nonce: &str) -> Value {
        let now = chrono::Utc::now().timestamp();
        json!({
            "iss": self.issuer, "aud": CLIENT_ID, "sub": sub, "nonce": nonce,
            "iat": now, "exp": now + 300, "email": format!("{sub}@example.com"), "email_verified": true,
            "name": format!("User {sub}"), "groups": ["customers"], "sid": format!("sid-{sub}"),
        })
    }

    pub fn add_code(&self, code: &str, grant: Grant) {
        self.state
            .lock()
            .unwrap()
            .codes
            .insert(code.to_owned(), grant);
    }

    /// A fresh authorization code whose exchange yields a valid ID token for `sub`.
    pub fn code_for(&self, sub: &str, nonce: &str) -> String {
        let code = format!("code-{}", uuid::Uuid::new_v4());
        self.add_code(
            &code,
            Grant {
                claims: self.valid_claims(sub, nonce),
                signing: Signing::Key(0),
            },
        );
        code
    }

    pub fn set_token_endpoint(&self, behaviour: TokenEndpoint) {
        self.state.lock().unwrap().token_endpoint = behaviour;
    }

    /// Publishes exactly these keys in the JWKS (key rotation).
    pub fn publish_keys(&self, keys: &[usize]) {
        self.state.lock().unwrap().published = keys.to_vec();
    }

    /// The whole provider goes down (every endpoint 503) or comes back.
    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }

    pub fn set_discovery_down(&self, down: bool) {
        self.state.lock().unwrap().discovery_down = down;
    }

    pub fn set_secret_post_only(&self) {
        self.state.lock().unwrap().secret_post_only = true;
    }

    /// The provider stops accepting every access token it issued (userinfo answers 401).
    pub fn forget_access_tokens(&self) {
        self.state.lock().unwrap().access_tokens.clear();
    }

    /// Every refresh token becomes invalid (`invalid_grant`).
    pub fn revoke_refresh_tokens(&self) {
        for (_, valid) in self.state.lock().unwrap().refresh_tokens.values_mut() {
            *valid = false;
        }
    }

    /// A valid refresh token for `sub`, as if issued at an earlier login.
    pub fn issue_refresh_token(&self, sub: &str) -> String {
        let token = format!("rt-{}", uuid::Uuid::new_v4());
        self.state
            .lock()
            .unwrap()
            .refresh_tokens
            .insert(token.clone(), (sub.to_owned(), true));
        token
    }

    /// ID tokens from refreshes for `sub` carry these groups from now on.
    /// Claims (an object) merged into every ID token a refresh of `sub` returns.
    pub fn set_refresh_claims(&self, sub: &str, claims: Value) {
        self.state
            .lock()
            .unwrap()
            .refresh_claims
            .insert(sub.to_owned(), claims);
    }

    pub fn set_refresh_groups(&self, sub: &str, groups: &[&str]) {
        self.state.lock().unwrap().refresh_groups.insert(
            sub.to_owned(),
            groups.iter().map(|g| (*g).to_owned()).collect(),
        );
    }

    pub fn set_userinfo_subject(&self, sub: &str) {
        self.state.lock().unwrap().userinfo_sub = Some(sub.to_owned());
    }

    /// Google's shape: refresh tokens are not rotated, no end-session or revocation endpoint.
    pub fn behave_like_google(&self) {
        let mut state = self.state.lock().unwrap();
        state.rotation = false;
        state.logout_endpoints = false;
    }

    pub fn set_refresh_at_login(&self, issue: bool) {
        self.state.lock().unwrap().refresh_at_login = issue;
    }

    pub fn set_announces_iss(&self, announces: bool) {
        self.state.lock().unwrap().announces_iss = announces;
    }

    pub fn set_rotation(&self, rotation: bool) {
        self.state.lock().unwrap().rotation = rotation;
    }

    /// Offers pushed authorization requests, answered with `status`; `required` makes
    /// discovery demand them.
    pub fn offer_par(&self, status: u16, required: bool) {
        let mut state = self.state.lock().unwrap();
        state.par = Some(status);
        state.par_required = required;
    }

    /// The form and `Authorization` header of the last pushed authorization request.
    pub fn last_pushed(&self) -> Option<(HashMap<String, String>, Option<String>)> {
        self.state.lock().unwrap().pushed.clone()
    }

    pub fn set_access_ttl(&self, secs: u64) {
        self.state.lock().unwrap().access_ttl = secs;
    }

    /// A signed JWT with any header `typ` and claims.
    pub fn sign(&self, claims: &Value, signing: Signing, typ: &str) -> String {
        sign(claims, signing, typ)
    }
}

struct Ctx {
    issuer: String,
    state: Arc<Mutex<State>>,
    token_calls: Arc<AtomicUsize>,
    refresh_calls: Arc<AtomicUsize>,
    reuses: Arc<AtomicUsize>,
    in_flight: AtomicUsize,
    max_in_flight: Arc<AtomicUsize>,
    revocations: Arc<AtomicUsize>,
    jwks_calls: Arc<AtomicUsize>,
}

fn sign(claims: &Value, signing: Signing, typ: &str) -> String {
    let (alg, kid, key) = match signing {
        Signing::Key(n) => ("RS256", format!("key-{n}"), Some(&KEYS[n])),
        Signing::Forged => ("RS256", "key-0".to_owned(), Some(&KEYS[2])),
        Signing::None => ("none", "key-0".to_owned(), None),
    };
    let header = json!({ "alg": alg, "kid": kid, "typ": typ });
    let input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let signature = match key {
        Some(key) => {
            let signer = SigningKey::<Sha256>::new(key.clone());
            B64.encode(signer.sign(input.as_bytes()).to_bytes())
        }
        None => String::new(),
    };
    format!("{input}.{signature}")
}

async fn discovery(ctx: web::Data<Ctx>) -> HttpResponse {
    let i = &ctx.issuer;
    let (down, post_only, announces_iss, logout_endpoints) = {
        let state = ctx.state.lock().unwrap();
        (
            state.discovery_down,
            state.secret_post_only,
            state.announces_iss,
            state.logout_endpoints,
        )
    };
    if down {
        return HttpResponse::ServiceUnavailable().finish();
    }
    let auth_methods = if post_only {
        json!(["client_secret_post"])
    } else {
        json!(["client_secret_basic"])
    };
    let mut document = json!({
        "issuer": i,
        "authorization_endpoint": format!("{i}/authorize"),
        "token_endpoint": format!("{i}/token"),
        "userinfo_endpoint": format!("{i}/userinfo"),
        "jwks_uri": format!("{i}/jwks"),
        "revocation_endpoint": format!("{i}/revoke"),
        "end_session_endpoint": format!("{i}/end-session"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": auth_methods,
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": announces_iss,
    });
    if !logout_endpoints {
        let fields = document.as_object_mut().unwrap();
        fields.remove("end_session_endpoint");
        fields.remove("revocation_endpoint");
    }
    let (par, par_required) = {
        let state = ctx.state.lock().unwrap();
        (state.par, state.par_required)
    };
    if par.is_some() {
        document["pushed_authorization_request_endpoint"] = json!(format!("{i}/par"));
        document["require_pushed_authorization_requests"] = json!(par_required);
    }
    HttpResponse::Ok().json(document)
}

async fn jwks(ctx: web::Data<Ctx>) -> HttpResponse {
    ctx.jwks_calls.fetch_add(1, Ordering::SeqCst);
    let published = ctx.state.lock().unwrap().published.clone();
    let keys: Vec<Value> = published
        .iter()
        .map(|&n| {
            let public = KEYS[n].to_public_key();
            json!({
                "kty": "RSA", "use": "sig", "alg": "RS256", "kid": format!("key-{n}"),
                "n": B64.encode(public.n().to_bytes_be()),
                "e": B64.encode(public.e().to_bytes_be()),
            })
        })
        .collect();
    HttpResponse::Ok().json(json!({ "keys": keys }))
}

fn oauth_error(error: &str) -> HttpResponse {
    HttpResponse::BadRequest().json(json!({ "error": error }))
}

async fn unless_down(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let down = req
        .app_data::<web::Data<Ctx>>()
        .is_some_and(|ctx| ctx.state.lock().unwrap().down);
    if down {
        let response = HttpResponse::ServiceUnavailable().body("provider down");
        return Ok(req.into_response(response).map_into_right_body());
    }
    next.call(req).await.map(|r| r.map_into_left_body())
}

/// Counts a token request as in progress until dropped.
struct InFlight<'a>(&'a Ctx);

impl<'a> InFlight<'a> {
    fn enter(ctx: &'a Ctx) -> Self {
        let now = ctx.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        ctx.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(ctx)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn token(
    ctx: web::Data<Ctx>,
    req: HttpRequest,
    form: web::Form<HashMap<String, String>>,
) -> HttpResponse {
    ctx.token_calls.fetch_add(1, Ordering::SeqCst);
    let _in_flight = InFlight::enter(&ctx);
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
    );
    let basic = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    let post = (
        form.get("client_id").map(String::as_str),
        form.get("client_secret").map(String::as_str),
    );
    let authenticated = if ctx.state.lock().unwrap().secret_post_only {
        basic.is_none() && post == (Some(CLIENT_ID), Some(CLIENT_SECRET))
    } else {
        basic == Some(expected.as_str())
    };
    if !authenticated {
        return HttpResponse::Unauthorized().json(json!({ "error": "invalid_client" }));
    }
    let behaviour = ctx.state.lock().unwrap().token_endpoint.clone();
    match behaviour {
        TokenEndpoint::Normal => {}
        TokenEndpoint::Status(code) => {
            return HttpResponse::build(actix_web::http::StatusCode::from_u16(code).unwrap())
                .body("upstream trouble");
        }
        TokenEndpoint::Delay(d) => tokio::time::sleep(d).await,
        TokenEndpoint::Garbage => {
            return HttpResponse::Ok()
                .content_type("application/json")
                .body("{\"access_token\": 42");
        }
    }
    let mut state = ctx.state.lock().unwrap();
    let ttl = state.access_ttl;
    let (sub, id_token) = match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let code = form.get("code").cloned().unwrap_or_default();
            if form.get("code_verifier").is_none_or(|v| v.len() < 43) {
                return oauth_error("invalid_grant");
            }
            let Some(grant) = state.codes.remove(&code) else {
                return oauth_error("invalid_grant");
            };
            state.used_codes.push(code);
            let sub = grant.claims["sub"].as_str().unwrap_or("nobody").to_owned();
            (sub, sign(&grant.claims, grant.signing, "JWT"))
        }
        Some("refresh_token") => {
            ctx.refresh_calls.fetch_add(1, Ordering::SeqCst);
            let presented = form.get("refresh_token").cloned().unwrap_or_default();
            let Some((sub, valid)) = state.refresh_tokens.get(&presented).cloned() else {
                return oauth_error("invalid_grant");
            };
            if !valid {
                ctx.reuses.fetch_add(1, Ordering::SeqCst);
                // Reuse of a rotated token: revoke the whole family.
                for (_, (s, v)) in state.refresh_tokens.iter_mut() {
                    if *s == sub {
                        *v = false;
                    }
                }
                return oauth_error("invalid_grant");
            }
            if state.rotation {
                state.refresh_tokens.insert(presented, (sub.clone(), false));
            }
            let now = chrono::Utc::now().timestamp();
            let mut claims = json!({
                "iss": ctx.issuer, "aud": CLIENT_ID, "sub": sub, "iat": now, "exp": now + 300,
            });
            if let Some(Value::Object(extra)) = state.refresh_claims.get(&sub) {
                for (k, v) in extra {
                    claims[k] = v.clone();
                }
            }
            if let Some(groups) = state.refresh_groups.get(&sub) {
                claims["groups"] = json!(groups);
            }
            (sub, sign(&claims, Signing::Key(state.published[0]), "JWT"))
        }
        _ => return oauth_error("unsupported_grant_type"),
    };
    let access = format!("at-{}", uuid::Uuid::new_v4());
    state.access_tokens.insert(access.clone(), sub.clone());
    let refreshing = form.get("grant_type").map(String::as_str) == Some("refresh_token");
    let mut answer = json!({
        "access_token": access, "token_type": "Bearer", "expires_in": ttl, "id_token": id_token,
    });
    let issue_refresh = if refreshing {
        state.rotation
    } else {
        state.refresh_at_login
    };
    if issue_refresh {
        let refresh = format!("rt-{}", uuid::Uuid::new_v4());
        state.refresh_tokens.insert(refresh.clone(), (sub, true));
        answer["refresh_token"] = json!(refresh);
    }
    HttpResponse::Ok().json(answer)
}

async fn userinfo(ctx: web::Data<Ctx>, req: HttpRequest) -> HttpResponse {
    let token = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    let sub = {
        let state = ctx.state.lock().unwrap();
        state
            .access_tokens
            .get(&token)
            .map(|s| state.userinfo_sub.clone().unwrap_or_else(|| s.clone()))
    };
    match sub {
        Some(sub) => HttpResponse::Ok().json(json!({
            "sub": sub, "email": format!("{sub}@example.com"), "name": format!("User {sub}"),
        })),
        None => HttpResponse::Unauthorized().finish(),
    }
}

async fn par(
    ctx: web::Data<Ctx>,
    req: HttpRequest,
    form: web::Form<HashMap<String, String>>,
) -> HttpResponse {
    let mut state = ctx.state.lock().unwrap();
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    state.pushed = Some((form.into_inner(), authorization));
    match state.par {
        Some(201) => HttpResponse::Created().json(json!({
            "request_uri": "urn:ietf:params:oauth:request_uri:fake-123",
            "expires_in": 60,
        })),
        Some(400) => HttpResponse::BadRequest().json(json!({
            "error": "invalid_client", "error_description": "client authentication failed",
        })),
        Some(status) => HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
            .body("<html>down</html>"),
        None => HttpResponse::NotFound().finish(),
    }
}

async fn revoke(ctx: web::Data<Ctx>, form: web::Form<HashMap<String, String>>) -> HttpResponse {
    ctx.revocations.fetch_add(1, Ordering::SeqCst);
    let mut state = ctx.state.lock().unwrap();
    if let Some(t) = form.get("token") {
        state.access_tokens.remove(t);
        if let Some(entry) = state.refresh_tokens.get_mut(t) {
            entry.1 = false;
        }
    }
    HttpResponse::Ok().finish()
}
