//! The SQL a search compiles to and how the database runs it: the statement Kiln would send
//! for `Type?query` (page, and count when the query asks for a total), then SQLite's `EXPLAIN
//! QUERY PLAN` or PostgreSQL's `EXPLAIN (ANALYZE, BUFFERS)`, and the time of a few executions.
//! Read-only: it opens the database of a stopped or running server next to it.
//!
//! ```sh
//! cargo run --release -p kiln-bench --example explain -- --db kiln-data/kiln.db \
//!     'Observation?code=http://loinc.org|8302-2&_summary=count'
//! cargo run --release -p kiln-bench --example explain -- \
//!     --database-url postgres://postgres@127.0.0.1:5432/test 'Patient?name=bru'
//! ```
//!
//! The project is the one holding the most resources unless `--project` names it. Parameters
//! are the built-in ones (a project's own SearchParameters are not loaded).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use kiln_search::{Registry, Summary, Total};
use kiln_store::SearchRequest;
use kiln_store::sql::{Arg, Dialect, Sql, plan_search};

#[derive(Parser, Debug)]
struct Cli {
    /// SQLite database file (`<data dir>/kiln.db`).
    #[arg(long, conflicts_with = "database_url")]
    db: Option<PathBuf>,
    /// PostgreSQL database instead.
    #[arg(long)]
    database_url: Option<String>,
    /// Project id [default: the one with the most resources].
    #[arg(long)]
    project: Option<String>,
    /// Executions timed per statement.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// The search, as in a URL after `/fhir/R4/`: `Type?name=value&…` (values percent-encoded
    /// or not).
    search: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (ty, query) = cli.search.split_once('?').unwrap_or((&cli.search, ""));
    let pairs: Vec<(String, String)> =
        reqwest::Url::parse(&format!("http://kiln/?{query}"))?.query_pairs().into_owned().collect();
    let parsed = Registry::base().parse(ty, &pairs).map_err(|issues| {
        anyhow::anyhow!(
            "the search does not parse: {}",
            issues.iter().map(|i| i.diagnostics.clone()).collect::<Vec<_>>().join("; ")
        )
    })?;
    let total = parsed.summary == Some(Summary::Count)
        || matches!(parsed.total, Some(Total::Accurate | Total::Estimate));
    let count = if parsed.summary == Some(Summary::Count) { 0 } else { parsed.count as usize };
    let request = SearchRequest { query: parsed, after: None, count, total };
    match (&cli.db, &cli.database_url) {
        (Some(db), _) => sqlite(&cli, db, &request),
        (None, Some(url)) => postgres(&cli, url, &request),
        (None, None) => bail!("give --db or --database-url"),
    }
}

fn statements(
    dialect: Dialect,
    project: &str,
    request: &SearchRequest,
) -> anyhow::Result<Vec<(&'static str, Sql)>> {
    let plan = plan_search(dialect, project, request).map_err(|e| anyhow::anyhow!("{}", e.0))?;
    let (estimate, probing) = match plan.probing {
        Some(p) => (Some(p.estimate), Some(p.select)),
        None => (None, None),
    };
    Ok([
        ("count", plan.count),
        ("page", plan.select),
        ("probing estimate", estimate),
        ("page by probing (when the estimate reaches the threshold)", probing),
    ]
    .into_iter()
    .filter_map(|(name, sql)| sql.map(|s| (name, s)))
    .collect())
}

fn sqlite(cli: &Cli, db: &PathBuf, request: &SearchRequest) -> anyhow::Result<()> {
    use rusqlite::types::Value;
    let conn = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {}", db.display()))?;
    let project: String = match &cli.project {
        Some(p) => p.clone(),
        None => conn.query_row(
            "SELECT project FROM resource GROUP BY project ORDER BY COUNT(*) DESC LIMIT 1",
            [],
            |r| r.get(0),
        )?,
    };
    for (name, sql) in statements(Dialect::Sqlite, &project, request)? {
        let args: Vec<Value> = sql
            .args()
            .iter()
            .map(|a| match a {
                Arg::Int(i) => Value::Integer(*i),
                Arg::Float(f) => Value::Real(*f),
                Arg::Text(t) => Value::Text(t.clone()),
                Arg::NullText => Value::Null,
            })
            .collect();
        println!("-- {name}\n{}\n", sql.text());
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {}", sql.text()))?;
        let rows = stmt.query_map(rusqlite::params_from_iter(&args), |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(3)?))
        })?;
        // Indent each step under its parent.
        let mut depth: Vec<(i64, usize)> = Vec::new();
        for row in rows {
            let (id, parent, detail) = row?;
            let level = depth.iter().find(|(i, _)| *i == parent).map_or(0, |(_, l)| l + 1);
            depth.push((id, level));
            println!("{}{detail}", "  ".repeat(level));
        }
        let mut stmt = conn.prepare(sql.text())?;
        let mut times = Vec::new();
        let mut n = 0;
        for _ in 0..cli.runs {
            let t = Instant::now();
            n = stmt.query(rusqlite::params_from_iter(&args))?.mapped(|_| Ok(())).count();
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        report(name, n, &mut times);
    }
    Ok(())
}

fn postgres(cli: &Cli, url: &str, request: &SearchRequest) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        let project: String = match &cli.project {
            Some(p) => p.clone(),
            None => client
                .query_one(
                    "SELECT project FROM resource GROUP BY project ORDER BY COUNT(*) DESC LIMIT 1",
                    &[],
                )
                .await?
                .get(0),
        };
        for (name, sql) in statements(Dialect::Postgres, &project, request)? {
            let owned: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> = sql
                .args()
                .iter()
                .map(|a| -> Box<dyn tokio_postgres::types::ToSql + Sync + Send> {
                    match a {
                        Arg::Int(i) => Box::new(*i),
                        Arg::Float(f) => Box::new(*f),
                        Arg::Text(t) => Box::new(t.clone()),
                        Arg::NullText => Box::new(None::<String>),
                    }
                })
                .collect();
            let args: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = owned
                .iter()
                .map(|b| b.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            println!("-- {name}\n{}\n", sql.text());
            let plan =
                client.query(&format!("EXPLAIN (ANALYZE, BUFFERS) {}", sql.text()), &args).await?;
            for row in plan {
                println!("{}", row.get::<_, String>(0));
            }
            let stmt = client.prepare(sql.text()).await?;
            let mut times = Vec::new();
            let mut n = 0;
            for _ in 0..cli.runs {
                let t = Instant::now();
                n = client.query(&stmt, &args).await?.len();
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            report(name, n, &mut times);
        }
        Ok(())
    })
}

fn report(name: &str, rows: usize, times: &mut [f64]) {
    times.sort_by(f64::total_cmp);
    let median = times.get(times.len() / 2).copied().unwrap_or(0.0);
    println!(
        "{name}: {rows} rows; median {median:.2} ms over {} runs (min {:.2}, max {:.2})\n",
        times.len(),
        times.first().copied().unwrap_or(0.0),
        times.last().copied().unwrap_or(0.0)
    );
}
