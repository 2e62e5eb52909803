//! A PostgreSQL database of a test's own for the process tests: created fresh (dropping a
//! leftover of the same name), dropped at the end. The server comes from
//! `KILN_TEST_DATABASE_URL`, default the local `test` database. When nothing answers, the test
//! is skipped with a printed reason, except under `CI=true`, where PostgreSQL is required.

const ADMIN_URL_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A database of our own.
pub struct Database {
    pub admin_url: String,
    pub name: String,
}

impl Database {
    /// Creates `kiln_<tag>_<pid>`, or `None` (after printing why) when PostgreSQL is not
    /// reachable outside CI.
    pub async fn create(tag: &str) -> Option<Database> {
        let admin_url = std::env::var("KILN_TEST_DATABASE_URL")
            .unwrap_or_else(|_| ADMIN_URL_DEFAULT.to_owned());
        let name = format!("kiln_{tag}_{}", std::process::id());
        match admin(
            &admin_url,
            &[&format!("DROP DATABASE IF EXISTS {name}"), &format!("CREATE DATABASE {name}")],
        )
        .await
        {
            Ok(()) => Some(Database { admin_url, name }),
            Err(e) => {
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("PostgreSQL at {admin_url} is required under CI=true: {e}");
                }
                eprintln!("SKIP: PostgreSQL at {admin_url} is not reachable ({e})");
                None
            }
        }
    }

    /// The URL of this database: the admin URL with the database name replaced.
    pub fn url(&self) -> String {
        let (head, _) = self.admin_url.rsplit_once('/').unwrap();
        format!("{head}/{}", self.name)
    }

    /// Drops the database, disconnecting whoever is still connected.
    pub async fn drop_database(&self) {
        let _ = admin(
            &self.admin_url,
            &[&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)],
        )
        .await;
    }
}

/// Runs statements on the server at `url`, each on its own (no transaction around them).
pub async fn admin(url: &str, statements: &[&str]) -> Result<(), tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let task = tokio::spawn(connection);
    for sql in statements {
        client.batch_execute(sql).await?;
    }
    drop(client);
    let _ = task.await;
    Ok(())
}
