//! Businesses' signing secrets, and how they are kept at rest.
//!
//! A signing secret is 256 random bits shown as `whsec_` and 43 base64url
//! characters, like the webhook keys in [`crate::credentials`]. Unlike those it cannot
//! be stored as a hash: every delivery is signed with it. So it is stored encrypted
//! with AES-256-GCM under a key that lives outside the database, in
//! `CALLBACK_SECRET_KEY`; a copy of the database alone reveals no secret.
//!
//! The stored text is `v1:` and the base64url (unpadded) of a random 96-bit nonce
//! followed by the ciphertext and its tag. The business's id is authenticated with
//! it, so a stored secret copied into another business's row does not decrypt. The
//! version prefix leaves room for another format or key later. Random nonces are
//! safe for far more secrets than a router will ever encrypt under one key (the
//! limit is around four billion).
//!
//! Secrets are wrapped so that `Debug` never shows them; they must not be logged.
//! Their memory is not wiped when they are dropped.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::RngCore;

/// The environment variable holding the encryption key.
pub const KEY_VARIABLE: &str = "CALLBACK_SECRET_KEY";

/// What every signing secret starts with.
pub const PREFIX: &str = "whsec_";

/// The stored format's version prefix.
const FORMAT_V1: &str = "v1:";

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// A business's signing secret. Its `Debug` output hides the value, and it has no
/// `==`, so nothing compares secrets in variable time; signatures made with it are
/// compared in constant time.
#[derive(Clone)]
pub struct Secret {
    value: String,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// Generates a new secret.
    pub fn generate() -> Secret {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Secret {
            value: format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)),
        }
    }

    /// The secret text, to show the business once.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// The HMAC key deliveries are signed with: the whole text, prefix included, so
    /// a receiver can use the secret exactly as it was shown.
    pub fn signing_key(&self) -> &[u8] {
        self.value.as_bytes()
    }
}

/// A new signing secret.
pub fn generate() -> Secret {
    Secret::generate()
}

/// Why `CALLBACK_SECRET_KEY` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The variable is unset or empty.
    #[error(
        "{KEY_VARIABLE} is not set: it must hold 32 random bytes in base64; \
         generate them with `openssl rand -base64 32`"
    )]
    Missing,
    /// The value is not base64 of exactly 32 bytes.
    #[error(
        "{KEY_VARIABLE} must be base64 of exactly 32 bytes ({0}); \
         generate it with `openssl rand -base64 32`"
    )]
    Malformed(&'static str),
}

impl From<KeyError> for crate::config::ConfigError {
    fn from(err: KeyError) -> Self {
        crate::config::ConfigError {
            variable: KEY_VARIABLE,
            problem: err.to_string(),
        }
    }
}

/// The key signing secrets are encrypted under. Its `Debug` output hides it.
#[derive(Clone)]
pub struct EncryptionKey([u8; 32]);

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EncryptionKey(..)")
    }
}

impl EncryptionKey {
    /// Reads `CALLBACK_SECRET_KEY` from the process environment.
    pub fn from_env() -> Result<EncryptionKey, KeyError> {
        EncryptionKey::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads `CALLBACK_SECRET_KEY` through `lookup`, which returns a variable's value.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<EncryptionKey, KeyError> {
        match lookup(KEY_VARIABLE) {
            Some(text) if !text.trim().is_empty() => EncryptionKey::parse(&text),
            _ => Err(KeyError::Missing),
        }
    }

    /// A random key, for a process that keeps nothing it encrypts past its own life
    /// (`serve --demo` without `CALLBACK_SECRET_KEY`).
    pub fn generate() -> EncryptionKey {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        EncryptionKey(key)
    }

    /// Parses standard base64 (as `openssl rand -base64 32` prints it) of 32 bytes.
    pub fn parse(text: &str) -> Result<EncryptionKey, KeyError> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| KeyError::Malformed("not base64"))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| KeyError::Malformed("wrong length"))?;
        Ok(EncryptionKey(key))
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&self.0))
    }
}

/// Why a stored secret could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    /// Not a format this version knows.
    #[error("stored signing secret has an unknown format")]
    UnknownFormat,
    /// The right prefix, but not valid base64 or too short.
    #[error("stored signing secret is malformed")]
    Malformed,
    /// Authentication failed: another key, another business, or altered text.
    #[error(
        "stored signing secret does not decrypt: {KEY_VARIABLE} is not the key it was \
         stored with, or it belongs to another business"
    )]
    Rejected,
}

/// Encrypts `secret` for storage in `business_id`'s row.
pub fn encrypt(key: &EncryptionKey, business_id: &str, secret: &Secret) -> String {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let aad = associated_data(business_id);
    // AES-GCM only refuses plaintexts of many gigabytes; a secret is 49 bytes.
    let sealed = key
        .cipher()
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: secret.value.as_bytes(),
                aad: aad.as_bytes(),
            },
        )
        .expect("AES-GCM encrypts a short secret");

    let mut stored = Vec::with_capacity(NONCE_LEN + sealed.len());
    stored.extend_from_slice(&nonce);
    stored.extend_from_slice(&sealed);
    format!("{FORMAT_V1}{}", URL_SAFE_NO_PAD.encode(stored))
}

/// Decrypts what [`encrypt`] stored for `business_id`.
pub fn decrypt(
    key: &EncryptionKey,
    business_id: &str,
    stored: &str,
) -> Result<Secret, DecryptError> {
    let encoded = stored
        .strip_prefix(FORMAT_V1)
        .ok_or(DecryptError::UnknownFormat)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| DecryptError::Malformed)?;
    if bytes.len() < NONCE_LEN + TAG_LEN {
        return Err(DecryptError::Malformed);
    }
    let (nonce, sealed) = bytes.split_at(NONCE_LEN);
    let aad = associated_data(business_id);
    let plain = key
        .cipher()
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: sealed,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| DecryptError::Rejected)?;
    let value = String::from_utf8(plain).map_err(|_| DecryptError::Malformed)?;
    Ok(Secret { value })
}

/// What is authenticated along with the secret: its purpose and its business.
fn associated_data(business_id: &str) -> String {
    format!("chat-router callback signing secret v1 for business {business_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> EncryptionKey {
        EncryptionKey([byte; 32])
    }

    #[test]
    fn secrets_are_unique_prefixed_and_hidden_from_debug() {
        let a = generate();
        let b = generate();
        assert_ne!(a.expose(), b.expose());
        assert!(a.expose().starts_with("whsec_"));
        assert_eq!(a.expose().len(), PREFIX.len() + 43);
        assert_eq!(a.signing_key(), a.expose().as_bytes());
        assert!(!format!("{a:?}").contains(a.expose()));
        assert!(!format!("{:?}", key(7)).contains("7"));
    }

    #[test]
    fn a_secret_round_trips_for_its_own_business_only() {
        let secret = generate();
        let stored = encrypt(&key(1), "business-a", &secret);
        assert!(stored.starts_with("v1:"));
        assert!(!stored.contains(secret.expose()));
        assert_eq!(
            decrypt(&key(1), "business-a", &stored).unwrap().expose(),
            secret.expose()
        );

        // Moved to another business, or read with another key: refused.
        assert_eq!(
            decrypt(&key(1), "business-b", &stored).unwrap_err(),
            DecryptError::Rejected
        );
        assert_eq!(
            decrypt(&key(2), "business-a", &stored).unwrap_err(),
            DecryptError::Rejected
        );

        // A fresh nonce each time: the same secret never looks the same twice.
        assert_ne!(encrypt(&key(1), "business-a", &secret), stored);
    }

    #[test]
    fn altered_or_foreign_stored_text_is_refused() {
        let stored = encrypt(&key(1), "b", &generate());

        // Flip one bit in every byte position in turn: each must fail to decrypt.
        let bytes = URL_SAFE_NO_PAD.decode(&stored[3..]).unwrap();
        for i in 0..bytes.len() {
            let mut altered = bytes.clone();
            altered[i] ^= 0x01;
            let text = format!("v1:{}", URL_SAFE_NO_PAD.encode(&altered));
            assert_eq!(
                decrypt(&key(1), "b", &text).unwrap_err(),
                DecryptError::Rejected,
                "{i}"
            );
        }

        assert_eq!(
            decrypt(&key(1), "b", &stored[3..]).unwrap_err(),
            DecryptError::UnknownFormat
        );
        assert_eq!(
            decrypt(&key(1), "b", "v2:AAAA").unwrap_err(),
            DecryptError::UnknownFormat
        );
        assert_eq!(
            decrypt(&key(1), "b", "v1:!!!").unwrap_err(),
            DecryptError::Malformed
        );
        assert_eq!(
            decrypt(&key(1), "b", "v1:AAAA").unwrap_err(),
            DecryptError::Malformed
        );
        assert_eq!(
            decrypt(&key(1), "b", "v1:").unwrap_err(),
            DecryptError::Malformed
        );
    }

    #[test]
    fn the_key_comes_from_base64_of_32_bytes() {
        // What `openssl rand -base64 32` prints, newline included.
        let printed = format!("{}\n", STANDARD.encode([9u8; 32]));
        let from = |value: Option<&str>| {
            let value = value.map(str::to_owned);
            EncryptionKey::from_lookup(move |name| {
                assert_eq!(name, "CALLBACK_SECRET_KEY");
                value.clone()
            })
        };
        assert_eq!(from(Some(printed.as_str())).unwrap().0, [9u8; 32]);
        assert_eq!(from(None).unwrap_err(), KeyError::Missing);
        assert_eq!(from(Some("  ")).unwrap_err(), KeyError::Missing);
        assert_eq!(
            from(Some("not base64!")).unwrap_err(),
            KeyError::Malformed("not base64")
        );
        assert_eq!(
            from(Some(STANDARD.encode([9u8; 16]).as_str())).unwrap_err(),
            KeyError::Malformed("wrong length")
        );

        // The message names the variable and how to make a key, and never the value.
        let message = KeyError::Missing.to_string();
        assert!(message.contains("CALLBACK_SECRET_KEY"), "{message}");
        assert!(message.contains("openssl rand -base64 32"), "{message}");
        let config: crate::config::ConfigError = KeyError::Malformed("wrong length").into();
        assert_eq!(config.variable, "CALLBACK_SECRET_KEY");
    }
}
