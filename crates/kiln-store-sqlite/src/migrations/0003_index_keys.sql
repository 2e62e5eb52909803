-- Kiln embedded schema, version 3: compact search index tables (docs/ARCHITECTURE.md "Search",
-- docs/PERFORMANCE.md "Write cost").
--
-- Version 2 repeated `project, type, param` (a UUID and two names) in every row and in both of
-- its indexes, and kept each row in three B-trees (the rowid table, the value index and
-- `(rid, param)`). Here a row names its parameter by `param_id`, a small integer key of
-- `(project, type, code)` in `sp_param`, and each table is a WITHOUT ROWID B-tree on
-- `(rid, param_id, n)` (`n`: the row's position among its resource's rows), which serves the
-- probes, sort keys and replacement that `(rid, param)` served: two B-trees per row, each about
-- half as wide. Existing rows are carried over.

CREATE TABLE sp_param (
    id      INTEGER PRIMARY KEY,
    project TEXT NOT NULL,
    type    TEXT NOT NULL,
    code    TEXT NOT NULL,
    UNIQUE (project, type, code)
);

INSERT INTO sp_param (project, type, code)
    SELECT project, type, param FROM sp_token
UNION SELECT project, type, param FROM sp_string
UNION SELECT project, type, param FROM sp_date
UNION SELECT project, type, param FROM sp_number
UNION SELECT project, type, param FROM sp_quantity
UNION SELECT project, type, param FROM sp_reference
UNION SELECT project, type, param FROM sp_uri;

CREATE TABLE sp_token_v3 (
    rid INTEGER NOT NULL, param_id INTEGER NOT NULL, n INTEGER NOT NULL,
    system TEXT, code TEXT, text TEXT,
    elem INTEGER NOT NULL, comp INTEGER NOT NULL,
    PRIMARY KEY (rid, param_id, n)
) WITHOUT ROWID;
INSERT INTO sp_token_v3 (rid, param_id, n, system, code, text, elem, comp)
    SELECT x.rid, p.id, row_number() OVER (PARTITION BY x.rid ORDER BY x.rowid),
        x.system, x.code, x.text, x.elem, x.comp
    FROM sp_token x JOIN sp_param p ON p.project = x.project AND p.type = x.type AND p.code = x.param;
DROP TABLE sp_token;
ALTER TABLE sp_token_v3 RENAME TO sp_token;
CREATE INDEX sp_token_value ON sp_token (param_id, code, system, rid);

CREATE TABLE sp_string_v3 (
    rid INTEGER NOT NULL, param_id INTEGER NOT NULL, n INTEGER NOT NULL,
    norm TEXT NOT NULL, exact TEXT NOT NULL,
    elem INTEGER NOT NULL, comp INTEGER NOT NULL,
    PRIMARY KEY (rid, param_id, n)
) WITHOUT ROWID;
INSERT INTO sp_string_v3 (rid, param_id, n, norm, exact, elem, comp)
    SELECT x.rid, p.id, row_number() OVER (PARTITION BY x.rid ORDER BY x.rowid),
        x.norm, x.exact, x.elem, x.comp
    FROM sp_string x JOIN sp_param p ON p.project = x.project AND p.type = x.type AND p.code = x.param;
DROP TABLE sp_string;
ALTER TABLE sp_string_v3 RENAME TO sp_string;
CREATE INDEX sp_string_value ON sp_string (param_id, norm, rid);

CREATE TABLE sp_date_v3 (
    rid INTEGER NOT NULL, param_id INTEGER NOT NULL, n INTEGER NOT NULL,
    lo INTEGER NOT NULL, hi INTEGER NOT NULL,
    elem INTEGER NOT NULL, comp INTEGER NOT NULL,
    PRIMARY KEY (rid, param_id, n)
) WITHOUT ROWID;
INSERT INTO sp_date_v3 (rid, param_id, n, lo, hi, elem, comp)
    SELECT x.rid, p.id, row_number() OVER (PARTITION BY x.rid ORDER BY x.rowid),
        x.lo, x.hi, x.elem, x.comp
    FROM sp_date x JOIN sp_param p ON p.project = x.project AND p.type = x.type AND p.code = x.param;
DROP TABLE sp_date;
ALTER TABLE sp_date_v3 RENAME TO sp_date;
CREATE INDEX sp_date_value ON sp_date (param_id, lo, hi, rid);

CREATE TABLE sp_number_v3 (
    rid INTEGER NOT NULL, param_id INTEGER NOT NULL, n INTEGER NOT NULL,
    lo REAL NOT NULL, hi REAL NOT NULL, min REAL NOT NULL, max REAL NOT NULL,
    elem INTEGER NOT NULL, comp INTEGER NOT NULL,
    PRIMARY KEY (rid, param_id, n)
) WITHOUT ROWID;
INSERT INTO sp_number_v3 (rid, param_id, n, lo, hi, min, max, elem, comp)
    SELECT x.rid, p.id, row_number() OVER (PARTITION BY x.rid ORDER BY x.rowid),
        x.lo, x.hi, x.min, x.max, x.elem, x.comp
    FROM sp_number x JOIN sp_param p ON p.project = x.project AND p.type = x.type AND p.code = x.param;
DROP TABLE sp_number;
ALTER TABLE sp_number_v3 RENAME TO sp_number;
CREATE INDEX sp_number_value ON sp_number (param_id, lo, rid);

CREATE TABLE sp_quantity_v3 (
    rid INTEGER NOT NULL, param_id INTEGER NOT NULL, n INTEGER NOT NULL,
    system TEXT, code TEXT, unit TEXT,
    lo REAL NOT NULL, hi REAL NOT NULL, min REAL NOT NULL, max REAL NOT NULL,
    elem INTEGER NOT NULL, comp INTEGER NOT NULL,
    PRIMARY KEY (rid, param_id, n)
) WITHOUT ROWID;
INSERT INTO sp_quantity_v3 (rid, param_id, n, system, code, unit, lo, hi, min, max, elem, comp)
    SELECT x.rid, p.id, row_number() OVER (PARTITION BY x.rid ORDER BY x.rowid),
        x.system, x.code, x.unit, x.lo, x.hi, x.min, x.max, x.elem, x.comp
    FROM sp_quantity x JOIN sp_param p ON p.project = x.project AND p.type = x.type AND p.code = x.param;
DROP TABLE sp_quantity;
ALTER TABLE sp_quantity_v3 RENAME TO sp_quantity;
CREATE INDEX sp_quantity_value ON sp_quantity (param_id, code, lo, rid);

CREATE TABLE sp_reference_v3 (
    rid INTEGER NOT NULL, param_id INTEGER NOT NULL, n INTEGER NOT NULL,
    target_type TEXT, target_id TEXT, url TEXT, version TEXT,
    ident_system TEXT, ident_value TEXT,
    elem INTEGER NOT NULL, comp INTEGER NOT NULL,
    PRIMARY KEY (rid, param_id, n)
) WITHOUT ROWID;
INSERT INTO sp_reference_v3 (rid, param_id, n, target_type, target_id, url, version, ident_system, ident_value, elem, comp)
    SELECT x.rid, p.id, row_number() OVER (PARTITION BY x.rid ORDER BY x.rowid),
        x.target_type, x.target_id, x.url, x.version, x.ident_system, x.ident_value, x.elem, x.comp
    FROM sp_reference x JOIN sp_param p ON p.project = x.project AND p.type = x.type AND p.code = x.param;
DROP TABLE sp_reference;
ALTER TABLE sp_reference_v3 RENAME TO sp_reference;
CREATE INDEX sp_reference_value ON sp_reference (param_id, target_id, target_type, rid);

CREATE TABLE sp_uri_v3 (
    rid INTEGER NOT NULL, param_id INTEGER NOT NULL, n INTEGER NOT NULL,
    uri TEXT NOT NULL,
    elem INTEGER NOT NULL, comp INTEGER NOT NULL,
    PRIMARY KEY (rid, param_id, n)
) WITHOUT ROWID;
INSERT INTO sp_uri_v3 (rid, param_id, n, uri, elem, comp)
    SELECT x.rid, p.id, row_number() OVER (PARTITION BY x.rid ORDER BY x.rowid),
        x.uri, x.elem, x.comp
    FROM sp_uri x JOIN sp_param p ON p.project = x.project AND p.type = x.type AND p.code = x.param;
DROP TABLE sp_uri;
ALTER TABLE sp_uri_v3 RENAME TO sp_uri;
CREATE INDEX sp_uri_value ON sp_uri (param_id, uri, rid);
