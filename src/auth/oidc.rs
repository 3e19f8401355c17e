//! The shop's OpenID Connect client: discovery, the authorization request, the code exchange
//! with full ID-token validation, refresh, userinfo, revocation, end-session and back-channel
//! logout tokens. All token checks are the `openidconnect` crate's; this module only chooses
//! the policy (algorithms, clock skew, rate of JWKS refetches).

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreClaimName, CoreClaimType,
    CoreClientAuthMethod, CoreErrorResponseType, CoreGenderClaim, CoreGrantType, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm,
    CoreResponseMode, CoreResponseType, CoreRevocableToken, CoreRevocationErrorResponse,
    CoreSubjectIdentifierType, CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AccessToken, AccessTokenHash, AdditionalClaims, AdditionalProviderMetadata, AuthType,
    AuthorizationCode, ClaimsVerificationError, Client, ClientId, ClientSecret, CsrfToken,
    EmptyExtraTokenFields, EndpointMaybeSet, EndpointNotSet, EndpointSet, IdToken, IdTokenClaims,
    IdTokenFields, IssuerUrl, JsonWebKeySet, LogoutProviderMetadata, LogoutRequest, Nonce,
    OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, PostLogoutRedirectUrl,
    ProviderMetadata, RedirectUrl, RefreshToken, RequestTokenError, RevocationUrl, Scope,
    SignatureVerificationError, StandardErrorResponse, StandardTokenResponse, SubjectIdentifier,
    TokenResponse, UserInfoClaims,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use url::Url;

use super::identity::PendingLogin;
use crate::configuration::Settings;

/// Claims beyond the standard ones: the groups the admin check reads and the provider session.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShopClaims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}
impl AdditionalClaims for ShopClaims {}

/// The extra claims of an OIDC Back-Channel Logout token.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LogoutClaims {
    #[serde(default)]
    pub events: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub sid: Option<String>,
    #[serde(default)]
    pub nonce: Option<serde_json::Value>,
}
impl AdditionalClaims for LogoutClaims {}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RevocationMetadata {
    pub revocation_endpoint: Option<RevocationUrl>,
}
impl AdditionalProviderMetadata for RevocationMetadata {}

type Metadata = ProviderMetadata<
    LogoutProviderMetadata<RevocationMetadata>,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;
type ShopIdToken = IdToken<
    ShopClaims,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type LogoutToken = IdToken<
    LogoutClaims,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
pub type ShopIdTokenClaims = IdTokenClaims<ShopClaims, CoreGenderClaim>;
pub type ShopUserInfo = UserInfoClaims<ShopClaims, CoreGenderClaim>;
type ShopTokenResponse = StandardTokenResponse<
    IdTokenFields<
        ShopClaims,
        EmptyExtraTokenFields,
        CoreGenderClaim,
        CoreJweContentEncryptionAlgorithm,
        CoreJwsSigningAlgorithm,
    >,
    CoreTokenType,
>;
type ShopClient = Client<
    ShopClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    ShopTokenResponse,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// How far a provider's clock may be from ours.
const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// An ID token from a code exchange must have been issued within this window.
const MAX_ID_TOKEN_AGE: Duration = Duration::from_secs(300);
/// An unknown `kid` refetches the JWKS at most this often (a forged `kid` cannot make us
/// hammer the provider).
const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// While the provider is unreachable, requests retry discovery at most this often.
const DISCOVERY_RETRY_FROM_REQUEST: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// Discovery has not succeeded yet, or the provider did not answer in time.
    #[error("the identity provider is unavailable: {0}")]
    Unavailable(String),
    /// The provider refused the grant (`invalid_grant` and friends).
    #[error("the identity provider refused the request: {error}")]
    Refused {
        error: String,
        description: Option<String>,
    },
    /// The provider answered, but not with something usable (bad JSON, bad token).
    #[error("the identity provider's response was invalid: {0}")]
    InvalidResponse(String),
    #[error("{0}")]
    InvalidToken(String),
}

impl OidcError {
    pub fn is_invalid_grant(&self) -> bool {
        matches!(self, OidcError::Refused { error, .. } if error == "invalid_grant")
    }
}

/// The tokens of a token endpoint answer.
pub struct TokenSet {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    pub id_token: Option<SecretString>,
    pub expires_in: Option<Duration>,
}

/// A completed code exchange: the tokens and the claims of its verified ID token.
pub struct Login {
    pub tokens: TokenSet,
    pub claims: ShopIdTokenClaims,
}

/// A completed refresh: the tokens, and the claims of the new ID token if the provider sent one.
pub struct Refreshed {
    pub tokens: TokenSet,
    pub claims: Option<ShopIdTokenClaims>,
}

struct Provider {
    metadata: Metadata,
    /// When an unknown `kid` last made us refetch the JWKS (`None`: not since discovery).
    refetched_jwks_at: Option<Instant>,
}

pub struct Oidc {
    http: reqwest::Client,
    issuer: IssuerUrl,
    client_id: ClientId,
    client_secret: ClientSecret,
    redirect_url: RedirectUrl,
    post_logout_redirect_url: PostLogoutRedirectUrl,
    scopes: Vec<Scope>,
    provider: RwLock<Option<Arc<Provider>>>,
    /// Serializes discovery and JWKS refetches.
    refresh_lock: Mutex<Option<Instant>>,
}

impl Oidc {
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        let timeout = Duration::from_secs(settings.oidc.http_timeout_secs);
        let http = reqwest::Client::builder()
            // Following redirects would open the client to SSRF.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout)
            .timeout(timeout)
            .user_agent(concat!("storefront/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let issuer = settings
            .oidc
            .issuer_url
            .as_str()
            .trim_end_matches('/')
            .to_owned();
        Ok(Self {
            http,
            issuer: IssuerUrl::new(issuer)?,
            client_id: ClientId::new(settings.oidc.client_id.clone()),
            client_secret: ClientSecret::new(
                settings.oidc.client_secret.expose_secret().to_owned(),
            ),
            redirect_url: RedirectUrl::from_url(settings.redirect_url()),
            post_logout_redirect_url: PostLogoutRedirectUrl::from_url(
                settings.post_logout_redirect_url(),
            ),
            scopes: settings
                .oidc
                .scopes
                .iter()
                .filter(|s| *s != "openid")
                .map(|s| Scope::new(s.clone()))
                .collect(),
            provider: RwLock::new(None),
            refresh_lock: Mutex::new(None),
        })
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn is_ready(&self) -> bool {
        self.provider.read().expect("not poisoned").is_some()
    }

    /// Fetches the discovery document and the JWKS.
    pub async fn discover(&self) -> Result<(), OidcError> {
        let mut last = self.refresh_lock.lock().await;
        self.discover_locked(&mut last).await
    }

    async fn discover_locked(&self, last: &mut Option<Instant>) -> Result<(), OidcError> {
        *last = Some(Instant::now());
        let metadata = Metadata::discover_async(self.issuer.clone(), &self.http)
            .await
            .map_err(|e| OidcError::Unavailable(error_chain(&e)))?;
        *self.provider.write().expect("not poisoned") = Some(Arc::new(Provider {
            metadata,
            refetched_jwks_at: None,
        }));
        Ok(())
    }

    /// Retries discovery until it succeeds or `stop` fires.
    pub async fn discover_until_ready(
        &self,
        retry: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        while !self.is_ready() {
            match self.discover().await {
                Ok(()) => {
                    tracing::info!(issuer = %self.issuer.as_str(), "OpenID provider discovered")
                }
                Err(e) => tracing::warn!(error = %e, "OpenID provider discovery failed; retrying"),
            }
            if self.is_ready() {
                return;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(retry) => {}
            }
        }
    }

    async fn provider(&self) -> Result<Arc<Provider>, OidcError> {
        if let Some(p) = self.provider.read().expect("not poisoned").clone() {
            return Ok(p);
        }
        let mut last = self.refresh_lock.lock().await;
        if let Some(p) = self.provider.read().expect("not poisoned").clone() {
            return Ok(p);
        }
        if last.is_some_and(|t| t.elapsed() < DISCOVERY_RETRY_FROM_REQUEST) {
            return Err(OidcError::Unavailable(
                "discovery has not succeeded yet".into(),
            ));
        }
        self.discover_locked(&mut last).await?;
        Ok(self
            .provider
            .read()
            .expect("not poisoned")
            .clone()
            .expect("just set"))
    }

    /// Refetches the JWKS after an unknown `kid`, at most once per [`JWKS_REFETCH_INTERVAL`].
    /// Returns whether new keys were loaded.
    async fn refetch_jwks(&self, seen: &Arc<Provider>) -> bool {
        let _guard = self.refresh_lock.lock().await;
        let current = self.provider.read().expect("not poisoned").clone();
        if let Some(current) = &current {
            if !Arc::ptr_eq(current, seen) {
                return true; // someone else refreshed while we waited
            }
            if current
                .refetched_jwks_at
                .is_some_and(|t| t.elapsed() < JWKS_REFETCH_INTERVAL)
            {
                return false;
            }
        }
        match JsonWebKeySet::fetch_async(seen.metadata.jwks_uri(), &self.http).await {
            Ok(jwks) => {
                let metadata = seen.metadata.clone().set_jwks(jwks);
                *self.provider.write().expect("not poisoned") = Some(Arc::new(Provider {
                    metadata,
                    refetched_jwks_at: Some(Instant::now()),
                }));
                tracing::info!("Refetched the provider's JWKS after an unknown key id");
                true
            }
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "JWKS refetch failed");
                *self.provider.write().expect("not poisoned") = Some(Arc::new(Provider {
                    metadata: seen.metadata.clone(),
                    refetched_jwks_at: Some(Instant::now()),
                }));
                false
            }
        }
    }

    fn client(&self, provider: &Provider) -> ShopClient {
        let client = ShopClient::from_provider_metadata(
            provider.metadata.clone(),
            self.client_id.clone(),
            Some(self.client_secret.clone()),
        )
        .set_redirect_uri(self.redirect_url.clone());
        if self.uses_client_secret_post(provider) {
            client.set_auth_type(AuthType::RequestBody)
        } else {
            client
        }
    }

    /// client_secret_basic unless the provider supports only client_secret_post.
    fn uses_client_secret_post(&self, provider: &Provider) -> bool {
        provider
            .metadata
            .token_endpoint_auth_methods_supported()
            .is_some_and(|m| {
                m.contains(&CoreClientAuthMethod::ClientSecretPost)
                    && !m.contains(&CoreClientAuthMethod::ClientSecretBasic)
            })
    }

    /// Signature algorithms we accept: what the provider advertises, minus `none` and HMAC
    /// (a shared-secret MAC would let anyone holding the client secret mint tokens).
    fn allowed_algs(provider: &Provider) -> Vec<CoreJwsSigningAlgorithm> {
        provider
            .metadata
            .id_token_signing_alg_values_supported()
            .iter()
            .filter(|alg| {
                !matches!(
                    alg,
                    CoreJwsSigningAlgorithm::None
                        | CoreJwsSigningAlgorithm::HmacSha256
                        | CoreJwsSigningAlgorithm::HmacSha384
                        | CoreJwsSigningAlgorithm::HmacSha512
                )
            })
            .cloned()
            .collect()
    }

    /// Starts a login: the provider URL to send the browser to and what `/callback` needs.
    pub async fn authorization_request(
        &self,
        return_to: String,
    ) -> Result<(Url, PendingLogin), OidcError> {
        let provider = self.provider().await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let client = self.client(&provider);
        let mut request = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                || CsrfToken::new(crate::crypto::random_token(32)),
                || Nonce::new(crate::crypto::random_token(32)),
            )
            .set_pkce_challenge(challenge);
        for scope in &self.scopes {
            request = request.add_scope(scope.clone());
        }
        let (url, state, nonce) = request.url();
        let pending = PendingLogin {
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
            return_to,
            created_at: chrono::Utc::now().timestamp(),
        };
        Ok((url, pending))
    }

    /// The issuer the provider reported (RFC 9207 `iss` must equal it).
    pub fn issuer(&self) -> &str {
        self.issuer.as_str()
    }

    /// Exchanges the code (once) and validates the ID token fully.
    pub async fn exchange_code(
        &self,
        code: String,
        login: &PendingLogin,
    ) -> Result<Login, OidcError> {
        let provider = self.provider().await?;
        let client = self.client(&provider);
        let response = client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|e| OidcError::Unavailable(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(login.pkce_verifier.clone()))
            .request_async(&self.http)
            .await
            .map_err(map_token_error)?;
        let id_token = response
            .id_token()
            .ok_or_else(|| OidcError::InvalidResponse("no ID token in the token response".into()))?
            .clone();
        let nonce = Nonce::new(login.nonce.clone());
        let claims = self
            .verify_id_token(&id_token, Some(&nonce), response.access_token())
            .await?;
        Ok(Login {
            tokens: token_set(&response, Some(&id_token)),
            claims,
        })
    }

    /// Uses a refresh token; an ID token in the answer is validated and must name `subject`.
    pub async fn refresh(
        &self,
        refresh_token: &SecretString,
        subject: &str,
    ) -> Result<Refreshed, OidcError> {
        let provider = self.provider().await?;
        let client = self.client(&provider);
        let refresh = RefreshToken::new(refresh_token.expose_secret().to_owned());
        let response = client
            .exchange_refresh_token(&refresh)
            .map_err(|e| OidcError::Unavailable(e.to_string()))?
            .request_async(&self.http)
            .await
            .map_err(map_token_error)?;
        let claims = match response.id_token() {
            Some(id_token) => {
                let claims = self
                    .verify_id_token(id_token, None, response.access_token())
                    .await?;
                if claims.subject().as_str() != subject {
                    return Err(OidcError::InvalidToken(
                        "the refreshed ID token names another subject".into(),
                    ));
                }
                Some(claims)
            }
            None => None,
        };
        Ok(Refreshed {
            tokens: token_set(&response, response.id_token()),
            claims,
        })
    }

    /// Runs `verify` against the provider's keys. An unknown `kid` refetches the JWKS once
    /// (rate-limited, see [`Self::refetch_jwks`]) and verifies again, so the provider can
    /// rotate keys without a restart.
    async fn verify_with_key_refetch<T>(
        &self,
        what: &str,
        verify: impl Fn(&Provider) -> Result<T, ClaimsVerificationError>,
    ) -> Result<T, OidcError> {
        let mut provider = self.provider().await?;
        let mut refetched = false;
        loop {
            match verify(&provider) {
                Ok(verified) => return Ok(verified),
                Err(ClaimsVerificationError::SignatureVerification(
                    SignatureVerificationError::NoMatchingKey,
                )) if !refetched => {
                    refetched = true;
                    if !self.refetch_jwks(&provider).await {
                        return Err(OidcError::InvalidToken(format!(
                            "{what} signed with an unknown key"
                        )));
                    }
                    provider = self.provider().await?;
                }
                Err(e) => return Err(OidcError::InvalidToken(format!("{what} rejected: {e}"))),
            }
        }
    }

    /// Full ID-token validation; `nonce` is `None` for ID tokens from a refresh.
    async fn verify_id_token(
        &self,
        id_token: &ShopIdToken,
        nonce: Option<&Nonce>,
        access_token: &AccessToken,
    ) -> Result<ShopIdTokenClaims, OidcError> {
        let (claims, actual_at_hash) = self
            .verify_with_key_refetch("ID token", |provider| {
                let client = self.client(provider);
                let verifier = client
                    .id_token_verifier()
                    .set_allowed_algs(Self::allowed_algs(provider))
                    .set_issue_time_verifier_fn(|iat| {
                        let now = chrono::Utc::now();
                        if iat > now + CLOCK_SKEW {
                            Err("issued in the future".to_owned())
                        } else if nonce.is_some() && iat < now - MAX_ID_TOKEN_AGE - CLOCK_SKEW {
                            Err("issued too long ago".to_owned())
                        } else {
                            Ok(())
                        }
                    });
                let claims = match nonce {
                    Some(n) => id_token.claims(&verifier, n)?.clone(),
                    // Refreshed ID tokens carry no new nonce (OIDC Core 12.2).
                    None => id_token
                        .claims(&verifier, |_: Option<&Nonce>| Ok(()))?
                        .clone(),
                };
                // The hash needs the key that verified the signature, so it is computed here.
                let actual_at_hash = match claims.access_token_hash() {
                    None => None,
                    Some(_) => {
                        let alg = id_token
                            .signing_alg()
                            .map_err(ClaimsVerificationError::SignatureVerification)?;
                        let key = id_token
                            .signing_key(&verifier)
                            .map_err(ClaimsVerificationError::SignatureVerification)?;
                        let hash = AccessTokenHash::from_token(access_token, alg, key)
                            .map_err(|e| ClaimsVerificationError::Other(format!("at_hash: {e}")))?;
                        Some(hash)
                    }
                };
                Ok((claims, actual_at_hash))
            })
            .await?;
        if let Some(azp) = claims.authorized_party()
            && azp.as_str() != self.client_id.as_str()
        {
            return Err(OidcError::InvalidToken(
                "ID token `azp` is not this client".into(),
            ));
        }
        if claims.access_token_hash() != actual_at_hash.as_ref() {
            return Err(OidcError::InvalidToken(
                "the access token does not match the ID token's at_hash".into(),
            ));
        }
        Ok(claims)
    }

    /// Calls userinfo; the `sub` must equal the logged-in subject.
    pub async fn userinfo(
        &self,
        access_token: &SecretString,
        subject: &str,
    ) -> Result<ShopUserInfo, OidcError> {
        let provider = self.provider().await?;
        let client = self.client(&provider);
        client
            .user_info(
                AccessToken::new(access_token.expose_secret().to_owned()),
                Some(SubjectIdentifier::new(subject.to_owned())),
            )
            .map_err(|_| OidcError::Unavailable("the provider has no userinfo endpoint".into()))?
            .request_async(&self.http)
            .await
            .map_err(|e| match e {
                openidconnect::UserInfoError::Response(status, _, _)
                    if status == openidconnect::http::StatusCode::UNAUTHORIZED =>
                {
                    OidcError::Refused {
                        error: "invalid_token".into(),
                        description: None,
                    }
                }
                openidconnect::UserInfoError::Response(status, _, _)
                    if status.is_server_error()
                        || status == openidconnect::http::StatusCode::TOO_MANY_REQUESTS =>
                {
                    OidcError::Unavailable(format!("userinfo answered {status}"))
                }
                openidconnect::UserInfoError::Request(e) => OidcError::Unavailable(error_chain(&e)),
                other => OidcError::InvalidResponse(error_chain(&other)),
            })
    }

    /// RFC 7009: revokes a token at the provider, if it has a revocation endpoint.
    ///
    /// Sent directly rather than through `oauth2`, which refuses plain-http endpoints and so
    /// could not talk to a local development provider.
    pub async fn revoke(&self, token: &SecretString, hint: &str) -> Result<(), OidcError> {
        let provider = self.provider().await?;
        let Some(url) = provider
            .metadata
            .additional_metadata()
            .additional_metadata
            .revocation_endpoint
            .clone()
        else {
            return Ok(());
        };
        let form = [("token", token.expose_secret()), ("token_type_hint", hint)];
        let request = self.http.post(url.url().clone());
        let request = if self.uses_client_secret_post(&provider) {
            request.form(&[
                form[0],
                form[1],
                ("client_id", self.client_id.as_str()),
                ("client_secret", self.client_secret.secret()),
            ])
        } else {
            request
                .basic_auth(
                    form_encode(self.client_id.as_str()),
                    Some(form_encode(self.client_secret.secret())),
                )
                .form(&form)
        };
        let response = request
            .send()
            .await
            .map_err(|e| OidcError::Unavailable(error_chain(&e)))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(OidcError::InvalidResponse(format!(
                "revocation answered {}",
                response.status()
            )))
        }
    }

    /// Where to send the browser after logging out: the provider's `end_session_endpoint`
    /// (RP-initiated logout) when it has one.
    pub async fn end_session_url(
        &self,
        id_token: Option<&SecretString>,
        state: &str,
    ) -> Option<Url> {
        let provider = self.provider().await.ok()?;
        let endpoint = provider
            .metadata
            .additional_metadata()
            .end_session_endpoint
            .clone()?;
        let mut request = LogoutRequest::from(endpoint)
            .set_client_id(self.client_id.clone())
            .set_post_logout_redirect_uri(self.post_logout_redirect_url.clone())
            .set_state(CsrfToken::new(state.to_owned()));
        if let Some(raw) = id_token
            && let Ok(token) = raw.expose_secret().parse::<ShopIdToken>()
        {
            request = request.set_id_token_hint(&token);
        }
        Some(request.http_get_url())
    }

    /// Validates an OIDC Back-Channel Logout token; returns `(sub, sid)`.
    pub async fn verify_logout_token(
        &self,
        raw: &str,
    ) -> Result<(Option<String>, Option<String>), OidcError> {
        const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
        let token: LogoutToken = raw
            .parse()
            .map_err(|_| OidcError::InvalidToken("logout_token is not a JWT".into()))?;
        let claims = self
            .verify_with_key_refetch("logout_token", |provider| {
                let client = self.client(provider);
                let verifier = client
                    .id_token_verifier()
                    .set_allowed_algs(Self::allowed_algs(provider))
                    .set_allowed_jose_types(
                        openidconnect::JsonWebTokenType::new("logout+jwt".into()).normalize(),
                    )
                    .set_issue_time_verifier_fn(|iat| {
                        let now = chrono::Utc::now();
                        if iat > now + CLOCK_SKEW || iat < now - MAX_ID_TOKEN_AGE - CLOCK_SKEW {
                            Err("logout token iat out of range".into())
                        } else {
                            Ok(())
                        }
                    });
                token
                    .claims(&verifier, |n: Option<&Nonce>| match n {
                        None => Ok(()),
                        Some(_) => Err("a logout token must not contain a nonce".to_owned()),
                    })
                    .cloned()
            })
            .await?;
        let extra = claims.additional_claims();
        if extra.nonce.is_some() {
            return Err(OidcError::InvalidToken(
                "a logout token must not contain a nonce".into(),
            ));
        }
        if !extra
            .events
            .as_ref()
            .is_some_and(|e| e.get(EVENT).is_some_and(|v| v.is_object()))
        {
            return Err(OidcError::InvalidToken(
                "logout_token lacks the back-channel logout event".into(),
            ));
        }
        let sub = Some(claims.subject().as_str().to_owned()).filter(|s| !s.is_empty());
        let sid = extra.sid.clone();
        if sub.is_none() && sid.is_none() {
            return Err(OidcError::InvalidToken(
                "logout_token names neither `sub` nor `sid`".into(),
            ));
        }
        Ok((sub, sid))
    }
}

fn token_set(response: &ShopTokenResponse, id_token: Option<&ShopIdToken>) -> TokenSet {
    TokenSet {
        access_token: SecretString::from(response.access_token().secret().to_owned()),
        refresh_token: response
            .refresh_token()
            .map(|t| SecretString::from(t.secret().to_owned())),
        id_token: id_token.map(|t| SecretString::from(t.to_string())),
        expires_in: response.expires_in(),
    }
}

fn map_token_error<E: std::error::Error + 'static>(
    err: RequestTokenError<E, StandardErrorResponse<CoreErrorResponseType>>,
) -> OidcError {
    match err {
        RequestTokenError::ServerResponse(r) => OidcError::Refused {
            error: r.error().as_ref().to_owned(),
            description: r.error_description().cloned(),
        },
        RequestTokenError::Request(e) => OidcError::Unavailable(error_chain(&e)),
        RequestTokenError::Parse(e, _) => OidcError::InvalidResponse(e.to_string()),
        RequestTokenError::Other(e) => OidcError::InvalidResponse(e),
    }
}

/// RFC 6749 2.3.1: client credentials are form-encoded before Basic authentication.
fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}
