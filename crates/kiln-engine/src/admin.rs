//! Project administration with Medplum's contract (`/admin/projects/{id}/…`): invitations
//! ([`Engine::invite`]), client applications ([`Engine::create_client`],
//! [`Engine::rotate_secret`]), the members overview and membership edits; and the password
//! flows that go with invitations: [`Engine::set_password`] (a one-time
//! `UserSecurityRequest` secret from a mail) and [`Engine::change_password`].
//!
//! Every admin call is checked by [`Engine::require_project_admin`]: the caller's membership
//! in that project has `admin: true`, or the caller is a super admin. These calls act with
//! the server's authority inside the project (they read and write accounts directly, as
//! Medplum's system repository does), not through the caller's access policy.
//!
//! Mail: when a mail outbox is configured ([`Engine::set_mail_outbox`], `kiln serve` uses
//! `<data dir>/outbox`), each mail is appended as one JSON line to `mail.jsonl` there; every
//! mail is also logged at INFO. There is no SMTP delivery yet.

use std::path::PathBuf;

use chrono::Utc;
use kiln_auth::{constant_time_eq, hash_secret, random_token};
use kiln_store::{Precondition, ProjectId, SearchRequest, StoredResource, WriteOp};
use serde_json::{Map, Value, json};

use crate::accounts::{
    Authenticated, MEMBERSHIP_USER, USER_EMAIL, USER_PROJECT_EMAIL, hash_password, parse_body,
    verify_password,
};
use crate::rest::new_id;
use crate::{Engine, EngineError, RequestContext};

/// How long a set-password link stays valid.
const SECURITY_REQUEST_TTL_HOURS: i64 = 48;
/// Passwords are 8 to 72 bytes (Medplum's rule; bcrypt's limit).
const PASSWORD_MIN: usize = 8;
const PASSWORD_MAX: usize = 72;
/// Most members listed by the project overview.
const MAX_MEMBERS: usize = 10_000;

/// The body of `POST /admin/projects/{id}/invite` (Medplum's `InviteRequest`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(default)]
pub struct InviteRequest {
    /// `Practitioner` (default), `Patient` or `RelatedPerson`.
    pub resource_type: Option<String>,
    pub first_name: String,
    pub last_name: String,
    pub email: Option<String>,
    /// Set by the admin; only used when the invitation creates the User.
    pub password: Option<String>,
    pub send_email: Option<bool>,
    pub admin: Option<bool>,
    pub access_policy: Option<Value>,
    /// A partial ProjectMembership merged into the new one (`access`, `accessPolicy`, `admin`,
    /// `userName`, `externalId`, …).
    pub membership: Option<Value>,
    /// Update the membership when the user is already a member, instead of a 409.
    pub upsert: Option<bool>,
    /// `server` (a User that may join other projects) or `project` (a User of this project
    /// only). Default: `project` for a Patient, `server` otherwise.
    pub scope: Option<String>,
}

/// The body of `POST /admin/projects/{id}/client`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(default)]
pub struct ClientRequest {
    pub name: String,
    pub description: Option<String>,
    pub redirect_uri: Option<String>,
    pub redirect_uris: Option<Vec<String>>,
    pub access_policy: Option<Value>,
    /// The app's SMART EHR launch URL (`ClientApplication.launchUri`).
    pub launch_uri: Option<String>,
    /// Where the app's public keys are (`private_key_jwt`).
    pub jwks_uri: Option<String>,
    /// A public client (a browser or native app that cannot keep a secret): no secret is
    /// made; it authenticates by PKCE alone.
    pub public: Option<bool>,
}

/// The body of `POST /auth/setpassword`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct SetPasswordRequest {
    pub id: String,
    pub secret: String,
    pub password: String,
}

/// The body of `POST /auth/changepassword`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangePasswordRequest {
    #[serde(default)]
    pub old_password: String,
    #[serde(default)]
    pub new_password: String,
}

fn system() -> RequestContext {
    RequestContext::new(ProjectId::system())
}

pub(crate) fn check_password(password: &str) -> Result<(), EngineError> {
    if (PASSWORD_MIN..=PASSWORD_MAX).contains(&password.len()) {
        Ok(())
    } else {
        Err(EngineError::invalid(format!(
            "The password must be {PASSWORD_MIN} to {PASSWORD_MAX} bytes long"
        )))
    }
}

pub(crate) fn version_of(stored: &StoredResource) -> Precondition {
    Precondition::VersionIs(stored.version)
}

fn user_keys(user: &Value) -> Vec<(String, String)> {
    crate::accounts::account_keys(user)
}

fn membership_keys(membership: &Value) -> Vec<(String, String)> {
    crate::accounts::account_keys(membership)
}

/// Drops the fields a client may not choose in a membership template.
fn membership_template(template: Option<&Value>) -> Result<Map<String, Value>, EngineError> {
    let mut fields = match template {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(fields)) => fields.clone(),
        Some(_) => return Err(EngineError::invalid("'membership' must be a JSON object")),
    };
    for key in ["resourceType", "id", "meta", "project", "user", "profile", "invitedBy"] {
        fields.remove(key);
    }
    Ok(fields)
}

impl Engine {
    /// Where mails go besides the log: `<dir>/mail.jsonl`. Set once, at start.
    pub fn set_mail_outbox(&self, dir: PathBuf) {
        let _ = self.auth().outbox.set(dir);
    }

    /// Delivers every mail through `sender` too (SMTP). Set once, at start.
    pub fn set_mail_sender(&self, sender: std::sync::Arc<dyn crate::mail::MailSender>) {
        let _ = self.auth().mail_sender.set(sender);
    }

    /// Creates an empty Project (no members yet: a super admin invites its first admin).
    /// `owner` is a User id. Returns the Project.
    pub async fn create_project(
        &self,
        name: &str,
        owner: Option<&str>,
    ) -> Result<Value, EngineError> {
        let id = new_id();
        let mut project = json!({"resourceType": "Project", "id": id, "name": name});
        if let Some(owner) = owner {
            project["owner"] = json!({"reference": format!("User/{owner}")});
        }
        let ctx = RequestContext::new(ProjectId::new(id));
        let stored = self.put_account(&ctx, project, Precondition::MustNotExist, vec![]).await?;
        parse_body(&stored)
    }

    /// `POST /admin/projects` `{name}` (super admins): a new, empty Project owned by the
    /// caller. Its first admin is then invited (`/admin/projects/{id}/invite`, `admin: true`).
    pub async fn create_project_as(
        &self,
        who: &Authenticated,
        body: &Value,
    ) -> Result<Value, EngineError> {
        if !who.super_admin {
            return Err(EngineError::Forbidden("Only a super admin creates projects here".into()));
        }
        let name = body["name"].as_str().map(str::trim).unwrap_or_default();
        if name.is_empty() || name.len() > 128 {
            return Err(EngineError::invalid("A project needs a name (1 to 128 characters)"));
        }
        self.create_project(name, who.user_id.as_deref()).await
    }

    /// 403 unless `who` administers `project_id` (or is a super admin); 404 if the project
    /// does not exist. Returns the Project.
    pub async fn require_project_admin(
        &self,
        who: &Authenticated,
        project_id: &str,
    ) -> Result<Value, EngineError> {
        if !(who.super_admin || (who.admin && who.project.as_str() == project_id)) {
            return Err(EngineError::Forbidden(
                "Only an administrator of this project may do this".into(),
            ));
        }
        let not_found = || EngineError::NotFound(format!("Project {project_id} not found"));
        if !kiln_model::is_valid_id(project_id) {
            return Err(not_found());
        }
        match self.store().read(&ProjectId::new(project_id), "Project", project_id).await {
            Ok(stored) if !stored.deleted => parse_body(&stored),
            Ok(_) | Err(kiln_store::StoreError::NotFound { .. }) => Err(not_found()),
            Err(e) => Err(e.into()),
        }
    }

    /// A live resource of `project`, or `None`.
    pub(crate) async fn read_live(
        &self,
        project: &ProjectId,
        ty: &str,
        id: &str,
    ) -> Result<Option<StoredResource>, EngineError> {
        if !kiln_model::is_valid_id(id) {
            return Ok(None);
        }
        match self.store().read(project, ty, id).await {
            Ok(stored) if !stored.deleted => Ok(Some(stored)),
            Ok(_) | Err(kiln_store::StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// 400 unless `reference` (a Reference JSON) names an AccessPolicy of `project`.
    pub(crate) async fn check_policy(
        &self,
        project: &ProjectId,
        reference: &Value,
    ) -> Result<(), EngineError> {
        let id = reference["reference"].as_str().and_then(|r| r.strip_prefix("AccessPolicy/"));
        let exists = match id {
            Some(id) => self.read_live(project, "AccessPolicy", id).await?.is_some(),
            None => false,
        };
        if exists {
            Ok(())
        } else {
            Err(EngineError::invalid(format!(
                "Access policy {} is not an AccessPolicy of this project",
                reference["reference"].as_str().unwrap_or("(no reference)")
            )))
        }
    }

    /// Every access policy a membership names must be one of its project's.
    async fn check_membership_policies(
        &self,
        project: &ProjectId,
        membership: &Map<String, Value>,
    ) -> Result<(), EngineError> {
        if let Some(policy) = membership.get("accessPolicy") {
            self.check_policy(project, policy).await?;
        }
        for access in membership.get("access").and_then(Value::as_array).into_iter().flatten() {
            self.check_policy(project, &access["policy"]).await?;
        }
        Ok(())
    }

    /// `POST /admin/projects/{id}/invite`: creates (or reuses) the User, creates the profile
    /// resource and the membership, and mails a set-password link when asked. Returns the
    /// membership. A user who is already a member is a 409, unless `upsert`.
    pub async fn invite(
        &self,
        who: &Authenticated,
        project_id: &str,
        req: InviteRequest,
    ) -> Result<Value, EngineError> {
        self.require_project_admin(who, project_id).await?;
        let project = ProjectId::new(project_id);
        let resource_type = req.resource_type.as_deref().unwrap_or("Practitioner");
        if !matches!(resource_type, "Practitioner" | "Patient" | "RelatedPerson") {
            return Err(EngineError::invalid(
                "resourceType must be Practitioner, Patient or RelatedPerson",
            ));
        }
        let (first, last) = (req.first_name.trim(), req.last_name.trim());
        if first.is_empty() || last.is_empty() {
            return Err(EngineError::invalid("firstName and lastName are required"));
        }
        let email = req.email.as_deref().map(|e| e.trim().to_lowercase()).unwrap_or_default();
        if email.is_empty() || !email.contains('@') {
            return Err(EngineError::invalid("A valid email is required"));
        }
        if let Some(password) = &req.password {
            check_password(password)?;
        }
        let project_scoped = match req.scope.as_deref() {
            None => resource_type == "Patient",
            Some("project") => true,
            Some("server") => false,
            Some(other) => {
                return Err(EngineError::invalid(format!(
                    "scope must be 'project' or 'server', not '{other}'"
                )));
            }
        };
        let mut template = membership_template(req.membership.as_ref())?;
        if let Some(admin) = req.admin {
            template.insert("admin".into(), json!(admin));
        }
        if let Some(policy) = req.access_policy.clone().filter(|p| !p.is_null()) {
            template.insert("accessPolicy".into(), policy);
        }
        self.check_membership_policies(&project, &template).await?;

        // The User: found by email in its scope, or created.
        let system_project = ProjectId::system();
        let (key_name, key) = if project_scoped {
            (USER_PROJECT_EMAIL, format!("{project_id}/{email}"))
        } else {
            (USER_EMAIL, email.clone())
        };
        let existing = match self.store().lookup_unique(&system_project, key_name, &key).await? {
            Some((_, id)) => self.read_live(&system_project, "User", &id).await?,
            None => None,
        };
        let user_id = match &existing {
            Some(stored) => stored.id.clone(),
            None => new_id(),
        };
        let user_ref = format!("User/{user_id}");

        // Already a member?
        if let Some((_, membership_id)) =
            self.store().lookup_unique(&project, MEMBERSHIP_USER, &user_ref).await?
            && let Some(stored) =
                self.read_live(&project, "ProjectMembership", &membership_id).await?
        {
            if req.upsert != Some(true) {
                return Err(EngineError::Conflict(
                    "This user is already a member of the project".into(),
                ));
            }
            let mut membership = parse_body(&stored)?;
            if let Value::Object(fields) = &mut membership {
                fields.extend(template);
            }
            let keys = membership_keys(&membership);
            let stored = self
                .put_account(&self.admin_ctx(who, &project), membership, version_of(&stored), keys)
                .await?;
            self.forget_access(&project);
            return parse_body(&stored);
        }

        if existing.is_none() {
            let mut user = json!({
                "resourceType": "User",
                "id": user_id,
                "firstName": first,
                "lastName": last,
                "email": email,
                "emailVerified": false,
            });
            if project_scoped {
                user["project"] = json!({"reference": format!("Project/{project_id}")});
            }
            if let Some(password) = &req.password {
                user["passwordHash"] = json!(hash_password(password).await?);
            }
            let keys = user_keys(&user);
            self.put_account(&system(), user, Precondition::MustNotExist, keys).await.map_err(
                |e| match e {
                    EngineError::Conflict(_) => {
                        EngineError::Conflict("A user with this email was just created".into())
                    }
                    other => other,
                },
            )?;
        }

        // The profile and the membership, in one transaction.
        let profile_id = new_id();
        let display = format!("{first} {last}");
        let profile = json!({
            "resourceType": resource_type,
            "id": profile_id,
            "name": [{"given": [first], "family": last}],
            "telecom": [{"system": "email", "use": "work", "value": email}],
        });
        let mut membership = Map::new();
        membership.insert("resourceType".into(), json!("ProjectMembership"));
        membership.insert("id".into(), json!(new_id()));
        membership.insert("project".into(), json!({"reference": format!("Project/{project_id}")}));
        membership.insert("invitedBy".into(), json!({"reference": who.actor()}));
        membership.insert("user".into(), json!({"reference": user_ref, "display": email}));
        membership.insert(
            "profile".into(),
            json!({"reference": format!("{resource_type}/{profile_id}"), "display": display}),
        );
        membership.extend(template);
        let membership = Value::Object(membership);
        let keys = membership_keys(&membership);
        let stored = self
            .put_accounts(
                &self.admin_ctx(who, &project),
                vec![
                    (profile, Precondition::MustNotExist, vec![]),
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
        let membership = stored
            .last()
            .ok_or_else(|| EngineError::Internal("invite wrote no membership".into()))?;
        if req.send_email == Some(true) {
            // A set-password link only for a User without a password (new, or never set):
            // an admin's invitation must not become a way to reset someone's password.
            let has_password = existing
                .as_ref()
                .map(parse_body)
                .transpose()?
                .is_some_and(|user| user.get("passwordHash").is_some());
            if has_password {
                let text = format!(
                    "Hello {first},\n\nYou were added to project {project_id}. Sign in with your \
                     existing password.\n"
                );
                self.send_mail(&email, "You were added to a project", &text, None).await;
            } else {
                self.send_invite_mail(&user_id, &email, first, project_id).await?;
            }
        }
        parse_body(membership)
    }

    /// The context of an admin write in `project`: attributed to the admin.
    fn admin_ctx(&self, who: &Authenticated, project: &ProjectId) -> RequestContext {
        // Admin calls act with the server's authority (the route checked the caller is an
        // admin of this project), as Medplum's system repository does.
        RequestContext {
            project: project.clone(),
            author: Some(who.profile.clone()),
            access: std::sync::Arc::new(crate::Access::internal()),
            extended: who.extended,
        }
    }

    /// Creates a one-time set-password request (`UserSecurityRequest` of `kind` `invite` or
    /// `reset`, its secret stored as a SHA-256) and returns the link that redeems it.
    pub(crate) async fn security_request(
        &self,
        user_id: &str,
        kind: &str,
    ) -> Result<String, EngineError> {
        let secret = random_token(32);
        let expires = Utc::now() + chrono::Duration::hours(SECURITY_REQUEST_TTL_HOURS);
        let request = json!({
            "resourceType": "UserSecurityRequest",
            "id": new_id(),
            "type": kind,
            "user": {"reference": format!("User/{user_id}")},
            "secret": hash_secret(&secret),
            "used": false,
            "expiresAt": kiln_store::format_instant(expires),
        });
        let stored =
            self.put_account(&system(), request, Precondition::MustNotExist, vec![]).await?;
        Ok(self.base_url().join(&format!("setpassword/{}/{secret}", stored.id)))
    }

    /// Creates a one-time set-password request for the user and mails its link.
    async fn send_invite_mail(
        &self,
        user_id: &str,
        email: &str,
        first_name: &str,
        project_id: &str,
    ) -> Result<(), EngineError> {
        let link = self.security_request(user_id, "invite").await?;
        let text = format!(
            "Hello {first_name},\n\nYou were invited to project {project_id}. Set your password \
             here (the link works once, for {SECURITY_REQUEST_TTL_HOURS} hours):\n\n{link}\n"
        );
        self.send_mail(email, "Welcome: set your password", &text, Some(&link)).await;
        Ok(())
    }

    /// Logs a mail at INFO and appends it to the outbox, if there is one. A failure to write
    /// the outbox is logged; the link is in the log either way.
    pub(crate) async fn send_mail(&self, to: &str, subject: &str, text: &str, link: Option<&str>) {
        tracing::info!(to, subject, link = link.unwrap_or_default(), "mail");
        if let Some(sender) = self.auth().mail_sender.get() {
            let mail = crate::mail::Mail {
                to: to.to_owned(),
                subject: subject.to_owned(),
                text: text.to_owned(),
            };
            match tokio::time::timeout(std::time::Duration::from_secs(30), sender.send(&mail)).await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(to, error = %e, "mail not delivered"),
                Err(_) => tracing::warn!(to, "mail not delivered: timed out"),
            }
        }
        let Some(dir) = self.auth().outbox.get().cloned() else { return };
        let line = json!({
            "time": kiln_store::format_instant(Utc::now()),
            "to": to,
            "subject": subject,
            "text": text,
            "link": link,
        })
        .to_string();
        let engine = self.clone();
        let result = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::Write;
            let _guard = engine.auth().outbox_lock.lock().unwrap_or_else(|e| e.into_inner());
            std::fs::create_dir_all(&dir)?;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("mail.jsonl"))?;
            file.write_all(format!("{line}\n").as_bytes())?;
            file.sync_data()
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "could not write the mail outbox"),
            Err(e) => tracing::error!(error = %e, "could not write the mail outbox"),
        }
    }

    /// `POST /auth/setpassword`: redeems a `UserSecurityRequest` of type `invite` or `reset`
    /// (once, before it expires) and sets the user's password.
    pub async fn set_password(&self, req: SetPasswordRequest) -> Result<(), EngineError> {
        let invalid = || EngineError::invalid("Invalid or expired password link");
        let system_project = ProjectId::system();
        let Some(stored) = self.read_live(&system_project, "UserSecurityRequest", &req.id).await?
        else {
            return Err(invalid());
        };
        let mut request = parse_body(&stored)?;
        let secret_ok = request["secret"]
            .as_str()
            .is_some_and(|hash| constant_time_eq(hash, hash_secret(&req.secret)));
        let kind_ok = matches!(request["type"].as_str(), Some("invite" | "reset"));
        if !secret_ok || !kind_ok || request["used"] == json!(true) {
            return Err(invalid());
        }
        let expires = crate::accounts::instant_secs(&request["expiresAt"]);
        if expires.is_none_or(|t| t <= Utc::now().timestamp()) {
            return Err(invalid());
        }
        check_password(&req.password)?;
        let user_id = request["user"]["reference"]
            .as_str()
            .and_then(|r| r.strip_prefix("User/"))
            .map(str::to_owned)
            .ok_or_else(invalid)?;
        let hash = hash_password(&req.password).await?;
        // Spend the request first, conditional on the version read: it works once.
        request["used"] = json!(true);
        self.put_account(&system(), request, version_of(&stored), vec![]).await.map_err(
            |e| match e {
                EngineError::PreconditionFailed(_) => invalid(),
                other => other,
            },
        )?;
        self.update_password_hash(&user_id, hash).await
    }

    /// Writes a new password hash into a User, keeping its unique keys.
    pub(crate) async fn update_password_hash(
        &self,
        user_id: &str,
        hash: String,
    ) -> Result<(), EngineError> {
        let system_project = ProjectId::system();
        let Some(stored) = self.read_live(&system_project, "User", user_id).await? else {
            return Err(EngineError::NotFound("User not found".into()));
        };
        let mut user = parse_body(&stored)?;
        user["passwordHash"] = json!(hash);
        let keys = user_keys(&user);
        self.put_account(&system(), user, version_of(&stored), keys).await?;
        Ok(())
    }

    /// `POST /auth/changepassword`: the signed-in user's password, given the old one.
    pub async fn change_password(
        &self,
        who: &Authenticated,
        req: ChangePasswordRequest,
    ) -> Result<(), EngineError> {
        let Some(user_id) = &who.user_id else {
            return Err(EngineError::Forbidden("A client application has no password".into()));
        };
        check_password(&req.new_password)?;
        let Some(stored) = self.read_live(&ProjectId::system(), "User", user_id).await? else {
            return Err(EngineError::NotFound("User not found".into()));
        };
        let user = parse_body(&stored)?;
        if !verify_password(&req.old_password, user["passwordHash"].as_str()).await? {
            return Err(EngineError::Invalid(vec![
                kiln_model::Issue::error(kiln_model::IssueCode::Invalid, "Incorrect password")
                    .at("oldPassword"),
            ]));
        }
        let hash = hash_password(&req.new_password).await?;
        self.update_password_hash(user_id, hash).await
    }

    /// `POST /admin/projects/{id}/client`: a ClientApplication with a generated secret and its
    /// membership (`user` and `profile` both the client). Returns the client, secret included.
    pub async fn create_client(
        &self,
        who: &Authenticated,
        project_id: &str,
        req: ClientRequest,
    ) -> Result<Value, EngineError> {
        self.require_project_admin(who, project_id).await?;
        let project = ProjectId::new(project_id);
        let name = req.name.trim();
        if name.is_empty() {
            return Err(EngineError::invalid("A client application needs a name"));
        }
        let client_id = new_id();
        let mut client = json!({
            "resourceType": "ClientApplication",
            "id": client_id,
            "name": name,
        });
        // A public client gets no secret; nor does one that signs its requests with keys.
        let jwks_uri = req.jwks_uri.as_deref().filter(|u| !u.is_empty());
        let secret = (req.public != Some(true) && jwks_uri.is_none()).then(|| random_token(32));
        if let Some(secret) = &secret {
            client["secret"] = json!(secret);
        }
        if let Some(uri) = jwks_uri {
            client["jwksUri"] = json!(uri);
        }
        if let Some(uri) = req.launch_uri.as_deref().filter(|u| !u.is_empty()) {
            client["launchUri"] = json!(uri);
        }
        if let Some(description) = req.description.as_deref().filter(|d| !d.is_empty()) {
            client["description"] = json!(description);
        }
        let mut uris: Vec<String> = req.redirect_uris.unwrap_or_default();
        if let Some(uri) = req.redirect_uri.filter(|u| !u.is_empty())
            && !uris.contains(&uri)
        {
            uris.push(uri);
        }
        if !uris.is_empty() {
            client["redirectUris"] = json!(uris);
        }
        let client_ref = format!("ClientApplication/{client_id}");
        let mut membership = json!({
            "resourceType": "ProjectMembership",
            "project": {"reference": format!("Project/{project_id}")},
            "invitedBy": {"reference": who.actor()},
            "user": {"reference": client_ref, "display": name},
            "profile": {"reference": client_ref, "display": name},
        });
        if let Some(policy) = req.access_policy.filter(|p| !p.is_null()) {
            self.check_policy(&project, &policy).await?;
            membership["accessPolicy"] = policy;
        }
        let keys = membership_keys(&membership);
        let stored = self
            .put_accounts(
                &self.admin_ctx(who, &project),
                vec![
                    (client, Precondition::MustNotExist, vec![]),
                    (membership, Precondition::MustNotExist, keys),
                ],
            )
            .await?;
        let client = stored
            .first()
            .ok_or_else(|| EngineError::Internal("client creation wrote nothing".into()))?;
        // Only a hash is stored: this answer is the one time the secret is shown.
        let mut client = parse_body(client)?;
        if let Some(secret) = secret {
            client["secret"] = json!(secret);
        }
        Ok(client)
    }

    /// `POST ClientApplication/{id}/$rotate-secret` (a project admin): the current secret
    /// becomes `retiringSecret` (still accepted until the next rotation) and a new `secret` is
    /// generated. Returns the ClientApplication.
    pub async fn rotate_secret(
        &self,
        who: &Authenticated,
        client_id: &str,
    ) -> Result<Value, EngineError> {
        self.require_project_admin(who, who.project.as_str()).await?;
        let Some(stored) = self.read_live(&who.project, "ClientApplication", client_id).await?
        else {
            return Err(EngineError::NotFound(format!(
                "Resource ClientApplication/{client_id} not found"
            )));
        };
        let mut client = parse_body(&stored)?;
        if let Some(old) = client.get("secret").cloned() {
            client["retiringSecret"] = old;
        }
        let secret = random_token(32);
        client["secret"] = json!(secret);
        let stored = self
            .put_account(&self.admin_ctx(who, &who.project), client, version_of(&stored), vec![])
            .await?;
        self.auth().forget_client_secrets();
        self.announce(crate::shared::Change::Credentials);
        // Only hashes are stored: the new secret is shown this once, the retiring one never
        // again.
        let mut client = parse_body(&stored)?;
        client["secret"] = json!(secret);
        if let Value::Object(obj) = &mut client {
            obj.remove("retiringSecret");
        }
        Ok(client)
    }

    /// `GET /admin/projects/{id}`: the Project and a summary of each membership.
    pub async fn project_overview(
        &self,
        who: &Authenticated,
        project_id: &str,
    ) -> Result<Value, EngineError> {
        let project_resource = self.require_project_admin(who, project_id).await?;
        let project = ProjectId::new(project_id);
        let query = kiln_search::parse("ProjectMembership", &[]).map_err(EngineError::Invalid)?;
        let mut request = SearchRequest { query, after: None, count: 1000, total: false };
        let mut members = Vec::new();
        loop {
            let page = self.store().search(&project, &request).await?;
            for stored in &page.matches {
                let m = parse_body(stored)?;
                let mut member = json!({"id": m["id"], "user": m["user"], "profile": m["profile"]});
                for field in ["accessPolicy", "access", "userConfiguration", "admin", "active"] {
                    if let Some(value) = m.get(field) {
                        member[field] = value.clone();
                    }
                }
                members.push(member);
            }
            match page.next {
                Some(next) if members.len() < MAX_MEMBERS => request.after = Some(next),
                _ => break,
            }
        }
        Ok(json!({ "project": project_resource, "members": members }))
    }

    /// A membership of `project_id`, or 404.
    async fn membership(
        &self,
        project: &ProjectId,
        membership_id: &str,
    ) -> Result<StoredResource, EngineError> {
        self.read_live(project, "ProjectMembership", membership_id).await?.ok_or_else(|| {
            EngineError::NotFound(format!("ProjectMembership {membership_id} not found"))
        })
    }

    /// `GET /admin/projects/{id}/members/{mid}`.
    pub async fn get_member(
        &self,
        who: &Authenticated,
        project_id: &str,
        membership_id: &str,
    ) -> Result<Value, EngineError> {
        self.require_project_admin(who, project_id).await?;
        parse_body(&self.membership(&ProjectId::new(project_id), membership_id).await?)
    }

    /// `POST /admin/projects/{id}/members/{mid}`: replaces the membership with `body`; its
    /// `project` and `user` may not change.
    pub async fn update_member(
        &self,
        who: &Authenticated,
        project_id: &str,
        membership_id: &str,
        body: Value,
    ) -> Result<Value, EngineError> {
        self.require_project_admin(who, project_id).await?;
        let project = ProjectId::new(project_id);
        let stored = self.membership(&project, membership_id).await?;
        let current = parse_body(&stored)?;
        let Value::Object(mut fields) = body else {
            return Err(EngineError::invalid("The body must be a ProjectMembership"));
        };
        if fields.get("resourceType").and_then(Value::as_str) != Some("ProjectMembership") {
            return Err(EngineError::invalid("The body must be a ProjectMembership"));
        }
        if fields.get("id").is_some_and(|id| id != membership_id) {
            return Err(EngineError::invalid("The body's id does not match the URL"));
        }
        for field in ["project", "user"] {
            let given = fields.get(field).map(|r| &r["reference"]);
            if given.is_some_and(|r| *r != current[field]["reference"]) {
                return Err(EngineError::invalid(format!(
                    "A membership's {field} cannot be changed"
                )));
            }
            // Omitted: kept as it was.
            fields.insert(field.into(), current[field].clone());
        }
        fields.insert("id".into(), json!(membership_id));
        self.check_membership_policies(&project, &fields).await?;
        let membership = Value::Object(fields);
        let keys = membership_keys(&membership);
        let stored = self
            .put_account(&self.admin_ctx(who, &project), membership, version_of(&stored), keys)
            .await?;
        self.forget_access(&project);
        parse_body(&stored)
    }

    /// `DELETE /admin/projects/{id}/members/{mid}`. Admins cannot remove themselves, and the
    /// project's owner cannot be removed.
    pub async fn delete_member(
        &self,
        who: &Authenticated,
        project_id: &str,
        membership_id: &str,
    ) -> Result<(), EngineError> {
        let project_resource = self.require_project_admin(who, project_id).await?;
        let project = ProjectId::new(project_id);
        let stored = self.membership(&project, membership_id).await?;
        let membership = parse_body(&stored)?;
        let user = membership["user"]["reference"].as_str().unwrap_or_default();
        if who.membership.as_deref() == Some(&format!("ProjectMembership/{membership_id}"))
            || user == who.actor()
        {
            return Err(EngineError::invalid("You cannot delete your own membership"));
        }
        if project_resource["owner"]["reference"].as_str() == Some(user) {
            return Err(EngineError::invalid("The owner of the project cannot be removed"));
        }
        let registry = self.registry(&project).await?;
        let op = WriteOp::Delete {
            resource_type: "ProjectMembership".into(),
            id: membership_id.to_owned(),
            precondition: version_of(&stored),
        };
        self.write_op(&self.admin_ctx(who, &project), op, &registry).await?;
        self.forget_access(&project);
        Ok(())
    }
}
