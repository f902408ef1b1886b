//! The one-time join token an administrator copies to a new host:
//! `wrenn1:<CA pin>:<secret>`, where the pin is the hex SHA-256 of the CA certificate (the
//! joining agent checks the CA it is sent against it, so the join can run over plain HTTP)
//! and the secret 32 random bytes, base64url. The store keeps only the secret's SHA-256.

use base64::Engine as _;
use sha2::{Digest, Sha256};

const PREFIX: &str = "wrenn1";
/// Longest token text accepted anywhere.
pub const MAX_TOKEN_LEN: usize = 256;

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Hex SHA-256 of the CA certificate's DER.
    pub ca_pin: String,
    secret: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret is never printed.
        f.debug_struct("JoinToken")
            .field("ca_pin", &self.ca_pin)
            .finish_non_exhaustive()
    }
}

impl JoinToken {
    /// A new token for the CA with pin `ca_pin`.
    pub fn generate(ca_pin: &str) -> Self {
        let bytes: [u8; 32] = rand::random();
        Self {
            ca_pin: ca_pin.to_string(),
            secret: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
        }
    }

    /// Parses a token's text; `None` if it is not one.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if text.len() > MAX_TOKEN_LEN {
            return None;
        }
        let mut parts = text.split(':');
        let (prefix, pin, secret) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || prefix != PREFIX {
            return None;
        }
        let pin_ok = pin.len() == 64
            && pin
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
        let secret_ok = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(secret)
            .is_ok_and(|b| b.len() == 32);
        (pin_ok && secret_ok).then(|| Self {
            ca_pin: pin.to_string(),
            secret: secret.to_string(),
        })
    }

    /// What the store keeps: hex SHA-256 of the secret.
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.secret.as_bytes()))
    }

    /// The text an administrator copies (a secret: print it once, never log it).
    pub fn expose(&self) -> String {
        format!("{PREFIX}:{}:{}", self.ca_pin, self.secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_and_hashes_its_secret_only() {
        let pin = "ab".repeat(32);
        let t = JoinToken::generate(&pin);
        let text = t.expose();
        let back = JoinToken::parse(&text).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.ca_pin, pin);
        assert_eq!(back.hash().len(), 64);
        assert!(!text.contains(&back.hash()));
        assert!(!format!("{t:?}").contains(&t.secret));
        // Another token has another secret.
        assert_ne!(JoinToken::generate(&pin).hash(), t.hash());
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let good = JoinToken::generate(&"0".repeat(64)).expose();
        let (head, secret) = good.rsplit_once(':').unwrap();
        for bad in [
            String::new(),
            "wrenn1".into(),
            good.replacen("wrenn1", "wrenn2", 1),
            format!("{head}:{secret}:x"),
            format!("{head}:{}", &secret[1..]),
            format!("wrenn1:{}:{secret}", "0".repeat(63)),
            format!("wrenn1:{}:{secret}", "G".repeat(64)),
            "x".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert!(JoinToken::parse(&bad).is_none(), "{bad}");
        }
    }
}
