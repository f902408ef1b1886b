//! The CSRF state of the OAuth flow: a fresh random state per login attempt, carried to the
//! provider in the authorize URL and kept by the browser in a short-lived, HttpOnly,
//! SameSite=Lax cookie signed with HMAC-SHA256 (`{state}.{issued_at}.{signature}`). The
//! signature covers the provider name, the state and the issue time; the key is derived from
//! the JWT secret and never leaves this module (nor is it logged). Comparisons are
//! constant-time. No HTTP handling and no storage here.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Name of the state cookie.
pub const COOKIE_NAME: &str = "wrenn_oauth_state";
/// Lifetime of a state (and its cookie): ten minutes.
pub const STATE_TTL_SECS: i64 = 600;
/// Longest state accepted from a query string (a fresh one is 43 characters).
pub const MAX_STATE_LEN: usize = 128;
/// Longest cookie value considered.
const MAX_COOKIE_LEN: usize = 512;

/// Signs and checks state cookies.
pub struct StateSigner {
    key: [u8; 32],
}

impl std::fmt::Debug for StateSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateSigner(<key hidden>)")
    }
}

/// A fresh state and the cookie value that vouches for it.
pub struct IssuedState {
    pub state: String,
    pub cookie_value: String,
}

fn hmac(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; this cannot fail.
    <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes keys of any length")
}

impl StateSigner {
    /// The signing key is HMAC-SHA256(jwt_secret, "oauth-state"): a key of its own, so a
    /// state signature can never be confused with a session token signature.
    pub fn from_jwt_secret(jwt_secret: &[u8]) -> Self {
        let mut m = hmac(jwt_secret);
        m.update(b"oauth-state");
        Self {
            key: m.finalize().into_bytes().into(),
        }
    }

    fn mac(&self, provider: &str, state: &str, issued_at: i64) -> HmacSha256 {
        let mut m = hmac(&self.key);
        m.update(provider.as_bytes());
        m.update(b"\n");
        m.update(state.as_bytes());
        m.update(b"\n");
        m.update(issued_at.to_string().as_bytes());
        m
    }

    /// A new random state (256 bits, base64url) for `provider`, signed at `now` (unix seconds).
    pub fn issue(&self, provider: &str, now: i64) -> IssuedState {
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let state = URL_SAFE_NO_PAD.encode(raw);
        let sig = URL_SAFE_NO_PAD.encode(self.mac(provider, &state, now).finalize().into_bytes());
        IssuedState {
            cookie_value: format!("{state}.{now}.{sig}"),
            state,
        }
    }

    /// True when `cookie_value` is a cookie this signer issued for `provider`, not older than
    /// [`STATE_TTL_SECS`] at `now`, and its state equals `query_state`.
    pub fn verify(&self, provider: &str, cookie_value: &str, query_state: &str, now: i64) -> bool {
        if cookie_value.len() > MAX_COOKIE_LEN || query_state.len() > MAX_STATE_LEN {
            return false;
        }
        let mut parts = cookie_value.split('.');
        let (Some(state), Some(issued), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let Ok(issued_at) = issued.parse::<i64>() else {
            return false;
        };
        let Ok(sig) = URL_SAFE_NO_PAD.decode(sig) else {
            return false;
        };
        let signed = self
            .mac(provider, state, issued_at)
            .verify_slice(&sig)
            .is_ok();
        let same = bool::from(state.as_bytes().ct_eq(query_state.as_bytes()));
        let fresh = issued_at <= now + 60 && now - issued_at <= STATE_TTL_SECS;
        signed & same & fresh & !state.is_empty()
    }
}

/// `Set-Cookie` value that stores the state for [`STATE_TTL_SECS`] under `path` (the
/// provider's route, which covers its callback).
pub fn set_cookie(path: &str, value: &str, secure: bool) -> String {
    format!(
        "{COOKIE_NAME}={value}; Path={path}; Max-Age={STATE_TTL_SECS}; HttpOnly; SameSite=Lax{}",
        if secure { "; Secure" } else { "" }
    )
}

/// `Set-Cookie` value that removes the state cookie stored under `path`.
pub fn clear_cookie(path: &str, secure: bool) -> String {
    format!(
        "{COOKIE_NAME}=; Path={path}; Max-Age=0; HttpOnly; SameSite=Lax{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The state cookie's value among `Cookie` header values, if present.
pub fn find_cookie<'a>(headers: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    headers
        .flat_map(|h| h.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, v)| v.trim_matches('"'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    #[test]
    fn issued_state_verifies_once_for_its_provider() {
        let s = StateSigner::from_jwt_secret(b"0123456789abcdef0123456789abcdef");
        let a = s.issue("github", NOW);
        assert_eq!(a.state.len(), 43);
        assert!(s.verify("github", &a.cookie_value, &a.state, NOW + 5));
        // Another provider, another state, another key: refused.
        assert!(!s.verify("google", &a.cookie_value, &a.state, NOW));
        let b = s.issue("github", NOW);
        assert_ne!(a.state, b.state);
        assert!(!s.verify("github", &a.cookie_value, &b.state, NOW));
        let other = StateSigner::from_jwt_secret(b"another secret of thirty-two byte");
        assert!(!other.verify("github", &a.cookie_value, &a.state, NOW));
    }

    #[test]
    fn expired_or_tampered_cookies_are_refused() {
        let s = StateSigner::from_jwt_secret(b"k");
        let a = s.issue("github", NOW);
        assert!(s.verify("github", &a.cookie_value, &a.state, NOW + STATE_TTL_SECS));
        assert!(!s.verify(
            "github",
            &a.cookie_value,
            &a.state,
            NOW + STATE_TTL_SECS + 1
        ));
        // A later issue time (to extend the lifetime) breaks the signature.
        let sig = a.cookie_value.rsplit('.').next().unwrap();
        let moved = format!("{}.{}.{sig}", a.state, NOW + 500);
        assert!(!s.verify("github", &moved, &a.state, NOW + STATE_TTL_SECS + 1));
        for bad in [
            "",
            "x",
            &format!("{}.{NOW}", a.state),
            &format!("{}.{NOW}.AAAA", a.state),
            &format!("{}.{NOW}.!!", a.state),
            &format!("{}.{NOW}.{sig}.x", a.state),
            &format!(".{NOW}.{sig}"),
        ] {
            assert!(!s.verify("github", bad, &a.state, NOW), "{bad:?}");
        }
        assert!(!s.verify("github", &a.cookie_value, "", NOW));
    }

    #[test]
    fn cookie_headers() {
        let set = set_cookie("/v1/auth/oauth/github", "v", true);
        assert_eq!(
            set,
            "wrenn_oauth_state=v; Path=/v1/auth/oauth/github; Max-Age=600; HttpOnly; SameSite=Lax; Secure"
        );
        assert!(!set_cookie("/p", "v", false).contains("Secure"));
        assert_eq!(
            clear_cookie("/p", false),
            "wrenn_oauth_state=; Path=/p; Max-Age=0; HttpOnly; SameSite=Lax"
        );
        let headers = ["a=1; wrenn_oauth_state=abc.1.sig", "b=2"];
        assert_eq!(find_cookie(headers.into_iter()), Some("abc.1.sig"));
        assert_eq!(find_cookie(["a=1", "b=2"].into_iter()), None);
    }
}
