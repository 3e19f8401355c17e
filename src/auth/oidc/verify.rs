//! Token verification: ID tokens from a login or a refresh, and back-channel logout tokens,
//! against the provider's keys (refetched once on an unknown `kid`).

use std::time::Duration;

use openidconnect::{
    AccessToken, AccessTokenHash, ClaimsVerificationError, Nonce, SignatureVerificationError,
};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openidconnect::JsonWebKey;
use openidconnect::core::CoreJwsSigningAlgorithm;

use super::claims::{ShopIdToken, ShopIdTokenClaims};
use super::provider::Provider;
use super::{Oidc, OidcError};

/// How far a provider's clock may be from ours.
const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// An ID token from a code exchange must have been issued within this window.
const MAX_ID_TOKEN_AGE: Duration = Duration::from_secs(300);

impl Oidc {
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
    pub(super) async fn verify_id_token(
        &self,
        id_token: &ShopIdToken,
        nonce: Option<&Nonce>,
        access_token: &AccessToken,
    ) -> Result<ShopIdTokenClaims, OidcError> {
        let (claims, actual_at_hash) = self
            .verify_with_key_refetch("ID token", |provider| {
                let client = &provider.client;
                let verifier = client
                    .id_token_verifier()
                    .set_allowed_algs(provider.allowed_algs.clone())
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

    /// Validates an OIDC Back-Channel Logout token (1.0, and the drafts before its 2023
    /// errata): a JWS signed by one of the provider's keys (the signature checked by the
    /// `openidconnect` crate's JWK code), `typ` `logout+jwt`, `JWT` or absent, `iss`, `aud`,
    /// `iat` within minutes, the logout event, no `nonce`, `sub` and/or `sid`. A token
    /// without `exp` is accepted when it carries a `jti` (remembered by the caller against
    /// replay). Every rejection says its reason.
    pub async fn verify_logout_token(&self, raw: &str) -> Result<LogoutTokenNames, OidcError> {
        let invalid =
            |why: String| OidcError::InvalidToken(format!("logout_token rejected: {why}"));
        let mut parts = raw.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid(
                "not a compact JWS (three dot-separated parts)".into(),
            ));
        };
        let decode = |part: &str, what: &str| {
            URL_SAFE_NO_PAD
                .decode(part.trim_end_matches('='))
                .map_err(|_| invalid(format!("its {what} is not base64url")))
        };
        let header: JoseHeader = serde_json::from_slice(&decode(header, "header")?)
            .map_err(|e| invalid(format!("its header is not a JOSE header: {e}")))?;
        match header
            .typ
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("jwt") | Some("logout+jwt") | Some("application/logout+jwt") => {}
            Some(other) => return Err(invalid(format!("typ `{other}` is not logout+jwt or JWT"))),
        }
        let alg: CoreJwsSigningAlgorithm = serde_json::from_value(header.alg.clone())
            .map_err(|_| invalid(format!("unknown alg {}", header.alg)))?;
        let signature = decode(signature, "signature")?;
        let signed = &raw[..raw.len() - raw.rsplit('.').next().map_or(0, str::len) - 1];
        self.verify_with_key_refetch("logout_token", |provider| {
            if !provider.allowed_algs.contains(&alg) {
                return Err(ClaimsVerificationError::SignatureVerification(
                    SignatureVerificationError::DisallowedAlg(format!("{alg:?}")),
                ));
            }
            let key = provider
                .metadata
                .jwks()
                .keys()
                .iter()
                .find(|k| match (&header.kid, k.key_id()) {
                    (Some(kid), Some(id)) => id.as_str() == kid,
                    (None, _) => true,
                    (Some(_), None) => false,
                })
                .ok_or(ClaimsVerificationError::SignatureVerification(
                    SignatureVerificationError::NoMatchingKey,
                ))?;
            key.verify_signature(&alg, signed.as_bytes(), &signature)
                .map_err(ClaimsVerificationError::SignatureVerification)
        })
        .await?;
        let claims: LogoutTokenClaims = serde_json::from_slice(&decode(payload, "payload")?)
            .map_err(|e| invalid(format!("its claims are not what a logout token holds: {e}")))?;
        if claims.iss.trim_end_matches('/') != self.issuer().trim_end_matches('/') {
            return Err(invalid(format!(
                "iss `{}` is not this shop's provider",
                claims.iss
            )));
        }
        if !claims.aud.contains(self.client_id.as_str()) {
            return Err(invalid("aud does not name this client".into()));
        }
        let now = chrono::Utc::now();
        let skew = chrono::Duration::from_std(CLOCK_SKEW).expect("small");
        let max_age = chrono::Duration::from_std(MAX_ID_TOKEN_AGE).expect("small");
        let iat = chrono::DateTime::from_timestamp(claims.iat, 0)
            .ok_or_else(|| invalid("iat is not a time".into()))?;
        if iat > now + skew || iat < now - max_age - skew {
            return Err(invalid("iat is not within the last few minutes".into()));
        }
        let expires_at = match claims.exp {
            Some(exp) => {
                let exp = chrono::DateTime::from_timestamp(exp, 0)
                    .ok_or_else(|| invalid("exp is not a time".into()))?;
                if exp < now - skew {
                    return Err(invalid("it has expired".into()));
                }
                exp
            }
            // Before the 2023 errata, logout tokens had no exp: accepted once, by its jti,
            // within the iat window.
            None if claims.jti.is_some() => iat + max_age + skew,
            None => return Err(invalid("it has neither exp nor jti".into())),
        };
        if claims.nonce.is_some() {
            return Err(invalid("a logout token must not contain a nonce".into()));
        }
        if !claims
            .events
            .as_ref()
            .is_some_and(|e| e.get(LOGOUT_EVENT).is_some_and(|v| v.is_object()))
        {
            return Err(invalid("it lacks the back-channel logout event".into()));
        }
        let sub = claims.sub.filter(|s| !s.is_empty());
        let sid = claims.sid.filter(|s| !s.is_empty());
        if sub.is_none() && sid.is_none() {
            return Err(invalid("it names neither `sub` nor `sid`".into()));
        }
        Ok(LogoutTokenNames {
            sub,
            sid,
            jti: claims.jti,
            expires_at,
        })
    }
}

const LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// What a verified logout token names, and until when its `jti` must be remembered.
#[derive(Debug, Clone)]
pub struct LogoutTokenNames {
    pub sub: Option<String>,
    pub sid: Option<String>,
    pub jti: Option<String>,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

#[derive(serde::Deserialize)]
struct JoseHeader {
    alg: serde_json::Value,
    kid: Option<String>,
    typ: Option<String>,
}

/// `aud`: one audience or several.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, client_id: &str) -> bool {
        match self {
            Audience::One(a) => a == client_id,
            Audience::Many(all) => all.iter().any(|a| a == client_id),
        }
    }
}

#[derive(serde::Deserialize)]
struct LogoutTokenClaims {
    iss: String,
    aud: Audience,
    iat: i64,
    exp: Option<i64>,
    jti: Option<String>,
    sub: Option<String>,
    sid: Option<String>,
    events: Option<serde_json::Map<String, serde_json::Value>>,
    nonce: Option<serde_json::Value>,
}
