-- Kiln PostgreSQL schema, version 6: binary content in the database (`PgBlobStore`), so that
-- no node keeps state of its own on disk (docs/ARCHITECTURE.md "Binary content").
--
-- A row of `blob` is one version of the bytes under (project, key): `state` 0 while a writer
-- streams its chunks, 1 once live (at most one live row per key), 2 once replaced or deleted.
-- Replaced and abandoned rows stay until a sweep removes them some time after `changed`, so a
-- reader streaming an older version finishes it.
CREATE TABLE blob (
    id      BIGSERIAL PRIMARY KEY,
    project TEXT NOT NULL,
    key     TEXT NOT NULL,
    len     BIGINT NOT NULL DEFAULT 0,
    state   SMALLINT NOT NULL,
    changed TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX blob_live ON blob (project, key) WHERE state = 1;
CREATE INDEX blob_dead ON blob (changed) WHERE state <> 1;

-- The bytes, in pieces of up to 1 MiB, numbered from 0. Stored out of line uncompressed
-- (`EXTERNAL`): PostgreSQL's default compression cost more CPU on every write and read than the
-- disk it saved (bulk export ~1.7x slower, downloads ~14x slower, measured), and Binary
-- content (images, PDFs) is mostly compressed already.
CREATE TABLE blob_chunk (
    blob BIGINT NOT NULL REFERENCES blob (id) ON DELETE CASCADE,
    seq  INTEGER NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (blob, seq)
);
ALTER TABLE blob_chunk ALTER COLUMN data SET STORAGE EXTERNAL;
