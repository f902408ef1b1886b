//! Secrets and credentials: argon2 password hashes, HS256 session JWTs (6 hours), and API
//! keys (`wrn_` + 128 random bits as hex, stored only as SHA-256 hex with a display prefix).
//! Pure functions and small types; no HTTP and no storage here. The OAuth login flow (its
//! providers, state cookie and account upsert) lives in [`oauth`].

pub mod limiter;
pub mod oauth;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How long a session JWT is valid.
pub const JWT_TTL_SECS: i64 = 6 * 60 * 60;
/// Prefix of every API key.
pub const API_KEY_PREFIX: &str = "wrn_";

/// Failures of the credential primitives.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The password hasher failed (not a wrong password: that is `Ok(false)`).
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// The token is malformed, has a bad signature or has expired.
    #[error("invalid or expired token")]
    InvalidToken,
    /// The JWT could not be signed.
    #[error("token signing failed: {0}")]
    Sign(String),
}

/// Hashes a password with argon2id and a random salt (PHC string). CPU-heavy: call it from
/// a blocking thread.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// Checks a password against a PHC hash; false for a wrong password or an unreadable hash.
pub fn verify_password(password: &str, phc: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    match PasswordHash::new(phc) {
        Ok(parsed) => argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// The claims of a session token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    pub team_id: String,
    pub email: String,
    pub iat: i64,
    pub exp: i64,
}

/// Signs and checks session tokens with one HS256 secret.
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl JwtKeys {
    pub fn new(secret: &[u8]) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }

    /// A token for the user, valid [`JWT_TTL_SECS`] from now.
    pub fn issue(&self, user_id: &str, team_id: &str, email: &str) -> Result<String, AuthError> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user_id.into(),
            team_id: team_id.into(),
            email: email.into(),
            iat: now,
            exp: now + JWT_TTL_SECS,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::Sign(e.to_string()))
    }

    /// Verifies signature, algorithm and expiry.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        v.set_required_spec_claims(&["exp", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &v)
            .map(|d| d.claims)
            .map_err(|_| AuthError::InvalidToken)
    }
}

/// A freshly generated API key: the plaintext (shown once), its hash and display prefix.
pub struct NewApiKey {
    pub plaintext: String,
    pub hash: String,
    pub prefix: String,
}

/// Generates `wrn_` + 32 hex digits (128 random bits).
pub fn generate_api_key() -> NewApiKey {
    let mut raw = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let plaintext = format!("{API_KEY_PREFIX}{}", hex::encode(raw));
    NewApiKey {
        hash: hash_api_key(&plaintext),
        prefix: format!("{}...", &plaintext[..API_KEY_PREFIX.len() + 8]),
        plaintext,
    }
}

/// SHA-256 of the key, lowercase hex.
pub fn hash_api_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// `len` random lowercase letters and digits.
pub fn random_id(len: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_round_trip() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
        assert!(!verify_password("correct horse", "not a hash"));
    }

    #[test]
    fn jwt_round_trip_and_tamper() {
        let keys = JwtKeys::new(&[7u8; 32]);
        let t = keys.issue("u1", "t1", "a@b.c").unwrap();
        let c = keys.verify(&t).unwrap();
        assert_eq!((c.sub.as_str(), c.team_id.as_str()), ("u1", "t1"));
        assert_eq!(c.exp - c.iat, JWT_TTL_SECS);
        let other = JwtKeys::new(&[8u8; 32]);
        assert!(other.verify(&t).is_err());
        assert!(keys.verify("garbage").is_err());
    }

    #[test]
    fn expired_jwt_is_rejected() {
        let keys = JwtKeys::new(&[7u8; 32]);
        let claims = Claims {
            sub: "u".into(),
            team_id: "t".into(),
            email: "e".into(),
            iat: 0,
            exp: chrono::Utc::now().timestamp() - 10,
        };
        let t =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys.encoding).unwrap();
        assert!(keys.verify(&t).is_err());
    }

    #[test]
    fn api_key_shape() {
        let k = generate_api_key();
        assert!(k.plaintext.starts_with("wrn_"));
        assert_eq!(k.plaintext.len(), 4 + 32);
        assert!(k.plaintext[4..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(k.prefix, format!("{}...", &k.plaintext[..12]));
        assert_eq!(k.hash, hash_api_key(&k.plaintext));
        assert_eq!(k.hash.len(), 64);
        assert_ne!(generate_api_key().plaintext, k.plaintext);
    }
}
