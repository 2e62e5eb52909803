//! Write rules every backend applies the same way: preconditions on the current version and the
//! time stamp of a new version. Backends read the current row (locked), then call these.

use std::sync::Arc;

use chrono::Utc;
use serde_json::Value;

use crate::{Precondition, StoreError, StoredResource, WriteMethod, WriteResult, format_instant};

/// The current row of a resource, as a backend read it inside its write transaction.
#[derive(Debug, Clone)]
pub struct CurrentVersion {
    pub version: i64,
    pub deleted: bool,
    pub last_updated: String,
}

/// Checks `precondition` against the current state (`None`: the resource never existed).
pub fn check_precondition(
    precondition: Precondition,
    current: Option<&CurrentVersion>,
    ty: &str,
    id: &str,
) -> Result<(), StoreError> {
    let live = current.filter(|it| !it.deleted);
    match precondition {
        Precondition::None => Ok(()),
        Precondition::MustNotExist => match live {
            Some(_) => {
                Err(StoreError::AlreadyExists { resource_type: ty.to_owned(), id: id.to_owned() })
            }
            None => Ok(()),
        },
        Precondition::VersionIs(expected) => {
            let actual = current.map(|it| it.version).unwrap_or(0);
            if live.is_some() && actual == expected {
                Ok(())
            } else {
                Err(StoreError::VersionConflict { expected, actual })
            }
        }
        Precondition::MustExist => match current {
            None => Err(StoreError::NotFound { resource_type: ty.to_owned(), id: id.to_owned() }),
            Some(it) if it.deleted => Err(StoreError::Gone {
                resource_type: ty.to_owned(),
                id: id.to_owned(),
                version: it.version,
            }),
            Some(_) => Ok(()),
        },
    }
}

/// A `lastUpdated` for a new version: now, but never earlier than the previous version's, so a
/// resource's history is ordered in time even if the clock steps back.
pub fn next_instant(previous: Option<&str>) -> String {
    let now = format_instant(Utc::now());
    match previous {
        Some(prev) if prev > now.as_str() => prev.to_owned(),
        _ => now,
    }
}

/// The version a write will create, decided from the resource's current row.
#[derive(Debug, Clone)]
pub struct NextVersion {
    pub version: i64,
    pub last_updated: String,
    /// No live version existed before (a create, or a re-create after a delete).
    pub created: bool,
}

impl NextVersion {
    /// The result to report once the backend has written this version as history row `seq`.
    pub fn into_result(
        self,
        (resource_type, id): (String, String),
        method: WriteMethod,
        body: Vec<u8>,
        seq: i64,
    ) -> WriteResult {
        let stored = StoredResource {
            resource_type,
            id,
            version: self.version,
            last_updated: self.last_updated,
            deleted: method == WriteMethod::Delete,
            body: Arc::from(body),
            method,
            seq,
        };
        WriteResult { stored: Some(stored), created: self.created }
    }
}

/// `resourceType` and `id` of a resource about to be written (the engine always sets both).
pub fn put_target(resource: &Value) -> Result<(String, String), StoreError> {
    match (resource["resourceType"].as_str(), resource["id"].as_str()) {
        (Some(ty), Some(id)) if !ty.is_empty() && !id.is_empty() => {
            Ok((ty.to_owned(), id.to_owned()))
        }
        _ => Err(StoreError::Internal("write without resourceType or id".into())),
    }
}

/// Checks a `Put`'s precondition and decides its version.
pub fn plan_put(
    precondition: Precondition,
    current: Option<&CurrentVersion>,
    ty: &str,
    id: &str,
) -> Result<NextVersion, StoreError> {
    check_precondition(precondition, current, ty, id)?;
    Ok(NextVersion {
        version: current.map(|it| it.version + 1).unwrap_or(1),
        last_updated: next_instant(current.map(|it| it.last_updated.as_str())),
        created: current.is_none_or(|it| it.deleted),
    })
}

/// Checks a `Delete`'s precondition and decides its version; `None` when there is nothing live
/// to delete (deleting is idempotent).
pub fn plan_delete(
    precondition: Precondition,
    current: Option<&CurrentVersion>,
    ty: &str,
    id: &str,
) -> Result<Option<NextVersion>, StoreError> {
    check_precondition(precondition, current, ty, id)?;
    Ok(current.filter(|it| !it.deleted).map(|it| NextVersion {
        version: it.version + 1,
        last_updated: next_instant(Some(&it.last_updated)),
        created: false,
    }))
}
