//! Token verification: ID tokens from a login or a refresh, and back-channel logout tokens,
//! against the provider's keys (refetched once on an unknown `kid`).

use std::time::Duration;

use openidconnect::{
    AccessToken, AccessTokenHash, ClaimsVerificationError, Nonce, SignatureVerificationError,
};

use super::claims::{LogoutToken, ShopIdToken, ShopIdTokenClaims};
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
                let client = &provider.client;
                let verifier = client
                    .id_token_verifier()
                    .set_allowed_algs(provider.allowed_algs.clone())
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
