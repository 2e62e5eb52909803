//! TOTP multi-factor authentication with Medplum's contract (`/auth/mfa/*`).
//!
//! Enrolment: [`Engine::mfa_status`] gives a signed-in user not yet enrolled a secret (stored
//! in `User.mfaSecret`, which is never served) and its `otpauth://` URI for an authenticator
//! app; [`Engine::mfa_enroll`] with a current code sets `User.mfaEnrolled`. From then on
//! `/auth/login` answers `{login, mfaRequired: true}` with a Login marked `mfaVerified: false`,
//! and [`Engine::mfa_verify`] with a current code continues the sign-in (a code, or the
//! memberships to choose from). [`Engine::mfa_disable`] with a current code removes both.
//!
//! The secret is kept as is (it must be readable to compute codes). Wrong codes count in the
//! login throttle per user and per address, so guessing six digits is slowed down.

use kiln_store::ProjectId;
use serde_json::{Value, json};

use crate::accounts::{Authenticated, account_keys, parse_body, system, version_precondition};
use crate::{Engine, EngineError};

/// The issuer named in `otpauth://` URIs (what authenticator apps show above the code).
const ISSUER: &str = "Kiln";
/// How long a Login may wait for its second factor.
const MFA_LOGIN_SECS: i64 = 600;

/// Unix time now, in seconds.
fn now_secs() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp()).unwrap_or_default()
}

fn invalid_token() -> EngineError {
    EngineError::Invalid(vec![
        kiln_model::Issue::error(kiln_model::IssueCode::Invalid, "Invalid token").at("token"),
    ])
}

/// `otpauth://totp/<issuer>:<email>?secret=<base32>&issuer=<issuer>` (Key URI format).
fn enroll_uri(email: &str, secret: &str) -> String {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    let enc = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
    format!(
        "otpauth://totp/{}:{}?secret={secret}&issuer={}&algorithm=SHA1&digits=6&period=30",
        enc(ISSUER),
        enc(email),
        enc(ISSUER)
    )
}

/// The enrolment URI as a QR code: an SVG data URL, what Medplum's sign-in form shows as an
/// image for authenticator apps to scan.
fn qr_data_url(text: &str) -> Option<String> {
    use base64::Engine as _;
    let code = qrcode::QrCode::new(text.as_bytes()).ok()?;
    let svg = code.render::<qrcode::render::svg::Color>().min_dimensions(200, 200).build();
    Some(format!(
        "data:image/svg+xml;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(svg)
    ))
}

impl Engine {
    /// The signed-in user (a client application has no second factor: 403).
    async fn mfa_user(&self, who: &Authenticated) -> Result<(Value, i64), EngineError> {
        let Some(user_id) = &who.user_id else {
            return Err(EngineError::Forbidden("A client application has no MFA".into()));
        };
        match self.read_live(&ProjectId::system(), "User", user_id).await? {
            Some(stored) => Ok((parse_body(&stored)?, stored.version)),
            None => Err(EngineError::NotFound("User not found".into())),
        }
    }

    /// Writes a changed User back, conditional on the version read, keeping its unique keys.
    async fn put_user(&self, user: Value, version: i64) -> Result<(), EngineError> {
        let keys = account_keys(&user);
        self.put_account(&system(), user, kiln_store::Precondition::VersionIs(version), keys)
            .await?;
        Ok(())
    }

    /// Checks a code against the user's secret; wrong codes are throttled per user and
    /// address (`remote_addr`), a right one clears the user's count.
    pub(crate) async fn check_code(
        &self,
        user: &Value,
        token: &str,
        remote_addr: Option<&str>,
    ) -> Result<(), EngineError> {
        let mut keys = vec![format!("mfa:{}", user["id"].as_str().unwrap_or_default())];
        if let Some(addr) = remote_addr {
            keys.push(format!("ip:{addr}"));
        }
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        self.throttle_wait(&keys).await;
        let secret = user["mfaSecret"].as_str().unwrap_or_default();
        if kiln_auth::totp::verify(secret, token, now_secs()) {
            self.throttle_clear(keys[0]).await;
            Ok(())
        } else {
            self.throttle_fail(&keys).await;
            Err(invalid_token())
        }
    }

    /// `GET /auth/mfa/status`: `{enrolled: true}`, or `{enrolled: false, enrollUri,
    /// enrollQrCode}` with a secret generated and stored on first use.
    pub async fn mfa_status(&self, who: &Authenticated) -> Result<Value, EngineError> {
        let (mut user, version) = self.mfa_user(who).await?;
        if user["mfaEnrolled"] == json!(true) {
            return Ok(json!({ "enrolled": true }));
        }
        let secret = match user["mfaSecret"].as_str().filter(|s| !s.is_empty()) {
            Some(secret) => secret.to_owned(),
            None => {
                let secret = kiln_auth::totp::generate_secret();
                user["mfaSecret"] = json!(secret);
                self.put_user(user.clone(), version).await?;
                secret
            }
        };
        let email = user["email"].as_str().unwrap_or_default();
        let uri = enroll_uri(email, &secret);
        Ok(json!({ "enrolled": false, "enrollQrCode": qr_data_url(&uri), "enrollUri": uri }))
    }

    /// `POST /auth/mfa/enroll {token}`: a current code for the stored secret enrols the user.
    pub async fn mfa_enroll(
        &self,
        who: &Authenticated,
        token: &str,
        remote_addr: Option<&str>,
    ) -> Result<(), EngineError> {
        let (mut user, version) = self.mfa_user(who).await?;
        if user["mfaEnrolled"] == json!(true) {
            return Err(EngineError::invalid("Already enrolled"));
        }
        if user["mfaSecret"].as_str().is_none_or(str::is_empty) {
            return Err(EngineError::invalid("Secret not found: call /auth/mfa/status first"));
        }
        self.check_code(&user, token, remote_addr).await?;
        user["mfaEnrolled"] = json!(true);
        self.put_user(user, version).await
    }

    /// `POST /auth/mfa/disable {token}`: a current code removes the enrolment and the secret
    /// (the next enrolment gets a new one).
    pub async fn mfa_disable(
        &self,
        who: &Authenticated,
        token: &str,
        remote_addr: Option<&str>,
    ) -> Result<(), EngineError> {
        let (mut user, version) = self.mfa_user(who).await?;
        if user["mfaEnrolled"] != json!(true) {
            return Err(EngineError::invalid("User not enrolled in MFA"));
        }
        self.check_code(&user, token, remote_addr).await?;
        if let Value::Object(fields) = &mut user {
            fields.remove("mfaSecret");
            fields.insert("mfaEnrolled".into(), json!(false));
        }
        self.put_user(user, version).await
    }

    /// `POST /auth/mfa/verify {login, token}`: the second factor of a sign-in that answered
    /// `mfaRequired`. A current code marks the Login verified and continues the sign-in:
    /// `{login, code}` for one membership, `{login, memberships}` for several.
    pub async fn mfa_verify(
        &self,
        login_id: &str,
        token: &str,
        remote_addr: Option<&str>,
    ) -> Result<Value, EngineError> {
        let mut login = self.live_login(login_id).await?;
        if login["mfaVerified"] != json!(false) || login["granted"] == json!(true) {
            return Err(EngineError::invalid("This login is not waiting for MFA"));
        }
        let auth_time = crate::accounts::instant_secs(&login["authTime"]);
        if auth_time.is_none_or(|t| chrono::Utc::now().timestamp() - t > MFA_LOGIN_SECS) {
            return Err(EngineError::invalid("Login expired: sign in again"));
        }
        let user_id = login["user"]["reference"]
            .as_str()
            .and_then(|r| r.strip_prefix("User/"))
            .ok_or_else(|| EngineError::invalid("This login has no user"))?
            .to_owned();
        let user = match self.read_live(&ProjectId::system(), "User", &user_id).await? {
            Some(stored) => parse_body(&stored)?,
            None => return Err(EngineError::NotFound("User not found".into())),
        };
        self.check_code(&user, token, remote_addr).await?;
        // Verified once: the Login is rewritten conditionally on the version read, so two
        // concurrent verifications cannot both continue.
        login["mfaVerified"] = json!(true);
        let precondition = version_precondition(&login);
        let stored = self.put_account(&system(), login, precondition, vec![]).await.map_err(
            |e| match e {
                EngineError::PreconditionFailed(_) => {
                    EngineError::invalid("This login is not waiting for MFA")
                }
                other => other,
            },
        )?;
        let mut login = parse_body(&stored)?;
        let mut memberships = self.memberships(&user_id).await?;
        // The project asked for at sign-in (if any) filters the memberships, then makes way
        // for the one chosen.
        if let Some(project) = login["project"]["reference"].as_str() {
            let project = project.trim_start_matches("Project/").to_owned();
            memberships.retain(|(p, _)| p.as_str() == project);
            if let Value::Object(fields) = &mut login {
                fields.remove("project");
            }
        }
        if memberships.is_empty() {
            return Err(EngineError::Forbidden("User has no access to any project".into()));
        }
        self.offer_memberships(login, memberships).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_enroll_uri_names_issuer_account_and_secret() {
        let uri = enroll_uri("ann+x@example.com", "JBSWY3DPEHPK3PXP");
        assert_eq!(
            uri,
            "otpauth://totp/Kiln:ann%2Bx%40example%2Ecom?secret=JBSWY3DPEHPK3PXP&issuer=Kiln\
             &algorithm=SHA1&digits=6&period=30"
        );
    }
}
