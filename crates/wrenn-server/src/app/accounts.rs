//! Accounts: signup (a user and their team), login with email and password, login through
//! an OAuth provider (the state check, the code exchange and the session; the account
//! upsert itself is `auth::oauth::sign_in`), and session tokens (HS256 JWTs). It must not
//! touch API keys, sandboxes or snapshots.

use super::App;
use crate::auth::limiter::RateLimiter;
use crate::auth::oauth::state::MAX_STATE_LEN;
use crate::auth::oauth::{sign_in, Callback, CallbackError, OAuthStart};
use crate::auth::{self, Claims};
use crate::config::{limits, AuthLimits, SignupMode};
use crate::error::ApiError;
use crate::store::{self, NewAccount, Store, StoreError};
use std::net::IpAddr;
use std::sync::OnceLock;
use wrenn_types::api;

/// Longest authorization code accepted (GitHub's are 20 characters).
const MAX_CODE_LEN: usize = 1024;
/// Longest provider `error` value looked at.
const MAX_ERROR_LEN: usize = 256;

/// How an OAuth callback ended, with the provider's own name: a session, or the code sent to
/// the frontend.
pub type OAuthFinish = Result<(api::AuthResponse, &'static str), (CallbackError, &'static str)>;

/// Normalises and checks an email: trimmed, lowercase, one `@`, a dotted domain.
fn normalize_email(raw: &str) -> Result<String, ApiError> {
    let email = raw.trim().to_lowercase();
    let bad = || ApiError::BadRequest("invalid email address".into());
    if email.is_empty() || email.len() > limits::MAX_EMAIL {
        return Err(bad());
    }
    let (local, domain) = email.split_once('@').ok_or_else(bad)?;
    let ok = !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && domain.split('.').all(|p| !p.is_empty())
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(email)
    } else {
        Err(bad())
    }
}

/// A hash that no password matches, so unknown emails cost as much as wrong passwords.
fn dummy_hash() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| auth::hash_password("wrenn-timing-equaliser").unwrap_or_default())
}

/// The limits of login and signup ([`AuthLimits`]): one rate limiter per key kind, and the
/// permits for password hashing (each hash or check runs on a blocking thread holding one).
pub(super) struct AuthGuards {
    login_addr: RateLimiter,
    login_email: RateLimiter,
    signup_addr: RateLimiter,
    signup_email: RateLimiter,
    hashing: tokio::sync::Semaphore,
}

impl AuthGuards {
    pub(super) fn new(l: &AuthLimits) -> Self {
        let limiter = |rate| RateLimiter::new(rate, l.max_tracked);
        Self {
            login_addr: limiter(l.login_per_addr),
            login_email: limiter(l.login_per_email),
            signup_addr: limiter(l.signup_per_addr),
            signup_email: limiter(l.signup_per_email),
            hashing: tokio::sync::Semaphore::new(l.hash_concurrency.max(1)),
        }
    }

    /// Runs a password hash or check on a blocking thread once a hashing permit is free.
    async fn hash<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        hash_with(Some(&self.hashing), f).await
    }
}

/// Runs `f` on a blocking thread, holding a permit of `hashing` if given.
async fn hash_with<T: Send + 'static>(
    hashing: Option<&tokio::sync::Semaphore>,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let _permit = match hashing {
        Some(h) => Some(
            h.acquire()
                .await
                .map_err(|_| ApiError::Internal("password hashing is shut down".into()))?,
        ),
        None => None,
    };
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("worker failed: {e}")))
}

/// Creates a user with a password and their team, whatever the signup mode: signup's work
/// after its limits, and an administrator's ([`crate::add_account`]). Checks the email and
/// the password. Returns the user and team ids.
pub(crate) async fn add_password_account(
    db: &dyn Store,
    hashing: Option<&tokio::sync::Semaphore>,
    email: &str,
    password: String,
) -> Result<(String, String), ApiError> {
    let email = normalize_email(email)?;
    let n = password.chars().count();
    if n < limits::MIN_PASSWORD {
        return Err(ApiError::BadRequest(format!(
            "password must be at least {} characters",
            limits::MIN_PASSWORD
        )));
    }
    if password.len() > limits::MAX_PASSWORD {
        return Err(ApiError::BadRequest(format!(
            "password must be at most {} bytes",
            limits::MAX_PASSWORD
        )));
    }
    if db.user_by_email(&email).await?.is_some() {
        return Err(ApiError::EmailTaken);
    }
    let hash = hash_with(hashing, move || auth::hash_password(&password))
        .await?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let account = NewAccount {
        user_id: format!("usr-{}", uuid::Uuid::new_v4().simple()),
        team_id: format!("team-{}", uuid::Uuid::new_v4().simple()),
        team_name: format!("{email}'s team"),
        email: email.clone(),
        password_hash: Some(hash),
        created_at: store::now(),
    };
    match db.create_account(&account).await {
        Ok(()) => {}
        Err(StoreError::Duplicate) => return Err(ApiError::EmailTaken),
        Err(e) => return Err(e.into()),
    }
    Ok((account.user_id, account.team_id))
}

/// Takes a token of `limiter` for the client address, if known.
fn take_addr(limiter: &RateLimiter, client: Option<IpAddr>) -> Result<(), ApiError> {
    match client {
        Some(ip) => limiter.take(&ip.to_string()).map_err(ApiError::RateLimited),
        None => Ok(()),
    }
}

impl App {
    fn auth_response(
        &self,
        user_id: &str,
        team_id: &str,
        email: &str,
    ) -> Result<api::AuthResponse, ApiError> {
        let token = self
            .jwt
            .issue(user_id, team_id, email)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(api::AuthResponse {
            token,
            user_id: user_id.into(),
            team_id: team_id.into(),
            email: email.into(),
        })
    }

    /// Creates a user and their team; returns a session. Refused when signup is closed, and
    /// rate-limited per client address and per email.
    pub async fn signup(
        &self,
        req: api::SignupRequest,
        client: Option<IpAddr>,
    ) -> Result<api::AuthResponse, ApiError> {
        if self.cfg.signup == SignupMode::Closed {
            return Err(ApiError::SignupClosed);
        }
        take_addr(&self.guards.signup_addr, client)?;
        let email = normalize_email(&req.email)?;
        self.guards
            .signup_email
            .take(&email)
            .map_err(ApiError::RateLimited)?;
        let hashing = &self.guards.hashing;
        let (user_id, team_id) =
            add_password_account(self.store.as_ref(), Some(hashing), &email, req.password).await?;
        self.auth_response(&user_id, &team_id, &email)
    }

    /// Checks email and password; returns a session. Rate-limited per client address (every
    /// attempt) and per email (failed attempts).
    pub async fn login(
        &self,
        req: api::LoginRequest,
        client: Option<IpAddr>,
    ) -> Result<api::AuthResponse, ApiError> {
        take_addr(&self.guards.login_addr, client)?;
        let email = req.email.trim().to_lowercase();
        if email.len() > limits::MAX_EMAIL || req.password.len() > limits::MAX_PASSWORD {
            return Err(ApiError::InvalidCredentials);
        }
        self.guards
            .login_email
            .check(&email)
            .map_err(ApiError::RateLimited)?;
        let user = self.store.user_by_email(&email).await?;
        let hash = user.as_ref().and_then(|u| u.password_hash.clone());
        let password = req.password;
        // The dummy hash is made (once) on the hashing thread too.
        let ok = self
            .guards
            .hash(move || match &hash {
                Some(h) => auth::verify_password(&password, h),
                None => auth::verify_password(&password, dummy_hash()),
            })
            .await?;
        match user {
            Some(u) if ok && u.password_hash.is_some() => {
                self.auth_response(&u.id, &u.team_id, &u.email)
            }
            _ => {
                // A failure costs the email a token (an empty bucket was refused above).
                let _ = self.guards.login_email.take(&email);
                Err(ApiError::InvalidCredentials)
            }
        }
    }

    /// Checks a session token.
    pub fn verify_jwt(&self, token: &str) -> Result<Claims, ApiError> {
        self.jwt
            .verify(token)
            .map_err(|_| ApiError::Unauthorized("invalid or expired token".into()))
    }

    /// Starts a login with `provider`: a fresh signed state and the provider's authorization
    /// URL. `None` if the provider is unknown or not configured.
    pub fn oauth_start(&self, provider: &str) -> Option<OAuthStart> {
        let provider = self.oauth.provider(provider)?;
        let name = provider.name();
        let issued = self
            .oauth
            .signer()
            .issue(name, chrono::Utc::now().timestamp());
        Some(OAuthStart {
            provider: name,
            location: provider.authorization_url(&issued.state, &self.oauth.callback_url(name)),
            cookie_value: issued.cookie_value,
        })
    }

    /// Finishes a login with `provider` from what its redirect brought back: the state must
    /// be the one this browser was given (signed by us and fresh), then the provider's
    /// verdict, then code → profile → account → session.
    pub async fn oauth_finish(&self, provider: &str, returned: Callback<'_>) -> OAuthFinish {
        let Some(provider) = self.oauth.provider(provider) else {
            // Checked by the caller; an internal error if the registry changed underneath.
            return Err((CallbackError::Internal, "unknown"));
        };
        let name = provider.name();
        let fail = |e: CallbackError| (e, name);

        // 1. The state must be the one this browser was given, signed by us and fresh.
        let state = returned
            .state
            .filter(|s| !s.is_empty() && s.len() <= MAX_STATE_LEN)
            .ok_or(fail(CallbackError::InvalidState))?;
        let cookie = returned.cookie.ok_or(fail(CallbackError::InvalidState))?;
        let now = chrono::Utc::now().timestamp();
        if !self.oauth.signer().verify(name, cookie, state, now) {
            tracing::info!(provider = name, "OAuth callback with an invalid state");
            return Err(fail(CallbackError::InvalidState));
        }

        // 2. The provider's verdict.
        if let Some(error) = returned.error {
            if error == "access_denied" {
                return Err(fail(CallbackError::AccessDenied));
            }
            let shown: String = error.chars().take(MAX_ERROR_LEN).collect();
            tracing::warn!(provider = name, error = %shown, "OAuth provider returned an error");
            return Err(fail(CallbackError::ExchangeFailed));
        }
        let code = returned
            .code
            .filter(|c| !c.is_empty())
            .ok_or(fail(CallbackError::MissingCode))?;
        if code.len() > MAX_CODE_LEN {
            return Err(fail(CallbackError::ExchangeFailed));
        }

        // 3. Code → profile → account → session.
        let profile = provider
            .exchange(code, &self.oauth.callback_url(name))
            .await
            .map_err(|e| {
                tracing::warn!(provider = name, error = %e, "OAuth code exchange failed");
                fail(CallbackError::ExchangeFailed)
            })?;
        if self.cfg.signup == SignupMode::Closed {
            // Only identities already linked to an account sign in.
            let known = self
                .store
                .user_by_oauth(name, &profile.provider_user_id)
                .await
                .map_err(|e| {
                    tracing::error!(provider = name, error = %e, "OAuth sign-in: storage error");
                    fail(CallbackError::Internal)
                })?;
            if known.is_none() {
                return Err(fail(CallbackError::SignupClosed));
            }
        }
        let user = sign_in(self.store.as_ref(), name, &profile)
            .await
            .map_err(fail)?;
        let auth = self
            .auth_response(&user.id, &user.team_id, &user.email)
            .map_err(|e| {
                tracing::error!(provider = name, error = %e, "OAuth sign-in: token signing failed");
                fail(CallbackError::Internal)
            })?;
        tracing::info!(provider = name, user_id = %user.id, "OAuth sign-in");
        Ok((auth, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_rules() {
        assert_eq!(
            normalize_email(" Bob@Example.COM ").unwrap(),
            "bob@example.com"
        );
        for bad in [
            "",
            "bob",
            "bob@",
            "@x.com",
            "bob@x",
            "a@b@c.com",
            "a b@c.com",
            "a@b..com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?} accepted");
        }
    }
}
