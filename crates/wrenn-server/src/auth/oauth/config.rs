//! OAuth settings: which providers are configured (client id, secret, base URLs), where the
//! browser lands after a login, reading them from the environment, and their validation.
//! It holds secrets but never prints them ([`GithubConfig`]'s `Debug` hides the client
//! secret). It knows nothing of HTTP requests or storage.

use reqwest::Url;

/// GitHub's OAuth host (authorize page and token exchange).
pub const GITHUB_OAUTH_BASE_URL: &str = "https://github.com";
/// GitHub's REST API host (user and emails endpoints).
pub const GITHUB_API_BASE_URL: &str = "https://api.github.com";

/// The OAuth part of the control plane's configuration. No provider configured (the
/// default) means every OAuth route answers 404 `oauth_provider_not_configured`.
#[derive(Clone, Debug, Default)]
pub struct OAuthConfig {
    /// GitHub login, when a GitHub OAuth app is configured.
    pub github: Option<GithubConfig>,
    /// Base URL of the frontend: the browser is sent to
    /// `{redirect_url}/auth/{provider}/callback?…` after the callback. `None` means the
    /// control plane's public URL.
    pub redirect_url: Option<String>,
}

/// A GitHub OAuth app.
#[derive(Clone)]
pub struct GithubConfig {
    pub client_id: String,
    pub client_secret: String,
    /// Host of `/login/oauth/authorize` and `/login/oauth/access_token`
    /// ([`GITHUB_OAUTH_BASE_URL`] by default; tests point it at a local stand-in).
    pub oauth_base_url: String,
    /// Host of `/user` and `/user/emails` ([`GITHUB_API_BASE_URL`] by default).
    pub api_base_url: String,
}

impl GithubConfig {
    /// A GitHub app on github.com.
    pub fn new(client_id: impl Into<String>, client_secret: impl Into<String>) -> Self {
        Self {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            oauth_base_url: GITHUB_OAUTH_BASE_URL.into(),
            api_base_url: GITHUB_API_BASE_URL.into(),
        }
    }
}

impl std::fmt::Debug for GithubConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubConfig")
            .field("client_id", &self.client_id)
            .field("client_secret", &"<hidden>")
            .field("oauth_base_url", &self.oauth_base_url)
            .field("api_base_url", &self.api_base_url)
            .finish()
    }
}

/// An OAuth configuration the control plane refuses to start with.
#[derive(Debug, thiserror::Error)]
pub enum OAuthConfigError {
    /// A provider is configured but the control plane has no public URL to build the
    /// provider's callback URL from.
    #[error(
        "OAuth provider {provider} is configured but the public URL (CP_PUBLIC_URL) is not set; \
         it is needed to build the callback URL {{CP_PUBLIC_URL}}/v1/auth/oauth/{provider}/callback"
    )]
    MissingPublicUrl { provider: &'static str },
    /// Only one of a provider's client id and client secret is set.
    #[error(
        "OAuth provider {provider}: {missing} is not set (both client id and secret are needed)"
    )]
    Incomplete {
        provider: &'static str,
        missing: &'static str,
    },
    /// A URL setting is not an absolute http(s) URL without query or fragment.
    #[error("{setting} must be an absolute http:// or https:// URL without query or fragment, got {value:?}")]
    InvalidUrl {
        setting: &'static str,
        value: String,
    },
    /// The HTTP client for talking to providers could not be created.
    #[error("cannot create the OAuth HTTP client: {0}")]
    HttpClient(String),
}

impl OAuthConfig {
    /// Reads `GITHUB_CLIENT_ID`, `GITHUB_CLIENT_SECRET`, `GITHUB_OAUTH_BASE_URL`,
    /// `GITHUB_API_BASE_URL` and `OAUTH_REDIRECT_URL` from the process environment. Unset
    /// and empty variables are the same. GitHub is configured when both id and secret are
    /// set; one without the other is an error. `CP_PUBLIC_URL` belongs to
    /// [`crate::ServerConfig::public_url`]; [`crate::ServerConfig::apply_oauth_env`] reads both.
    pub fn from_env() -> Result<Self, OAuthConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// [`Self::from_env`] over any variable lookup.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, OAuthConfigError> {
        let var = |k: &str| {
            get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let github = match (var("GITHUB_CLIENT_ID"), var("GITHUB_CLIENT_SECRET")) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(OAuthConfigError::Incomplete {
                    provider: "github",
                    missing: "GITHUB_CLIENT_SECRET",
                })
            }
            (None, Some(_)) => {
                return Err(OAuthConfigError::Incomplete {
                    provider: "github",
                    missing: "GITHUB_CLIENT_ID",
                })
            }
            (Some(id), Some(secret)) => {
                let mut g = GithubConfig::new(id, secret);
                if let Some(u) = var("GITHUB_OAUTH_BASE_URL") {
                    g.oauth_base_url = u;
                }
                if let Some(u) = var("GITHUB_API_BASE_URL") {
                    g.api_base_url = u;
                }
                Some(g)
            }
        };
        let cfg = Self {
            github,
            redirect_url: var("OAUTH_REDIRECT_URL"),
        };
        cfg.check_urls()?;
        Ok(cfg)
    }

    /// True when at least one provider is configured.
    pub fn any_provider(&self) -> bool {
        self.github.is_some()
    }

    /// Checks the settings against the control plane's public URL: a configured provider
    /// needs it, and every URL must be an absolute http(s) URL.
    pub fn validate(&self, public_url: Option<&str>) -> Result<(), OAuthConfigError> {
        self.check_urls()?;
        if let Some(p) = public_url.filter(|p| !p.trim().is_empty()) {
            base_url("CP_PUBLIC_URL", p)?;
        } else if self.github.is_some() {
            return Err(OAuthConfigError::MissingPublicUrl { provider: "github" });
        }
        if let Some(g) = &self.github {
            if g.client_id.trim().is_empty() {
                return Err(OAuthConfigError::Incomplete {
                    provider: "github",
                    missing: "GITHUB_CLIENT_ID",
                });
            }
            if g.client_secret.is_empty() {
                return Err(OAuthConfigError::Incomplete {
                    provider: "github",
                    missing: "GITHUB_CLIENT_SECRET",
                });
            }
        }
        Ok(())
    }

    fn check_urls(&self) -> Result<(), OAuthConfigError> {
        if let Some(r) = &self.redirect_url {
            base_url("OAUTH_REDIRECT_URL", r)?;
        }
        if let Some(g) = &self.github {
            base_url("GITHUB_OAUTH_BASE_URL", &g.oauth_base_url)?;
            base_url("GITHUB_API_BASE_URL", &g.api_base_url)?;
        }
        Ok(())
    }
}

/// Parses a base URL setting: absolute http(s), no query or fragment. The returned string
/// has no trailing slash, so paths can be appended with `format!("{base}/path")`.
pub(crate) fn base_url(setting: &'static str, value: &str) -> Result<String, OAuthConfigError> {
    let bad = || OAuthConfigError::InvalidUrl {
        setting,
        value: value.to_string(),
    };
    let trimmed = value.trim().trim_end_matches('/');
    let url = Url::parse(trimmed).map_err(|_| bad())?;
    let ok = matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some_and(|h| !h.is_empty())
        && url.query().is_none()
        && url.fragment().is_none()
        && url.username().is_empty()
        && url.password().is_none();
    if ok {
        Ok(trimmed.to_string())
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn nothing_set_means_no_provider() {
        let c = OAuthConfig::from_lookup(lookup(&[])).unwrap();
        assert!(c.github.is_none() && c.redirect_url.is_none());
        assert!(!c.any_provider());
        c.validate(None).unwrap();
    }

    #[test]
    fn github_from_env_with_defaults_and_overrides() {
        let c = OAuthConfig::from_lookup(lookup(&[
            ("GITHUB_CLIENT_ID", "cid"),
            ("GITHUB_CLIENT_SECRET", "shh"),
            ("OAUTH_REDIRECT_URL", "https://app.example.com/"),
        ]))
        .unwrap();
        let g = c.github.as_ref().unwrap();
        assert_eq!(g.oauth_base_url, GITHUB_OAUTH_BASE_URL);
        assert_eq!(g.api_base_url, GITHUB_API_BASE_URL);
        assert!(!format!("{c:?}").contains("shh"), "secret printed: {c:?}");

        let c = OAuthConfig::from_lookup(lookup(&[
            ("GITHUB_CLIENT_ID", "cid"),
            ("GITHUB_CLIENT_SECRET", "shh"),
            ("GITHUB_OAUTH_BASE_URL", "http://127.0.0.1:9000"),
            ("GITHUB_API_BASE_URL", "http://127.0.0.1:9001/api"),
        ]))
        .unwrap();
        let g = c.github.unwrap();
        assert_eq!(g.oauth_base_url, "http://127.0.0.1:9000");
        assert_eq!(g.api_base_url, "http://127.0.0.1:9001/api");
    }

    #[test]
    fn half_configured_github_is_refused() {
        let e = OAuthConfig::from_lookup(lookup(&[("GITHUB_CLIENT_ID", "cid")])).unwrap_err();
        assert!(e.to_string().contains("GITHUB_CLIENT_SECRET"), "{e}");
        let e = OAuthConfig::from_lookup(lookup(&[("GITHUB_CLIENT_SECRET", "s"), ("X", "")]))
            .unwrap_err();
        assert!(e.to_string().contains("GITHUB_CLIENT_ID"), "{e}");
    }

    #[test]
    fn provider_needs_public_url() {
        let c = OAuthConfig {
            github: Some(GithubConfig::new("cid", "secret")),
            redirect_url: None,
        };
        let e = c.validate(None).unwrap_err();
        assert!(matches!(e, OAuthConfigError::MissingPublicUrl { .. }));
        assert!(e.to_string().contains("CP_PUBLIC_URL"), "{e}");
        assert!(c.validate(Some("  ")).is_err());
        c.validate(Some("https://cp.example.com")).unwrap();
        let e = c.validate(Some("cp.example.com")).unwrap_err();
        assert!(matches!(e, OAuthConfigError::InvalidUrl { .. }), "{e}");
    }

    #[test]
    fn bad_urls_are_refused() {
        for bad in [
            "ftp://x.y",
            "not a url",
            "https://x.y/?a=b",
            "https://x.y/#f",
            "https://u:p@x.y",
        ] {
            assert!(base_url("S", bad).is_err(), "{bad}");
        }
        assert_eq!(
            base_url("S", "https://x.y/app/").unwrap(),
            "https://x.y/app"
        );
        let e = OAuthConfig::from_lookup(lookup(&[("OAUTH_REDIRECT_URL", "javascript:alert(1)")]))
            .unwrap_err();
        assert!(e.to_string().contains("OAUTH_REDIRECT_URL"), "{e}");
    }
}
