//! Write rules every backend applies the same way: preconditions on the current version and the
//! time stamp of a new version. Backends read the current row (locked), then call these.

use chrono::Utc;

use crate::{Precondition, StoreError, format_instant};

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
