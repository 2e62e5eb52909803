//! First-party accounts and login, with Medplum's contract: `User` (server-wide, in the system
//! project), `ProjectMembership` (in its project, linking a user to a profile), `Login` (one per
//! sign-in, in the system project; revoking it invalidates every token it produced).
//!
//! Flow: [`Engine::login`] checks the password and answers with an authorization code (or the
//! memberships to pick from, then [`Engine::select_profile`]); [`Engine::exchange_code`] checks
//! PKCE and returns tokens; [`Engine::refresh`] rotates the refresh token; every API request is
//! checked by [`Engine::authenticate`]. A `ClientApplication` signs in without a user:
//! [`Engine::client_credentials`] (the OAuth grant) or [`Engine::authenticate_basic`] (HTTP
//! Basic on API calls); its membership names the client as both `user` and `profile`.
//!
//! Users: a server-wide User (no `project`) has the unique key `User.email`; a project-scoped
//! User (`project` set, e.g. an invited Patient) has `User.projectEmail` = `<project>/<email>`
//! instead, so one email may have one account per scope. Every User lives in the system project.
//!
//! Secrets at rest are hashes: passwords (Argon2id), codes and refresh tokens (SHA-256, looked
//! up through unique keys). Client secrets are the exception (Medplum's contract: an admin reads
//! them back); they are compared through their SHA-256 hashes in constant time.

use crate::cache::TtlCache;
use std::sync::Mutex;
use std::time::Duration;

use chrono::Utc;
use kiln_auth::{
    AccessClaimsInput, IdTokenInput, ScopeSet, ThrottleConfig, TokenSigner, constant_time_eq,
    hash_secret, random_token, verify_pkce,
};
use kiln_store::{Precondition, ProjectId, StoredResource, WriteMethod, format_instant};
use serde_json::{Value, json};

use crate::rest::new_id;
use crate::{Engine, EngineError, RequestContext};

/// Lifetime of an access token.
pub const ACCESS_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// How long an authorization code may wait before it is exchanged.
const CODE_TTL_SECS: i64 = 600;

pub(crate) const USER_EMAIL: &str = "User.email";
/// The unique key of a project-scoped User: `<project>/<email>`.
pub(crate) const USER_PROJECT_EMAIL: &str = "User.projectEmail";
/// The unique key of a membership in its project: its `user` reference (`User/<id>`, or
/// `ClientApplication/<id>` for a client's membership). One membership per user per project.
pub(crate) const MEMBERSHIP_USER: &str = "ProjectMembership.user";
pub(crate) const LOGIN_CODE: &str = "Login.code";
pub(crate) const LOGIN_REFRESH: &str = "Login.refreshSecret";

/// Signing key, issuer and throttling for the account flows.
pub struct AuthState {
    signer: TokenSigner,
    /// Failed sign-ins and MFA codes, registrations and reset mails, by email, user and address.
    pub(crate) throttle: ThrottleConfig,
    /// Access tokens whose signature was already verified, by SHA-256 of the token. An RSA
    /// verification costs far more than the rest of a read; a token is reused for its whole
    /// lifetime. Only signature and claims are cached: the Login is still checked on every
    /// request, so revocation stays immediate. Cleared whole when full.
    verified: std::sync::Mutex<std::collections::HashMap<String, kiln_auth::AccessClaims>>,
    /// HTTP Basic client credentials verified recently, by SHA-256 of `id` and secret: the
    /// caller they stand for. Cleared whole when a client's secret or membership changes here.
    basic: TtlCache<Authenticated>,
    /// Where invitation and password mails are appended (`mail.jsonl`), if configured.
    pub(crate) outbox: std::sync::OnceLock<std::path::PathBuf>,
    /// Delivers mail besides the log and outbox (SMTP), if configured.
    pub(crate) mail_sender: std::sync::OnceLock<std::sync::Arc<dyn crate::mail::MailSender>>,
    /// Serialises appends to the outbox file.
    pub(crate) outbox_lock: Mutex<()>,
    /// Who may register without an administrator; [`crate::Registration::Patients`] unless set.
    pub(crate) registration: std::sync::OnceLock<crate::Registration>,
}

/// How long verified Basic client credentials are trusted without a re-read.
const BASIC_TTL: Duration = Duration::from_secs(10);

/// Most verified tokens remembered at once.
const VERIFIED_CACHE: usize = 10_000;

impl AuthState {
    pub fn new(signer: TokenSigner) -> AuthState {
        AuthState {
            signer,
            throttle: ThrottleConfig::default(),
            verified: std::sync::Mutex::new(std::collections::HashMap::new()),
            basic: TtlCache::new(BASIC_TTL, VERIFIED_CACHE),
            outbox: std::sync::OnceLock::new(),
            mail_sender: std::sync::OnceLock::new(),
            outbox_lock: Mutex::new(()),
            registration: std::sync::OnceLock::new(),
        }
    }

    /// Forgets every verified Basic credential (a client's membership or policy changed).
    pub(crate) fn forget_basic(&self) {
        self.basic.clear();
    }

    /// Forgets every verified Basic credential (after a client's secret changed).
    pub(crate) fn forget_client_secrets(&self) {
        self.basic.clear();
    }

    /// The issuer of the server's tokens (its base URL).
    pub(crate) fn issuer(&self) -> &str {
        self.signer.issuer()
    }

    /// Verifies an access token's signature, issuer and expiry, remembering good tokens.
    pub(crate) fn verify(&self, token: &str) -> Option<kiln_auth::AccessClaims> {
        let key = hash_secret(token);
        let now = chrono::Utc::now().timestamp();
        if let Ok(cache) = self.verified.lock()
            && let Some(claims) = cache.get(&key)
        {
            return (claims.exp > now).then(|| claims.clone());
        }
        let claims = self.signer.verify_access_token(token).ok()?;
        if let Ok(mut cache) = self.verified.lock() {
            if cache.len() >= VERIFIED_CACHE {
                cache.clear();
            }
            cache.insert(key, claims.clone());
        }
        Some(claims)
    }

    pub fn jwks(&self) -> Value {
        self.signer.jwks()
    }
}

/// An OAuth 2.0 error (RFC 6749 §5.2), sent as `{"error", "error_description"}`.
#[derive(Debug, Clone)]
pub struct OAuthError {
    pub error: &'static str,
    pub description: String,
    pub status: u16,
}

impl OAuthError {
    fn new(error: &'static str, description: impl Into<String>) -> OAuthError {
        OAuthError { error, description: description.into(), status: 400 }
    }

    pub fn to_json(&self) -> Value {
        json!({ "error": self.error, "error_description": self.description })
    }
}

impl From<EngineError> for OAuthError {
    fn from(e: EngineError) -> OAuthError {
        let status = e.status();
        let description = match &e {
            EngineError::Internal(_) => "Internal server error".to_owned(),
            other => other.to_string(),
        };
        OAuthError {
            error: if status >= 500 { "server_error" } else { "invalid_request" },
            description,
            status,
        }
    }
}

/// The body of `POST /auth/login`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(default)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
    pub scope: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub client_id: Option<String>,
    pub project_id: Option<String>,
    pub nonce: Option<String>,
    pub remember: Option<bool>,
    /// The client's `User-Agent`, recorded on the Login (set by the server, not the body).
    #[serde(skip)]
    pub user_agent: Option<String>,
}

/// How a client identified itself at the token endpoint.
#[derive(Debug, Clone, Default)]
pub struct TokenClient {
    /// `client_id` (from HTTP Basic or the form).
    pub client_id: Option<String>,
    /// `client_secret` (`client_secret_basic` or `client_secret_post`).
    pub secret: Option<String>,
    /// `(client_assertion_type, client_assertion)` (`private_key_jwt`).
    pub assertion: Option<(String, String)>,
}

/// A client with credentials of its own (a secret or keys) must authenticate; one without is
/// public (OAuth 2.0 §2.1).
pub(crate) fn is_confidential(client: &Value) -> bool {
    let has = |field: &str| client[field].as_str().is_some_and(|s| !s.is_empty());
    has("secret")
        || has("retiringSecret")
        || has("jwksUri")
        || client["extension"].as_array().is_some_and(|exts| {
            exts.iter().any(|e| e["url"] == crate::client_assertion::CLIENT_JWKS_EXTENSION)
        })
}

/// An `instant` member (`authTime`, `expiresAt`, …) in seconds since the epoch.
pub(crate) fn instant_secs(value: &Value) -> Option<i64> {
    value.as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()).map(|t| t.timestamp())
}

/// A token lifetime as Medplum writes it: digits and a unit (`s m h d w y`), e.g. `2w`.
pub(crate) fn parse_lifetime(text: &str) -> Option<i64> {
    let unit = text.chars().last()?;
    let count: i64 = text[..text.len() - unit.len_utf8()].parse().ok()?;
    let secs = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        'y' => 365 * 86_400,
        _ => return None,
    };
    count.checked_mul(secs).filter(|s| *s > 0)
}

/// Who made an API request, from a verified access token and its live Login (or from HTTP
/// Basic client credentials).
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The Login behind the token; `None` for HTTP Basic client credentials (no Login).
    pub login_id: Option<String>,
    /// The User's id; `None` when a ClientApplication acts (client credentials, Basic).
    pub user_id: Option<String>,
    pub project: ProjectId,
    /// The acting profile, e.g. `Practitioner/123` or `ClientApplication/abc`.
    pub profile: String,
    /// `ProjectMembership/<id>`.
    pub membership: Option<String>,
    pub scope: String,
    pub client_id: Option<String>,
    /// The token's SMART launch patient (a Patient id), if any.
    pub patient: Option<String>,
    /// The membership is a project admin (`ProjectMembership.admin`).
    pub admin: bool,
    /// The membership's project is a super-admin project (`Project.superAdmin`).
    pub super_admin: bool,
    /// What the member may see and do (their AccessPolicy; see [`crate::policy`]).
    pub access: std::sync::Arc<crate::Access>,
    /// This request asked for Medplum's server-side `meta` members (`X-Medplum: extended`);
    /// set by the server per request.
    pub extended: bool,
}

impl Authenticated {
    pub fn context(&self) -> RequestContext {
        RequestContext {
            project: self.project.clone(),
            author: Some(self.profile.clone()),
            access: self.access.clone(),
            extended: self.extended,
        }
    }

    /// The reference of who acts, as `invitedBy` and the like name them: `User/<id>`, or the
    /// client's `ClientApplication/<id>`.
    pub fn actor(&self) -> String {
        match (&self.user_id, &self.client_id) {
            (Some(user), _) => format!("User/{user}"),
            (None, Some(client)) => format!("ClientApplication/{client}"),
            (None, None) => self.profile.clone(),
        }
    }
}

pub(crate) fn system() -> RequestContext {
    RequestContext::new(ProjectId::system())
}

/// The precondition of rewriting a stored resource: its version if it has one (read back from
/// the store), else that it does not exist yet.
pub(crate) fn version_precondition(resource: &Value) -> Precondition {
    match resource["meta"]["versionId"].as_str().and_then(|v| v.parse().ok()) {
        Some(version) => Precondition::VersionIs(version),
        None => Precondition::MustNotExist,
    }
}

fn reference(value: &Value) -> Option<&str> {
    value.get("reference").and_then(Value::as_str)
}

pub(crate) fn parse_body(stored: &StoredResource) -> Result<Value, EngineError> {
    serde_json::from_slice(&stored.body).map_err(|e| EngineError::Internal(e.to_string()))
}

/// One account write: the resource, its precondition and its unique keys.
pub(crate) type AccountWrite = (Value, Precondition, Vec<(String, String)>);

/// Argon2id of `password`, computed on the blocking pool.
pub(crate) async fn hash_password(password: &str) -> Result<String, EngineError> {
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || kiln_auth::hash_password(&password))
        .await
        .map_err(|e| EngineError::Internal(e.to_string()))?
        .map_err(|e| EngineError::Internal(e.to_string()))
}

/// Checks `password` against a stored Argon2id hash (or, without one, spends the same time and
/// fails), on the blocking pool.
pub(crate) async fn verify_password(
    password: &str,
    hash: Option<&str>,
) -> Result<bool, EngineError> {
    let password = password.to_owned();
    let hash = hash.map(str::to_owned);
    tokio::task::spawn_blocking(move || match hash {
        Some(hash) => kiln_auth::verify_password(&password, &hash),
        None => kiln_auth::verify_password_dummy(&password),
    })
    .await
    .map_err(|e| EngineError::Internal(e.to_string()))
}

fn bad_credentials() -> EngineError {
    EngineError::Invalid(vec![kiln_model::Issue::error(
        kiln_model::IssueCode::Invalid,
        "Email or password is invalid",
    )])
}

impl Engine {
    /// Validates and writes an account resource with its unique keys.
    pub(crate) async fn put_account(
        &self,
        ctx: &RequestContext,
        resource: Value,
        precondition: Precondition,
        unique_keys: Vec<(String, String)>,
    ) -> Result<StoredResource, EngineError> {
        let ty = resource["resourceType"].as_str().unwrap_or_default().to_owned();
        let id = resource["id"].as_str().map(str::to_owned).unwrap_or_else(new_id);
        let resource = self.prepare(ctx, &ty, &id, resource)?;
        let registry = self.registry(&ctx.project).await?;
        let op =
            crate::rest::put_op(resource, WriteMethod::Put, precondition, unique_keys, &registry);
        let res = self.write_op(ctx, op, &registry).await?;
        res.stored.ok_or_else(|| EngineError::Internal("account write produced no version".into()))
    }

    /// Validates and writes several account resources of one project in one transaction (all
    /// or nothing), each with its precondition and unique keys.
    pub(crate) async fn put_accounts(
        &self,
        ctx: &RequestContext,
        writes: Vec<AccountWrite>,
    ) -> Result<Vec<StoredResource>, EngineError> {
        let registry = self.registry(&ctx.project).await?;
        let mut ops = Vec::with_capacity(writes.len());
        for (resource, precondition, unique_keys) in writes {
            let ty = resource["resourceType"].as_str().unwrap_or_default().to_owned();
            let id = resource["id"].as_str().map(str::to_owned).unwrap_or_else(new_id);
            let resource = self.prepare(ctx, &ty, &id, resource)?;
            ops.push(crate::rest::put_op(
                resource,
                WriteMethod::Put,
                precondition,
                unique_keys,
                &registry,
            ));
        }
        let results = self
            .write_ops(ctx, ops, kiln_store::Atomicity::All, &registry)
            .await?
            .into_iter()
            .map(|res| {
                res.map_err(EngineError::from)?.stored.ok_or_else(|| {
                    EngineError::Internal("account write produced no version".into())
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(results)
    }

    /// On an empty store, creates the super-admin Project, its admin User, a Practitioner
    /// profile and the membership tying them together. Returns the project id if it seeded.
    pub async fn seed_if_empty(
        &self,
        email: &str,
        password: &str,
    ) -> Result<Option<String>, EngineError> {
        match self.seed(email, password).await {
            // Another node seeded first (the admin's email is a unique key): nothing to do.
            Err(EngineError::Conflict(_)) => Ok(None),
            other => other,
        }
    }

    async fn seed(&self, email: &str, password: &str) -> Result<Option<String>, EngineError> {
        if !self.store().is_empty().await? {
            return Ok(None);
        }
        let email = email.trim().to_lowercase();
        let hash = hash_password(password).await?;
        let (project_id, user_id, practitioner_id) = (new_id(), new_id(), new_id());
        let project_ctx = RequestContext::new(ProjectId::new(project_id.clone()));
        self.put_account(
            &system(),
            json!({"resourceType": "User", "id": user_id, "firstName": "Medplum", "lastName": "Admin",
                   "email": email, "emailVerified": true, "admin": true, "passwordHash": hash}),
            Precondition::MustNotExist,
            vec![(USER_EMAIL.into(), email.clone())],
        )
        .await?;
        self.put_account(
            &project_ctx,
            json!({"resourceType": "Project", "id": project_id, "name": "Super Admin",
                   "superAdmin": true, "strictMode": true,
                   "owner": {"reference": format!("User/{user_id}")}}),
            Precondition::MustNotExist,
            vec![],
        )
        .await?;
        self.put_account(
            &project_ctx,
            json!({"resourceType": "Practitioner", "id": practitioner_id,
                   "name": [{"given": ["Medplum"], "family": "Admin"}],
                   "telecom": [{"system": "email", "use": "work", "value": email}]}),
            Precondition::MustNotExist,
            vec![],
        )
        .await?;
        self.put_account(
            &project_ctx,
            json!({"resourceType": "ProjectMembership",
                   "project": {"reference": format!("Project/{project_id}")},
                   "user": {"reference": format!("User/{user_id}"), "display": email},
                   "profile": {"reference": format!("Practitioner/{practitioner_id}"), "display": "Medplum Admin"},
                   "admin": true}),
            Precondition::MustNotExist,
            vec![(MEMBERSHIP_USER.into(), format!("User/{user_id}"))],
        )
        .await?;
        Ok(Some(project_id))
    }

    /// The active memberships of a user across all projects, as `(project, membership)`.
    pub(crate) async fn memberships(
        &self,
        user_id: &str,
    ) -> Result<Vec<(ProjectId, Value)>, EngineError> {
        let found = self
            .store()
            .lookup_key_all_projects(MEMBERSHIP_USER, &format!("User/{user_id}"))
            .await?;
        let mut out = Vec::new();
        for (project, ty, id) in found {
            let stored = self.store().read(&project, &ty, &id).await?;
            if stored.deleted {
                continue;
            }
            let membership = parse_body(&stored)?;
            if membership.get("active") != Some(&Value::Bool(false)) {
                out.push((project, membership));
            }
        }
        Ok(out)
    }

    /// `POST /auth/login`. Wrong credentials never say which part was wrong, and repeated
    /// failures for one email are slowed down.
    pub async fn login(
        &self,
        mut req: LoginRequest,
        remote_addr: Option<String>,
    ) -> Result<Value, EngineError> {
        // `projectId: "new"` (Medplum's sign-in before `/auth/newproject`): a Login left
        // unbound whatever the memberships, offered only while registration is open.
        let for_new_project = req.project_id.as_deref() == Some("new");
        if for_new_project {
            if self.registration() != crate::Registration::Open {
                return Err(EngineError::Forbidden(
                    "Registration is disabled on this server".into(),
                ));
            }
            req.project_id = None;
        }
        let email = req.email.trim().to_lowercase();
        if email.is_empty() || req.password.is_empty() {
            return Err(EngineError::invalid("Email and password are required"));
        }
        if let Some(method) = &req.code_challenge_method
            && method != "S256"
            && method != "plain"
        {
            return Err(EngineError::invalid("codeChallengeMethod must be S256 or plain"));
        }
        let user = self
            .check_password(
                &email,
                &req.password,
                req.project_id.as_deref(),
                remote_addr.as_deref(),
            )
            .await?;
        let user_id = user["id"].as_str().unwrap_or_default().to_owned();
        let mut memberships = self.memberships(&user_id).await?;
        if let Some(project_id) = &req.project_id {
            memberships.retain(|(project, _)| project.as_str() == project_id);
        }
        if memberships.is_empty() && !for_new_project {
            return Err(EngineError::Forbidden("User has no access to any project".into()));
        }
        let mut login = json!({
            "resourceType": "Login",
            "id": new_id(),
            "user": {"reference": format!("User/{user_id}"), "display": email},
            "authMethod": "password",
            "authTime": format_instant(Utc::now()),
            "scope": req.scope.clone().unwrap_or_else(|| "openid".into()),
            "granted": false,
            "revoked": false,
        });
        if let Some(challenge) = &req.code_challenge {
            login["codeChallenge"] = json!(challenge);
            login["codeChallengeMethod"] =
                json!(req.code_challenge_method.clone().unwrap_or_else(|| "plain".into()));
        }
        if let Some(nonce) = &req.nonce {
            login["nonce"] = json!(nonce);
        }
        if let Some(addr) = remote_addr {
            login["remoteAddress"] = json!(addr);
        }
        if let Some(agent) = req.user_agent.as_deref().filter(|it| !it.is_empty()) {
            login["userAgent"] = json!(agent);
        }
        // Medplum's SDK sends an empty clientId when the app has none.
        if let Some(client) = req.client_id.as_deref().filter(|it| !it.is_empty()) {
            login["client"] = json!({ "reference": format!("ClientApplication/{client}") });
        }
        if user["mfaEnrolled"] == json!(true) {
            // The second factor first: no code and no membership list before
            // `/auth/mfa/verify`. The project asked for is kept to filter the memberships then.
            login["mfaVerified"] = json!(false);
            if let Some(project_id) = &req.project_id {
                login["project"] = json!({ "reference": format!("Project/{project_id}") });
            }
            let stored =
                self.put_account(&system(), login, Precondition::MustNotExist, vec![]).await?;
            return Ok(json!({ "login": stored.id, "mfaRequired": true }));
        }
        if for_new_project {
            let stored =
                self.put_account(&system(), login, Precondition::MustNotExist, vec![]).await?;
            let list: Vec<Value> = memberships.into_iter().map(|(_, m)| m).collect();
            return Ok(json!({ "login": stored.id, "memberships": list }));
        }
        self.offer_memberships(login, memberships).await
    }

    /// The User whose `email` and `password` these are (see [`Engine::find_user`] for
    /// `project_id`). Wrong credentials never say which part was wrong, and failures slow down
    /// further attempts for the same email and from the same address.
    pub(crate) async fn check_password(
        &self,
        email: &str,
        password: &str,
        project_id: Option<&str>,
        remote_addr: Option<&str>,
    ) -> Result<Value, EngineError> {
        // Failures slow down further attempts for the same email and from the same address.
        let email_key = format!("email:{email}");
        let ip_key = remote_addr.as_ref().map(|addr| format!("ip:{addr}"));
        let keys: Vec<&str> =
            std::iter::once(email_key.as_str()).chain(ip_key.as_deref()).collect();
        self.throttle_wait(&keys).await;
        let user = self.find_user(email, project_id).await?;
        let hash = user.as_ref().and_then(|u| u["passwordHash"].as_str());
        let ok = verify_password(password, hash).await?;
        let Some(user) = user.filter(|_| ok) else {
            self.throttle_fail(&keys).await;
            return Err(bad_credentials());
        };
        self.throttle_clear(&email_key).await;
        Ok(user)
    }

    /// The end of a sign-in: one membership → the Login bound to it and a code; several → the
    /// Login stored unbound and the list to choose from (`/auth/profile`).
    pub(crate) async fn offer_memberships(
        &self,
        login: Value,
        mut memberships: Vec<(ProjectId, Value)>,
    ) -> Result<Value, EngineError> {
        if memberships.len() == 1 {
            let (project, membership) = memberships.remove(0);
            return self.grant_code(login, &project, &membership).await;
        }
        let precondition = version_precondition(&login);
        let stored = self.put_account(&system(), login, precondition, vec![]).await?;
        let list: Vec<Value> = memberships.into_iter().map(|(_, m)| m).collect();
        Ok(json!({ "login": stored.id, "memberships": list }))
    }

    /// The User who signs in with `email`: with a project id, that project's own User first,
    /// then a server-wide User; without, only a server-wide User.
    async fn find_user(
        &self,
        email: &str,
        project_id: Option<&str>,
    ) -> Result<Option<Value>, EngineError> {
        let system = ProjectId::system();
        let mut found = None;
        if let Some(project_id) = project_id {
            let key = format!("{project_id}/{email}");
            found = self.store().lookup_unique(&system, USER_PROJECT_EMAIL, &key).await?;
        }
        if found.is_none() {
            found = self.store().lookup_unique(&system, USER_EMAIL, email).await?;
        }
        match found {
            Some((_, id)) => {
                let stored = self.store().read(&system, "User", &id).await?;
                if stored.deleted { Ok(None) } else { Ok(Some(parse_body(&stored)?)) }
            }
            None => Ok(None),
        }
    }

    /// Binds a Login to a membership and issues a one-time authorization code.
    pub(crate) async fn grant_code(
        &self,
        mut login: Value,
        project: &ProjectId,
        membership: &Value,
    ) -> Result<Value, EngineError> {
        let membership_id = membership["id"].as_str().unwrap_or_default();
        login["membership"] = json!({ "reference": format!("ProjectMembership/{membership_id}") });
        login["project"] = json!({ "reference": format!("Project/{project}") });
        if let Some(profile) = membership.get("profile") {
            login["profileType"] = json!(
                reference(profile).and_then(|r| r.split('/').next()).unwrap_or("Practitioner")
            );
        }
        let code = random_token(32);
        let code_hash = hash_secret(&code);
        login["code"] = json!(code_hash);
        login["authTime"] = json!(format_instant(Utc::now()));
        let precondition = version_precondition(&login);
        let stored = self
            .put_account(&system(), login, precondition, vec![(LOGIN_CODE.into(), code_hash)])
            .await?;
        Ok(json!({ "login": stored.id, "code": code }))
    }

    /// `POST /auth/profile`: picks one of the memberships offered by `login`.
    pub async fn select_profile(
        &self,
        login_id: &str,
        membership_id: &str,
    ) -> Result<Value, EngineError> {
        let login = self.live_login(login_id).await?;
        if login["granted"] == json!(true) || login.get("membership").is_some() {
            return Err(EngineError::invalid("This login already has a profile"));
        }
        require_mfa_verified(&login)?;
        let user_id = user_id_of(&login)?;
        let memberships = self.memberships(&user_id).await?;
        let Some((project, membership)) =
            memberships.into_iter().find(|(_, m)| m["id"] == json!(membership_id))
        else {
            return Err(EngineError::NotFound("Membership not found".into()));
        };
        self.grant_code(login, &project, &membership).await
    }

    pub(crate) async fn live_login(&self, login_id: &str) -> Result<Value, EngineError> {
        if !kiln_model::is_valid_id(login_id) {
            return Err(EngineError::NotFound("Login not found".into()));
        }
        let stored = self
            .store()
            .read(&ProjectId::system(), "Login", login_id)
            .await
            .map_err(|_| EngineError::NotFound("Login not found".into()))?;
        if stored.deleted {
            return Err(EngineError::NotFound("Login not found".into()));
        }
        let login = parse_body(&stored)?;
        if login["revoked"] == json!(true) {
            return Err(EngineError::Unauthorized("Login revoked".into()));
        }
        Ok(login)
    }

    /// `grant_type=authorization_code`: the code is single use, expires after ten minutes, and
    /// must come with the PKCE verifier if the login sent a challenge. A SMART grant (made by
    /// the authorization page) also needs the same `redirect_uri` and its own client: a
    /// confidential client authenticated, a public one naming itself. A code presented twice
    /// ends the grant, so the tokens issued from it stop working too (RFC 6749 §4.1.2).
    pub async fn exchange_code(
        &self,
        code: &str,
        verifier: Option<&str>,
        client: &TokenClient,
        redirect_uri: Option<&str>,
    ) -> Result<Value, OAuthError> {
        let invalid = |m: &str| OAuthError::new("invalid_grant", m);
        let found = self
            .store()
            .lookup_unique(&ProjectId::system(), LOGIN_CODE, &hash_secret(code))
            .await
            .map_err(EngineError::from)?;
        let Some((_, login_id)) = found else { return Err(invalid("Invalid code")) };
        let mut login = self.live_login(&login_id).await.map_err(|_| invalid("Invalid code"))?;
        if login["granted"] == json!(true) {
            if crate::smart::is_smart_login(&login) {
                self.end_login(&login_id).await.map_err(OAuthError::from)?;
            }
            return Err(invalid("Code already used"));
        }
        let auth_time = instant_secs(&login["authTime"]);
        if auth_time.is_none_or(|t| Utc::now().timestamp() - t > CODE_TTL_SECS) {
            return Err(invalid("Code expired"));
        }
        self.check_token_client(&login, client, false).await?;
        if let Some(expected) = crate::smart::smart_redirect_uri(&login)
            && redirect_uri != Some(expected)
        {
            return Err(invalid("redirect_uri does not match the authorization request"));
        }
        if let Some(challenge) = login["codeChallenge"].as_str() {
            let method = login["codeChallengeMethod"].as_str().unwrap_or("plain");
            let Some(verifier) = verifier.filter(|v| !v.is_empty()) else {
                return Err(invalid("Missing code_verifier"));
            };
            if !verify_pkce(method, challenge, verifier) {
                return Err(invalid("Invalid code_verifier"));
            }
        }
        // The code's hash stays (and its key with it), so a second use finds the grant.
        login["granted"] = json!(true);
        self.issue_tokens(login, None).await
    }

    /// Checks who redeems a Login's code or refresh token. First-party sign-ins (no client,
    /// or Medplum's `/auth/login` with a `clientId`) are bound by PKCE alone, as Medplum does;
    /// a SMART grant must be redeemed by its own client, authenticated when it has
    /// credentials. A public client names itself by `client_id` when it redeems a code
    /// (RFC 6749 §4.1.3); its refresh token already stands for it, so a refresh may omit it
    /// (§6; SMART's JS client does).
    async fn check_token_client(
        &self,
        login: &Value,
        client: &TokenClient,
        refresh: bool,
    ) -> Result<(), OAuthError> {
        let Some(expected) = login["client"]["reference"]
            .as_str()
            .and_then(|r| r.strip_prefix("ClientApplication/"))
        else {
            return Ok(());
        };
        let other = || OAuthError::new("invalid_grant", "The grant was issued to another client");
        let bad_client = |m: &str| OAuthError {
            error: "invalid_client",
            description: m.to_owned(),
            status: 401,
        };
        if let Some((assertion_type, assertion)) = &client.assertion {
            let (_, _, found) = self
                .verify_client_assertion(client.client_id.as_deref(), assertion_type, assertion)
                .await?;
            return if found["id"].as_str() == Some(expected) { Ok(()) } else { Err(other()) };
        }
        if let Some(secret) = &client.secret {
            let id = client.client_id.as_deref().unwrap_or_default();
            self.verify_client(id, secret)
                .await
                .map_err(|_| bad_client("Invalid client credentials"))?;
            return if id == expected { Ok(()) } else { Err(other()) };
        }
        if client.client_id.as_deref().is_some_and(|id| id != expected) {
            return Err(other());
        }
        if !crate::smart::is_smart_login(login) {
            return Ok(());
        }
        if client.client_id.is_none() && !refresh {
            return Err(bad_client("Send client_id, or authenticate the client"));
        }
        let (_, _, found) =
            self.find_client(expected).await.map_err(|_| bad_client("Invalid client"))?;
        if is_confidential(&found) {
            return Err(bad_client("This client must authenticate"));
        }
        Ok(())
    }

    /// `grant_type=refresh_token`: rotates the refresh token; the old one stops working. A
    /// SMART grant's refresh token must be used by its own client before it expires (and an
    /// `online_access` one only while the user's session lives); `scope` may narrow the new
    /// access token, never widen it.
    pub async fn refresh(
        &self,
        refresh_token: &str,
        client: &TokenClient,
        scope: Option<&str>,
    ) -> Result<Value, OAuthError> {
        let invalid = || OAuthError::new("invalid_grant", "Invalid refresh token");
        let found = self
            .store()
            .lookup_unique(&ProjectId::system(), LOGIN_REFRESH, &hash_secret(refresh_token))
            .await
            .map_err(EngineError::from)?;
        let Some((_, login_id)) = found else { return Err(invalid()) };
        let login = self.live_login(&login_id).await.map_err(|_| invalid())?;
        if login["granted"] != json!(true) {
            return Err(invalid());
        }
        self.check_token_client(&login, client, true).await?;
        if crate::smart::is_smart_login(&login) {
            let now = Utc::now().timestamp();
            if instant_secs(&login["expiresAt"]).is_some_and(|t| t < now) {
                return Err(OAuthError::new("invalid_grant", "Refresh token expired"));
            }
            if !self.session_alive_for(&login).await {
                return Err(OAuthError::new(
                    "invalid_grant",
                    "The session this access lasted for has ended",
                ));
            }
        }
        let granted = login["scope"].as_str().unwrap_or("openid");
        let Some(narrowed) = crate::smart::narrowed_scope(granted, scope) else {
            return Err(OAuthError::new(
                "invalid_scope",
                "A refresh cannot widen the granted scope",
            ));
        };
        let scope_override = (narrowed != granted).then_some(narrowed);
        self.issue_tokens(login, scope_override).await
    }

    /// An `online_access` grant (without `offline_access`) lives as long as the browser
    /// session that approved it.
    pub(crate) async fn session_alive_for(&self, login: &Value) -> bool {
        let scopes = ScopeSet::parse(login["scope"].as_str().unwrap_or_default());
        if scopes.has_offline_access() || !scopes.has_online_access() {
            return true;
        }
        let Some(session_id) =
            login["basedOn"]["reference"].as_str().and_then(|r| r.strip_prefix("Login/"))
        else {
            return false;
        };
        match self.live_login(session_id).await {
            Ok(session) => {
                instant_secs(&session["expiresAt"]).is_some_and(|t| t >= Utc::now().timestamp())
            }
            Err(_) => false,
        }
    }

    /// Stores the Login (conditional on the version read, so a code or refresh token can be
    /// redeemed once) with a fresh refresh secret when it gets one, and mints the tokens.
    /// First-party sign-ins always get a refresh token (Medplum's contract); SMART grants
    /// only with `offline_access` or `online_access`, valid for the client's
    /// `refreshTokenLifetime` (default 90 days, renewed by each use) or, online only, for the
    /// session.
    async fn issue_tokens(
        &self,
        mut login: Value,
        scope_override: Option<String>,
    ) -> Result<Value, OAuthError> {
        let version: i64 =
            login["meta"]["versionId"].as_str().and_then(|v| v.parse().ok()).unwrap_or(0);
        let smart = crate::smart::is_smart_login(&login);
        let scopes = ScopeSet::parse(login["scope"].as_str().unwrap_or_default());
        let refreshable = !smart || scopes.has_offline_access() || scopes.has_online_access();
        let client = self.login_client(&login).await;
        let mut keys = Vec::new();
        if let Some(code) = login["code"].as_str() {
            keys.push((LOGIN_CODE.to_owned(), code.to_owned()));
        }
        let refresh_token = if refreshable {
            let token = random_token(32);
            let hash = hash_secret(&token);
            login["refreshSecret"] = json!(hash);
            keys.push((LOGIN_REFRESH.to_owned(), hash));
            if smart {
                let lifetime = client
                    .as_ref()
                    .and_then(|c| c["refreshTokenLifetime"].as_str())
                    .and_then(parse_lifetime)
                    .unwrap_or(crate::smart::OFFLINE_TTL_SECS);
                let expires = Utc::now() + chrono::Duration::seconds(lifetime);
                login["expiresAt"] = json!(format_instant(expires));
            }
            Some(token)
        } else {
            if let Value::Object(obj) = &mut login {
                obj.remove("refreshSecret");
            }
            None
        };
        let stored = self
            .put_account(&system(), login, Precondition::VersionIs(version), keys)
            .await
            .map_err(|e| match e {
                EngineError::PreconditionFailed(_) => {
                    OAuthError::new("invalid_grant", "Grant already used")
                }
                other => OAuthError::from(other),
            })?;
        let login = parse_body(&stored).map_err(OAuthError::from)?;
        self.mint_tokens(&login, refresh_token, scope_override, client.as_ref()).await
    }

    /// The live ClientApplication a Login was made for (`None` without one).
    pub(crate) async fn login_client(&self, login: &Value) -> Option<Value> {
        let id = login["client"]["reference"].as_str()?.strip_prefix("ClientApplication/")?;
        let project = login["project"]["reference"].as_str()?.strip_prefix("Project/")?;
        let stored = self
            .read_live(&ProjectId::new(project.to_owned()), "ClientApplication", id)
            .await
            .ok()??;
        parse_body(&stored).ok()
    }

    /// Signs the access token (and the ID token when `openid` was asked for) of a stored,
    /// granted Login. `refresh_token` is added to the response when given; `scope_override`
    /// narrows the access token's scope; `client` gives its `accessTokenLifetime`. A SMART
    /// grant's launch context (`patient`, `encounter`, `fhirContext`) is added, and the
    /// patient is written into the access token, where `patient/` scopes find it.
    async fn mint_tokens(
        &self,
        login: &Value,
        refresh_token: Option<String>,
        scope_override: Option<String>,
        client: Option<&Value>,
    ) -> Result<Value, OAuthError> {
        let login_id = login["id"].as_str().unwrap_or_default().to_owned();
        // `User/<id>`, or for a client's Login `ClientApplication/<id>`.
        let user_id = login["user"]["reference"]
            .as_str()
            .and_then(|r| r.split_once('/'))
            .map(|(_, id)| id.to_owned())
            .ok_or_else(|| OAuthError::from(EngineError::Internal("Login without user".into())))?;
        let project_ref = login["project"]["reference"].as_str().unwrap_or_default().to_owned();
        let project_id = project_ref.strip_prefix("Project/").unwrap_or_default().to_owned();
        let membership_ref = login["membership"]["reference"].as_str().unwrap_or_default();
        let membership_id = membership_ref.strip_prefix("ProjectMembership/").unwrap_or_default();
        let membership = self
            .store()
            .read(&ProjectId::new(project_id.clone()), "ProjectMembership", membership_id)
            .await
            .map_err(|_| OAuthError::new("invalid_grant", "Membership not found"))?;
        let membership = parse_body(&membership).map_err(OAuthError::from)?;
        let profile = membership["profile"]["reference"].as_str().unwrap_or_default().to_owned();
        let scope = scope_override
            .unwrap_or_else(|| login["scope"].as_str().unwrap_or("openid").to_owned());
        let email = login["user"]["display"].as_str().map(str::to_owned);
        let client_id = login["client"]["reference"]
            .as_str()
            .and_then(|r| r.strip_prefix("ClientApplication/"))
            .map(str::to_owned);
        let launch = self.login_launch(login).await.map_err(OAuthError::from)?;
        let patient = launch.as_ref().and_then(|l| l.patient.clone());
        let ttl = client
            .and_then(|c| c["accessTokenLifetime"].as_str())
            .and_then(parse_lifetime)
            .and_then(|secs| u64::try_from(secs).ok())
            .map(Duration::from_secs)
            .unwrap_or(ACCESS_TOKEN_TTL);
        let input = AccessClaimsInput {
            sub: user_id.clone(),
            login_id,
            client_id: client_id.clone(),
            scope: scope.clone(),
            profile: profile.clone(),
            project_id: project_id.clone(),
            username: email.clone(),
            patient: patient.clone(),
        };
        let signer = &self.auth().signer;
        let internal =
            |e: kiln_auth::AuthError| OAuthError::from(EngineError::Internal(e.to_string()));
        let (access_token, _) = signer.issue_access_token(&input, ttl).map_err(internal)?;
        let mut out = json!({
            "token_type": "Bearer",
            "access_token": access_token,
            "expires_in": ttl.as_secs(),
            "scope": scope,
            "project": {"reference": project_ref},
            "profile": {"reference": profile},
        });
        if let Some(refresh_token) = refresh_token {
            out["refresh_token"] = json!(refresh_token);
        }
        let scopes = ScopeSet::parse(&scope);
        if crate::smart::is_smart_login(login) {
            out["smart_style_url"] = json!(self.base_url().join("oauth2/smart-style.json"));
            out["need_patient_banner"] = json!(patient.is_some());
        }
        if let Some(launch) = &launch {
            if let Some(p) = &launch.patient {
                out["patient"] = json!(p);
            }
            if let Some(e) = &launch.encounter {
                out["encounter"] = json!(e);
            }
            // SMART 2.0.0: relative references to resources other than the patient and the
            // encounter, which have their own members.
            let context: Vec<&String> = launch
                .fhir_context
                .iter()
                .filter(|r| !r.starts_with("Patient/") && !r.starts_with("Encounter/"))
                .collect();
            if !context.is_empty() {
                out["fhirContext"] = json!(context);
            }
        }
        if scopes.has_openid() {
            let auth_time = instant_secs(&login["authTime"]);
            let id_input = IdTokenInput {
                sub: user_id,
                client_id: client_id.unwrap_or_else(|| "kiln".into()),
                nonce: login["nonce"].as_str().map(str::to_owned),
                fhir_user: Some(self.base_url().join(&format!("fhir/R4/{profile}"))),
                email,
                auth_time,
            };
            let (id_token, _) = signer.issue_id_token(&id_input, ttl).map_err(internal)?;
            out["id_token"] = json!(id_token);
        }
        Ok(out)
    }

    /// Verifies a bearer token and that its Login is still live.
    pub async fn authenticate(&self, token: &str) -> Result<Authenticated, EngineError> {
        Ok(self.authenticate_with_login(token).await?.0)
    }

    /// [`Engine::authenticate`], also answering the live Login it read (introspection reports
    /// from it without reading it again).
    pub(crate) async fn authenticate_with_login(
        &self,
        token: &str,
    ) -> Result<(Authenticated, Value), EngineError> {
        let claims = self
            .auth()
            .verify(token)
            .ok_or_else(|| EngineError::Unauthorized("Invalid or expired access token".into()))?;
        let login = self
            .live_login(&claims.login_id)
            .await
            .map_err(|_| EngineError::Unauthorized("Access token revoked".into()))?;
        if login["granted"] != json!(true) {
            return Err(EngineError::Unauthorized("Access token revoked".into()));
        }
        let project = ProjectId::new(claims.project_id);
        let membership = login["membership"]["reference"].as_str().map(str::to_owned);
        let Some(membership_ref) = &membership else {
            return Err(EngineError::Unauthorized("Access token revoked".into()));
        };
        // A deleted or inactive membership ends its tokens (401, from `access_for`); SMART
        // resource scopes narrow the member's access.
        let access = self
            .access_for_token(
                &project,
                membership_ref,
                &claims.profile,
                &claims.scope,
                claims.patient.as_deref(),
            )
            .await?;
        let patient = claims.patient.clone();
        let user_id = login["user"]["reference"]
            .as_str()
            .and_then(|r| r.strip_prefix("User/"))
            .map(str::to_owned);
        let who = Authenticated {
            login_id: Some(claims.login_id),
            user_id,
            project,
            profile: claims.profile,
            membership,
            scope: claims.scope,
            client_id: claims.client_id,
            patient,
            admin: access.admin,
            super_admin: access.super_admin,
            access,
            extended: false,
        };
        Ok((who, login))
    }

    /// Finds a ClientApplication by id through its membership and checks `secret` against its
    /// `secret` or `retiringSecret`. Every failure is the same 401, whatever was wrong.
    pub(crate) async fn verify_client(
        &self,
        client_id: &str,
        secret: &str,
    ) -> Result<(ProjectId, Value, Value), EngineError> {
        let invalid = || EngineError::Unauthorized("Invalid client credentials".into());
        if secret.is_empty() {
            return Err(invalid());
        }
        let (project, membership, client) = self.find_client(client_id).await?;
        let matches = ["secret", "retiringSecret"].iter().any(|field| {
            client[*field]
                .as_str()
                .filter(|s| !s.is_empty())
                .is_some_and(|stored| client_secret_matches(stored, secret))
        });
        if !matches {
            return Err(invalid());
        }
        Ok((project, membership, client))
    }

    /// Finds an active ClientApplication by id through its active membership, without
    /// checking any secret: `(project, membership, client)`. Every failure is the same 401.
    pub(crate) async fn find_client(
        &self,
        client_id: &str,
    ) -> Result<(ProjectId, Value, Value), EngineError> {
        let invalid = || EngineError::Unauthorized("Invalid client credentials".into());
        if !kiln_model::is_valid_id(client_id) {
            return Err(invalid());
        }
        let reference = format!("ClientApplication/{client_id}");
        let found = self.store().lookup_key_all_projects(MEMBERSHIP_USER, &reference).await?;
        // Keys are unique per project; a client id in two projects is refused as ambiguous.
        let [(project, ty, membership_id)] = found.as_slice() else { return Err(invalid()) };
        let membership = match self.store().read(project, ty, membership_id).await {
            Ok(stored) if !stored.deleted => parse_body(&stored)?,
            Ok(_) | Err(kiln_store::StoreError::NotFound { .. }) => return Err(invalid()),
            Err(e) => return Err(e.into()),
        };
        if membership["active"] == json!(false) {
            return Err(invalid());
        }
        let client = match self.store().read(project, "ClientApplication", client_id).await {
            Ok(stored) if !stored.deleted => parse_body(&stored)?,
            Ok(_) | Err(kiln_store::StoreError::NotFound { .. }) => return Err(invalid()),
            Err(e) => return Err(e.into()),
        };
        if client.get("status").is_some_and(|s| s != "active") {
            return Err(invalid());
        }
        Ok((project.clone(), membership, client))
    }

    /// `grant_type=client_credentials`: a Login for the client's membership (`authMethod`
    /// `client`, granted at once) and an access token without a refresh token.
    pub async fn client_credentials(
        &self,
        client_id: &str,
        secret: &str,
        scope: Option<&str>,
    ) -> Result<Value, OAuthError> {
        let invalid_client = |description: &str| OAuthError {
            error: "invalid_client",
            description: description.to_owned(),
            status: 401,
        };
        let (project, membership, _client) =
            self.verify_client(client_id, secret).await.map_err(|e| match e {
                EngineError::Unauthorized(m) => invalid_client(&m),
                other => OAuthError::from(other),
            })?;
        let scope = scope.filter(|s| !s.trim().is_empty()).unwrap_or("openid");
        self.issue_client_token(&project, &membership, client_id, scope).await
    }

    /// The end of every `client_credentials` grant, once the client is authenticated (by
    /// secret or by assertion): a granted Login for its membership (`authMethod` `client`)
    /// with `scope`, and an access token without a refresh token.
    pub(crate) async fn issue_client_token(
        &self,
        project: &ProjectId,
        membership: &Value,
        client_id: &str,
        scope: &str,
    ) -> Result<Value, OAuthError> {
        let membership_id = membership["id"].as_str().unwrap_or_default();
        let client_ref = format!("ClientApplication/{client_id}");
        let login = json!({
            "resourceType": "Login",
            "id": new_id(),
            "user": {"reference": client_ref},
            "client": {"reference": client_ref},
            "membership": {"reference": format!("ProjectMembership/{membership_id}")},
            "project": {"reference": format!("Project/{project}")},
            "profileType": "ClientApplication",
            "authMethod": "client",
            "authTime": format_instant(Utc::now()),
            "scope": scope,
            "granted": true,
            "revoked": false,
        });
        let stored = self
            .put_account(&system(), login, Precondition::MustNotExist, vec![])
            .await
            .map_err(OAuthError::from)?;
        let login = parse_body(&stored).map_err(OAuthError::from)?;
        self.mint_tokens(&login, None, None, None).await
    }

    /// HTTP Basic `clientId:secret` on an API call, as Medplum allows: the client acts through
    /// its membership; no Login is written. Verified credentials are remembered for
    /// [`BASIC_TTL`] (keyed by a hash, never the secret itself).
    pub async fn authenticate_basic(
        &self,
        client_id: &str,
        secret: &str,
    ) -> Result<Authenticated, EngineError> {
        let key = hash_secret(&format!("{client_id}\n{secret}"));
        if let Some(who) = self.auth().basic.get(&key) {
            return Ok(who);
        }
        let (project, membership, _client) = self.verify_client(client_id, secret).await?;
        let membership_ref = membership["id"].as_str().map(|id| format!("ProjectMembership/{id}"));
        let profile = format!("ClientApplication/{client_id}");
        let access = self.access_for(&project, membership_ref.as_deref(), &profile).await?;
        let who = Authenticated {
            login_id: None,
            user_id: None,
            profile,
            membership: membership_ref,
            project,
            scope: "openid".into(),
            client_id: Some(client_id.to_owned()),
            patient: None,
            admin: access.admin,
            super_admin: access.super_admin,
            access,
            extended: false,
        };
        self.auth().basic.put(key, who.clone());
        Ok(who)
    }

    /// `POST /oauth2/logout`: revokes the Login, so every token from it stops working at once.
    pub async fn logout(&self, who: &Authenticated) -> Result<(), EngineError> {
        let Some(login_id) = &who.login_id else {
            return Err(EngineError::invalid("There is no login to end: HTTP Basic credentials"));
        };
        self.end_login(login_id).await
    }

    /// Marks a Login revoked, so every token from it stops working at once (retried if the
    /// Login changes meanwhile, e.g. by a refresh). An already revoked Login is left as is;
    /// an unknown one is a 404.
    pub(crate) async fn end_login(&self, login_id: &str) -> Result<(), EngineError> {
        for _ in 0..3 {
            let mut login = match self.live_login(login_id).await {
                Ok(login) => login,
                // Revoked already.
                Err(EngineError::Unauthorized(_)) => return Ok(()),
                Err(e) => return Err(e),
            };
            let version: i64 =
                login["meta"]["versionId"].as_str().and_then(|v| v.parse().ok()).unwrap_or(0);
            login["revoked"] = json!(true);
            match self.put_account(&system(), login, Precondition::VersionIs(version), vec![]).await
            {
                Ok(_) => return Ok(()),
                Err(EngineError::PreconditionFailed(_) | EngineError::Conflict(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(EngineError::Conflict("The login changed while it was being revoked".into()))
    }

    /// `GET /auth/me`: the user (without secrets), profile, project and membership. For a
    /// client, `user` and `profile` are its ClientApplication without its secrets.
    pub async fn me(&self, who: &Authenticated) -> Result<Value, EngineError> {
        let mut user = match &who.user_id {
            Some(user_id) => {
                parse_body(&self.store().read(&ProjectId::system(), "User", user_id).await?)?
            }
            None => Value::Null,
        };
        if let Value::Object(obj) = &mut user {
            obj.remove("passwordHash");
            obj.remove("mfaSecret");
        }
        let read_ref = |reference: &str| {
            let (ty, id) = reference.split_once('/').unwrap_or(("", ""));
            (ty.to_owned(), id.to_owned())
        };
        let (pty, pid) = read_ref(&who.profile);
        let mut profile = match self.store().read(&who.project, &pty, &pid).await {
            Ok(stored) if !stored.deleted => parse_body(&stored)?,
            _ => Value::Null,
        };
        if let Value::Object(obj) = &mut profile {
            obj.remove("secret");
            obj.remove("retiringSecret");
        }
        if user.is_null() {
            user = profile.clone();
        }
        let mut project =
            parse_body(&self.store().read(&who.project, "Project", who.project.as_str()).await?)?;
        if !who.admin
            && !who.super_admin
            && let Value::Object(obj) = &mut project
        {
            // The project's secrets are for its admins.
            obj.remove("secret");
            obj.remove("systemSecret");
        }
        let membership = match &who.membership {
            Some(reference) => {
                let (ty, id) = read_ref(reference);
                parse_body(&self.store().read(&who.project, &ty, &id).await?)?
            }
            None => Value::Null,
        };
        let config = match membership["userConfiguration"]["reference"].as_str() {
            Some(reference) => {
                let (ty, id) = read_ref(reference);
                match self.store().read(&who.project, &ty, &id).await {
                    Ok(stored) if !stored.deleted => parse_body(&stored)?,
                    _ => default_user_configuration(),
                }
            }
            None => default_user_configuration(),
        };
        let mut out = json!({
            "user": user,
            "profile": profile,
            "project": project,
            "membership": membership,
            "config": config,
            "accessPolicy": who.access.effective_policy(),
        });
        // A user's security overview, as Medplum's: MFA, live sessions, every membership.
        if let Some(user_id) = &who.user_id {
            let memberships: Vec<Value> = self
                .memberships(user_id)
                .await?
                .into_iter()
                .map(|(_, m)| json!({"id": m["id"], "project": m["project"], "profile": m["profile"]}))
                .collect();
            out["security"] = json!({
                "mfaEnrolled": user["mfaEnrolled"] == json!(true),
                "sessions": self.sessions(user_id).await?,
                "memberships": memberships,
            });
        }
        Ok(out)
    }

    /// The user's live sessions: of their [`MAX_SESSIONS`] most recently updated Logins, those
    /// granted and not revoked, newest first.
    async fn sessions(&self, user_id: &str) -> Result<Vec<Value>, EngineError> {
        let pairs = [
            ("user".to_owned(), format!("User/{user_id}")),
            ("_sort".to_owned(), "-_lastUpdated".to_owned()),
        ];
        let query = kiln_search::parse("Login", &pairs).map_err(EngineError::Invalid)?;
        let request =
            kiln_store::SearchRequest { query, after: None, count: MAX_SESSIONS, total: false };
        let page = self.store().search(&ProjectId::system(), &request).await?;
        let mut sessions = Vec::new();
        for stored in &page.matches {
            let login = parse_body(stored)?;
            if login["granted"] != json!(true) || login["revoked"] == json!(true) {
                continue;
            }
            let mut session = json!({
                "id": login["id"],
                "lastUpdated": login["meta"]["lastUpdated"],
                "authMethod": login["authMethod"],
                "authTime": login["authTime"],
                "remoteAddress": login["remoteAddress"],
            });
            for field in ["userAgent", "project", "profileType"] {
                if let Some(value) = login.get(field) {
                    session[field] = value.clone();
                }
            }
            sessions.push(session);
        }
        Ok(sessions)
    }

    /// `POST /auth/revoke {loginId}`: ends one of the caller's own sessions (every token of
    /// that Login stops working). Someone else's Login is a 403; an unknown one a 404.
    pub async fn revoke_login(
        &self,
        who: &Authenticated,
        login_id: &str,
    ) -> Result<(), EngineError> {
        let Some(user_id) = &who.user_id else {
            return Err(EngineError::Forbidden("A client application has no sessions".into()));
        };
        let not_found = || EngineError::NotFound("Login not found".into());
        if !kiln_model::is_valid_id(login_id) {
            return Err(not_found());
        }
        let stored = match self.store().read(&ProjectId::system(), "Login", login_id).await {
            Ok(stored) if !stored.deleted => stored,
            Ok(_) | Err(kiln_store::StoreError::NotFound { .. }) => return Err(not_found()),
            Err(e) => return Err(e.into()),
        };
        let mut login = parse_body(&stored)?;
        if login["user"]["reference"].as_str() != Some(&format!("User/{user_id}")) {
            return Err(EngineError::Forbidden("This login is not yours".into()));
        }
        if login["revoked"] == json!(true) {
            return Ok(());
        }
        login["revoked"] = json!(true);
        self.put_account(&system(), login, Precondition::VersionIs(stored.version), vec![]).await?;
        Ok(())
    }
}

/// Most Logins `/auth/me` looks at for the sessions list.
const MAX_SESSIONS: usize = 100;

/// 401 while a Login waits for its second factor (`mfaVerified: false`).
pub(crate) fn require_mfa_verified(login: &Value) -> Result<(), EngineError> {
    if login["mfaVerified"] == json!(false) {
        return Err(EngineError::Unauthorized("MFA verification required".into()));
    }
    Ok(())
}

/// What a member sees when their membership names no UserConfiguration: an unsaved default (no
/// id), as Medplum does.
fn default_user_configuration() -> Value {
    json!({
        "resourceType": "UserConfiguration",
        "name": "Default",
        "menu": [{
            "title": "Favorites",
            "link": [
                {"name": "Patients", "target": "/Patient"},
                {"name": "Practitioners", "target": "/Practitioner"},
                {"name": "Observations", "target": "/Observation"},
            ],
        }],
    })
}

/// The unique keys an account resource holds by its content: a User's email in its scope
/// (`User.email`, or `User.projectEmail` = `<project>/<email>` for a project-scoped user), a
/// ProjectMembership's `user` reference. Every write of one keeps them
/// ([`crate::rest::put_op`]), so an edit through the FHIR API cannot lose them.
pub(crate) fn account_keys(resource: &Value) -> Vec<(String, String)> {
    match resource["resourceType"].as_str() {
        Some("User") => {
            let Some(email) = resource["email"].as_str() else { return vec![] };
            let email = email.trim().to_lowercase();
            match resource["project"]["reference"].as_str().and_then(|r| r.strip_prefix("Project/"))
            {
                Some(project) => vec![(USER_PROJECT_EMAIL.into(), format!("{project}/{email}"))],
                None => vec![(USER_EMAIL.into(), email)],
            }
        }
        Some("ProjectMembership") => match resource["user"]["reference"].as_str() {
            Some(user) => vec![(MEMBERSHIP_USER.into(), user.to_owned())],
            None => vec![],
        },
        _ => vec![],
    }
}

/// How a stored client secret starts: the rest is the SHA-256 of the secret (hex).
pub(crate) const SECRET_HASH_PREFIX: &str = "sha256:";

/// A ClientApplication's `secret` and `retiringSecret` as stored: SHA-256 hashes, never the
/// secrets (they are long random tokens, so a plain hash is enough). Applied to every write
/// ([`crate::rest::put_op`]); the secret itself is shown once, when it is made.
pub(crate) fn seal_client_secrets(resource: &mut Value) {
    if resource["resourceType"] != "ClientApplication" {
        return;
    }
    for field in ["secret", "retiringSecret"] {
        if let Some(secret) = resource[field].as_str()
            && !secret.starts_with(SECRET_HASH_PREFIX)
        {
            let sealed = format!("{SECRET_HASH_PREFIX}{}", hash_secret(secret));
            resource[field] = Value::String(sealed);
        }
    }
}

/// Whether `given` is the secret `stored` (a sealed hash, or a plain secret stored before
/// secrets were hashed). Constant time in the compared hashes.
pub(crate) fn client_secret_matches(stored: &str, given: &str) -> bool {
    let given = hash_secret(given);
    match stored.strip_prefix(SECRET_HASH_PREFIX) {
        Some(hash) => constant_time_eq(hash, &given),
        None => constant_time_eq(hash_secret(stored), &given),
    }
}

fn user_id_of(login: &Value) -> Result<String, EngineError> {
    login["user"]["reference"]
        .as_str()
        .and_then(|r| r.strip_prefix("User/"))
        .map(str::to_owned)
        .ok_or_else(|| EngineError::Internal("Login without user".into()))
}

/// Name of the store setting that holds the server's JWT signing key (PKCS#8 DER).
const SIGNING_KEY_SETTING: &str = "auth.signing_key.pkcs8";

/// Loads the server's signing key from the store, generating and persisting one on first
/// start, and returns a signer for `issuer`.
pub async fn load_signer(
    store: &dyn kiln_store::Store,
    issuer: &str,
) -> Result<TokenSigner, EngineError> {
    let internal = |e: kiln_auth::AuthError| EngineError::Internal(e.to_string());
    let key = match store.get_setting(SIGNING_KEY_SETTING).await? {
        Some(der) => kiln_auth::SigningKey::from_pkcs8_der(&der).map_err(internal)?,
        None => {
            let key = tokio::task::spawn_blocking(kiln_auth::SigningKey::generate)
                .await
                .map_err(|e| EngineError::Internal(e.to_string()))?
                .map_err(internal)?;
            // Nodes starting at once each generate a key; the first stored one wins for all.
            let stored =
                store.put_setting_if_absent(SIGNING_KEY_SETTING, &key.to_pkcs8_der()).await?;
            kiln_auth::SigningKey::from_pkcs8_der(&stored).map_err(internal)?
        }
    };
    Ok(TokenSigner::new(key, issuer))
}
