//! SMART App Launch over HTTP: discovery (`/.well-known/smart-configuration`,
//! `/.well-known/openid-configuration`), `smart_style_url`, UserInfo, and the server-rendered
//! pages a browser walks through — sign-in, patient picker, consent (`/oauth2/authorize`), the
//! EHR launch page (`/oauth2/launch`) and the connected-apps page (`/oauth2/apps`).
//!
//! Pages need no JavaScript. Every form that changes something carries a CSRF token that must
//! equal the `kiln_csrf` cookie (double submit; both `SameSite=Lax`, `HttpOnly`), and pages
//! are served `no-store`, unframeable, with a strict Content-Security-Policy. The browser's
//! session is the `kiln_session` cookie ([`kiln_engine::smart::BrowserSession`]).

use askama::Template;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kiln_engine::EngineError;
use kiln_engine::smart::{
    AuthorizeError, AuthorizeParams, BrowserSession, CheckedAuthorize, ConnectedApp, PatientChoice,
    ScopeItem, SignIn,
};
use kiln_store::ProjectId;

use crate::AppState;
use crate::client_ip::ClientIp;
use crate::error::ApiError;
use crate::extract::{Auth, LimitedBody, QueryPairs};

const SESSION_COOKIE: &str = "kiln_session";
const CSRF_COOKIE: &str = "kiln_csrf";

// ---------------------------------------------------------------------------------------------
// Discovery and small JSON endpoints

/// `GET /.well-known/smart-configuration` (also under `/fhir/R4`).
pub async fn smart_configuration(State(state): State<AppState>) -> Response {
    public_json(state.engine.smart_configuration())
}

/// `GET /.well-known/openid-configuration`.
pub async fn openid_configuration(State(state): State<AppState>) -> Response {
    public_json(state.engine.openid_configuration())
}

/// `GET /oauth2/smart-style.json`: the `smart_style_url` of token responses.
pub async fn smart_style(State(state): State<AppState>) -> Response {
    public_json(state.engine.smart_style())
}

fn public_json(value: serde_json::Value) -> Response {
    let mut res = Json(value).into_response();
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=3600"));
    res
}

/// `GET|POST /oauth2/userinfo` (OpenID Connect Core §5.3).
pub async fn userinfo(
    State(state): State<AppState>,
    Auth(who): Auth,
) -> Result<Response, ApiError> {
    let out = state.engine.userinfo(&who).await?;
    Ok(crate::auth_routes::no_store(Json(out).into_response()))
}

// ---------------------------------------------------------------------------------------------
// Templates

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    csrf: &'a str,
    action: &'a str,
    hidden: Vec<(&'static str, String)>,
    app_name: Option<&'a str>,
    email: &'a str,
    error: Option<&'a str>,
    needs_code: bool,
}

impl<'a> LoginPage<'a> {
    /// The form before anything was typed.
    fn blank(
        csrf: &'a str,
        action: &'a str,
        hidden: Vec<(&'static str, String)>,
        app_name: Option<&'a str>,
    ) -> LoginPage<'a> {
        LoginPage { csrf, action, hidden, app_name, email: "", error: None, needs_code: false }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    title: &'a str,
    message: &'a str,
    /// `(csrf, email)` of a signed-in browser, which may want to sign out.
    signout: Option<(&'a str, &'a str)>,
}

#[derive(Template)]
#[template(path = "consent.html")]
struct ConsentPage<'a> {
    csrf: &'a str,
    email: &'a str,
    profile: &'a str,
    client_name: &'a str,
    hidden: Vec<(&'static str, String)>,
    scopes: &'a [ScopeItem],
    patient: Option<&'a PatientChoice>,
    offline: bool,
}

#[derive(Template)]
#[template(path = "picker.html")]
struct PickerPage<'a> {
    csrf: &'a str,
    email: &'a str,
    client_name: &'a str,
    action: &'a str,
    hidden: Vec<(&'static str, String)>,
    name: &'a str,
    birth_date: &'a str,
    searched: bool,
    /// Each patient with the link that chooses it.
    patients: Vec<(PatientChoice, String)>,
    error: Option<&'a str>,
}

#[derive(Template)]
#[template(path = "apps.html")]
struct AppsPage<'a> {
    csrf: &'a str,
    email: &'a str,
    apps: &'a [ConnectedApp],
    flash: Option<&'a str>,
    error: Option<&'a str>,
}

#[derive(Template)]
#[template(path = "launch.html")]
struct LaunchPage<'a> {
    csrf: &'a str,
    email: &'a str,
    projects: &'a [(String, String)],
    project: &'a str,
    apps: &'a [(String, String)],
    name: &'a str,
    birth_date: &'a str,
    searched: bool,
    /// Each patient with the encounters one may launch with.
    patients: &'a [(PatientChoice, Vec<(String, String)>)],
    error: Option<&'a str>,
}

// ---------------------------------------------------------------------------------------------
// The browser: cookies, CSRF, responses

/// What a request from a browser brings.
struct Browser {
    /// The CSRF token: the cookie's, or a new one to set.
    csrf: String,
    new_csrf: bool,
    session: Option<BrowserSession>,
    /// Cookies get `Secure` when the server's base URL is HTTPS.
    secure: bool,
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

async fn browser(state: &AppState, headers: &HeaderMap) -> Browser {
    let existing = cookie(headers, CSRF_COOKIE).filter(|c| {
        c.len() >= 32 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    let (csrf, new_csrf) = match existing {
        Some(c) => (c.to_owned(), false),
        None => (kiln_auth::random_token(32), true),
    };
    let session = match cookie(headers, SESSION_COOKIE) {
        Some(value) => state.engine.browser_session(value).await,
        None => None,
    };
    let secure = state.engine.base_url().as_str().starts_with("https://");
    Browser { csrf, new_csrf, session, secure }
}

fn set_cookie(res: &mut Response, name: &str, value: &str, max_age: Option<i64>, secure: bool) {
    let mut cookie = format!("{name}={value}; Path=/oauth2; HttpOnly; SameSite=Lax");
    if let Some(age) = max_age {
        cookie.push_str(&format!("; Max-Age={age}"));
    }
    if secure {
        cookie.push_str("; Secure");
    }
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        res.headers_mut().append(header::SET_COOKIE, value);
    }
}

impl Browser {
    /// A form's CSRF token matches the cookie (which must already exist).
    fn csrf_ok(&self, form: &[(String, String)]) -> bool {
        !self.new_csrf
            && form_value(form, "csrf")
                .is_some_and(|token| kiln_auth::constant_time_eq(token, &self.csrf))
    }

    /// An HTML page, with the CSRF cookie set when new.
    fn page(&self, status: StatusCode, body: Result<String, askama::Error>) -> Response {
        let body = match body {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(error = %e, "page failed to render");
                return (StatusCode::INTERNAL_SERVER_ERROR, "The page failed to render")
                    .into_response();
            }
        };
        let mut res = (status, body).into_response();
        let h = res.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; \
                 frame-ancestors 'none'; base-uri 'none'",
            ),
        );
        self.with_cookie(res)
    }

    fn with_cookie(&self, mut res: Response) -> Response {
        if self.new_csrf {
            set_cookie(&mut res, CSRF_COOKIE, &self.csrf, None, self.secure);
        }
        res
    }

    /// A `303 See Other` to `location` (a page of ours or the app's redirect URI).
    fn see_other(&self, location: &str) -> Response {
        let mut res = StatusCode::SEE_OTHER.into_response();
        if let Ok(value) = HeaderValue::from_str(location) {
            res.headers_mut().insert(header::LOCATION, value);
        }
        res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        self.with_cookie(res)
    }

    fn error(&self, status: StatusCode, title: &str, message: &str) -> Response {
        let signout = self.session.as_ref().map(|s| (self.csrf.as_str(), s.email.as_str()));
        self.page(status, ErrorPage { title, message, signout }.render())
    }

    fn forbidden_form(&self) -> Response {
        self.error(
            StatusCode::FORBIDDEN,
            "Form expired",
            "This form is out of date or did not come from this site. Go back, reload the page \
             and try again.",
        )
    }
}

fn form_value<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

/// A page form posted from this site: its fields, and the browser that sent it, whose CSRF
/// token matched (else the request is answered with the "form expired" page).
pub struct PostedForm {
    b: Browser,
    form: Vec<(String, String)>,
}

impl axum::extract::FromRequest<AppState> for PostedForm {
    type Rejection = Response;

    async fn from_request(
        req: axum::extract::Request,
        state: &AppState,
    ) -> Result<PostedForm, Response> {
        let b = browser(state, req.headers()).await;
        let LimitedBody(body) =
            LimitedBody::from_request(req, state).await.map_err(IntoResponse::into_response)?;
        let form = parse_form(&body);
        if !b.csrf_ok(&form) {
            return Err(b.forbidden_form());
        }
        Ok(PostedForm { b, form })
    }
}

/// How a failed authorization step answers.
fn authorize_failure(b: &Browser, e: AuthorizeError) -> Response {
    match e {
        AuthorizeError::Page(message) => {
            b.error(StatusCode::BAD_REQUEST, "This app cannot be authorized", &message)
        }
        AuthorizeError::Redirect(url) => b.see_other(&url),
    }
}

/// An engine error on a sign-in form, in words for the page.
fn sign_in_message(e: &EngineError) -> (StatusCode, String) {
    match e {
        EngineError::Invalid(issues) => (
            StatusCode::UNAUTHORIZED,
            issues.first().map(|i| i.diagnostics.clone()).unwrap_or_else(|| e.to_string()),
        ),
        EngineError::Forbidden(m) => (StatusCode::FORBIDDEN, m.clone()),
        EngineError::Internal(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong; please try again".into())
        }
        other => (StatusCode::BAD_REQUEST, other.to_string()),
    }
}

// ---------------------------------------------------------------------------------------------
// /oauth2/authorize

/// `GET /oauth2/authorize`.
pub async fn authorize_get(
    State(state): State<AppState>,
    headers: HeaderMap,
    QueryPairs(query): QueryPairs,
) -> Response {
    authorize(&state, &headers, &query).await
}

/// `POST /oauth2/authorize` (SMART `authorize-post`): the same parameters as a form.
pub async fn authorize_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody,
) -> Response {
    authorize(&state, &headers, &parse_form(&body)).await
}

/// The authorization page: sign-in when there is no session, then the patient picker when
/// a patient must be chosen, then consent.
async fn authorize(state: &AppState, headers: &HeaderMap, pairs: &[(String, String)]) -> Response {
    let b = browser(state, headers).await;
    let params = AuthorizeParams::from_pairs(pairs);
    let checked = match state.engine.check_authorize(params).await {
        Ok(checked) => checked,
        Err(e) => return authorize_failure(&b, e),
    };
    let Some(session) = &b.session else {
        let page = LoginPage::blank(
            &b.csrf,
            "/oauth2/authorize/signin",
            checked.params.pairs(),
            Some(&checked.client_name),
        );
        return b.page(StatusCode::OK, page.render());
    };
    let patient = form_value(pairs, "patient").filter(|p| !p.is_empty());
    let consent = match state.engine.consent(session, &checked, patient).await {
        Ok(consent) => consent,
        Err(e) => return authorize_failure(&b, e),
    };
    if consent.needs_patient {
        return picker(state, &b, session, &checked, pairs).await;
    }
    let mut hidden = checked.params.pairs();
    if let Some(p) = &consent.patient {
        hidden.push(("patient", p.id.clone()));
    }
    let page = ConsentPage {
        csrf: &b.csrf,
        email: &session.email,
        profile: &consent.profile,
        client_name: &consent.client_name,
        hidden,
        scopes: &consent.scopes,
        patient: consent.patient.as_ref(),
        offline: consent.scopes.iter().any(|s| s.scope == "offline_access"),
    };
    b.page(StatusCode::OK, page.render())
}

/// The patient picker of a practitioner's standalone launch (`launch/patient`).
async fn picker(
    state: &AppState,
    b: &Browser,
    session: &BrowserSession,
    checked: &CheckedAuthorize,
    pairs: &[(String, String)],
) -> Response {
    let name = form_value(pairs, "patient_name").unwrap_or_default();
    let birth_date = form_value(pairs, "patient_birthdate").unwrap_or_default();
    let searched = !name.trim().is_empty() || !birth_date.trim().is_empty();
    let mut error = None;
    let mut patients = Vec::new();
    if searched {
        match state.engine.pick_patients(session, &checked.project, name, birth_date).await {
            Ok(found) => {
                patients = found
                    .into_iter()
                    .map(|p| {
                        let link = format!(
                            "/oauth2/authorize?{}",
                            checked.params.query(&[("patient", &p.id)])
                        );
                        (p, link)
                    })
                    .collect()
            }
            Err(AuthorizeError::Page(m)) => error = Some(m),
            Err(e) => return authorize_failure(b, e),
        }
    }
    let page = PickerPage {
        csrf: &b.csrf,
        email: &session.email,
        client_name: &checked.client_name,
        action: "/oauth2/authorize",
        hidden: checked.params.pairs(),
        name,
        birth_date,
        searched,
        patients,
        error: error.as_deref(),
    };
    b.page(StatusCode::OK, page.render())
}

/// `POST /oauth2/authorize/signin`: the sign-in form of the authorization page.
pub async fn authorize_signin(
    State(state): State<AppState>,
    ClientIp(peer): ClientIp,
    headers: HeaderMap,
    PostedForm { b, form }: PostedForm,
) -> Response {
    let checked = match state.engine.check_authorize(AuthorizeParams::from_pairs(&form)).await {
        Ok(checked) => checked,
        Err(e) => return authorize_failure(&b, e),
    };
    let form_page = LoginPage::blank(
        &b.csrf,
        "/oauth2/authorize/signin",
        checked.params.pairs(),
        Some(&checked.client_name),
    );
    let next = format!("/oauth2/authorize?{}", checked.params.query(&[]));
    sign_in_form(&state, &b, peer, &headers, &form, Some(&checked.project), form_page, &next).await
}

/// A sign-in form posted: on success the session cookie and a redirect to `next`; else the
/// same form (`form_page`) again, asking for the authenticator code or saying what was wrong.
#[allow(clippy::too_many_arguments)]
async fn sign_in_form(
    state: &AppState,
    b: &Browser,
    peer: std::net::IpAddr,
    headers: &HeaderMap,
    form: &[(String, String)],
    project: Option<&ProjectId>,
    form_page: LoginPage<'_>,
    next: &str,
) -> Response {
    let email = form_value(form, "email").unwrap_or_default();
    let outcome = state
        .engine
        .sign_in(
            email,
            form_value(form, "password").unwrap_or_default(),
            form_value(form, "code"),
            project,
            Some(&peer.to_string()),
            crate::auth_routes::user_agent(headers).as_deref(),
        )
        .await;
    let again = |error: Option<&str>, needs_code: bool, status: StatusCode| {
        let page = LoginPage { email, error, needs_code, ..form_page };
        b.page(status, page.render())
    };
    match outcome {
        Ok(SignIn::Session(cookie)) => {
            let mut res = b.see_other(next);
            let ttl = Some(kiln_engine::smart::SESSION_TTL_SECS);
            set_cookie(&mut res, SESSION_COOKIE, &cookie, ttl, b.secure);
            res
        }
        Ok(SignIn::NeedsCode) => again(None, true, StatusCode::OK),
        Err(e) => {
            let (status, message) = sign_in_message(&e);
            again(Some(&message), form_value(form, "code").is_some(), status)
        }
    }
}

/// `POST /oauth2/authorize/consent`: allow (with the scopes left ticked) or deny.
pub async fn authorize_consent(
    State(state): State<AppState>,
    PostedForm { b, form }: PostedForm,
) -> Response {
    let checked = match state.engine.check_authorize(AuthorizeParams::from_pairs(&form)).await {
        Ok(checked) => checked,
        Err(e) => return authorize_failure(&b, e),
    };
    let Some(session) = &b.session else {
        // Signed out meanwhile: start over at the sign-in step.
        return b.see_other(&format!("/oauth2/authorize?{}", checked.params.query(&[])));
    };
    if form_value(&form, "decision") != Some("allow") {
        return b.see_other(&checked.error_redirect("access_denied", "The user denied access"));
    }
    let ticked: Vec<String> =
        form.iter().filter(|(k, _)| k == "grant").map(|(_, v)| v.clone()).collect();
    let patient = form_value(&form, "patient").filter(|p| !p.is_empty());
    match state.engine.approve(session, &checked, patient, &ticked).await {
        Ok(url) => b.see_other(&url),
        Err(e) => authorize_failure(&b, e),
    }
}

// ---------------------------------------------------------------------------------------------
// Sign-in and sign-out for the other pages

/// A local page to go back to after signing in (never another site).
fn local_next(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with("/oauth2/") && !n.starts_with("//") && !n.contains('\\') => n,
        _ => "/oauth2/apps",
    }
}

/// `GET /oauth2/signin?next=…&project=…`.
pub async fn signin_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    QueryPairs(query): QueryPairs,
) -> Response {
    let b = browser(&state, &headers).await;
    let next = local_next(form_value(&query, "next"));
    if b.session.is_some() {
        return b.see_other(next);
    }
    let mut hidden = vec![("next", next.to_owned())];
    if let Some(project) = form_value(&query, "project") {
        hidden.push(("project", project.to_owned()));
    }
    let page = LoginPage::blank(&b.csrf, "/oauth2/signin", hidden, None);
    b.page(StatusCode::OK, page.render())
}

/// `POST /oauth2/signin`.
pub async fn signin(
    State(state): State<AppState>,
    ClientIp(peer): ClientIp,
    headers: HeaderMap,
    PostedForm { b, form }: PostedForm,
) -> Response {
    let next = local_next(form_value(&form, "next")).to_owned();
    let project = form_value(&form, "project")
        .filter(|p| kiln_model::is_valid_id(p))
        .map(|p| ProjectId::new(p.to_owned()));
    let mut hidden = vec![("next", next.clone())];
    if let Some(p) = &project {
        hidden.push(("project", p.as_str().to_owned()));
    }
    let form_page = LoginPage::blank(&b.csrf, "/oauth2/signin", hidden, None);
    sign_in_form(&state, &b, peer, &headers, &form, project.as_ref(), form_page, &next).await
}

/// `POST /oauth2/signout`: ends the browser's session.
pub async fn signout(State(state): State<AppState>, PostedForm { b, .. }: PostedForm) -> Response {
    if let Some(session) = &b.session
        && let Err(e) = state.engine.sign_out(session).await
    {
        tracing::warn!(error = %e, "sign-out failed");
    }
    let mut res = b.see_other("/oauth2/signin");
    set_cookie(&mut res, SESSION_COOKIE, "", Some(0), b.secure);
    res
}

fn to_signin(b: &Browser, next: &str) -> Response {
    let query = form_urlencoded::Serializer::new(String::new()).append_pair("next", next).finish();
    b.see_other(&format!("/oauth2/signin?{query}"))
}

// ---------------------------------------------------------------------------------------------
// Connected apps

/// `GET /oauth2/apps`: the apps holding access to the signed-in user's account.
pub async fn apps(
    State(state): State<AppState>,
    headers: HeaderMap,
    QueryPairs(query): QueryPairs,
) -> Response {
    let b = browser(&state, &headers).await;
    let Some(session) = &b.session else { return to_signin(&b, "/oauth2/apps") };
    let flash = form_value(&query, "revoked").map(|name| format!("{name} no longer has access."));
    apps_page(&state, &b, session, flash.as_deref(), None).await
}

async fn apps_page(
    state: &AppState,
    b: &Browser,
    session: &BrowserSession,
    flash: Option<&str>,
    error: Option<&str>,
) -> Response {
    match state.engine.connected_apps(session).await {
        Ok(apps) => {
            let page = AppsPage { csrf: &b.csrf, email: &session.email, apps: &apps, flash, error };
            b.page(StatusCode::OK, page.render())
        }
        Err(e) => {
            tracing::error!(error = %e, "connected apps failed");
            b.error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Connected apps",
                "The list of apps could not be read.",
            )
        }
    }
}

/// `POST /oauth2/apps/revoke`: ends every grant of one app.
pub async fn revoke_app(
    State(state): State<AppState>,
    PostedForm { b, form }: PostedForm,
) -> Response {
    let Some(session) = &b.session else { return to_signin(&b, "/oauth2/apps") };
    let client_id = form_value(&form, "client_id").unwrap_or_default();
    match state.engine.revoke_app(session, client_id).await {
        Ok(name) => {
            let query = form_urlencoded::Serializer::new(String::new())
                .append_pair("revoked", &name)
                .finish();
            b.see_other(&format!("/oauth2/apps?{query}"))
        }
        Err(e) => apps_page(&state, &b, session, None, Some(&e.to_string())).await,
    }
}

// ---------------------------------------------------------------------------------------------
// EHR launch

/// `GET /oauth2/launch?project=…&patient_name=…&patient_birthdate=…`: a signed-in
/// practitioner finds a patient and launches a registered app for them.
pub async fn launch_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    QueryPairs(query): QueryPairs,
) -> Response {
    let b = browser(&state, &headers).await;
    let Some(session) = &b.session else {
        // Back to the same search after signing in.
        let query = form_urlencoded::Serializer::new(String::new()).extend_pairs(&query).finish();
        let next = if query.is_empty() {
            "/oauth2/launch".to_owned()
        } else {
            format!("/oauth2/launch?{query}")
        };
        return to_signin(&b, &next);
    };
    render_launch(&state, &b, session, &query, None).await
}

async fn render_launch(
    state: &AppState,
    b: &Browser,
    session: &BrowserSession,
    query: &[(String, String)],
    error: Option<&str>,
) -> Response {
    let projects = match state.engine.session_projects(session).await {
        Ok(p) => p,
        Err(e) => {
            return b.error(StatusCode::INTERNAL_SERVER_ERROR, "Launch an app", &e.to_string());
        }
    };
    if projects.is_empty() {
        return b.error(
            StatusCode::FORBIDDEN,
            "Launch an app",
            "Your account belongs to no project.",
        );
    }
    let chosen = form_value(query, "project")
        .and_then(|p| projects.iter().find(|(id, _)| id.as_str() == p))
        .unwrap_or(&projects[0])
        .0
        .clone();
    let apps = state.engine.launchable_apps(&chosen).await.unwrap_or_default();
    let name = form_value(query, "patient_name").unwrap_or_default();
    let birth_date = form_value(query, "patient_birthdate").unwrap_or_default();
    let searched = !name.trim().is_empty() || !birth_date.trim().is_empty();
    let mut message = error.map(str::to_owned);
    let mut patients = Vec::new();
    if searched {
        match state.engine.pick_patients(session, &chosen, name, birth_date).await {
            Ok(found) => {
                for patient in found {
                    let encounters = state
                        .engine
                        .patient_encounters(session, &chosen, &patient.id)
                        .await
                        .unwrap_or_default();
                    patients.push((patient, encounters));
                }
            }
            Err(AuthorizeError::Page(m) | AuthorizeError::Redirect(m)) => message = Some(m),
        }
    }
    let projects: Vec<(String, String)> =
        projects.into_iter().map(|(id, name)| (id.as_str().to_owned(), name)).collect();
    let page = LaunchPage {
        csrf: &b.csrf,
        email: &session.email,
        projects: &projects,
        project: chosen.as_str(),
        apps: &apps,
        name,
        birth_date,
        searched,
        patients: &patients,
        error: message.as_deref(),
    };
    b.page(StatusCode::OK, page.render())
}

/// `POST /oauth2/launch`: makes the launch context and sends the browser to the app's
/// `launchUri?iss=…&launch=…`.
pub async fn launch(State(state): State<AppState>, PostedForm { b, form }: PostedForm) -> Response {
    let Some(session) = &b.session else { return to_signin(&b, "/oauth2/launch") };
    let project = form_value(&form, "project")
        .filter(|p| kiln_model::is_valid_id(p))
        .map(|p| ProjectId::new(p.to_owned()));
    let Some(project) = project else {
        return render_launch(&state, &b, session, &form, Some("Choose a project")).await;
    };
    let outcome = state
        .engine
        .session_launch(
            session,
            &project,
            form_value(&form, "client_id").unwrap_or_default(),
            form_value(&form, "patient").unwrap_or_default(),
            form_value(&form, "encounter").map(str::trim),
        )
        .await;
    match outcome {
        Ok(url) => b.see_other(&url),
        Err(AuthorizeError::Page(m) | AuthorizeError::Redirect(m)) => {
            render_launch(&state, &b, session, &form, Some(&m)).await
        }
    }
}
