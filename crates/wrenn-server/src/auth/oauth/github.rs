//! [`GithubProvider`], GitHub login: the authorize URL (`{oauth}/login/oauth/authorize`,
//! scope `user:email`), the code exchange (`POST {oauth}/login/oauth/access_token`, JSON
//! answer), the profile (`GET {api}/user`) and, when the profile shows no email, the verified
//! primary address from `GET {api}/user/emails`. The access token is used for these two
//! calls only; it is never stored or logged. Nothing about accounts or cookies here.

use super::config::{base_url, GithubConfig, OAuthConfigError};
use super::{read_json, Profile, Provider, ProviderError};
use async_trait::async_trait;
use reqwest::header::{ACCEPT, USER_AGENT};
use reqwest::Url;
use serde::Deserialize;

/// Largest answer read from GitHub's token endpoint.
const MAX_TOKEN_BODY: usize = 64 * 1024;
/// Largest answer read from the user and emails endpoints.
const MAX_API_BODY: usize = 1024 * 1024;
const UA: &str = concat!("wrenn/", env!("CARGO_PKG_VERSION"));

/// Login with a GitHub OAuth app.
pub struct GithubProvider {
    client_id: String,
    client_secret: String,
    authorize: Url,
    token: Url,
    user: Url,
    emails: Url,
    http: reqwest::Client,
}

impl GithubProvider {
    /// A provider for the configured app, making its requests with `http`.
    pub fn new(cfg: &GithubConfig, http: reqwest::Client) -> Result<Self, OAuthConfigError> {
        let oauth = base_url("GITHUB_OAUTH_BASE_URL", &cfg.oauth_base_url)?;
        let api = base_url("GITHUB_API_BASE_URL", &cfg.api_base_url)?;
        let url = |setting, s: String| {
            Url::parse(&s).map_err(|_| OAuthConfigError::InvalidUrl { setting, value: s })
        };
        Ok(Self {
            client_id: cfg.client_id.clone(),
            client_secret: cfg.client_secret.clone(),
            authorize: url(
                "GITHUB_OAUTH_BASE_URL",
                format!("{oauth}/login/oauth/authorize"),
            )?,
            token: url(
                "GITHUB_OAUTH_BASE_URL",
                format!("{oauth}/login/oauth/access_token"),
            )?,
            user: url("GITHUB_API_BASE_URL", format!("{api}/user"))?,
            emails: url("GITHUB_API_BASE_URL", format!("{api}/user/emails"))?,
            http,
        })
    }

    async fn access_token(&self, code: &str, callback_url: &str) -> Result<String, ProviderError> {
        #[derive(Deserialize)]
        struct TokenAnswer {
            access_token: Option<String>,
            error: Option<String>,
        }
        let resp = self
            .http
            .post(self.token.clone())
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, UA)
            .form(&[
                ("client_id", self.client_id.as_str()),
                ("client_secret", self.client_secret.as_str()),
                ("code", code),
                ("redirect_uri", callback_url),
            ])
            .send()
            .await
            .map_err(|e| ProviderError::Http(format!("token exchange: {}", e.without_url())))?;
        let t: TokenAnswer = read_json(resp, "token exchange", MAX_TOKEN_BODY).await?;
        match (t.access_token, t.error) {
            (_, Some(error)) => Err(ProviderError::Rejected(
                error.chars().take(100).collect::<String>(),
            )),
            (Some(token), None) if !token.is_empty() => Ok(token),
            _ => Err(ProviderError::Decode(
                "token exchange: answer has no access_token".into(),
            )),
        }
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        url: &Url,
        what: &'static str,
        token: &str,
    ) -> Result<T, ProviderError> {
        let resp = self
            .http
            .get(url.clone())
            .bearer_auth(token)
            .header(ACCEPT, "application/vnd.github+json")
            .header(USER_AGENT, UA)
            .send()
            .await
            .map_err(|e| ProviderError::Http(format!("{what}: {}", e.without_url())))?;
        read_json(resp, what, MAX_API_BODY).await
    }
}

#[derive(Deserialize)]
struct GithubUser {
    id: u64,
    login: Option<String>,
    email: Option<String>,
}

#[derive(Deserialize)]
struct GithubEmail {
    email: String,
    primary: bool,
    verified: bool,
}

#[async_trait]
impl Provider for GithubProvider {
    fn name(&self) -> &'static str {
        "github"
    }

    fn authorization_url(&self, state: &str, callback_url: &str) -> String {
        let mut u = self.authorize.clone();
        u.query_pairs_mut()
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", callback_url)
            .append_pair("scope", "user:email")
            .append_pair("state", state);
        u.into()
    }

    async fn exchange(&self, code: &str, callback_url: &str) -> Result<Profile, ProviderError> {
        let token = self.access_token(code, callback_url).await?;
        let user: GithubUser = self.get(&self.user, "user endpoint", &token).await?;
        // GitHub only lets a user make a verified address public, so a profile email is
        // verified; without one, the verified primary address is asked for.
        let email = match user.email.filter(|e| !e.trim().is_empty()) {
            Some(e) => e,
            None => {
                let emails: Vec<GithubEmail> =
                    self.get(&self.emails, "emails endpoint", &token).await?;
                emails
                    .into_iter()
                    .find(|e| e.primary && e.verified)
                    .map(|e| e.email)
                    .ok_or(ProviderError::NoVerifiedEmail)?
            }
        };
        Profile::new(user.id.to_string(), &email, user.login)
    }
}
