//! SMART App Launch 2.0.0: the authorization-code flow a browser walks through, the launch
//! contexts it carries, and the discovery documents that describe it.
//!
//! The flow is stateless between pages: every page carries the authorization request's own
//! parameters ([`AuthorizeParams`]) and [`Engine::check_authorize`] validates them again on
//! each step, so nothing half-finished is stored and any node of a cluster can serve any step.
//! The browser is identified by a **session**: a `Login` (`authMethod: password`, no
//! membership, `cookie` = SHA-256 of the cookie's secret, `expiresAt`) made by
//! [`Engine::sign_in`] and found again by [`Engine::browser_session`]. Approving the consent
//! page ([`Engine::approve`]) writes the app's own `Login`: the user's membership in the app's
//! project, the scopes the user left ticked, the PKCE challenge, the launch context (a
//! `SmartAppLaunch`), the exact `redirect_uri` (extension [`REDIRECT_URI_EXT`], which also
//! marks the Login as a SMART grant), and a one-time code. The token endpoint
//! ([`Engine::exchange_code`]) then checks the client, the redirect URI and the verifier.
//!
//! EHR launch: a practitioner (the launch page, or `ClientApplication/{id}/$smart-launch`)
//! makes a `SmartAppLaunch` with the patient and encounter; the app receives its id as the
//! opaque `launch` parameter and hands it back to `/oauth2/authorize`.

use chrono::Utc;
use kiln_auth::{ScopeSet, hash_secret, random_token};
use kiln_store::{Precondition, ProjectId, format_instant};
use serde_json::{Value, json};

use crate::accounts::{instant_secs, parse_body, system};
use crate::rest::new_id;
use crate::{Engine, EngineError, RequestContext};

/// Extension on a `Login` holding the `redirect_uri` of the authorization request that made
/// it. Its presence marks a SMART grant (stricter client checks, refresh tokens only with
/// `offline_access`/`online_access`).
pub const REDIRECT_URI_EXT: &str = "https://kiln.dev/fhir/StructureDefinition/login-redirect-uri";
/// How long a browser session lasts after sign-in.
pub const SESSION_TTL_SECS: i64 = 12 * 3600;
/// How long a `SmartAppLaunch` may wait for the app to come back with it.
const LAUNCH_TTL_SECS: i64 = 3600;
/// Default lifetime of an offline refresh token (renewed by each use).
pub const OFFLINE_TTL_SECS: i64 = 90 * 24 * 3600;
/// Most patients the picker lists at once.
const PICKER_LIMIT: usize = 20;
/// Most apps the launch page offers.
const MAX_APPS: usize = 200;
/// How many of a user's most recent Logins the connected-apps page looks through for grants.
const MAX_LOGINS_SCANNED: usize = 2000;

/// The parameters of an authorization request (RFC 6749 §4.1.1, RFC 7636, SMART), from the
/// query of a GET or the form of a POST.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthorizeParams {
    pub response_type: Option<String>,
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub scope: Option<String>,
    pub state: Option<String>,
    pub aud: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub launch: Option<String>,
    pub nonce: Option<String>,
    /// A parameter that came more than once (RFC 6749 §3.1 forbids it).
    pub repeated: Option<String>,
}

/// The names [`AuthorizeParams`] reads, in the order pages write them back.
pub const AUTHORIZE_PARAM_NAMES: [&str; 10] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "aud",
    "code_challenge",
    "code_challenge_method",
    "launch",
    "nonce",
];

impl AuthorizeParams {
    /// Reads the authorization parameters among `pairs`, ignoring any others.
    pub fn from_pairs(pairs: &[(String, String)]) -> AuthorizeParams {
        let mut out = AuthorizeParams::default();
        for (k, v) in pairs {
            let Some(slot) = out.slot(k) else { continue };
            if slot.is_some() {
                out.repeated.get_or_insert_with(|| k.clone());
                continue;
            }
            *slot = Some(v.clone());
        }
        out
    }

    fn slot(&mut self, name: &str) -> Option<&mut Option<String>> {
        Some(match name {
            "response_type" => &mut self.response_type,
            "client_id" => &mut self.client_id,
            "redirect_uri" => &mut self.redirect_uri,
            "scope" => &mut self.scope,
            "state" => &mut self.state,
            "aud" => &mut self.aud,
            "code_challenge" => &mut self.code_challenge,
            "code_challenge_method" => &mut self.code_challenge_method,
            "launch" => &mut self.launch,
            "nonce" => &mut self.nonce,
            _ => return None,
        })
    }

    /// The parameters that are set, as `(name, value)`: what a page carries to the next step.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let values = [
            &self.response_type,
            &self.client_id,
            &self.redirect_uri,
            &self.scope,
            &self.state,
            &self.aud,
            &self.code_challenge,
            &self.code_challenge_method,
            &self.launch,
            &self.nonce,
        ];
        AUTHORIZE_PARAM_NAMES
            .iter()
            .zip(values)
            .filter_map(|(name, value)| value.as_ref().map(|v| (*name, v.clone())))
            .collect()
    }

    /// `/oauth2/authorize?…` with these parameters (and `extra` ones), URL-encoded.
    pub fn query(&self, extra: &[(&str, &str)]) -> String {
        let mut out = form_urlencoded::Serializer::new(String::new());
        for (k, v) in self.pairs() {
            out.append_pair(k, &v);
        }
        for (k, v) in extra {
            out.append_pair(k, v);
        }
        out.finish()
    }
}

/// Why an authorization request cannot go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizeError {
    /// Shown to the user and never sent to the app: the client or its redirect URI cannot be
    /// trusted, the audience is wrong, or the user cannot continue.
    Page(String),
    /// Sent back to the app's redirect URI (RFC 6749 §4.1.2.1).
    Redirect(String),
}

impl AuthorizeError {
    fn page(message: impl Into<String>) -> AuthorizeError {
        AuthorizeError::Page(message.into())
    }
}

impl From<EngineError> for AuthorizeError {
    fn from(e: EngineError) -> AuthorizeError {
        match e {
            EngineError::Internal(m) => {
                tracing::error!(error = %m, "authorization failed");
                AuthorizeError::page("Something went wrong on the server. Please try again.")
            }
            other => AuthorizeError::Page(other.to_string()),
        }
    }
}

/// `redirect_uri` with `pairs` added to its query.
pub fn redirect_with(redirect_uri: &str, pairs: &[(&str, &str)]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        query.append_pair(k, v);
    }
    let query = query.finish();
    // A fragment has no place in a redirect URI (RFC 6749 §3.1.2): it is dropped.
    let base = redirect_uri.split_once('#').map_or(redirect_uri, |(base, _)| base);
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}{query}")
}

/// A launch context: what `SmartAppLaunch` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LaunchContext {
    /// The `SmartAppLaunch` id (the opaque `launch` value); `None` until stored.
    pub id: Option<String>,
    /// Patient id.
    pub patient: Option<String>,
    /// Encounter id.
    pub encounter: Option<String>,
    /// Other references (`fhirContext`), e.g. `DiagnosticReport/1`.
    pub fhir_context: Vec<String>,
}

impl LaunchContext {
    fn from_resource(resource: &Value) -> LaunchContext {
        let id_of = |field: &str, ty: &str| {
            resource[field]["reference"]
                .as_str()
                .and_then(|r| r.strip_prefix(ty))
                .and_then(|r| r.strip_prefix('/'))
                .map(str::to_owned)
        };
        LaunchContext {
            id: resource["id"].as_str().map(str::to_owned),
            patient: id_of("patient", "Patient"),
            encounter: id_of("encounter", "Encounter"),
            fhir_context: resource["fhirContext"]
                .as_array()
                .map(|refs| {
                    refs.iter().filter_map(|r| r["reference"].as_str().map(str::to_owned)).collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// An authorization request that passed every check of [`Engine::check_authorize`].
#[derive(Debug, Clone)]
pub struct CheckedAuthorize {
    pub params: AuthorizeParams,
    /// The app's project: the user acts through their membership there.
    pub project: ProjectId,
    pub client_id: String,
    /// The app's name, for pages.
    pub client_name: String,
    /// The redirect URI codes and errors go to (registered, matched exactly).
    pub redirect_uri: String,
    /// The scopes asked for, normalised (unknown ones dropped).
    pub scopes: Vec<String>,
    /// The EHR launch context named by `launch`.
    pub launch: Option<LaunchContext>,
}

impl CheckedAuthorize {
    /// A redirect to the app carrying an OAuth error and the request's `state`.
    pub fn error_redirect(&self, error: &str, description: &str) -> String {
        let mut pairs = vec![("error", error), ("error_description", description)];
        if let Some(state) = &self.params.state {
            pairs.push(("state", state));
        }
        redirect_with(&self.redirect_uri, &pairs)
    }

    fn wants(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

/// A signed-in browser.
#[derive(Debug, Clone)]
pub struct BrowserSession {
    pub login_id: String,
    pub user_id: String,
    /// The User's email, for pages.
    pub email: String,
    /// The User's project, for a project-scoped User (e.g. an invited Patient).
    pub user_project: Option<String>,
}

/// The outcome of a sign-in form.
#[derive(Debug, Clone)]
pub enum SignIn {
    /// Signed in: the session cookie's value.
    Session(String),
    /// The password was right; the user's authenticator code is needed (or was wrong).
    NeedsCode,
}

/// One requested scope as the consent page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeItem {
    pub scope: String,
    /// Plain words.
    pub label: String,
    /// Grants access beyond this session (refresh tokens): the page says so.
    pub lasting: bool,
    /// Reaches health data (resource scopes), as opposed to identity and context.
    pub data: bool,
}

/// A patient as the picker and consent pages show one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatientChoice {
    pub id: String,
    pub name: String,
    pub birth_date: Option<String>,
}

/// What the consent page shows.
#[derive(Debug, Clone)]
pub struct Consent {
    pub client_name: String,
    pub email: String,
    /// The acting profile, e.g. `Practitioner/1`.
    pub profile: String,
    pub scopes: Vec<ScopeItem>,
    /// The patient the app will be launched for, when there is one.
    pub patient: Option<PatientChoice>,
    /// `launch/patient` was asked for and no patient is chosen yet: show the picker first.
    pub needs_patient: bool,
    /// The id of the user's membership in the app's project (the grant's).
    membership_id: String,
}

/// Kinds of data in plain words, for the consent page.
fn type_words(ty: &str) -> String {
    let words = match ty {
        "*" => "all kinds of health data",
        "AllergyIntolerance" => "allergies and intolerances",
        "CarePlan" => "care plans",
        "CareTeam" => "care teams",
        "Condition" => "conditions and problems",
        "Coverage" => "insurance coverage",
        "Device" => "implanted devices",
        "DiagnosticReport" => "diagnostic reports",
        "DocumentReference" => "clinical documents and notes",
        "Encounter" => "visits and encounters",
        "Goal" => "goals",
        "Immunization" => "immunizations",
        "Location" => "locations",
        "Medication" => "medications",
        "MedicationDispense" => "medication dispenses",
        "MedicationRequest" => "prescriptions",
        "Observation" => "observations (lab results, vital signs and more)",
        "Organization" => "organizations",
        "Patient" => "demographics (name, birth date, contact details)",
        "Practitioner" => "practitioners",
        "PractitionerRole" => "practitioner roles",
        "Procedure" => "procedures",
        "Provenance" => "provenance (who recorded what)",
        "QuestionnaireResponse" => "questionnaire answers",
        "RelatedPerson" => "related people",
        "ServiceRequest" => "orders and referrals",
        "Specimen" => "specimens",
        _ => return format!("{ty} records"),
    };
    words.to_owned()
}

/// A scope in plain words (`None`: not one Kiln grants, so it is dropped).
pub fn describe_scope(scope: &str) -> Option<ScopeItem> {
    let item = |label: String, lasting: bool, data: bool| ScopeItem {
        scope: scope.to_owned(),
        label,
        lasting,
        data,
    };
    let fixed = match scope {
        "openid" => Some("Confirm who you are (your identity) to the app"),
        "fhirUser" => Some("Know which record in this system is yours"),
        "profile" | "email" => Some("See your name and email address"),
        "launch" => Some("Open with the patient and encounter chosen when it was launched"),
        "launch/patient" => Some("Know which patient's record it works with"),
        "launch/encounter" => Some("Know which encounter it works with"),
        "online_access" => {
            return Some(item("Keep access while you stay signed in here".into(), true, false));
        }
        "offline_access" => {
            return Some(item(
                "Keep access after you close the app or sign out, until you revoke it on the \
                 connected apps page (a refresh token, renewed each time it is used)"
                    .into(),
                true,
                false,
            ));
        }
        _ => None,
    };
    if let Some(label) = fixed {
        return Some(item(label.into(), false, false));
    }
    let rs = kiln_auth::ResourceScope::parse(scope).ok()?;
    let ty = match &rs.resource {
        kiln_auth::ResourceSelector::Any => "*".to_owned(),
        kiln_auth::ResourceSelector::Type(t) => t.clone(),
    };
    if ty != "*" && !kiln_definitions::definitions().is_resource_type(&ty) {
        return None;
    }
    let p = rs.permissions;
    let mut verbs = Vec::new();
    for (flag, verb) in [
        (kiln_auth::Permissions::READ, "read"),
        (kiln_auth::Permissions::SEARCH, "search"),
        (kiln_auth::Permissions::CREATE, "create"),
        (kiln_auth::Permissions::UPDATE, "change"),
        (kiln_auth::Permissions::DELETE, "delete"),
    ] {
        if p.contains(flag) {
            verbs.push(verb);
        }
    }
    if verbs.is_empty() {
        return None;
    }
    let verbs = match verbs.split_last() {
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => return None,
    };
    let whose = match rs.context {
        kiln_auth::ScopeContext::Patient => "of the patient",
        kiln_auth::ScopeContext::User => "that you can access",
        kiln_auth::ScopeContext::System => "in the whole project",
    };
    let mut label = format!("{} {} {whose}", capitalise(&verbs), type_words(&ty));
    if let Some(query) = &rs.query {
        label.push_str(&format!(" (only where {})", query.replace('&', " and ")));
    }
    Some(item(label, false, true))
}

fn capitalise(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// A patient's display name and birth date from its resource.
fn patient_choice(resource: &Value) -> Option<PatientChoice> {
    let id = resource["id"].as_str()?.to_owned();
    let name = resource["name"]
        .as_array()
        .and_then(|names| names.first())
        .map(|n| {
            if let Some(text) = n["text"].as_str() {
                return text.to_owned();
            }
            let given: Vec<&str> = n["given"]
                .as_array()
                .map(|g| g.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let family = n["family"].as_str().unwrap_or_default();
            format!("{} {family}", given.join(" ")).trim().to_owned()
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| format!("Patient {id}"));
    Some(PatientChoice { id, name, birth_date: resource["birthDate"].as_str().map(str::to_owned) })
}

impl Engine {
    /// Validates an authorization request. Errors about the client or its redirect URI, and
    /// a wrong `aud`, are shown to the user; the others go back to the app.
    pub async fn check_authorize(
        &self,
        params: AuthorizeParams,
    ) -> Result<CheckedAuthorize, AuthorizeError> {
        let Some(client_id) = params.client_id.clone().filter(|c| !c.is_empty()) else {
            return Err(AuthorizeError::page("The request does not name an app (client_id)."));
        };
        let (project, _membership, client) = self
            .find_client(&client_id)
            .await
            .map_err(|_| AuthorizeError::page("This app is not registered on this server."))?;
        let mut registered: Vec<&str> = client["redirectUris"]
            .as_array()
            .map(|uris| uris.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(uri) = client["redirectUri"].as_str() {
            registered.push(uri);
        }
        let redirect_uri = match params.redirect_uri.as_deref() {
            Some(uri) if registered.contains(&uri) => uri.to_owned(),
            Some(_) => {
                return Err(AuthorizeError::page(
                    "The app asked to return to an address it has not registered (redirect_uri).",
                ));
            }
            None => match registered.as_slice() {
                [only] => (*only).to_owned(),
                _ => {
                    return Err(AuthorizeError::page(
                        "The request does not say where to return to (redirect_uri).",
                    ));
                }
            },
        };
        if let Some(aud) = params.aud.as_deref() {
            let base = self.base_url().fhir_base();
            if aud.trim_end_matches('/') != base {
                return Err(AuthorizeError::page(format!(
                    "The app asked for access to another server ({aud}); this server is {base}."
                )));
            }
        }
        let client_name =
            client["name"].as_str().filter(|n| !n.is_empty()).unwrap_or(&client_id).to_owned();
        let mut checked = CheckedAuthorize {
            params,
            project,
            client_id,
            client_name,
            redirect_uri,
            scopes: Vec::new(),
            launch: None,
        };
        let params = &checked.params;
        let fail = |error: &str, description: &str| {
            Err(AuthorizeError::Redirect(checked.error_redirect(error, description)))
        };
        if let Some(name) = &params.repeated {
            return fail("invalid_request", &format!("Parameter {name} is repeated"));
        }
        if params.response_type.as_deref() != Some("code") {
            return fail("unsupported_response_type", "Only response_type=code is supported");
        }
        if params.code_challenge.as_deref().is_none_or(str::is_empty) {
            return fail("invalid_request", "PKCE is required: send code_challenge");
        }
        if params.code_challenge_method.as_deref() != Some("S256") {
            return fail("invalid_request", "code_challenge_method must be S256");
        }
        let requested = params.scope.as_deref().unwrap_or("openid");
        let mut scopes: Vec<String> = Vec::new();
        for scope in requested.split_ascii_whitespace() {
            if describe_scope(scope).is_some() && !scopes.iter().any(|s| s == scope) {
                scopes.push(scope.to_owned());
            }
        }
        let mut launch = None;
        if let Some(launch_id) = params.launch.as_deref().filter(|l| !l.is_empty()) {
            match self.launch_context(&checked.project, launch_id).await? {
                Some(found) => launch = Some(found),
                None => return fail("invalid_request", "Unknown or expired launch"),
            }
        } else {
            // `launch` without a launch context has nothing to give.
            scopes.retain(|s| s != "launch");
        }
        if scopes.is_empty() {
            return fail("invalid_scope", "None of the requested scopes can be granted");
        }
        checked.launch = launch;
        checked.scopes = scopes;
        Ok(checked)
    }

    /// The `SmartAppLaunch` `id` of `project` if it exists and is recent enough.
    async fn launch_context(
        &self,
        project: &ProjectId,
        id: &str,
    ) -> Result<Option<LaunchContext>, EngineError> {
        let Some(stored) = self.read_live(project, "SmartAppLaunch", id).await? else {
            return Ok(None);
        };
        let launch = parse_body(&stored)?;
        let created = instant_secs(&launch["meta"]["lastUpdated"]).unwrap_or(0);
        if Utc::now().timestamp() - created > LAUNCH_TTL_SECS {
            return Ok(None);
        }
        Ok(Some(LaunchContext::from_resource(&launch)))
    }

    /// Signs a browser in: the password (and, when enrolled, the authenticator code) of the
    /// User with `email` — a project's own User first when `project` is given. On success a
    /// session `Login`; the answer is the cookie value `<login id>.<secret>`.
    pub async fn sign_in(
        &self,
        email: &str,
        password: &str,
        code: Option<&str>,
        project: Option<&ProjectId>,
        remote_addr: Option<&str>,
        user_agent: Option<&str>,
    ) -> Result<SignIn, EngineError> {
        let email = email.trim().to_lowercase();
        if email.is_empty() || password.is_empty() {
            return Err(EngineError::invalid("Enter your email and password"));
        }
        let user = self
            .check_password(&email, password, project.map(ProjectId::as_str), remote_addr)
            .await?;
        if user["mfaEnrolled"] == json!(true) {
            match code.map(str::trim).filter(|c| !c.is_empty()) {
                None => return Ok(SignIn::NeedsCode),
                Some(code) => self.check_code(&user, code, remote_addr).await?,
            }
        }
        let user_id = user["id"].as_str().unwrap_or_default().to_owned();
        let secret = random_token(32);
        let now = Utc::now();
        let mut login = json!({
            "resourceType": "Login",
            "id": new_id(),
            "user": {"reference": format!("User/{user_id}"), "display": email},
            "authMethod": "password",
            "authTime": format_instant(now),
            "expiresAt": format_instant(now + chrono::Duration::seconds(SESSION_TTL_SECS)),
            "cookie": hash_secret(&secret),
            "granted": false,
            "revoked": false,
        });
        if user["mfaEnrolled"] == json!(true) {
            login["mfaVerified"] = json!(true);
        }
        if let Some(addr) = remote_addr {
            login["remoteAddress"] = json!(addr);
        }
        if let Some(agent) = user_agent.filter(|a| !a.is_empty()) {
            login["userAgent"] = json!(agent);
        }
        let stored = self.put_account(&system(), login, Precondition::MustNotExist, vec![]).await?;
        Ok(SignIn::Session(format!("{}.{secret}", stored.id)))
    }

    /// The live session a cookie value stands for (`None` for anything else).
    pub async fn browser_session(&self, cookie: &str) -> Option<BrowserSession> {
        let (login_id, secret) = cookie.split_once('.')?;
        let login = self.live_login(login_id).await.ok()?;
        let stored = login["cookie"].as_str()?;
        if !kiln_auth::constant_time_eq(stored, hash_secret(secret)) {
            return None;
        }
        if instant_secs(&login["expiresAt"]).is_none_or(|t| t < Utc::now().timestamp()) {
            return None;
        }
        let user_id = login["user"]["reference"].as_str()?.strip_prefix("User/")?.to_owned();
        let user = parse_body(&self.read_live(&ProjectId::system(), "User", &user_id).await.ok()??)
            .ok()?;
        Some(BrowserSession {
            login_id: login_id.to_owned(),
            user_id,
            email: user["email"].as_str().unwrap_or_default().to_owned(),
            user_project: user["project"]["reference"]
                .as_str()
                .and_then(|r| r.strip_prefix("Project/"))
                .map(str::to_owned),
        })
    }

    /// Signs a browser out: its session ends (the apps it authorized keep their grants,
    /// except `online_access` ones, which end with it).
    pub async fn sign_out(&self, session: &BrowserSession) -> Result<(), EngineError> {
        self.end_login(&session.login_id).await
    }

    /// The session user's membership in `project`, with the request context it acts in.
    pub(crate) async fn session_member(
        &self,
        session: &BrowserSession,
        project: &ProjectId,
    ) -> Result<(Value, RequestContext), AuthorizeError> {
        let memberships = self.memberships(&session.user_id).await?;
        let Some((_, membership)) = memberships.into_iter().find(|(p, _)| p == project) else {
            return Err(AuthorizeError::page(
                "Your account has no access to the project this app belongs to. Sign out and \
                 sign in with another account.",
            ));
        };
        let membership_ref =
            format!("ProjectMembership/{}", membership["id"].as_str().unwrap_or_default());
        let profile = membership["profile"]["reference"].as_str().unwrap_or_default().to_owned();
        let access = self.access_for(project, Some(&membership_ref), &profile).await?;
        let ctx = RequestContext {
            project: project.clone(),
            author: Some(profile),
            access,
            extended: false,
        };
        Ok((membership, ctx))
    }

    /// The patient `id` as `ctx` may see it (`None`: missing or hidden from this member).
    async fn visible_patient(&self, ctx: &RequestContext, id: &str) -> Option<PatientChoice> {
        let stored = self.read(ctx, "Patient", id).await.ok()?;
        patient_choice(&parse_body(&stored).ok()?)
    }

    /// What the consent page shows for this request and `patient` (chosen on the picker).
    pub async fn consent(
        &self,
        session: &BrowserSession,
        checked: &CheckedAuthorize,
        patient: Option<&str>,
    ) -> Result<Consent, AuthorizeError> {
        let (membership, ctx) = self.session_member(session, &checked.project).await?;
        let profile = membership["profile"]["reference"].as_str().unwrap_or_default().to_owned();
        let launch_patient = checked.launch.as_ref().and_then(|l| l.patient.clone());
        let wants_patient = checked.wants("launch/patient");
        let chosen = match (launch_patient, profile.strip_prefix("Patient/")) {
            (Some(id), _) => Some(id),
            // A patient signing in launches with their own record.
            (None, Some(own)) => Some(own.to_owned()),
            (None, None) if wants_patient => patient.map(str::to_owned),
            (None, None) => None,
        };
        let patient = match chosen {
            Some(id) => match self.visible_patient(&ctx, &id).await {
                Some(p) => Some(p),
                None => {
                    return Err(AuthorizeError::page(
                        "The patient for this launch does not exist or you may not see it.",
                    ));
                }
            },
            None => None,
        };
        let needs_patient = wants_patient && patient.is_none();
        Ok(Consent {
            client_name: checked.client_name.clone(),
            email: session.email.clone(),
            profile,
            scopes: checked.scopes.iter().filter_map(|s| describe_scope(s)).collect(),
            patient,
            needs_patient,
            membership_id: membership["id"].as_str().unwrap_or_default().to_owned(),
        })
    }

    /// The patients the session user may see whose name (and birth date) match, for the
    /// patient picker of a practitioner's standalone launch.
    pub async fn pick_patients(
        &self,
        session: &BrowserSession,
        project: &ProjectId,
        name: &str,
        birth_date: &str,
    ) -> Result<Vec<PatientChoice>, AuthorizeError> {
        let (_, ctx) = self.session_member(session, project).await?;
        let mut pairs = Vec::new();
        if !name.trim().is_empty() {
            pairs.push(("name".into(), name.trim().to_owned()));
        }
        if !birth_date.trim().is_empty() {
            pairs.push(("birthdate".into(), birth_date.trim().to_owned()));
        }
        pairs.push(("_sort".into(), "family,given".into()));
        let found = match self.search_matches(&ctx, "Patient", &pairs, PICKER_LIMIT).await {
            Ok(found) => found,
            Err(EngineError::Invalid(_)) => {
                return Err(AuthorizeError::page("Enter a name, and a birth date as YYYY-MM-DD."));
            }
            Err(e) => return Err(e.into()),
        };
        Ok(bodies(&found).iter().filter_map(patient_choice).collect())
    }

    /// The user approved: the app's Login with the scopes left ticked (a subset of those
    /// asked for) and a one-time code. Answers the redirect to the app.
    pub async fn approve(
        &self,
        session: &BrowserSession,
        checked: &CheckedAuthorize,
        patient: Option<&str>,
        ticked: &[String],
    ) -> Result<String, AuthorizeError> {
        let consent = self.consent(session, checked, patient).await?;
        if consent.needs_patient {
            return Err(AuthorizeError::page("Choose a patient first."));
        }
        let granted: Vec<&str> = checked
            .scopes
            .iter()
            .filter(|s| ticked.iter().any(|t| t == *s))
            .map(String::as_str)
            .collect();
        if granted.is_empty() {
            return Ok(checked.error_redirect("access_denied", "No scope was granted"));
        }
        // The launch context: the EHR's, or a new one for the patient chosen here.
        let mut launch = checked.launch.clone().unwrap_or_default();
        if launch.patient.is_none()
            && let Some(p) = &consent.patient
            && granted.contains(&"launch/patient")
        {
            launch.patient = Some(p.id.clone());
        }
        if launch.id.is_none() && launch.patient.is_some() {
            launch.id = Some(self.store_launch(&checked.project, &launch).await?);
        }
        let membership_id = &consent.membership_id;
        let profile_type = consent.profile.split('/').next().unwrap_or("Practitioner").to_owned();
        let code = random_token(32);
        let code_hash = hash_secret(&code);
        let scope = granted.join(" ");
        let now = Utc::now();
        let mut login = json!({
            "resourceType": "Login",
            "id": new_id(),
            "extension": [{"url": REDIRECT_URI_EXT, "valueUri": checked.redirect_uri}],
            "user": {"reference": format!("User/{}", session.user_id), "display": session.email},
            "client": {"reference": format!("ClientApplication/{}", checked.client_id)},
            "membership": {"reference": format!("ProjectMembership/{membership_id}")},
            "project": {"reference": format!("Project/{}", checked.project)},
            "profileType": profile_type,
            "authMethod": "password",
            "authTime": format_instant(now),
            "scope": scope,
            "code": code_hash,
            "codeChallenge": checked.params.code_challenge,
            "codeChallengeMethod": "S256",
            "basedOn": {"reference": format!("Login/{}", session.login_id)},
            "granted": false,
            "revoked": false,
        });
        if let Some(nonce) = &checked.params.nonce {
            login["nonce"] = json!(nonce);
        }
        if let Some(id) = &launch.id {
            login["launch"] = json!({ "reference": format!("SmartAppLaunch/{id}") });
        }
        self.put_account(
            &system(),
            login,
            Precondition::MustNotExist,
            vec![(crate::accounts::LOGIN_CODE.into(), code_hash)],
        )
        .await?;
        let mut pairs = vec![("code", code.as_str())];
        if let Some(state) = &checked.params.state {
            pairs.push(("state", state));
        }
        Ok(redirect_with(&checked.redirect_uri, &pairs))
    }

    /// Stores a launch context as a `SmartAppLaunch` of `project`; answers its id.
    async fn store_launch(
        &self,
        project: &ProjectId,
        launch: &LaunchContext,
    ) -> Result<String, EngineError> {
        let mut resource = json!({"resourceType": "SmartAppLaunch", "id": new_id()});
        if let Some(p) = &launch.patient {
            resource["patient"] = json!({ "reference": format!("Patient/{p}") });
        }
        if let Some(e) = &launch.encounter {
            resource["encounter"] = json!({ "reference": format!("Encounter/{e}") });
        }
        if !launch.fhir_context.is_empty() {
            resource["fhirContext"] =
                launch.fhir_context.iter().map(|r| json!({ "reference": r })).collect();
        }
        let ctx = RequestContext::new(project.clone());
        let stored = self.put_account(&ctx, resource, Precondition::MustNotExist, vec![]).await?;
        Ok(stored.id)
    }

    /// An EHR launch: `ctx` (a practitioner) opens the registered app `client_id` for
    /// `patient` (and `encounter`). Both must be visible to `ctx`. Answers the app's launch
    /// URL with `iss` and the opaque `launch`.
    pub async fn smart_launch(
        &self,
        ctx: &RequestContext,
        client_id: &str,
        patient: Option<&str>,
        encounter: Option<&str>,
    ) -> Result<String, EngineError> {
        let stored = self.read(ctx, "ClientApplication", client_id).await?;
        self.launch_app(ctx, &parse_body(&stored)?, patient, encounter).await
    }

    /// Stores the launch context of `client` for `patient` and `encounter` (both read as
    /// `ctx`) and answers the app's launch URL.
    async fn launch_app(
        &self,
        ctx: &RequestContext,
        client: &Value,
        patient: Option<&str>,
        encounter: Option<&str>,
    ) -> Result<String, EngineError> {
        let Some(launch_uri) = client["launchUri"].as_str().filter(|u| !u.is_empty()) else {
            return Err(EngineError::invalid("This app has no launchUri to launch it with"));
        };
        let mut launch = LaunchContext::default();
        if let Some(id) = patient.filter(|p| !p.is_empty()) {
            self.read(ctx, "Patient", id).await?;
            launch.patient = Some(id.to_owned());
        }
        if let Some(id) = encounter.filter(|e| !e.is_empty()) {
            let stored = self.read(ctx, "Encounter", id).await?;
            let encounter = parse_body(&stored)?;
            // The encounter must be the patient's, when both are given.
            if let Some(p) = &launch.patient {
                let subject = encounter["subject"]["reference"].as_str().unwrap_or_default();
                if subject != format!("Patient/{p}") {
                    return Err(EngineError::invalid(format!(
                        "Encounter/{id} is not an encounter of Patient/{p}"
                    )));
                }
            }
            launch.encounter = Some(id.to_owned());
        }
        let id = self.store_launch(&ctx.project, &launch).await?;
        let iss = self.base_url().fhir_base();
        Ok(redirect_with(launch_uri, &[("iss", &iss), ("launch", &id)]))
    }

    /// The projects the session user belongs to, as `(project, name)`.
    pub async fn session_projects(
        &self,
        session: &BrowserSession,
    ) -> Result<Vec<(ProjectId, String)>, EngineError> {
        let mut out = Vec::new();
        for (project, _) in self.memberships(&session.user_id).await? {
            let name = match self.read_live(&project, "Project", project.as_str()).await? {
                Some(stored) => parse_body(&stored)?["name"].as_str().map(str::to_owned),
                None => None,
            };
            let name = name.unwrap_or_else(|| project.as_str().to_owned());
            out.push((project, name));
        }
        out.sort_by(|a, b| a.1.cmp(&b.1));
        Ok(out)
    }

    /// The patient's encounters the session user may see, newest first (at most 10), as
    /// `(id, words)`, for the EHR launch page.
    pub async fn patient_encounters(
        &self,
        session: &BrowserSession,
        project: &ProjectId,
        patient: &str,
    ) -> Result<Vec<(String, String)>, AuthorizeError> {
        let (_, ctx) = self.session_member(session, project).await?;
        let pairs = vec![
            ("patient".to_owned(), format!("Patient/{patient}")),
            ("_sort".to_owned(), "-date".to_owned()),
        ];
        let found = match self.search_matches(&ctx, "Encounter", &pairs, 10).await {
            Ok(found) => found,
            // A member who may not search encounters launches without one.
            Err(EngineError::Forbidden(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        Ok(bodies(&found)
            .iter()
            .filter_map(|enc| {
                let id = enc["id"].as_str()?.to_owned();
                let kind = enc["type"][0]["text"]
                    .as_str()
                    .or_else(|| enc["type"][0]["coding"][0]["display"].as_str())
                    .or_else(|| enc["class"]["display"].as_str())
                    .or_else(|| enc["class"]["code"].as_str())
                    .unwrap_or("Encounter");
                let mut words = kind.to_owned();
                if let Some(start) = enc["period"]["start"].as_str() {
                    words.push_str(&format!(", {}", start.get(..10).unwrap_or(start)));
                }
                if let Some(status) = enc["status"].as_str() {
                    words.push_str(&format!(" ({status})"));
                }
                Some((id, words))
            })
            .collect())
    }

    /// The apps of `project` that can be launched from the EHR (they have a `launchUri`), as
    /// `(id, name)`.
    pub async fn launchable_apps(
        &self,
        project: &ProjectId,
    ) -> Result<Vec<(String, String)>, EngineError> {
        let ctx = RequestContext::new(project.clone());
        let found = self.search_matches(&ctx, "ClientApplication", &[], MAX_APPS).await?;
        let mut apps: Vec<(String, String)> = bodies(&found)
            .iter()
            .filter(|c| c["launchUri"].as_str().is_some_and(|u| !u.is_empty()))
            .filter(|c| c.get("status").is_none_or(|s| s == "active"))
            .filter_map(|c| {
                let id = c["id"].as_str()?.to_owned();
                let name = c["name"].as_str().unwrap_or(&id).to_owned();
                Some((id, name))
            })
            .collect();
        apps.sort_by(|a, b| a.1.cmp(&b.1));
        Ok(apps)
    }

    /// The EHR launch page's action: the session user launches `client_id` for `patient`
    /// (and `encounter`) in `project`. Answers the app's launch URL.
    pub async fn session_launch(
        &self,
        session: &BrowserSession,
        project: &ProjectId,
        client_id: &str,
        patient: &str,
        encounter: Option<&str>,
    ) -> Result<String, AuthorizeError> {
        let (_, ctx) = self.session_member(session, project).await?;
        // The app is looked up as the project sees it (members need not read
        // ClientApplications); the patient and encounter as the member does.
        let (client_project, _, client) = self
            .find_client(client_id)
            .await
            .map_err(|_| AuthorizeError::page("This app is not registered on this server."))?;
        if &client_project != project {
            return Err(AuthorizeError::page("This app belongs to another project."));
        }
        self.launch_app(&ctx, &client, Some(patient), encounter).await.map_err(|e| match e {
            EngineError::NotFound(_) | EngineError::Gone(_) | EngineError::Forbidden(_) => {
                AuthorizeError::page(
                    "The patient or encounter does not exist, or you may not see it.",
                )
            }
            other => other.into(),
        })
    }

    /// The launch context of a granted Login (`None` without one).
    pub(crate) async fn login_launch(
        &self,
        login: &Value,
    ) -> Result<Option<LaunchContext>, EngineError> {
        let Some(id) =
            login["launch"]["reference"].as_str().and_then(|r| r.strip_prefix("SmartAppLaunch/"))
        else {
            return Ok(None);
        };
        let project = login["project"]["reference"]
            .as_str()
            .and_then(|r| r.strip_prefix("Project/"))
            .unwrap_or_default();
        let Some(stored) =
            self.read_live(&ProjectId::new(project.to_owned()), "SmartAppLaunch", id).await?
        else {
            return Ok(None);
        };
        Ok(Some(LaunchContext::from_resource(&parse_body(&stored)?)))
    }

    /// The apps the session user has authorized and not revoked: one entry per app, newest
    /// grant first.
    pub async fn connected_apps(
        &self,
        session: &BrowserSession,
    ) -> Result<Vec<ConnectedApp>, EngineError> {
        let logins = self.user_grants(&session.user_id).await?;
        let mut apps: Vec<ConnectedApp> = Vec::new();
        for login in logins {
            let Some(client_id) = login["client"]["reference"]
                .as_str()
                .and_then(|r| r.strip_prefix("ClientApplication/"))
            else {
                continue;
            };
            let granted_at = login["authTime"].as_str().unwrap_or_default().to_owned();
            let scope = login["scope"].as_str().unwrap_or_default().to_owned();
            if let Some(app) = apps.iter_mut().find(|a| a.client_id == client_id) {
                app.grants += 1;
                if granted_at > app.granted_at {
                    app.granted_at = granted_at;
                    app.scope = scope;
                }
                continue;
            }
            let name = self.app_name(&login, client_id).await;
            apps.push(ConnectedApp {
                client_id: client_id.to_owned(),
                name,
                scope,
                granted_at,
                grants: 1,
            });
        }
        apps.sort_by(|a, b| b.granted_at.cmp(&a.granted_at));
        Ok(apps)
    }

    /// Revokes every grant the session user gave `client_id`: its access and refresh tokens
    /// stop working at once. Answers the app's name.
    pub async fn revoke_app(
        &self,
        session: &BrowserSession,
        client_id: &str,
    ) -> Result<String, EngineError> {
        let reference = format!("ClientApplication/{client_id}");
        let mut name = None;
        for login in self.user_grants(&session.user_id).await? {
            if login["client"]["reference"].as_str() == Some(reference.as_str()) {
                if name.is_none() {
                    name = Some(self.app_name(&login, client_id).await);
                }
                self.end_login(login["id"].as_str().unwrap_or_default()).await?;
            }
        }
        name.ok_or_else(|| EngineError::NotFound("This app holds no access of yours".into()))
    }

    /// The name of the app a grant was given to (its id when it has none or is gone).
    async fn app_name(&self, login: &Value, client_id: &str) -> String {
        self.login_client(login)
            .await
            .and_then(|client| client["name"].as_str().map(str::to_owned))
            .unwrap_or_else(|| client_id.to_owned())
    }

    /// The user's live app grants: granted, unrevoked Logins with a client, made through the
    /// authorization page (not first-party sign-ins), whose refresh token has not expired.
    async fn user_grants(&self, user_id: &str) -> Result<Vec<Value>, EngineError> {
        let pairs = [
            ("user".to_owned(), format!("User/{user_id}")),
            ("_sort".to_owned(), "-_lastUpdated".to_owned()),
        ];
        let logins = self.search_matches(&system(), "Login", &pairs, MAX_LOGINS_SCANNED).await?;
        let now = Utc::now().timestamp();
        Ok(bodies(&logins)
            .into_iter()
            .filter(|login| {
                login["granted"] == json!(true)
                    && login["revoked"] != json!(true)
                    && login.get("client").is_some()
                    && is_smart_login(login)
                    && instant_secs(&login["expiresAt"]).is_none_or(|t| t >= now)
            })
            .collect())
    }

    /// `/.well-known/smart-configuration` (SMART App Launch 2.0.0 §Discovery): only what
    /// this server does.
    pub fn smart_configuration(&self) -> Value {
        let base = self.base_url();
        json!({
            "issuer": base.as_str().trim_end_matches('/'),
            "jwks_uri": base.join(".well-known/jwks.json"),
            "authorization_endpoint": base.join("oauth2/authorize"),
            "token_endpoint": base.join("oauth2/token"),
            "introspection_endpoint": base.join("oauth2/introspect"),
            "revocation_endpoint": base.join("oauth2/revoke"),
            "management_endpoint": base.join("oauth2/apps"),
            "userinfo_endpoint": base.join("oauth2/userinfo"),
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported":
                ["client_secret_basic", "client_secret_post", "private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
            "scopes_supported": [
                "openid", "fhirUser", "profile", "email", "launch", "launch/patient",
                "launch/encounter", "offline_access", "online_access",
                "patient/*.rs", "patient/*.cruds", "user/*.rs", "user/*.cruds",
                "system/*.rs", "system/*.cruds", "patient/*.read", "patient/*.write",
                "patient/*.*", "user/*.read", "user/*.write", "user/*.*", "system/*.read",
                "system/*.write", "system/*.*",
            ],
            "capabilities": [
                "launch-ehr", "launch-standalone", "authorize-post",
                "client-public", "client-confidential-symmetric",
                "client-confidential-asymmetric",
                "sso-openid-connect",
                "context-banner", "context-style",
                "context-ehr-patient", "context-ehr-encounter", "context-standalone-patient",
                "permission-offline", "permission-online", "permission-patient",
                "permission-user", "permission-v1", "permission-v2",
            ],
        })
    }

    /// `/.well-known/openid-configuration` (OpenID Connect Discovery 1.0).
    pub fn openid_configuration(&self) -> Value {
        let base = self.base_url();
        json!({
            "issuer": base.as_str().trim_end_matches('/'),
            "authorization_endpoint": base.join("oauth2/authorize"),
            "token_endpoint": base.join("oauth2/token"),
            "userinfo_endpoint": base.join("oauth2/userinfo"),
            "jwks_uri": base.join(".well-known/jwks.json"),
            "introspection_endpoint": base.join("oauth2/introspect"),
            "revocation_endpoint": base.join("oauth2/revoke"),
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported":
                ["client_secret_basic", "client_secret_post", "private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": ["openid", "fhirUser", "profile", "email", "offline_access"],
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce",
                                 "fhirUser", "email"],
        })
    }

    /// The style an app may use to fit in (SMART `smart_style_url`).
    pub fn smart_style(&self) -> Value {
        json!({
            "color_background": "#f8f7f4",
            "color_error": "#b3261e",
            "color_highlight": "#b5541c",
            "color_modal_backdrop": "",
            "color_success": "#2e7d32",
            "color_text": "#1f1f1f",
            "dim_border_radius": "6px",
            "dim_font_size": "16px",
            "dim_spacing_size": "16px",
            "font_family_body": "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif",
            "font_family_heading": "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif",
        })
    }
}

impl Engine {
    /// OpenID Connect UserInfo (`/oauth2/userinfo`): who the token's user is. Needs a token
    /// with the `openid` scope.
    pub async fn userinfo(
        &self,
        who: &crate::accounts::Authenticated,
    ) -> Result<Value, EngineError> {
        if !ScopeSet::parse(&who.scope).has_openid() {
            return Err(EngineError::Forbidden(
                "The token was not granted the openid scope".into(),
            ));
        }
        let sub = who
            .user_id
            .clone()
            .or_else(|| who.client_id.clone())
            .unwrap_or_else(|| who.profile.clone());
        let mut out = json!({
            "sub": sub,
            "fhirUser": self.base_url().join(&format!("fhir/R4/{}", who.profile)),
        });
        if let Some(user_id) = &who.user_id
            && let Some(stored) = self.read_live(&ProjectId::system(), "User", user_id).await?
        {
            let user = parse_body(&stored)?;
            if let Some(email) = user["email"].as_str() {
                out["email"] = json!(email);
                out["email_verified"] = json!(user["emailVerified"] == json!(true));
            }
            let name = [user["firstName"].as_str(), user["lastName"].as_str()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" ");
            if !name.is_empty() {
                out["name"] = json!(name);
            }
            if let Some(given) = user["firstName"].as_str() {
                out["given_name"] = json!(given);
            }
            if let Some(family) = user["lastName"].as_str() {
                out["family_name"] = json!(family);
            }
        }
        Ok(out)
    }
}

/// An app holding access on behalf of a user, for the connected-apps page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectedApp {
    pub client_id: String,
    pub name: String,
    /// The scope of the newest grant.
    pub scope: String,
    /// When it was last authorized.
    pub granted_at: String,
    /// How many live grants (authorizations) it holds.
    pub grants: usize,
}

/// The resources of search matches (a stored body that does not parse is skipped).
fn bodies(found: &[kiln_store::StoredResource]) -> Vec<Value> {
    found.iter().filter_map(|stored| serde_json::from_slice(&stored.body).ok()).collect()
}

/// The Login came from the authorization page (a SMART grant).
pub(crate) fn is_smart_login(login: &Value) -> bool {
    smart_redirect_uri(login).is_some()
}

/// The `redirect_uri` a SMART grant's code must be redeemed with.
pub(crate) fn smart_redirect_uri(login: &Value) -> Option<&str> {
    login["extension"]
        .as_array()?
        .iter()
        .find(|e| e["url"] == REDIRECT_URI_EXT)
        .and_then(|e| e["valueUri"].as_str())
}

/// The scope a refresh may ask for: a subset of what was granted (RFC 6749 §6).
pub(crate) fn narrowed_scope(granted: &str, requested: Option<&str>) -> Option<String> {
    let Some(requested) = requested.map(str::trim).filter(|r| !r.is_empty()) else {
        return Some(granted.to_owned());
    };
    let granted = ScopeSet::parse(granted);
    let mut out = Vec::new();
    for scope in requested.split_ascii_whitespace() {
        if !granted.contains(scope) {
            return None;
        }
        if !out.contains(&scope) {
            out.push(scope);
        }
    }
    Some(out.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn repeated_parameters_are_noticed_and_the_rest_round_trips() {
        let p = AuthorizeParams::from_pairs(&pairs(&[
            ("client_id", "app"),
            ("scope", "openid launch/patient"),
            ("other", "ignored"),
            ("state", "a b&c"),
        ]));
        assert_eq!(p.repeated, None);
        assert_eq!(p.client_id.as_deref(), Some("app"));
        let back = AuthorizeParams::from_pairs(&crate::query_pairs(&p.query(&[])));
        assert_eq!(back, p);
        let twice = AuthorizeParams::from_pairs(&pairs(&[("state", "1"), ("state", "2")]));
        assert_eq!(twice.repeated.as_deref(), Some("state"));
        assert_eq!(twice.state.as_deref(), Some("1"));
    }

    #[test]
    fn redirects_keep_the_registered_query_and_drop_fragments() {
        assert_eq!(redirect_with("https://app/cb", &[("code", "x y")]), "https://app/cb?code=x+y");
        assert_eq!(
            redirect_with("https://app/cb?tenant=1#frag", &[("code", "c"), ("state", "s")]),
            "https://app/cb?tenant=1&code=c&state=s"
        );
    }

    #[test]
    fn scopes_are_described_in_plain_words_or_dropped() {
        let lab = describe_scope(
            "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
        )
        .unwrap();
        assert!(lab.data);
        assert!(lab.label.starts_with("Read and search observations"), "{}", lab.label);
        assert!(lab.label.contains("only where category="), "{}", lab.label);
        assert_eq!(
            describe_scope("user/*.cruds").unwrap().label,
            "Read, search, create, change and delete all kinds of health data that you can access"
        );
        assert_eq!(
            describe_scope("patient/Patient.read").unwrap().label,
            "Read and search demographics (name, birth date, contact details) of the patient"
        );
        assert!(describe_scope("offline_access").unwrap().lasting);
        assert!(!describe_scope("openid").unwrap().lasting);
        for bad in ["patient/Nonsense.rs", "patient/Observation.xyz", "admin", "launch/other"] {
            assert_eq!(describe_scope(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_refresh_may_narrow_the_scope_but_never_widen_it() {
        let granted = "openid patient/Observation.rs offline_access";
        assert_eq!(narrowed_scope(granted, None).as_deref(), Some(granted));
        assert_eq!(narrowed_scope(granted, Some(" ")).as_deref(), Some(granted));
        assert_eq!(
            narrowed_scope(granted, Some("patient/Observation.rs")).as_deref(),
            Some("patient/Observation.rs")
        );
        assert_eq!(narrowed_scope(granted, Some("patient/*.rs")), None);
    }
}
