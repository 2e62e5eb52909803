//! Background jobs, each recorded as an `AsyncJob` resource in its project so that clients
//! poll it (`GET /fhir/R4/job/{id}/status`) and a restart resumes it: reindexing (which
//! recomputes the search index rows of existing resources after a project's SearchParameters
//! changed, or on request with `$reindex`), bulk export and import, asynchronous Bundles.
//!
//! **The queue.** Every unfinished job is a row of the store's job queue
//! ([`Store::enqueue_job`](kiln_store::Store::enqueue_job)), leased to the node running it.
//! The node that accepted the request runs the job at once; while it runs, the node renews
//! its leases every [`JobQueue::poll`]. A node that dies stops renewing: once the lease
//! ([`JobQueue::lease`]) has run out, any node's next poll claims the job (PostgreSQL: `FOR
//! UPDATE SKIP LOCKED`, so two nodes never take the same one) and resumes it from the state
//! last saved in its AsyncJob. A node that finds at a renewal that one of its jobs was taken
//! over (it was paused longer than the lease) stops that job without recording anything.
//! Nodes claim only while they have free [`JobQueue::slots`]. On the embedded store there is
//! one node, named `local`, which takes its own jobs back at once after a restart.
//!
//! A reindex job walks the project's live resources of its types in row order, a page at a
//! time, extracting each page's rows with the registry in force and writing them with
//! [`WriteOp::Reindex`] (which skips a resource written since it was read: that write
//! indexed itself). Its progress (rows done, the paging cursor) is saved to the AsyncJob every
//! few seconds.
//!
//! Cancelling (`DELETE …/job/{id}/status`, `AsyncJob/{id}/$cancel`) marks the AsyncJob
//! `cancelled`; the node running it sees that at once when it is this node, else at its next
//! poll (or the job's next save).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kiln_search::SearchQuery;
use kiln_store::{
    Atomicity, Cursor, Precondition, ProjectId, SearchRequest, StoredResource, WriteMethod,
    WriteOp, format_instant,
};
use serde_json::{Value, json};

use crate::export::{ExportLimits, ExportProgress};
use crate::{Engine, EngineError, RequestContext};

/// The setting where versions before the job queue listed unfinished jobs (a JSON array of
/// `{"project", "id"}`); [`Engine::resume_jobs`] moves what it finds there to the queue.
pub const JOBS_SETTING: &str = "kiln.jobs";
/// Resources per reindex page.
const PAGE: usize = 250;
/// How often a running job saves its progress.
const SAVE_EVERY: Duration = Duration::from_secs(2);

/// How this node takes part in the job queue (`kiln serve --job-lease`).
#[derive(Debug, Clone)]
pub struct JobQueue {
    /// How long a claimed job stays a node's without a renewal: how soon another node takes
    /// over the jobs of a node that died.
    pub lease: Duration,
    /// How often the node renews its leases and looks for jobs to claim.
    pub poll: Duration,
    /// Jobs this node runs at once before it stops claiming (jobs it accepts itself start
    /// regardless).
    pub slots: usize,
}

impl JobQueue {
    /// A queue with `lease` (polled six times per lease) and `slots`.
    pub fn new(lease: Duration, slots: usize) -> JobQueue {
        let lease = lease.max(Duration::from_millis(600));
        JobQueue { lease, poll: lease / 6, slots: slots.max(1) }
    }
}

impl Default for JobQueue {
    /// A 30 s lease; room for the default export workers plus reindexing and asynchronous
    /// Bundles.
    fn default() -> JobQueue {
        JobQueue::new(Duration::from_secs(30), ExportLimits::default().workers + 2)
    }
}

/// This node's name in the job queue: `local` on a store only one process opens (it takes
/// its own jobs back at once after a restart), else unique per process.
pub(crate) fn node_id(store: &dyn kiln_store::Store) -> String {
    if store.is_shared() {
        format!("node-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple())
    } else {
        "local".to_owned()
    }
}

/// Jobs running on this node.
pub(crate) struct Jobs {
    /// This node's name in the job queue.
    node: String,
    queue: std::sync::RwLock<JobQueue>,
    /// Serialises the moving of [`JOBS_SETTING`] to the queue.
    list: tokio::sync::Mutex<()>,
    /// Serialises read-modify-write of the finished-exports list.
    sweep: tokio::sync::Mutex<()>,
    running: std::sync::Mutex<HashMap<String, Running>>,
    /// Bounds the exports this node runs at once.
    export_workers: std::sync::RwLock<Arc<tokio::sync::Semaphore>>,
    export_limits: std::sync::RwLock<ExportLimits>,
    /// The key bulk file URLs are signed with, once read from the store.
    url_key: std::sync::OnceLock<Arc<[u8]>>,
}

impl Jobs {
    pub(crate) fn new(node: String) -> Jobs {
        let limits = ExportLimits::default();
        Jobs {
            node,
            queue: std::sync::RwLock::new(JobQueue::default()),
            list: tokio::sync::Mutex::new(()),
            sweep: tokio::sync::Mutex::new(()),
            running: std::sync::Mutex::default(),
            export_workers: std::sync::RwLock::new(Arc::new(tokio::sync::Semaphore::new(
                limits.workers.max(1),
            ))),
            export_limits: std::sync::RwLock::new(limits),
            url_key: std::sync::OnceLock::new(),
        }
    }
}

impl Jobs {
    fn queue(&self) -> JobQueue {
        self.queue.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Unfinished bulk jobs of `membership` on this node (one cancelled but still winding
    /// down no longer counts: a client that deletes a job may start the next at once).
    pub(crate) fn exports_of(&self, membership: &str) -> usize {
        self.running()
            .values()
            .filter(|r| r.owner.as_deref() == Some(membership) && !r.cancel.load(Ordering::SeqCst))
            .count()
    }

    pub(crate) fn export_progress(&self, id: &str) -> Option<Arc<ExportProgress>> {
        self.running().get(id).filter(|r| r.owner.is_some()).map(|r| r.progress.clone())
    }

    /// Tells job `id` of `project`, if it runs here, to stop at its next step.
    pub(crate) fn cancel(&self, id: &str, project: &str) {
        if let Some(r) = self.running().get(id).filter(|r| r.project == project) {
            r.cancel.store(true, Ordering::SeqCst);
        }
    }

    pub(crate) async fn sweep_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.sweep.lock().await
    }

    pub(crate) fn export_limits(&self) -> ExportLimits {
        self.export_limits.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn url_key(&self) -> Option<Arc<[u8]>> {
        self.url_key.get().cloned()
    }

    pub(crate) fn set_url_key(&self, key: Arc<[u8]>) {
        let _ = self.url_key.set(key);
    }

    fn export_workers(&self) -> Arc<tokio::sync::Semaphore> {
        self.export_workers.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

struct Running {
    project: String,
    cancel: Arc<AtomicBool>,
    /// Stopped by [`Engine::halt_jobs`]: the task leaves everything as it is.
    halted: Arc<AtomicBool>,
    /// An export's membership; `None` for other jobs.
    owner: Option<String>,
    progress: Arc<ExportProgress>,
}

/// What a job does, and for bulk jobs whose (the membership that asked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JobKind {
    Reindex,
    Export(String),
    Import(String),
    /// An asynchronous batch or transaction Bundle.
    Batch(String),
}

impl JobKind {
    fn owner(&self) -> Option<&str> {
        match self {
            JobKind::Reindex => None,
            JobKind::Export(m) | JobKind::Import(m) | JobKind::Batch(m) => Some(m),
        }
    }
}

/// What `GET job/{id}/status` reports.
#[derive(Debug)]
pub enum JobStatus {
    /// Accepted or active; the text says how far it got.
    InProgress(String),
    /// Completed, failed or cancelled: the AsyncJob.
    Done(StoredResource),
}

/// The state a reindex job keeps in its AsyncJob's `output`.
struct ReindexState {
    /// Types to reindex; empty: every type.
    types: Vec<String>,
    processed: u64,
    cursor: Option<Cursor>,
}

impl ReindexState {
    fn from_job(job: &Value) -> ReindexState {
        let params = job["output"]["parameter"].as_array().cloned().unwrap_or_default();
        let named = |name: &'static str| params.iter().filter(move |p| p["name"] == name);
        ReindexState {
            types: named("type")
                .filter_map(|p| p["valueCode"].as_str().map(str::to_owned))
                .collect(),
            processed: named("processed").find_map(|p| p["valueDecimal"].as_u64()).unwrap_or(0),
            cursor: named("cursor")
                .find_map(|p| p["valueString"].as_str().and_then(Cursor::decode)),
        }
    }

    fn output(&self, error: Option<&str>) -> Value {
        let mut params = vec![json!({"name": "operation", "valueCode": "reindex"})];
        params.extend(self.types.iter().map(|t| json!({"name": "type", "valueCode": t})));
        params.push(json!({"name": "processed", "valueDecimal": self.processed}));
        if let Some(cursor) = &self.cursor {
            params.push(json!({"name": "cursor", "valueString": cursor.encode()}));
        }
        if let Some(error) = error {
            params.push(json!({"name": "error", "valueString": error}));
        }
        json!({"resourceType": "Parameters", "parameter": params})
    }
}

fn status_of(job: &Value) -> &str {
    job["status"].as_str().unwrap_or("")
}

fn is_final(status: &str) -> bool {
    matches!(status, "completed" | "error" | "cancelled")
}

impl Engine {
    /// Starts reindexing `types` (empty: every type) of the caller's project and returns the
    /// AsyncJob. The job waits `delay` before it scans.
    pub async fn start_reindex(
        &self,
        ctx: &RequestContext,
        types: Vec<String>,
        request: &str,
        delay: Duration,
    ) -> Result<StoredResource, EngineError> {
        for t in &types {
            self.check_type(t)?;
        }
        let state = ReindexState { types, processed: 0, cursor: None };
        let job = json!({
            "resourceType": "AsyncJob",
            "status": "accepted",
            "requestTime": format_instant(chrono::Utc::now()),
            "request": request,
            "output": state.output(None),
        });
        let id = crate::rest::new_id();
        let job = self.prepare(ctx, "AsyncJob", &id, job)?;
        let stored = self.put(ctx, job, WriteMethod::Post, Precondition::MustNotExist).await?;
        self.enqueue_job(&ctx.project, &id, JobKind::Reindex, delay).await?;
        Ok(stored.stored)
    }

    /// The status of an AsyncJob of the caller's project.
    pub async fn job_status(
        &self,
        ctx: &RequestContext,
        id: &str,
    ) -> Result<JobStatus, EngineError> {
        let stored = self.read(ctx, "AsyncJob", id).await?;
        let job: Value = crate::export::job_body(&stored)?;
        if is_final(status_of(&job)) {
            return Ok(JobStatus::Done(stored));
        }
        let state = ReindexState::from_job(&job);
        Ok(JobStatus::InProgress(format!(
            "{}: {} resources reindexed",
            status_of(&job),
            state.processed
        )))
    }

    /// Cancels an AsyncJob of the caller's project (a finished job stays as it is).
    pub async fn cancel_job(&self, ctx: &RequestContext, id: &str) -> Result<(), EngineError> {
        // Only a job the caller can see (and update, below) can be cancelled.
        self.read(ctx, "AsyncJob", id).await?;
        self.jobs.cancel(id, ctx.project.as_str());
        loop {
            let stored = self.read(ctx, "AsyncJob", id).await?;
            let mut job: Value = crate::export::job_body(&stored)?;
            if is_final(status_of(&job)) {
                return Ok(());
            }
            job["status"] = json!("cancelled");
            job["transactionTime"] = json!(format_instant(chrono::Utc::now()));
            match self.save_job(ctx, id, job, stored.version).await {
                Err(EngineError::PreconditionFailed(_)) => continue,
                other => return other.map(|_| ()),
            }
        }
    }

    /// Puts a new job on the queue, leased to this node, and runs it here after `delay`.
    pub(crate) async fn enqueue_job(
        &self,
        project: &ProjectId,
        id: &str,
        kind: JobKind,
        delay: Duration,
    ) -> Result<(), EngineError> {
        let lease = self.jobs.queue().lease;
        self.store().enqueue_job(project, id, &self.jobs.node, lease).await?;
        self.spawn_job(project.clone(), id.to_owned(), kind, delay);
        Ok(())
    }

    /// Takes back this node's own unfinished jobs and those whose node stopped renewing them,
    /// and runs them (call once at start-up, before [`Engine::run_job_queue`]). Jobs listed
    /// by an older version in [`JOBS_SETTING`] are moved to the queue first. Returns how many
    /// jobs were resumed.
    pub async fn resume_jobs(&self) -> Result<usize, EngineError> {
        self.move_job_list().await?;
        let lease = self.jobs.queue().lease;
        let claimed = self.store().claim_jobs(&self.jobs.node, lease, usize::MAX, true).await?;
        let n = claimed.len();
        for (project, id) in claimed {
            self.start_claimed(project, id).await;
        }
        Ok(n)
    }

    /// Starts a job this node has just claimed, whatever kind its AsyncJob says it is.
    async fn start_claimed(&self, project: ProjectId, id: String) {
        let kind = match self.read(&RequestContext::new(project.clone()), "AsyncJob", &id).await {
            Ok(stored) => serde_json::from_slice::<Value>(&stored.body)
                .map(|job| Engine::job_kind(&job))
                .unwrap_or(JobKind::Reindex),
            Err(_) => JobKind::Reindex,
        };
        self.spawn_job(project, id, kind, Duration::ZERO);
    }

    /// Sets how this node takes part in the job queue; call before jobs start.
    pub fn set_job_queue(&self, queue: JobQueue) {
        *self.jobs.queue.write().unwrap_or_else(|e| e.into_inner()) = queue;
    }

    /// Runs this node's part of the job queue in the background until the process ends:
    /// every [`JobQueue::poll`] it renews the leases of the jobs it runs (stopping any that
    /// another node took over), passes on cancellations made on other nodes, and claims jobs
    /// whose lease ran out while it has free slots.
    pub fn run_job_queue(&self) {
        let engine = self.clone();
        tokio::spawn(async move {
            loop {
                let queue = engine.jobs.queue();
                tokio::time::sleep(queue.poll).await;
                if let Err(e) = engine.poll_job_queue(&queue).await {
                    tracing::warn!(error = %e, "job queue poll failed");
                }
            }
        });
    }

    async fn poll_job_queue(&self, queue: &JobQueue) -> Result<(), EngineError> {
        // Only jobs running before the renewal can have lost their lease in it.
        let before: Vec<(String, String)> =
            self.jobs.running().iter().map(|(id, r)| (r.project.clone(), id.clone())).collect();
        let held = self.store().renew_jobs(&self.jobs.node, queue.lease).await?;
        for (project, id) in &before {
            if !held.iter().any(|(p, i)| p.as_str() == project && i == id) {
                tracing::warn!(project, job = id, "job taken over by another node; stopped here");
                if let Some(r) = self.jobs.running().remove(id) {
                    r.halted.store(true, Ordering::SeqCst);
                    r.cancel.store(true, Ordering::SeqCst);
                }
            }
        }
        // Cancellations recorded by another node.
        for (project, id) in held {
            let ctx = RequestContext::new(project);
            if let Ok(stored) = self.read(&ctx, "AsyncJob", &id).await
                && let Ok(job) = serde_json::from_slice::<Value>(&stored.body)
                && status_of(&job) == "cancelled"
            {
                self.jobs.cancel(&id, ctx.project.as_str());
            }
        }
        let free = queue.slots.saturating_sub(self.jobs.running().len());
        if free > 0 {
            for (project, id) in
                self.store().claim_jobs(&self.jobs.node, queue.lease, free, false).await?
            {
                tracing::info!(
                    project = project.as_str(),
                    job = id,
                    "claimed a job from the queue"
                );
                self.start_claimed(project, id).await;
            }
        }
        Ok(())
    }

    /// Sets how exports run (`kiln serve` flags); call before jobs start.
    pub fn set_export_limits(&self, limits: ExportLimits) {
        *self.jobs.export_workers.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(tokio::sync::Semaphore::new(limits.workers.max(1)));
        *self.jobs.export_limits.write().unwrap_or_else(|e| e.into_inner()) = limits;
    }

    /// Stops every job running on this node where it is, without recording anything: what
    /// a crash does. The jobs stay on the list, and [`Engine::resume_jobs`] (on this or
    /// another engine over the same store) takes them up again. For tests of recovery.
    #[doc(hidden)]
    pub fn halt_jobs(&self) {
        let mut running = self.jobs.running();
        for r in running.values() {
            r.halted.store(true, Ordering::SeqCst);
            r.cancel.store(true, Ordering::SeqCst);
        }
        running.clear();
    }

    /// Whether a reindex job of `project` runs on this node (its searches may be incomplete).
    pub(crate) fn reindexing(&self, project: &ProjectId) -> bool {
        self.jobs.running().values().any(|r| r.project == project.as_str() && r.owner.is_none())
    }

    /// Runs job `id` in the background.
    pub(crate) fn spawn_job(&self, project: ProjectId, id: String, kind: JobKind, delay: Duration) {
        let owner = kind.owner().map(str::to_owned);
        let cancel = Arc::new(AtomicBool::new(false));
        let halted = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(ExportProgress::default());
        {
            let mut running = self.jobs.running();
            if running.contains_key(&id) {
                return;
            }
            let entry = Running {
                project: project.as_str().to_owned(),
                cancel: cancel.clone(),
                halted: halted.clone(),
                owner: owner.clone(),
                progress: progress.clone(),
            };
            running.insert(id.clone(), entry);
        }
        let engine = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let ctx = RequestContext::new(project.clone());
            let result = match &kind {
                JobKind::Export(_) => {
                    let workers = engine.jobs.export_workers();
                    let _permit = workers.acquire_owned().await;
                    engine.run_export(&project, &id, &cancel, &progress).await
                }
                JobKind::Import(_) => {
                    let workers = engine.jobs.export_workers();
                    let _permit = workers.acquire_owned().await;
                    engine.run_import(&project, &id, &cancel, &progress).await
                }
                JobKind::Batch(_) => engine.run_batch(&project, &id, &cancel).await,
                JobKind::Reindex => engine.run_reindex(&ctx, &id, &cancel).await,
            };
            // Halted (a simulated crash): leave everything as it is.
            if halted.load(Ordering::SeqCst) {
                return;
            }
            if kind.owner().is_some() && cancel.load(Ordering::SeqCst) {
                // A cancelled export leaves no files (a part may have closed meanwhile).
                engine.remove_export_files(&project, &id).await;
            }
            if let Err(e) = result {
                tracing::error!(project = project.as_str(), job = id, error = %e, "job failed");
                engine.fail_job(&ctx, &id, &e.to_string()).await;
            }
            if let Err(e) = engine.store().finish_job(&project, &id).await {
                tracing::warn!(job = id, error = %e, "could not take the job off the queue");
            }
            engine.jobs.running().remove(&id);
        });
    }

    /// Runs a reindex job to its end: completed, cancelled, or no longer there.
    async fn run_reindex(
        &self,
        ctx: &RequestContext,
        id: &str,
        cancel: &AtomicBool,
    ) -> Result<(), EngineError> {
        let stored = match self.read(ctx, "AsyncJob", id).await {
            Ok(stored) => stored,
            Err(EngineError::NotFound(_) | EngineError::Gone(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut version = stored.version;
        let mut job: Value = crate::export::job_body(&stored)?;
        if is_final(status_of(&job)) {
            return Ok(());
        }
        let mut state = ReindexState::from_job(&job);
        let mut query = SearchQuery::new(None);
        query.types = state.types.clone();
        let started = Instant::now();
        let mut saved = Instant::now() - SAVE_EVERY; // save "active" at once
        loop {
            if cancel.load(Ordering::SeqCst) {
                return Ok(());
            }
            if saved.elapsed() >= SAVE_EVERY {
                job["status"] = json!("active");
                job["output"] = state.output(None);
                match self.save_job(ctx, id, job.clone(), version).await {
                    Ok(v) => version = v,
                    // Someone else wrote the job: cancelled, most likely.
                    Err(EngineError::PreconditionFailed(_)) => {
                        let stored = self.read(ctx, "AsyncJob", id).await?;
                        job = crate::export::job_body(&stored)?;
                        version = stored.version;
                        if is_final(status_of(&job)) {
                            return Ok(());
                        }
                        continue;
                    }
                    Err(e) => return Err(e),
                }
                saved = Instant::now();
            }
            let registry = self.registry(&ctx.project).await?;
            let request = SearchRequest {
                query: query.clone(),
                after: state.cursor.clone(),
                count: PAGE,
                total: false,
            };
            let page = self.store().search(&ctx.project, &request).await?;
            let matches = page.matches;
            let n = matches.len() as u64;
            let ops = tokio::task::spawn_blocking(move || {
                matches
                    .into_iter()
                    .filter_map(|stored| {
                        let resource: Value = serde_json::from_slice(&stored.body).ok()?;
                        Some(WriteOp::Reindex {
                            index: registry.extract(&resource),
                            resource_type: stored.resource_type,
                            id: stored.id,
                            version: stored.version,
                        })
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|e| EngineError::Internal(format!("reindex worker: {e}")))?;
            if !ops.is_empty() {
                self.store().write(&ctx.project, ops, Atomicity::Each).await?;
            }
            state.processed += n;
            state.cursor = page.next;
            if state.cursor.is_none() {
                break;
            }
        }
        tracing::info!(
            project = ctx.project.as_str(),
            job = id,
            resources = state.processed,
            seconds = started.elapsed().as_secs_f64(),
            "reindex completed"
        );
        loop {
            job["status"] = json!("completed");
            job["transactionTime"] = json!(format_instant(chrono::Utc::now()));
            job["output"] = state.output(None);
            match self.save_job(ctx, id, job.clone(), version).await {
                Ok(_) => return Ok(()),
                Err(EngineError::PreconditionFailed(_)) => {
                    let stored = self.read(ctx, "AsyncJob", id).await?;
                    job = crate::export::job_body(&stored)?;
                    version = stored.version;
                    if is_final(status_of(&job)) {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Marks a job failed (best effort: the failure is logged already).
    async fn fail_job(&self, ctx: &RequestContext, id: &str, error: &str) {
        let Ok(stored) = self.read(ctx, "AsyncJob", id).await else { return };
        let Ok(mut job) = serde_json::from_slice::<Value>(&stored.body) else { return };
        if is_final(status_of(&job)) {
            return;
        }
        job["status"] = json!("error");
        job["transactionTime"] = json!(format_instant(chrono::Utc::now()));
        // The job's own state stays; the reason is added to it.
        let mut params = job["output"]["parameter"].as_array().cloned().unwrap_or_default();
        params.retain(|p| p["name"] != "error");
        params.push(json!({"name": "error", "valueString": error}));
        job["output"] = json!({"resourceType": "Parameters", "parameter": params});
        let _ = self.save_job(ctx, id, job, stored.version).await;
    }

    /// Writes the job if its version is still `version`; returns the new version.
    pub(crate) async fn save_job(
        &self,
        ctx: &RequestContext,
        id: &str,
        job: Value,
        version: i64,
    ) -> Result<i64, EngineError> {
        let job = self.prepare(ctx, "AsyncJob", id, job)?;
        let precondition = Precondition::VersionIs(version);
        let outcome = self.put(ctx, job, WriteMethod::Put, precondition).await?;
        Ok(outcome.stored.version)
    }

    /// Moves the jobs an older version listed in [`JOBS_SETTING`] to the queue (their lease
    /// already run out, so any node may claim them), then empties the list.
    async fn move_job_list(&self) -> Result<(), EngineError> {
        let _guard = self.jobs.list.lock().await;
        let Some(raw) = self.store().get_setting(JOBS_SETTING).await? else { return Ok(()) };
        let list: Vec<Value> = serde_json::from_slice(&raw).unwrap_or_default();
        if list.is_empty() {
            return Ok(());
        }
        for job in &list {
            if let (Some(project), Some(id)) = (job["project"].as_str(), job["id"].as_str()) {
                let project = ProjectId::new(project);
                self.store().enqueue_job(&project, id, &self.jobs.node, Duration::ZERO).await?;
            }
        }
        self.store().put_setting(JOBS_SETTING, b"[]").await?;
        Ok(())
    }
}

/// The `type` parameters of a `$reindex` Parameters body.
fn requested_types(body: Option<&Value>) -> Result<Vec<String>, EngineError> {
    let Some(body) = body else { return Ok(Vec::new()) };
    if body["resourceType"] != "Parameters" {
        return Err(EngineError::invalid("The body of $reindex must be a Parameters resource"));
    }
    let mut types = Vec::new();
    for p in body["parameter"].as_array().into_iter().flatten() {
        match p["name"].as_str() {
            Some("type") => {
                let t = p["valueCode"].as_str().or(p["valueString"].as_str()).ok_or_else(|| {
                    EngineError::invalid("$reindex parameter 'type' takes a valueCode")
                })?;
                types.extend(
                    t.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned),
                );
            }
            Some(other) => {
                return Err(EngineError::invalid(format!(
                    "$reindex has no parameter '{other}' (it takes 'type')"
                )));
            }
            None => return Err(EngineError::invalid("A $reindex parameter has no name")),
        }
    }
    Ok(types)
}

impl Engine {
    /// `POST [base]/$reindex` (`ty` = `None`: every type), `POST [type]/$reindex` (that
    /// type), `POST SearchParameter/$reindex` (the types the project's own parameters apply
    /// to; every type when it has none). A Parameters body may name the types (`type`).
    /// Returns the AsyncJob, which runs in the background.
    pub async fn reindex(
        &self,
        ctx: &RequestContext,
        ty: Option<&str>,
        body: Option<&Value>,
    ) -> Result<StoredResource, EngineError> {
        // Rebuilding a project's index is an administrator's call; the job is then the
        // server's own work (its AsyncJob is written whatever the admin's policy says).
        ctx.access.require_admin("$reindex")?;
        let ctx = &RequestContext {
            access: std::sync::Arc::new(crate::Access::internal()),
            ..ctx.clone()
        };
        let mut types = requested_types(body)?;
        if types.is_empty() {
            match ty {
                None => {}
                Some("SearchParameter") => {
                    let registry = self.registry(&ctx.project).await?;
                    for d in registry.custom_params() {
                        if d.base.iter().any(|b| b == "Resource" || b == "DomainResource") {
                            types.clear();
                            break;
                        }
                        for b in &d.base {
                            if !types.contains(b) {
                                types.push(b.clone());
                            }
                        }
                    }
                }
                Some(t) => {
                    self.check_type(t)?;
                    types.push(t.to_owned());
                }
            }
        }
        let request = match ty {
            Some(t) => format!("{}/{t}/$reindex", self.base_url().fhir_base()),
            None => format!("{}/$reindex", self.base_url().fhir_base()),
        };
        self.start_reindex(ctx, types, &request, Duration::ZERO).await
    }

    /// `POST [type]/[id]/$reindex`: recomputes one resource's index rows now.
    pub async fn reindex_one(
        &self,
        ctx: &RequestContext,
        ty: &str,
        id: &str,
    ) -> Result<(), EngineError> {
        let stored = self.read(ctx, ty, id).await?;
        let resource: Value = serde_json::from_slice(&stored.body)
            .map_err(|e| EngineError::Internal(format!("stored resource: {e}")))?;
        let registry = self.registry(&ctx.project).await?;
        let op = WriteOp::Reindex {
            index: registry.extract(&resource),
            resource_type: stored.resource_type,
            id: stored.id,
            version: stored.version,
        };
        self.write_op(ctx, op, &registry).await?;
        Ok(())
    }
}
