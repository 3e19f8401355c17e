//! How the shop proves it is the client at a provider's endpoints: the client secret (HTTP
//! Basic or in the form) or a JWT signed with one of `oidc.client_keys` (`private_key_jwt`,
//! RFC 7523), made fresh for each call.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openidconnect::core::CoreClientAuthMethod;
use sha2::{Digest, Sha256};

use super::claims::Metadata;
use crate::configuration::{ClientKey, TokenEndpointAuthMethod};

/// How long a client assertion is valid: one call, with room for clock skew.
const ASSERTION_LIFETIME_SECS: i64 = 60;

#[derive(Debug, Clone)]
pub(super) enum ClientAuth {
    /// `client_secret_basic`.
    Basic,
    /// `client_secret_post`.
    Post,
    /// `private_key_jwt`, signed with this key.
    Jwt(ClientKey),
}

impl ClientAuth {
    /// The configured method, or (unset) the secret in the way the provider takes it: Basic
    /// unless discovery lists only `client_secret_post`; `private_key_jwt` for a provider
    /// configured without a secret.
    pub(super) fn choose(
        configured: Option<TokenEndpointAuthMethod>,
        has_secret: bool,
        key: Option<&ClientKey>,
        metadata: &Metadata,
    ) -> Self {
        let jwt = || match key {
            Some(key) => ClientAuth::Jwt(key.clone()),
            // Refused at load; a secret-less Basic call is refused by the provider.
            None => ClientAuth::Basic,
        };
        match configured {
            Some(TokenEndpointAuthMethod::ClientSecretBasic) => ClientAuth::Basic,
            Some(TokenEndpointAuthMethod::ClientSecretPost) => ClientAuth::Post,
            Some(TokenEndpointAuthMethod::PrivateKeyJwt) => jwt(),
            None if !has_secret => jwt(),
            None => {
                let only_post = metadata
                    .token_endpoint_auth_methods_supported()
                    .is_some_and(|m| {
                        m.contains(&CoreClientAuthMethod::ClientSecretPost)
                            && !m.contains(&CoreClientAuthMethod::ClientSecretBasic)
                    });
                if only_post {
                    ClientAuth::Post
                } else {
                    ClientAuth::Basic
                }
            }
        }
    }

    /// The form fields of a `private_key_jwt` call for audience `aud`; none for a secret.
    pub(super) fn assertion_params(
        &self,
        client_id: &str,
        aud: &str,
    ) -> Option<[(&'static str, String); 2]> {
        match self {
            ClientAuth::Jwt(key) => Some([
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned(),
                ),
                ("client_assertion", client_assertion(key, client_id, aud)),
            ]),
            _ => None,
        }
    }
}

/// A client assertion (RFC 7523 § 2.2, OIDC Core § 9): issued by and about the client, for
/// `aud`, valid one minute, with a fresh `jti`, signed RS256.
pub(super) fn client_assertion(key: &ClientKey, client_id: &str, aud: &str) -> String {
    let now = chrono::Utc::now().timestamp();
    let header = serde_json::json!({ "alg": "RS256", "typ": "JWT", "kid": key.kid });
    let claims = serde_json::json!({
        "iss": client_id,
        "sub": client_id,
        "aud": aud,
        "jti": crate::crypto::random_token(24),
        "iat": now,
        "exp": now + ASSERTION_LIFETIME_SECS,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let digest = Sha256::digest(signing_input.as_bytes());
    let signature = key
        .key
        .sign_with_rng(
            &mut rand::rngs::OsRng,
            rsa::Pkcs1v15Sign::new::<Sha256>(),
            &digest,
        )
        .expect("an RSA key of 2048 bits or more signs a SHA-256 digest");
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs8::EncodePrivateKey;

    #[test]
    fn an_assertion_verifies_with_the_published_key() {
        let private = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
        let pem = private.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF).unwrap();
        let key = ClientKey::from_pem(&pem).unwrap();
        let jwt = client_assertion(&key, "shop", "https://op.example/token");
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["iss"], "shop");
        assert_eq!(claims["sub"], "shop");
        assert_eq!(claims["aud"], "https://op.example/token");
        assert!(claims["exp"].as_i64().unwrap() > claims["iat"].as_i64().unwrap());
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["kid"], key.kid.as_str());

        let jwk: openidconnect::core::CoreJsonWebKey =
            serde_json::from_value(key.public_jwk()).unwrap();
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        let message = format!("{}.{}", parts[0], parts[1]);
        use openidconnect::JsonWebKey as _;
        jwk.verify_signature(
            &openidconnect::core::CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
            message.as_bytes(),
            &signature,
        )
        .expect("the published key verifies the assertion");
        let mut forged = signature.clone();
        forged[0] ^= 1;
        assert!(
            jwk.verify_signature(
                &openidconnect::core::CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
                message.as_bytes(),
                &forged,
            )
            .is_err()
        );
        // Another key's thumbprint is another kid; the same key always has the same one.
        assert_eq!(ClientKey::from_pem(&pem).unwrap().kid, key.kid);
    }
}
