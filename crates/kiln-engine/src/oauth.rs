//! Token introspection (RFC 7662, `POST /oauth2/introspect`) and revocation (RFC 7009,
//! `POST /oauth2/revoke`) over the tokens of [`crate::accounts`].
//!
//! Both take an access token (a signed JWT naming its Login) or a refresh token (opaque, found
//! by its SHA-256 through the `Login.refreshSecret` unique key); `token_type_hint` only decides
//! which kind is tried first. A token is active while its signature and expiry hold (access
//! tokens), its Login is granted, not revoked and past MFA, and its membership is active — the
//! same checks as [`Engine::authenticate`], which every API request goes through.
//!
//! Who may ask: introspection needs a confidential client (its secret, by
//! `client_secret_basic` or `client_secret_post`) or a bearer access token (as Medplum allows,
//! e.g. a resource server holding a token of its own). A caller only learns about tokens of its
//! own project (a super admin: of any project); any other token is `{"active": false}`.
//! Revocation takes a confidential client or a public one (a client without a secret, named by
//! `client_id`), which may only revoke tokens issued to it (`Login.client`); anything else is
//! answered like an unknown token, with nothing revoked.

use kiln_auth::hash_secret;
use kiln_store::ProjectId;
use serde_json::{Value, json};

use crate::accounts::{Authenticated, LOGIN_REFRESH, OAuthError, parse_body};
use crate::{Engine, EngineError};

/// A client application that authenticated at an OAuth endpoint.
#[derive(Debug, Clone)]
pub struct OAuthClient {
    /// The ClientApplication's id.
    pub id: String,
    /// The project the client belongs to.
    pub project: ProjectId,
}

/// Who asks at `/oauth2/introspect`.
#[derive(Debug, Clone)]
pub enum Introspector {
    /// A confidential client (its secret checked).
    Client(OAuthClient),
    /// The holder of a live bearer access token.
    Bearer(Authenticated),
}

impl Introspector {
    /// Whether this caller may learn about a token of `project`.
    fn sees(&self, project: &ProjectId) -> bool {
        match self {
            Introspector::Client(client) => &client.project == project,
            Introspector::Bearer(who) => who.super_admin || &who.project == project,
        }
    }
}

/// Which kind of token a `token_type_hint` names first.
fn refresh_first(hint: Option<&str>) -> bool {
    hint == Some("refresh_token")
}

/// `{"active": false}`: what every unknown, expired, revoked or hidden token gets.
pub fn inactive() -> Value {
    json!({ "active": false })
}

/// The 401 of an OAuth endpoint whose caller did not authenticate (RFC 6749 §5.2).
pub fn invalid_client(description: &str) -> OAuthError {
    OAuthError { error: "invalid_client", description: description.to_owned(), status: 401 }
}

/// Errors that mean "no such live token" rather than a failure of ours.
fn is_dead(e: &EngineError) -> bool {
    matches!(
        e,
        EngineError::Unauthorized(_)
            | EngineError::NotFound(_)
            | EngineError::Gone(_)
            | EngineError::Forbidden(_)
    )
}

/// What introspection tells about a live token.
struct Live {
    project: ProjectId,
    /// The acting profile, e.g. `Patient/123`.
    profile: String,
    scope: String,
    client_id: Option<String>,
    sub: String,
    /// `(iat, exp)` of an access token.
    times: Option<(i64, i64)>,
    /// When a SMART refresh token expires.
    expires: Option<i64>,
    /// The SMART launch context (`None` without one).
    launch: Option<crate::smart::LaunchContext>,
}

impl Engine {
    /// Authenticates a client at an OAuth endpoint: by a `private_key_jwt` assertion, by its
    /// `secret` (or `retiringSecret`), or — a public client, one with neither a secret nor
    /// keys — by its id alone. Any failure is a 401 `invalid_client`.
    pub async fn oauth_client(
        &self,
        credentials: &crate::accounts::TokenClient,
    ) -> Result<OAuthClient, OAuthError> {
        let invalid = || invalid_client("Invalid client credentials");
        if let Some((assertion_type, assertion)) = &credentials.assertion {
            let (project, _membership, client) = self
                .verify_client_assertion(
                    credentials.client_id.as_deref(),
                    assertion_type,
                    assertion,
                )
                .await?;
            let id = client["id"].as_str().unwrap_or_default().to_owned();
            return Ok(OAuthClient { id, project });
        }
        let Some(client_id) = credentials.client_id.as_deref() else {
            return Err(invalid_client("Missing client credentials"));
        };
        let secret = credentials.secret.as_deref();
        let found = match secret {
            Some(secret) => self.verify_client(client_id, secret).await,
            None => self.find_client(client_id).await,
        };
        let (project, _membership, client) = match found {
            Ok(found) => found,
            Err(EngineError::Unauthorized(_)) => return Err(invalid()),
            Err(e) => return Err(e.into()),
        };
        if secret.is_none() && crate::accounts::is_confidential(&client) {
            // A confidential client must prove itself.
            return Err(invalid());
        }
        Ok(OAuthClient { id: client_id.to_owned(), project })
    }

    /// `POST /oauth2/introspect` (RFC 7662): the token's claims with `active: true`, or
    /// `{"active": false}` for anything not live or not the caller's to see.
    pub async fn introspect(
        &self,
        caller: &Introspector,
        token: &str,
        hint: Option<&str>,
    ) -> Result<Value, OAuthError> {
        let live = if refresh_first(hint) {
            match self.live_refresh_token(token).await? {
                Some(live) => Some(live),
                None => self.live_access_token(token).await?,
            }
        } else {
            match self.live_access_token(token).await? {
                Some(live) => Some(live),
                None => self.live_refresh_token(token).await?,
            }
        };
        let Some(live) = live.filter(|live| caller.sees(&live.project)) else {
            return Ok(inactive());
        };
        let mut out = json!({
            "active": true,
            "scope": live.scope,
            "sub": live.sub,
            "iss": self.auth().issuer(),
        });
        if let Some(client_id) = live.client_id {
            out["client_id"] = json!(client_id);
        }
        if let Some((iat, exp)) = live.times {
            out["iat"] = json!(iat);
            out["exp"] = json!(exp);
            out["token_type"] = json!("Bearer");
        }
        if let Some(exp) = live.expires {
            out["exp"] = json!(exp);
        }
        // The launch patient, else a patient's own record.
        let launch = live.launch.unwrap_or_default();
        if let Some(patient) =
            launch.patient.as_deref().or_else(|| live.profile.strip_prefix("Patient/"))
        {
            out["patient"] = json!(patient);
        }
        if let Some(encounter) = launch.encounter {
            out["encounter"] = json!(encounter);
        }
        let ty = live.profile.split('/').next().unwrap_or_default();
        if matches!(ty, "Patient" | "Practitioner" | "RelatedPerson") {
            out["fhirUser"] = json!(self.base_url().join(&format!("fhir/R4/{}", live.profile)));
        }
        Ok(out)
    }

    /// A live access token: signature, expiry, and the checks of every API request.
    async fn live_access_token(&self, token: &str) -> Result<Option<Live>, OAuthError> {
        let Some(claims) = self.auth().verify(token) else { return Ok(None) };
        let (who, login) = match self.authenticate_with_login(token).await {
            Ok(found) => found,
            Err(e) if is_dead(&e) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let launch = self.login_launch(&login).await?;
        Ok(Some(Live {
            project: who.project,
            profile: who.profile,
            scope: who.scope,
            client_id: who.client_id,
            sub: claims.sub,
            times: Some((claims.iat, claims.exp)),
            expires: None,
            launch,
        }))
    }

    /// A live refresh token: its Login granted, unrevoked, past MFA, its membership active.
    async fn live_refresh_token(&self, token: &str) -> Result<Option<Live>, OAuthError> {
        let Some(login_id) = self.login_of_refresh_token(token).await? else { return Ok(None) };
        let login = match self.live_login(&login_id).await {
            Ok(login) => login,
            Err(e) if is_dead(&e) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if login["granted"] != json!(true) || login["mfaVerified"] == json!(false) {
            return Ok(None);
        }
        // A SMART grant's refresh token expires, an online one with its session.
        let expires = crate::accounts::instant_secs(&login["expiresAt"]);
        if crate::smart::is_smart_login(&login)
            && (expires.is_some_and(|t| t < chrono::Utc::now().timestamp())
                || !self.session_alive_for(&login).await)
        {
            return Ok(None);
        }
        let project =
            login["project"]["reference"].as_str().and_then(|r| r.strip_prefix("Project/"));
        let membership = login["membership"]["reference"]
            .as_str()
            .and_then(|r| r.strip_prefix("ProjectMembership/"));
        let (Some(project), Some(membership_id)) = (project, membership) else {
            return Ok(None);
        };
        let project = ProjectId::new(project.to_owned());
        let membership = match self.store().read(&project, "ProjectMembership", membership_id).await
        {
            Ok(stored) if !stored.deleted => parse_body(&stored)?,
            Ok(_) | Err(kiln_store::StoreError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(EngineError::from(e).into()),
        };
        if membership["active"] == json!(false) {
            return Ok(None);
        }
        let Some(profile) = membership["profile"]["reference"].as_str() else { return Ok(None) };
        let sub = login["user"]["reference"]
            .as_str()
            .and_then(|r| r.split_once('/'))
            .map(|(_, id)| id.to_owned())
            .unwrap_or_default();
        Ok(Some(Live {
            project,
            profile: profile.to_owned(),
            scope: login["scope"].as_str().unwrap_or("openid").to_owned(),
            client_id: login["client"]["reference"]
                .as_str()
                .and_then(|r| r.strip_prefix("ClientApplication/"))
                .map(str::to_owned),
            sub,
            times: None,
            expires: expires.filter(|_| crate::smart::is_smart_login(&login)),
            launch: self.login_launch(&login).await?,
        }))
    }

    /// The Login a refresh token belongs to (its current one), found by the token's hash.
    async fn login_of_refresh_token(&self, token: &str) -> Result<Option<String>, OAuthError> {
        if token.is_empty() {
            return Ok(None);
        }
        let found = self
            .store()
            .lookup_unique(&ProjectId::system(), LOGIN_REFRESH, &hash_secret(token))
            .await
            .map_err(EngineError::from)?;
        Ok(found.map(|(_, id)| id))
    }

    /// `POST /oauth2/revoke` (RFC 7009): revokes the Login behind an access or refresh token
    /// issued to `client`, so every token of it stops working at once. Unknown, expired or
    /// already revoked tokens, and tokens of other clients, change nothing and are no error.
    pub async fn revoke_token(
        &self,
        client: &OAuthClient,
        token: &str,
        hint: Option<&str>,
    ) -> Result<(), OAuthError> {
        let access_login = || self.auth().verify(token).map(|claims| claims.login_id);
        let login_id = if refresh_first(hint) {
            match self.login_of_refresh_token(token).await? {
                Some(id) => Some(id),
                None => access_login(),
            }
        } else {
            match access_login() {
                Some(id) => Some(id),
                None => self.login_of_refresh_token(token).await?,
            }
        };
        let Some(login_id) = login_id else { return Ok(()) };
        let login = match self.live_login(&login_id).await {
            Ok(login) => login,
            Err(e) if is_dead(&e) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let issued_to = login["client"]["reference"].as_str();
        if issued_to != Some(format!("ClientApplication/{}", client.id).as_str()) {
            return Ok(());
        }
        match self.end_login(&login_id).await {
            Ok(()) => Ok(()),
            Err(e) if is_dead(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
