//! The stored rows themselves, table by table, as both relational backends keep them: what
//! `kiln migrate-store` reads out of one store (`kiln_store_sqlite::SqliteDump`) and bulk-loads
//! into another (`kiln_store_postgres::RawLoader`), and the [`Digest`] both sides compute to
//! prove the copy complete.
//!
//! A [`RawTable`]'s columns are the *logical* columns both schemas share (the same names in
//! both; SQLite's `n` in the index tables is a storage detail and left out). Each backend maps
//! its own storage types onto a [`Kind`]: SQLite's `INTEGER` 0/1 and PostgreSQL's `BOOLEAN` are
//! both a [`Kind::Bool`]; SQLite's millisecond integers and PostgreSQL's `TIMESTAMPTZ` are both
//! [`Kind::Millis`]. Nothing here is SQL: each backend builds its own statements from the
//! column names.
//!
//! [`RAW_SCHEMA_VERSION`] is the schema version these tables describe. A backend refuses a raw
//! dump or load of any other version, so a migration that adds a table or column cannot be
//! silently left out of a copy: it has to be added here first.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use sha2::{Digest as _, Sha256};

use crate::sql::{Column as IndexColumn, Table};

/// The schema version (of both backends' migrations) that [`RawTable`] describes. (Version 6
/// added PostgreSQL's binary-content tables, `blob` and `blob_chunk`, which are not raw
/// tables: binary content is copied blob by blob, see [`crate::BlobStore`].)
pub const RAW_SCHEMA_VERSION: i64 = 6;

/// A table of the stored schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RawTable {
    /// `setting`: server-private values (the signing key, `kiln.url-key`, `kiln.exports`, …).
    Setting,
    /// `event_counter`: login-throttle counts, used client-assertion `jti`s.
    EventCounter,
    /// `job_queue`: unfinished background jobs and their leases.
    JobQueue,
    /// `sp_param`: the keys of `(project, type, code)` the index rows name.
    SpParam,
    /// `resource`: one row per logical resource, pointing at its current version.
    Resource,
    /// `history`: every version ever written, with its exact bytes.
    History,
    /// `unique_key`: keys held by current versions (`User.email`, …).
    UniqueKey,
    /// One of the search index tables.
    Index(Table),
}

impl RawTable {
    /// Every table, in the order a copy or a digest reads them: `sp_param` comes before the
    /// index tables, whose rows are attributed to a project through it.
    pub const ALL: [RawTable; 14] = [
        RawTable::Setting,
        RawTable::EventCounter,
        RawTable::JobQueue,
        RawTable::SpParam,
        RawTable::Resource,
        RawTable::History,
        RawTable::UniqueKey,
        RawTable::Index(Table::Token),
        RawTable::Index(Table::String),
        RawTable::Index(Table::Date),
        RawTable::Index(Table::Number),
        RawTable::Index(Table::Quantity),
        RawTable::Index(Table::Reference),
        RawTable::Index(Table::Uri),
    ];

    pub fn name(self) -> &'static str {
        match self {
            RawTable::Setting => "setting",
            RawTable::EventCounter => "event_counter",
            RawTable::JobQueue => "job_queue",
            RawTable::SpParam => "sp_param",
            RawTable::Resource => "resource",
            RawTable::History => "history",
            RawTable::UniqueKey => "unique_key",
            RawTable::Index(t) => t.name(),
        }
    }

    /// The logical columns, in the order of every [`RawBatch`] row of this table.
    pub fn columns(self) -> Vec<RawColumn> {
        use Kind::{Bool, Bytes, Int, Millis, Text};
        let c = |name: &'static str, kind: Kind| RawColumn { name, kind };
        match self {
            RawTable::Setting => vec![c("name", Text), c("value", Bytes)],
            RawTable::EventCounter => {
                vec![c("key", Text), c("count", Int), c("expires_at", Millis)]
            }
            RawTable::JobQueue => {
                vec![c("project", Text), c("id", Text), c("node", Text), c("lease_until", Millis)]
            }
            RawTable::SpParam => {
                vec![c("id", Int), c("project", Text), c("type", Text), c("code", Text)]
            }
            RawTable::Resource => vec![
                c("rid", Int),
                c("project", Text),
                c("type", Text),
                c("id", Text),
                c("version", Int),
                c("seq", Int),
                c("deleted", Bool),
                c("last_updated", Text),
            ],
            RawTable::History => vec![
                c("seq", Int),
                c("rid", Int),
                c("project", Text),
                c("type", Text),
                c("id", Text),
                c("version", Int),
                c("last_updated", Text),
                c("deleted", Bool),
                c("method", Text),
                c("body", Bytes),
            ],
            RawTable::UniqueKey => {
                vec![c("project", Text), c("namespace", Text), c("key", Text), c("rid", Int)]
            }
            RawTable::Index(t) => {
                let mut cols = vec![c("rid", Int), c("param_id", Int)];
                for (name, kind) in t.value_columns().iter().zip(t.value_types()) {
                    cols.push(c(
                        name,
                        match kind {
                            IndexColumn::Int => Kind::Int,
                            IndexColumn::Float => Kind::Float,
                            IndexColumn::Text => Kind::Text,
                        },
                    ));
                }
                cols.extend([c("elem", Int), c("comp", Int), c("cix", Int)]);
                cols
            }
        }
    }

    /// Which column holds the row's project; `None` for server-wide tables and for the index
    /// tables (whose project is their `param_id`'s in `sp_param`).
    fn project_column(self) -> Option<usize> {
        match self {
            RawTable::JobQueue | RawTable::UniqueKey => Some(0),
            RawTable::SpParam | RawTable::Resource => Some(1),
            RawTable::History => Some(2),
            RawTable::Setting | RawTable::EventCounter | RawTable::Index(_) => None,
        }
    }
}

impl fmt::Display for RawTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// A logical column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawColumn {
    pub name: &'static str,
    pub kind: Kind,
}

/// What a logical column holds, whatever each backend stores it as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Int,
    Float,
    Text,
    Bytes,
    Bool,
    /// An instant as milliseconds since the epoch ([`RawValue::Int`]).
    Millis,
}

/// One value of a raw row. Any column may be NULL where its schema allows it.
#[derive(Debug, Clone, PartialEq)]
pub enum RawValue {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
    Bytes(Vec<u8>),
    Bool(bool),
}

impl RawValue {
    fn size(&self) -> usize {
        match self {
            RawValue::Text(s) => s.len() + 24,
            RawValue::Bytes(b) => b.len() + 24,
            _ => 16,
        }
    }
}

/// How many rows a batch holds at most, and about how many bytes: reading and loading go
/// batch by batch, so memory stays bounded by a few batches whatever the store's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub rows: usize,
    pub bytes: usize,
}

impl Default for BatchLimits {
    fn default() -> BatchLimits {
        BatchLimits { rows: 5_000, bytes: 8 * 1024 * 1024 }
    }
}

/// Rows of one table, flattened (row after row, [`RawTable::columns`] values each).
#[derive(Debug, Clone)]
pub struct RawBatch {
    table: RawTable,
    width: usize,
    values: Vec<RawValue>,
    bytes: usize,
}

impl RawBatch {
    pub fn new(table: RawTable) -> RawBatch {
        RawBatch { table, width: table.columns().len(), values: Vec::new(), bytes: 0 }
    }

    pub fn table(&self) -> RawTable {
        self.table
    }

    /// Appends the next value (of the row being filled, column by column).
    pub fn push(&mut self, value: RawValue) {
        self.bytes += value.size();
        self.values.push(value);
    }

    /// Complete rows so far.
    pub fn len(&self) -> usize {
        self.values.len() / self.width.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// About how much memory the values take.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether the batch has reached either limit (checked between rows).
    pub fn is_full(&self, limits: BatchLimits) -> bool {
        self.len() >= limits.rows.max(1) || self.bytes >= limits.bytes
    }

    /// The rows, each a slice of [`RawTable::columns`] values.
    pub fn rows(&self) -> impl Iterator<Item = &[RawValue]> {
        self.values.chunks_exact(self.width.max(1))
    }

    /// Empties the batch for reuse, handing back what it held.
    pub fn take(&mut self) -> RawBatch {
        let values = std::mem::take(&mut self.values);
        let bytes = std::mem::replace(&mut self.bytes, 0);
        RawBatch { table: self.table, width: self.width, values, bytes }
    }
}

/// A table's (or a project's part of a table's) row count and an order-independent checksum
/// of its rows: the wrapping sum of the first 128 bits of each row's SHA-256 over a
/// type-tagged, length-prefixed encoding of its values. A sum, not a XOR, so that two equal
/// rows do not cancel out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableDigest {
    pub rows: u64,
    pub sum: u128,
}

impl TableDigest {
    fn add(&mut self, row_hash: u128) {
        self.rows += 1;
        self.sum = self.sum.wrapping_add(row_hash);
    }

    fn merge(&mut self, other: &TableDigest) {
        self.rows += other.rows;
        self.sum = self.sum.wrapping_add(other.sum);
    }
}

impl fmt::Display for TableDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} rows, {:032x}", self.rows, self.sum)
    }
}

/// The project under which server-wide rows (settings, event counters) are counted.
pub const SERVER_WIDE: &str = "(server)";

/// The project of index rows whose `param_id` is not in `sp_param`.
pub const UNKNOWN_PROJECT: &str = "(unknown)";

/// Digests of a whole store, per table and per project: fed every batch of every table (in
/// [`RawTable::ALL`] order, so `sp_param` comes before the index tables).
#[derive(Debug, Clone, Default)]
pub struct Digest {
    tables: BTreeMap<RawTable, BTreeMap<String, TableDigest>>,
    /// `sp_param.id` → project, for attributing index rows.
    param_projects: HashMap<i64, String>,
}

impl Digest {
    pub fn new() -> Digest {
        Digest::default()
    }

    /// Adds a batch's rows.
    pub fn add(&mut self, batch: &RawBatch) {
        let table = batch.table();
        let per_project = self.tables.entry(table).or_default();
        for row in batch.rows() {
            let project = match table.project_column() {
                Some(i) => match &row[i] {
                    RawValue::Text(p) => p.as_str(),
                    _ => UNKNOWN_PROJECT,
                },
                None => match (table, row.get(1)) {
                    (RawTable::Index(_), Some(RawValue::Int(param))) => {
                        self.param_projects.get(param).map_or(UNKNOWN_PROJECT, String::as_str)
                    }
                    (RawTable::Index(_), _) => UNKNOWN_PROJECT,
                    _ => SERVER_WIDE,
                },
            };
            let hash = row_hash(table, row);
            match per_project.get_mut(project) {
                Some(d) => d.add(hash),
                None => {
                    let mut d = TableDigest::default();
                    d.add(hash);
                    per_project.insert(project.to_owned(), d);
                }
            }
            if table == RawTable::SpParam
                && let (RawValue::Int(id), RawValue::Text(project)) = (&row[0], &row[1])
            {
                self.param_projects.insert(*id, project.clone());
            }
        }
    }

    /// A table's digest over all projects.
    pub fn table(&self, table: RawTable) -> TableDigest {
        let mut total = TableDigest::default();
        for d in self.tables.get(&table).into_iter().flat_map(BTreeMap::values) {
            total.merge(d);
        }
        total
    }

    /// A table's digest per project (server-wide tables under [`SERVER_WIDE`]).
    pub fn projects(&self, table: RawTable) -> impl Iterator<Item = (&str, &TableDigest)> {
        self.tables.get(&table).into_iter().flatten().map(|(p, d)| (p.as_str(), d))
    }

    /// Every project with rows in any table.
    pub fn all_projects(&self) -> Vec<&str> {
        let mut all: Vec<&str> =
            self.tables.values().flat_map(|m| m.keys().map(String::as_str)).collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Where `self` (the source) and `other` (the target) differ: `(table, project, source,
    /// target)` for each part whose count or checksum is not the same.
    pub fn differences(&self, other: &Digest) -> Vec<Difference> {
        let mut out = Vec::new();
        for table in RawTable::ALL {
            let empty = BTreeMap::new();
            let a = self.tables.get(&table).unwrap_or(&empty);
            let b = other.tables.get(&table).unwrap_or(&empty);
            let mut projects: Vec<&String> = a.keys().chain(b.keys()).collect();
            projects.sort_unstable();
            projects.dedup();
            for project in projects {
                let source = a.get(project).copied().unwrap_or_default();
                let target = b.get(project).copied().unwrap_or_default();
                if source != target {
                    out.push(Difference { table, project: project.clone(), source, target });
                }
            }
        }
        out
    }
}

/// A part of a table that differs between two stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub table: RawTable,
    pub project: String,
    pub source: TableDigest,
    pub target: TableDigest,
}

/// The first 128 bits of SHA-256 over the row's values, each tagged with its kind and (for
/// text and bytes) its length, after the table's name.
fn row_hash(table: RawTable, row: &[RawValue]) -> u128 {
    let mut h = Sha256::new();
    h.update(table.name().as_bytes());
    h.update([0]);
    for value in row {
        match value {
            RawValue::Null => h.update([0]),
            RawValue::Int(i) => {
                h.update([1]);
                h.update(i.to_le_bytes());
            }
            RawValue::Float(f) => {
                h.update([2]);
                h.update(f.to_bits().to_le_bytes());
            }
            RawValue::Text(s) => {
                h.update([3]);
                h.update((s.len() as u64).to_le_bytes());
                h.update(s.as_bytes());
            }
            RawValue::Bytes(b) => {
                h.update([4]);
                h.update((b.len() as u64).to_le_bytes());
                h.update(b);
            }
            RawValue::Bool(b) => h.update([5, u8::from(*b)]),
        }
    }
    let out = h.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&out[..16]);
    u128::from_le_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(table: RawTable, rows: &[Vec<RawValue>]) -> RawBatch {
        let mut b = RawBatch::new(table);
        for row in rows {
            for v in row {
                b.push(v.clone());
            }
        }
        b
    }

    fn text(s: &str) -> RawValue {
        RawValue::Text(s.to_owned())
    }

    #[test]
    fn every_table_has_its_columns_and_a_unique_name() {
        let mut names: Vec<&str> = RawTable::ALL.iter().map(|t| t.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), RawTable::ALL.len());
        assert_eq!(RawTable::Index(Table::Quantity).columns().len(), 2 + 7 + 3);
        // sp_param comes before the index tables.
        let param = RawTable::ALL.iter().position(|t| *t == RawTable::SpParam).unwrap();
        assert!(RawTable::ALL.iter().skip(param).any(|t| matches!(t, RawTable::Index(_))));
        assert!(!RawTable::ALL[..param].iter().any(|t| matches!(t, RawTable::Index(_))));
    }

    #[test]
    fn digests_ignore_order_but_not_duplicates_or_changes() {
        let setting = |n: &str, v: &[u8]| vec![text(n), RawValue::Bytes(v.to_vec())];
        let rows = [setting("a", b"1"), setting("b", b"2"), setting("c", b"3")];
        let mut one = Digest::new();
        one.add(&batch(RawTable::Setting, &rows));
        let mut reversed = Digest::new();
        let mut back = rows.to_vec();
        back.reverse();
        reversed.add(&batch(RawTable::Setting, &back[..1]));
        reversed.add(&batch(RawTable::Setting, &back[1..]));
        assert!(one.differences(&reversed).is_empty());
        assert_eq!(one.table(RawTable::Setting).rows, 3);

        let mut doubled = Digest::new();
        doubled.add(&batch(RawTable::Setting, &[rows[0].clone(), rows[0].clone()]));
        let mut single = Digest::new();
        single.add(&batch(RawTable::Setting, &[rows[0].clone()]));
        assert_ne!(doubled.table(RawTable::Setting).sum, 0);
        assert_eq!(single.differences(&doubled).len(), 1);

        let mut changed = Digest::new();
        changed.add(&batch(
            RawTable::Setting,
            &[rows[0].clone(), rows[1].clone(), setting("c", b"4")],
        ));
        let diff = one.differences(&changed);
        assert_eq!(diff.len(), 1);
        assert_eq!(diff[0].table, RawTable::Setting);
        assert_eq!(diff[0].project, SERVER_WIDE);
        assert_eq!(diff[0].source.rows, diff[0].target.rows);
    }

    #[test]
    fn index_rows_count_under_their_parameters_project() {
        let params = batch(
            RawTable::SpParam,
            &[
                vec![RawValue::Int(1), text("p1"), text("Patient"), text("name")],
                vec![RawValue::Int(2), text("p2"), text("Patient"), text("name")],
            ],
        );
        let uri = |rid: i64, param: i64| {
            vec![
                RawValue::Int(rid),
                RawValue::Int(param),
                text("http://x"),
                RawValue::Int(0),
                RawValue::Int(-1),
                RawValue::Int(0),
            ]
        };
        let mut d = Digest::new();
        d.add(&params);
        d.add(&batch(RawTable::Index(Table::Uri), &[uri(1, 1), uri(2, 2), uri(3, 2), uri(4, 9)]));
        let per: Vec<(&str, u64)> =
            d.projects(RawTable::Index(Table::Uri)).map(|(p, t)| (p, t.rows)).collect();
        assert_eq!(per, vec![(UNKNOWN_PROJECT, 1), ("p1", 1), ("p2", 2)]);
        assert_eq!(d.all_projects(), vec![UNKNOWN_PROJECT, "p1", "p2"]);
    }

    #[test]
    fn values_of_different_kinds_hash_apart() {
        let t = RawTable::Setting;
        assert_ne!(row_hash(t, &[RawValue::Int(1)]), row_hash(t, &[RawValue::Bool(true)]));
        assert_ne!(row_hash(t, &[text("ab"), text("c")]), row_hash(t, &[text("a"), text("bc")]));
        assert_ne!(row_hash(t, &[RawValue::Null]), row_hash(t, &[text("")]));
    }
}
