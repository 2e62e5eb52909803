-- Kiln embedded schema, version 1. See docs/ARCHITECTURE.md "Storage" for worked examples.

-- One row per logical resource: where its current version lives.
CREATE TABLE resource (
    rid          INTEGER PRIMARY KEY,
    project      TEXT    NOT NULL,
    type         TEXT    NOT NULL,
    id           TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    seq          INTEGER NOT NULL,     -- history.seq of the current version
    deleted      INTEGER NOT NULL,
    last_updated TEXT    NOT NULL,
    UNIQUE (project, type, id)
);

-- Every version ever written, with the exact JSON bytes served for it.
CREATE TABLE history (
    seq          INTEGER PRIMARY KEY,  -- global write order; never reused (rows are never deleted)
    rid          INTEGER NOT NULL,
    project      TEXT    NOT NULL,
    type         TEXT    NOT NULL,
    id           TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    last_updated TEXT    NOT NULL,
    deleted      INTEGER NOT NULL,
    method       TEXT    NOT NULL,
    body         BLOB    NOT NULL
);
CREATE UNIQUE INDEX history_rid_version ON history (rid, version);
CREATE INDEX history_project_type_seq ON history (project, type, seq);
CREATE INDEX history_project_seq ON history (project, seq);

-- Unique keys held by the current version of a resource (e.g. User.email).
CREATE TABLE unique_key (
    project   TEXT    NOT NULL,
    namespace TEXT    NOT NULL,
    key       TEXT    NOT NULL,
    rid       INTEGER NOT NULL,
    PRIMARY KEY (project, namespace, key)
);
CREATE INDEX unique_key_rid ON unique_key (rid);
CREATE INDEX unique_key_namespace_key ON unique_key (namespace, key);

-- Server-private settings (signing keys, ...).
CREATE TABLE setting (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
