-- Kiln PostgreSQL schema, version 1. The same logical layout as the SQLite backend; see
-- docs/ARCHITECTURE.md "Storage".

CREATE TABLE resource (
    rid          BIGSERIAL PRIMARY KEY,
    project      TEXT    NOT NULL,
    type         TEXT    NOT NULL,
    id           TEXT    NOT NULL,
    version      BIGINT  NOT NULL,  -- 0 only inside the transaction that creates the row
    seq          BIGINT  NOT NULL,
    deleted      BOOLEAN NOT NULL,
    last_updated TEXT    NOT NULL,
    UNIQUE (project, type, id)
);

CREATE TABLE history (
    seq          BIGSERIAL PRIMARY KEY,
    rid          BIGINT  NOT NULL,
    project      TEXT    NOT NULL,
    type         TEXT    NOT NULL,
    id           TEXT    NOT NULL,
    version      BIGINT  NOT NULL,
    last_updated TEXT    NOT NULL,
    deleted      BOOLEAN NOT NULL,
    method       TEXT    NOT NULL,
    body         BYTEA   NOT NULL
);
CREATE UNIQUE INDEX history_rid_version ON history (rid, version);
CREATE INDEX history_project_type_seq ON history (project, type, seq);
CREATE INDEX history_project_seq ON history (project, seq);

CREATE TABLE unique_key (
    project   TEXT   NOT NULL,
    namespace TEXT   NOT NULL,
    key       TEXT   NOT NULL,
    rid       BIGINT NOT NULL,
    PRIMARY KEY (project, namespace, key)
);
CREATE INDEX unique_key_rid ON unique_key (rid);
CREATE INDEX unique_key_namespace_key ON unique_key (namespace, key);

CREATE TABLE setting (
    name  TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
