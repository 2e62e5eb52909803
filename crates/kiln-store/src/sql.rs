//! The search SQL both relational backends share: the index tables' rows, and the compiler from
//! a [`SearchQuery`] to one parameterised `SELECT` (plus a `COUNT` and the include queries).
//!
//! Both SQLite and PostgreSQL run the very same statements; a [`Dialect`] only changes the
//! placeholder style (`?` / `$n`) and one function name. Every value from a request is a bound
//! [`Arg`]; the statement text is built only from fixed fragments, table and column names.
//!
//! # Index tables
//!
//! One table per value kind, each row `(rid, param_id, <value columns>, elem, comp)`: `rid` is
//! the resource row, `param_id` the key of its `(project, type, parameter code)` in `sp_param`
//! (a small integer instead of three strings in every row and index entry), `elem` the
//! occurrence (see [`kiln_search::IndexEntry::elem`]), `comp` the component of a composite
//! parameter (`-1` for an ordinary parameter). SQLite adds `n`, the row's position among its
//! resource's rows, so `(rid, param_id, n)` can be the primary key of a `WITHOUT ROWID` table.
//! Rows exist only for the current, live version of a resource: a write replaces them, a
//! delete removes them. Every table has a value index that starts with `param_id` and ends with
//! `rid`, and is reachable by `(rid, param_id)` for probes, sort keys and replacement.
//!
//! A resource's contained resources have rows of their own in the same tables, under its
//! `rid`, keyed by `#Type` in `sp_param` and numbered by `cix` (their position in
//! `contained`, from 1; the resource's own rows have 0): statements about stored resources
//! never name a `#Type` key, so they never see them. `_contained` searches and chains through
//! local `#id` references probe them by `(rid, cix)`.
//!
//! Statements name a parameter by a subquery on `sp_param` (`param_key`), so the
//! compiler needs no lookups and a parameter never written simply matches nothing.
//!
//! # Query shape
//!
//! A search is `SELECT … FROM resource r JOIN history h ON h.seq = r.seq WHERE r.project = ?
//! AND r.type IN (…) AND NOT r.deleted AND <filters> ORDER BY <keys>, r.rid LIMIT ?`. The most
//! selective positive filter (by a fixed ranking: `_id`, references, tokens, …) is written as
//! `r.rid IN (SELECT rid FROM <index> WHERE <value>)` so the database can start from the value
//! index (when it is the only filter of an unsorted search, the subquery takes the page itself:
//! `SELECT DISTINCT rid … ORDER BY rid LIMIT ?`); every other filter is a correlated `EXISTS` probe on `(rid, param)`. `:not` and
//! `:missing=true` are `NOT EXISTS`. A chain joins `sp_reference` to the target's `resource`
//! row and applies the next filter to it; `_has` does the same in the other direction.
//! Sorting uses per-row subqueries (`MIN` of the values ascending, `MAX` descending; rows
//! without a value last) and keyset paging on `(keys…, rid)`, forwards or (a backward
//! cursor) backwards in reverse order. `_content`/`_text` are probes that parse the current
//! body (no index); [`Filter::Type`] is a condition on the row's type.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{OnceLock, RwLock};

use kiln_definitions::{SearchParamType, definitions};
use kiln_search::{
    Contained, ContainedType, Criterion, Filter, Include, IndexEntry, IndexValue, Modifier, Prefix,
    RefQuery, RefValue, SearchQuery, SystemMatch, TextScope, date_range,
};

use crate::search::{
    Cursor, MAX_INCLUDE_DEPTH, MAX_INCLUDED, SearchPage, SearchRequest, SortValue,
};
use crate::{StoredResource, WriteOp};

/// How a backend spells what differs between SQL engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A value of an index row, borrowed from the [`IndexEntry`] it came from (the writer binds
/// millions of them, so rows copy nothing).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Val<'a> {
    Int(i64),
    Float(f64),
    Text(&'a str),
    /// A NULL in a text column.
    Null,
}

impl<'a> Val<'a> {
    fn opt_text(value: &'a Option<String>) -> Val<'a> {
        value.as_deref().map_or(Val::Null, Val::Text)
    }
}

/// A bound value.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Int(i64),
    Float(f64),
    Text(String),
    /// A NULL in a text column.
    NullText,
}

/// A statement and its bound values.
#[derive(Debug, Clone)]
pub struct Sql {
    dialect: Dialect,
    text: String,
    args: Vec<Arg>,
}

impl Sql {
    pub fn new(dialect: Dialect) -> Sql {
        Sql { dialect, text: String::with_capacity(256), args: Vec::new() }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn args(&self) -> &[Arg] {
        &self.args
    }

    fn push(&mut self, fragment: &str) -> &mut Sql {
        self.text.push_str(fragment);
        self
    }

    fn bind(&mut self, arg: Arg) -> &mut Sql {
        self.args.push(arg);
        match self.dialect {
            Dialect::Sqlite => self.text.push('?'),
            Dialect::Postgres => {
                self.text.push('$');
                self.text.push_str(&self.args.len().to_string());
            }
        }
        self
    }

    fn bind_text(&mut self, text: &str) -> &mut Sql {
        self.bind(Arg::Text(text.to_owned()))
    }

    /// `col = ?` for one value, `col IN (?, ?, …)` for several.
    fn in_list<S: AsRef<str>>(&mut self, column: &str, values: &[S]) -> &mut Sql {
        self.push(column);
        if let [one] = values {
            return self.push(" = ").bind_text(one.as_ref());
        }
        self.push(" IN (");
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.bind_text(v.as_ref());
        }
        self.push(")")
    }

    fn in_ints(&mut self, column: &str, values: &[i64]) -> &mut Sql {
        self.push(column).push(" IN (");
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.bind(Arg::Int(*v));
        }
        self.push(")")
    }
}

/// The index tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Token,
    String,
    Date,
    Number,
    Quantity,
    Reference,
    Uri,
}

impl Table {
    pub const ALL: [Table; 7] = [
        Table::Token,
        Table::String,
        Table::Date,
        Table::Number,
        Table::Quantity,
        Table::Reference,
        Table::Uri,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::Token => "sp_token",
            Table::String => "sp_string",
            Table::Date => "sp_date",
            Table::Number => "sp_number",
            Table::Quantity => "sp_quantity",
            Table::Reference => "sp_reference",
            Table::Uri => "sp_uri",
        }
    }

    /// The value columns, in the order of [`IndexRow::values`].
    pub fn value_columns(self) -> &'static [&'static str] {
        match self {
            Table::Token => &["system", "code", "text"],
            Table::String => &["norm", "exact"],
            Table::Date => &["lo", "hi"],
            Table::Number => &["lo", "hi", "min", "max"],
            Table::Quantity => &["system", "code", "unit", "lo", "hi", "min", "max"],
            Table::Reference => {
                &["target_type", "target_id", "url", "version", "ident_system", "ident_value"]
            }
            Table::Uri => &["uri"],
        }
    }

    fn for_kind(kind: SearchParamType) -> Option<Table> {
        Some(match kind {
            SearchParamType::Token => Table::Token,
            SearchParamType::String => Table::String,
            SearchParamType::Date => Table::Date,
            SearchParamType::Number => Table::Number,
            SearchParamType::Quantity => Table::Quantity,
            SearchParamType::Reference => Table::Reference,
            SearchParamType::Uri => Table::Uri,
            SearchParamType::Composite | SearchParamType::Special => return None,
        })
    }

    fn for_criterion(c: &Criterion) -> Option<Table> {
        Some(match c {
            Criterion::Token { .. }
            | Criterion::Text(_)
            | Criterion::OfType { .. }
            | Criterion::ValueSet(_) => Table::Token,
            Criterion::String { .. } => Table::String,
            Criterion::Date { .. } => Table::Date,
            Criterion::Number { .. } => Table::Number,
            Criterion::Quantity { .. } => Table::Quantity,
            Criterion::Reference(_) => Table::Reference,
            Criterion::Uri(_) => Table::Uri,
            Criterion::Composite(_) => return None,
        })
    }

    /// A statement per index table, written by `make` on first use and kept in `cache` (a
    /// `static` of the caller's): backends build their per-table SQL with it.
    pub fn cached_sql(
        self,
        cache: &'static OnceLock<Vec<String>>,
        make: impl Fn(Table) -> String,
    ) -> &'static str {
        &cache.get_or_init(|| Table::ALL.iter().map(|t| make(*t)).collect())[self as usize]
    }

    /// SQLite: `INSERT INTO <table> (rid, param_id, n, <values>, elem, comp, cix) VALUES (?, …)`.
    /// PostgreSQL: the same columns but `n`, as arrays of many rows in one statement:
    /// `INSERT INTO <table> (…) SELECT * FROM unnest($1::bigint[], …)`.
    pub fn insert_sql(self, dialect: Dialect) -> &'static str {
        static SQLITE: OnceLock<Vec<String>> = OnceLock::new();
        static POSTGRES: OnceLock<Vec<String>> = OnceLock::new();
        let cache = match dialect {
            Dialect::Sqlite => &SQLITE,
            Dialect::Postgres => &POSTGRES,
        };
        self.cached_sql(cache, |t| {
            let mut cols = vec!["rid", "param_id"];
            if dialect == Dialect::Sqlite {
                cols.push("n");
            }
            cols.extend_from_slice(t.value_columns());
            cols.extend_from_slice(&["elem", "comp", "cix"]);
            let marks: Vec<String> = match dialect {
                Dialect::Sqlite => vec!["?".to_owned(); cols.len()],
                Dialect::Postgres => {
                    let mut types = vec!["bigint", "bigint"];
                    types.extend(t.value_types().iter().map(|ty| match ty {
                        Column::Int => "bigint",
                        Column::Float => "float8",
                        Column::Text => "text",
                    }));
                    types.extend(["bigint", "bigint", "bigint"]);
                    types.iter().enumerate().map(|(i, ty)| format!("${}::{ty}[]", i + 1)).collect()
                }
            };
            match dialect {
                Dialect::Sqlite => format!(
                    "INSERT INTO {} ({}) VALUES ({})",
                    t.name(),
                    cols.join(", "),
                    marks.join(", ")
                ),
                Dialect::Postgres => format!(
                    "INSERT INTO {} ({}) SELECT * FROM unnest({})",
                    t.name(),
                    cols.join(", "),
                    marks.join(", ")
                ),
            }
        })
    }

    /// The kind of each value column, in [`Table::value_columns`] order.
    pub fn value_types(self) -> &'static [Column] {
        use Column::{Float as F, Int as I, Text as T};
        match self {
            Table::Token => &[T, T, T],
            Table::String => &[T, T],
            Table::Date => &[I, I],
            Table::Number => &[F, F, F, F],
            Table::Quantity => &[T, T, T, F, F, F, F],
            Table::Reference => &[T, T, T, T, T, T],
            Table::Uri => &[T],
        }
    }

    /// `DELETE FROM <table> WHERE rid = ?`.
    pub fn delete_sql(self, dialect: Dialect) -> &'static str {
        match (dialect, self) {
            (Dialect::Sqlite, Table::Token) => "DELETE FROM sp_token WHERE rid = ?",
            (Dialect::Sqlite, Table::String) => "DELETE FROM sp_string WHERE rid = ?",
            (Dialect::Sqlite, Table::Date) => "DELETE FROM sp_date WHERE rid = ?",
            (Dialect::Sqlite, Table::Number) => "DELETE FROM sp_number WHERE rid = ?",
            (Dialect::Sqlite, Table::Quantity) => "DELETE FROM sp_quantity WHERE rid = ?",
            (Dialect::Sqlite, Table::Reference) => "DELETE FROM sp_reference WHERE rid = ?",
            (Dialect::Sqlite, Table::Uri) => "DELETE FROM sp_uri WHERE rid = ?",
            (Dialect::Postgres, Table::Token) => "DELETE FROM sp_token WHERE rid = $1",
            (Dialect::Postgres, Table::String) => "DELETE FROM sp_string WHERE rid = $1",
            (Dialect::Postgres, Table::Date) => "DELETE FROM sp_date WHERE rid = $1",
            (Dialect::Postgres, Table::Number) => "DELETE FROM sp_number WHERE rid = $1",
            (Dialect::Postgres, Table::Quantity) => "DELETE FROM sp_quantity WHERE rid = $1",
            (Dialect::Postgres, Table::Reference) => "DELETE FROM sp_reference WHERE rid = $1",
            (Dialect::Postgres, Table::Uri) => "DELETE FROM sp_uri WHERE rid = $1",
        }
    }
}

/// The kind of an index value column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Int,
    Float,
    Text,
}

/// One index row of a resource version, borrowed from its [`IndexEntry`]: the backend binds
/// `rid`, the key of `(project, type, param)` and these.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexRow<'a> {
    pub table: Table,
    /// The parameter's code as rows are keyed by it (`code`, `identifier:of-type`,
    /// `_lastUpdated`).
    pub param: Cow<'a, str>,
    values: [Val<'a>; MAX_VALUES],
    pub elem: i64,
    pub comp: i64,
    /// 0 for the resource's own rows; for a contained resource's, its position in
    /// `contained` counted from 1 ([`kiln_search::ContainedIn::index`]). Its rows are keyed
    /// by `#Type` ([`row_params`]), so searches that do not ask for contained resources
    /// never meet them.
    pub cix: i64,
    /// The row's position among its resource's rows (unique per resource).
    pub n: i64,
}

/// The most value columns of any table (`sp_quantity`).
const MAX_VALUES: usize = 7;

impl<'a> IndexRow<'a> {
    /// The value columns, in [`Table::value_columns`] order.
    pub fn values(&self) -> &[Val<'a>] {
        &self.values[..self.table.value_columns().len()]
    }
}

/// The suffix of the parameter name under which `:of-type` rows (an identifier's type coding
/// with its value) are kept in `sp_token`.
const OF_TYPE: &str = ":of-type";

/// The index rows of one resource version. `_lastUpdated` is taken from `last_updated` (the
/// instant the store assigned), whatever the entries say.
pub fn index_rows<'a>(entries: &'a [IndexEntry], last_updated: &str) -> Vec<IndexRow<'a>> {
    let mut rows = Vec::with_capacity(entries.len() + 1);
    for e in entries.iter().filter(|e| e.code != LAST_UPDATED) {
        let mut v = [Val::Null; MAX_VALUES];
        let param = row_param(e);
        let table = match &e.value {
            IndexValue::Token(t) => {
                v[..3].copy_from_slice(&[
                    Val::opt_text(&t.system),
                    Val::opt_text(&t.code),
                    Val::opt_text(&t.text),
                ]);
                Table::Token
            }
            IndexValue::OfType(o) => {
                v[..3].copy_from_slice(&[
                    Val::opt_text(&o.system),
                    Val::opt_text(&o.code),
                    Val::Text(&o.value),
                ]);
                Table::Token
            }
            IndexValue::String(s) => {
                v[..2].copy_from_slice(&[Val::Text(&s.normalized), Val::Text(&s.exact)]);
                Table::String
            }
            IndexValue::Date(d) => {
                v[..2].copy_from_slice(&[Val::Int(d.lo), Val::Int(d.hi)]);
                Table::Date
            }
            IndexValue::Number(n) => {
                v[..4].copy_from_slice(&[
                    Val::Float(n.lo),
                    Val::Float(n.hi),
                    Val::Float(n.min),
                    Val::Float(n.max),
                ]);
                Table::Number
            }
            IndexValue::Quantity(q) => {
                v.copy_from_slice(&[
                    Val::opt_text(&q.system),
                    Val::opt_text(&q.code),
                    Val::opt_text(&q.unit),
                    Val::Float(q.number.lo),
                    Val::Float(q.number.hi),
                    Val::Float(q.number.min),
                    Val::Float(q.number.max),
                ]);
                Table::Quantity
            }
            IndexValue::Reference(r) => {
                // target_type, target_id, url, version, ident_system, ident_value
                match r {
                    RefValue::Local { target_type, id } => {
                        v[..2].copy_from_slice(&[Val::Text(target_type), Val::Text(id)]);
                    }
                    RefValue::Url { url, version } => {
                        v[2..4].copy_from_slice(&[Val::Text(url), Val::opt_text(version)]);
                    }
                    RefValue::Identifier { system, value } => {
                        v[4..6].copy_from_slice(&[Val::opt_text(system), Val::opt_text(value)]);
                    }
                    // No type, and an id no stored resource has (ids never hold `#`).
                    RefValue::Contained { reference } => v[1] = Val::Text(reference),
                }
                Table::Reference
            }
            IndexValue::Uri(u) => {
                v[0] = Val::Text(u);
                Table::Uri
            }
        };
        let (elem, comp) = (i64::from(e.elem), e.component.map_or(-1, i64::from));
        let cix = e.contained.as_ref().map_or(0, |c| i64::from(c.index));
        let n = rows.len() as i64;
        rows.push(IndexRow { table, param, values: v, elem, comp, cix, n });
    }
    if let Some(range) = date_range(last_updated) {
        let mut v = [Val::Null; MAX_VALUES];
        v[..2].copy_from_slice(&[Val::Int(range.lo), Val::Int(range.hi)]);
        let n = rows.len() as i64;
        let param = Cow::Borrowed(LAST_UPDATED);
        rows.push(IndexRow { table: Table::Date, param, values: v, elem: 0, comp: -1, cix: 0, n });
    }
    rows
}

/// Matches the index rows a resource has stored in one table against its new rows, so that an
/// update changes only what differs (both backends): a stored row whose parameter key, values
/// and `elem/comp/cix` equal a new row's stays, and that new row is not inserted; the other
/// stored rows are deleted, the remaining new rows inserted. An update usually changes a few
/// values (and `_lastUpdated`), so most value-index entries are left alone.
///
/// Stored rows are offered in `(param_id, n)` order (or, without `n`, in the order they were
/// inserted), so an unchanged resource's rows match one by one; a row out of order is looked
/// for among all new rows, unless there are many (the search would cost more than rewriting
/// the rows).
pub struct RowDiff<'r, 'a> {
    new: Vec<(&'r IndexRow<'a>, i64)>,
    wanted: Vec<bool>,
    next: usize,
}

/// Above this many new rows in a table, a stored row is only compared with the next one in
/// order.
const DIFF_SEARCH_LIMIT: usize = 256;

impl<'r, 'a> RowDiff<'r, 'a> {
    /// The new rows of `table` among `rows` (with their parameter keys, `keys[i]` for
    /// `rows[i]`), ordered as stored rows are offered.
    pub fn new(table: Table, rows: &'r [IndexRow<'a>], keys: &[i64]) -> RowDiff<'r, 'a> {
        let mut new: Vec<(&'r IndexRow<'a>, i64)> =
            rows.iter().zip(keys).filter(|(r, _)| r.table == table).map(|(r, k)| (r, *k)).collect();
        new.sort_by_key(|(r, k)| (*k, r.n));
        let wanted = vec![true; new.len()];
        RowDiff { new, wanted, next: 0 }
    }

    /// Offers a stored row with parameter key `param`; `same` says whether a new row (of that
    /// key) holds the stored row's values and `elem/comp/cix`. Returns whether the stored row
    /// stays (it then stands for the new row it matched).
    pub fn keep<E>(
        &mut self,
        param: i64,
        mut same: impl FnMut(&IndexRow<'a>) -> Result<bool, E>,
    ) -> Result<bool, E> {
        while self.next < self.new.len() && !self.wanted[self.next] {
            self.next += 1;
        }
        if let Some((row, key)) = self.new.get(self.next)
            && *key == param
            && same(row)?
        {
            self.wanted[self.next] = false;
            return Ok(true);
        }
        if self.new.len() <= DIFF_SEARCH_LIMIT {
            for (i, (row, key)) in self.new.iter().enumerate() {
                if self.wanted[i] && *key == param && same(row)? {
                    self.wanted[i] = false;
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// The new rows no stored row stands for, with their keys, in order.
    pub fn wanted(&self) -> impl Iterator<Item = (&'r IndexRow<'a>, i64)> + '_ {
        self.new.iter().zip(&self.wanted).filter(|(_, w)| **w).map(|(it, _)| *it)
    }

    /// Whether any new row is left to insert.
    pub fn any_wanted(&self) -> bool {
        self.wanted.iter().any(|w| *w)
    }
}

/// The parameter the store indexes itself, from the instant it assigns.
pub const LAST_UPDATED: &str = "_lastUpdated";

/// The parameter an entry's row is keyed by: its code, or `<code>:of-type` for the
/// identifier-type rows.
fn row_param(e: &IndexEntry) -> Cow<'_, str> {
    match e.value {
        IndexValue::OfType(_) => Cow::Owned(format!("{}{OF_TYPE}", e.code)),
        _ => Cow::Borrowed(e.code.as_str()),
    }
}

/// The `sp_param` type and code of every row [`index_rows`] makes of `entries`, in the same
/// order: the resource's own rows are keyed by its type (`None` here), a contained
/// resource's by `#` and its type (`#Patient`).
pub fn row_params(entries: &[IndexEntry]) -> impl Iterator<Item = (Option<String>, Cow<'_, str>)> {
    entries
        .iter()
        .filter(|e| e.code != LAST_UPDATED)
        .map(|e| {
            let ty = e.contained.as_ref().map(|c| format!("{CONTAINED_PREFIX}{}", c.resource_type));
            (ty, row_param(e))
        })
        .chain(std::iter::once((None, Cow::Borrowed(LAST_UPDATED))))
}

/// What a contained resource's type is prefixed with in `sp_param` (and a local reference
/// to it in `sp_reference.target_id`).
pub const CONTAINED_PREFIX: &str = "#";

/// The keys (`sp_param.id`) of `(project, type, parameter code)` a store has seen committed,
/// shared by its writers. A key never changes or goes away once committed, so this cache is
/// never stale; a key is added only after the transaction that created it committed (never
/// inside a write's transaction, whose rollback would take the key with it).
#[derive(Debug, Default)]
pub struct ParamKeys {
    /// project → type → code → key.
    keys: RwLock<HashMap<String, KeysByType>>,
}

/// type → code → key, in one project.
type KeysByType = HashMap<String, HashMap<String, i64>>;

/// The `(type, code)` pairs of a project that have no key yet.
pub type MissingKeys = Vec<(String, String)>;

impl ParamKeys {
    /// The key of every index row of every op (in [`index_rows`] order; none for a delete), or
    /// the parameters that need a key first.
    pub fn for_ops(&self, project: &str, ops: &[WriteOp]) -> Result<Vec<Vec<i64>>, MissingKeys> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let by_type = keys.get(project);
        let mut out = Vec::with_capacity(ops.len());
        let mut missing: MissingKeys = Vec::new();
        for op in ops {
            let (ty, index) = match op {
                WriteOp::Put { resource, index, .. } => {
                    (resource.get("resourceType").and_then(|t| t.as_str()), index)
                }
                WriteOp::Reindex { resource_type, index, .. } => {
                    (Some(resource_type.as_str()), index)
                }
                WriteOp::Delete { .. } => (None, &Vec::new()),
            };
            let Some(ty) = ty else {
                out.push(Vec::new()); // a delete, or refused by the store's own checks
                continue;
            };
            let mut ids = Vec::with_capacity(index.len() + 1);
            for (key_type, param) in row_params(index) {
                let ty = key_type.as_deref().unwrap_or(ty);
                match by_type.and_then(|t| t.get(ty)).and_then(|c| c.get(param.as_ref())) {
                    Some(id) => ids.push(*id),
                    None => {
                        if !missing.iter().any(|(t, c)| t == ty && *c == param) {
                            missing.push((ty.to_owned(), param.into_owned()));
                        }
                    }
                }
            }
            out.push(ids);
        }
        if missing.is_empty() { Ok(out) } else { Err(missing) }
    }

    /// Records committed keys `(type, code, key)` of `project`.
    pub fn insert(&self, project: &str, found: impl IntoIterator<Item = (String, String, i64)>) {
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        let by_type = keys.entry(project.to_owned()).or_default();
        for (ty, code, id) in found {
            by_type.entry(ty).or_default().insert(code, id);
        }
    }
}

/// The columns every search and include statement selects first, in this order.
pub const RESOURCE_COLUMNS: usize = 9;

/// How a backend reads a sort-key column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Int,
    Float,
    Text,
}

/// A compiled search.
#[derive(Debug, Clone)]
pub struct SearchPlan {
    /// Selects `rid, seq, type, id, version, last_updated, deleted, body, method` and then one
    /// column per sort key, at most `limit + 1` rows (the extra row says there is a next page).
    pub select: Option<Sql>,
    /// `SELECT COUNT(*)` of all matches, when the request wants a total.
    pub count: Option<Sql>,
    /// Another way to read the same page, chosen by an estimate (see [`Probing`]).
    pub probing: Option<Probing>,
    pub key_types: Vec<KeyType>,
    pub limit: usize,
}

/// A page statement for a search driven by a `_has` whose condition may match many
/// resources. Driving from the referring resources costs a seek per referring resource that
/// matches (23,712 for a common LOINC code in a million resources: 78 ms), however small the
/// page; walking the searched resources in `rid` order and probing each for a referring
/// resource stops when the page is full, but costs a probe per candidate when few match. So
/// the backend first runs `estimate`, which counts the rows of the condition's index up to
/// `threshold`, and reads the page with `select` (every filter a probe) when it reaches it,
/// else with [`SearchPlan::select`]. Both give the same rows in the same order.
#[derive(Debug, Clone)]
pub struct Probing {
    /// `SELECT COUNT(*) FROM (<the condition's index rows> LIMIT threshold)`.
    pub estimate: Sql,
    pub threshold: i64,
    pub select: Sql,
}

/// Where [`Probing`] switches to probing: the number of referring index rows above which
/// probing up to a page of candidates is expected to be cheaper than seeking every one.
/// Measured on a million Synthea resources (docs/PERFORMANCE.md), for `Patient?_has:
/// Observation:patient:code=…`, driving against probing: 38 rows 3 ms / 674 ms (probing
/// reads every Patient's Observations), 2,698 rows 11 / 68 ms, 5,814 rows 27 / 11 ms, 6,004
/// rows 22 / 26 ms, 19,608 rows 66 / 0.9 ms, 23,712 rows 78 / 0.45 ms: it depends on how the
/// values spread over the resources, so the threshold leans to driving. Probing is at worst a
/// scan of every reference of the parameter, about what driving costs for the most common
/// values.
pub const PROBE_THRESHOLD: i64 = 10_000;

static ALWAYS_PROBE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// For tests: every [`Probing`] planned while this is on has threshold 0, so its probing
/// statement is always used (with test-sized data it never would be). Plans made meanwhile by
/// other threads are affected too, harmlessly: both statements give the same rows.
#[doc(hidden)]
pub fn always_probe(on: bool) {
    ALWAYS_PROBE.store(on, std::sync::atomic::Ordering::SeqCst);
}

/// A row of a search or include statement: the row id, the resource, its sort values.
pub type SearchRow = (i64, StoredResource, Vec<SortValue>);

impl SearchPlan {
    /// The page statement to run, given the result of [`Probing::estimate`] when there is one.
    pub fn page_select(&self, estimate: Option<i64>) -> Option<&Sql> {
        match (&self.probing, estimate) {
            (Some(p), Some(n)) if n >= p.threshold && self.select.is_some() => Some(&p.select),
            _ => self.select.as_ref(),
        }
    }

    /// The page made of the `select` statement's rows (at most `limit + 1`: an extra row means
    /// another page in the direction read), with `total` from the `count` statement; a first
    /// page holding every match reports its size as the total for free. Also returns the
    /// matches as include starting points.
    ///
    /// A forward page (no cursor, or a forward one) links `next` to its last row when the
    /// extra row came, and `previous` to its first row unless it is the first page. A
    /// backward page came in reverse order: it is turned around, links `previous` to its
    /// first row when the extra row came (otherwise it holds the first match and has no
    /// `previous`), and always links `next` to its last row. An empty page past a cursor
    /// (the rows there were deleted meanwhile) links back to the rows up to that cursor.
    pub fn page(
        &self,
        request: &SearchRequest,
        total: Option<u64>,
        mut rows: Vec<SearchRow>,
    ) -> (SearchPage, Vec<Found>) {
        let mut page = SearchPage { total, ..SearchPage::default() };
        let more = rows.len() > self.limit;
        rows.truncate(self.limit);
        let position = |row: Option<&SearchRow>| row.map(|(rid, _, keys)| (keys.clone(), *rid));
        match &request.after {
            Some(cursor) if cursor.backward => {
                rows.reverse();
                if more && let Some((keys, rid)) = position(rows.first()) {
                    page.previous = Some(Cursor::before(keys, rid));
                }
                page.next = Some(match position(rows.last()) {
                    Some((keys, rid)) => Cursor::after(keys, rid),
                    // Nothing before the cursor: the next page starts at it, inclusive.
                    None => Cursor::after(cursor.keys.clone(), cursor.rid - 1),
                });
            }
            after => {
                if more && let Some((keys, rid)) = position(rows.last()) {
                    page.next = Some(Cursor::after(keys, rid));
                }
                page.previous = match (after, position(rows.first())) {
                    (None, _) => None,
                    (Some(_), Some((keys, rid))) => Some(Cursor::before(keys, rid)),
                    // Nothing after the cursor: the previous page ends at it, inclusive.
                    (Some(c), None) => Some(Cursor::before(c.keys.clone(), c.rid + 1)),
                };
                if after.is_none() && !more && page.total.is_none() {
                    page.total = Some(rows.len() as u64);
                }
            }
        }
        let found = rows
            .iter()
            .map(|(rid, r, _)| Found {
                rid: *rid,
                resource_type: r.resource_type.clone(),
                id: r.id.clone(),
            })
            .collect();
        if returns_contained(&request.query) {
            page.contained = rows
                .iter()
                .map(|(_, _, keys)| match keys.first() {
                    Some(SortValue::Int(k)) => u32::try_from(k.rem_euclid(CIX_SPAN)).unwrap_or(0),
                    _ => 0,
                })
                .collect();
        }
        page.matches = rows.into_iter().map(|(_, r, _)| r).collect();
        (page, found)
    }
}

/// A search the store cannot run as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanError(pub String);

struct SortSpec {
    table: Table,
    column: &'static str,
    param: String,
    descending: bool,
    key_type: KeyType,
}

/// Compiles a search request (see the module documentation for the shape).
pub fn plan_search(
    dialect: Dialect,
    project: &str,
    request: &SearchRequest,
) -> Result<SearchPlan, PlanError> {
    let query = &request.query;
    let types = level_types(query);
    let sorts = sort_specs(query);
    if returns_contained(query) {
        return plan_contained(dialect, project, request, &types, &sorts);
    }
    if let Some(after) = &request.after
        && after.keys.len() != sorts.len()
    {
        return Err(PlanError("the paging cursor does not belong to this search".into()));
    }
    check_contained(query, &types, &sorts)?;
    let key_types = sorts.iter().map(|s| s.key_type).collect();
    let select = (request.count > 0).then(|| {
        let mut c = Compiler::new(dialect, project);
        c.select(query, &types, &sorts, request.after.as_ref(), request.count + 1);
        c.sql
    });
    let count = request.total.then(|| {
        let mut c = Compiler::new(dialect, project);
        if !c.index_count(query, &types) {
            c.sql.push("SELECT COUNT(*) FROM resource r WHERE ");
            c.base_where(query, &types, None);
        }
        c.sql
    });
    let probing = if sorts.is_empty() && request.count > 0 {
        probing(dialect, project, query, &types, request.after.as_ref(), request.count + 1)
    } else {
        None
    };
    Ok(SearchPlan { select, count, probing, key_types, limit: request.count })
}

/// [`Probing`] for an unsorted search driven by `_has` over a positive value filter.
fn probing(
    dialect: Dialect,
    project: &str,
    query: &SearchQuery,
    types: &[String],
    cursor: Option<&Cursor>,
    limit: usize,
) -> Option<Probing> {
    if query.contained.is_some_and(|c| c != Contained::False) {
        return None;
    }
    let Filter::Has { source_type, then, .. } = &query.filters[choose_driver(&query.filters)?]
    else {
        return None;
    };
    let Filter::Values { modifier, .. } = then.as_ref() else {
        return None;
    };
    if matches!(modifier, Modifier::Not | Modifier::NotIn) {
        return None;
    }
    let mut estimate = Compiler::new(dialect, project);
    estimate.sql.push("SELECT COUNT(*) FROM (");
    estimate.bare_driver = true;
    let source_types = [source_type.clone()];
    let level = Level {
        rid: String::new(),
        ty: String::new(),
        id: String::new(),
        types: &source_types,
        cix: None,
    };
    estimate.filter(then, &level, true);
    if estimate.bare_driver {
        return None; // matches nothing: the driving statement is cheap anyway
    }
    let threshold =
        if ALWAYS_PROBE.load(std::sync::atomic::Ordering::SeqCst) { 0 } else { PROBE_THRESHOLD };
    estimate.sql.push(" LIMIT ").bind(Arg::Int(threshold)).push(") d");
    let mut select = Compiler::new(dialect, project);
    select.probe_only = true;
    select.select(query, types, &[], cursor, limit);
    Some(Probing { estimate: estimate.sql, threshold, select: select.sql })
}

/// Whether the matches are contained resources themselves (`_contained=true|both` with
/// `_containedType=contained`), not their containers.
pub fn returns_contained(query: &SearchQuery) -> bool {
    query.contained.unwrap_or(Contained::False) != Contained::False
        && query.contained_type == Some(ContainedType::Contained)
}

/// How a match's position packs its container's `rid` and the contained resource's `cix`
/// (`rid * CIX_SPAN + cix`; 0 for the container itself). Contained resources at positions
/// from `CIX_SPAN` on are not indexed ([`kiln_search::MAX_CONTAINED`]).
pub const CIX_SPAN: i64 = kiln_search::MAX_CONTAINED as i64 + 1;

/// `_containedType=contained`: one match per matching resource, contained or (`both`) not,
/// in the order of their position `rid * CIX_SPAN + cix`, which is also the single key of
/// the paging cursor. Neither `_sort` nor `_include`/`_revinclude` is supported here.
fn plan_contained(
    dialect: Dialect,
    project: &str,
    request: &SearchRequest,
    types: &[String],
    sorts: &[SortSpec],
) -> Result<SearchPlan, PlanError> {
    let query = &request.query;
    check_contained(query, types, sorts)?;
    if !query.include.is_empty() || !query.revinclude.is_empty() {
        return Err(PlanError(
            "_include and _revinclude are not supported with _containedType=contained".into(),
        ));
    }
    if let Some(after) = &request.after
        && !matches!(after.keys.as_slice(), [SortValue::Int(_)])
    {
        return Err(PlanError("the paging cursor does not belong to this search".into()));
    }
    let select = (request.count > 0).then(|| {
        let mut c = Compiler::new(dialect, project);
        c.select_positions(query, types, request.after.as_ref(), request.count + 1);
        c.sql
    });
    let count = request.total.then(|| {
        let mut c = Compiler::new(dialect, project);
        c.sql.push("SELECT COUNT(*) FROM (");
        c.positions(query, types);
        c.sql.push(") m");
        c.sql
    });
    Ok(SearchPlan {
        select,
        count,
        probing: None,
        key_types: vec![KeyType::Int],
        limit: request.count,
    })
}

/// What a `_contained=true|both` search cannot do (each a 400, never a wrong answer).
fn check_contained(
    query: &SearchQuery,
    types: &[String],
    sorts: &[SortSpec],
) -> Result<(), PlanError> {
    if query.contained.unwrap_or(Contained::False) == Contained::False {
        return Ok(());
    }
    if types.is_empty() {
        return Err(PlanError("_contained needs a resource type (or _type)".into()));
    }
    if !sorts.is_empty() {
        return Err(PlanError("_sort is not supported with _contained=true or both".into()));
    }
    Ok(())
}

/// The searched types: the type of a type-level search, or `_type` of a system search (empty:
/// every type).
fn level_types(query: &SearchQuery) -> Vec<String> {
    match &query.resource_type {
        Some(t) => vec![t.clone()],
        None => query.types.clone(),
    }
}

fn sort_specs(query: &SearchQuery) -> Vec<SortSpec> {
    let mut out = Vec::new();
    for key in &query.sort {
        let d = key.descending;
        let (table, column, key_type) = match key.kind {
            SearchParamType::Token => (Table::Token, "code", KeyType::Text),
            SearchParamType::String => (Table::String, "norm", KeyType::Text),
            SearchParamType::Date => (Table::Date, if d { "hi" } else { "lo" }, KeyType::Int),
            SearchParamType::Number => {
                (Table::Number, if d { "max" } else { "min" }, KeyType::Float)
            }
            SearchParamType::Quantity => {
                (Table::Quantity, if d { "max" } else { "min" }, KeyType::Float)
            }
            SearchParamType::Reference => (Table::Reference, "", KeyType::Text),
            SearchParamType::Uri => (Table::Uri, "uri", KeyType::Text),
            SearchParamType::Composite | SearchParamType::Special => continue,
        };
        out.push(SortSpec { table, column, param: key.code.clone(), descending: d, key_type });
    }
    out
}

struct Compiler<'a> {
    sql: Sql,
    project: &'a str,
    next_alias: usize,
    /// Set by [`Compiler::index_count`]: the next driving value filter writes its subquery
    /// alone (`SELECT a.rid FROM …`), not `rid IN (SELECT …)`.
    bare_driver: bool,
    /// Set by [`Compiler::select`] for an unsorted search whose one filter drives: the driving
    /// subquery takes the page itself (`SELECT DISTINCT a.rid … ORDER BY a.rid LIMIT ?`), in
    /// the order of the value index, so a page costs its size, not the number of matches.
    page_driver: Option<PageDriver>,
    /// No filter drives: every one is a probe ([`Probing::select`]).
    probe_only: bool,
}

/// The page a driving subquery takes for [`Compiler::page_driver`]: rows after (or, backward,
/// before) the cursor's rid, at most `limit`.
#[derive(Debug, Clone, Copy)]
struct PageDriver {
    after: Option<i64>,
    backward: bool,
    limit: usize,
}

/// The resource a filter is evaluated on: SQL expressions for its row id, type and id, and
/// the types it may have (empty: any).
struct Level<'t> {
    rid: String,
    ty: String,
    id: String,
    types: &'t [String],
    /// For a contained resource: the SQL expression of its position (`cix`) among its
    /// container's (`rid`'s) contained resources. Its rows are keyed by `#Type` (see
    /// [`index_rows`]) and carry that `cix`; `ty` is then the `#Type` of its key. `None`:
    /// a stored resource itself (rows with `cix = 0`, keyed by its own type).
    cix: Option<String>,
}

impl Level<'_> {
    /// A stored resource on alias `r`-like columns `{x}.rid`, `{x}.type`, `{x}.id`.
    fn top<'t>(x: &str, types: &'t [String]) -> Level<'t> {
        Level {
            rid: format!("{x}.rid"),
            ty: format!("{x}.type"),
            id: format!("{x}.id"),
            types,
            cix: None,
        }
    }

    /// The contained resource whose `_id` row is on alias `c` (of `sp_token`).
    fn contained<'t>(c: &str, types: &'t [String]) -> Level<'t> {
        Level {
            rid: format!("{c}.rid"),
            ty: format!("(SELECT spc.type FROM sp_param spc WHERE spc.id = {c}.param_id)"),
            id: format!("{c}.code"),
            types,
            cix: Some(format!("{c}.cix")),
        }
    }

    /// The types the level's rows are keyed by in `sp_param`.
    fn key_types(&self) -> Vec<String> {
        match self.cix {
            Some(_) => contained_key_types(self.types),
            None => self.types.to_vec(),
        }
    }

    /// `{a}.rid = <rid>` (and, for a contained resource, `AND {a}.cix = <cix>`).
    fn rows_of(&self, a: &str) -> String {
        match &self.cix {
            Some(cix) => format!("{a}.rid = {} AND {a}.cix = {cix}", self.rid),
            None => format!("{a}.rid = {}", self.rid),
        }
    }
}

/// `types` as `level.ty` spells them (`#Type` on a contained level).
fn level_key_types(level: &Level<'_>, types: &[String]) -> Vec<String> {
    match level.cix {
        Some(_) => contained_key_types(types),
        None => types.to_vec(),
    }
}

/// `#Type` for each type: the `sp_param` types of contained resources' rows.
fn contained_key_types(types: &[String]) -> Vec<String> {
    types.iter().map(|t| format!("{CONTAINED_PREFIX}{t}")).collect()
}

impl<'a> Compiler<'a> {
    fn new(dialect: Dialect, project: &'a str) -> Compiler<'a> {
        Compiler {
            sql: Sql::new(dialect),
            project,
            next_alias: 0,
            bare_driver: false,
            page_driver: None,
            probe_only: false,
        }
    }

    fn alias(&mut self, prefix: &str) -> String {
        self.next_alias += 1;
        format!("{prefix}{}", self.next_alias)
    }

    fn select(
        &mut self,
        query: &SearchQuery,
        types: &[String],
        sorts: &[SortSpec],
        cursor: Option<&Cursor>,
        limit: usize,
    ) {
        const H: &str =
            "h.seq, h.type, h.id, h.version, h.last_updated, h.deleted, h.body, h.method";
        // A backward page reads the rows before the cursor in reverse order (`page` turns
        // them around): every key's direction flips, and so does where missing values go.
        let backward = cursor.is_some_and(|c| c.backward);
        if sorts.is_empty() {
            // One value filter and nothing else: every row it finds is a match (a deleted
            // resource has no index rows, and a parameter key names one project and type), so
            // its subquery can stop at the page.
            let one_value_filter = query.filters.len() == 1
                && query.contained.unwrap_or(Contained::False) == Contained::False
                && !self.probe_only
                && choose_driver(&query.filters) == Some(0)
                && matches!(&query.filters[0], Filter::Values { kind, .. } if *kind != SearchParamType::Composite);
            if one_value_filter {
                self.page_driver =
                    Some(PageDriver { after: cursor.map(|c| c.rid), backward, limit });
            }
            self.sql.push("SELECT r.rid, ").push(H);
            self.sql.push(" FROM resource r JOIN history h ON h.seq = r.seq WHERE ");
            self.base_where(query, types, cursor);
            self.page_driver = None;
            self.sql.push(if backward { " ORDER BY r.rid DESC" } else { " ORDER BY r.rid" });
            self.sql.push(" LIMIT ").bind(Arg::Int(limit as i64));
            return;
        }
        if self.by_last_updated(query, types, sorts, cursor) {
            // The rows in `_lastUpdated` order from its index, stopping at the page.
            let desc = sorts[0].descending != backward;
            let dir = if desc { "DESC" } else { "ASC" };
            self.sql.push("SELECT m.rid, ").push(H).push(", m.k0 FROM (");
            self.sql.push("SELECT k.rid AS rid, r.seq AS seq, k.lo AS k0 FROM sp_date k ");
            self.sql.push("CROSS JOIN resource r WHERE ");
            self.param_key("k", types, LAST_UPDATED);
            self.sql.push(" AND r.rid = k.rid AND ");
            self.probe_only = true;
            self.base_where(query, types, None);
            if let Some(c) = cursor
                && let [SortValue::Int(at)] = c.keys.as_slice()
            {
                let op = if desc { "<" } else { ">" };
                self.sql.push(&format!(" AND (k.lo {op} ")).bind(Arg::Int(*at));
                self.sql.push(" OR (k.lo = ").bind(Arg::Int(*at));
                self.sql.push(&format!(" AND k.rid {op} ")).bind(Arg::Int(c.rid)).push("))");
            }
            self.sql.push(&format!(" ORDER BY k.lo {dir}, k.rid {dir} LIMIT "));
            self.sql.bind(Arg::Int(limit as i64));
            self.sql.push(&format!(
                ") m JOIN history h ON h.seq = m.seq ORDER BY m.k0 {dir}, m.rid {dir}"
            ));
            return;
        }
        self.sql.push("SELECT m.rid, ").push(H);
        for i in 0..sorts.len() {
            self.sql.push(&format!(", m.k{i}"));
        }
        self.sql.push(" FROM (SELECT r.rid AS rid, r.seq AS seq");
        for (i, s) in sorts.iter().enumerate() {
            self.sql.push(", ");
            self.sort_key(s, types);
            self.sql.push(&format!(" AS k{i}"));
        }
        self.sql.push(" FROM resource r WHERE ");
        self.base_where(query, types, None);
        self.sql.push(") m JOIN history h ON h.seq = m.seq");
        if let Some(cursor) = cursor {
            self.sql.push(" WHERE ");
            self.keyset(sorts, cursor);
        }
        self.sql.push(" ORDER BY ");
        for (i, s) in sorts.iter().enumerate() {
            let order = match (s.descending != backward, backward) {
                (false, false) => "ASC NULLS LAST",
                (true, false) => "DESC NULLS LAST",
                (false, true) => "ASC NULLS FIRST",
                (true, true) => "DESC NULLS FIRST",
            };
            self.sql.push(&format!("m.k{i} {order}, "));
        }
        self.sql.push(if backward { "m.rid DESC" } else { "m.rid" });
        self.sql.push(" LIMIT ").bind(Arg::Int(limit as i64));
    }

    /// The page of a [`plan_contained`] search: `positions` after (or before) the cursor.
    fn select_positions(
        &mut self,
        query: &SearchQuery,
        types: &[String],
        cursor: Option<&Cursor>,
        limit: usize,
    ) {
        let backward = cursor.is_some_and(|c| c.backward);
        self.sql.push(
            "SELECT m.rid, h.seq, h.type, h.id, h.version, h.last_updated, h.deleted, h.body, \
             h.method, m.k0 FROM (",
        );
        self.positions(query, types);
        self.sql.push(") m JOIN history h ON h.seq = m.seq");
        if let Some(cursor) = cursor {
            let position = SortSpec {
                table: Table::Token,
                column: "",
                param: String::new(),
                descending: false,
                key_type: KeyType::Int,
            };
            self.sql.push(" WHERE ");
            self.keyset(&[position], cursor);
        }
        self.sql.push(if backward {
            " ORDER BY m.k0 DESC, m.rid DESC"
        } else {
            " ORDER BY m.k0, m.rid"
        });
        self.sql.push(" LIMIT ").bind(Arg::Int(limit as i64));
    }

    /// `rid, seq, k0` of every match of a [`plan_contained`] search: the resources
    /// themselves (`both`; `k0 = rid * CIX_SPAN`), then each matching contained resource
    /// (`k0 = rid * CIX_SPAN + cix`).
    fn positions(&mut self, query: &SearchQuery, types: &[String]) {
        if query.contained == Some(Contained::Both) {
            let mut own = query.clone();
            own.contained = Some(Contained::False);
            self.sql.push(&format!(
                "SELECT r.rid AS rid, r.seq AS seq, r.rid * {CIX_SPAN} AS k0 FROM resource r WHERE "
            ));
            self.base_where(&own, types, None);
            self.sql.push(" UNION ALL ");
        }
        let c = self.alias("c");
        self.sql.push(&format!(
            "SELECT r.rid AS rid, r.seq AS seq, r.rid * {CIX_SPAN} + {c}.cix AS k0 \
             FROM sp_token {c} CROSS JOIN resource r WHERE r.project = "
        ));
        self.sql.bind_text(self.project);
        self.sql.push(&format!(" AND NOT r.deleted AND r.rid = {c}.rid AND "));
        // The `_id` rows of the contained resources of these types drive.
        param_key(&mut self.sql, self.project, &c, &contained_key_types(types), Some("_id"));
        let level = Level::contained(&c, types);
        for f in &query.filters {
            self.sql.push(" AND ");
            self.filter(f, &level, false);
        }
    }

    /// Whether a page sorted by `_lastUpdated` alone can be read in index order: one type, no
    /// filter that drives (a selective one is cheaper to drive and sort), no contained
    /// resources, and a cursor (if any) on a value. Every stored resource has exactly one
    /// `_lastUpdated` row, an instant to the millisecond (`lo` = `hi`), so walking
    /// `sp_date_value (param_id, lo, …)` gives the resources in sort order, each once, and the
    /// walk stops at the page instead of sorting every match.
    fn by_last_updated(
        &self,
        query: &SearchQuery,
        types: &[String],
        sorts: &[SortSpec],
        cursor: Option<&Cursor>,
    ) -> bool {
        let [s] = sorts else { return false };
        s.param == LAST_UPDATED
            && types.len() == 1
            && query.contained.is_none_or(|c| c == Contained::False)
            && choose_driver(&query.filters).is_none()
            && cursor.is_none_or(|c| matches!(c.keys.as_slice(), [SortValue::Int(_)]))
    }

    fn sort_key(&mut self, s: &SortSpec, types: &[String]) {
        let agg = if s.descending { "MAX" } else { "MIN" };
        let column = match s.table {
            Table::Reference => "COALESCE(k.target_type || '/' || k.target_id, k.url)".to_owned(),
            _ => format!("k.{}", s.column),
        };
        self.sql.push(&format!(
            "(SELECT {agg}({column}) FROM {} k WHERE k.rid = r.rid AND ",
            s.table.name()
        ));
        self.probe_key("k", "r.type", types, &s.param);
        if s.table == Table::Quantity {
            // Sort on the values as written, not their UCUM base-unit copies.
            self.sql.push(" AND (k.system IS NULL OR k.system <> ");
            self.sql.bind_text(kiln_search::UCUM_CANONICAL).push(")");
        }
        self.sql.push(")");
    }

    /// Rows strictly after a forward cursor (strictly before a backward one) in the order
    /// `(k0, k1, …, rid)`, nulls last.
    fn keyset(&mut self, sorts: &[SortSpec], cursor: &Cursor) {
        self.sql.push("(");
        let mut first = true;
        for i in 0..=sorts.len() {
            // Term i: keys before i are equal, key i is beyond the cursor's (or, at the end,
            // rid is).
            if i < sorts.len() && !cursor.backward && cursor.keys[i] == SortValue::Null {
                continue; // nothing sorts after a missing value on this key
            }
            if !first {
                self.sql.push(" OR ");
            }
            first = false;
            self.sql.push("(");
            for (j, key) in cursor.keys.iter().enumerate().take(i) {
                match key {
                    SortValue::Null => self.sql.push(&format!("m.k{j} IS NULL AND ")),
                    v => self.sql.push(&format!("m.k{j} = ")).bind(sort_arg(v)).push(" AND "),
                };
            }
            if i == sorts.len() {
                let op = if cursor.backward { "<" } else { ">" };
                self.sql.push(&format!("m.rid {op} ")).bind(Arg::Int(cursor.rid));
            } else if cursor.keys[i] == SortValue::Null {
                // Backward from a missing value: every row with a value comes before it.
                self.sql.push(&format!("m.k{i} IS NOT NULL"));
            } else if cursor.backward {
                let op = if sorts[i].descending { ">" } else { "<" };
                self.sql.push(&format!("m.k{i} {op} ")).bind(sort_arg(&cursor.keys[i]));
            } else {
                let op = if sorts[i].descending { "<" } else { ">" };
                self.sql.push(&format!("(m.k{i} {op} ")).bind(sort_arg(&cursor.keys[i]));
                self.sql.push(&format!(" OR m.k{i} IS NULL)"));
            }
            self.sql.push(")");
        }
        self.sql.push(")");
    }

    /// A count read from one value index alone, when the search is a single positive value
    /// filter (`Observation?code=…&_summary=count`): `COUNT(DISTINCT rid)` of the rows its
    /// driving subquery selects. That is exact because index rows exist only for the live
    /// version of live resources (a write replaces them, a delete removes them, in the write's
    /// transaction) and their parameter key names the project and the type. It saves looking
    /// up every match in `resource`. Returns `false`, having written nothing, for other shapes.
    fn index_count(&mut self, query: &SearchQuery, types: &[String]) -> bool {
        let [f @ Filter::Values { kind, modifier, .. }] = query.filters.as_slice() else {
            return false;
        };
        if query.contained.is_some_and(|c| c != Contained::False) {
            return false; // contained resources are counted through their containers
        }
        let indexed = *kind == SearchParamType::Composite
            || *modifier == Modifier::Identifier
            || Table::for_kind(*kind).is_some();
        if !indexed || matches!(modifier, Modifier::Not | Modifier::NotIn) {
            return false;
        }
        let mut c = Compiler::new(self.sql.dialect, self.project);
        c.sql.push("SELECT COUNT(DISTINCT d.rid) FROM (");
        c.bare_driver = true;
        let level =
            Level { rid: String::new(), ty: String::new(), id: String::new(), types, cix: None };
        c.filter(f, &level, true);
        if c.bare_driver {
            return false; // the filter matches nothing and wrote no subquery
        }
        c.sql.push(") d");
        *self = c;
        true
    }

    /// Opens a driving subquery selecting `rid` of alias `a` from `table`: `<rid> IN (SELECT
    /// a.rid FROM table a`, or just `SELECT …` for [`Compiler::index_count`]; `SELECT
    /// DISTINCT` with `distinct`. Returns the closing text.
    fn open_driver(
        &mut self,
        level_rid: &str,
        a: &str,
        table: Table,
        distinct: bool,
    ) -> &'static str {
        let select = if distinct { "SELECT DISTINCT" } else { "SELECT" };
        if std::mem::take(&mut self.bare_driver) {
            self.sql.push(&format!("{select} {a}.rid FROM {} {a}", table.name()));
            ""
        } else {
            self.sql.push(&format!("{level_rid} IN ({select} {a}.rid FROM {} {a}", table.name()));
            ")"
        }
    }

    /// `r.project = ? AND r.type IN (…) AND NOT r.deleted AND <filters>` on alias `r`.
    /// With a `cursor` (unsorted searches), only the rows beyond it by `rid`.
    fn base_where(&mut self, query: &SearchQuery, types: &[String], cursor: Option<&Cursor>) {
        let mode = query.contained.unwrap_or(Contained::False);
        // `_contained=true` has no type to seek by: SQLite should take the containers by
        // `rid` from the list the contained rows give, not scan the project's resources.
        let project = match (mode, self.sql.dialect) {
            (Contained::True, Dialect::Sqlite) => "+r.project = ",
            _ => "r.project = ",
        };
        self.sql.push(project).bind_text(self.project);
        if mode == Contained::False && !types.is_empty() {
            self.sql.push(" AND ").in_list("r.type", types);
        }
        self.sql.push(" AND NOT r.deleted");
        if let Some(cursor) = cursor {
            let op = if cursor.backward { " AND r.rid < " } else { " AND r.rid > " };
            self.sql.push(op).bind(Arg::Int(cursor.rid));
        }
        let level = Level::top("r", types);
        let driver = if self.probe_only { None } else { choose_driver(&query.filters) };
        match mode {
            Contained::False => {
                for (i, f) in query.filters.iter().enumerate() {
                    self.sql.push(" AND ");
                    self.filter(f, &level, driver == Some(i));
                }
            }
            Contained::True => {
                self.sql.push(" AND ");
                self.contained_match(&query.filters, types);
            }
            Contained::Both => {
                self.sql.push(" AND ((").in_list("r.type", types);
                for (i, f) in query.filters.iter().enumerate() {
                    self.sql.push(" AND ");
                    self.filter(f, &level, driver == Some(i));
                }
                self.sql.push(") OR ");
                self.contained_match(&query.filters, types);
                self.sql.push(")");
            }
        }
    }

    /// `r.rid IN (…)`: the resource contains a resource of one of `types` that meets every
    /// filter (the same contained resource for all of them). The contained resources of those
    /// types are found by their `_id` rows (keyed `#Type`, so the `_id` value index lists
    /// them); the filters are probes on each (`rid` and `cix`).
    fn contained_match(&mut self, filters: &[Filter], types: &[String]) {
        let c = self.alias("c");
        self.sql.push(&format!("r.rid IN (SELECT {c}.rid FROM sp_token {c} WHERE "));
        param_key(&mut self.sql, self.project, &c, &contained_key_types(types), Some("_id"));
        let level = Level::contained(&c, types);
        for f in filters {
            self.sql.push(" AND ");
            self.filter(f, &level, false);
        }
        self.sql.push(")");
    }

    /// One filter as a boolean expression on `level`; `driver` writes a positive filter as
    /// `rid IN (SELECT …)` rather than a correlated probe.
    fn filter(&mut self, f: &Filter, level: &Level<'_>, driver: bool) {
        // A contained resource is reached through its container's row: its filters probe.
        let driver = driver && level.cix.is_none();
        match f {
            Filter::Values { code, kind, modifier, values } => {
                self.values(level, code, *kind, modifier, values, driver)
            }
            Filter::Missing { code, kind, missing } => self.missing(level, code, *kind, *missing),
            Filter::Chain { code, types, then } => self.chain(level, code, types, then, driver),
            Filter::Has { source_type, param, then } => {
                self.has(level, source_type, param, then, driver)
            }
            Filter::Compartment { compartment, ids } => {
                self.compartment(level, compartment, ids.as_deref(), driver)
            }
            Filter::And(parts) => {
                // A driving AND lets its best part drive; the others are probes.
                let inner = if driver { choose_driver(parts) } else { None };
                self.boolean(level, parts, " AND ", "1 = 1", inner);
            }
            Filter::Or(parts) => self.boolean(level, parts, " OR ", "1 = 0", None),
            Filter::Not(inner) => {
                // Every filter compiles to a non-NULL boolean (EXISTS, comparisons of NOT NULL
                // columns), so NOT is exact.
                self.sql.push("NOT (");
                self.filter(inner, level, false);
                self.sql.push(")");
            }
            Filter::Type(types) if types.is_empty() => {
                self.sql.push("1 = 0");
            }
            Filter::Type(types) => {
                self.sql.push("(").in_list(&level.ty, &level_key_types(level, types)).push(")");
            }
            Filter::Text { scope, phrases } => self.text(level, *scope, phrases),
        }
    }

    /// `_content` / `_text` (see `kiln_search`'s `text` module for the exact rules): a probe
    /// on the resource's current body, scanned (no index). A phrase is found with
    /// `instr`/`strpos` after `lower()`, which folds only ASCII letters in SQLite and under
    /// `COLLATE "C"` in PostgreSQL. Narrative tags go with `kiln_strip_tags` (a function the
    /// SQLite backend registers on its connections) or the PostgreSQL regular expression
    /// `<[^>]*>`, the same rule.
    fn text(&mut self, level: &Level<'_>, scope: TextScope, phrases: &[String]) {
        if phrases.is_empty() {
            self.sql.push("1 = 0");
            return;
        }
        let (x, hx, j, q) = (self.alias("x"), self.alias("hx"), self.alias("j"), self.alias("q"));
        let dialect = self.sql.dialect;
        let body = match dialect {
            Dialect::Sqlite => format!("CAST({hx}.body AS TEXT)"),
            Dialect::Postgres => format!("convert_from({hx}.body, 'UTF8')"),
        };
        // The resource's current version (a live one: its body is JSON).
        let join = format!("resource {x} JOIN history {hx} ON {hx}.seq = {x}.seq");
        let cond = format!("{x}.rid = {} AND NOT {x}.deleted", level.rid);
        // The JSON looked into: the body, or (a contained resource) its entry in `contained`.
        let (root, div) = match (dialect, &level.cix) {
            (Dialect::Sqlite, None) => {
                (body.clone(), format!("json_extract({body}, '$.text.div')"))
            }
            (Dialect::Sqlite, Some(cix)) => {
                let path = format!("'$.contained[' || ({cix} - 1) || ']'");
                (
                    format!("json_extract({body}, {path})"),
                    format!("json_extract({body}, {path} || '.text.div')"),
                )
            }
            (Dialect::Postgres, None) => {
                (format!("({body})::jsonb"), format!("({body})::json #>> '{{text,div}}'"))
            }
            (Dialect::Postgres, Some(cix)) => (
                format!("(({body})::jsonb -> 'contained' -> (({cix}) - 1)::int)"),
                format!("(({body})::json -> 'contained' -> (({cix}) - 1)::int) #>> '{{text,div}}'"),
            ),
        };
        // `q.t`: each text to look in.
        let texts = match (dialect, scope) {
            (Dialect::Sqlite, TextScope::Content) => format!(
                "SELECT {j}.value AS t FROM {join}, json_tree(json_remove({root}, \
                 '$.resourceType', '$.id', '$.meta')) {j} WHERE {cond} AND {j}.type = 'text'"
            ),
            (Dialect::Postgres, TextScope::Content) => format!(
                "SELECT {j}.v #>> '{{}}' AS t FROM {join} CROSS JOIN LATERAL \
                 jsonb_path_query({root} - 'resourceType' - 'id' - 'meta', \
                 'strict $.**') {j}(v) WHERE {cond} AND jsonb_typeof({j}.v) = 'string'"
            ),
            (_, TextScope::Narrative) => {
                let mut div = match dialect {
                    Dialect::Sqlite => format!("kiln_strip_tags({div})"),
                    Dialect::Postgres => format!("regexp_replace({div}, '<[^>]*>', '', 'g')"),
                };
                for (entity, character) in kiln_search::XML_ENTITIES {
                    let character = character.replace('\'', "''");
                    div = format!("replace({div}, '{entity}', '{character}')");
                }
                format!("SELECT {div} AS t FROM {join} WHERE {cond}")
            }
        };
        let folded = match dialect {
            Dialect::Sqlite => format!("lower({q}.t)"),
            Dialect::Postgres => format!("lower({q}.t COLLATE \"C\")"),
        };
        let find = match dialect {
            Dialect::Sqlite => "instr",
            Dialect::Postgres => "strpos",
        };
        self.sql
            .push(&format!("EXISTS (SELECT 1 FROM ({texts}) {q} WHERE {q}.t IS NOT NULL AND ("));
        for (i, phrase) in phrases.iter().enumerate() {
            if i > 0 {
                self.sql.push(" OR ");
            }
            self.sql.push(&format!("{find}({folded}, ")).bind_text(phrase).push(") > 0");
        }
        self.sql.push("))");
    }

    /// `(p1 <join> p2 …)`, `empty` for no parts; part `driver` (if any) drives.
    fn boolean(
        &mut self,
        level: &Level<'_>,
        parts: &[Filter],
        join: &str,
        empty: &str,
        driver: Option<usize>,
    ) {
        if parts.is_empty() {
            self.sql.push(empty);
            return;
        }
        self.sql.push("(");
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                self.sql.push(join);
            }
            self.filter(part, level, driver == Some(i));
        }
        self.sql.push(")");
    }

    /// Some compartment parameter of the resource's type references `compartment/id`, or the
    /// resource is that one. The parameters depend on the type, so a search over several
    /// types gets one branch per type.
    /// `ids` = `None`: the compartment of any resource of type `compartment`.
    fn compartment(
        &mut self,
        level: &Level<'_>,
        compartment: &str,
        ids: Option<&[String]>,
        driver: bool,
    ) {
        if ids.is_some_and(|ids| ids.is_empty()) {
            self.sql.push("1 = 0");
            return;
        }
        let types: Vec<String> = if level.types.is_empty() {
            definitions().resource_types().map(str::to_owned).collect()
        } else {
            level.types.to_vec()
        };
        let branches: Vec<(&String, &[String])> = types
            .iter()
            .filter_map(|t| kiln_search::compartment_params(compartment, t).map(|p| (t, p)))
            .filter(|(_, p)| !p.is_empty())
            .collect();
        let a = self.alias("a");
        self.sql.push("(");
        if branches.is_empty() {
            self.sql.push("1 = 0");
        } else {
            if driver {
                self.sql.push(&format!(
                    "{} IN (SELECT {a}.rid FROM sp_reference {a} WHERE ",
                    level.rid
                ));
            } else {
                self.sql.push(&format!(
                    "EXISTS (SELECT 1 FROM sp_reference {a} WHERE {} AND ",
                    level.rows_of(&a)
                ));
            }
            self.sql.push(&format!("{a}.target_type = ")).bind_text(compartment);
            if let Some(ids) = ids {
                self.sql.push(" AND ").in_list(&format!("{a}.target_id"), ids);
            }
            let key = if driver { a.clone() } else { probe_alias(self.sql.dialect, &a) };
            self.sql.push(&format!(
                " AND {key}.param_id IN (SELECT sp.id FROM sp_param sp WHERE sp.project = "
            ));
            self.sql.bind_text(self.project).push(" AND (");
            for (i, (ty, params)) in branches.iter().enumerate() {
                if i > 0 {
                    self.sql.push(" OR ");
                }
                let key_type = match level.cix {
                    Some(_) => format!("{CONTAINED_PREFIX}{ty}"),
                    None => (*ty).clone(),
                };
                self.sql.push("(sp.type = ").bind_text(&key_type).push(" AND ");
                self.sql.in_list("sp.code", params).push(")");
            }
            self.sql.push(")))");
        }
        // A contained resource is in a compartment only through its references.
        if level.cix.is_none() && types.iter().any(|t| t == compartment) {
            self.sql.push(&format!(" OR ({} = ", level.ty)).bind_text(compartment);
            if let Some(ids) = ids {
                self.sql.push(" AND ").in_list(&level.id, ids);
            }
            self.sql.push(")");
        }
        self.sql.push(")");
    }

    fn values(
        &mut self,
        level: &Level<'_>,
        code: &str,
        kind: SearchParamType,
        modifier: &Modifier,
        values: &[Criterion],
        driver: bool,
    ) {
        if kind == SearchParamType::Composite {
            return self.composite(level, code, values, driver);
        }
        let table = match modifier {
            Modifier::Identifier => Some(Table::Reference),
            _ => Table::for_kind(kind),
        };
        let Some(table) = table else {
            // `special` parameters have no rows: nothing matches (and `:not` everything).
            let negative = matches!(modifier, Modifier::Not | Modifier::NotIn);
            self.sql.push(if negative { "1 = 1" } else { "1 = 0" });
            return;
        };
        let param = match modifier {
            Modifier::OfType => format!("{code}{OF_TYPE}"),
            _ => code.to_owned(),
        };
        let negative = matches!(modifier, Modifier::Not | Modifier::NotIn);
        let a = self.alias("a");
        let mut close = ")";
        let page = if driver && !negative { self.page_driver.take() } else { None };
        if driver && !negative {
            // A resource can hold a value twice: the page counts distinct rids.
            close = self.open_driver(&level.rid, &a, table, page.is_some());
            self.sql.push(" WHERE ");
            self.param_key(&a, level.types, &param);
        } else {
            let exists = if negative { "NOT EXISTS" } else { "EXISTS" };
            self.sql.push(&format!(
                "{exists} (SELECT 1 FROM {} {a} WHERE {} AND ",
                table.name(),
                level.rows_of(&a)
            ));
            let key = probe_alias(self.sql.dialect, &a);
            self.probe_key(&key, &level.ty, &level.key_types(), &param);
        }
        self.sql.push(" AND (");
        for (i, c) in values.iter().enumerate() {
            if i > 0 {
                self.sql.push(" OR ");
            }
            self.criterion(&a, c, modifier);
        }
        self.sql.push(")");
        if let Some(page) = page {
            if let Some(after) = page.after {
                self.sql.push(&format!(" AND {a}.rid {} ", if page.backward { "<" } else { ">" }));
                self.sql.bind(Arg::Int(after));
            }
            let dir = if page.backward { "DESC" } else { "ASC" };
            self.sql
                .push(&format!(" ORDER BY {a}.rid {dir} LIMIT "))
                .bind(Arg::Int(page.limit as i64));
        }
        self.sql.push(close);
    }

    /// `a.param_id` is the key of parameter `code` of one of `types` (any type when empty) in
    /// this project: the condition a value index is searched by.
    fn param_key(&mut self, a: &str, types: &[String], code: &str) {
        param_key(&mut self.sql, self.project, a, types, Some(code));
    }

    /// `a.param_id` is the key of parameter `code` of the resource whose type is the SQL
    /// expression `ty`, one of `types`: the condition of a probe, which already has `a.rid`.
    /// With one possible type the key is a constant; otherwise it is looked up for the row's
    /// own type.
    fn probe_key(&mut self, a: &str, ty: &str, types: &[String], code: &str) {
        if types.len() == 1 {
            return self.param_key(a, types, code);
        }
        self.sql
            .push(&format!("{a}.param_id = (SELECT sp.id FROM sp_param sp WHERE sp.project = "));
        self.sql.bind_text(self.project);
        self.sql.push(&format!(" AND sp.type = {ty} AND sp.code = ")).bind_text(code).push(")");
    }

    fn composite(&mut self, level: &Level<'_>, code: &str, values: &[Criterion], driver: bool) {
        let Some(Criterion::Composite(first)) = values.first() else {
            self.sql.push("1 = 0");
            return;
        };
        let tables: Option<Vec<Table>> = first.iter().map(Table::for_criterion).collect();
        let Some(tables) = tables else {
            self.sql.push("1 = 0");
            return;
        };
        let aliases: Vec<String> = tables.iter().map(|_| self.alias("c")).collect();
        let c0 = &aliases[0];
        let mut close = ")";
        if driver {
            close = self.open_driver(&level.rid, c0, tables[0], false);
        } else {
            self.sql.push(&format!("EXISTS (SELECT 1 FROM {} {c0}", tables[0].name()));
        }
        for (i, (t, ci)) in tables.iter().zip(&aliases).enumerate().skip(1) {
            self.sql.push(&format!(
                " JOIN {} {ci} ON {ci}.rid = {c0}.rid AND {}.param_id = {c0}.param_id \
                 AND {ci}.cix = {c0}.cix AND {ci}.elem = {c0}.elem AND {ci}.comp = {i}",
                t.name(),
                probe_alias(self.sql.dialect, ci),
            ));
        }
        self.sql.push(" WHERE ");
        if driver {
            self.param_key(c0, level.types, code);
        } else {
            self.sql.push(&format!("{} AND ", level.rows_of(c0)));
            let key = probe_alias(self.sql.dialect, c0);
            self.probe_key(&key, &level.ty, &level.key_types(), code);
        }
        self.sql.push(&format!(" AND {c0}.comp = 0 AND ("));
        for (i, alt) in values.iter().enumerate() {
            if i > 0 {
                self.sql.push(" OR ");
            }
            let Criterion::Composite(parts) = alt else {
                self.sql.push("1 = 0");
                continue;
            };
            self.sql.push("(");
            for (j, part) in parts.iter().enumerate() {
                if j > 0 {
                    self.sql.push(" AND ");
                }
                match aliases.get(j) {
                    Some(alias) if Table::for_criterion(part) == Some(tables[j]) => {
                        self.criterion(alias, part, &Modifier::None)
                    }
                    _ => {
                        self.sql.push("1 = 0");
                    }
                }
            }
            self.sql.push(")");
        }
        self.sql.push(")").push(close);
    }

    fn missing(&mut self, level: &Level<'_>, code: &str, kind: SearchParamType, missing: bool) {
        let tables: Vec<Table> = match Table::for_kind(kind) {
            Some(t) => vec![t],
            None if kind == SearchParamType::Composite => Table::ALL.to_vec(),
            None => {
                self.sql.push(if missing { "1 = 1" } else { "1 = 0" });
                return;
            }
        };
        self.sql.push(if missing { "NOT (" } else { "(" });
        for (i, t) in tables.iter().enumerate() {
            if i > 0 {
                self.sql.push(" OR ");
            }
            let a = self.alias("a");
            self.sql.push(&format!(
                "EXISTS (SELECT 1 FROM {} {a} WHERE {} AND ",
                t.name(),
                level.rows_of(&a)
            ));
            self.probe_key(&a, &level.ty, &level.key_types(), code);
            self.sql.push(")");
        }
        self.sql.push(")");
    }

    /// Some reference of parameter `code` points to a resource of one of `types` that meets
    /// `then`: a stored resource (by `target_type`/`target_id`), or, through a local `#id`
    /// reference (`target_id` `#id`, no type), the contained resource with that id in the
    /// same container (found by its `_id` row under `#Type`).
    fn chain(
        &mut self,
        level: &Level<'_>,
        code: &str,
        types: &[String],
        then: &Filter,
        driver: bool,
    ) {
        let (a, t) = (self.alias("a"), self.alias("t"));
        let (a2, ci) = (self.alias("a"), self.alias("ci"));
        let key_types = level.key_types();
        if driver {
            // The target drives (`CROSS JOIN` fixes SQLite's join order; PostgreSQL plans it
            // freely): the next link's filter finds the targets through its index, then the
            // references to them come from `sp_reference_value`.
            self.sql.push(&format!(
                "{} IN (SELECT {a}.rid FROM resource {t} CROSS JOIN sp_reference {a} \
                 WHERE {a}.target_type = {t}.type AND {a}.target_id = {t}.id AND {t}.project = ",
                level.rid
            ));
            self.sql.bind_text(self.project).push(" AND ");
            self.param_key(&a, &key_types, code);
        } else {
            self.sql.push(&format!(
                "(EXISTS (SELECT 1 FROM sp_reference {a} JOIN resource {t} ON {t}.project = "
            ));
            self.sql.bind_text(self.project);
            self.sql.push(&format!(
                " AND {t}.type = {a}.target_type AND {t}.id = {a}.target_id WHERE {} AND ",
                level.rows_of(&a)
            ));
            self.probe_key(&a, &level.ty, &key_types, code);
        }
        self.sql.push(" AND ");
        self.sql.in_list(&format!("{t}.type"), types);
        self.sql.push(&format!(" AND NOT {t}.deleted AND "));
        let inner = Level::top(&t, types);
        self.filter(then, &inner, driver);
        // The contained targets: few, so they are probed from the container's rows.
        let contained = Level::contained(&ci, types);
        if driver {
            self.sql.push(&format!(
                " UNION ALL SELECT {a2}.rid FROM sp_token {ci} CROSS JOIN sp_reference {a2} WHERE "
            ));
            param_key(&mut self.sql, self.project, &ci, &contained_key_types(types), Some("_id"));
            self.sql.push(&format!(" AND {a2}.rid = {ci}.rid AND "));
            let key = probe_alias(self.sql.dialect, &a2);
            self.param_key(&key, &key_types, code);
        } else {
            self.sql.push(&format!(
                ") OR EXISTS (SELECT 1 FROM sp_reference {a2} CROSS JOIN sp_token {ci} WHERE {} AND ",
                level.rows_of(&a2)
            ));
            let key = probe_alias(self.sql.dialect, &a2);
            self.probe_key(&key, &level.ty, &key_types, code);
            self.sql.push(&format!(" AND {ci}.rid = {a2}.rid AND "));
            param_key(&mut self.sql, self.project, &ci, &contained_key_types(types), Some("_id"));
        }
        self.sql.push(&format!(" AND {a2}.target_id = '{CONTAINED_PREFIX}' || {ci}.code AND "));
        self.filter(then, &contained, false);
        self.sql.push(if driver { ")" } else { "))" });
    }

    /// `_has`: resources of this level that some `source_type` resource refers to through
    /// `param` while meeting `then`. The reference rows stand for the referring resources (an
    /// index row exists only for a live resource, and its parameter key names the project and
    /// the type); those resources are joined only when `then` reads their type or id
    /// ([`needs_row`]). Driving, with one type on this level, it selects the ids referred to
    /// (`id IN (SELECT a.target_id …)`), otherwise the row ids of the resources referred to.
    fn has(
        &mut self,
        level: &Level<'_>,
        source_type: &str,
        param: &str,
        then: &Filter,
        driver: bool,
    ) {
        if level.cix.is_some() {
            // Nothing outside its container references a contained resource.
            self.sql.push("1 = 0");
            return;
        }
        let a = self.alias("a");
        let source_types = [source_type.to_owned()];
        let src = needs_row(then).then(|| self.alias("s"));
        let inner = match &src {
            Some(s) => Level::top(s, &source_types),
            None => Level {
                rid: format!("{a}.rid"),
                ty: String::new(),
                id: String::new(),
                types: &source_types,
                cix: None,
            },
        };
        // Driving, the referring resources come first: `then` finds them through its index
        // (`CROSS JOIN` fixes SQLite's join order); probing, the reference rows to this level.
        let from = match (&src, driver) {
            (None, _) => format!("sp_reference {a}"),
            (Some(s), true) => format!("resource {s} CROSS JOIN sp_reference {a}"),
            (Some(s), false) => format!("sp_reference {a} JOIN resource {s} ON {s}.rid = {a}.rid"),
        };
        match (driver, level.types) {
            (true, [ty]) => {
                self.sql.push(&format!("{} IN (SELECT {a}.target_id FROM {from} WHERE ", level.id));
                self.referring(&src, &a, source_type);
                self.param_key(&a, &source_types, param);
                self.sql.push(&format!(" AND {a}.target_type = ")).bind_text(ty);
            }
            (true, types) => {
                let t = self.alias("t");
                self.sql.push(&format!(
                    "{} IN (SELECT {t}.rid FROM {from} CROSS JOIN resource {t} WHERE ",
                    level.rid
                ));
                self.referring(&src, &a, source_type);
                self.sql.push(&format!("{t}.project = ")).bind_text(self.project);
                self.sql.push(&format!(
                    " AND {t}.type = {a}.target_type AND {t}.id = {a}.target_id AND "
                ));
                self.param_key(&a, &source_types, param);
                if !types.is_empty() {
                    self.sql.push(" AND ").in_list(&format!("{t}.type"), types);
                }
            }
            (false, _) => {
                self.sql.push(&format!("EXISTS (SELECT 1 FROM {from} WHERE "));
                self.param_key(&a, &source_types, param);
                self.sql.push(&format!(
                    " AND {a}.target_type = {} AND {a}.target_id = {}",
                    level.ty, level.id
                ));
            }
        }
        self.sql.push(" AND ");
        self.filter(then, &inner, driver);
        self.sql.push(")");
    }

    /// The conditions on the referring resources a driving `_has` joins (see [`Compiler::has`]):
    /// their row is the reference's, and (so that a scan of them can use
    /// `resource_project_type` when `then` does not drive) project, type and liveness.
    fn referring(&mut self, src: &Option<String>, a: &str, source_type: &str) {
        let Some(s) = src else { return };
        self.sql.push(&format!("{a}.rid = {s}.rid AND {s}.project = ")).bind_text(self.project);
        self.sql.push(&format!(" AND {s}.type = ")).bind_text(source_type);
        self.sql.push(&format!(" AND NOT {s}.deleted AND "));
    }

    /// One alternative on index alias `a`.
    fn criterion(&mut self, a: &str, c: &Criterion, modifier: &Modifier) {
        let s = &mut self.sql;
        match c {
            Criterion::Token { system, code } => {
                let (sys_col, code_col) = match modifier {
                    Modifier::Identifier => ("ident_system", "ident_value"),
                    _ => ("system", "code"),
                };
                s.push("(");
                match system {
                    SystemMatch::Any => s.push("1 = 1"),
                    SystemMatch::NoSystem => s.push(&format!("{a}.{sys_col} IS NULL")),
                    SystemMatch::Is(sys) => s.push(&format!("{a}.{sys_col} = ")).bind_text(sys),
                };
                if let Some(code) = code {
                    s.push(&format!(" AND {a}.{code_col} = ")).bind_text(code);
                }
                s.push(")");
            }
            Criterion::Text(text) => prefix_range(s, &format!("{a}.text"), text),
            Criterion::OfType { system, code, value } => {
                s.push(&format!("({a}.system = ")).bind_text(system);
                s.push(&format!(" AND {a}.code = ")).bind_text(code);
                s.push(&format!(" AND {a}.text = ")).bind_text(value).push(")");
            }
            Criterion::String { exact, normalized } => match modifier {
                Modifier::Exact => {
                    s.push(&format!("{a}.exact = ")).bind_text(exact);
                }
                Modifier::Contains => {
                    let f = match s.dialect {
                        Dialect::Sqlite => "instr",
                        Dialect::Postgres => "strpos",
                    };
                    s.push(&format!("{f}({a}.norm, ")).bind_text(normalized).push(") > 0");
                }
                Modifier::Equals => {
                    s.push(&format!("{a}.norm = ")).bind_text(normalized);
                }
                Modifier::EndsWith => {
                    // The column's last length(value) characters (both engines count
                    // characters). A value longer than the column gives a start <= 0, where
                    // both return at most the column: shorter than the value, so unequal.
                    // An empty value gives '' (ends-with holds, as in the oracle).
                    s.push(&format!("substr({a}.norm, length({a}.norm) - length("));
                    s.bind_text(normalized).push(") + 1) = ").bind_text(normalized);
                }
                _ => prefix_range(s, &format!("{a}.norm"), normalized),
            },
            Criterion::Date { prefix, range } => {
                let cols = (format!("{a}.lo"), format!("{a}.hi"));
                compare(s, *prefix, &cols, Arg::Int(range.lo), Arg::Int(range.hi));
            }
            Criterion::Number { prefix, range } => number(s, a, *prefix, range),
            Criterion::Quantity { prefix, range, system, code } => {
                s.push("(");
                match system {
                    Some(system) => {
                        s.push(&format!("{a}.system = ")).bind_text(system).push(" AND ");
                    }
                    // Without a system, only what the resource said counts (not the UCUM copies).
                    None => {
                        s.push(&format!("({a}.system IS NULL OR {a}.system <> "));
                        s.bind_text(kiln_search::UCUM_CANONICAL).push(") AND ");
                    }
                }
                match (system, code) {
                    (_, None) => {}
                    (Some(_), Some(code)) => {
                        s.push(&format!("{a}.code = ")).bind_text(code).push(" AND ");
                    }
                    (None, Some(code)) => {
                        s.push(&format!("({a}.code = ")).bind_text(code);
                        s.push(&format!(" OR {a}.unit = ")).bind_text(code).push(") AND ");
                    }
                }
                number(s, a, *prefix, range);
                s.push(")");
            }
            Criterion::Reference(r) => match r {
                RefQuery::Local { target_type, id } => {
                    let ty = match (target_type, modifier) {
                        (Some(t), _) | (None, Modifier::Type(t)) => Some(t),
                        (None, _) => None,
                    };
                    s.push("(");
                    if let Some(ty) = ty {
                        s.push(&format!("{a}.target_type = ")).bind_text(ty).push(" AND ");
                    }
                    s.push(&format!("{a}.target_id = ")).bind_text(id).push(")");
                }
                RefQuery::Url { url, version, local } => {
                    s.push(&format!("(({a}.url = ")).bind_text(url);
                    if let Some(v) = version {
                        s.push(&format!(" AND {a}.version = ")).bind_text(v);
                    }
                    s.push(")");
                    if let (Some((ty, id)), None) = (local, version) {
                        s.push(&format!(" OR ({a}.target_type = ")).bind_text(ty);
                        s.push(&format!(" AND {a}.target_id = ")).bind_text(id).push(")");
                    }
                    s.push(")");
                }
            },
            Criterion::Uri(u) => match modifier {
                Modifier::Below => prefix_range(s, &format!("{a}.uri"), u),
                Modifier::Above => {
                    s.push("substr(").bind_text(u);
                    s.push(&format!(", 1, length({a}.uri)) = {a}.uri"));
                }
                _ => {
                    s.push(&format!("{a}.uri = ")).bind_text(u);
                }
            },
            // Expanded by the engine before a search gets here; unexpanded, nothing matches.
            Criterion::Composite(_) | Criterion::ValueSet(_) => {
                s.push("1 = 0");
            }
        }
    }
}

/// How a probe with a value condition (a lookup by `rid`) names its alias `a` in the key
/// condition. SQLite gets `+a`: the unary plus keeps it from serving `param_id` and the value
/// condition from the value index, which starts with `param_id`, instead of seeking `rid` in
/// the table's primary key. Without statistics its planner rated both alike and scanned every
/// row of a common value (`category=vital-signs`) for each candidate; a resource's own rows in
/// one table are few.
fn probe_alias(dialect: Dialect, a: &str) -> String {
    match dialect {
        Dialect::Sqlite => format!("+{a}"),
        Dialect::Postgres => a.to_owned(),
    }
}

/// `a.param_id` is the key (in `sp_param`) of parameter `code` (any code when `None`) of one of
/// `types` (any type when empty, but never a contained resource's `#Type`) in `project`:
/// `= (SELECT …)` when that names one key, `IN (SELECT …)` otherwise. A parameter never
/// written has no key, and matches nothing.
fn param_key(s: &mut Sql, project: &str, a: &str, types: &[String], code: Option<&str>) {
    let op = if types.len() == 1 && code.is_some() { "=" } else { "IN" };
    s.push(&format!("{a}.param_id {op} (SELECT sp.id FROM sp_param sp WHERE sp.project = "));
    s.bind_text(project);
    if types.is_empty() {
        // Any type, but not the contained resources' `#Type` keys.
        s.push(&format!(" AND substr(sp.type, 1, 1) <> '{CONTAINED_PREFIX}'"));
    } else {
        s.push(" AND ").in_list("sp.type", types);
    }
    if let Some(code) = code {
        s.push(" AND sp.code = ").bind_text(code);
    }
    s.push(")");
}

/// `col` starts with `prefix`, as a range on the column's byte order (usable by an index):
/// `col >= prefix AND col < successor(prefix)`. UTF-8 byte order is code-point order, so the
/// strings starting with `prefix` are exactly those in that range.
fn prefix_range(s: &mut Sql, col: &str, prefix: &str) {
    s.push(&format!("({col} >= ")).bind_text(prefix);
    if let Some(upper) = prefix_successor(prefix) {
        s.push(&format!(" AND {col} < ")).bind(Arg::Text(upper));
    }
    s.push(")");
}

/// The least string greater than every string starting with `prefix`: its last code point
/// incremented (dropping trailing U+10FFFF); `None` when there is none (empty prefix).
fn prefix_successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last {
            '\u{D7FF}' => Some('\u{E000}'),
            c => char::from_u32(c as u32 + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

fn number(s: &mut Sql, a: &str, prefix: Prefix, range: &kiln_search::NumberRange) {
    match prefix {
        Prefix::Eq | Prefix::Ne | Prefix::Ap => {
            let cols = (format!("{a}.lo"), format!("{a}.hi"));
            compare(s, prefix, &cols, Arg::Float(range.lo), Arg::Float(range.hi));
        }
        _ => {
            let cols = (format!("{a}.min"), format!("{a}.max"));
            compare(s, prefix, &cols, Arg::Float(range.min), Arg::Float(range.max));
        }
    }
}

/// The prefix rules of [`kiln_search::compare`] on a target range `(lo, hi)` and a search range.
fn compare(s: &mut Sql, prefix: Prefix, (lo, hi): &(String, String), sl: Arg, sh: Arg) {
    let eq = |s: &mut Sql| {
        s.push(&format!("({lo} >= ")).bind(sl.clone());
        s.push(&format!(" AND {hi} <= ")).bind(sh.clone()).push(")");
    };
    match prefix {
        Prefix::Eq => eq(s),
        Prefix::Ne => {
            s.push("NOT ");
            eq(s);
        }
        Prefix::Gt => {
            s.push(&format!("{hi} > ")).bind(sh.clone());
        }
        Prefix::Lt => {
            s.push(&format!("{lo} < ")).bind(sl.clone());
        }
        Prefix::Ge => {
            s.push(&format!("({hi} > ")).bind(sh.clone()).push(" OR ");
            eq(s);
            s.push(")");
        }
        Prefix::Le => {
            s.push(&format!("({lo} < ")).bind(sl.clone()).push(" OR ");
            eq(s);
            s.push(")");
        }
        Prefix::Sa => {
            s.push(&format!("{lo} > ")).bind(sh.clone());
        }
        Prefix::Eb => {
            s.push(&format!("{hi} < ")).bind(sl.clone());
        }
        Prefix::Ap => {
            s.push(&format!("({lo} <= ")).bind(sh.clone());
            s.push(&format!(" AND {hi} >= ")).bind(sl.clone()).push(")");
        }
    }
}

fn sort_arg(v: &SortValue) -> Arg {
    match v {
        SortValue::Null => Arg::NullText,
        SortValue::Int(i) => Arg::Int(*i),
        SortValue::Float(f) => Arg::Float(*f),
        SortValue::Text(t) => Arg::Text(t.clone()),
    }
}

/// Which filter, if any, should drive the query (see the module documentation).
/// Whether a filter reads its resource's type or id (not only its row id): then `_has` has to
/// look up the referring resources (see [`Compiler::has`]).
fn needs_row(f: &Filter) -> bool {
    match f {
        Filter::Type(_) | Filter::Compartment { .. } | Filter::Has { .. } => true,
        Filter::And(parts) | Filter::Or(parts) => parts.iter().any(needs_row),
        Filter::Not(inner) => needs_row(inner),
        Filter::Values { .. }
        | Filter::Missing { .. }
        | Filter::Chain { .. }
        | Filter::Text { .. } => false,
    }
}

fn choose_driver(filters: &[Filter]) -> Option<usize> {
    let rank = |f: &Filter| -> Option<u8> {
        match f {
            Filter::Values { modifier: Modifier::Not | Modifier::NotIn, .. } => None,
            Filter::Values { code, .. } if code == "_id" => Some(0),
            Filter::Values { kind: SearchParamType::Reference, .. } => Some(1),
            Filter::Values { modifier: Modifier::Text, .. } => Some(5),
            Filter::Values { kind: SearchParamType::Token, .. } => Some(2),
            Filter::Values { kind: SearchParamType::Composite, .. } => Some(3),
            Filter::Values { .. } => Some(4),
            // "Any patient's compartment" matches most rows: it probes.
            Filter::Compartment { ids: None, .. } => None,
            Filter::Compartment { .. } => Some(1),
            Filter::Chain { .. } | Filter::Has { .. } => Some(6),
            // `_filter`'s boolean filters probe (a top-level AND is already split up).
            Filter::Missing { .. } | Filter::And(_) | Filter::Or(_) | Filter::Not(_) => None,
            // Per-type conditions and text scans only ever probe.
            Filter::Type(_) | Filter::Text { .. } => None,
        }
    };
    filters.iter().enumerate().filter_map(|(i, f)| rank(f).map(|r| (r, i))).min().map(|(_, i)| i)
}

/// A resource already in a result: what the include queries start from.
#[derive(Debug, Clone)]
pub struct Found {
    pub rid: i64,
    pub resource_type: String,
    pub id: String,
}

/// The rounds of `_include`/`_revinclude` for one page: hands out statements, takes back their
/// rows, keeps every resource once and stops at [`MAX_INCLUDE_DEPTH`] rounds or
/// [`MAX_INCLUDED`] resources.
pub struct Includes<'q> {
    dialect: Dialect,
    project: String,
    query: &'q SearchQuery,
    seen: HashSet<i64>,
    frontier: Vec<Found>,
    round: usize,
    pub included: Vec<StoredResource>,
    pub truncated: bool,
}

impl<'q> Includes<'q> {
    pub fn new(
        dialect: Dialect,
        project: &str,
        query: &'q SearchQuery,
        matches: Vec<Found>,
    ) -> Includes<'q> {
        Includes {
            dialect,
            project: project.to_owned(),
            query,
            seen: matches.iter().map(|f| f.rid).collect(),
            frontier: matches,
            round: 0,
            included: Vec::new(),
            truncated: false,
        }
    }

    /// The statements of the next round (each selects the resource columns); empty when done.
    pub fn statements(&self) -> Vec<Sql> {
        if self.frontier.is_empty() || self.round >= MAX_INCLUDE_DEPTH || self.truncated {
            return Vec::new();
        }
        let first = self.round == 0;
        let mut out = Vec::new();
        for inc in self.query.include.iter().filter(|i| first || i.iterate) {
            out.extend(self.include(inc));
        }
        for inc in self.query.revinclude.iter().filter(|i| first || i.iterate) {
            out.extend(self.revinclude(inc));
        }
        out
    }

    /// Takes the rows of one round's statements.
    pub fn absorb(&mut self, rows: Vec<(i64, StoredResource)>) {
        let mut next = Vec::new();
        for (rid, res) in rows {
            if !self.seen.insert(rid) {
                continue;
            }
            if self.included.len() >= MAX_INCLUDED {
                self.truncated = true;
                break;
            }
            next.push(Found { rid, resource_type: res.resource_type.clone(), id: res.id.clone() });
            self.included.push(res);
        }
        self.frontier = next;
        self.round += 1;
    }

    /// Hands the included resources to the page.
    pub fn finish(self, page: &mut SearchPage) {
        page.included = self.included;
        page.included_truncated = self.truncated;
    }

    const COLUMNS: &'static str = "t.rid, h.seq, h.type, h.id, h.version, h.last_updated, \
                                   h.deleted, h.body, h.method";

    fn include(&self, inc: &Include) -> Option<Sql> {
        let rids: Vec<i64> = self
            .frontier
            .iter()
            .filter(|f| inc.source_type.as_ref().is_none_or(|t| *t == f.resource_type))
            .map(|f| f.rid)
            .collect();
        if rids.is_empty() {
            return None;
        }
        let mut s = Sql::new(self.dialect);
        s.push(&format!(
            "SELECT {} FROM sp_reference a JOIN resource t ON t.project = ",
            Self::COLUMNS
        ));
        s.bind_text(&self.project);
        s.push(" AND t.type = a.target_type AND t.id = a.target_id JOIN history h ON h.seq = t.seq WHERE ");
        s.in_ints("a.rid", &rids);
        if let Some(param) = &inc.param {
            s.push(" AND ");
            let types: Vec<String> = inc.source_type.iter().cloned().collect();
            param_key(&mut s, &self.project, "a", &types, Some(param));
        }
        if let Some(target) = &inc.target_type {
            s.push(" AND a.target_type = ").bind_text(target);
        }
        s.push(" AND NOT t.deleted");
        Some(self.restricted(s, inc.target_type.as_deref()))
    }

    /// `s` with the query's [`SearchQuery::include_filter`] on the included row `t`, decided
    /// for its type when that is known ([`Filter::for_type`]).
    fn restricted(&self, s: Sql, ty: Option<&str>) -> Sql {
        let Some(filter) = &self.query.include_filter else { return s };
        let specialised;
        let filter = match ty {
            Some(ty) => {
                specialised = filter.for_type(ty);
                if matches!(&specialised, Filter::And(parts) if parts.is_empty()) {
                    return s;
                }
                &specialised
            }
            None => filter,
        };
        let types: Vec<String> = ty.iter().map(|t| t.to_string()).collect();
        let mut c = Compiler::new(self.dialect, &self.project);
        c.sql = s;
        c.sql.push(" AND (");
        c.filter(filter, &Level::top("t", &types), false);
        c.sql.push(")");
        c.sql
    }

    fn revinclude(&self, inc: &Include) -> Vec<Sql> {
        let mut by_type: Vec<(&str, Vec<&str>)> = Vec::new();
        for f in &self.frontier {
            if inc.target_type.as_ref().is_some_and(|t| *t != f.resource_type) {
                continue;
            }
            match by_type.iter_mut().find(|(t, _)| *t == f.resource_type) {
                Some((_, ids)) => ids.push(&f.id),
                None => by_type.push((&f.resource_type, vec![&f.id])),
            }
        }
        let mut out = Vec::new();
        for (ty, ids) in by_type {
            let mut s = Sql::new(self.dialect);
            s.push(&format!(
                "SELECT {} FROM sp_reference a JOIN resource t ON t.rid = a.rid \
                 JOIN history h ON h.seq = t.seq WHERE ",
                Self::COLUMNS
            ));
            let types: Vec<String> = inc.source_type.iter().cloned().collect();
            param_key(&mut s, &self.project, "a", &types, inc.param.as_deref());
            s.push(" AND a.target_type = ").bind_text(ty);
            s.push(" AND ").in_list("a.target_id", &ids);
            s.push(" AND NOT t.deleted");
            out.push(self.restricted(s, inc.source_type.as_deref()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(dialect: Dialect, pairs: &[(&str, &str)]) -> SearchPlan {
        let pairs: Vec<(String, String)> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let query = kiln_search::parse("Observation", &pairs).unwrap();
        let request = SearchRequest { query, after: None, count: 20, total: true };
        plan_search(dialect, "p1", &request).unwrap()
    }

    #[test]
    fn placeholders_follow_the_dialect() {
        let q = [("subject", "Patient/1"), ("code", "http://loinc.org|1234-5")];
        let p = plan(Dialect::Postgres, &q);
        let select = p.select.unwrap();
        let n = select.args().len();
        assert!(select.text().contains(&format!("${n}")), "{}", select.text());
        assert!(!select.text().contains('?'));
        let s = plan(Dialect::Sqlite, &q).select.unwrap();
        assert_eq!(s.text().matches('?').count(), s.args().len());
        // The reference drives; the token is a probe.
        assert!(s.text().contains("r.rid IN (SELECT a1.rid FROM sp_reference"), "{}", s.text());
        assert!(s.text().contains("EXISTS (SELECT 1 FROM sp_token"), "{}", s.text());
    }

    #[test]
    fn a_single_value_filter_is_counted_from_its_index() {
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            let count = plan(dialect, &[("code", "http://loinc.org|1234-5,|x")]).count.unwrap();
            assert!(
                count.text().starts_with(
                    "SELECT COUNT(DISTINCT d.rid) FROM (SELECT a1.rid FROM sp_token a1 WHERE"
                ),
                "{}",
                count.text()
            );
            assert!(!count.text().contains("resource"), "{}", count.text());
            let composite = plan(dialect, &[("code-value-quantity", "1234-5$gt5")]).count.unwrap();
            assert!(
                composite.text().starts_with("SELECT COUNT(DISTINCT d.rid) FROM (SELECT"),
                "{}",
                composite.text()
            );
            // Anything else counts resources.
            for other in [
                vec![("code", "1234-5"), ("status", "final")],
                vec![("code:not", "1234-5")],
                vec![("code:missing", "true")],
                vec![("subject:Patient.name", "x")],
            ] {
                let count = plan(dialect, &other).count.unwrap();
                assert!(
                    count.text().starts_with("SELECT COUNT(*) FROM resource r WHERE"),
                    "{other:?}: {}",
                    count.text()
                );
            }
        }
    }

    #[test]
    fn has_reads_reference_rows_not_the_referring_resources() {
        let pairs: Vec<(String, String)> =
            vec![("_has:Observation:patient:code".into(), "1234-5".into())];
        let query = kiln_search::parse("Patient", &pairs).unwrap();
        let request = SearchRequest { query, after: None, count: 20, total: false };
        let select = plan_search(Dialect::Sqlite, "p1", &request).unwrap().select.unwrap();
        let text = select.text();
        assert!(text.contains("r.id IN (SELECT a1.target_id FROM sp_reference a1 WHERE"), "{text}");
        assert!(text.contains("a1.rid IN (SELECT"), "{text}");
        assert_eq!(text.matches("resource").count(), 1, "only the outer resource: {text}");
        // A nested `_has` reads the referring resources' ids: they are looked up.
        let pairs: Vec<(String, String)> = vec![(
            "_has:Observation:patient:_has:Provenance:target:agent".into(),
            "Practitioner/1".into(),
        )];
        let query = kiln_search::parse("Patient", &pairs).unwrap();
        let request = SearchRequest { query, after: None, count: 20, total: false };
        let text = plan_search(Dialect::Sqlite, "p1", &request).unwrap().select.unwrap();
        assert!(text.text().contains("FROM resource s"), "{}", text.text());
    }

    #[test]
    fn a_driving_has_may_be_read_by_probing() {
        let plan = |pairs: &[(&str, &str)]| {
            let pairs: Vec<(String, String)> =
                pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            let query = kiln_search::parse("Patient", &pairs).unwrap();
            let request = SearchRequest { query, after: None, count: 20, total: false };
            plan_search(Dialect::Sqlite, "p1", &request).unwrap()
        };
        let p = plan(&[("_has:Observation:patient:code", "1234-5")]);
        let probing = p.probing.as_ref().expect("a driving _has over a token");
        let estimate = probing.estimate.text();
        assert!(estimate.starts_with("SELECT COUNT(*) FROM (SELECT a"), "{estimate}");
        assert!(estimate.ends_with("LIMIT ?) d"), "{estimate}");
        let select = probing.select.text();
        assert!(!select.contains(" IN (SELECT"), "nothing drives: {select}");
        assert!(select.contains("EXISTS (SELECT 1 FROM sp_reference"), "{select}");
        assert_eq!(
            p.page_select(Some(PROBE_THRESHOLD - 1)).unwrap().text(),
            p.select.as_ref().unwrap().text()
        );
        assert_eq!(p.page_select(Some(PROBE_THRESHOLD)).unwrap().text(), select);
        // Another filter drives, or the page is sorted: no probing.
        assert!(plan(&[("_has:Observation:patient:code", "1"), ("_id", "a")]).probing.is_none());
        assert!(
            plan(&[("_has:Observation:patient:code", "1"), ("_sort", "birthdate")])
                .probing
                .is_none()
        );
        assert!(plan(&[("name", "x")]).probing.is_none());
    }

    #[test]
    fn last_updated_sorts_walk_their_index() {
        for (pairs, walks) in [
            (vec![("_sort", "-_lastUpdated")], true),
            (vec![("_sort", "_lastUpdated"), ("status:missing", "false")], true),
            (vec![("_sort", "-_lastUpdated"), ("subject", "Patient/1")], false),
            (vec![("_sort", "-_lastUpdated,_id")], false),
            (vec![("_sort", "-date")], false),
        ] {
            let select = plan(Dialect::Sqlite, &pairs).select.unwrap();
            let text = select.text();
            assert_eq!(
                text.contains("FROM sp_date k CROSS JOIN resource r"),
                walks,
                "{pairs:?}: {text}"
            );
            if walks {
                assert!(!text.contains(" IN (SELECT a"), "nothing drives: {text}");
            }
        }
    }

    #[test]
    fn user_text_never_reaches_the_statement() {
        let evil = "x'); DROP TABLE resource; --";
        let p = plan(Dialect::Sqlite, &[("code", evil), ("_sort", "-date")]);
        for sql in [p.select.unwrap(), p.count.unwrap()] {
            assert!(!sql.text().contains("DROP"), "{}", sql.text());
            assert!(sql.args().contains(&Arg::Text(evil.to_owned())));
        }
    }

    #[test]
    fn text_searches_bind_their_phrases() {
        let evil = "x'); DROP TABLE resource; --";
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            let p =
                plan(dialect, &[("_content", evil), ("_text", "Heart,RATE"), ("_sort", "date")]);
            for sql in [p.select.unwrap(), p.count.unwrap()] {
                let text = sql.text();
                assert!(!text.contains("DROP") && !text.contains("heart"), "{text}");
                assert!(sql.args().contains(&Arg::Text(kiln_search::fold_text(evil))));
                assert!(sql.args().contains(&Arg::Text("rate".into())));
                // Probes on the body; nothing drives.
                assert!(!text.contains("IN (SELECT"), "{text}");
                let tags = match dialect {
                    Dialect::Sqlite => "kiln_strip_tags(",
                    Dialect::Postgres => "regexp_replace(",
                };
                assert!(text.contains(tags), "{text}");
            }
        }
    }

    #[test]
    fn filter_compiles_to_boolean_probes() {
        let evil = "x'); DROP TABLE resource; --";
        let text =
            format!(r#"code eq loinc|1 or (status ne final and not (value-string ew "{evil}"))"#);
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            let s = plan(dialect, &[("_filter", &text)]).select.unwrap();
            let sql = s.text();
            assert!(sql.contains(" OR ") && sql.contains("NOT (") && sql.contains("NOT EXISTS"));
            assert!(sql.contains("substr(a"), "{sql}");
            // Nothing drives: a boolean filter is a probe.
            assert!(!sql.contains("IN (SELECT"), "{sql}");
            assert!(!sql.contains("DROP"), "{sql}");
            assert!(s.args().contains(&Arg::Text(kiln_search::normalize_string(evil))));
        }
        // A chain with a sub-filter drives, and inside it the best part of the AND drives.
        let s = plan(Dialect::Sqlite, &[("_filter", "subject[gender eq male].family sw x")]);
        let sql = s.select.unwrap().text().to_owned();
        assert_eq!(sql.matches("IN (SELECT").count(), 2, "{sql}");
        assert!(sql.contains("EXISTS (SELECT 1 FROM sp_string"), "{sql}");
    }

    #[test]
    fn ordinary_searches_never_name_contained_rows() {
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            let p = plan(dialect, &[("code", "1234-5"), ("date", "ge2020"), ("_sort", "date")]);
            for sql in [p.select.unwrap(), p.count.unwrap()] {
                assert!(!sql.text().contains("cix"), "{}", sql.text());
                assert!(
                    !sql.args().iter().any(|a| matches!(a, Arg::Text(t) if t.starts_with('#')))
                );
            }
        }
        // A chain also looks for contained targets, by `#Type` keys, bound.
        let s = plan(Dialect::Sqlite, &[("subject:Patient.name", "x")]).select.unwrap();
        assert!(s.text().contains("UNION ALL"), "{}", s.text());
        assert!(s.args().contains(&Arg::Text("#Patient".into())));
        assert!(s.text().contains("= '#' || ci"), "{}", s.text());
    }

    #[test]
    fn contained_searches_correlate_on_cix_and_bind_everything() {
        let evil = "x'); DROP TABLE resource; --";
        for contained_type in ["container", "contained"] {
            let pairs = [
                ("family", evil),
                ("gender", "male"),
                ("_contained", "both"),
                ("_containedType", contained_type),
            ];
            let pairs: Vec<(String, String)> =
                pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            let query = kiln_search::parse("Patient", &pairs).unwrap();
            assert!(query.unknown.is_empty());
            let request = SearchRequest { query, after: None, count: 20, total: true };
            let p = plan_search(Dialect::Postgres, "p1", &request).unwrap();
            for sql in [p.select.unwrap(), p.count.unwrap()] {
                let text = sql.text();
                assert!(!text.contains("DROP"), "{text}");
                assert!(text.contains(".cix = c"), "{text}");
                assert!(sql.args().contains(&Arg::Text("#Patient".into())));
            }
        }
        // What is refused.
        for pairs in [
            vec![("_contained", "true"), ("_sort", "family")],
            vec![
                ("_contained", "true"),
                ("_containedType", "contained"),
                ("_revinclude", "Observation:subject"),
            ],
        ] {
            let pairs: Vec<(String, String)> =
                pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            let query = kiln_search::parse("Patient", &pairs).unwrap();
            let request = SearchRequest { query, after: None, count: 20, total: false };
            assert!(plan_search(Dialect::Sqlite, "p1", &request).is_err());
        }
    }

    #[test]
    fn contained_rows_are_keyed_by_hash_type() {
        let o = serde_json::json!({
            "resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "#p"},
            "contained": [{"resourceType": "Patient", "id": "p", "name": [{"family": "T"}]}]
        });
        let entries = kiln_search::extract(&o);
        let rows = index_rows(&entries, "2024-01-02T03:04:05.678Z");
        let keys: Vec<(Option<String>, Cow<str>)> = row_params(&entries).collect();
        assert_eq!(keys.len(), rows.len());
        for (row, (ty, code)) in rows.iter().zip(&keys) {
            assert_eq!(row.param, *code);
            assert_eq!(row.cix != 0, ty.is_some(), "{code}");
        }
        assert!(keys.iter().any(|(t, c)| t.as_deref() == Some("#Patient") && c == "family"));
        let local = rows.iter().find(|r| r.param == "subject").unwrap();
        assert_eq!(local.cix, 0);
        assert_eq!(local.values()[..2], [Val::Null, Val::Text("#p")]);
    }

    #[test]
    fn prefix_successors() {
        assert_eq!(prefix_successor("ab").as_deref(), Some("ac"));
        assert_eq!(prefix_successor("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_successor("\u{D7FF}").as_deref(), Some("\u{E000}"));
        assert_eq!(prefix_successor("\u{10FFFF}"), None);
        assert_eq!(prefix_successor(""), None);
    }

    #[test]
    fn last_updated_comes_from_the_store() {
        let rows = index_rows(&[], "2024-01-02T03:04:05.678Z");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].table, Table::Date);
        assert_eq!(rows[0].param, LAST_UPDATED);
        assert_eq!(rows[0].values().len(), Table::Date.value_columns().len());
        assert!(matches!(rows[0].values()[0], Val::Int(lo) if lo == 1_704_164_645_678));
    }

    #[test]
    fn rows_borrow_their_values_and_number_themselves() {
        let patient = serde_json::json!({
            "resourceType": "Patient", "id": "a",
            "identifier": [{"type": {"coding": [{"system": "s", "code": "MR"}]}, "value": "42"}],
            "name": [{"family": "Bruen"}]
        });
        let entries = kiln_search::extract(&patient);
        let rows = index_rows(&entries, "2024-01-02T03:04:05.678Z");
        assert_eq!(rows.len(), entries.len() + 1, "every entry and _lastUpdated");
        for (i, row) in rows.iter().enumerate() {
            assert_eq!(row.n, i as i64);
            assert_eq!(row.values().len(), row.table.value_columns().len());
            assert_eq!(row.values().len(), row.table.value_types().len());
        }
        let params: Vec<Cow<str>> = row_params(&entries).map(|(_, p)| p).collect();
        assert_eq!(params, rows.iter().map(|r| r.param.clone()).collect::<Vec<_>>());
        let of_type = rows.iter().find(|r| r.param == "identifier:of-type").unwrap();
        assert_eq!(of_type.values(), &[Val::Text("s"), Val::Text("MR"), Val::Text("42")]);
    }
}
