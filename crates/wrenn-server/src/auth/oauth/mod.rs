//! OAuth 2.0 login: the [`Provider`] trait every identity provider implements, the
//! [`Registry`] of configured providers, the [`OAuth`] service the HTTP handlers use (signed
//! CSRF state, callback and frontend URLs) and [`sign_in`], the race-safe account upsert.
//! GitHub ([`github::GithubProvider`]) is the first provider; adding another means one new
//! type implementing [`Provider`] and one registration line in [`Registry::from_config`].
//!
//! This module talks to providers over HTTP and to the [`Store`]; it does not parse browser
//! requests or build responses (that is `api::oauth`; the login steps themselves are
//! `App::oauth_start` and `App::oauth_finish`), and never logs tokens, codes or secrets.

pub mod config;
pub mod github;
pub mod state;

use crate::config::limits;
use crate::store::{self, NewAccount, Store, StoreError, UserRecord};
use async_trait::async_trait;
use reqwest::Url;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub use config::{GithubConfig, OAuthConfig, OAuthConfigError};
pub use github::GithubProvider;
pub use state::StateSigner;

/// Time limit of each request to a provider.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(15);
/// How often a lost registration race is retried as a login.
const SIGN_IN_ATTEMPTS: usize = 3;

/// What a provider says about the user after a successful code exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The provider's stable id of the user (never the email, which can change).
    pub provider_user_id: String,
    /// A verified address, trimmed and lowercase.
    pub email: String,
    /// The provider's user name, for logs.
    pub login: Option<String>,
}

impl Profile {
    /// A profile with a checked, normalised email (non-empty local part and domain, at most
    /// [`limits::MAX_EMAIL`] bytes).
    pub fn new(
        provider_user_id: String,
        email: &str,
        login: Option<String>,
    ) -> Result<Self, ProviderError> {
        let email = email.trim().to_lowercase();
        let ok = email.len() <= limits::MAX_EMAIL
            && email
                .split_once('@')
                .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty() && !d.contains('@'))
            && !email.chars().any(|c| c.is_whitespace() || c.is_control());
        if !ok {
            return Err(ProviderError::Decode(
                "profile email is not an address".into(),
            ));
        }
        if provider_user_id.is_empty() || provider_user_id.len() > 255 {
            return Err(ProviderError::Decode(
                "profile has no usable user id".into(),
            ));
        }
        Ok(Self {
            provider_user_id,
            email,
            login,
        })
    }
}

/// Why a code could not be turned into a profile. All of these reach the browser as
/// `exchange_failed`; the detail goes to the log (it never contains a token or secret).
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The provider could not be reached or did not answer in time.
    #[error("provider unreachable: {0}")]
    Http(String),
    /// The provider answered with an HTTP error status.
    #[error("{what} answered HTTP {status}")]
    Status { what: &'static str, status: u16 },
    /// The provider refused the code (its `error` field, e.g. `bad_verification_code`).
    #[error("provider refused the code: {0}")]
    Rejected(String),
    /// The answer was not what the provider documents (or was too large).
    #[error("unexpected provider answer: {0}")]
    Decode(String),
    /// The account has no verified email address the control plane could use.
    #[error("the provider account has no verified primary email")]
    NoVerifiedEmail,
}

/// An identity provider.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// The name in the URL (`/v1/auth/oauth/{name}`) and in stored identities.
    fn name(&self) -> &'static str;
    /// The provider's consent page for this login attempt, returning to `callback_url`.
    fn authorization_url(&self, state: &str, callback_url: &str) -> String;
    /// Exchanges an authorization code for the user's profile with a verified email.
    async fn exchange(&self, code: &str, callback_url: &str) -> Result<Profile, ProviderError>;
}

/// Reads a JSON answer of at most `limit` bytes; an error status is [`ProviderError::Status`].
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    mut resp: reqwest::Response,
    what: &'static str,
    limit: usize,
) -> Result<T, ProviderError> {
    let status = resp.status();
    if !status.is_success() {
        return Err(ProviderError::Status {
            what,
            status: status.as_u16(),
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| ProviderError::Http(format!("{what}: {}", e.without_url())))?
    {
        if body.len() + chunk.len() > limit {
            return Err(ProviderError::Decode(format!(
                "{what}: answer larger than {limit} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| ProviderError::Decode(format!("{what}: {e}")))
}

/// The configured providers, by name.
#[derive(Default)]
pub struct Registry {
    providers: BTreeMap<&'static str, Arc<dyn Provider>>,
}

impl Registry {
    /// One provider per configured app. A new provider adds its line here.
    pub fn from_config(
        cfg: &OAuthConfig,
        http: &reqwest::Client,
    ) -> Result<Self, OAuthConfigError> {
        let mut r = Registry::default();
        if let Some(g) = &cfg.github {
            r.register(GithubProvider::new(g, http.clone())?);
        }
        Ok(r)
    }

    /// Adds (or replaces) a provider under its name.
    pub fn register(&mut self, provider: impl Provider) {
        self.providers.insert(provider.name(), Arc::new(provider));
    }

    /// The provider with this name, if configured.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Provider>> {
        self.providers.get(name).cloned()
    }

    /// Names of the configured providers.
    pub fn names(&self) -> Vec<&'static str> {
        self.providers.keys().copied().collect()
    }
}

/// How a callback ended badly; [`CallbackError::code`] is the `error` parameter of the
/// redirect to the frontend (the codes of the spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackError {
    /// The user (or the provider) declined the authorization.
    AccessDenied,
    /// The state is missing, does not match the cookie, or the cookie is forged or expired.
    InvalidState,
    /// The provider's redirect carried neither a code nor an error.
    MissingCode,
    /// The code exchange or profile fetch failed, or no verified email was found.
    ExchangeFailed,
    /// A new identity's email already belongs to another account.
    EmailTaken,
    /// An unknown identity while signup is closed: no account is created.
    SignupClosed,
    /// Storage or token signing failed.
    Internal,
}

impl CallbackError {
    /// The stable code sent to the frontend.
    pub fn code(self) -> &'static str {
        match self {
            CallbackError::AccessDenied => "access_denied",
            CallbackError::InvalidState => "invalid_state",
            CallbackError::MissingCode => "missing_code",
            CallbackError::ExchangeFailed => "exchange_failed",
            CallbackError::EmailTaken => "email_taken",
            CallbackError::SignupClosed => "signup_closed",
            CallbackError::Internal => "internal_error",
        }
    }
}

/// The start of a login: where the browser is sent, and the state its cookie carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthStart {
    /// The provider's own name (as in its routes).
    pub provider: &'static str,
    /// The provider's authorization URL, carrying the fresh state.
    pub location: String,
    /// The signed state, the value of the state cookie.
    pub cookie_value: String,
}

/// What the provider's redirect to the callback brought back: the query's `code`, `state`
/// and `error` (all `None` when the query could not be read), and the state cookie the
/// browser sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Callback<'a> {
    pub code: Option<&'a str>,
    pub state: Option<&'a str>,
    pub error: Option<&'a str>,
    pub cookie: Option<&'a str>,
}

/// The OAuth service: providers, the state signer and the URLs the flow needs.
pub struct OAuth {
    registry: Registry,
    signer: StateSigner,
    /// Public base URL of the control plane (no trailing slash); set when any provider is.
    public_url: Option<String>,
    /// Base URL of the frontend (no trailing slash).
    redirect_url: Option<String>,
    /// Whether cookies get `Secure` (the public URL is https).
    secure_cookies: bool,
}

impl OAuth {
    /// Builds the service from a validated configuration (see [`OAuthConfig::validate`]).
    pub fn new(
        cfg: &OAuthConfig,
        public_url: Option<&str>,
        jwt_secret: &[u8],
    ) -> Result<Self, OAuthConfigError> {
        cfg.validate(public_url)?;
        let http = reqwest::Client::builder()
            .timeout(PROVIDER_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| OAuthConfigError::HttpClient(e.to_string()))?;
        let registry = Registry::from_config(cfg, &http)?;
        let public_url = public_url
            .filter(|p| !p.trim().is_empty())
            .map(|p| config::base_url("CP_PUBLIC_URL", p))
            .transpose()?;
        let redirect_url = match &cfg.redirect_url {
            Some(r) => Some(config::base_url("OAUTH_REDIRECT_URL", r)?),
            None => public_url.clone(),
        };
        Ok(Self {
            registry,
            signer: StateSigner::from_jwt_secret(jwt_secret),
            secure_cookies: public_url
                .as_deref()
                .is_some_and(|p| p.starts_with("https://")),
            public_url,
            redirect_url,
        })
    }

    /// The configured provider with this name.
    pub fn provider(&self, name: &str) -> Option<Arc<dyn Provider>> {
        // A provider is only usable with both URLs; validation guarantees them.
        self.public_url.as_ref()?;
        self.redirect_url.as_ref()?;
        self.registry.get(name)
    }

    /// `{public_url}/v1/auth/oauth/{provider}/callback`.
    pub fn callback_url(&self, provider: &str) -> String {
        format!(
            "{}/v1/auth/oauth/{provider}/callback",
            self.public_url.as_deref().unwrap_or_default()
        )
    }

    /// `Path` of the state cookie: the provider's route as the browser sees it (behind the
    /// path of the public URL, if any), which covers the callback.
    pub fn cookie_path(&self, provider: &str) -> String {
        let prefix = self
            .public_url
            .as_deref()
            .and_then(|p| Url::parse(p).ok())
            .map(|u| u.path().trim_end_matches('/').to_string())
            .unwrap_or_default();
        format!("{prefix}/v1/auth/oauth/{provider}")
    }

    /// Where the browser goes after the callback: `{redirect_url}/auth/{provider}/callback`
    /// with the given query pairs.
    pub fn frontend_url(&self, provider: &str, pairs: &[(&str, &str)]) -> String {
        let base = format!(
            "{}/auth/{provider}/callback",
            self.redirect_url.as_deref().unwrap_or_default()
        );
        match Url::parse(&base) {
            Ok(mut u) => {
                if !pairs.is_empty() {
                    u.query_pairs_mut().extend_pairs(pairs);
                }
                u.into()
            }
            Err(_) => base,
        }
    }

    /// The state signer.
    pub fn signer(&self) -> &StateSigner {
        &self.signer
    }

    /// Whether the state cookie is marked `Secure`.
    pub fn secure_cookies(&self) -> bool {
        self.secure_cookies
    }
}

/// Logs the provider identity in, or registers it: a known identity is that user; a new
/// identity whose email has no account gets a user (no password), a team and the identity
/// link in one transaction; a new identity whose email belongs to an account is refused
/// (`EmailTaken`), so nobody takes over an account by naming its email at a provider. When
/// two callbacks race to register the same identity, the loser's insert hits a unique key
/// and it retries, now finding the winner's identity and logging in as that user.
pub async fn sign_in(
    store: &dyn Store,
    provider: &str,
    profile: &Profile,
) -> Result<UserRecord, CallbackError> {
    let internal = |e: StoreError| {
        tracing::error!(provider, error = %e, "OAuth sign-in: storage error");
        CallbackError::Internal
    };
    for _ in 0..SIGN_IN_ATTEMPTS {
        if let Some(u) = store
            .user_by_oauth(provider, &profile.provider_user_id)
            .await
            .map_err(internal)?
        {
            return Ok(u);
        }
        if store
            .user_by_email(&profile.email)
            .await
            .map_err(internal)?
            .is_some()
        {
            // The account may be this identity's, registered by a concurrent callback
            // since the first look (user and identity are committed together).
            if let Some(u) = store
                .user_by_oauth(provider, &profile.provider_user_id)
                .await
                .map_err(internal)?
            {
                return Ok(u);
            }
            tracing::info!(
                provider,
                "OAuth sign-in refused: email belongs to another account"
            );
            return Err(CallbackError::EmailTaken);
        }
        let account = NewAccount {
            user_id: format!("usr-{}", uuid::Uuid::new_v4().simple()),
            team_id: format!("team-{}", uuid::Uuid::new_v4().simple()),
            team_name: format!("{}'s team", profile.email),
            email: profile.email.clone(),
            password_hash: None,
            created_at: store::now(),
        };
        match store
            .create_oauth_account(&account, provider, &profile.provider_user_id)
            .await
        {
            Ok(()) => {
                return Ok(UserRecord {
                    id: account.user_id,
                    email: account.email,
                    password_hash: None,
                    team_id: account.team_id,
                    created_at: account.created_at,
                })
            }
            // Someone registered the identity or the email meanwhile: look again.
            Err(StoreError::Duplicate) => {
                tracing::debug!(
                    provider,
                    "OAuth sign-in: lost a registration race, retrying"
                );
            }
            Err(e) => return Err(internal(e)),
        }
    }
    tracing::error!(provider, "OAuth sign-in: unique-key clashes kept repeating");
    Err(CallbackError::Internal)
}
