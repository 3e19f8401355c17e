//! Token encryption at rest (AES-256-GCM) and the small random/hash helpers around it.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use rand::rngs::OsRng;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::configuration::TokenKey;

const NONCE_LEN: usize = 12;

/// `n` random bytes from the OS, base64url without padding.
pub fn random_token(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Constant-time equality for secrets compared against user input.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[derive(Debug, thiserror::Error)]
pub enum CipherError {
    #[error("no encryption key with id `{0}` is configured")]
    UnknownKey(String),
    #[error("ciphertext is malformed or was tampered with")]
    Corrupt,
}

/// Encrypts with the current key; decrypts with whichever configured key the row names.
pub struct TokenCipher {
    current: (String, Aes256Gcm),
    previous: Vec<(String, Aes256Gcm)>,
}

impl TokenCipher {
    pub fn new(keys: Vec<TokenKey>) -> Self {
        let mut ciphers = keys
            .into_iter()
            .map(|k| (k.id, Aes256Gcm::new(&k.key.into())));
        let current = ciphers.next().expect("at least the current key");
        Self {
            current,
            previous: ciphers.collect(),
        }
    }

    pub fn current_key_id(&self) -> &str {
        &self.current.0
    }

    /// `aad` binds the ciphertext to its row and column, so values cannot be swapped around.
    pub fn encrypt(&self, plaintext: &SecretString, aad: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let ciphertext = self
            .current
            .1
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.expose_secret().as_bytes(),
                    aad,
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out
    }

    pub fn decrypt(
        &self,
        key_id: &str,
        data: &[u8],
        aad: &[u8],
    ) -> Result<SecretString, CipherError> {
        let cipher = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|(id, _)| id == key_id)
            .map(|(_, c)| c)
            .ok_or_else(|| CipherError::UnknownKey(key_id.to_owned()))?;
        if data.len() < NONCE_LEN {
            return Err(CipherError::Corrupt);
        }
        let (nonce, ciphertext) = data.split_at(NONCE_LEN);
        let plain = cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| CipherError::Corrupt)?;
        String::from_utf8(plain)
            .map(SecretString::from)
            .map_err(|_| CipherError::Corrupt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, byte: u8) -> TokenKey {
        TokenKey {
            id: id.into(),
            key: [byte; 32],
        }
    }

    #[test]
    fn round_trips_and_rejects_tampering() {
        let cipher = TokenCipher::new(vec![key("k1", 1)]);
        let secret = SecretString::from("access-token-value");
        let mut ct = cipher.encrypt(&secret, b"row-1/access");
        assert!(!ct.windows(6).any(|w| w == b"access"));
        let back = cipher.decrypt("k1", &ct, b"row-1/access").unwrap();
        assert_eq!(back.expose_secret(), "access-token-value");
        assert!(cipher.decrypt("k1", &ct, b"row-2/access").is_err());
        ct[15] ^= 1;
        assert!(cipher.decrypt("k1", &ct, b"row-1/access").is_err());
    }

    #[test]
    fn old_keys_still_decrypt_after_rotation() {
        let old = TokenCipher::new(vec![key("k1", 1)]);
        let ct = old.encrypt(&SecretString::from("t"), b"");
        let rotated = TokenCipher::new(vec![key("k2", 2), key("k1", 1)]);
        assert_eq!(rotated.current_key_id(), "k2");
        assert_eq!(
            rotated.decrypt("k1", &ct, b"").unwrap().expose_secret(),
            "t"
        );
        assert!(matches!(
            TokenCipher::new(vec![key("k2", 2)]).decrypt("k1", &ct, b""),
            Err(CipherError::UnknownKey(_))
        ));
    }
}
