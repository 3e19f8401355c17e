//! The calls to the provider: the authorization request, the code exchange, refresh,
//! userinfo, revocation (RFC 7009) and the end-session URL (RP-initiated logout).

use openidconnect::core::{CoreAuthenticationFlow, CoreErrorResponseType};
use openidconnect::{
    AccessToken, AuthorizationCode, CsrfToken, HttpClientError, LogoutRequest, Nonce,
    OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RefreshToken, RequestTokenError,
    StandardErrorResponse, TokenResponse,
};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::claims::{ShopIdToken, ShopTokenResponse, ShopUserInfo};
use super::client_auth::ClientAuth;
use super::provider::Provider;
use super::{Login, Oidc, OidcError, Refreshed, TokenSet, error_chain, form_encode};
use crate::auth::identity::{PendingLogin, StepUp};

impl Oidc {
    /// Starts a login: the provider URL to send the browser to and what `/callback` needs.
    /// With `step_up`, the provider is asked to authenticate the person again if their last
    /// authentication is older than `max_age` (OIDC Core § 3.1.2.1), at one of `acr_values`.
    pub async fn authorization_request(
        &self,
        return_to: String,
        step_up: Option<StepUp>,
    ) -> Result<(Url, PendingLogin), OidcError> {
        let provider = self.provider().await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let client = &provider.client;
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
        for (name, value) in &self.extra_auth_params {
            request = request.add_extra_param(name.clone(), value.clone());
        }
        if let Some(step_up) = &step_up {
            request = request.set_max_age(std::time::Duration::from_secs(step_up.max_age_secs));
            if !step_up.acr_values.is_empty() {
                request = request.add_extra_param("acr_values", step_up.acr_values.join(" "));
            }
        }
        let (url, state, nonce) = request.url();
        let url = match provider.par_endpoint(self.par)? {
            Some(endpoint) => self.push(&provider, endpoint, &url).await?,
            None => url,
        };
        let pending = PendingLogin {
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
            return_to,
            created_at: chrono::Utc::now().timestamp(),
            step_up,
            provider: self.id.clone(),
        };
        Ok((url, pending))
    }

    /// RFC 9126: posts the authorization request's parameters (with the client's
    /// authentication) to the provider, and returns the short URL the browser is sent to
    /// instead, naming only the client and the `request_uri` the provider answered with.
    async fn push(
        &self,
        provider: &Provider,
        endpoint: &Url,
        authorize: &Url,
    ) -> Result<Url, OidcError> {
        let mut form: Vec<(String, String)> = authorize
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        // RFC 9126 § 2.1: the audience of a client assertion is the issuer.
        let request = self.authenticated(provider, endpoint, &mut form, self.issuer());
        let response = request
            .form(&form)
            .send()
            .await
            .map_err(|e| OidcError::Unavailable(error_chain(&e)))?;
        let status = response.status();
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(OidcError::Unavailable(format!(
                "the pushed authorization request endpoint answered {status}"
            )));
        }
        let body: serde_json::Value = response.json().await.map_err(|e| {
            OidcError::InvalidResponse(format!("pushed authorization request: {e}"))
        })?;
        if !status.is_success() {
            return Err(OidcError::Refused {
                error: body["error"]
                    .as_str()
                    .unwrap_or("invalid_request")
                    .to_owned(),
                description: body["error_description"].as_str().map(str::to_owned),
            });
        }
        let request_uri = body["request_uri"].as_str().ok_or_else(|| {
            OidcError::InvalidResponse("the pushed authorization request had no request_uri".into())
        })?;
        let mut url = provider.metadata.authorization_endpoint().url().clone();
        url.query_pairs_mut()
            .append_pair("client_id", self.client_id.as_str())
            .append_pair("request_uri", request_uri);
        Ok(url)
    }

    /// A POST to `endpoint` authenticated as the client: Basic, or the secret or a fresh
    /// client assertion for `aud` added to `form`.
    fn authenticated(
        &self,
        provider: &Provider,
        endpoint: &Url,
        form: &mut Vec<(String, String)>,
        aud: &str,
    ) -> reqwest::RequestBuilder {
        let request = self.http.post(endpoint.clone());
        // The client names itself once (a pushed request already carries its `client_id`).
        let name_client = |form: &mut Vec<(String, String)>| {
            if !form.iter().any(|(k, _)| k == "client_id") {
                form.push(("client_id".into(), self.client_id.to_string()));
            }
        };
        match &provider.client_auth {
            ClientAuth::Basic => {
                let secret = self.client_secret.as_ref().map_or("", |s| s.secret());
                request.basic_auth(
                    form_encode(self.client_id.as_str()),
                    Some(form_encode(secret)),
                )
            }
            ClientAuth::Post => {
                name_client(form);
                if let Some(secret) = &self.client_secret {
                    form.push(("client_secret".into(), secret.secret().clone()));
                }
                request
            }
            auth @ ClientAuth::Jwt(_) => {
                name_client(form);
                form.extend(
                    auth.assertion_params(self.client_id.as_str(), aud)
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| (k.to_owned(), v)),
                );
                request
            }
        }
    }

    /// The client assertion of a token-endpoint call (`private_key_jwt`); none for a secret,
    /// which the `openidconnect` client sends itself.
    fn token_assertion(&self, provider: &Provider) -> impl Iterator<Item = (&'static str, String)> {
        provider
            .client_auth
            .assertion_params(self.client_id.as_str(), &Self::token_audience(provider))
            .into_iter()
            .flatten()
    }

    /// The audience of a client assertion sent to the token endpoint (RFC 7523 § 3).
    fn token_audience(provider: &Provider) -> String {
        provider
            .metadata
            .token_endpoint()
            .map_or_else(String::new, |u| u.url().to_string())
    }

    /// Whether discovery announced RFC 9207's `iss` in authorization responses: then a
    /// callback without it is refused before its code is redeemed.
    pub async fn requires_iss(&self) -> Result<bool, OidcError> {
        let provider = self.provider().await?;
        Ok(provider
            .metadata
            .additional_metadata()
            .additional_metadata
            .authorization_response_iss_parameter_supported
            == Some(true))
    }

    /// Exchanges the code (once) and validates the ID token fully.
    pub async fn exchange_code(
        &self,
        code: String,
        login: &PendingLogin,
    ) -> Result<Login, OidcError> {
        let provider = self.provider().await?;
        let client = &provider.client;
        let mut request = client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|e| OidcError::Unavailable(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(login.pkce_verifier.clone()));
        for (name, value) in self.token_assertion(&provider) {
            request = request.add_extra_param(name, value);
        }
        let response = request
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
            groups: self.groups(&claims),
            email_verified: claims.email_verified() == Some(true),
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
        let client = &provider.client;
        let refresh = RefreshToken::new(refresh_token.expose_secret().to_owned());
        let mut request = client
            .exchange_refresh_token(&refresh)
            .map_err(|e| OidcError::Unavailable(e.to_string()))?;
        for (name, value) in self.token_assertion(&provider) {
            request = request.add_extra_param(name, value);
        }
        let response = request
            .request_async(&self.refresh_http)
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
            groups: claims.as_ref().map(|c| self.groups(c)),
            claims,
        })
    }

    /// Calls userinfo. The answer's `sub` is for the caller to compare with the login's: a
    /// mismatch is a reason to ignore the answer, not an error page.
    pub async fn userinfo(&self, access_token: &SecretString) -> Result<ShopUserInfo, OidcError> {
        let provider = self.provider().await?;
        let client = &provider.client;
        client
            .user_info(
                AccessToken::new(access_token.expose_secret().to_owned()),
                None,
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
            if !self
                .said_no_revocation
                .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                tracing::info!(
                    "The provider has no revocation_endpoint; ended logins are not revoked there"
                );
            }
            return Ok(());
        };
        let mut form = vec![
            ("token".to_owned(), token.expose_secret().to_owned()),
            ("token_type_hint".to_owned(), hint.to_owned()),
        ];
        // The assertion names the endpoint it is sent to, so it is worth nothing elsewhere.
        let request = self.authenticated(&provider, url.url(), &mut form, url.url().as_str());
        let request = request.form(&form);
        let response = request
            .send()
            .await
            .map_err(|e| OidcError::Unavailable(error_chain(&e)))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else if status.is_server_error() || status.as_u16() == 429 {
            Err(OidcError::Unavailable(format!(
                "revocation answered {status}"
            )))
        } else {
            // RFC 7009 § 2.2.1: `unsupported_token_type`, `invalid_client`, … — sending the
            // same request again cannot succeed.
            Err(OidcError::Refused {
                error: format!("revocation answered {status}"),
                description: None,
            })
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

fn map_token_error(
    err: RequestTokenError<
        HttpClientError<reqwest::Error>,
        StandardErrorResponse<CoreErrorResponseType>,
    >,
) -> OidcError {
    match err {
        RequestTokenError::ServerResponse(r) => OidcError::Refused {
            error: r.error().as_ref().to_owned(),
            description: r.error_description().cloned(),
        },
        // Not connected: the request certainly never reached the provider.
        RequestTokenError::Request(HttpClientError::Reqwest(e)) if e.is_connect() => {
            OidcError::Unavailable(error_chain(&*e))
        }
        RequestTokenError::Request(e) => OidcError::NoAnswer(error_chain(&e)),
        RequestTokenError::Parse(e, _) => OidcError::InvalidResponse(e.to_string()),
        RequestTokenError::Other(e) => OidcError::InvalidResponse(e),
    }
}

/// The HTTP client for refresh calls: reqwest, with [`oauth_error_or_status`] applied to
/// every answer.
pub(super) struct StatusAsOAuthError(pub(super) reqwest::Client);

impl<'c> openidconnect::AsyncHttpClient<'c> for StatusAsOAuthError {
    type Error = HttpClientError<reqwest::Error>;
    type Future = std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<openidconnect::HttpResponse, Self::Error>>
                + Send
                + 'c,
        >,
    >;

    fn call(&'c self, request: openidconnect::HttpRequest) -> Self::Future {
        Box::pin(async move {
            let response = openidconnect::AsyncHttpClient::call(&self.0, request).await?;
            Ok(oauth_error_or_status(response))
        })
    }
}

/// Token-endpoint errors as RFC 6749 5.2 defines them, from providers that answer a refused
/// refresh with a bare status: a 400 without a parseable OAuth error is `invalid_grant` (the
/// grant is dead, the user must log in again), a 401 without one is `invalid_client` (the
/// shop's own credentials are at fault). Other answers pass through untouched.
fn oauth_error_or_status(mut response: openidconnect::HttpResponse) -> openidconnect::HttpResponse {
    let status = response.status().as_u16();
    let error = match status {
        400 => "invalid_grant",
        401 => "invalid_client",
        _ => return response,
    };
    let parseable = serde_json::from_slice::<serde_json::Value>(response.body())
        .is_ok_and(|v| v.get("error").is_some_and(serde_json::Value::is_string));
    if !parseable {
        let body = serde_json::json!({
            "error": error,
            "error_description": format!("the provider answered {status} without an OAuth error"),
        });
        *response.body_mut() = body.to_string().into_bytes();
        response.headers_mut().insert(
            openidconnect::http::header::CONTENT_TYPE,
            openidconnect::http::HeaderValue::from_static("application/json"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::oauth_error_or_status;

    fn answer(status: u16, body: &str) -> serde_json::Value {
        let response = openidconnect::http::Response::builder()
            .status(status)
            .body(body.as_bytes().to_vec())
            .unwrap();
        serde_json::from_slice(oauth_error_or_status(response).body()).unwrap_or_default()
    }

    #[test]
    fn bare_refusals_get_their_rfc_6749_error() {
        assert_eq!(answer(400, "")["error"], "invalid_grant");
        assert_eq!(
            answer(400, "<html>Bad Request</html>")["error"],
            "invalid_grant"
        );
        assert_eq!(answer(401, "")["error"], "invalid_client");
        assert_eq!(
            answer(400, r#"{"error":"invalid_request"}"#)["error"],
            "invalid_request"
        );
        assert_eq!(answer(503, "down"), serde_json::Value::Null, "untouched");
    }
}
