-- Kiln embedded schema, version 2: search index tables. One row per value of a search
-- parameter of the current, live version of a resource (see docs/ARCHITECTURE.md "Search").
-- `comp` is the component of a composite parameter, -1 otherwise; `elem` the occurrence.

CREATE TABLE sp_token (
    project TEXT NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL,
    system TEXT, code TEXT, text TEXT,
    rid INTEGER NOT NULL, elem INTEGER NOT NULL, comp INTEGER NOT NULL
);
CREATE INDEX sp_token_value ON sp_token (project, type, param, code, system, rid);
CREATE INDEX sp_token_rid ON sp_token (rid, param);

CREATE TABLE sp_string (
    project TEXT NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL,
    norm TEXT NOT NULL, exact TEXT NOT NULL,
    rid INTEGER NOT NULL, elem INTEGER NOT NULL, comp INTEGER NOT NULL
);
CREATE INDEX sp_string_value ON sp_string (project, type, param, norm, rid);
CREATE INDEX sp_string_rid ON sp_string (rid, param);

CREATE TABLE sp_date (
    project TEXT NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL,
    lo INTEGER NOT NULL, hi INTEGER NOT NULL,
    rid INTEGER NOT NULL, elem INTEGER NOT NULL, comp INTEGER NOT NULL
);
CREATE INDEX sp_date_value ON sp_date (project, type, param, lo, hi, rid);
CREATE INDEX sp_date_rid ON sp_date (rid, param);

CREATE TABLE sp_number (
    project TEXT NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL,
    lo REAL NOT NULL, hi REAL NOT NULL, min REAL NOT NULL, max REAL NOT NULL,
    rid INTEGER NOT NULL, elem INTEGER NOT NULL, comp INTEGER NOT NULL
);
CREATE INDEX sp_number_value ON sp_number (project, type, param, lo, rid);
CREATE INDEX sp_number_rid ON sp_number (rid, param);

CREATE TABLE sp_quantity (
    project TEXT NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL,
    system TEXT, code TEXT, unit TEXT,
    lo REAL NOT NULL, hi REAL NOT NULL, min REAL NOT NULL, max REAL NOT NULL,
    rid INTEGER NOT NULL, elem INTEGER NOT NULL, comp INTEGER NOT NULL
);
CREATE INDEX sp_quantity_value ON sp_quantity (project, type, param, code, lo, rid);
CREATE INDEX sp_quantity_rid ON sp_quantity (rid, param);

CREATE TABLE sp_reference (
    project TEXT NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL,
    target_type TEXT, target_id TEXT, url TEXT, version TEXT,
    ident_system TEXT, ident_value TEXT,
    rid INTEGER NOT NULL, elem INTEGER NOT NULL, comp INTEGER NOT NULL
);
CREATE INDEX sp_reference_value ON sp_reference (project, type, param, target_id, target_type, rid);
CREATE INDEX sp_reference_rid ON sp_reference (rid, param);

CREATE TABLE sp_uri (
    project TEXT NOT NULL, type TEXT NOT NULL, param TEXT NOT NULL,
    uri TEXT NOT NULL,
    rid INTEGER NOT NULL, elem INTEGER NOT NULL, comp INTEGER NOT NULL
);
CREATE INDEX sp_uri_value ON sp_uri (project, type, param, uri, rid);
CREATE INDEX sp_uri_rid ON sp_uri (rid, param);

-- Type-level scans in row order (searches without a selective filter, paging by rid).
CREATE INDEX resource_project_type ON resource (project, type);
