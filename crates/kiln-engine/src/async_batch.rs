//! Asynchronous batch and transaction Bundles (`POST [base]` with `Prefer: respond-async`,
//! FHIR R4 async.html): the Bundle is kept as a blob, processed by a background job under the
//! caller's access exactly as the synchronous request would be, and its response (the
//! `batch-response`/`transaction-response` Bundle, or the OperationOutcome of a refused
//! Bundle with its status) is served by the job's status URL.
//!
//! A job that was already running when its node stopped is not run again: its entries may
//! have been applied (a batch commits entry by entry), and running a create twice would create
//! twice. It ends as failed, saying so; a job that never started runs after a restart.

use std::sync::atomic::{AtomicBool, Ordering};

use kiln_store::ProjectId;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::accounts::Authenticated;
use crate::bundle::EntryReturn;
use crate::export::{Caller, ExportFile, ExportState, blob_error, saved_state, state_output};
use crate::{Engine, EngineError, RequestContext};

/// Everything an asynchronous Bundle job is; saved in its AsyncJob.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct BatchState {
    pub(crate) caller: Caller,
    request: String,
    /// `representation`, `minimal` or `outcome` (`Prefer: return=…`).
    ret: String,
    /// The job began processing the Bundle.
    #[serde(default)]
    started: bool,
    /// The HTTP status of the answer (200, or the refused Bundle's 4xx).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) status: Option<u16>,
    /// Never files to download: the answer is the status URL's body.
    #[serde(default)]
    pub(crate) files: Vec<ExportFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) expires: Option<String>,
    #[serde(default)]
    pub(crate) removed: bool,
}

impl BatchState {
    pub(crate) fn from_job(job: &Value) -> Option<BatchState> {
        (crate::export::job_operation(job)? == "batch").then(|| saved_state(job)).flatten()
    }

    pub(crate) fn output(&self) -> Result<Value, EngineError> {
        state_output("batch", self)
    }

    fn ret(&self) -> EntryReturn {
        match self.ret.as_str() {
            "minimal" => EntryReturn::Minimal,
            "outcome" => EntryReturn::OperationOutcome,
            _ => EntryReturn::Representation,
        }
    }
}

fn request_key(id: &str) -> String {
    format!("{}/request.json", ExportState::folder(id))
}

fn response_key(id: &str) -> String {
    format!("{}/response.json", ExportState::folder(id))
}

impl Engine {
    /// `POST [base]` with `Prefer: respond-async`: keeps the Bundle and starts a job that
    /// processes it. Returns the job's id. A body that is no batch or transaction Bundle is
    /// refused at once.
    pub async fn start_batch(
        &self,
        who: &Authenticated,
        bundle: &[u8],
        ret: EntryReturn,
        request_url: &str,
    ) -> Result<String, EngineError> {
        let Some(membership) = who.membership.clone() else {
            return Err(EngineError::Forbidden("An asynchronous Bundle needs a membership".into()));
        };
        let parsed: Value = serde_json::from_slice(bundle)
            .map_err(|e| EngineError::invalid(format!("The body is not JSON: {e}")))?;
        if parsed["resourceType"] != "Bundle"
            || !matches!(parsed["type"].as_str(), Some("batch" | "transaction"))
        {
            return Err(EngineError::invalid(
                "Only a Bundle of type batch or transaction may be posted to the base URL",
            ));
        }
        if let Some(busy) = self.bulk_slots_full(&who.project, &membership).await? {
            return Err(busy);
        }
        let ctx = who.context();
        let id = crate::rest::new_id();
        self.blobs.put(&ctx.project, &request_key(&id), bundle).await.map_err(blob_error)?;
        let state = BatchState {
            caller: Caller::of(who, membership.clone()),
            request: request_url.to_owned(),
            ret: match ret {
                EntryReturn::Representation => "representation",
                EntryReturn::Minimal => "minimal",
                EntryReturn::OperationOutcome => "outcome",
            }
            .to_owned(),
            started: false,
            status: None,
            files: Vec::new(),
            expires: None,
            removed: false,
        };
        let kind = crate::jobs::JobKind::Batch(membership);
        self.create_job(&ctx.project, &id, state.output()?, request_url, kind).await?;
        Ok(id)
    }

    /// The answer of a finished asynchronous Bundle: its status and body.
    pub(crate) async fn batch_response(
        &self,
        project: &ProjectId,
        id: &str,
        state: &BatchState,
    ) -> Result<(u16, Vec<u8>), EngineError> {
        let body = self.blobs.get(project, &response_key(id)).await.map_err(blob_error)?;
        Ok((state.status.unwrap_or(200), body))
    }

    /// Runs asynchronous Bundle job `id`.
    pub(crate) async fn run_batch(
        &self,
        project: &ProjectId,
        id: &str,
        cancel: &AtomicBool,
    ) -> Result<(), EngineError> {
        let jobctx = RequestContext::new(project.clone());
        let Some((version, mut job)) = self.open_job(&jobctx, id).await? else { return Ok(()) };
        let mut state = BatchState::from_job(&job)
            .ok_or_else(|| EngineError::Internal(format!("AsyncJob {id} has no batch state")))?;
        if state.started {
            return Err(EngineError::Internal(
                "Kiln stopped while this Bundle was being processed; some of its entries may \
                 have been applied. Check the resources before sending it again."
                    .into(),
            ));
        }
        if cancel.load(Ordering::SeqCst) {
            return Ok(());
        }
        state.started = true;
        job["status"] = json!("active");
        job["output"] = state.output()?;
        let version = self.save_job(&jobctx, id, job.clone(), version).await?;
        let ctx = self.caller_context(project, &state.caller).await?;
        let request = self.blobs.get(project, &request_key(id)).await.map_err(blob_error)?;
        let bundle: Value = serde_json::from_slice(&request)
            .map_err(|e| EngineError::Internal(format!("stored Bundle: {e}")))?;
        drop(request);
        let (status, body) = match self.process_bundle(&ctx, bundle, state.ret()).await {
            Ok(bytes) => (200, bytes),
            Err(EngineError::Internal(m)) => return Err(EngineError::Internal(m)),
            Err(e) => (e.status(), serde_json::to_vec(&e.operation_outcome()).unwrap_or_default()),
        };
        self.blobs.put(project, &response_key(id), &body).await.map_err(blob_error)?;
        let expires = self.files_expire();
        state.status = Some(status);
        state.expires = Some(expires.clone());
        let output = state.output()?;
        // A job deleted by its client meanwhile keeps nothing (`complete_job` removes it).
        self.complete_job(&jobctx, id, &mut job, output, version, cancel, &expires).await?;
        Ok(())
    }
}
