-- Kiln PostgreSQL schema, version 4: contained resources in the search index
-- (docs/ARCHITECTURE.md "Search", "Contained resources").
--
-- A resource's `contained` resources are indexed with the parameters of their own types,
-- keyed in `sp_param` by `#Type` (`#Patient`), in the container's rows (`rid`). `cix` tells
-- which contained resource a row belongs to (its position in `contained`, from 1) so that
-- every condition of a search can be put on the same one; the container's own rows have 0.
-- Adding a column with a constant default rewrites nothing: existing rows read as 0, and
-- resources written before this version have no contained rows until they are reindexed.

ALTER TABLE sp_token ADD COLUMN cix INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sp_string ADD COLUMN cix INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sp_date ADD COLUMN cix INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sp_number ADD COLUMN cix INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sp_quantity ADD COLUMN cix INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sp_reference ADD COLUMN cix INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sp_uri ADD COLUMN cix INTEGER NOT NULL DEFAULT 0;
