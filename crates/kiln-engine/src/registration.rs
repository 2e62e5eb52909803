//! Self-service accounts with Medplum's contract: registration (`/auth/newuser`, then
//! `/auth/newproject` or `/auth/newpatient`) and the password-reset mail (`/auth/resetpassword`,
//! redeemed by `/auth/setpassword` like an invitation).
//!
//! Registration is two steps. [`Engine::new_user`] creates a User and a Login bound to no
//! membership and answers `{login}`; [`Engine::new_project`] (a Project owned by the user, a
//! Practitioner profile, an admin membership) or [`Engine::new_patient`] (a Patient profile and
//! a membership with the project's `defaultPatientAccessPolicy`) binds that Login and answers
//! `{login, code}`, the code exchanged at `/oauth2/token` like a sign-in's.
//!
//! Who may register is the server's [`Registration`] setting (`kiln serve --registration`):
//! `off`, `patients` (the default: only into projects that name a
//! `defaultPatientAccessPolicy`) or `open`. A refused registration is a 403.
//!
//! Abuse: registrations and reset mails count against the caller's address in the login
//! throttle (each one a "failure"), so a burst from one address slows down; reset mails also
//! count per email. A reset request answers the same whether or not the email has an account
//! (no account enumeration) and does its work after answering.

use chrono::Utc;
use kiln_store::{Precondition, ProjectId, format_instant};
use serde_json::{Value, json};

use crate::accounts::{
    USER_EMAIL, USER_PROJECT_EMAIL, account_keys, hash_password, parse_body, require_mfa_verified,
    system,
};
use crate::admin::check_password;
use crate::rest::new_id;
use crate::{Engine, EngineError, Registration, RequestContext};

/// How long a Login from `/auth/newuser` may wait for `/auth/newproject` or `/newpatient`.
const PENDING_LOGIN_SECS: i64 = 3600;
/// Longest first or last name, project name (characters) and email (bytes).
const NAME_MAX: usize = 128;
const EMAIL_MAX: usize = 72;

/// The body of `POST /auth/newuser` (Medplum's `NewUserRequest`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(default)]
pub struct NewUserRequest {
    pub first_name: String,
    pub last_name: String,
    pub email: String,
    pub password: String,
    /// Accepted and ignored: Kiln verifies no reCAPTCHA (the throttle limits bursts instead).
    pub recaptcha_token: Option<String>,
    /// Registers a User of this project only (a patient); `new` or absent: a server-wide User.
    pub project_id: Option<String>,
    pub client_id: Option<String>,
    pub scope: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub remember: Option<bool>,
}

/// The body of `POST /auth/newproject`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewProjectRequest {
    #[serde(default)]
    pub login: String,
    #[serde(default)]
    pub project_name: String,
}

/// The body of `POST /auth/newpatient`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewPatientRequest {
    #[serde(default)]
    pub login: String,
    #[serde(default)]
    pub project_id: String,
}

/// The body of `POST /auth/resetpassword`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(default)]
pub struct ResetPasswordRequest {
    pub email: String,
    /// The project of a project-scoped user; absent: a server-wide user.
    pub project_id: Option<String>,
    /// Accepted and ignored, as on `/auth/newuser`.
    pub recaptcha_token: Option<String>,
}

/// Where a request comes from, as recorded on its Login and used by the throttle.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub remote_addr: Option<String>,
    pub user_agent: Option<String>,
}

fn forbidden(message: &str) -> EngineError {
    EngineError::Forbidden(message.to_owned())
}

fn invalid_at(field: &str, message: &str) -> EngineError {
    EngineError::Invalid(vec![
        kiln_model::Issue::error(kiln_model::IssueCode::Invalid, message).at(field),
    ])
}

/// A trimmed name of 1 to [`NAME_MAX`] characters, or a 400 naming `field`.
fn check_name<'a>(value: &'a str, field: &str) -> Result<&'a str, EngineError> {
    let value = value.trim();
    if value.is_empty() || value.chars().count() > NAME_MAX {
        return Err(invalid_at(field, &format!("{field} must be 1 to {NAME_MAX} characters")));
    }
    Ok(value)
}

/// The lower-cased email, if it looks like one (`local@domain`, 3 to 72 bytes, no spaces).
fn check_email(email: &str) -> Result<String, EngineError> {
    let email = email.trim().to_lowercase();
    let well_formed = (3..=EMAIL_MAX).contains(&email.len())
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && !domain.is_empty() && !domain.contains('@')
        });
    if well_formed {
        Ok(email)
    } else {
        Err(invalid_at("email", "A valid email address of 3 to 72 characters is required"))
    }
}

impl Engine {
    /// Who may register on this server. Set once, at start ([`Engine::set_registration`]).
    pub fn registration(&self) -> Registration {
        self.auth().registration.get().copied().unwrap_or_default()
    }

    /// Sets who may register (`kiln serve --registration`). Only the first call counts.
    pub fn set_registration(&self, registration: Registration) {
        let _ = self.auth().registration.set(registration);
    }

    /// Waits out the throttle of `keys`, then counts one more attempt against each.
    async fn throttle_attempt(&self, keys: &[String]) {
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        self.throttle_wait(&keys).await;
        self.throttle_fail(&keys).await;
    }

    /// A live Project, or 404.
    async fn live_project(&self, project_id: &str) -> Result<Value, EngineError> {
        let project = ProjectId::new(project_id);
        match self.read_live(&project, "Project", project_id).await? {
            Some(stored) => parse_body(&stored),
            None => Err(EngineError::NotFound(format!("Project {project_id} not found"))),
        }
    }

    /// The project's `defaultPatientAccessPolicy` (a Reference to one of its AccessPolicies),
    /// or 403: the project does not take patients who register themselves.
    async fn patient_policy(&self, project_id: &str) -> Result<Value, EngineError> {
        if self.registration() == Registration::Off {
            return Err(forbidden("Registration is disabled on this server"));
        }
        let project = self.live_project(project_id).await?;
        // Every member of a super-admin project is a super admin: nobody joins one by himself.
        if project["superAdmin"] == json!(true) {
            return Err(forbidden("This project does not allow open registration"));
        }
        let Some(policy) = project.get("defaultPatientAccessPolicy").cloned() else {
            return Err(forbidden("This project does not allow open registration"));
        };
        self.check_policy(&ProjectId::new(project_id), &policy).await.map_err(|_| {
            forbidden("This project's defaultPatientAccessPolicy is not one of its policies")
        })?;
        Ok(policy)
    }

    /// `POST /auth/newuser`: a User (server-wide, or of `projectId`) and a Login bound to no
    /// membership yet. Returns `{login}`.
    pub async fn new_user(
        &self,
        req: NewUserRequest,
        client: ClientInfo,
    ) -> Result<Value, EngineError> {
        let project_id = req.project_id.clone().filter(|p| !p.is_empty() && p != "new");
        let client_id = req.client_id.clone().filter(|c| !c.is_empty());
        // The gate first: a closed server says so before looking at anything else.
        match &project_id {
            Some(project_id) => {
                self.patient_policy(project_id).await?;
            }
            None if self.registration() != Registration::Open => {
                return Err(forbidden("Registration is disabled on this server"));
            }
            None => {}
        }
        let first = check_name(&req.first_name, "firstName")?;
        let last = check_name(&req.last_name, "lastName")?;
        let email = check_email(&req.email)?;
        check_password(&req.password)
            .map_err(|_| invalid_at("password", "The password must be 8 to 72 bytes long"))?;
        if let Some(method) = &req.code_challenge_method
            && method != "S256"
            && method != "plain"
        {
            return Err(EngineError::invalid("codeChallengeMethod must be S256 or plain"));
        }
        if let Some(client_id) = &client_id {
            self.check_client_project(client_id, project_id.as_deref()).await?;
        }
        if let Some(addr) = &client.remote_addr {
            self.throttle_attempt(&[format!("register:{addr}")]).await;
        }
        let (key_name, key) = match &project_id {
            Some(project_id) => (USER_PROJECT_EMAIL, format!("{project_id}/{email}")),
            None => (USER_EMAIL, email.clone()),
        };
        let already = || EngineError::Conflict("Email already registered".into());
        if self.store().lookup_unique(&ProjectId::system(), key_name, &key).await?.is_some() {
            return Err(already());
        }
        let user_id = new_id();
        let mut user = json!({
            "resourceType": "User",
            "id": user_id,
            "firstName": first,
            "lastName": last,
            "email": email,
            "emailVerified": false,
            "passwordHash": hash_password(&req.password).await?,
        });
        if let Some(project_id) = &project_id {
            user["project"] = json!({ "reference": format!("Project/{project_id}") });
        }
        let mut login = json!({
            "resourceType": "Login",
            "id": new_id(),
            "user": {"reference": format!("User/{user_id}"), "display": email},
            "authMethod": "password",
            "authTime": format_instant(Utc::now()),
            "scope": req.scope.clone().filter(|s| !s.trim().is_empty()).unwrap_or_else(|| "openid".into()),
            "granted": false,
            "revoked": false,
        });
        if let Some(challenge) = req.code_challenge.as_deref().filter(|c| !c.is_empty()) {
            login["codeChallenge"] = json!(challenge);
            login["codeChallengeMethod"] =
                json!(req.code_challenge_method.clone().unwrap_or_else(|| "plain".into()));
        }
        if let Some(nonce) = &req.nonce {
            login["nonce"] = json!(nonce);
        }
        if let Some(addr) = &client.remote_addr {
            login["remoteAddress"] = json!(addr);
        }
        if let Some(agent) = client.user_agent.as_deref().filter(|a| !a.is_empty()) {
            login["userAgent"] = json!(agent);
        }
        if let Some(client_id) = &client_id {
            login["client"] = json!({ "reference": format!("ClientApplication/{client_id}") });
        }
        let keys = account_keys(&user);
        // One transaction: a User whose Login failed would hold the email for nothing.
        let stored = self
            .put_accounts(
                &system(),
                vec![
                    (user, Precondition::MustNotExist, keys),
                    (login, Precondition::MustNotExist, vec![]),
                ],
            )
            .await
            .map_err(|e| match e {
                EngineError::Conflict(_) => already(),
                other => other,
            })?;
        let login = stored
            .last()
            .ok_or_else(|| EngineError::Internal("registration wrote no login".into()))?;
        Ok(json!({ "login": login.id }))
    }

    /// 400 unless `client_id` is a live ClientApplication (of `project_id`, when one is given).
    async fn check_client_project(
        &self,
        client_id: &str,
        project_id: Option<&str>,
    ) -> Result<(), EngineError> {
        let unknown = || invalid_at("clientId", "Unknown client application");
        if !kiln_model::is_valid_id(client_id) {
            return Err(unknown());
        }
        let reference = format!("ClientApplication/{client_id}");
        let found = self
            .store()
            .lookup_key_all_projects(crate::accounts::MEMBERSHIP_USER, &reference)
            .await?;
        let [(project, _, _)] = found.as_slice() else { return Err(unknown()) };
        if self.read_live(project, "ClientApplication", client_id).await?.is_none() {
            return Err(unknown());
        }
        if project_id.is_some_and(|p| p != project.as_str()) {
            return Err(EngineError::invalid("Client and project do not match"));
        }
        Ok(())
    }

    /// The Login of a registration in progress, with its User: live, recent, not yet bound
    /// to a membership or granted, its second factor (if any) verified.
    async fn pending_login(&self, login_id: &str) -> Result<(Value, Value), EngineError> {
        let login = self.live_login(login_id).await?;
        if login["granted"] == json!(true) || login.get("membership").is_some() {
            return Err(EngineError::invalid("Login already has a membership"));
        }
        require_mfa_verified(&login)?;
        let auth_time = crate::accounts::instant_secs(&login["authTime"]);
        if auth_time.is_none_or(|t| Utc::now().timestamp() - t > PENDING_LOGIN_SECS) {
            return Err(EngineError::invalid("Login expired: sign in again"));
        }
        let user_id = login["user"]["reference"]
            .as_str()
            .and_then(|r| r.strip_prefix("User/"))
            .ok_or_else(|| EngineError::invalid("This login has no user"))?;
        let user = match self.read_live(&ProjectId::system(), "User", user_id).await? {
            Some(stored) => parse_body(&stored)?,
            None => return Err(EngineError::NotFound("User not found".into())),
        };
        Ok((login, user))
    }

    /// `POST /auth/newproject`: a Project owned by the registering user, a Practitioner
    /// profile and an admin membership (one transaction), then the Login bound to it.
    /// Returns `{login, code}`.
    pub async fn new_project(&self, req: NewProjectRequest) -> Result<Value, EngineError> {
        if self.registration() != Registration::Open {
            return Err(forbidden("Registration is disabled on this server"));
        }
        let name = check_name(&req.project_name, "projectName")?;
        let (login, user) = self.pending_login(&req.login).await?;
        if user.get("project").is_some() {
            return Err(EngineError::invalid(
                "A user of one project cannot create projects; register without a projectId",
            ));
        }
        let user_id = user["id"].as_str().unwrap_or_default();
        let email = user["email"].as_str().unwrap_or_default();
        let first = user["firstName"].as_str().unwrap_or_default();
        let last = user["lastName"].as_str().unwrap_or_default();
        let (project_id, practitioner_id) = (new_id(), new_id());
        let project = ProjectId::new(project_id.clone());
        let membership = json!({
            "resourceType": "ProjectMembership",
            "id": new_id(),
            "project": {"reference": format!("Project/{project_id}")},
            "user": {"reference": format!("User/{user_id}"), "display": email},
            "profile": {"reference": format!("Practitioner/{practitioner_id}"),
                        "display": format!("{first} {last}")},
            "admin": true,
        });
        let keys = account_keys(&membership);
        let ctx = RequestContext {
            author: Some(format!("Practitioner/{practitioner_id}")),
            ..RequestContext::new(project.clone())
        };
        let stored = self
            .put_accounts(
                &ctx,
                vec![
                    (
                        json!({"resourceType": "Project", "id": project_id, "name": name,
                               "strictMode": true,
                               "owner": {"reference": format!("User/{user_id}")}}),
                        Precondition::MustNotExist,
                        vec![],
                    ),
                    (
                        json!({"resourceType": "Practitioner", "id": practitioner_id,
                               "name": [{"given": [first], "family": last}],
                               "telecom": [{"system": "email", "use": "work", "value": email}]}),
                        Precondition::MustNotExist,
                        vec![],
                    ),
                    (membership, Precondition::MustNotExist, keys),
                ],
            )
            .await?;
        let membership = parse_body(
            stored.last().ok_or_else(|| EngineError::Internal("no membership written".into()))?,
        )?;
        self.grant_code(login, &project, &membership).await
    }

    /// `POST /auth/newpatient`: a Patient profile and a membership with the project's
    /// `defaultPatientAccessPolicy` for a user registered into that project, then the Login
    /// bound to it. Returns `{login, code}`.
    pub async fn new_patient(&self, req: NewPatientRequest) -> Result<Value, EngineError> {
        let project_id = req.project_id.trim();
        if project_id.is_empty() {
            return Err(invalid_at("projectId", "projectId is required"));
        }
        let policy = self.patient_policy(project_id).await?;
        let (login, user) = self.pending_login(&req.login).await?;
        let project_ref = format!("Project/{project_id}");
        if user["project"]["reference"].as_str() != Some(&project_ref) {
            return Err(EngineError::invalid(
                "The user must be registered into this project (newuser with its projectId)",
            ));
        }
        let user_id = user["id"].as_str().unwrap_or_default();
        let email = user["email"].as_str().unwrap_or_default();
        let first = user["firstName"].as_str().unwrap_or_default();
        let last = user["lastName"].as_str().unwrap_or_default();
        let patient_id = new_id();
        let membership = json!({
            "resourceType": "ProjectMembership",
            "id": new_id(),
            "project": {"reference": project_ref},
            "user": {"reference": format!("User/{user_id}"), "display": email},
            "profile": {"reference": format!("Patient/{patient_id}"),
                        "display": format!("{first} {last}")},
            "accessPolicy": policy,
        });
        let keys = account_keys(&membership);
        let project = ProjectId::new(project_id);
        let ctx = RequestContext {
            author: Some(format!("Patient/{patient_id}")),
            ..RequestContext::new(project.clone())
        };
        let stored = self
            .put_accounts(
                &ctx,
                vec![
                    (
                        json!({"resourceType": "Patient", "id": patient_id,
                               "name": [{"given": [first], "family": last}],
                               "telecom": [{"system": "email", "use": "home", "value": email}]}),
                        Precondition::MustNotExist,
                        vec![],
                    ),
                    (membership, Precondition::MustNotExist, keys),
                ],
            )
            .await
            .map_err(|e| match e {
                EngineError::Conflict(_) => {
                    EngineError::Conflict("This user is already a member of the project".into())
                }
                other => other,
            })?;
        self.forget_access(&project);
        let membership = parse_body(
            stored.last().ok_or_else(|| EngineError::Internal("no membership written".into()))?,
        )?;
        self.grant_code(login, &project, &membership).await
    }

    /// `POST /auth/resetpassword`: when the email has an account (in `projectId`'s scope, or
    /// server-wide), a one-time `reset` request and its link by mail. The answer is the same
    /// either way and comes before the lookup, so neither content nor timing tells whether the
    /// account exists.
    pub async fn reset_password(
        &self,
        req: ResetPasswordRequest,
        client: ClientInfo,
    ) -> Result<(), EngineError> {
        let email = check_email(&req.email)?;
        let project_id = req.project_id.clone().filter(|p| !p.is_empty());
        if project_id.as_deref().is_some_and(|p| !kiln_model::is_valid_id(p)) {
            return Err(invalid_at("projectId", "Invalid projectId"));
        }
        let mut keys = vec![format!("reset:{email}")];
        if let Some(addr) = &client.remote_addr {
            keys.push(format!("reset-ip:{addr}"));
        }
        self.throttle_attempt(&keys).await;
        let engine = self.clone();
        tokio::spawn(async move {
            if let Err(e) = engine.mail_reset_link(&email, project_id.as_deref()).await {
                tracing::error!(error = %e, "password reset failed");
            }
        });
        Ok(())
    }

    /// The work of a reset request: find the user, write the request, mail the link.
    async fn mail_reset_link(
        &self,
        email: &str,
        project_id: Option<&str>,
    ) -> Result<(), EngineError> {
        let (key_name, key) = match project_id {
            Some(project_id) => (USER_PROJECT_EMAIL, format!("{project_id}/{email}")),
            None => (USER_EMAIL, email.to_owned()),
        };
        let system_project = ProjectId::system();
        let Some((_, user_id)) =
            self.store().lookup_unique(&system_project, key_name, &key).await?
        else {
            return Ok(());
        };
        let Some(stored) = self.read_live(&system_project, "User", &user_id).await? else {
            return Ok(());
        };
        let user = parse_body(&stored)?;
        let link = self.security_request(&user_id, "reset").await?;
        let first = user["firstName"].as_str().unwrap_or("there");
        let text = format!(
            "Hello {first},\n\nSomeone asked to reset your password. Set a new one here (the \
             link works once, for 48 hours):\n\n{link}\n\nIf it was not you, ignore this mail; \
             your password stays as it is.\n"
        );
        self.send_mail(email, "Reset your password", &text, Some(&link)).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_checked_and_lower_cased() {
        assert_eq!(check_email(" Ann@Example.COM ").unwrap(), "ann@example.com");
        for bad in ["", "a", "@example.com", "ann@", "ann example@x.org", "a@b@c", &"a".repeat(80)]
        {
            assert!(check_email(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(check_name("  Ann ", "firstName").unwrap(), "Ann");
        assert!(check_name("   ", "firstName").is_err());
        assert!(check_name(&"é".repeat(129), "firstName").is_err());
        assert!(check_name(&"é".repeat(128), "firstName").is_ok());
    }
}
