//! Signing in: Medplum's login with PKCE, client credentials, refresh tokens.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::Method;
use serde_json::{Value, json};
use sha2::Digest as _;

use crate::error::{Error, Result};
use crate::{Body, Call, KilnClient};

/// The tokens the client holds, and what it needs to get new ones. Its `Debug` shows which
/// are present, never their values.
#[derive(Default)]
pub(crate) struct AuthState {
    pub(crate) access: Option<String>,
    pub(crate) refresh: Option<String>,
    pub(crate) expires_at: Option<Instant>,
    /// How to ask for a new token when the current one expires: the `client_credentials`
    /// grant issues no refresh token.
    pub(crate) client: Option<ClientGrant>,
}

impl std::fmt::Debug for AuthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let grant = match &self.client {
            None => "none",
            Some(ClientGrant::Secret { .. }) => "client secret",
            Some(ClientGrant::Assertion { .. }) => "client assertion",
        };
        f.debug_struct("AuthState")
            .field("access_token", &self.access.as_ref().map(|_| "<redacted>"))
            .field("refresh_token", &self.refresh.as_ref().map(|_| "<redacted>"))
            .field("expires_at", &self.expires_at)
            .field("client_grant", &grant)
            .finish()
    }
}

/// The `client_credentials` grant a client signed in with.
#[derive(Clone)]
pub(crate) enum ClientGrant {
    /// A client id and secret (`client_secret_post`).
    Secret { id: String, secret: String },
    /// SMART Backend Services: a signed assertion (`private_key_jwt`) and the scope asked.
    Assertion { id: String, key: std::sync::Arc<crate::backend::BackendKey>, scope: String },
}

impl AuthState {
    pub(crate) fn store(&mut self, tokens: &Value) -> Result<()> {
        let access = tokens["access_token"].as_str().ok_or_else(|| Error::Auth {
            status: None,
            message: "the token response has no access_token".into(),
        })?;
        self.access = Some(access.to_owned());
        self.refresh = tokens["refresh_token"].as_str().map(str::to_owned);
        self.expires_at =
            tokens["expires_in"].as_u64().map(|secs| Instant::now() + Duration::from_secs(secs));
        Ok(())
    }
}

/// A fresh PKCE code verifier (RFC 7636 §4.1: 64 characters from two random UUIDs, 244 random
/// bits) and its `S256` challenge.
fn pkce_pair() -> (String, String) {
    let verifier = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let challenge = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

impl KilnClient {
    /// Signs in with an email and password, the way Medplum's apps do: `POST /auth/login`
    /// with a PKCE `S256` code challenge, then `POST /oauth2/token` exchanging the returned
    /// code (`grant_type=authorization_code` with the `code_verifier`).
    ///
    /// The client keeps the access token for later calls, and the refresh token if one was
    /// issued, to renew the access token shortly before it expires. Returns the token
    /// response (`access_token`, `expires_in`, `project`, `profile`…).
    ///
    /// A user with several project memberships must say which project: see
    /// [`login_to_project`](Self::login_to_project). Fails with [`Error::Auth`] when the
    /// credentials are wrong or the server asks for a further step (e.g. a second factor).
    pub async fn login(&self, email: &str, password: &str) -> Result<Value> {
        self.login_with(email, password, None).await
    }

    /// [`login`](Self::login) into the project with this id.
    pub async fn login_to_project(
        &self,
        email: &str,
        password: &str,
        project_id: &str,
    ) -> Result<Value> {
        self.login_with(email, password, Some(project_id)).await
    }

    async fn login_with(
        &self,
        email: &str,
        password: &str,
        project: Option<&str>,
    ) -> Result<Value> {
        let (verifier, challenge) = pkce_pair();
        let mut body = json!({
            "email": email,
            "password": password,
            "codeChallenge": challenge,
            "codeChallengeMethod": "S256",
            "scope": "openid",
        });
        if let Some(project) = project {
            body["projectId"] = json!(project);
        }
        let url = self.root_url("auth/login")?;
        let login = self.auth_call(Call::new(Method::POST, url).body(Body::json(&body))).await?;
        let Some(code) = login["code"].as_str() else {
            let message = if login.get("memberships").is_some() {
                "several project memberships: sign in with login_to_project".to_owned()
            } else {
                format!("the login needs a further step: {login}")
            };
            return Err(Error::Auth { status: None, message });
        };
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("code_verifier", verifier.as_str()),
        ];
        let tokens = self.token_request(&form).await?;
        let mut auth = self.auth.lock().await;
        auth.store(&tokens)?;
        auth.client = None;
        Ok(tokens)
    }

    /// Gets a token with the OAuth 2.0 `client_credentials` grant (`client_secret_post`) for
    /// a `ClientApplication`. When that token is about to expire, the client asks for a new
    /// one with the same credentials. Returns the token response.
    pub async fn client_credentials(&self, client_id: &str, client_secret: &str) -> Result<Value> {
        let tokens = self.client_token(client_id, client_secret).await?;
        let mut auth = self.auth.lock().await;
        auth.store(&tokens)?;
        auth.client = Some(ClientGrant::Secret {
            id: client_id.to_owned(),
            secret: client_secret.to_owned(),
        });
        Ok(tokens)
    }

    async fn client_token(&self, client_id: &str, client_secret: &str) -> Result<Value> {
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_secret", client_secret),
        ];
        self.token_request(&form).await
    }

    /// Renews the access token now with the refresh token (`grant_type=refresh_token`; the
    /// server rotates the refresh token, and the client keeps the new one). Fails with
    /// [`Error::Auth`] when no refresh token was issued.
    ///
    /// Calls do this by themselves when the access token expires within the refresh margin
    /// ([`with_refresh_margin`](Self::with_refresh_margin)); there is rarely a need to call it.
    pub async fn refresh(&self) -> Result<()> {
        let mut auth = self.auth.lock().await;
        let Some(refresh) = auth.refresh.clone() else {
            return Err(Error::Auth { status: None, message: "no refresh token".into() });
        };
        let tokens = self
            .token_request(&[("grant_type", "refresh_token"), ("refresh_token", &refresh)])
            .await?;
        auth.store(&tokens)
    }

    /// Restores tokens saved from an earlier session: `access` is sent until `expires_at`
    /// comes within the refresh margin, then `refresh` (when given) renews it. For a command-line
    /// tool that keeps its session in a file between runs.
    pub async fn restore_tokens(
        &self,
        access: &str,
        refresh: Option<&str>,
        expires_at: Option<std::time::SystemTime>,
    ) {
        let mut auth = self.auth.lock().await;
        auth.access = Some(access.to_owned());
        auth.refresh = refresh.map(str::to_owned);
        auth.expires_at =
            expires_at.map(|at| match at.duration_since(std::time::SystemTime::now()) {
                Ok(left) => Instant::now() + left,
                Err(_) => Instant::now(),
            });
        auth.client = None;
    }

    /// The refresh token the client holds, if one was issued (it changes when the server
    /// rotates it).
    pub async fn refresh_token(&self) -> Option<String> {
        self.auth.lock().await.refresh.clone()
    }

    /// When the current access token expires, if the server said.
    pub async fn token_expires_at(&self) -> Option<std::time::SystemTime> {
        let at = self.auth.lock().await.expires_at?;
        let now = Instant::now();
        let now_wall = std::time::SystemTime::now();
        Some(match at.checked_duration_since(now) {
            Some(left) => now_wall + left,
            None => now_wall - now.duration_since(at),
        })
    }

    /// The current access token, if the client has one.
    pub async fn access_token(&self) -> Option<String> {
        self.auth.lock().await.access.clone()
    }

    /// The access token to send now, renewed first when it expires within the margin.
    pub(crate) async fn bearer(&self) -> Result<Option<String>> {
        let mut auth = self.auth.lock().await;
        let due = auth.expires_at.is_some_and(|at| Instant::now() + self.refresh_margin >= at);
        if due {
            if let Some(refresh) = auth.refresh.clone() {
                let form = [("grant_type", "refresh_token"), ("refresh_token", refresh.as_str())];
                let tokens = self.token_request(&form).await?;
                auth.store(&tokens)?;
            } else if let Some(grant) = auth.client.clone() {
                let tokens = self.grant_token(grant).await?;
                auth.store(&tokens)?;
            }
        }
        Ok(auth.access.clone())
    }

    /// After a 401 to `rejected`: the token to try instead, or `None` when the client cannot
    /// get one. When another call has renewed the token meanwhile, that token; else a new one
    /// through the refresh token or the client grant, whatever the announced expiry said.
    pub(crate) async fn renew_after_401(&self, rejected: &str) -> Result<Option<String>> {
        let mut auth = self.auth.lock().await;
        if auth.access.as_deref() != Some(rejected) {
            return Ok(auth.access.clone());
        }
        let tokens = if let Some(refresh) = auth.refresh.clone() {
            let form = [("grant_type", "refresh_token"), ("refresh_token", refresh.as_str())];
            self.token_request(&form).await?
        } else if let Some(grant) = auth.client.clone() {
            self.grant_token(grant).await?
        } else {
            return Ok(None);
        };
        auth.store(&tokens)?;
        Ok(auth.access.clone())
    }

    /// A new token through a client grant.
    async fn grant_token(&self, grant: ClientGrant) -> Result<Value> {
        match grant {
            ClientGrant::Secret { id, secret } => self.client_token(&id, &secret).await,
            ClientGrant::Assertion { id, key, scope } => {
                self.assertion_token(&id, &key, &scope).await
            }
        }
    }

    /// `POST /oauth2/token` with `form`; the token response.
    pub(crate) async fn token_request(&self, form: &[(&str, &str)]) -> Result<Value> {
        let url = self.root_url("oauth2/token")?;
        self.auth_call(Call::new(Method::POST, url).body(Body::form(form))).await
    }

    /// An anonymous call to an auth endpoint: its JSON, or [`Error::Auth`].
    async fn auth_call(&self, call: Call) -> Result<Value> {
        match self.send(&call, None).await {
            Ok(res) => crate::json_of(res).await,
            Err(Error::Http { status, outcome, body }) => {
                let parsed: Option<Value> = serde_json::from_str(&body).ok();
                let message = parsed
                    .as_ref()
                    .and_then(|b| b["error_description"].as_str().or_else(|| b["error"].as_str()))
                    .map(str::to_owned)
                    .or_else(|| {
                        let issue = outcome.as_ref()?.get("issue")?.get(0)?;
                        let text = issue["details"]["text"].as_str();
                        text.or_else(|| issue["diagnostics"].as_str()).map(str::to_owned)
                    })
                    .unwrap_or(body);
                Err(Error::Auth { status: Some(status), message })
            }
            Err(other) => Err(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use sha2::Digest as _;

    #[test]
    fn debug_output_shows_no_secret() {
        let state = super::AuthState {
            access: Some("access-secret".into()),
            refresh: Some("refresh-secret".into()),
            expires_at: None,
            client: Some(super::ClientGrant::Secret { id: "id".into(), secret: "s3cr3t".into() }),
        };
        let text = format!("{state:?}");
        for secret in ["access-secret", "refresh-secret", "s3cr3t"] {
            assert!(!text.contains(secret), "{text}");
        }
        assert!(text.contains("client secret"), "{text}");
    }

    #[test]
    fn pkce_challenge_is_the_s256_of_the_verifier() {
        let (verifier, challenge) = super::pkce_pair();
        assert_eq!(verifier.len(), 64);
        assert!(verifier.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(challenge, URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes())));
        assert_ne!(super::pkce_pair().0, verifier, "a new verifier each time");
        // RFC 7636 Appendix B.
        let digest = sha2::Sha256::digest(b"dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
        assert_eq!(URL_SAFE_NO_PAD.encode(digest), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    }
}
