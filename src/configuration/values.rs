//! Configuration values that need decoding (keys, address ranges, the log format), decoded
//! once, while the configuration loads: a value that loaded is ready to use.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use serde::de::{Deserializer, Error as _};
use serde::{Deserialize, Serialize};

/// `server.log_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line, for log shipping.
    Json,
    /// For people at a terminal.
    Pretty,
}

fn decode_base64<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<SecretBox<Vec<u8>>, D::Error> {
    let text = SecretString::deserialize(deserializer)?;
    BASE64
        .decode(text.expose_secret().trim())
        .map(|bytes| SecretBox::new(Box::new(bytes)))
        .map_err(|_| D::Error::custom("is not valid base64"))
}

/// `session.secret_key`: the cookie signing key, at least 64 bytes.
#[derive(Clone)]
pub struct CookieKey(Arc<SecretBox<Vec<u8>>>);

impl CookieKey {
    pub fn bytes(&self) -> &[u8] {
        self.0.expose_secret()
    }
}

impl<'de> Deserialize<'de> for CookieKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes = decode_base64(deserializer)?;
        let len = bytes.expose_secret().len();
        if len < 64 {
            return Err(D::Error::custom(format!(
                "must decode to at least 64 bytes (got {len})"
            )));
        }
        Ok(Self(Arc::new(bytes)))
    }
}

impl fmt::Debug for CookieKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CookieKey([REDACTED])")
    }
}

/// An AES-256 key: `tokens.encryption_key`, or one of `tokens.previous_keys` with its id.
#[derive(Clone)]
pub struct AesKey(Arc<SecretBox<[u8; 32]>>);

impl AesKey {
    pub fn bytes(&self) -> &[u8; 32] {
        self.0.expose_secret()
    }

    fn from_base64(text: &str) -> Result<Self, String> {
        let bytes = BASE64
            .decode(text.trim())
            .map_err(|_| "is not valid base64".to_owned())?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| format!("must decode to 32 bytes (got {})", b.len()))?;
        Ok(Self(Arc::new(SecretBox::new(Box::new(key)))))
    }
}

impl<'de> Deserialize<'de> for AesKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = SecretString::deserialize(deserializer)?;
        AesKey::from_base64(text.expose_secret()).map_err(D::Error::custom)
    }
}

impl fmt::Debug for AesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AesKey([REDACTED])")
    }
}

/// An entry of `tokens.previous_keys`: `id:base64`, a retired key that still decrypts.
#[derive(Clone, Debug)]
pub struct PreviousKey {
    pub id: String,
    pub key: AesKey,
}

impl<'de> Deserialize<'de> for PreviousKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = SecretString::deserialize(deserializer)?;
        let (id, b64) = text
            .expose_secret()
            .split_once(':')
            .ok_or_else(|| D::Error::custom("entries must look like `id:base64`"))?;
        Ok(Self {
            id: id.to_owned(),
            key: AesKey::from_base64(b64).map_err(D::Error::custom)?,
        })
    }
}

/// `server.trusted_proxies`: IPs or CIDR ranges; a single address is a /32 or /128.
pub fn deserialize_networks<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<IpNet>, D::Error> {
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|entry| {
            let entry = entry.trim();
            entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    D::Error::custom(format!("`{entry}` is not an IP address or CIDR range"))
                })
        })
        .collect()
}

/// An entry of `oidc.client_keys`: an RSA private key (PEM, PKCS #8 or PKCS #1) the shop
/// signs its client assertions with (`private_key_jwt`, RFC 7523). Its key id is the RFC 7638
/// thumbprint of the public key, so the same key always has the same `kid`.
#[derive(Clone)]
pub struct ClientKey {
    pub kid: String,
    pub key: Arc<rsa::RsaPrivateKey>,
}

impl ClientKey {
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        use rsa::pkcs1::DecodeRsaPrivateKey;
        use rsa::pkcs8::DecodePrivateKey;
        let pem = pem.trim();
        let key = rsa::RsaPrivateKey::from_pkcs8_pem(pem)
            .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(pem))
            .map_err(|_| "is not an RSA private key in PEM (PKCS #8 or PKCS #1)".to_owned())?;
        if rsa::traits::PublicKeyParts::size(&key) < 256 {
            return Err("must be an RSA key of at least 2048 bits".into());
        }
        let (n, e) = Self::public_parts(&key);
        let canonical = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
        let kid = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(<sha2::Sha256 as sha2::Digest>::digest(canonical.as_bytes()));
        Ok(Self {
            kid,
            key: Arc::new(key),
        })
    }

    /// The modulus and exponent, base64url.
    fn public_parts(key: &rsa::RsaPrivateKey) -> (String, String) {
        use rsa::traits::PublicKeyParts;
        let b64 = |n: &rsa::BigUint| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(n.to_bytes_be())
        };
        (b64(key.n()), b64(key.e()))
    }

    /// The public key as a JWK, for `/.well-known/jwks.json`.
    pub fn public_jwk(&self) -> serde_json::Value {
        let (n, e) = Self::public_parts(&self.key);
        serde_json::json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid, "n": n, "e": e,
        })
    }
}

impl<'de> Deserialize<'de> for ClientKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = SecretString::deserialize(deserializer)?;
        ClientKey::from_pem(text.expose_secret()).map_err(D::Error::custom)
    }
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientKey({}, [REDACTED])", self.kid)
    }
}
