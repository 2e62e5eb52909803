//! State every node of a deployment must see alike, beyond resources: counters (login
//! failures, used client-assertion `jti`s) and change notices (a project's access policies or
//! search parameters changed, so cached copies must go).
//!
//! [`SharedState`] is the seam. [`StoreShared`], the default, keeps counters in the store's
//! event counters (a table on SQLite and PostgreSQL alike, so N nodes on one PostgreSQL count
//! together) and announces nothing: other nodes see a change when their caches expire
//! ([`crate::Limits::registry_ttl`]). `kiln serve --redis-url` plugs in a Redis
//! implementation (in the `kiln` binary), whose counters live in Redis and whose notices
//! reach every node at once through publish/subscribe.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kiln_store::{ProjectId, Store};

use crate::{Engine, EngineError};

/// What changed, announced to the other nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A project's policies, memberships or the project itself: cached accesses must go.
    Access(ProjectId),
    /// A project's SearchParameters: its cached search registry must go.
    SearchParameters(ProjectId),
    /// A project's StructureDefinitions, ValueSets or CodeSystems: its compiled profiles must go.
    Conformance(ProjectId),
    /// A client's secret or membership: verified Basic credentials must go.
    Credentials,
}

impl Change {
    /// The wire form: `access <project>`, `params <project>`, `conformance <project>` or
    /// `credentials -`.
    pub fn encode(&self) -> String {
        match self {
            Change::Access(p) => format!("access {p}"),
            Change::SearchParameters(p) => format!("params {p}"),
            Change::Conformance(p) => format!("conformance {p}"),
            Change::Credentials => "credentials -".to_owned(),
        }
    }

    pub fn decode(text: &str) -> Option<Change> {
        let (kind, project) = text.split_once(' ')?;
        let project = ProjectId::new(project);
        match kind {
            "access" => Some(Change::Access(project)),
            "params" => Some(Change::SearchParameters(project)),
            "conformance" => Some(Change::Conformance(project)),
            "credentials" => Some(Change::Credentials),
            _ => None,
        }
    }
}

/// Receives the changes other nodes announce.
pub type ChangeHandler = Arc<dyn Fn(Option<Change>) + Send + Sync>;

/// Counters and notices shared by every node.
#[async_trait]
pub trait SharedState: Send + Sync + 'static {
    /// Counts an event of `key` and returns the count; a key's count starts again from 1 once
    /// `ttl` has passed without an event.
    async fn count_event(&self, key: &str, ttl: Duration) -> Result<u64, EngineError>;
    /// The live count of `key`.
    async fn event_count(&self, key: &str) -> Result<u64, EngineError>;
    /// Forgets `key`.
    async fn clear_events(&self, key: &str) -> Result<(), EngineError>;
    /// Tells the other nodes (best effort).
    async fn announce(&self, change: &Change);
    /// Calls `handler` for every change another node announces, and with `None` when notices
    /// may have been missed (a lost connection): then everything cached must go.
    fn subscribe(&self, handler: ChangeHandler);
}

/// The default: counters in the store, no notices.
pub struct StoreShared {
    store: Arc<dyn Store>,
}

impl StoreShared {
    pub fn new(store: Arc<dyn Store>) -> StoreShared {
        StoreShared { store }
    }
}

#[async_trait]
impl SharedState for StoreShared {
    async fn count_event(&self, key: &str, ttl: Duration) -> Result<u64, EngineError> {
        Ok(self.store.count_event(key, ttl).await?)
    }

    async fn event_count(&self, key: &str) -> Result<u64, EngineError> {
        Ok(self.store.event_count(key).await?)
    }

    async fn clear_events(&self, key: &str) -> Result<(), EngineError> {
        Ok(self.store.clear_events(key).await?)
    }

    async fn announce(&self, _change: &Change) {}

    fn subscribe(&self, _handler: ChangeHandler) {}
}

impl Engine {
    /// Uses `shared` for counters and change notices (`kiln serve --redis-url`); call before
    /// serving. Changes other nodes announce then clear this node's caches at once.
    pub fn set_shared_state(&self, shared: Arc<dyn SharedState>) {
        let engine = self.clone();
        shared.subscribe(Arc::new(move |change| engine.apply_change(change)));
        *self.shared.write().unwrap_or_else(|e| e.into_inner()) = shared;
    }

    pub(crate) fn shared(&self) -> Arc<dyn SharedState> {
        self.shared.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Forgets what a change made stale (`None`: everything).
    fn apply_change(&self, change: Option<Change>) {
        match change {
            Some(Change::Access(project)) => {
                self.access.invalidate(&project);
                self.auth().forget_basic();
            }
            Some(Change::SearchParameters(project)) => {
                self.params.invalidate(&project);
                self.access.invalidate(&project);
            }
            Some(Change::Conformance(project)) => self.forget_profiles(Some(&project)),
            Some(Change::Credentials) => self.auth().forget_basic(),
            None => {
                self.forget_profiles(None);
                self.access.clear();
                self.params.clear();
                self.auth().forget_basic();
            }
        }
    }

    /// Tells the other nodes about a change made here (in the background: a slow or absent
    /// Redis never holds up the request; the caches' TTL is the fallback).
    pub(crate) fn announce(&self, change: Change) {
        let shared = self.shared();
        tokio::spawn(async move { shared.announce(&change).await });
    }

    /// Waits out the throttle earned by `keys` (the longest of their delays). Counting
    /// failures is best effort: when the shared counters cannot be reached, no one waits.
    pub(crate) async fn throttle_wait(&self, keys: &[&str]) {
        let config = self.auth().throttle;
        let shared = self.shared();
        let mut delay = Duration::ZERO;
        for key in keys {
            match shared.event_count(&throttle_key(key)).await {
                Ok(n) => delay = delay.max(config.delay_after(n)),
                Err(e) => tracing::warn!(error = %e, "login throttle: counters unavailable"),
            }
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    /// Counts a failed attempt against each of `keys`.
    pub(crate) async fn throttle_fail(&self, keys: &[&str]) {
        let window = self.auth().throttle.window;
        let shared = self.shared();
        for key in keys {
            if let Err(e) = shared.count_event(&throttle_key(key), window).await {
                tracing::warn!(error = %e, "login throttle: counters unavailable");
            }
        }
    }

    /// Forgets the failures of `key` (a successful attempt). Most keys have none: a read
    /// then spares the write (on SQLite, a commit) that clearing would cost every sign-in.
    pub(crate) async fn throttle_clear(&self, key: &str) {
        let shared = self.shared();
        let key = throttle_key(key);
        let cleared = match shared.event_count(&key).await {
            Ok(0) => Ok(()),
            Ok(_) => shared.clear_events(&key).await,
            Err(e) => Err(e),
        };
        if let Err(e) = cleared {
            tracing::warn!(error = %e, "login throttle: counters unavailable");
        }
    }
}

/// The counter of a throttle key, e.g. `throttle:email:a@b.c`.
pub fn throttle_key(key: &str) -> String {
    format!("throttle:{key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_round_trip() {
        for change in [
            Change::Access(ProjectId::new("p-1")),
            Change::SearchParameters(ProjectId::new("x")),
            Change::Conformance(ProjectId::new("c")),
            Change::Credentials,
        ] {
            assert_eq!(Change::decode(&change.encode()), Some(change));
        }
        assert_eq!(Change::decode("other p"), None);
        assert_eq!(Change::decode("access"), None);
    }
}
