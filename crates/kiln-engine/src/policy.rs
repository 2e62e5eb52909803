//! AccessPolicy enforcement, with Medplum's semantics (see `docs/design/access-policy.md`).
//!
//! A member's [`Access`] is resolved once per request from their ProjectMembership (cached per
//! membership, like the search registry). Its rules become **search filters**, the same
//! [`Filter`] values a URL produces:
//!
//! - searches (every level: the searched types, each chain link, each `_has` level, and every
//!   `_include`d resource) get the filter ANDed in, so paging and counts stay exact;
//! - reads, vreads and history check the resource against the same filter (in memory through
//!   `kiln_search`'s oracle, or with one indexed search when the criteria chain);
//! - every write goes through [`Engine::write_ops`](crate::Engine), which checks the stored
//!   version (update, delete) and the new one (create, update) and applies `hiddenFields`,
//!   `readonlyFields` and `writeConstraint`.
//!
//! Semantics: rules for a type (or `*`) are ORed; a rule without `criteria` grants the whole
//! type; `interaction` lists what a rule allows (absent: everything, or with `readonly` only
//! read, vread, history and search). No AccessPolicy at all means the whole project, as in
//! Medplum. Whatever the policy, the server's own records ([`PROTECTED_TYPES`]) are for super
//! admins only and the project's membership records ([`ADMIN_TYPES`]) for project admins.
//! A policy that cannot be used (a criteria that does not parse, an unknown placeholder, a
//! missing AccessPolicy) refuses every request of the member rather than widening access.
//! Denials: 403 when a whole type or interaction is refused, 404 when one resource is not
//! visible (its existence is not revealed).

use std::sync::Arc;

use kiln_search::{Contained, Filter, SearchQuery};
use kiln_store::{Precondition, ProjectId, SearchRequest, StoreError, StoredResource, WriteOp};
use serde_json::{Value, json};

use crate::cache::TtlCache;
use crate::{Engine, EngineError, RequestContext};

/// One FHIR interaction an AccessPolicy rule can allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    Create,
    Read,
    Vread,
    Update,
    Delete,
    History,
    Search,
}

impl Interaction {
    const ALL: [Interaction; 7] = [
        Interaction::Create,
        Interaction::Read,
        Interaction::Vread,
        Interaction::Update,
        Interaction::Delete,
        Interaction::History,
        Interaction::Search,
    ];

    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// The code AccessPolicy uses (`AccessPolicy.resource.interaction`).
    pub fn code(self) -> &'static str {
        match self {
            Interaction::Create => "create",
            Interaction::Read => "read",
            Interaction::Vread => "vread",
            Interaction::Update => "update",
            Interaction::Delete => "delete",
            Interaction::History => "history",
            Interaction::Search => "search",
        }
    }

    fn parse(code: &str) -> Option<Interaction> {
        Interaction::ALL.into_iter().find(|i| i.code() == code)
    }
}

const EVERY_INTERACTION: u8 = 0x7f;

/// What `readonly: true` leaves: read, vread, history and search.
const READ_INTERACTIONS: u8 = (1 << Interaction::Read as u8)
    | (1 << Interaction::Vread as u8)
    | (1 << Interaction::History as u8)
    | (1 << Interaction::Search as u8);

/// The server's own records: only super admins see or change them.
pub const PROTECTED_TYPES: &[&str] = &["Login", "JsonWebKey", "DomainConfiguration"];

/// Definitions every member may read and search, whatever their policy (as in Medplum).
pub const PUBLIC_TYPES: &[&str] = &[
    "CapabilityStatement",
    "CompartmentDefinition",
    "ImplementationGuide",
    "OperationDefinition",
    "SearchParameter",
    "StructureDefinition",
];

/// The project's membership records: only project admins (and super admins).
pub const ADMIN_TYPES: &[&str] =
    &["Project", "ProjectMembership", "User", "UserSecurityRequest", "PasswordChangeRequest"];

/// Fields no one reads through the API (secrets at rest).
const ALWAYS_HIDDEN: &[(&str, &str)] = &[
    ("User", "passwordHash"),
    ("User", "mfaSecret"),
    ("UserSecurityRequest", "secret"),
    ("ClientApplication", "secret"),
    ("ClientApplication", "retiringSecret"),
];

/// Whether a write of `ty` must go through [`Engine::check_write`] even for a super admin:
/// its always-hidden fields are restored from the stored version (a client cannot send back
/// what it never saw).
pub(crate) fn has_always_hidden(ty: &str) -> bool {
    ALWAYS_HIDDEN.iter().any(|(t, _)| *t == ty)
}

/// Fields only project admins read.
const ADMIN_HIDDEN: &[(&str, &str)] = &[("Project", "secret")];

/// Fields only super admins read.
const SUPER_ADMIN_HIDDEN: &[(&str, &str)] = &[("Project", "systemSecret")];

/// Fields only super admins change: what a project may do beyond its own data (a project
/// admin who could set `superAdmin` would be one).
const SUPER_ADMIN_READONLY: &[(&str, &str)] = &[
    ("Project", "superAdmin"),
    ("Project", "features"),
    ("Project", "systemSetting"),
    ("Project", "systemSecret"),
    ("Project", "link"),
];

/// Most AccessPolicy resources one membership may pull in (through `access[]` and
/// `basedOn`).
const MAX_POLICIES: usize = 16;

/// One `AccessPolicy.resource` entry, compiled.
#[derive(Debug, Clone)]
struct Rule {
    /// The resource type, or `*`.
    ty: String,
    /// `None`: every resource of the type.
    criteria: Option<Filter>,
    interactions: u8,
    hidden: Vec<String>,
    readonly_fields: Vec<String>,
    constraints: Vec<kiln_fhirpath::Expression>,
}

/// What the caller may see and do in their project.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// The engine's own calls (accounts, jobs): no checks at all.
    internal: bool,
    /// A member of a `superAdmin` project: everything.
    pub super_admin: bool,
    /// A project admin (`ProjectMembership.admin`).
    pub admin: bool,
    /// The rules of the member's policies; `None`: no AccessPolicy (the whole project).
    rules: Option<Vec<Rule>>,
    /// Why the member's policy cannot be used; every request is then refused with it.
    broken: Option<String>,
    /// The effective policy as a resource (placeholders bound), for `/auth/me`.
    effective: Option<Value>,
    /// `ipAccessRule` of the member's policies, in order: (value, allow).
    ip_rules: Vec<(String, bool)>,
    /// The token's SMART resource scopes, which narrow everything above (a scope never
    /// widens access); `None` when the token carries none (Medplum's first-party sign-in).
    scopes: Option<Vec<ScopeRule>>,
}

/// One SMART resource scope, compiled: the types it covers, the interactions its letters
/// allow, and the condition its context and query put on resources.
#[derive(Debug, Clone)]
struct ScopeRule {
    /// `None`: every type (`*`).
    ty: Option<String>,
    interactions: u8,
    /// `patient/`: in the patient's compartment; a v2 query: its parameters. `None`: none.
    criteria: Option<Filter>,
}

/// How much of a type (or of several) a member may reach with one interaction.
#[derive(Debug, Clone)]
pub(crate) enum Grant {
    All,
    Only(Filter),
    Nothing,
}

impl Grant {
    /// Some alternative holds (each a condition; `None`: a whole type): everything when one
    /// is unconditional, nothing when there is none.
    fn any_of(alternatives: impl IntoIterator<Item = Option<Filter>>) -> Grant {
        let mut filters = Vec::new();
        for alternative in alternatives {
            match alternative {
                None => return Grant::All,
                Some(f) => filters.push(f),
            }
        }
        match filters.len() {
            0 => Grant::Nothing,
            1 => Grant::Only(filters.remove(0)),
            _ => Grant::Only(Filter::Or(filters)),
        }
    }

    /// Both hold.
    fn and(self, other: Grant) -> Grant {
        match (self, other) {
            (Grant::Nothing, _) | (_, Grant::Nothing) => Grant::Nothing,
            (Grant::All, other) | (other, Grant::All) => other,
            (Grant::Only(a), Grant::Only(b)) => Grant::Only(Filter::And(vec![a, b])),
        }
    }

    /// This grant of type `ty` as a branch of a filter over several types:
    /// `type = ty AND criteria`; `None` when it grants nothing.
    fn typed(self, ty: &str) -> Option<Filter> {
        let is_ty = Filter::Type(vec![ty.to_owned()]);
        match self {
            Grant::All => Some(is_ty),
            Grant::Only(f) => Some(Filter::And(vec![is_ty, f])),
            Grant::Nothing => None,
        }
    }

    /// The filter to AND into a search: `None` for everything.
    fn filter(self) -> Option<Filter> {
        match self {
            Grant::All => None,
            Grant::Only(f) => Some(f),
            Grant::Nothing => Some(Filter::Or(Vec::new())),
        }
    }
}

impl Access {
    /// No checks: the engine acting for itself.
    pub fn internal() -> Access {
        Access { internal: true, ..Access::default() }
    }

    /// The effective AccessPolicy (`/auth/me`); `None` when the member has none.
    pub fn effective_policy(&self) -> Option<&Value> {
        self.effective.as_ref()
    }

    /// No check applies: the engine itself, or a super admin whose token has no SMART
    /// resource scopes.
    pub(crate) fn unrestricted(&self) -> bool {
        self.internal || (self.super_admin && self.scopes.is_none())
    }

    /// This access narrowed by a token's SMART resource scopes (`patient/…`, `user/…`,
    /// `system/…`, v1 or v2, with v2 queries parsed by `registry`). `patient/` scopes reach the
    /// compartment of `patient` (the launch patient, or a Patient profile); without one they
    /// reach nothing. A token without resource scopes leaves the access as it is.
    pub fn with_scopes(
        self: &Arc<Access>,
        scope: &str,
        patient: Option<&str>,
        registry: &kiln_search::Registry,
    ) -> Arc<Access> {
        let resource_scopes = kiln_auth::ScopeSet::parse(scope).resource_scopes();
        if resource_scopes.is_empty() || self.internal {
            return self.clone();
        }
        let mut rules = Vec::with_capacity(resource_scopes.len());
        for rs in resource_scopes {
            let ty = match &rs.resource {
                kiln_auth::ResourceSelector::Any => None,
                kiln_auth::ResourceSelector::Type(t) => Some(t.clone()),
            };
            let mut parts = Vec::new();
            if rs.context == kiln_auth::ScopeContext::Patient {
                match patient {
                    Some(id) => parts.push(Filter::Compartment {
                        compartment: "Patient".into(),
                        ids: Some(vec![id.to_owned()]),
                    }),
                    None => continue,
                }
            }
            if let Some(query) = &rs.query {
                let pairs = crate::query_pairs(query);
                match registry.parse(ty.as_deref().unwrap_or(""), &pairs) {
                    Ok(q) if q.unknown.is_empty() => parts.extend(q.filters),
                    // A query Kiln cannot apply grants nothing, rather than too much.
                    _ => continue,
                }
            }
            let p = rs.permissions;
            let mut interactions = 0;
            if p.contains(kiln_auth::Permissions::CREATE) {
                interactions |= Interaction::Create.bit();
            }
            if p.contains(kiln_auth::Permissions::READ) {
                interactions |=
                    Interaction::Read.bit() | Interaction::Vread.bit() | Interaction::History.bit();
            }
            if p.contains(kiln_auth::Permissions::UPDATE) {
                interactions |= Interaction::Update.bit();
            }
            if p.contains(kiln_auth::Permissions::DELETE) {
                interactions |= Interaction::Delete.bit();
            }
            if p.contains(kiln_auth::Permissions::SEARCH) {
                interactions |= Interaction::Search.bit();
            }
            let criteria = match parts.len() {
                0 => None,
                1 => parts.pop(),
                _ => Some(Filter::And(parts)),
            };
            rules.push(ScopeRule { ty, interactions, criteria });
        }
        Arc::new(Access { scopes: Some(rules), ..(**self).clone() })
    }

    /// What the token's scopes grant for `ty` and `i` (everything when it has none).
    fn scope_grant(&self, ty: &str, i: Interaction) -> Grant {
        let Some(rules) = &self.scopes else { return Grant::All };
        Grant::any_of(
            rules
                .iter()
                .filter(|r| r.ty.as_deref().is_none_or(|t| t == ty))
                .filter(|r| r.interactions & i.bit() != 0)
                .map(|r| r.criteria.clone()),
        )
    }

    pub(crate) fn usable(&self) -> Result<(), EngineError> {
        match &self.broken {
            Some(reason) => Err(EngineError::Forbidden(format!(
                "Your access policy cannot be applied, so access is refused: {reason}"
            ))),
            None => Ok(()),
        }
    }

    /// Whether a request from `ip` may use this access: the policies' `ipAccessRule`s in
    /// order, the first that matches deciding (`allow` or `block`); none matching allows.
    /// A value matches as `*` (every address), a CIDR range (`10.0.0.0/8`, IPv6 too), an
    /// exact address, or a prefix of the address's text (`8.8.` — Medplum's rule). An
    /// unknown address matches only `*`.
    pub fn ip_allowed(&self, ip: Option<std::net::IpAddr>) -> bool {
        for (value, allow) in &self.ip_rules {
            if ip_matches(value, ip) {
                return *allow;
            }
        }
        true
    }

    /// 403 unless the caller is a project admin (or a super admin, or the engine itself).
    pub(crate) fn require_admin(&self, what: &str) -> Result<(), EngineError> {
        if self.internal || self.super_admin || (self.admin && self.broken.is_none()) {
            Ok(())
        } else {
            Err(EngineError::Forbidden(format!("{what} is for project administrators")))
        }
    }

    /// 403 when the member may not use `i` on any resource of `ty`. Checked before a
    /// resource is looked up, so the answer does not depend on whether it exists.
    pub(crate) fn check_type(&self, ty: &str, i: Interaction) -> Result<(), EngineError> {
        self.usable()?;
        match self.grant(ty, i) {
            Grant::Nothing => Err(forbidden(i, ty)),
            _ => Ok(()),
        }
    }

    /// What `ty` grants for `i`: the member's rights, narrowed by the token's scopes.
    pub(crate) fn grant(&self, ty: &str, i: Interaction) -> Grant {
        if self.internal {
            return Grant::All;
        }
        self.member_grant(ty, i).and(self.scope_grant(ty, i))
    }

    /// What the member's project rights and AccessPolicy grant for `ty` and `i`.
    fn member_grant(&self, ty: &str, i: Interaction) -> Grant {
        if self.super_admin {
            return Grant::All;
        }
        if self.broken.is_some() || PROTECTED_TYPES.contains(&ty) {
            return Grant::Nothing;
        }
        if ADMIN_TYPES.contains(&ty) {
            return if self.admin { Grant::All } else { Grant::Nothing };
        }
        let reading = !matches!(i, Interaction::Create | Interaction::Update | Interaction::Delete);
        if reading && PUBLIC_TYPES.contains(&ty) {
            return Grant::All;
        }
        let Some(rules) = &self.rules else { return Grant::All };
        Grant::any_of(
            rules
                .iter()
                .filter(|r| (r.ty == ty || r.ty == "*") && r.interactions & i.bit() != 0)
                .map(|r| r.criteria.clone()),
        )
    }

    /// What a level of several types grants (`types` empty: any type), as one filter over
    /// them: `(type = T1 AND criteria(T1)) OR …`, and for the types no rule names, the `*`
    /// rules.
    pub(crate) fn grant_types(&self, types: &[String], i: Interaction) -> Grant {
        if self.unrestricted() {
            return Grant::All;
        }
        if self.broken.is_some() {
            return Grant::Nothing;
        }
        if let [ty] = types {
            // One type: its criteria as they are, so that they can drive the search (a
            // patient's `subject=Patient/x` is the best index entry there is).
            return self.grant(ty, i);
        }
        if !types.is_empty() {
            let grants: Vec<Grant> = types.iter().map(|t| self.grant(t, i)).collect();
            if grants.iter().all(|g| matches!(g, Grant::All)) {
                return Grant::All;
            }
            if grants.iter().all(|g| matches!(g, Grant::Nothing)) {
                return Grant::Nothing;
            }
            let branches = types.iter().zip(grants).filter_map(|(t, g)| g.typed(t));
            return Grant::Only(Filter::Or(branches.collect()));
        }
        // Any type: the member's rights and the token's scopes, each as one filter.
        self.member_grant_any(i).and(self.scope_grant_any(i))
    }

    /// The token's scopes over resources of any type: `(type = T AND condition) OR …`.
    fn scope_grant_any(&self, i: Interaction) -> Grant {
        let Some(rules) = &self.scopes else { return Grant::All };
        Grant::any_of(rules.iter().filter(|r| r.interactions & i.bit() != 0).map(|r| {
            let grant = r.criteria.clone().map_or(Grant::All, Grant::Only);
            match &r.ty {
                None => grant.filter(),
                Some(t) => grant.typed(t),
            }
        }))
    }

    /// The member's rights over resources of any type (see [`Access::grant_types`]).
    fn member_grant_any(&self, i: Interaction) -> Grant {
        if self.super_admin {
            return Grant::All;
        }
        let mut excluded: Vec<String> = PROTECTED_TYPES.iter().map(|t| t.to_string()).collect();
        if !self.admin {
            excluded.extend(ADMIN_TYPES.iter().map(|t| t.to_string()));
        }
        let Some(rules) = &self.rules else {
            return Grant::Only(Filter::Not(Box::new(Filter::Type(excluded))));
        };
        let mut named: Vec<String> = Vec::new();
        for rule in rules.iter().filter(|r| r.ty != "*") {
            if !named.contains(&rule.ty) && !excluded.contains(&rule.ty) {
                named.push(rule.ty.clone());
            }
        }
        if self.admin {
            named.extend(ADMIN_TYPES.iter().map(|t| t.to_string()));
        }
        if !matches!(i, Interaction::Create | Interaction::Update | Interaction::Delete) {
            for t in PUBLIC_TYPES.iter().map(|t| t.to_string()) {
                if !named.contains(&t) {
                    named.push(t);
                }
            }
        }
        let mut alternatives: Vec<Filter> =
            named.iter().filter_map(|t| self.member_grant(t, i).typed(t)).collect();
        let mut star = Vec::new();
        let mut star_all = false;
        for rule in rules.iter().filter(|r| r.ty == "*" && r.interactions & i.bit() != 0) {
            match &rule.criteria {
                None => star_all = true,
                Some(f) => star.push(f.clone()),
            }
        }
        if star_all || !star.is_empty() {
            let others = Filter::Not(Box::new(Filter::Type([named, excluded].concat())));
            let criteria = if star_all { Filter::And(Vec::new()) } else { Filter::Or(star) };
            alternatives.push(Filter::And(vec![others, criteria]));
        }
        if alternatives.is_empty() { Grant::Nothing } else { Grant::Only(Filter::Or(alternatives)) }
    }

    /// Limits `query` to what the member may reach with `i` (see the module documentation):
    /// 403 when none of its types is allowed.
    pub(crate) fn restrict(
        &self,
        query: &mut SearchQuery,
        i: Interaction,
    ) -> Result<(), EngineError> {
        if self.unrestricted() {
            return Ok(());
        }
        self.usable()?;
        let types = match &query.resource_type {
            Some(ty) => vec![ty.clone()],
            None => query.types.clone(),
        };
        let top = self.grant_types(&types, i);
        if matches!(top, Grant::Nothing) {
            let what =
                if types.is_empty() { "any resource type".to_owned() } else { types.join(", ") };
            return Err(forbidden(i, &what));
        }
        if query.contained.is_some_and(|c| c != Contained::False) && !matches!(top, Grant::All) {
            return Err(EngineError::Forbidden(
                "_contained searches are not available under an access policy".into(),
            ));
        }
        // Each chain link and `_has` level may only pass through resources the member may
        // search.
        let mut level = |types: &[String]| self.grant_types(types, Interaction::Search).filter();
        for f in &mut query.filters {
            f.restrict_levels(&mut level);
        }
        if let Some(f) = top.filter() {
            query.filters.push(f);
        }
        if !query.include.is_empty() || !query.revinclude.is_empty() {
            query.include_filter = self.grant_types(&[], Interaction::Search).filter();
        }
        Ok(())
    }

    /// The fields of `ty` this member never sees (removed from every resource served).
    pub(crate) fn hidden_fields(&self, ty: &str) -> Vec<String> {
        if self.internal {
            return Vec::new();
        }
        let mut out: Vec<String> =
            ALWAYS_HIDDEN.iter().filter(|(t, _)| *t == ty).map(|(_, f)| f.to_string()).collect();
        if !self.admin && !self.super_admin {
            out.extend(ADMIN_HIDDEN.iter().filter(|(t, _)| *t == ty).map(|(_, f)| f.to_string()));
        }
        if !self.super_admin {
            out.extend(
                SUPER_ADMIN_HIDDEN.iter().filter(|(t, _)| *t == ty).map(|(_, f)| f.to_string()),
            );
        }
        if !self.super_admin {
            for rule in self.rules_for(ty) {
                out.extend(rule.hidden.iter().cloned());
            }
        }
        out
    }

    fn rules_for<'a>(&'a self, ty: &'a str) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules.iter().flatten().filter(move |r| r.ty == ty || r.ty == "*")
    }

    /// Removes the hidden fields from a resource about to be served.
    pub(crate) fn redact(&self, stored: &mut StoredResource) -> Result<(), EngineError> {
        if stored.deleted || stored.body.is_empty() {
            return Ok(());
        }
        let hidden = self.hidden_fields(&stored.resource_type);
        if hidden.is_empty() {
            return Ok(());
        }
        let internal = |e: serde_json::Error| EngineError::Internal(e.to_string());
        let mut value: Value = serde_json::from_slice(&stored.body).map_err(internal)?;
        for path in &hidden {
            remove_path(&mut value, &segments(path));
        }
        stored.body = serde_json::to_vec(&value).map_err(internal)?.into();
        Ok(())
    }
}

fn ip_matches(value: &str, ip: Option<std::net::IpAddr>) -> bool {
    let value = value.trim();
    if value == "*" {
        return true;
    }
    let Some(ip) = ip else { return false };
    // A range or an exact address; otherwise a prefix of the address's text (Medplum's `8.8.`).
    match kiln_auth::net::Cidr::parse(value) {
        Some(range) => range.contains(ip),
        None => {
            !value.is_empty()
                && !value.contains('/')
                && kiln_auth::net::canonical(ip).to_string().starts_with(value)
        }
    }
}

fn forbidden(i: Interaction, what: &str) -> EngineError {
    EngineError::Forbidden(format!(
        "Your access policy or your token's scopes do not allow '{}' on {what}",
        i.code()
    ))
}

/// A field path of `hiddenFields`/`readonlyFields` (`name.family`, or `Patient.name.family`).
fn segments(path: &str) -> Vec<&str> {
    let mut parts: Vec<&str> = path.split('.').filter(|p| !p.is_empty()).collect();
    if parts.len() > 1 && parts[0].starts_with(char::is_uppercase) {
        parts.remove(0);
    }
    parts
}

/// Removes `path` from `value` (through arrays at any step).
fn remove_path(value: &mut Value, path: &[&str]) {
    match (value, path) {
        (Value::Array(items), _) => items.iter_mut().for_each(|it| remove_path(it, path)),
        (Value::Object(obj), [last]) => {
            obj.shift_remove(*last);
            // A primitive's extension sibling goes with it.
            obj.shift_remove(&format!("_{last}"));
        }
        (Value::Object(obj), [head, rest @ ..]) => {
            if let Some(child) = obj.get_mut(*head) {
                remove_path(child, rest);
            }
        }
        _ => {}
    }
}

/// Makes `path` of `to` what it is in `from` (absent in `from`: absent in `to`). Arrays are
/// walked element by element.
fn restore_path(from: Option<&Value>, to: &mut Value, path: &[&str]) {
    let Value::Object(obj) = to else {
        if let (Value::Array(items), Some(Value::Array(before))) = (to, from) {
            for (i, item) in items.iter_mut().enumerate() {
                restore_path(before.get(i), item, path);
            }
        }
        return;
    };
    match path {
        [] => {}
        [last] => {
            for key in [last.to_string(), format!("_{last}")] {
                match from.and_then(|f| f.get(&key)) {
                    Some(v) => {
                        obj.insert(key, v.clone());
                    }
                    None => {
                        obj.shift_remove(&key);
                    }
                }
            }
        }
        [head, rest @ ..] => {
            let before = from.and_then(|f| f.get(*head));
            match obj.get_mut(*head) {
                Some(child) => restore_path(before, child, rest),
                None => {
                    if let Some(before) = before {
                        // The element is gone from the new version: bring back only the
                        // protected part of it.
                        let mut rebuilt = match before {
                            Value::Array(items) => {
                                Value::Array(items.iter().map(|_| json!({})).collect())
                            }
                            _ => json!({}),
                        };
                        restore_path(Some(before), &mut rebuilt, rest);
                        if !is_empty_shell(&rebuilt) {
                            obj.insert(head.to_string(), rebuilt);
                        }
                    }
                }
            }
        }
    }
}

fn is_empty_shell(v: &Value) -> bool {
    match v {
        Value::Object(o) => o.values().all(is_empty_shell),
        Value::Array(a) => a.iter().all(is_empty_shell),
        _ => false,
    }
}

/// Whether evaluating `f` needs other resources (a chain or `_has`), so it must run as a
/// search rather than in memory.
fn needs_store(f: &Filter) -> bool {
    match f {
        Filter::Chain { .. } | Filter::Has { .. } => true,
        Filter::And(parts) | Filter::Or(parts) => parts.iter().any(needs_store),
        Filter::Not(inner) => needs_store(inner),
        _ => false,
    }
}

/// Resolved accesses by membership; each lives for the engine's access cache lifetime.
pub(crate) struct AccessCache {
    entries: TtlCache<Arc<Access>>,
    /// Per project: whether its `Project.setting` `strictProfiles` is on (read by every write
    /// that claims a profile; see `operations.rs`). Forgotten with the project's accesses.
    strict_profiles: TtlCache<bool>,
}

/// Entries of each of the access cache's maps one node keeps at most (then it starts again).
const CACHED_ACCESSES: usize = 10_000;

impl Default for AccessCache {
    fn default() -> AccessCache {
        // The lifetime is given on each read (a setting); the size bounds memory.
        AccessCache {
            entries: TtlCache::new(std::time::Duration::MAX, CACHED_ACCESSES),
            strict_profiles: TtlCache::new(std::time::Duration::MAX, CACHED_ACCESSES),
        }
    }
}

impl AccessCache {
    fn key(project: &ProjectId, membership: &str) -> String {
        format!("{}/{membership}", project.as_str())
    }

    fn get(&self, key: &str, ttl: std::time::Duration) -> Option<Arc<Access>> {
        self.entries.get_within(key, ttl)
    }

    fn put(&self, key: String, access: Arc<Access>) {
        self.entries.put(key, access);
    }

    /// Forgets everything (notices from other nodes may have been missed).
    pub(crate) fn clear(&self) {
        self.entries.clear();
        self.strict_profiles.clear();
    }

    /// Forgets every member of `project` (a policy, membership or project changed).
    pub(crate) fn invalidate(&self, project: &ProjectId) {
        let prefix = format!("{}/", project.as_str());
        self.entries.retain(|k| !k.starts_with(&prefix));
        self.strict_profiles.remove(project.as_str());
    }

    /// `project`'s cached `strictProfiles` setting, when loaded less than `ttl` ago.
    pub(crate) fn strict_profiles(
        &self,
        project: &ProjectId,
        ttl: std::time::Duration,
    ) -> Option<bool> {
        self.strict_profiles.get_within(project.as_str(), ttl)
    }

    pub(crate) fn put_strict_profiles(&self, project: &ProjectId, on: bool) {
        self.strict_profiles.put(project.as_str().to_owned(), on);
    }
}

/// Whether a write to `ty` changes what some member may access.
pub(crate) fn affects_access(ty: &str) -> bool {
    matches!(ty, "AccessPolicy" | "ProjectMembership" | "Project")
}

/// Values the criteria's `%name` placeholders stand for.
struct Placeholders(Vec<(String, String)>);

impl Placeholders {
    fn new(profile: &str) -> Placeholders {
        let mut vars = vec![("profile".to_owned(), profile.to_owned())];
        if profile.starts_with("Patient/") {
            vars.push(("patient".to_owned(), profile.to_owned()));
        }
        Placeholders(vars)
    }

    fn with(&self, parameters: Option<&Value>) -> Placeholders {
        let mut vars = self.0.clone();
        for p in parameters.and_then(Value::as_array).into_iter().flatten() {
            let Some(name) = p["name"].as_str() else { continue };
            let value = p["valueReference"]["reference"]
                .as_str()
                .or_else(|| p["valueString"].as_str())
                .or_else(|| p["valueCode"].as_str());
            if let Some(value) = value {
                vars.retain(|(n, _)| n != name);
                vars.push((name.to_owned(), value.to_owned()));
            }
        }
        // Longest names first, so `%patientGroup` is not read as `%patient` + `Group`.
        vars.sort_by_key(|v| std::cmp::Reverse(v.0.len()));
        Placeholders(vars)
    }

    /// `text` with every `%name.id` and `%name` replaced; an error names a placeholder left.
    fn bind(&self, text: &str) -> Result<String, String> {
        let mut out = text.to_owned();
        for (name, value) in &self.0 {
            let id = value.rsplit('/').next().unwrap_or(value);
            out = out.replace(&format!("%{name}.id"), id).replace(&format!("%{name}"), value);
        }
        if let Some(pos) = out.find('%')
            && out[pos + 1..].starts_with(|c: char| c.is_ascii_alphabetic())
        {
            let name: String = out[pos + 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            return Err(format!("unknown placeholder %{name}"));
        }
        Ok(out)
    }
}

/// `text` with every `%name` (and `%name.id`) replaced by a stand-in value, so that a policy
/// can be checked before anyone's parameters are known.
fn bind_any(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('%') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let name_len =
            after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
        if name_len == 0 || !after.starts_with(|c: char| c.is_ascii_alphabetic()) {
            out.push('%');
            rest = after;
            continue;
        }
        let tail = &after[name_len..];
        if let Some(tail) = tail.strip_prefix(".id") {
            out.push_str("placeholder");
            rest = tail;
        } else {
            out.push_str("Patient/placeholder");
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

/// Why an AccessPolicy resource could never be applied (a rule naming no type, criteria that
/// do not parse with the project's parameters, an unknown interaction, a writeConstraint that
/// is not FHIRPath); checked when one is written, so a broken policy is refused then rather
/// than locking its members out later. Placeholders stand for any value.
pub(crate) fn check_policy(policy: &Value, registry: &kiln_search::Registry) -> Result<(), String> {
    for (i, rule) in policy["ipAccessRule"].as_array().into_iter().flatten().enumerate() {
        let value = rule["value"].as_str().filter(|v| !v.trim().is_empty());
        let action = rule["action"].as_str().filter(|a| *a == "allow" || *a == "block");
        if value.is_none() || action.is_none() {
            return Err(format!(
                "AccessPolicy.ipAccessRule[{i}] needs a value and an action (allow or block)"
            ));
        }
    }
    for (i, entry) in policy["resource"].as_array().into_iter().flatten().enumerate() {
        let mut entry = entry.clone();
        if let Some(criteria) = entry["criteria"].as_str() {
            entry["criteria"] = json!(bind_any(criteria));
        }
        compile_rule(&entry, &Placeholders(Vec::new()), registry)
            .map_err(|e| format!("AccessPolicy.resource[{i}]: {e}"))?;
    }
    Ok(())
}

fn reference_id<'a>(value: &'a Value, ty: &str) -> Option<&'a str> {
    value["reference"].as_str()?.strip_prefix(ty)?.strip_prefix('/')
}

impl Engine {
    /// Forgets the cached access of every member of `project` and every verified Basic
    /// credential (a policy, membership or project changed on this node).
    pub(crate) fn forget_access(&self, project: &ProjectId) {
        self.access.invalidate(project);
        self.auth().forget_basic();
        self.announce(crate::shared::Change::Access(project.clone()));
    }

    /// The access of the member `membership` (`ProjectMembership/<id>`) acting as `profile`
    /// in `project` (cached for [`crate::Limits::registry_ttl`]; a write of a policy,
    /// membership or project on this node forgets the project's entries at once).
    pub async fn access_for(
        &self,
        project: &ProjectId,
        membership: Option<&str>,
        profile: &str,
    ) -> Result<Arc<Access>, EngineError> {
        let Some(membership) = membership else {
            // A token without a membership reaches nothing.
            return Ok(Arc::new(Access {
                rules: Some(Vec::new()),
                broken: Some("the login has no project membership".into()),
                ..Access::default()
            }));
        };
        let key = AccessCache::key(project, membership);
        if let Some(access) = self.access.get(&key, self.limits().registry_ttl) {
            return Ok(access);
        }
        let access = Arc::new(self.load_access(project, membership, profile).await?);
        self.access.put(key, access.clone());
        Ok(access)
    }

    /// The access of a bearer token: its member's ([`Engine::access_for`]) narrowed by the
    /// token's SMART resource scopes ([`Access::with_scopes`]; `patient/` scopes reach the
    /// launch `patient`'s compartment, else a Patient profile's own). Cached per membership,
    /// scope string and patient, so a request does not compile its scopes again.
    pub(crate) async fn access_for_token(
        &self,
        project: &ProjectId,
        membership: &str,
        profile: &str,
        scope: &str,
        patient: Option<&str>,
    ) -> Result<Arc<Access>, EngineError> {
        let member = self.access_for(project, Some(membership), profile).await?;
        if kiln_auth::ScopeSet::parse(scope).resource_scopes().is_empty() {
            return Ok(member);
        }
        let patient = patient.or_else(|| profile.strip_prefix("Patient/"));
        let key = format!(
            "{}\n{scope}\n{}",
            AccessCache::key(project, membership),
            patient.unwrap_or_default()
        );
        if let Some(access) = self.access.get(&key, self.limits().registry_ttl) {
            return Ok(access);
        }
        let registry = self.registry(project).await?;
        let access = member.with_scopes(scope, patient, &registry);
        self.access.put(key, access.clone());
        Ok(access)
    }

    /// The live resource, `None` when missing or deleted.
    async fn read_json(
        &self,
        project: &ProjectId,
        ty: &str,
        id: &str,
    ) -> Result<Option<Value>, EngineError> {
        match self.store().read(project, ty, id).await {
            Ok(stored) if !stored.deleted => serde_json::from_slice(&stored.body)
                .map(Some)
                .map_err(|e| EngineError::Internal(e.to_string())),
            Ok(_) | Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn load_access(
        &self,
        project: &ProjectId,
        membership: &str,
        profile: &str,
    ) -> Result<Access, EngineError> {
        let mut access = Access::default();
        let project_json = self.read_json(project, "Project", project.as_str()).await?;
        access.super_admin = project_json.as_ref().is_some_and(|p| p["superAdmin"] == json!(true));
        let membership_id = membership.strip_prefix("ProjectMembership/").unwrap_or(membership);
        // A deleted or inactive membership ends its tokens.
        let gone =
            || EngineError::Unauthorized("The membership of this login is not active".into());
        let Some(m) = self.read_json(project, "ProjectMembership", membership_id).await? else {
            return Err(gone());
        };
        if m["active"] == json!(false) || project_json.is_none() {
            return Err(gone());
        }
        access.admin = m["admin"] == json!(true);
        // The membership's profile is authoritative (the token's is a copy from sign-in).
        let profile = m["profile"]["reference"].as_str().unwrap_or(profile);
        let base = Placeholders::new(profile);
        // (policy id, placeholders) for every policy the membership names.
        let mut todo: Vec<(String, Placeholders)> = Vec::new();
        if let Some(id) = reference_id(&m["accessPolicy"], "AccessPolicy") {
            todo.push((id.to_owned(), base.with(None)));
        }
        for entry in m["access"].as_array().into_iter().flatten() {
            match reference_id(&entry["policy"], "AccessPolicy") {
                Some(id) => todo.push((id.to_owned(), base.with(entry.get("parameter")))),
                None => {
                    access.broken = Some("an access entry names no AccessPolicy".into());
                    return Ok(access);
                }
            }
        }
        if todo.is_empty() {
            return Ok(access);
        }
        let registry = self.registry(project).await?;
        let mut rules = Vec::new();
        let mut effective = Vec::new();
        let mut loaded = 0;
        while let Some((id, vars)) = todo.pop() {
            loaded += 1;
            if loaded > MAX_POLICIES {
                access.broken = Some(format!("more than {MAX_POLICIES} policies apply"));
                return Ok(access);
            }
            let Some(policy) = self.read_json(project, "AccessPolicy", &id).await? else {
                access.broken = Some(format!("AccessPolicy/{id} does not exist"));
                return Ok(access);
            };
            for based in policy["basedOn"].as_array().into_iter().flatten() {
                if let Some(id) = reference_id(based, "AccessPolicy") {
                    todo.push((id.to_owned(), vars.with(None)));
                }
            }
            for rule in policy["ipAccessRule"].as_array().into_iter().flatten() {
                let (Some(value), Some(action)) = (rule["value"].as_str(), rule["action"].as_str())
                else {
                    access.broken = Some(format!(
                        "AccessPolicy/{id}: an ipAccessRule needs a value and an action"
                    ));
                    return Ok(access);
                };
                access.ip_rules.push((value.to_owned(), action == "allow"));
            }
            for entry in policy["resource"].as_array().into_iter().flatten() {
                match compile_rule(entry, &vars, &registry) {
                    Ok((rule, bound)) => {
                        rules.push(rule);
                        effective.push(bound);
                    }
                    Err(reason) => {
                        access.broken = Some(format!("AccessPolicy/{id}: {reason}"));
                        return Ok(access);
                    }
                }
            }
        }
        access.rules = Some(rules);
        access.effective = Some(json!({"resourceType": "AccessPolicy", "resource": effective}));
        Ok(access)
    }

    /// Whether the caller may reach `stored` with `i`: 403 when the type (or interaction) is
    /// refused, 404 when this resource is not visible to them.
    pub(crate) async fn check_access(
        &self,
        ctx: &RequestContext,
        stored: &StoredResource,
        i: Interaction,
    ) -> Result<(), EngineError> {
        ctx.access.usable()?;
        self.check_grant(ctx, stored, ctx.access.grant(&stored.resource_type, i), i).await
    }

    /// [`Engine::check_access`] with the grant already worked out (a read asks for it once,
    /// before and after the lookup).
    pub(crate) async fn check_grant(
        &self,
        ctx: &RequestContext,
        stored: &StoredResource,
        grant: Grant,
        i: Interaction,
    ) -> Result<(), EngineError> {
        let (ty, id) = (&stored.resource_type, &stored.id);
        match grant {
            Grant::All => Ok(()),
            Grant::Nothing => Err(forbidden(i, ty)),
            Grant::Only(f) => {
                let internal = |e: serde_json::Error| EngineError::Internal(e.to_string());
                let body: Value = if stored.deleted {
                    Value::Null
                } else {
                    serde_json::from_slice(&stored.body).map_err(internal)?
                };
                if self.holds(ctx, &f, ty, id, &body).await? {
                    Ok(())
                } else {
                    Err(EngineError::NotFound(format!("Resource {ty}/{id} not found")))
                }
            }
        }
    }

    /// Whether the resource `ty/id` (whose version at hand is `body`) meets `f`: in memory
    /// when `f` needs no other resource, else as a search on the current version.
    async fn holds(
        &self,
        ctx: &RequestContext,
        f: &Filter,
        ty: &str,
        id: &str,
        body: &Value,
    ) -> Result<bool, EngineError> {
        if !needs_store(f) {
            return Ok(!body.is_null() && kiln_search::filter_holds(f, body, &Vec::<Value>::new()));
        }
        let pairs = [("_id".to_owned(), id.to_owned())];
        let registry = self.registry(&ctx.project).await?;
        let mut query = registry.parse(ty, &pairs).map_err(EngineError::Invalid)?;
        query.filters.push(f.clone());
        let request = SearchRequest { query, after: None, count: 1, total: false };
        Ok(!self.store().search(&ctx.project, &request).await?.matches.is_empty())
    }

    /// Checks a new version the caller writes: the rules that allow `i` on its type must
    /// admit it (400 for a failed `writeConstraint`, 403 otherwise). `before` is the stored
    /// version for an update. Hidden and read-only fields are first put back as they were
    /// (or removed on create).
    pub(crate) fn check_write(
        &self,
        access: &Access,
        resource: &mut Value,
        before: Option<&Value>,
        i: Interaction,
    ) -> Result<(), EngineError> {
        if access.internal {
            return Ok(());
        }
        access.usable()?;
        let ty = resource["resourceType"].as_str().unwrap_or_default().to_owned();
        let id = resource["id"].as_str().unwrap_or_default().to_owned();
        if access.super_admin {
            // Everything is allowed; only what no one reads comes back from the stored version
            // (a new secret the super admin sets is kept: it is not the stored one).
            for (_, field) in ALWAYS_HIDDEN.iter().filter(|(t, _)| *t == ty) {
                if resource.get(*field).is_none() {
                    restore_path(before, resource, &[field]);
                }
            }
            if access.scopes.is_none() {
                return Ok(());
            }
        } else {
            let mut protected = access.hidden_fields(&ty);
            protected.extend(
                SUPER_ADMIN_READONLY.iter().filter(|(t, _)| *t == ty).map(|(_, f)| f.to_string()),
            );
            for rule in access.rules_for(&ty) {
                protected.extend(rule.readonly_fields.iter().cloned());
            }
            for path in &protected {
                restore_path(before, resource, &segments(path));
            }
        }
        let rules: Vec<&Rule> = match &access.rules {
            None => Vec::new(),
            Some(_) => access.rules_for(&ty).filter(|r| r.interactions & i.bit() != 0).collect(),
        };
        match access.grant(&ty, i) {
            Grant::All => {}
            Grant::Nothing => return Err(forbidden(i, &ty)),
            Grant::Only(f) => {
                if needs_store(&f) {
                    return Err(EngineError::Forbidden(format!(
                        "Your access policy's criteria for {ty} follow references, which Kiln \
                         cannot check on a write"
                    )));
                }
                if !kiln_search::filter_holds(&f, resource, &Vec::<Value>::new()) {
                    return Err(EngineError::Forbidden(format!(
                        "Your access policy does not allow this {ty} to be written ({ty}/{id} \
                         would be outside what the policy allows)"
                    )));
                }
            }
        }
        // Every applicable rule's writeConstraints (rules are ORed: one satisfied rule is
        // enough).
        let constrained: Vec<&&Rule> = rules.iter().filter(|r| !r.constraints.is_empty()).collect();
        if !constrained.is_empty() && constrained.len() == rules.len() {
            let ok = constrained.iter().any(|rule| {
                rule.constraints.iter().all(|expr| write_constraint_holds(expr, before, resource))
            });
            if !ok {
                return Err(EngineError::invalid(format!(
                    "This write breaks a writeConstraint of your access policy for {ty}"
                )));
            }
        }
        Ok(())
    }
}

fn write_constraint_holds(
    expr: &kiln_fhirpath::Expression,
    before: Option<&Value>,
    after: &Value,
) -> bool {
    use kiln_fhirpath::{Context, Item, evaluate};
    let before_items = before.map(|b| vec![Item::resource(b)]).unwrap_or_default();
    let ctx = Context::new(after)
        .with_variable("before", before_items)
        .with_variable("after", vec![Item::resource(after)]);
    matches!(evaluate(expr, &ctx).as_deref(), Ok([Item::Boolean(true)]))
}

/// Compiles one `AccessPolicy.resource` entry; also returns it with its placeholders bound.
fn compile_rule(
    entry: &Value,
    vars: &Placeholders,
    registry: &kiln_search::Registry,
) -> Result<(Rule, Value), String> {
    let ty = entry["resourceType"].as_str().ok_or("a resource entry has no resourceType")?;
    if ty != "*" && !kiln_definitions::definitions().is_resource_type(ty) {
        return Err(format!("'{ty}' is not a resource type"));
    }
    let mut bound = entry.clone();
    let criteria = match entry["criteria"].as_str() {
        None => None,
        Some(text) => {
            let text = vars.bind(text)?;
            bound["criteria"] = json!(text);
            let (head, query) = text.split_once('?').unwrap_or((text.as_str(), ""));
            if head != ty && !(ty == "*" && head == "*") {
                return Err(format!("criteria '{text}' is not a search on {ty}"));
            }
            let pairs = crate::query_pairs(query);
            let parsed =
                registry.parse(if ty == "*" { "" } else { ty }, &pairs).map_err(|issues| {
                    let texts: Vec<String> = issues.iter().map(|i| i.diagnostics.clone()).collect();
                    format!("criteria '{text}': {}", texts.join("; "))
                })?;
            if let Some(u) = parsed.unknown.first() {
                return Err(format!("criteria '{text}': parameter '{}': {}", u.name, u.reason));
            }
            match parsed.filters.len() {
                0 => None,
                1 => parsed.filters.into_iter().next(),
                _ => Some(Filter::And(parsed.filters)),
            }
        }
    };
    let interactions = match entry["interaction"].as_array() {
        Some(list) => {
            let mut bits = 0;
            for code in list {
                let code = code.as_str().unwrap_or_default();
                let i = Interaction::parse(code)
                    .ok_or_else(|| format!("unknown interaction '{code}'"))?;
                bits |= i.bit();
            }
            bits
        }
        None if entry["readonly"] == json!(true) => READ_INTERACTIONS,
        None => EVERY_INTERACTION,
    };
    let strings = |key: &str| -> Vec<String> {
        entry[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    };
    let mut constraints = Vec::new();
    for c in entry["writeConstraint"].as_array().into_iter().flatten() {
        let text = c["expression"].as_str().ok_or("a writeConstraint has no expression")?;
        let expr =
            kiln_fhirpath::compile(text).map_err(|e| format!("writeConstraint '{text}': {e}"))?;
        constraints.push(expr);
    }
    let rule = Rule {
        ty: ty.to_owned(),
        criteria,
        interactions,
        hidden: strings("hiddenFields"),
        readonly_fields: strings("readonlyFields"),
        constraints,
    };
    Ok((rule, bound))
}

impl Engine {
    /// Checks (and completes) a caller's writes against their access (see
    /// [`Engine::check_write`]): each op, or why it is refused. The stored version an op
    /// replaces or deletes must be one the caller may update or delete; an op without a
    /// precondition is made conditional on the version judged, so a concurrent write in
    /// between is detected rather than slipping past the check.
    pub(crate) async fn authorize_ops(
        &self,
        ctx: &RequestContext,
        ops: Vec<WriteOp>,
        registry: &kiln_search::Registry,
    ) -> Result<Vec<Result<WriteOp, EngineError>>, EngineError> {
        let mut out = Vec::with_capacity(ops.len());
        for op in ops {
            out.push(self.authorize_op(ctx, op, registry).await);
        }
        Ok(out)
    }

    async fn authorize_op(
        &self,
        ctx: &RequestContext,
        op: WriteOp,
        registry: &kiln_search::Registry,
    ) -> Result<WriteOp, EngineError> {
        let access = &ctx.access;
        match op {
            WriteOp::Put { mut resource, method, precondition, unique_keys, index } => {
                let ty = resource["resourceType"].as_str().unwrap_or_default().to_owned();
                let id = resource["id"].as_str().unwrap_or_default().to_owned();
                let current = match precondition {
                    Precondition::MustNotExist => None,
                    _ => match self.store().read(&ctx.project, &ty, &id).await {
                        Ok(stored) if !stored.deleted => Some(stored),
                        Ok(_) | Err(StoreError::NotFound { .. }) => None,
                        Err(e) => return Err(e.into()),
                    },
                };
                let before_json = match &current {
                    Some(stored) => {
                        self.check_access(ctx, stored, Interaction::Update).await.map_err(|e| {
                            match e {
                                EngineError::NotFound(_) => {
                                    forbidden(Interaction::Update, &format!("{ty}/{id}"))
                                }
                                other => other,
                            }
                        })?;
                        Some(
                            serde_json::from_slice::<Value>(&stored.body)
                                .map_err(|e| EngineError::Internal(e.to_string()))?,
                        )
                    }
                    None => None,
                };
                let interaction =
                    if current.is_some() { Interaction::Update } else { Interaction::Create };
                let original = resource.clone();
                self.check_write(access, &mut resource, before_json.as_ref(), interaction)?;
                let precondition = match (precondition, &current) {
                    (Precondition::None, Some(stored)) => Precondition::VersionIs(stored.version),
                    (Precondition::None, None) => Precondition::MustNotExist,
                    (other, _) => other,
                };
                let index = if resource == original { index } else { registry.extract(&resource) };
                Ok(WriteOp::Put { resource, method, precondition, unique_keys, index })
            }
            WriteOp::Delete { resource_type, id, precondition } => {
                access.usable()?;
                match self.store().read(&ctx.project, &resource_type, &id).await {
                    Ok(stored) if !stored.deleted => {
                        self.check_access(ctx, &stored, Interaction::Delete).await.map_err(
                            |e| match e {
                                EngineError::NotFound(_) => {
                                    forbidden(Interaction::Delete, &format!("{resource_type}/{id}"))
                                }
                                other => other,
                            },
                        )?;
                        let precondition = match precondition {
                            Precondition::None => Precondition::VersionIs(stored.version),
                            other => other,
                        };
                        Ok(WriteOp::Delete { resource_type, id, precondition })
                    }
                    Ok(_) | Err(StoreError::NotFound { .. }) => {
                        if matches!(
                            access.grant(&resource_type, Interaction::Delete),
                            Grant::Nothing
                        ) {
                            return Err(forbidden(Interaction::Delete, &resource_type));
                        }
                        Ok(WriteOp::Delete { resource_type, id, precondition })
                    }
                    Err(e) => Err(e.into()),
                }
            }
            WriteOp::Reindex { .. } => {
                Err(EngineError::Forbidden("Reindexing is the server's own operation".into()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_bind_values_and_ids() {
        let vars = Placeholders::new("Patient/p1").with(Some(&json!([
            {"name": "org", "valueReference": {"reference": "Organization/o1"}},
            {"name": "patientGroup", "valueString": "g7"},
        ])));
        assert_eq!(
            vars.bind("Observation?subject=%patient&x=%patient.id").unwrap(),
            "Observation?subject=Patient/p1&x=p1"
        );
        assert_eq!(vars.bind("Group?_id=%patientGroup").unwrap(), "Group?_id=g7");
        assert_eq!(
            vars.bind("Patient?organization=%org").unwrap(),
            "Patient?organization=Organization/o1"
        );
        assert_eq!(vars.bind("Patient?name=%nobody").unwrap_err(), "unknown placeholder %nobody");
    }

    #[test]
    fn hidden_paths_are_removed_through_arrays() {
        let mut v = json!({"name": [{"family": "A", "given": ["x"]}, {"family": "B"}], "birthDate": "2000", "_birthDate": {}});
        remove_path(&mut v, &segments("Patient.name.family"));
        remove_path(&mut v, &segments("birthDate"));
        assert_eq!(v, json!({"name": [{"given": ["x"]}, {}]}));
    }

    #[test]
    fn protected_paths_are_restored_from_the_stored_version() {
        let before = json!({"name": [{"family": "A", "given": ["x"]}], "gender": "male"});
        let mut after = json!({"name": [{"family": "Z", "given": ["y"]}], "gender": "female"});
        restore_path(Some(&before), &mut after, &segments("name.family"));
        restore_path(Some(&before), &mut after, &segments("gender"));
        assert_eq!(after, json!({"name": [{"family": "A", "given": ["y"]}], "gender": "male"}));
        let mut created = json!({"gender": "female", "name": [{"family": "Z"}]});
        restore_path(None, &mut created, &segments("gender"));
        assert_eq!(created, json!({"name": [{"family": "Z"}]}));
        // Dropped by the client, brought back.
        let mut dropped = json!({"gender": "male"});
        restore_path(Some(&before), &mut dropped, &segments("name.family"));
        assert_eq!(dropped, json!({"gender": "male", "name": [{"family": "A"}]}));
    }

    fn access(policy: Value, admin: bool) -> Access {
        let registry = kiln_search::Registry::base();
        let vars = Placeholders::new("Patient/p1").with(None);
        let rules = policy["resource"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| compile_rule(e, &vars, registry).unwrap().0)
            .collect();
        Access { admin, rules: Some(rules), ..Access::default() }
    }

    #[test]
    fn grants_or_rules_and_respect_interactions() {
        let a = access(
            json!({"resource": [
                {"resourceType": "Observation", "criteria": "Observation?subject=%patient"},
                {"resourceType": "Observation", "criteria": "Observation?code=1234-5", "readonly": true},
                {"resourceType": "Patient", "interaction": ["read", "search"]},
            ]}),
            false,
        );
        assert!(
            matches!(a.grant("Observation", Interaction::Search), Grant::Only(Filter::Or(v)) if v.len() == 2)
        );
        assert!(matches!(
            a.grant("Observation", Interaction::Update),
            Grant::Only(Filter::Values { .. })
        ));
        assert!(matches!(a.grant("Patient", Interaction::Read), Grant::All));
        assert!(matches!(a.grant("Patient", Interaction::Update), Grant::Nothing));
        assert!(matches!(a.grant("Encounter", Interaction::Read), Grant::Nothing));
        assert!(matches!(a.grant("ProjectMembership", Interaction::Read), Grant::Nothing));
        assert!(matches!(a.grant("Login", Interaction::Read), Grant::Nothing));
        assert!(matches!(a.grant("SearchParameter", Interaction::Search), Grant::All));
        assert!(matches!(a.grant("SearchParameter", Interaction::Create), Grant::Nothing));
        assert!(a.require_admin("$reindex").is_err());
        let admin = access(json!({"resource": []}), true);
        assert!(matches!(admin.grant("ProjectMembership", Interaction::Update), Grant::All));
        assert!(matches!(admin.grant("Login", Interaction::Read), Grant::Nothing));
        assert!(admin.require_admin("$reindex").is_ok());
    }

    #[test]
    fn chains_and_has_levels_are_restricted_too() {
        let a = access(
            json!({"resource": [
                {"resourceType": "Observation", "criteria": "Observation?subject=%patient"},
                {"resourceType": "Patient", "criteria": "Patient?_id=%patient.id"},
            ]}),
            false,
        );
        let pairs = [
            ("subject:Patient.name".to_owned(), "x".to_owned()),
            ("_has:Observation:subject:code".to_owned(), "1".to_owned()),
        ];
        let mut q = kiln_search::parse("Patient", &pairs[1..]).unwrap();
        let mut obs = kiln_search::parse("Observation", &pairs[..1]).unwrap();
        a.restrict(&mut obs, Interaction::Search).unwrap();
        let Filter::Chain { then, .. } = &obs.filters[0] else { panic!() };
        assert!(matches!(then.as_ref(), Filter::And(parts) if parts.len() == 2));
        assert_eq!(obs.filters.len(), 2, "the top-level criteria is added");
        a.restrict(&mut q, Interaction::Search).unwrap();
        let Filter::Has { then, .. } = &q.filters[0] else { panic!() };
        assert!(matches!(then.as_ref(), Filter::And(parts) if parts.len() == 2));
        let mut enc = kiln_search::parse("Encounter", &[]).unwrap();
        assert!(matches!(
            a.restrict(&mut enc, Interaction::Search),
            Err(EngineError::Forbidden(_))
        ));
    }

    #[test]
    fn scopes_narrow_and_never_widen() {
        let registry = kiln_search::Registry::base();
        let member = Arc::new(access(
            json!({"resource": [{"resourceType": "Observation", "criteria": "Observation?code=1"}]}),
            false,
        ));
        let scoped = member.with_scopes(
            "openid patient/Observation.rs patient/Patient.r",
            Some("p1"),
            registry,
        );
        // Observation: the policy's criteria AND the patient's compartment.
        assert!(matches!(
            scoped.grant("Observation", Interaction::Search),
            Grant::Only(Filter::And(parts)) if parts.len() == 2
        ));
        assert!(matches!(scoped.grant("Observation", Interaction::Create), Grant::Nothing));
        // Patient: the policy names none, so nothing, whatever the scope says.
        assert!(matches!(scoped.grant("Patient", Interaction::Read), Grant::Nothing));
        // No patient in context: patient/ scopes reach nothing.
        let none = member.with_scopes("patient/*.rs", None, registry);
        assert!(matches!(none.grant("Observation", Interaction::Search), Grant::Nothing));
        // No resource scope: the access unchanged (the same Arc).
        assert!(Arc::ptr_eq(&member.with_scopes("openid offline_access", None, registry), &member));
        // user/ and system/ scopes put no condition of their own.
        let user = Arc::new(Access::default()).with_scopes("user/Observation.rs", None, registry);
        assert!(matches!(user.grant("Observation", Interaction::Read), Grant::All));
        assert!(matches!(user.grant("Observation", Interaction::Update), Grant::Nothing));
        assert!(matches!(user.grant("Patient", Interaction::Read), Grant::Nothing));
        // Any type, as one filter: the scope's types only.
        assert!(matches!(user.grant_types(&[], Interaction::Search), Grant::Only(_)));
    }

    #[test]
    fn ip_rules_decide_in_order() {
        let ip = |s: &str| Some(s.parse::<std::net::IpAddr>().unwrap());
        let a = Access {
            ip_rules: vec![
                ("10.1.0.0/16".into(), true),
                ("8.8.".into(), true),
                ("2001:db8::/32".into(), true),
                ("192.168.1.7".into(), true),
                ("*".into(), false),
            ],
            ..Access::default()
        };
        assert!(a.ip_allowed(ip("10.1.200.3")));
        assert!(!a.ip_allowed(ip("10.2.0.1")));
        assert!(a.ip_allowed(ip("8.8.4.4")));
        assert!(!a.ip_allowed(ip("8.7.8.8")));
        assert!(a.ip_allowed(ip("2001:db8::1")));
        assert!(a.ip_allowed(ip("::ffff:192.168.1.7")), "IPv4 through an IPv6 socket");
        assert!(!a.ip_allowed(ip("192.168.1.70")), "an exact address is not a prefix");
        assert!(!a.ip_allowed(None));
        assert!(Access::default().ip_allowed(ip("1.2.3.4")), "no rules: allowed");
    }

    #[test]
    fn policies_are_checked_when_written() {
        let registry = kiln_search::Registry::base();
        let ok = json!({"resource": [
            {"resourceType": "Observation", "criteria": "Observation?subject=%patient&_id:not=%x.id"},
            {"resourceType": "*", "criteria": "*?_compartment=%patient"},
            {"resourceType": "Patient", "interaction": ["read"], "hiddenFields": ["name"]},
        ]});
        check_policy(&ok, registry).unwrap();
        let bad = json!({"resource": [{"resourceType": "Patient", "criteria": "Patient?nope=1"}]});
        assert!(check_policy(&bad, registry).unwrap_err().contains("resource[0]"));
        let bad = json!({"resource": [{"resourceType": "Patient", "interaction": ["peek"]}]});
        assert!(check_policy(&bad, registry).is_err());
        let bad = json!({"resource": [{"resourceType": "Patient",
            "writeConstraint": [{"expression": "%after.name.where("}]}]});
        assert!(check_policy(&bad, registry).is_err());
        assert_eq!(bind_any("a=%p&b=%q.id&c=100%"), "a=Patient/placeholder&b=placeholder&c=100%");
    }

    #[test]
    fn broken_policies_refuse_everything() {
        let registry = kiln_search::Registry::base();
        let vars = Placeholders::new("Practitioner/x").with(None);
        let bad =
            json!({"resourceType": "Observation", "criteria": "Observation?subject=%patient"});
        assert!(compile_rule(&bad, &vars, registry).unwrap_err().contains("%patient"));
        let bad = json!({"resourceType": "Observation", "criteria": "Observation?nope=1"});
        assert!(compile_rule(&bad, &vars, registry).is_err());
        let bad = json!({"resourceType": "Observation", "criteria": "Patient?name=x"});
        assert!(compile_rule(&bad, &vars, registry).is_err());
    }
}
