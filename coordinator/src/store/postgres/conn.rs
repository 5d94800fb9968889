//! One PostgreSQL connection as the store uses it: a blocking client kept off tokio's threads,
//! its prepared statements cached, transactions that either commit or roll back, and a new
//! connection after the old one broke.
//!
//! The blocking `postgres` client drives its socket with a runtime of its own, which must not
//! run on a thread that is already inside tokio's (a coordinator's async tests call the store
//! directly). A call made there runs on a scoped thread of its own; every other call (the
//! committer and readers on tokio's blocking pool, the CLI) runs where it is.

use std::collections::HashMap;

use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement};

use crate::error::{Error, Result};

/// Parameters of one statement.
pub(super) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Runs `f` where a blocking PostgreSQL call may run: here, or on a scoped thread when this
/// thread is inside tokio's runtime.
pub(super) fn off_runtime<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// A store URL without its password, for logs and errors.
pub(super) fn redact(url: &str) -> String {
    match url.parse::<postgres::Config>() {
        Ok(c) => {
            let host = c
                .get_hosts()
                .iter()
                .map(|h| match h {
                    postgres::config::Host::Tcp(name) => name.clone(),
                    postgres::config::Host::Unix(path) => path.display().to_string(),
                })
                .collect::<Vec<_>>()
                .join(",");
            let port = c.get_ports().first().map(|p| format!(":{p}")).unwrap_or_default();
            format!(
                "postgres://{}@{host}{port}/{}",
                c.get_user().unwrap_or(""),
                c.get_dbname().unwrap_or("")
            )
        }
        Err(_) => "postgres://(unparsable URL)".to_owned(),
    }
}

/// A connection and its prepared statements.
pub(super) struct Conn {
    url: String,
    client: Option<Client>,
    statements: HashMap<String, Statement>,
    /// How many times it connected: a session-scoped state (a lock, LISTEN) held since a
    /// generation is gone once the generation changed.
    generation: u64,
    /// A transaction was begun and never ended: a panic unwound through it. The next one rolls
    /// it back first.
    open: bool,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("url", &redact(&self.url)).finish()
    }
}

impl Conn {
    /// Connects to `url` (a `postgres://` URL or a key=value string).
    pub(super) fn connect(url: &str) -> Result<Conn> {
        let mut conn = Conn {
            url: url.to_owned(),
            client: None,
            statements: HashMap::new(),
            generation: 0,
            open: false,
        };
        off_runtime(|| conn.reconnect())?;
        Ok(conn)
    }

    fn reconnect(&mut self) -> Result<()> {
        let config: postgres::Config = self.url.parse().map_err(|e| Error::Database {
            context: format!("store URL {}", redact(&self.url)),
            source: e,
        })?;
        let mut config = config;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(10));
        }
        config.application_name("convsweep-coordinator");
        let client = config.connect(NoTls).map_err(|e| Error::Database {
            context: format!("cannot connect to {}", redact(&self.url)),
            source: e,
        })?;
        self.statements.clear();
        self.client = Some(client);
        self.generation += 1;
        Ok(())
    }

    /// Runs `f` over a session of this connection, connecting again first when the last
    /// connection broke.
    pub(super) fn run<R: Send>(&mut self, f: impl FnOnce(&mut Session<'_>) -> Result<R> + Send) -> Result<R> {
        off_runtime(move || {
            if self.client.as_ref().is_none_or(|c| c.is_closed()) {
                self.reconnect()?;
            }
            let Some(client) = self.client.as_mut() else {
                return Err(Error::Io(std::io::Error::other("no database connection")));
            };
            f(&mut Session {
                client,
                statements: &mut self.statements,
                generation: self.generation,
            })
        })
    }

    /// Runs `f` in one transaction (`begin` starts it), committed when `f` returns `Ok` and
    /// rolled back otherwise.
    pub(super) fn transaction<R: Send>(
        &mut self,
        begin: &'static str,
        f: impl FnOnce(&mut Session<'_>) -> Result<R> + Send,
    ) -> Result<R> {
        let left_open = std::mem::replace(&mut self.open, true);
        let done = self.run(move |s| {
            if left_open {
                s.batch("ROLLBACK")?;
            }
            s.batch(begin)?;
            match f(s) {
                Ok(r) => {
                    s.batch("COMMIT")?;
                    Ok(r)
                }
                Err(e) => {
                    // A broken connection rolls back by itself.
                    let _ = s.client.batch_execute("ROLLBACK");
                    Err(e)
                }
            }
        });
        self.open = false;
        done
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Closing the client blocks on its own runtime: not on one of tokio's threads.
        let client = self.client.take();
        off_runtime(move || drop(client));
    }
}

/// A connection in use: statements prepared once per connection.
pub(super) struct Session<'a> {
    client: &'a mut Client,
    statements: &'a mut HashMap<String, Statement>,
    generation: u64,
}

impl Session<'_> {
    /// Which connection of its [`Conn`] this is (see [`Conn::generation`]).
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    fn statement(&mut self, sql: &str) -> Result<Statement> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql).map_err(|e| Error::database(e, sql))?;
        self.statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    /// Runs SQL without parameters (several statements allowed).
    pub(super) fn batch(&mut self, sql: &str) -> Result<()> {
        self.client.batch_execute(sql).map_err(|e| Error::database(e, sql))
    }

    /// Runs a statement; returns the rows it changed.
    pub(super) fn exec(&mut self, sql: &str, params: Params<'_>) -> Result<u64> {
        let s = self.statement(sql)?;
        self.client.execute(&s, params).map_err(|e| Error::database(e, sql))
    }

    /// Every row of a query.
    pub(super) fn rows(&mut self, sql: &str, params: Params<'_>) -> Result<Vec<Row>> {
        let s = self.statement(sql)?;
        self.client.query(&s, params).map_err(|e| Error::database(e, sql))
    }

    /// The row of a query that returns at most one.
    pub(super) fn opt(&mut self, sql: &str, params: Params<'_>) -> Result<Option<Row>> {
        let s = self.statement(sql)?;
        self.client.query_opt(&s, params).map_err(|e| Error::database(e, sql))
    }

    /// Waits up to `timeout` for the first notification of the channels this session listens
    /// to, then takes the ones already there too (at most `max`).
    pub(super) fn notifications(&mut self, timeout: std::time::Duration, max: usize) -> Result<Vec<String>> {
        use postgres::fallible_iterator::FallibleIterator;
        let context = |e| Error::database(e, "wait for notifications");
        let mut n = self.client.notifications();
        let mut out = Vec::new();
        let first = n.timeout_iter(timeout).next().map_err(context)?;
        if let Some(first) = first {
            out.push(first.payload().to_owned());
            let mut more = n.iter();
            while out.len() < max {
                match more.next().map_err(context)? {
                    Some(m) => out.push(m.payload().to_owned()),
                    None => break,
                }
            }
        }
        Ok(out)
    }

    /// The row of a query that returns exactly one.
    pub(super) fn one(&mut self, sql: &str, params: Params<'_>) -> Result<Row> {
        let s = self.statement(sql)?;
        self.client.query_one(&s, params).map_err(|e| Error::database(e, sql))
    }
}

/// A stored count or number that must fit a `u32`; anything else is corrupt data.
pub(super) fn u32_of(n: i64, what: &str) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::Corrupt(format!("stored {what} {n} is out of range")))
}
