//! Storage for raw bytes (the content of Binary resources), kept outside the resource tables.
//! The file-system implementation writes to a temporary file, fsyncs, then renames, so a crash
//! never leaves a half-written blob under its final name.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;

use crate::ProjectId;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob not found")]
    NotFound,
    #[error("blob storage failure: {0}")]
    Io(#[from] std::io::Error),
}

#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    async fn put(&self, project: &ProjectId, key: &str, bytes: &[u8]) -> Result<(), BlobError>;
    async fn get(&self, project: &ProjectId, key: &str) -> Result<Vec<u8>, BlobError>;
}

/// Blobs as files under `<root>/<project>/<key>`. Keys are FHIR ids (validated by the caller),
/// so they cannot escape the root.
pub struct FsBlobStore {
    root: PathBuf,
}

impl FsBlobStore {
    pub fn new(root: impl Into<PathBuf>) -> FsBlobStore {
        FsBlobStore { root: root.into() }
    }

    fn path(&self, project: &ProjectId, key: &str) -> Result<PathBuf, BlobError> {
        let safe = |s: &str| {
            !s.is_empty()
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                && s != "."
                && s != ".."
        };
        if !safe(project.as_str()) || !safe(key) {
            return Err(BlobError::NotFound);
        }
        Ok(self.root.join(project.as_str()).join(key))
    }
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn put(&self, project: &ProjectId, key: &str, bytes: &[u8]) -> Result<(), BlobError> {
        let path = self.path(project, key)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        tokio::fs::create_dir_all(dir).await?;
        let tmp = path.with_extension("partial");
        let mut file = tokio::fs::File::create(&tmp).await?;
        file.write_all(bytes).await?;
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(&tmp, &path).await?;
        // Make the rename itself durable.
        if let Ok(dir) = tokio::fs::File::open(dir).await {
            let _ = dir.sync_all().await;
        }
        Ok(())
    }

    async fn get(&self, project: &ProjectId, key: &str) -> Result<Vec<u8>, BlobError> {
        let path = self.path(project, key)?;
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(BlobError::NotFound),
            Err(e) => Err(BlobError::Io(e)),
        }
    }
}
