//! The relational store: libsql over a local file or a remote libsql server.
//!
//! [`Store`] owns the connections. A local file gets one writer connection, which
//! serialises write transactions inside the process (SQLite allows one writer at a
//! time anyway, and a shared writer avoids lock hand-offs between connections), and a
//! small pool of reader connections; WAL lets the readers run beside the writer. A
//! remote server gets a fresh connection per operation, since each is a cheap HTTP
//! stream. No two concurrent transactions ever share a connection.

pub mod migrations;

use std::collections::HashMap;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use libsql::{Connection, Database, TransactionBehavior};
use tokio::sync::{Mutex, MutexGuard};

use crate::timestamp;
pub use migrations::CURRENT_VERSION;

/// How long a local connection waits for another process's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Most reader connections open at once. Reads are short, so a request waits for a
/// free one rather than paying for a new connection (which parses the schema).
const READER_POOL: usize = 8;

/// How often the background checkpointer copies the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// WAL frames (pages) past which the checkpointer pauses the writer to empty the WAL.
const WAL_LIMIT_FRAMES: i64 = 32_768;

/// New frames few enough to copy while the writer waits.
const CATCH_UP_FRAMES: i64 = 1_024;

/// Where the database lives, from `DATABASE_URL`.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file on this machine.
    Local(PathBuf),
    /// A libsql server (`sqld`, Turso) over HTTP(S).
    Remote {
        /// `libsql://`, `https://` or `http://` URL.
        url: String,
        /// Sent as a bearer token; empty for a server without auth.
        auth_token: String,
    },
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The auth token stays out of every log line and error message.
        match self {
            Location::Local(path) => f.debug_tuple("Local").field(path).finish(),
            Location::Remote { url, .. } => f.debug_struct("Remote").field("url", url).finish(),
        }
    }
}

impl Location {
    /// Interprets a `DATABASE_URL` value: a `libsql://`, `https://` or `http://` URL
    /// is a remote server, anything else a file path.
    pub fn parse(url: &str, auth_token: Option<String>) -> Location {
        let remote = ["libsql://", "https://", "http://"]
            .iter()
            .any(|scheme| url.starts_with(scheme));
        if remote {
            Location::Remote {
                url: url.to_owned(),
                auth_token: auth_token.unwrap_or_default(),
            }
        } else {
            Location::Local(PathBuf::from(url.strip_prefix("file:").unwrap_or(url)))
        }
    }

    /// True for a remote server.
    pub fn is_remote(&self) -> bool {
        matches!(self, Location::Remote { .. })
    }
}

/// A storage failure. The message names what was being done; the cause chain holds
/// the driver's error and is logged, never sent to clients.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A statement or connection failed.
    #[error("{context}")]
    Database {
        /// What was being done.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: libsql::Error,
    },
    /// The database's schema is not the one this build expects.
    #[error(
        "database schema version is {found}, this build needs {expected}; run `chat-router migrate`"
    )]
    SchemaMismatch {
        /// What the database holds (0 when it was never migrated).
        found: i64,
        /// [`CURRENT_VERSION`].
        expected: i64,
    },
    /// The transaction a write was batched into failed as a whole.
    #[error("committing a batch of writes: {0}")]
    Batch(String),
    /// The store could not be set up on this machine (a folder, a thread).
    #[error("setting up the database: {0}")]
    Setup(String),
    /// A row held a value this build cannot read.
    #[error("unreadable row: {0}")]
    Corrupt(String),
}

/// Adds a context message to a libsql result.
pub trait Context<T> {
    fn context(self, context: &'static str) -> Result<T, StoreError>;
}

impl<T> Context<T> for Result<T, libsql::Error> {
    fn context(self, context: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Database { context, source })
    }
}

/// The database handle shared by every handler of a process.
pub struct Store {
    db: Database,
    location: Location,
    local: Option<Arc<LocalConnections>>,
}

/// A local file's connections. Shared with the tasks that commit batches, so a batch
/// finishes even when the request that started it goes away.
pub(crate) struct LocalConnections {
    pub(crate) writer: Arc<Mutex<LocalConn>>,
    readers: std::sync::Mutex<Vec<LocalConn>>,
    /// One permit per reader connection that may exist.
    reader_permits: Arc<tokio::sync::Semaphore>,
    /// Work for the writer task, which commits what has queued up in one transaction
    /// (group commit): messages, and jobs to mark done.
    pub(crate) ingest: tokio::sync::mpsc::UnboundedSender<crate::ingest::Write>,
    /// Dropping this stops the checkpointer thread.
    _checkpointer: std::sync::mpsc::Sender<()>,
}

impl Store {
    /// Opens the database. A local file is created if missing and migrated; a remote
    /// database is only checked (one query), since migrating it is a deploy step.
    pub async fn open(location: Location) -> Result<Store, StoreError> {
        let store = Store::connect(location).await?;
        if store.location.is_remote() {
            store.check_schema().await?;
        } else {
            store.migrate().await?;
        }
        Ok(store)
    }

    /// Opens the database without migrating or checking it (for `chat-router migrate`).
    pub async fn connect(location: Location) -> Result<Store, StoreError> {
        match &location {
            Location::Local(path) => {
                let db = open_local(path).await?;
                let writer = local_connection(&db).await?;
                // Checkpoints fsync the files; done by the writer they would stall every
                // write behind the disk, so a thread of their own does them instead.
                writer
                    .query("PRAGMA wal_autocheckpoint = 0", ())
                    .await
                    .context("configuring the writer")?;
                let writer = Arc::new(Mutex::new(LocalConn {
                    conn: writer,
                    statements: Statements::default(),
                }));
                let checkpointer = spawn_checkpointer(local_connection(&db).await?, writer.clone());
                let ingest = spawn_writer(writer.clone())?;
                Ok(Store {
                    db,
                    location,
                    local: Some(Arc::new(LocalConnections {
                        writer,
                        readers: std::sync::Mutex::new(Vec::new()),
                        reader_permits: Arc::new(tokio::sync::Semaphore::new(READER_POOL)),
                        ingest,
                        _checkpointer: checkpointer,
                    })),
                })
            }
            Location::Remote { url, auth_token } => {
                let db = libsql::Builder::new_remote(url.clone(), auth_token.clone())
                    .build()
                    .await
                    .context("opening the remote database")?;
                Ok(Store {
                    db,
                    location,
                    local: None,
                })
            }
        }
    }

    /// The local file's connections, for group commit; `None` for a remote server.
    pub(crate) fn local(&self) -> Option<Arc<LocalConnections>> {
        self.local.clone()
    }

    /// Where this store's data lives.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// A connection for statements that change data. Locally this is the one writer
    /// connection, held until the guard drops.
    pub async fn writer(&self) -> Result<Conn<'_>, StoreError> {
        match &self.local {
            Some(local) => Ok(Conn::Writer(local.writer.lock().await)),
            None => Ok(Conn::Owned(
                self.db.connect().context("connecting to the database")?,
            )),
        }
    }

    /// A connection for reads.
    pub async fn reader(&self) -> Result<Conn<'_>, StoreError> {
        match &self.local {
            Some(local) => {
                let permit = local
                    .reader_permits
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the reader semaphore is never closed");
                let pooled = local.readers.lock().expect("reader pool lock").pop();
                let conn = match pooled {
                    Some(conn) => conn,
                    None => LocalConn {
                        conn: local_connection(&self.db).await?,
                        statements: Statements::default(),
                    },
                };
                Ok(Conn::Pooled {
                    conn: Some(conn),
                    pool: &local.readers,
                    _permit: permit,
                })
            }
            None => Ok(Conn::Owned(
                self.db.connect().context("connecting to the database")?,
            )),
        }
    }

    /// The applied schema version (0 for an empty database).
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        let conn = self.reader().await?;
        schema_version(&conn).await
    }

    /// Fails with [`StoreError::SchemaMismatch`] unless the database is at
    /// [`CURRENT_VERSION`].
    pub async fn check_schema(&self) -> Result<i64, StoreError> {
        let found = self.schema_version().await?;
        if found != CURRENT_VERSION {
            return Err(StoreError::SchemaMismatch {
                found,
                expected: CURRENT_VERSION,
            });
        }
        Ok(found)
    }

    /// Applies every pending migration and returns the resulting version. Safe to
    /// run from several processes at once.
    pub async fn migrate(&self) -> Result<i64, StoreError> {
        let conn = self.writer().await?;
        // Every write here takes the write lock first (BEGIN IMMEDIATE), the version
        // table's creation too, so processes migrating at once meet only at BEGIN.
        let tx = begin(&conn, "starting to create the schema version table").await?;
        let created = tx
            .execute(migrations::VERSION_TABLE, ())
            .await
            .context("creating the schema version table")
            .map(|_| ());
        finish(tx, created).await?;
        let mut version = schema_version(&conn).await?;
        for migration in migrations::MIGRATIONS {
            if migration.version <= version {
                continue;
            }
            let tx = begin(&conn, "starting a migration").await?;
            // Nothing is written when another process applied it first.
            let result = apply(&tx, migration).await;
            finish(tx, result).await?;
            version = migration.version;
        }
        if version > CURRENT_VERSION {
            return Err(StoreError::SchemaMismatch {
                found: version,
                expected: CURRENT_VERSION,
            });
        }
        Ok(version)
    }
}

/// Applies one migration inside the caller's transaction. Returns false when another
/// process applied it first.
async fn apply(conn: &Connection, migration: &migrations::Migration) -> Result<bool, StoreError> {
    // Re-read under the write lock: another process may have migrated meanwhile.
    if schema_version(conn).await? >= migration.version {
        return Ok(false);
    }
    for statement in migrations::statements(migration.sql) {
        conn.execute(statement, ())
            .await
            .context("applying a migration")?;
    }
    conn.execute(
        r#"INSERT INTO "SchemaMigration" ("version", "name", "appliedAt") VALUES (?1, ?2, ?3)"#,
        libsql::params![migration.version, migration.name, timestamp::now()],
    )
    .await
    .context("recording a migration")?;
    tracing::info!(
        version = migration.version,
        name = migration.name,
        "applied migration"
    );
    Ok(true)
}

async fn schema_version(conn: &Connection) -> Result<i64, StoreError> {
    let mut rows = conn
        .query(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'SchemaMigration'",
            (),
        )
        .await
        .context("reading the schema version")?;
    let exists: i64 = match rows.next().await.context("reading the schema version")? {
        Some(row) => row.get(0).context("reading the schema version")?,
        None => 0,
    };
    if exists == 0 {
        return Ok(0);
    }
    let mut rows = conn
        .query(
            r#"SELECT coalesce(max("version"), 0) FROM "SchemaMigration""#,
            (),
        )
        .await
        .context("reading the schema version")?;
    match rows.next().await.context("reading the schema version")? {
        Some(row) => row.get(0).context("reading the schema version"),
        None => Ok(0),
    }
}

async fn open_local(path: &Path) -> Result<Database, StoreError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|err| {
            StoreError::Setup(format!("cannot create {}: {err}", parent.display()))
        })?;
    }
    libsql::Builder::new_local(path)
        .build()
        .await
        .context("opening the database file")
}

/// Starts the thread that checkpoints the WAL while the store lives.
///
/// A passive checkpoint never blocks the writer or readers and copies what it can. But
/// while writes never pause, SQLite cannot start the WAL over, and it grows without
/// end; so past [`WAL_LIMIT_FRAMES`] the checkpointer holds the writer for a second,
/// short pass (most frames are copied already), after which the next transaction
/// starts the WAL from the beginning and `journal_size_limit` trims the file.
fn spawn_checkpointer(
    conn: Connection,
    writer: Arc<Mutex<LocalConn>>,
) -> std::sync::mpsc::Sender<()> {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else {
                tracing::error!("cannot start the checkpointer; the WAL grows until restart");
                return;
            };
            // Ends when the store drops its sender.
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(CHECKPOINT_EVERY)
            {
                let result = runtime.block_on(async {
                    let mut frames = checkpoint(&conn, "PASSIVE").await?;
                    if frames > WAL_LIMIT_FRAMES {
                        // Catch up without pausing anyone until little is left, so the
                        // pass that holds the writer is short.
                        for _ in 0..8 {
                            let now = checkpoint(&conn, "PASSIVE").await?;
                            let fresh = now - frames;
                            frames = now;
                            if fresh < CATCH_UP_FRAMES {
                                break;
                            }
                        }
                        // With the writer paused this pass completes, and the next
                        // transaction starts the WAL over.
                        let _writer = writer.lock().await;
                        checkpoint(&conn, "PASSIVE").await?;
                    }
                    Ok::<_, libsql::Error>(())
                });
                if let Err(err) = result {
                    tracing::warn!(cause = %err, "checkpoint failed");
                }
            }
        });
    if let Err(err) = spawned {
        tracing::error!(cause = %err, "cannot start the checkpointer; the WAL grows until restart");
    }
    stop
}

/// Starts the thread that commits ingested messages and finished jobs (see
/// [`crate::ingest`]). SQLite
/// blocks while it writes; on a thread of its own it never holds up the async
/// workers that serve requests. The thread ends when the store drops its sender.
fn spawn_writer(
    writer: Arc<Mutex<LocalConn>>,
) -> Result<tokio::sync::mpsc::UnboundedSender<crate::ingest::Write>, StoreError> {
    let (ingest, queue) = tokio::sync::mpsc::unbounded_channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|err| StoreError::Setup(format!("cannot start the writer: {err}")))?;
    std::thread::Builder::new()
        .name("sqlite-writer".into())
        .spawn(move || runtime.block_on(crate::ingest::run_writer(writer, queue)))
        .map_err(|err| StoreError::Setup(format!("cannot start the writer: {err}")))?;
    Ok(ingest)
}

/// Runs one checkpoint; returns the WAL's size in frames before it.
async fn checkpoint(conn: &Connection, mode: &str) -> Result<i64, libsql::Error> {
    let mut rows = conn
        .query(&format!("PRAGMA wal_checkpoint({mode})"), ())
        .await?;
    let mut frames = 0;
    while let Some(row) = rows.next().await? {
        frames = row.get::<i64>(1)?;
    }
    Ok(frames)
}

/// Opens a local connection with the settings every connection needs.
async fn local_connection(db: &Database) -> Result<Connection, StoreError> {
    let conn = db.connect().context("connecting to the database file")?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .context("setting the busy timeout")?;
    // WAL lets readers run beside the writer; NORMAL syncs at checkpoints, which keeps
    // every committed transaction across a process crash (not across power loss).
    // Small pages (applied only when the file is created) matter because each message
    // lands on a few random leaves of the UUID indexes: every commit writes those
    // whole pages to the WAL, and 1 KiB pages cut that traffic, and the checkpoints
    // that copy it, to a quarter of the default.
    for pragma in [
        "PRAGMA page_size = 1024",
        "PRAGMA journal_mode = WAL",
        "PRAGMA synchronous = NORMAL",
        "PRAGMA foreign_keys = ON",
        "PRAGMA journal_size_limit = 134217728",
        "PRAGMA mmap_size = 268435456",
    ] {
        let mut rows = conn
            .query(pragma, ())
            .await
            .context("configuring a connection")?;
        while rows
            .next()
            .await
            .context("configuring a connection")?
            .is_some()
        {}
    }
    Ok(conn)
}

/// A local connection (the writer, or a pooled reader) and its prepared statements.
pub struct LocalConn {
    pub(crate) conn: Connection,
    pub(crate) statements: Statements,
}

/// Statements prepared once on a connection and reused. Parsing and planning our SQL
/// costs more than running most of it, and the writer runs the same few statements
/// for every message and job.
#[derive(Default)]
pub struct Statements(std::sync::Mutex<HashMap<&'static str, Arc<libsql::Statement>>>);

impl Statements {
    /// Resets every statement, so none keeps a read snapshot open after its rows
    /// were left unread.
    pub(crate) fn reset_all(&self) {
        for statement in self.0.lock().expect("statement cache lock").values() {
            statement.reset();
        }
    }
}

/// Runs statements on a connection (or a transaction on it), through the
/// connection's prepared statements when it has them.
///
/// A reused statement is reset before each run, and all of them when the writer is
/// released, so none holds a read snapshot open between uses.
#[derive(Clone, Copy)]
pub struct Sql<'a> {
    conn: &'a Connection,
    statements: Option<&'a Statements>,
}

impl<'a> Sql<'a> {
    /// Statements on `conn`, prepared through `statements` when given.
    pub fn new(conn: &'a Connection, statements: Option<&'a Statements>) -> Sql<'a> {
        Sql { conn, statements }
    }

    /// The connection.
    pub fn conn(&self) -> &'a Connection {
        self.conn
    }

    async fn prepared(
        &self,
        sql: &'static str,
    ) -> Result<Option<Arc<libsql::Statement>>, libsql::Error> {
        let Some(statements) = self.statements else {
            return Ok(None);
        };
        let found = statements
            .0
            .lock()
            .expect("statement cache lock")
            .get(sql)
            .cloned();
        if let Some(statement) = found {
            statement.reset();
            return Ok(Some(statement));
        }
        let statement = Arc::new(self.conn.prepare(sql).await?);
        statements
            .0
            .lock()
            .expect("statement cache lock")
            .insert(sql, statement.clone());
        Ok(Some(statement))
    }

    /// Runs a statement that returns rows.
    pub async fn query(
        &self,
        sql: &'static str,
        params: impl libsql::params::IntoParams,
    ) -> Result<Rows, libsql::Error> {
        match self.prepared(sql).await? {
            Some(statement) => {
                let rows = statement.query(params).await?;
                Ok(Rows {
                    rows,
                    statement: Some(statement),
                })
            }
            None => Ok(Rows {
                rows: self.conn.query(sql, params).await?,
                statement: None,
            }),
        }
    }

    /// Runs a statement that returns no rows; returns the rows it changed.
    pub async fn execute(
        &self,
        sql: &'static str,
        params: impl libsql::params::IntoParams,
    ) -> Result<u64, libsql::Error> {
        match self.prepared(sql).await? {
            Some(statement) => {
                let changed = statement.execute(params).await.map(|n| n as u64);
                statement.reset();
                changed
            }
            None => self.conn.execute(sql, params).await,
        }
    }
}

/// The rows of a [`Sql::query`]. A reused statement is reset when they drop, so it
/// is finished before the transaction ends; read every value before that.
pub struct Rows {
    rows: libsql::Rows,
    statement: Option<Arc<libsql::Statement>>,
}

impl Rows {
    /// The next row, if any.
    pub async fn next(&mut self) -> Result<Option<libsql::Row>, libsql::Error> {
        self.rows.next().await
    }
}

impl Drop for Rows {
    fn drop(&mut self) {
        if let Some(statement) = &self.statement {
            statement.reset();
        }
    }
}

/// A connection borrowed from the [`Store`].
pub enum Conn<'a> {
    /// The local writer, held exclusively.
    Writer(MutexGuard<'a, LocalConn>),
    /// A local reader, returned to the pool on drop.
    Pooled {
        /// Always `Some` until dropped.
        conn: Option<LocalConn>,
        /// Where it goes back.
        pool: &'a std::sync::Mutex<Vec<LocalConn>>,
        /// Released after the connection is back in the pool.
        _permit: tokio::sync::OwnedSemaphorePermit,
    },
    /// A remote connection of its own.
    Owned(Connection),
}

impl Deref for Conn<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        match self {
            Conn::Writer(guard) => &guard.conn,
            Conn::Pooled { conn, .. } => &conn.as_ref().expect("pooled connection").conn,
            Conn::Owned(conn) => conn,
        }
    }
}

impl Conn<'_> {
    /// Its prepared statements: a local connection's; none for a remote one.
    pub fn statements(&self) -> Option<&Statements> {
        match self {
            Conn::Writer(guard) => Some(&guard.statements),
            Conn::Pooled { conn, .. } => conn.as_ref().map(|c| &c.statements),
            Conn::Owned(_) => None,
        }
    }

    /// Statements on this connection.
    pub fn sql(&self) -> Sql<'_> {
        Sql::new(self, self.statements())
    }

    /// Statements in `tx`, a transaction on this connection.
    pub fn sql_in<'t>(&'t self, tx: &'t libsql::Transaction) -> Sql<'t> {
        Sql::new(tx, self.statements())
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Conn::Writer(guard) = self {
            guard.statements.reset_all();
        }
        if let Conn::Pooled { conn, pool, .. } = self
            && let Some(conn) = conn.take()
        {
            conn.statements.reset_all();
            pool.lock().expect("reader pool lock").push(conn);
        }
    }
}

/// Starts a write transaction that takes the write lock at once (`BEGIN IMMEDIATE`),
/// so a transaction that reads before it writes never fails to upgrade its lock.
pub(crate) async fn begin(
    conn: &Connection,
    context: &'static str,
) -> Result<libsql::Transaction, StoreError> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .await
        .context(context)
}

/// Commits on success and rolls back on failure.
pub(crate) async fn finish<T, E>(tx: libsql::Transaction, result: Result<T, E>) -> Result<T, E>
where
    E: From<StoreError>,
{
    match result {
        Ok(value) => {
            tx.commit().await.context("committing")?;
            Ok(value)
        }
        Err(err) => {
            // A failed rollback leaves nothing to do: the transaction ends with the
            // connection's next BEGIN or close either way.
            let _ = tx.rollback().await;
            Err(err)
        }
    }
}

/// Reads a required text column.
pub(crate) fn text(row: &libsql::Row, index: i32) -> Result<String, StoreError> {
    row.get::<String>(index).context("reading a row")
}
