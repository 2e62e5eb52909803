//! FHIR operations (`$name`) this build implements: `$validate` (type and instance level),
//! with structural validation, the base invariants and profiles (`profile` parameter,
//! `meta.profile` claims); and the profile rules of writes in projects that ask for them
//! (`Project.setting` `strictProfiles`).
//!
//! Profiles are the built-in US Core 5.0.1 ones (`kiln_validate::Profiles::builtin`) and
//! the project's own StructureDefinition resources, looked up by `url` when a validation
//! names a profile that is not built in. The value sets such a profile binds or names in a
//! `memberOf` constraint are expanded from the project's ValueSets and CodeSystems
//! (`Engine::validation_terminology`) and handed to validation with the profiles.

use std::sync::Arc;

use kiln_model::{Issue, IssueCode, has_failure};
use kiln_store::{ProjectId, SearchRequest};
use kiln_validate::{ProfileCheck, Profiles};
use serde_json::Value;

use crate::accounts::parse_body;
use crate::{Engine, EngineError, RequestContext};

/// The `Project.setting` (a `valueBoolean`) that makes writes obey the profiles a resource
/// claims in `meta.profile`.
pub const STRICT_PROFILES_SETTING: &str = "strictProfiles";

/// `$validate`'s `mode` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No mode: validate the resource as it is.
    General,
    Create,
    Update,
    Delete,
}

/// The most project CodeSystems whose hierarchies validation is given (for `subsumes()`).
const MAX_VALIDATION_CODE_SYSTEMS: usize = 100;

/// The most sets of compiled profiles kept (all projects together); beyond, the cache starts
/// over.
pub(crate) const MAX_CACHED_PROFILE_SETS: usize = 256;

/// The profile cache's key: the project, then the sorted URLs asked for in it.
fn profile_key(project: &ProjectId, urls: &[String]) -> String {
    format!("{}\n{}", project.as_str(), urls.join(" "))
}

impl Engine {
    /// `POST [type]/$validate` and `POST [type]/[id]/$validate`. The body is the resource,
    /// a `Parameters` (`resource`, `profile`, `mode`) or, at instance level, absent (the
    /// stored resource is validated). `query` may carry `profile` and `mode` too. Returns
    /// every issue found (an empty list means valid). Nothing is stored.
    pub async fn validate(
        &self,
        ctx: &RequestContext,
        ty: &str,
        id: Option<&str>,
        body: Option<Value>,
        query: &[(String, String)],
    ) -> Result<Vec<Issue>, EngineError> {
        self.check_type(ty)?;
        let mut profile = query.iter().find(|(k, _)| k == "profile").map(|(_, v)| v.clone());
        let mut mode = query.iter().find(|(k, _)| k == "mode").map(|(_, v)| v.clone());
        let mut resource = None;
        match body {
            Some(body)
                if body.get("resourceType").and_then(Value::as_str) == Some("Parameters")
                    && ty != "Parameters" =>
            {
                for p in body.get("parameter").and_then(Value::as_array).into_iter().flatten() {
                    match p.get("name").and_then(Value::as_str) {
                        Some("resource") => resource = p.get("resource").cloned(),
                        Some("profile") => profile = parameter_text(p).or(profile),
                        Some("mode") => mode = parameter_text(p).or(mode),
                        _ => {}
                    }
                }
                if resource.is_none() && id.is_none() {
                    return Err(EngineError::invalid(
                        "Parameters for $validate need a 'resource' parameter",
                    ));
                }
            }
            Some(body) => resource = Some(body),
            None => {}
        }
        let mode = match mode.as_deref() {
            None => Mode::General,
            Some("create") => Mode::Create,
            Some("update") => Mode::Update,
            Some("delete") => Mode::Delete,
            Some(other) => {
                return Err(EngineError::invalid(format!(
                    "Unknown $validate mode '{other}' (create, update or delete)"
                )));
            }
        };
        if mode == Mode::Delete {
            // Basic: the resource must exist and be readable by the caller.
            let Some(id) = id else {
                return Err(EngineError::invalid(
                    "mode=delete needs an instance: [type]/[id]/$validate",
                ));
            };
            self.read(ctx, ty, id).await?;
            return Ok(Vec::new());
        }
        let resource = match (resource, id) {
            (Some(resource), _) => resource,
            (None, Some(id)) => parse_body(&self.read(ctx, ty, id).await?)?,
            (None, None) => {
                return Err(EngineError::invalid("$validate needs a resource to validate"));
            }
        };
        match resource.get("resourceType").and_then(Value::as_str) {
            Some(actual) if actual == ty => {}
            Some(actual) => {
                return Ok(vec![
                    Issue::error(
                        IssueCode::Invalid,
                        format!("resourceType '{actual}' does not match the URL's type '{ty}'"),
                    )
                    .at("resourceType"),
                ]);
            }
            None => {
                return Ok(vec![
                    Issue::error(IssueCode::Required, "Missing resourceType").at("resourceType"),
                ]);
            }
        }
        let mut issues = Vec::new();
        let body_id = resource.get("id").and_then(Value::as_str);
        if let (Some(id), Some(body_id)) = (id, body_id)
            && id != body_id
        {
            issues.push(
                Issue::error(
                    IssueCode::Invalid,
                    format!("The resource's id '{body_id}' does not match the URL's id '{id}'"),
                )
                .at(format!("{ty}.id")),
            );
        }
        if mode == Mode::Update && body_id.is_none() && id.is_none() {
            issues.push(
                Issue::error(IssueCode::Required, "mode=update needs a resource with an id")
                    .at(format!("{ty}.id")),
            );
        }
        let profiles = self.profiles_for(ctx, &resource, profile.as_deref()).await?;
        let check = ProfileCheck::new(profiles.clone());
        issues.extend(kiln_validate::validate_resource_with(&resource, &check));
        if let Some(url) = &profile
            && !claims(&resource, url)
        {
            issues.extend(profiles.validate(&resource, url));
        }
        Ok(issues)
    }

    /// The built-in profiles plus the project's StructureDefinitions for the URLs `resource`
    /// claims (and `extra`) that are not built in. A stored profile that cannot be used is
    /// skipped (its claims are then reported as unknown).
    async fn profiles_for(
        &self,
        ctx: &RequestContext,
        resource: &Value,
        extra: Option<&str>,
    ) -> Result<Arc<Profiles>, EngineError> {
        let claimed = claimed_profiles(resource);
        let urls = claimed.iter().map(String::as_str).chain(extra);
        self.profiles_for_urls(ctx, urls).await
    }

    /// The built-in profiles plus the project's StructureDefinitions for `urls` that are not
    /// built in. A stored profile that cannot be used is skipped (its claims are then
    /// reported as unknown). When stored profiles are used, the value sets they need that
    /// are not built in are expanded from the project (under the caller's access, once per
    /// call: expansions are not cached across requests) and validation checks bindings and
    /// answers `memberOf` with them; one that cannot be expanded stays unchecked.
    ///
    /// The project's StructureDefinitions, ValueSets and CodeSystems are its configuration, like
    /// its SearchParameters: they are read and expanded by the engine itself (whatever the
    /// caller may search), and the result is cached per project and set of URLs
    /// (`Engine::profiles`) until one of those resources is written (here at once, on other nodes
    /// through the change notices or within `Limits::registry_ttl`).
    pub(crate) async fn profiles_for_urls<'u>(
        &self,
        ctx: &RequestContext,
        urls: impl Iterator<Item = &'u str>,
    ) -> Result<Arc<Profiles>, EngineError> {
        let builtin = Profiles::builtin();
        let mut wanted: Vec<String> = urls
            .map(|url| url.split('|').next().unwrap_or(url))
            .filter(|url| builtin.get(url).is_none())
            .map(str::to_owned)
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        if wanted.is_empty() {
            return Ok(Arc::new(Profiles::with_builtin()));
        }
        let key = profile_key(&ctx.project, &wanted);
        if let Some(profiles) = self.profiles.get(&key) {
            return Ok(profiles);
        }
        let system = RequestContext::new(ctx.project.clone());
        let mut profiles = Profiles::with_builtin();
        for url in &wanted {
            if let Some(sd) = self.stored_profile(&ctx.project, url).await? {
                // Unusable definitions are left out: the claim is then reported as unknown.
                let _ = profiles.add_structure_definition(&sd);
            }
        }
        let value_sets = profiles.value_set_urls();
        let hierarchies = profiles.uses_subsumption();
        if !value_sets.is_empty() || hierarchies {
            let mut terminology = self.validation_terminology(&system, &value_sets).await?;
            if hierarchies {
                self.add_code_systems(&ctx.project, &mut terminology).await?;
            }
            profiles.set_terminology(Arc::new(terminology));
        }
        let profiles = Arc::new(profiles);
        self.profiles.put(key, profiles.clone());
        Ok(profiles)
    }

    /// After a write of a StructureDefinition, ValueSet or CodeSystem: the project's compiled
    /// profiles go, here and (announced) on the other nodes.
    pub(crate) fn conformance_written(&self, project: &ProjectId) {
        self.forget_profiles(Some(project));
        self.announce(crate::shared::Change::Conformance(project.clone()));
    }

    pub(crate) fn forget_profiles(&self, project: Option<&ProjectId>) {
        match project {
            Some(project) => {
                let prefix = profile_key(project, &[]);
                self.profiles.retain(|key| !key.starts_with(&prefix));
            }
            None => self.profiles.clear(),
        }
    }

    /// The hierarchies of the project's complete CodeSystems (at most
    /// [`MAX_VALIDATION_CODE_SYSTEMS`]), for `subsumes()` in profile constraints.
    async fn add_code_systems(
        &self,
        project: &ProjectId,
        terminology: &mut kiln_validate::SnapshotTerminology,
    ) -> Result<(), EngineError> {
        let query = kiln_search::parse("CodeSystem", &[]).map_err(EngineError::Invalid)?;
        let request =
            SearchRequest { query, after: None, count: MAX_VALIDATION_CODE_SYSTEMS, total: false };
        let page = self.store().search(project, &request).await?;
        for stored in &page.matches {
            let view = crate::terminology::CodeSystemView::from_resource(&parse_body(stored)?);
            if view.url.is_empty() || !view.complete {
                continue;
            }
            let concepts = view.concepts.into_iter().map(|(code, def)| (code, def.parents));
            terminology.insert_code_system(&view.url, concepts);
        }
        Ok(())
    }

    /// The project's StructureDefinition with canonical `url`, if any.
    async fn stored_profile(
        &self,
        project: &ProjectId,
        url: &str,
    ) -> Result<Option<Value>, EngineError> {
        let pairs = [("url".to_string(), url.to_string())];
        let query =
            kiln_search::parse("StructureDefinition", &pairs).map_err(EngineError::Invalid)?;
        let request = SearchRequest { query, after: None, count: 1, total: false };
        let page = self.store().search(project, &request).await?;
        page.matches.first().map(parse_body).transpose()
    }

    /// Whether `project` asks writes to obey claimed profiles (`Project.setting`
    /// `strictProfiles` = true). Cached like the project's accesses: a change of the Project
    /// on this node is seen at once, one on another node within `Limits::registry_ttl`.
    pub(crate) async fn strict_profiles(&self, project: &ProjectId) -> Result<bool, EngineError> {
        let ttl = self.limits().registry_ttl;
        if let Some(on) = self.access.strict_profiles(project, ttl) {
            return Ok(on);
        }
        let on = match self.store().read(project, "Project", project.as_str()).await {
            Ok(stored) if !stored.deleted => project_has_strict_profiles(&parse_body(&stored)?),
            _ => false,
        };
        self.access.put_strict_profiles(project, on);
        Ok(on)
    }

    /// For a write: when the resource (or a resource it contains) claims profiles and its
    /// project has `strictProfiles`, each must conform to the known profiles it claims (400
    /// with the issues if not). Claimed profiles the server does not know are not enforced.
    pub(crate) async fn enforce_profiles(
        &self,
        ctx: &RequestContext,
        resource: &Value,
    ) -> Result<(), EngineError> {
        if !self.strict_profiles(&ctx.project).await? {
            return Ok(());
        }
        let claimed = claimed_profiles(resource);
        if claimed.is_empty() {
            return Ok(());
        }
        let profiles = self.profiles_for_urls(ctx, claimed.iter().map(String::as_str)).await?;
        let issues = claimed_profile_errors(&profiles, resource);
        if has_failure(&issues) {
            return Err(EngineError::Invalid(issues));
        }
        Ok(())
    }
}

/// The profile URLs `resource` and the resources nested in it (contained, Bundle entries,
/// Parameters resources) claim in `meta.profile` (without versions, each once).
pub(crate) fn claimed_profiles(resource: &Value) -> Vec<String> {
    let mut urls: Vec<String> = Vec::new();
    kiln_validate::visit_nested(resource, &mut |context| {
        let claims = context.resource.pointer("/meta/profile").and_then(Value::as_array);
        for url in claims.into_iter().flatten().filter_map(Value::as_str) {
            urls.push(url.split('|').next().unwrap_or(url).to_string());
        }
    });
    urls.sort_unstable();
    urls.dedup();
    urls
}

/// The errors of `resource` and of each resource nested in it against the known profiles each
/// claims (a nested resource's located under its path, e.g. `Observation.contained[0]`,
/// `Bundle.entry[2].resource`).
pub(crate) fn claimed_profile_errors(profiles: &Profiles, resource: &Value) -> Vec<Issue> {
    let mut issues = Vec::new();
    kiln_validate::visit_nested(resource, &mut |context| {
        issues.extend(profiles.validate_claimed_in(
            context.resource,
            context.path,
            context.container,
        ));
    });
    issues.retain(|i| i.severity == kiln_model::Severity::Error);
    issues
}

/// Whether a Project resource turns `strictProfiles` on.
fn project_has_strict_profiles(project: &Value) -> bool {
    project.get("setting").and_then(Value::as_array).into_iter().flatten().any(|s| {
        s.get("name").and_then(Value::as_str) == Some(STRICT_PROFILES_SETTING)
            && (s.get("valueBoolean") == Some(&Value::Bool(true))
                || s.get("valueString").and_then(Value::as_str) == Some("true"))
    })
}

/// The text of a `Parameters.parameter` value (`valueUri`, `valueCanonical`, `valueCode`,
/// `valueString`).
fn parameter_text(p: &Value) -> Option<String> {
    ["valueUri", "valueCanonical", "valueCode", "valueString", "valueUrl"]
        .iter()
        .find_map(|k| p.get(*k).and_then(Value::as_str))
        .map(String::from)
}

/// Whether `resource` claims profile `url` in `meta.profile` (versions ignored).
fn claims(resource: &Value, url: &str) -> bool {
    let url = url.split('|').next().unwrap_or(url);
    resource
        .pointer("/meta/profile")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .any(|c| c.split('|').next() == Some(url))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strict_profiles_setting() {
        assert!(!project_has_strict_profiles(&json!({"resourceType": "Project"})));
        assert!(project_has_strict_profiles(&json!({"resourceType": "Project",
            "setting": [{"name": "other", "valueBoolean": true},
                        {"name": "strictProfiles", "valueBoolean": true}]})));
        assert!(!project_has_strict_profiles(&json!({"resourceType": "Project",
            "setting": [{"name": "strictProfiles", "valueBoolean": false}]})));
    }

    #[test]
    fn claims_ignore_versions() {
        let r = json!({"meta": {"profile": ["http://x/p|1.0"]}});
        assert!(claims(&r, "http://x/p"));
        assert!(claims(&r, "http://x/p|2"));
        assert!(!claims(&r, "http://x/q"));
    }
}
