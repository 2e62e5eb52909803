//! Bulk Data export (FHIR Bulk Data Access 2.0): kick-off, polling, NDJSON downloads.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::Stream;
use reqwest::header::{ACCEPT, CONTENT_LOCATION, HeaderValue, RETRY_AFTER};
use reqwest::{Method, Url};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::{Call, KilnClient};

/// Which resources a bulk export covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportLevel<'a> {
    /// `GET [base]/$export`: every resource the caller may read.
    System,
    /// `GET [base]/Patient/$export`: every Patient and the resources in their compartments.
    Patient,
    /// `GET [base]/Group/[id]/$export`: the Group's members and their compartments.
    Group(&'a str),
}

/// A running bulk export: where to ask how it is going.
#[derive(Debug, Clone)]
pub struct ExportJob {
    /// The status URL the server gave in `Content-Location`.
    pub status_url: Url,
}

/// What the status URL said.
#[derive(Debug, Clone)]
pub enum ExportStatus {
    /// Still running (202): the server's `X-Progress` text and `Retry-After`, when sent.
    InProgress {
        /// `X-Progress`, e.g. "120 resources written".
        progress: Option<String>,
        /// How long the server asked the client to wait before polling again.
        retry_after: Option<Duration>,
    },
    /// Finished (200): the manifest, whose `output` array lists the NDJSON files (`type`,
    /// `url`, `count`).
    Complete(Value),
}

impl KilnClient {
    /// Starts a bulk export (`$export` with `Prefer: respond-async`); `query` takes the
    /// kick-off parameters (`_type`, `_since`, `_outputFormat`…). Returns the job to poll.
    pub async fn export(
        &self,
        level: ExportLevel<'_>,
        query: &[(&str, &str)],
    ) -> Result<ExportJob> {
        let mut url = match level {
            ExportLevel::System => self.fhir_url(&["$export"])?,
            ExportLevel::Patient => self.fhir_url(&["Patient", "$export"])?,
            ExportLevel::Group(id) => self.fhir_url(&["Group", id, "$export"])?,
        };
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let call = Call::new(Method::GET, url).header("prefer", "respond-async".to_owned())?;
        let res = self.execute(call).await?;
        let status = res.status().as_u16();
        let location = res.headers().get(CONTENT_LOCATION).and_then(|v| v.to_str().ok());
        let Some(location) = location else {
            return Err(Error::Unexpected(format!(
                "HTTP {status} to $export without Content-Location"
            )));
        };
        let status_url = self.same_origin(location)?;
        Ok(ExportJob { status_url })
    }

    /// Asks the job's status URL once.
    pub async fn export_status(&self, job: &ExportJob) -> Result<ExportStatus> {
        let call = Call::new(Method::GET, job.status_url.clone())
            .header_value(ACCEPT, HeaderValue::from_static("application/json"));
        let res = self.execute(call).await?;
        if res.status().as_u16() == 202 {
            let header = |name: &str| res.headers().get(name).and_then(|v| v.to_str().ok());
            let progress = header("x-progress").map(str::to_owned);
            let retry_after =
                header(RETRY_AFTER.as_str()).and_then(crate::retry::parse_retry_after);
            return Ok(ExportStatus::InProgress { progress, retry_after });
        }
        Ok(ExportStatus::Complete(crate::json_of(res).await?))
    }

    /// Polls the job until it completes and returns the manifest. Between polls it waits the
    /// server's `Retry-After` (1 s when absent), and calls `on_progress` with each `X-Progress`
    /// text. A failed export ends with the [`Error::Http`] the status URL answered.
    pub async fn wait_for_export(
        &self,
        job: &ExportJob,
        mut on_progress: impl FnMut(&str),
    ) -> Result<Value> {
        loop {
            match self.export_status(job).await? {
                ExportStatus::Complete(manifest) => return Ok(manifest),
                ExportStatus::InProgress { progress, retry_after } => {
                    if let Some(progress) = &progress {
                        on_progress(progress);
                    }
                    let wait = retry_after.unwrap_or(Duration::from_secs(1));
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Streams the resources of one NDJSON file (a manifest `output` entry's `url`), one per
    /// line, as the body arrives. The bearer token is sent only to the client's own origin; a
    /// file elsewhere (e.g. a signed URL) is fetched without it.
    pub fn download_ndjson(&self, url: &str) -> impl Stream<Item = Result<Value>> + Send + 'static {
        let client = self.clone();
        let url = self.fhir.join(url).map_err(|e| Error::Invalid(format!("{url}: {e}")));
        let state = NdjsonState {
            client,
            url: Some(url),
            response: None,
            buffer: Vec::new(),
            ready: VecDeque::new(),
        };
        futures_util::stream::try_unfold(state, |mut state| async move {
            loop {
                if let Some(resource) = state.ready.pop_front() {
                    return Ok(Some((resource, state)));
                }
                if let Some(url) = state.url.take() {
                    let url = url?;
                    let call = Call::new(Method::GET, url.clone())
                        .header_value(ACCEPT, HeaderValue::from_static("application/fhir+ndjson"));
                    let res = if url.origin() == state.client.fhir.origin() {
                        state.client.execute(call).await?
                    } else {
                        state.client.send(call, None).await?
                    };
                    state.response = Some(res);
                    continue;
                }
                let Some(res) = state.response.as_mut() else { return Ok(None) };
                match res.chunk().await? {
                    Some(chunk) => {
                        state.buffer.extend_from_slice(&chunk);
                        while let Some(end) = state.buffer.iter().position(|&b| b == b'\n') {
                            let line: Vec<u8> = state.buffer.drain(..=end).collect();
                            push_line(&mut state.ready, &line)?;
                        }
                    }
                    None => {
                        state.response = None;
                        let rest = std::mem::take(&mut state.buffer);
                        push_line(&mut state.ready, &rest)?;
                    }
                }
            }
        })
    }

    /// `href` resolved against the FHIR base, refused when on another origin.
    pub(crate) fn same_origin(&self, href: &str) -> Result<Url> {
        let url = self.fhir.join(href).map_err(|e| Error::Unexpected(format!("{href}: {e}")))?;
        if url.origin() != self.fhir.origin() {
            return Err(Error::Invalid(format!(
                "{url} is not on {}; not sending this client's token there",
                self.fhir.origin().ascii_serialization()
            )));
        }
        Ok(url)
    }
}

struct NdjsonState {
    client: KilnClient,
    url: Option<Result<Url>>,
    response: Option<reqwest::Response>,
    buffer: Vec<u8>,
    ready: VecDeque<Value>,
}

/// Parses one NDJSON line (blank lines are skipped).
fn push_line(ready: &mut VecDeque<Value>, line: &[u8]) -> Result<()> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    ready.push_back(serde_json::from_slice(line)?);
    Ok(())
}
