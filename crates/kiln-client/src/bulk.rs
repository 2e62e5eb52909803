//! Bulk Data (FHIR Bulk Data Access 2.0): export kick-off, polling, NDJSON downloads; and
//! `$import` of NDJSON files the server can fetch, polled the same way.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::Stream;
use reqwest::header::{ACCEPT, CONTENT_LOCATION, HeaderValue, RETRY_AFTER};
use reqwest::{Method, Url};
use serde_json::{Value, json};

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

/// A running bulk job (an export or an import): where to ask how it is going.
#[derive(Debug, Clone)]
pub struct BulkJob {
    /// The status URL the server gave in `Content-Location`.
    pub status_url: Url,
}

/// What the status URL said.
#[derive(Debug, Clone)]
pub enum BulkStatus {
    /// Still running (202): the server's `X-Progress` text and `Retry-After`, when sent.
    InProgress {
        /// `X-Progress`, e.g. "120 resources written".
        progress: Option<String>,
        /// How long the server asked the client to wait before polling again.
        retry_after: Option<Duration>,
    },
    /// Finished (200): the manifest. An export's `output` array lists the NDJSON files
    /// (`type`, `url`, `count`); an import's lists what was written per type (`type`,
    /// `count`), and its `error` array the OperationOutcome files of refused lines.
    Complete(Value),
}

impl KilnClient {
    /// Starts a bulk export (`$export` with `Prefer: respond-async`); `query` takes the
    /// kick-off parameters (`_type`, `_since`, `_outputFormat`…). Returns the job to poll.
    pub async fn export(&self, level: ExportLevel<'_>, query: &[(&str, &str)]) -> Result<BulkJob> {
        let mut url = match level {
            ExportLevel::System => self.fhir_url(&["$export"])?,
            ExportLevel::Patient => self.fhir_url(&["Patient", "$export"])?,
            ExportLevel::Group(id) => self.fhir_url(&["Group", id, "$export"])?,
        };
        url = crate::with_query(url, query);
        let call = Call::new(Method::GET, url).header("prefer", "respond-async".to_owned())?;
        self.kick_off(call, "$export").await
    }

    /// Starts a bulk import (`POST [base]/$import`, as Kiln and Medplum take it): the server
    /// fetches each of `input_urls` (NDJSON, one resource per line; e.g. Binary URLs from
    /// [`upload_binary`](Self::upload_binary)) and writes its resources. Returns the job to
    /// poll with [`wait_for_job`](Self::wait_for_job); the manifest says what was written and
    /// where the refused lines are reported.
    pub async fn import(&self, input_urls: &[&str]) -> Result<BulkJob> {
        let mut parameter =
            vec![json!({"name": "inputFormat", "valueCode": "application/fhir+ndjson"})];
        for url in input_urls {
            parameter.push(json!({"name": "input", "part": [{"name": "url", "valueUri": url}]}));
        }
        let parameters = json!({"resourceType": "Parameters", "parameter": parameter});
        let call = Call::new(Method::POST, self.fhir_url(&["$import"])?)
            .header("prefer", "respond-async".to_owned())?
            .body(crate::Body::fhir(&parameters));
        self.kick_off(call, "$import").await
    }

    /// Sends an asynchronous kick-off request; the job its `Content-Location` names.
    async fn kick_off(&self, call: Call, operation: &str) -> Result<BulkJob> {
        let res = self.execute(call).await?;
        let status = res.status().as_u16();
        let location = res.headers().get(CONTENT_LOCATION).and_then(|v| v.to_str().ok());
        let Some(location) = location else {
            return Err(Error::Unexpected(format!(
                "HTTP {status} to {operation} without Content-Location"
            )));
        };
        let status_url = self.same_origin(location)?;
        Ok(BulkJob { status_url })
    }

    /// Asks the job's status URL once.
    pub async fn job_status(&self, job: &BulkJob) -> Result<BulkStatus> {
        let call = Call::new(Method::GET, job.status_url.clone())
            .header_value(ACCEPT, HeaderValue::from_static("application/json"));
        let res = self.execute(call).await?;
        if res.status().as_u16() == 202 {
            let header = |name: &str| res.headers().get(name).and_then(|v| v.to_str().ok());
            let progress = header("x-progress").map(str::to_owned);
            let retry_after =
                header(RETRY_AFTER.as_str()).and_then(crate::retry::parse_retry_after);
            return Ok(BulkStatus::InProgress { progress, retry_after });
        }
        Ok(BulkStatus::Complete(crate::json_of(res).await?))
    }

    /// Polls the job until it completes and returns the manifest. Between polls it waits the
    /// server's `Retry-After` (1 s when absent), and calls `on_progress` with each `X-Progress`
    /// text. A failed job ends with the [`Error::Http`] the status URL answered.
    pub async fn wait_for_job(
        &self,
        job: &BulkJob,
        mut on_progress: impl FnMut(&str),
    ) -> Result<Value> {
        loop {
            match self.job_status(job).await? {
                BulkStatus::Complete(manifest) => return Ok(manifest),
                BulkStatus::InProgress { progress, retry_after } => {
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
                        state.client.send(&call, None).await?
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
