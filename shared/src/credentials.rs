//! Webhook keys and agent tokens.
//!
//! A secret is 256 random bits from the operating system's generator, shown once and
//! stored only as its SHA-256 hash. Random secrets of that size need no slow password
//! hash: nobody can guess one, and a fast hash keeps authentication off the hot path.
//! Lookups go by the hash, so comparing secret text never happens; the stored hash is
//! still compared in constant time as a second check.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a credential lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Posts messages to the webhook for one business.
    Webhook,
    /// Connects as one agent.
    Agent,
}

impl Kind {
    /// The value stored in `Credential.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Webhook => "webhook",
            Kind::Agent => "agent",
        }
    }

    fn prefix(self) -> &'static str {
        // Prefixes let people (and secret scanners) tell keys apart at a glance.
        match self {
            Kind::Webhook => "crk_",
            Kind::Agent => "cra_",
        }
    }
}

/// A freshly generated secret. Its `Debug` output hides the value.
pub struct Secret {
    value: String,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// Generates a new secret of the given kind.
    pub fn generate(kind: Kind) -> Secret {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Secret {
            value: format!("{}{}", kind.prefix(), URL_SAFE_NO_PAD.encode(bytes)),
        }
    }

    /// The secret text, to show its owner once.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// The hash that is stored.
    pub fn hash(&self) -> [u8; 32] {
        hash(&self.value)
    }
}

/// SHA-256 of a presented secret.
pub fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Constant-time equality of two hashes.
pub fn hashes_match(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Cheap shape check before touching the database: the right prefix and length.
pub fn well_formed(kind: Kind, presented: &str) -> bool {
    presented.len() == kind.prefix().len() + 43 && presented.starts_with(kind.prefix())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_unique_prefixed_and_hidden_from_debug() {
        let a = Secret::generate(Kind::Webhook);
        let b = Secret::generate(Kind::Webhook);
        assert_ne!(a.expose(), b.expose());
        assert!(a.expose().starts_with("crk_"));
        assert!(well_formed(Kind::Webhook, a.expose()));
        assert!(!well_formed(Kind::Agent, a.expose()));
        assert!(!format!("{a:?}").contains(a.expose()));
        assert!(hashes_match(&a.hash(), &hash(a.expose())));
        assert!(!hashes_match(&a.hash(), &b.hash()));
    }
}
