-- Kiln PostgreSQL schema, version 5: the job queue and event counters
-- (docs/ARCHITECTURE.md "Background jobs", "Shared counters").
--
-- A queued job is leased to one node until `lease_until`, by the database's clock (nodes'
-- clocks may differ); a node renews its leases while it runs the jobs, and a job whose lease
-- ran out is claimed by another (FOR UPDATE SKIP LOCKED). The row goes when the job finishes.
CREATE TABLE job_queue (
    project     TEXT NOT NULL,
    id          TEXT NOT NULL,
    node        TEXT NOT NULL,
    lease_until TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (project, id)
);
CREATE INDEX job_queue_lease ON job_queue (lease_until);
CREATE INDEX job_queue_node ON job_queue (node);

-- Events counted per key until `expires_at` passes without a new one: login failures, used client-assertion `jti`s.
CREATE TABLE event_counter (
    key        TEXT PRIMARY KEY,
    count      BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX event_counter_expires ON event_counter (expires_at);
