//! Kiln's HTTP edge: the axum router, extractors, content negotiation, errors as
//! `OperationOutcome`, TLS and graceful shutdown. **Invariant**: this is the only crate that
//! knows axum, HTTP headers and status codes; handlers are thin and call `kiln_engine::Engine`.
//!
//! Layout: [`router`] builds the routes (`fhir` for `/fhir/R4`, `auth_routes` for login and
//! tokens, `admin_routes` for `/admin/projects`); [`serve`] binds, speaks HTTP or HTTPS, and
//! drains on shutdown.

mod admin_routes;
mod auth_routes;
mod bulk_routes;
pub mod client_ip;
mod error;
mod extract;
mod fhir;
mod openapi;
mod response;
mod smart_routes;
mod terminology_routes;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderName, Request};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kiln_engine::Engine;
use serde_json::{Value, json};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use error::ApiError;

/// Shared by every handler. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    /// Largest request body accepted, in bytes.
    pub max_body: usize,
    /// Built once at start-up; `/metadata` serves it.
    pub capability: Arc<Value>,
    /// Proxies whose `X-Forwarded-For` is believed ([`client_ip`]); empty: none.
    pub trusted_proxies: Arc<Vec<client_ip::Cidr>>,
    /// `/openapi.json`, made from `capability` on first use ([`AppState::prepare_openapi`]).
    openapi: Arc<std::sync::OnceLock<openapi::OpenApi>>,
}

impl AppState {
    pub fn new(engine: Engine, max_body: usize) -> AppState {
        let capability = Arc::new(engine.capability_statement());
        AppState {
            engine,
            max_body,
            capability,
            trusted_proxies: Arc::default(),
            openapi: Arc::default(),
        }
    }

    /// Builds the OpenAPI document now rather than on its first request (`kiln serve` does, at
    /// start-up). Call it after the engine's feature switches are set.
    pub fn prepare_openapi(self) -> AppState {
        self.openapi();
        self
    }

    fn openapi(&self) -> &openapi::OpenApi {
        self.openapi.get_or_init(|| {
            openapi::OpenApi::build(
                &self.capability,
                self.engine.base_url(),
                self.engine.registration(),
            )
        })
    }

    /// Believes `X-Forwarded-For` from these proxies (`--trusted-proxies`).
    pub fn with_trusted_proxies(mut self, proxies: Vec<client_ip::Cidr>) -> AppState {
        self.trusted_proxies = Arc::new(proxies);
        self
    }
}

async fn healthcheck(State(state): State<AppState>) -> Response {
    axum::Json(json!({
        "ok": true,
        "version": env!("CARGO_PKG_VERSION"),
        "storage": state.engine.store().kind(),
    }))
    .into_response()
}

/// Turns a panic inside a handler into a 500 OperationOutcome; the panic itself is logged.
fn panic_response(_err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("handler panicked");
    ApiError::Engine(kiln_engine::EngineError::Internal("panic".into())).into_response()
}

/// CORS for browser apps: any origin, no credentials, the headers FHIR clients read.
fn cors() -> tower_http::cors::CorsLayer {
    use axum::http::header;
    tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods(tower_http::cors::Any)
        .allow_headers(tower_http::cors::Any)
        .expose_headers([
            header::LOCATION,
            header::ETAG,
            header::LAST_MODIFIED,
            header::CONTENT_LOCATION,
            HeaderName::from_static("x-request-id"),
        ])
        .max_age(Duration::from_secs(3600))
}

/// The whole application: routes and middleware.
pub fn router(state: AppState) -> Router {
    let fhir = Router::new()
        .route("/metadata", get(fhir::metadata).fallback(fhir::method_not_allowed))
        .route("/_history", get(fhir::history_system).fallback(fhir::method_not_allowed))
        .route(
            "/{ty}",
            get(fhir::search_type)
                .post(fhir::create)
                .put(fhir::update_conditional)
                .patch(fhir::patch_conditional)
                .delete(fhir::delete_conditional)
                .fallback(fhir::method_not_allowed),
        )
        .route("/{ty}/_history", get(fhir::history_type).fallback(fhir::method_not_allowed))
        .route(
            "/{ty}/{id}",
            get(fhir::read)
                .post(fhir::type_operation)
                .put(fhir::update)
                .patch(fhir::patch)
                .delete(fhir::delete)
                .fallback(fhir::method_not_allowed),
        )
        .route(
            "/{ty}/{id}/_history",
            get(fhir::history_instance).fallback(fhir::method_not_allowed),
        )
        .route("/{ty}/{id}/_history/{vid}", get(fhir::vread).fallback(fhir::method_not_allowed))
        .route(
            "/job/{id}/status",
            get(fhir::job_status).delete(fhir::job_cancel).fallback(fhir::method_not_allowed),
        )
        .route("/job/{id}/file/{n}", get(bulk_routes::file).fallback(fhir::method_not_allowed))
        .route(
            "/{ty}/{id}/{comp}",
            get(fhir::search_compartment)
                .post(fhir::instance_operation)
                .fallback(fhir::method_not_allowed),
        );

    let request_id = HeaderName::from_static("x-request-id");
    Router::new()
        .route("/healthcheck", get(healthcheck))
        .route("/openapi.json", get(openapi::serve))
        .route("/auth/login", post(auth_routes::login))
        .route("/auth/profile", post(auth_routes::profile))
        .route("/auth/me", get(auth_routes::me))
        .route("/auth/setpassword", post(auth_routes::set_password))
        .route("/auth/changepassword", post(auth_routes::change_password))
        .route("/auth/newuser", post(auth_routes::new_user))
        .route("/auth/newproject", post(auth_routes::new_project))
        .route("/auth/newpatient", post(auth_routes::new_patient))
        .route("/auth/resetpassword", post(auth_routes::reset_password))
        .route("/auth/revoke", post(auth_routes::revoke))
        .route("/auth/mfa/status", get(auth_routes::mfa_status))
        .route("/auth/mfa/enroll", post(auth_routes::mfa_enroll))
        .route("/auth/mfa/verify", post(auth_routes::mfa_verify))
        .route("/auth/mfa/disable", post(auth_routes::mfa_disable))
        .route(
            "/admin/projects",
            post(admin_routes::create_project).fallback(fhir::method_not_allowed),
        )
        .route(
            "/admin/projects/{project_id}",
            get(admin_routes::project).fallback(fhir::method_not_allowed),
        )
        .route(
            "/admin/projects/{project_id}/invite",
            post(admin_routes::invite).fallback(fhir::method_not_allowed),
        )
        .route(
            "/admin/projects/{project_id}/client",
            post(admin_routes::client).fallback(fhir::method_not_allowed),
        )
        .route(
            "/admin/projects/{project_id}/members/{membership_id}",
            get(admin_routes::get_member)
                .post(admin_routes::update_member)
                .delete(admin_routes::delete_member)
                .fallback(fhir::method_not_allowed),
        )
        .route("/oauth2/token", post(auth_routes::token))
        .route("/oauth2/logout", post(auth_routes::logout).get(auth_routes::logout))
        .route("/oauth2/introspect", post(auth_routes::introspect))
        .route("/oauth2/revoke", post(auth_routes::revoke_token))
        .route("/.well-known/jwks.json", get(auth_routes::jwks))
        .route("/.well-known/smart-configuration", get(smart_routes::smart_configuration))
        .route("/fhir/R4/.well-known/smart-configuration", get(smart_routes::smart_configuration))
        .route("/.well-known/openid-configuration", get(smart_routes::openid_configuration))
        .route("/oauth2/smart-style.json", get(smart_routes::smart_style))
        .route("/oauth2/userinfo", get(smart_routes::userinfo).post(smart_routes::userinfo))
        .route(
            "/oauth2/authorize",
            get(smart_routes::authorize_get).post(smart_routes::authorize_post),
        )
        .route("/oauth2/authorize/signin", post(smart_routes::authorize_signin))
        .route("/oauth2/authorize/consent", post(smart_routes::authorize_consent))
        .route("/oauth2/signin", get(smart_routes::signin_page).post(smart_routes::signin))
        .route("/oauth2/signout", post(smart_routes::signout))
        .route("/oauth2/apps", get(smart_routes::apps))
        .route("/oauth2/apps/revoke", post(smart_routes::revoke_app))
        .route("/oauth2/launch", get(smart_routes::launch_page).post(smart_routes::launch))
        // The base URL takes batch and transaction Bundles, with or without a trailing slash.
        .route(
            "/fhir/R4",
            get(fhir::search_system).post(fhir::bundle).fallback(fhir::method_not_allowed),
        )
        .route(
            "/fhir/R4/",
            get(fhir::search_system).post(fhir::bundle).fallback(fhir::method_not_allowed),
        )
        .nest("/fhir/R4", fhir)
        .fallback(fhir::not_found)
        .with_state(state)
        // Bodies are limited by our own extractor, which answers 413 with an OperationOutcome.
        .layer(DefaultBodyLimit::disable())
        .layer(CatchPanicLayer::custom(panic_response))
        // Browser apps (SMART JS clients, Medplum's web app) call the API, the token endpoint
        // and discovery from other origins with bearer tokens, never cookies: any origin may,
        // without credentials. The HTML pages' cookies are SameSite and never sent by CORS.
        .layer(cors())
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                let id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                tracing::info_span!("request", method = %req.method(), uri = %req.uri().path(), request_id = %id)
            }),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}

/// TLS certificate and key (PEM files).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// rustls with TLS 1.3 and 1.2 only (rustls implements nothing older), ALPN h2 and http/1.1.
pub fn tls_config(files: &TlsFiles) -> Result<rustls::ServerConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| format!("cannot read {}: {e}", files.cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate in {}: {e}", files.cert.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", files.cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("cannot read key {}: {e}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not fit: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting and gives
/// in-flight requests up to `drain` to finish.
pub async fn serve(
    listener: std::net::TcpListener,
    app: Router,
    tls: Option<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let handle = axum_server::Handle::new();
    let trigger = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        trigger.graceful_shutdown(Some(drain));
    });
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    match tls {
        Some(config) => {
            let config = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(config));
            axum_server::from_tcp_rustls(listener, config)?.handle(handle).serve(service).await
        }
        None => axum_server::from_tcp(listener)?.handle(handle).serve(service).await,
    }
}
