//! OAuth scope strings and SMART App Launch (v1 and v2) scope parsing.
//!
//! [`ScopeSet`] is the space-separated `scope` parameter as an ordered,
//! de-duplicated set of raw strings. [`SmartScope::parse`] interprets one
//! scope: OIDC/SMART keywords, launch context requests and clinical
//! resource scopes such as `patient/Observation.rs?category=laboratory`.
//!
//! SMART v1 permission words map onto v2 letters as the SMART v2
//! specification prescribes: `read` → `rs`, `write` → `cud`, `*` → `cruds`.
//! Query restrictions (`?category=...`) are kept as the raw string; this
//! module does not evaluate them.

use std::fmt;
use std::str::FromStr;

use crate::error::{AuthError, Result};

/// The `scope` parameter as an ordered set without duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeSet {
    scopes: Vec<String>,
}

/// Parses a space-separated scope string (any ASCII whitespace separates;
/// empty items and duplicates are dropped, first occurrence wins).
pub fn parse_scopes(scope: &str) -> ScopeSet {
    ScopeSet::parse(scope)
}

impl ScopeSet {
    /// See [`parse_scopes`].
    pub fn parse(scope: &str) -> ScopeSet {
        scope.split_ascii_whitespace().collect()
    }

    /// Adds `scope` unless present; returns whether it was added. Strings
    /// containing whitespace are split into several scopes.
    pub fn insert(&mut self, scope: &str) -> bool {
        let mut added = false;
        for item in scope.split_ascii_whitespace() {
            if !self.contains(item) {
                self.scopes.push(item.to_owned());
                added = true;
            }
        }
        added
    }

    /// Removes `scope`; returns whether it was present.
    pub fn remove(&mut self, scope: &str) -> bool {
        let before = self.scopes.len();
        self.scopes.retain(|s| s != scope);
        self.scopes.len() != before
    }

    /// Whether `scope` is in the set (exact string match).
    pub fn contains(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// Whether `openid` was requested (an OIDC request: issue an ID token).
    pub fn has_openid(&self) -> bool {
        self.contains("openid")
    }

    /// Whether `offline_access` was requested (issue a refresh token that
    /// outlives the session).
    pub fn has_offline_access(&self) -> bool {
        self.contains("offline_access")
    }

    /// Whether `online_access` was requested.
    pub fn has_online_access(&self) -> bool {
        self.contains("online_access")
    }

    /// Whether `fhirUser` was requested.
    pub fn has_fhir_user(&self) -> bool {
        self.contains("fhirUser")
    }

    /// The scopes in request order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.scopes.iter().map(String::as_str)
    }

    /// Number of scopes.
    pub fn len(&self) -> usize {
        self.scopes.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty()
    }

    /// The scopes also present in `other` (exact string match), in this
    /// set's order.
    #[must_use]
    pub fn intersection(&self, other: &ScopeSet) -> ScopeSet {
        self.iter().filter(|s| other.contains(s)).collect()
    }

    /// Every scope interpreted as a [`SmartScope`], in order.
    pub fn smart_scopes(&self) -> Vec<SmartScope> {
        self.iter().map(SmartScope::parse).collect()
    }

    /// Only the clinical resource scopes, in order.
    pub fn resource_scopes(&self) -> Vec<ResourceScope> {
        self.iter().filter_map(|s| ResourceScope::parse(s).ok()).collect()
    }
}

impl fmt::Display for ScopeSet {
    /// Joins the scopes with single spaces, ready for a `scope` field.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.scopes.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(s)?;
        }
        Ok(())
    }
}

impl FromStr for ScopeSet {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(ScopeSet::parse(s))
    }
}

impl<'a> FromIterator<&'a str> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = &'a str>>(iter: I) -> Self {
        let mut set = ScopeSet::default();
        for s in iter {
            set.insert(s);
        }
        set
    }
}

/// One scope, interpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmartScope {
    /// `openid`.
    OpenId,
    /// `fhirUser`.
    FhirUser,
    /// `profile` (OIDC; SMART v1's predecessor of `fhirUser`).
    Profile,
    /// `offline_access`.
    OfflineAccess,
    /// `online_access`.
    OnlineAccess,
    /// `launch`: EHR launch, context comes from the `launch` parameter.
    Launch,
    /// `launch/<context>` (standalone launch), e.g. `patient`, `encounter`.
    LaunchContext(String),
    /// A clinical resource scope such as `user/*.read` or `patient/Observation.rs`.
    Resource(ResourceScope),
    /// Anything else (custom scopes, `email`, malformed resource scopes).
    Other(String),
}

impl SmartScope {
    /// Interprets one scope string. Never fails: unrecognized or malformed
    /// scopes become [`SmartScope::Other`], which grants nothing.
    pub fn parse(scope: &str) -> SmartScope {
        match scope {
            "openid" => SmartScope::OpenId,
            "fhirUser" => SmartScope::FhirUser,
            "profile" => SmartScope::Profile,
            "offline_access" => SmartScope::OfflineAccess,
            "online_access" => SmartScope::OnlineAccess,
            "launch" => SmartScope::Launch,
            _ => {
                if let Some(ctx) = scope.strip_prefix("launch/") {
                    if !ctx.is_empty()
                        && ctx.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    {
                        return SmartScope::LaunchContext(ctx.to_owned());
                    }
                    return SmartScope::Other(scope.to_owned());
                }
                match ResourceScope::parse(scope) {
                    Ok(rs) => SmartScope::Resource(rs),
                    Err(_) => SmartScope::Other(scope.to_owned()),
                }
            }
        }
    }
}

impl fmt::Display for SmartScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SmartScope::OpenId => f.write_str("openid"),
            SmartScope::FhirUser => f.write_str("fhirUser"),
            SmartScope::Profile => f.write_str("profile"),
            SmartScope::OfflineAccess => f.write_str("offline_access"),
            SmartScope::OnlineAccess => f.write_str("online_access"),
            SmartScope::Launch => f.write_str("launch"),
            SmartScope::LaunchContext(ctx) => write!(f, "launch/{ctx}"),
            SmartScope::Resource(rs) => rs.fmt(f),
            SmartScope::Other(s) => f.write_str(s),
        }
    }
}

/// Whose data a resource scope covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScopeContext {
    /// `patient/`: data of the patient in context.
    Patient,
    /// `user/`: data the user may access.
    User,
    /// `system/`: backend services, no user.
    System,
}

impl ScopeContext {
    /// The scope prefix without the slash.
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeContext::Patient => "patient",
            ScopeContext::User => "user",
            ScopeContext::System => "system",
        }
    }
}

/// Which resource types a resource scope covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ResourceSelector {
    /// `*`: every resource type.
    Any,
    /// One resource type, e.g. `Observation`.
    Type(String),
}

impl ResourceSelector {
    /// Whether this selector covers `resource_type`.
    pub fn matches(&self, resource_type: &str) -> bool {
        match self {
            ResourceSelector::Any => true,
            ResourceSelector::Type(t) => t == resource_type,
        }
    }
}

/// Which SMART syntax a resource scope was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SmartVersion {
    /// `.read`, `.write`, `.*`.
    V1,
    /// `.cruds` letters.
    V2,
}

/// A set of SMART v2 permissions (create, read, update, delete, search).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Permissions(u8);

impl Permissions {
    /// No permission.
    pub const NONE: Permissions = Permissions(0);
    /// `c`: create.
    pub const CREATE: Permissions = Permissions(1);
    /// `r`: read (by id, including vread and history of one resource).
    pub const READ: Permissions = Permissions(1 << 1);
    /// `u`: update (and patch).
    pub const UPDATE: Permissions = Permissions(1 << 2);
    /// `d`: delete.
    pub const DELETE: Permissions = Permissions(1 << 3);
    /// `s`: search (and type-level history).
    pub const SEARCH: Permissions = Permissions(1 << 4);
    /// `cruds`: everything.
    pub const ALL: Permissions = Permissions(0b1_1111);

    const LETTERS: [(char, Permissions); 5] = [
        ('c', Permissions::CREATE),
        ('r', Permissions::READ),
        ('u', Permissions::UPDATE),
        ('d', Permissions::DELETE),
        ('s', Permissions::SEARCH),
    ];

    /// Parses SMART v2 letters. They must come in the canonical order
    /// `c r u d s`, each at most once, at least one.
    pub fn from_v2(letters: &str) -> Option<Permissions> {
        let mut result = Permissions::NONE;
        let mut next = 0;
        for ch in letters.chars() {
            let pos = Self::LETTERS[next..].iter().position(|(l, _)| *l == ch)? + next;
            result = result.union(Self::LETTERS[pos].1);
            next = pos + 1;
        }
        (!result.is_empty()).then_some(result)
    }

    /// Maps a SMART v1 permission word: `read` → `rs`, `write` → `cud`,
    /// `*` → `cruds`.
    pub fn from_v1(word: &str) -> Option<Permissions> {
        match word {
            "read" => Some(Permissions::READ.union(Permissions::SEARCH)),
            "write" => {
                Some(Permissions::CREATE.union(Permissions::UPDATE).union(Permissions::DELETE))
            }
            "*" => Some(Permissions::ALL),
            _ => None,
        }
    }

    /// Both sets combined.
    #[must_use]
    pub const fn union(self, other: Permissions) -> Permissions {
        Permissions(self.0 | other.0)
    }

    /// Permissions present in both.
    #[must_use]
    pub const fn intersection(self, other: Permissions) -> Permissions {
        Permissions(self.0 & other.0)
    }

    /// Whether every permission in `other` is also in `self`.
    pub const fn contains(self, other: Permissions) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no permission is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The v2 letters in canonical order, e.g. `"rs"`.
    pub fn to_v2_string(self) -> String {
        Self::LETTERS.iter().filter(|(_, p)| self.contains(*p)).map(|(l, _)| *l).collect()
    }

    /// The v1 word if this set is exactly one of the v1 meanings.
    pub fn to_v1_word(self) -> Option<&'static str> {
        if self == Permissions::ALL {
            Some("*")
        } else if Some(self) == Permissions::from_v1("read") {
            Some("read")
        } else if Some(self) == Permissions::from_v1("write") {
            Some("write")
        } else {
            None
        }
    }
}

impl fmt::Debug for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Permissions({})", self.to_v2_string())
    }
}

impl fmt::Display for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_v2_string())
    }
}

/// A clinical resource scope: `<context>/<Type|*>.<permissions>[?<query>]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceScope {
    /// `patient`, `user` or `system`.
    pub context: ScopeContext,
    /// The resource type or `*`.
    pub resource: ResourceSelector,
    /// Granted interactions (v1 words already mapped to v2 letters).
    pub permissions: Permissions,
    /// Raw query restriction after `?` (SMART v2 fine-grained scopes),
    /// e.g. `category=laboratory`; not interpreted here.
    pub query: Option<String>,
    /// The syntax the scope was written in.
    pub version: SmartVersion,
}

impl ResourceScope {
    /// Parses one resource scope, e.g. `patient/Observation.rs`,
    /// `user/*.read`, `system/*.cruds`,
    /// `patient/Observation.rs?category=laboratory`.
    pub fn parse(scope: &str) -> Result<ResourceScope> {
        let invalid = |why: &str| AuthError::InvalidScope(format!("{scope}: {why}"));

        let (body, query) = match scope.split_once('?') {
            Some((_, "")) => return Err(invalid("empty query")),
            Some((body, query)) => (body, Some(query.to_owned())),
            None => (scope, None),
        };
        let (context, rest) = body.split_once('/').ok_or_else(|| invalid("missing '/'"))?;
        let context = match context {
            "patient" => ScopeContext::Patient,
            "user" => ScopeContext::User,
            "system" => ScopeContext::System,
            _ => return Err(invalid("unknown context")),
        };
        let (resource, perms) = rest.rsplit_once('.').ok_or_else(|| invalid("missing '.'"))?;
        let resource = if resource == "*" {
            ResourceSelector::Any
        } else if is_resource_type(resource) {
            ResourceSelector::Type(resource.to_owned())
        } else {
            return Err(invalid("bad resource type"));
        };
        let (permissions, version) = if let Some(p) = Permissions::from_v1(perms) {
            (p, SmartVersion::V1)
        } else if let Some(p) = Permissions::from_v2(perms) {
            (p, SmartVersion::V2)
        } else {
            return Err(invalid("bad permissions"));
        };
        Ok(ResourceScope { context, resource, permissions, query, version })
    }

    /// Whether this scope grants all of `needed` on `resource_type`,
    /// ignoring any query restriction (the caller must apply
    /// [`ResourceScope::query`] itself).
    pub fn allows(&self, resource_type: &str, needed: Permissions) -> bool {
        self.resource.matches(resource_type) && self.permissions.contains(needed)
    }
}

impl fmt::Display for ResourceScope {
    /// Renders in the scope's original syntax (v1 word or v2 letters).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.context.as_str())?;
        f.write_str("/")?;
        match &self.resource {
            ResourceSelector::Any => f.write_str("*")?,
            ResourceSelector::Type(t) => f.write_str(t)?,
        }
        f.write_str(".")?;
        match (self.version, self.permissions.to_v1_word()) {
            (SmartVersion::V1, Some(word)) => f.write_str(word)?,
            _ => f.write_str(&self.permissions.to_v2_string())?,
        }
        if let Some(q) = &self.query {
            write!(f, "?{q}")?;
        }
        Ok(())
    }
}

/// FHIR resource type names: an uppercase ASCII letter followed by ASCII
/// letters and digits.
fn is_resource_type(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_uppercase()) && bytes.all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(scope: &str) -> ResourceScope {
        ResourceScope::parse(scope).unwrap_or_else(|e| panic!("{scope}: {e}"))
    }

    fn perms(v2: &str) -> Permissions {
        Permissions::from_v2(v2).unwrap()
    }

    #[test]
    fn scope_set_parsing() {
        let set = parse_scopes("  openid  fhirUser openid\toffline_access user/*.read ");
        assert_eq!(set.len(), 4);
        assert_eq!(set.to_string(), "openid fhirUser offline_access user/*.read");
        assert!(set.has_openid());
        assert!(set.has_offline_access());
        assert!(set.has_fhir_user());
        assert!(!set.has_online_access());
        assert!(parse_scopes("").is_empty());
        assert!(!parse_scopes("openidx").has_openid());
    }

    #[test]
    fn scope_set_editing() {
        let mut set: ScopeSet = "a b".parse().unwrap();
        assert!(set.insert("c"));
        assert!(!set.insert("a"));
        assert!(set.remove("b"));
        assert!(!set.remove("b"));
        assert_eq!(set.to_string(), "a c");
        let other = parse_scopes("c d a");
        assert_eq!(set.intersection(&other).to_string(), "a c");
    }

    #[test]
    fn keywords() {
        assert_eq!(SmartScope::parse("openid"), SmartScope::OpenId);
        assert_eq!(SmartScope::parse("fhirUser"), SmartScope::FhirUser);
        assert_eq!(SmartScope::parse("profile"), SmartScope::Profile);
        assert_eq!(SmartScope::parse("offline_access"), SmartScope::OfflineAccess);
        assert_eq!(SmartScope::parse("online_access"), SmartScope::OnlineAccess);
        assert_eq!(SmartScope::parse("launch"), SmartScope::Launch);
        assert_eq!(
            SmartScope::parse("launch/patient"),
            SmartScope::LaunchContext("patient".into())
        );
        assert_eq!(
            SmartScope::parse("launch/encounter"),
            SmartScope::LaunchContext("encounter".into())
        );
        assert_eq!(SmartScope::parse("launch/"), SmartScope::Other("launch/".into()));
        assert_eq!(SmartScope::parse("email"), SmartScope::Other("email".into()));
        assert_eq!(SmartScope::parse("OpenID"), SmartScope::Other("OpenID".into()));
    }

    #[test]
    fn v2_scopes() {
        let s = rs("patient/Observation.rs");
        assert_eq!(s.context, ScopeContext::Patient);
        assert_eq!(s.resource, ResourceSelector::Type("Observation".into()));
        assert_eq!(s.permissions, Permissions::READ.union(Permissions::SEARCH));
        assert_eq!(s.query, None);
        assert_eq!(s.version, SmartVersion::V2);

        let s = rs("system/*.cruds");
        assert_eq!(s.context, ScopeContext::System);
        assert_eq!(s.resource, ResourceSelector::Any);
        assert_eq!(s.permissions, Permissions::ALL);

        assert_eq!(rs("user/Patient.c").permissions, Permissions::CREATE);
        assert_eq!(rs("user/Patient.d").permissions, Permissions::DELETE);
        assert_eq!(rs("user/Patient.cud").permissions, perms("cud"));
        assert_eq!(rs("user/Patient.rus").permissions, perms("rus"));
    }

    #[test]
    fn v1_scopes_map_to_v2_permissions() {
        let s = rs("user/*.read");
        assert_eq!(s.context, ScopeContext::User);
        assert_eq!(s.resource, ResourceSelector::Any);
        assert_eq!(s.permissions, perms("rs"));
        assert_eq!(s.version, SmartVersion::V1);
        assert_eq!(rs("patient/Observation.write").permissions, perms("cud"));
        assert_eq!(rs("patient/*.*").permissions, perms("cruds"));
        assert_eq!(rs("system/Patient.*").permissions, Permissions::ALL);
    }

    #[test]
    fn query_restrictions_kept_raw() {
        let s = rs("patient/Observation.rs?category=laboratory");
        assert_eq!(s.query.as_deref(), Some("category=laboratory"));
        assert_eq!(s.permissions, perms("rs"));
        let s = rs(
            "user/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs&status=final",
        );
        assert_eq!(
            s.query.as_deref(),
            Some(
                "category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs&status=final"
            )
        );
        assert!(ResourceScope::parse("patient/Observation.rs?").is_err());
    }

    #[test]
    fn malformed_resource_scopes() {
        for bad in [
            "patient",
            "patient/Observation",
            "patient/Observation.",
            "patient/Observation.x",
            "patient/Observation.sr",  // not canonical order
            "patient/Observation.rrs", // duplicate
            "patient/Observation.READ",
            "practitioner/Observation.rs",
            "Patient/Observation.rs",
            "patient/observation.rs",
            "patient/Obs-ervation.rs",
            "patient/.rs",
            "patient/**.rs",
            "/Observation.rs",
        ] {
            assert!(ResourceScope::parse(bad).is_err(), "{bad}");
            assert_eq!(SmartScope::parse(bad), SmartScope::Other(bad.into()), "{bad}");
        }
    }

    #[test]
    fn display_round_trips_original_syntax() {
        for s in [
            "patient/Observation.rs",
            "user/*.read",
            "user/*.write",
            "system/*.*",
            "system/*.cruds",
            "patient/Observation.rs?category=laboratory",
            "launch/patient",
            "openid",
            "custom:thing",
        ] {
            assert_eq!(SmartScope::parse(s).to_string(), s);
        }
    }

    #[test]
    fn allows_checks_type_and_permissions() {
        let s = rs("patient/Observation.rs");
        assert!(s.allows("Observation", Permissions::READ));
        assert!(s.allows("Observation", Permissions::SEARCH));
        assert!(s.allows("Observation", perms("rs")));
        assert!(!s.allows("Observation", Permissions::UPDATE));
        assert!(!s.allows("Patient", Permissions::READ));
        let any = rs("user/*.write");
        assert!(any.allows("Patient", Permissions::CREATE));
        assert!(!any.allows("Patient", Permissions::READ));
    }

    #[test]
    fn permissions_helpers() {
        assert_eq!(Permissions::ALL.to_v2_string(), "cruds");
        assert_eq!(Permissions::NONE.to_v2_string(), "");
        assert_eq!(Permissions::from_v2(""), None);
        assert_eq!(perms("rs").to_v1_word(), Some("read"));
        assert_eq!(perms("cud").to_v1_word(), Some("write"));
        assert_eq!(perms("r").to_v1_word(), None);
        assert_eq!(perms("cruds").intersection(perms("rus")), perms("rus"));
        assert_eq!(format!("{:?}", perms("rs")), "Permissions(rs)");
    }

    #[test]
    fn set_extracts_resource_scopes() {
        let set =
            parse_scopes("openid launch/patient patient/Observation.rs patient/*.read bogus/x.y");
        let resource = set.resource_scopes();
        assert_eq!(resource.len(), 2);
        assert_eq!(set.smart_scopes().len(), 5);
        assert!(matches!(set.smart_scopes()[4], SmartScope::Other(_)));
    }
}
