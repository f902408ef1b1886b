//! Accounts: signup (a user and their team), login with email and password, and session
//! tokens (HS256 JWTs). It must not touch API keys, sandboxes or snapshots; OAuth sign-in's
//! account upsert is `auth::oauth`.

use super::App;
use crate::auth::{self, Claims};
use crate::config::limits;
use crate::error::ApiError;
use crate::store::{self, NewAccount, StoreError};
use std::sync::OnceLock;
use wrenn_types::api;

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

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("worker failed: {e}")))
}

impl App {
    pub(crate) fn auth_response(
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

    /// Creates a user and their team; returns a session.
    pub async fn signup(&self, req: api::SignupRequest) -> Result<api::AuthResponse, ApiError> {
        let email = normalize_email(&req.email)?;
        let n = req.password.chars().count();
        if n < limits::MIN_PASSWORD {
            return Err(ApiError::BadRequest(format!(
                "password must be at least {} characters",
                limits::MIN_PASSWORD
            )));
        }
        if req.password.len() > limits::MAX_PASSWORD {
            return Err(ApiError::BadRequest(format!(
                "password must be at most {} bytes",
                limits::MAX_PASSWORD
            )));
        }
        if self.store.user_by_email(&email).await?.is_some() {
            return Err(ApiError::EmailTaken);
        }
        let password = req.password;
        let hash = blocking(move || auth::hash_password(&password))
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
        match self.store.create_account(&account).await {
            Ok(()) => {}
            Err(StoreError::Duplicate) => return Err(ApiError::EmailTaken),
            Err(e) => return Err(e.into()),
        }
        self.auth_response(&account.user_id, &account.team_id, &email)
    }

    /// Checks email and password; returns a session.
    pub async fn login(&self, req: api::LoginRequest) -> Result<api::AuthResponse, ApiError> {
        let email = req.email.trim().to_lowercase();
        if email.len() > limits::MAX_EMAIL || req.password.len() > limits::MAX_PASSWORD {
            return Err(ApiError::InvalidCredentials);
        }
        let user = self.store.user_by_email(&email).await?;
        let hash = user
            .as_ref()
            .and_then(|u| u.password_hash.clone())
            .unwrap_or_else(|| dummy_hash().to_string());
        let password = req.password;
        let ok = blocking(move || auth::verify_password(&password, &hash)).await?;
        match user {
            Some(u) if ok && u.password_hash.is_some() => {
                self.auth_response(&u.id, &u.team_id, &u.email)
            }
            _ => Err(ApiError::InvalidCredentials),
        }
    }

    /// Checks a session token.
    pub fn verify_jwt(&self, token: &str) -> Result<Claims, ApiError> {
        self.jwt
            .verify(token)
            .map_err(|_| ApiError::Unauthorized("invalid or expired token".into()))
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
