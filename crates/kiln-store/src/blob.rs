//! Storage for raw bytes (the content of Binary resources, bulk export files), kept outside
//! the resource tables. The file-system implementation writes to a temporary file, fsyncs,
//! then renames, so a crash never leaves a half-written blob under its final name.
//!
//! A key is one or more `/`-separated segments of ASCII letters, digits, `-`, `.` and `_`. A
//! Binary's key is its id; bulk job files live under `_bulk/<job>/` (no FHIR id has a
//! `_`, so the folder never meets a Binary).

use std::path::{Path, PathBuf};
use std::pin::Pin;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWriteExt, BufWriter};

use crate::ProjectId;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob not found")]
    NotFound,
    #[error("blob storage failure: {0}")]
    Io(#[from] std::io::Error),
}

/// A blob being read in pieces.
pub struct BlobReader {
    /// The blob's size in bytes.
    pub len: u64,
    pub reader: Pin<Box<dyn AsyncRead + Send>>,
}

/// A blob being written in pieces ([`BlobStore::create`]). Nothing is visible under the key
/// until [`BlobWriter::finish`] returns; a writer dropped unfinished leaves no blob.
#[async_trait]
pub trait BlobWriter: Send {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), BlobError>;
    /// Makes the blob durable and visible; returns its size in bytes.
    async fn finish(self: Box<Self>) -> Result<u64, BlobError>;
}

#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Stores `bytes` under `key` (replacing what was there), durably.
    async fn put(&self, project: &ProjectId, key: &str, bytes: &[u8]) -> Result<(), BlobError>;
    async fn get(&self, project: &ProjectId, key: &str) -> Result<Vec<u8>, BlobError>;
    /// Starts writing a blob under `key` in pieces (replacing what was there on finish).
    async fn create(
        &self,
        project: &ProjectId,
        key: &str,
    ) -> Result<Box<dyn BlobWriter>, BlobError>;
    /// Opens a blob for reading as a stream.
    async fn open(&self, project: &ProjectId, key: &str) -> Result<BlobReader, BlobError>;
    /// Deletes every blob under the folder `prefix` (`_bulk/<job>`); nothing there is fine.
    async fn delete_folder(&self, project: &ProjectId, prefix: &str) -> Result<(), BlobError>;
}

/// Whether `project` and `key` name a blob every [`BlobStore`] can hold: segments of ASCII
/// letters, digits, `-`, `.` and `_`, never `.` or `..`. Stores answer [`BlobError::NotFound`]
/// for anything else, so a file-system store cannot be led outside its root and every
/// backend treats the same keys alike.
pub fn valid_key(project: &ProjectId, key: &str) -> bool {
    let safe = |s: &str| {
        !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            && s != "."
            && s != ".."
    };
    safe(project.as_str()) && key.split('/').all(safe)
}

/// Blobs as files under `<root>/<project>/<key>`. Keys are checked segment by segment
/// so they cannot escape the root.
pub struct FsBlobStore {
    root: PathBuf,
}

impl FsBlobStore {
    pub fn new(root: impl Into<PathBuf>) -> FsBlobStore {
        FsBlobStore { root: root.into() }
    }

    fn path(&self, project: &ProjectId, key: &str) -> Result<PathBuf, BlobError> {
        if !valid_key(project, key) {
            return Err(BlobError::NotFound);
        }
        let mut path = self.root.join(project.as_str());
        path.extend(key.split('/'));
        Ok(path)
    }
}

/// Writes to a temporary file beside the blob, then fsyncs and renames on finish.
struct FsBlobWriter {
    file: BufWriter<tokio::fs::File>,
    tmp: PathBuf,
    path: PathBuf,
    len: u64,
    finished: bool,
}

#[async_trait]
impl BlobWriter for FsBlobWriter {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), BlobError> {
        self.file.write_all(bytes).await?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<u64, BlobError> {
        self.file.flush().await?;
        self.file.get_ref().sync_all().await?;
        tokio::fs::rename(&self.tmp, &self.path).await?;
        self.finished = true;
        sync_dir(&self.path).await;
        Ok(self.len)
    }
}

impl Drop for FsBlobWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// A temporary name beside `path`, unique to this writer (two writers of one key, on one node
/// or several, never share a file; the last rename wins).
fn temp_path(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}-{n}.partial", std::process::id()));
    path.with_file_name(name)
}

/// Makes a rename or removal in `path`'s folder durable (best effort).
async fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(dir) = tokio::fs::File::open(dir).await
    {
        let _ = dir.sync_all().await;
    }
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn put(&self, project: &ProjectId, key: &str, bytes: &[u8]) -> Result<(), BlobError> {
        let path = self.path(project, key)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        tokio::fs::create_dir_all(dir).await?;
        let tmp = temp_path(&path);
        let mut file = tokio::fs::File::create(&tmp).await?;
        file.write_all(bytes).await?;
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(&tmp, &path).await?;
        // Make the rename itself durable.
        sync_dir(&path).await;
        Ok(())
    }

    async fn create(
        &self,
        project: &ProjectId,
        key: &str,
    ) -> Result<Box<dyn BlobWriter>, BlobError> {
        let path = self.path(project, key)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        tokio::fs::create_dir_all(dir).await?;
        let tmp = temp_path(&path);
        let file = tokio::fs::File::create(&tmp).await?;
        Ok(Box::new(FsBlobWriter {
            file: BufWriter::with_capacity(256 * 1024, file),
            tmp,
            path,
            len: 0,
            finished: false,
        }))
    }

    async fn open(&self, project: &ProjectId, key: &str) -> Result<BlobReader, BlobError> {
        let path = self.path(project, key)?;
        match tokio::fs::File::open(&path).await {
            Ok(file) => {
                let len = file.metadata().await?.len();
                Ok(BlobReader { len, reader: Box::pin(file) })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(BlobError::NotFound),
            Err(e) => Err(BlobError::Io(e)),
        }
    }

    async fn delete_folder(&self, project: &ProjectId, prefix: &str) -> Result<(), BlobError> {
        let path = self.path(project, prefix)?;
        match tokio::fs::remove_dir_all(&path).await {
            Ok(()) => {
                sync_dir(&path).await;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BlobError::Io(e)),
        }
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
