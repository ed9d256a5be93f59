//! The `chat-router` binary as a user runs it: admin commands, `serve --demo`, and
//! what survives a shutdown or a crash.

use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::Duration;

use serde_json::{Value, json};

#[path = "../../shared/tests/common/mod.rs"]
mod common;

const BIN: &str = env!("CARGO_BIN_EXE_chat-router");

fn chat_router(db: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("DATABASE_URL", db)
        .env("RUST_LOG", "warn")
        .output()
        .expect("runs chat-router")
}

fn json_out(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON on stdout")
}

fn demo_file() -> String {
    format!("{}/../tenants/demo.json", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn admin_commands_print_json_and_fail_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("admin.db");

    assert_eq!(
        json_out(&chat_router(&db, &["migrate"])),
        json!({"schemaVersion": chat_router::store::CURRENT_VERSION})
    );
    assert_eq!(
        json_out(&chat_router(&db, &["migrate"])),
        json!({"schemaVersion": chat_router::store::CURRENT_VERSION})
    );

    let business = json_out(&chat_router(
        &db,
        &["business", "create", "--config", &demo_file()],
    ));
    let id = business["id"].as_str().unwrap();
    assert!(business["webhookKey"].as_str().unwrap().starts_with("crk_"));

    let agent = json_out(&chat_router(
        &db,
        &[
            "agent",
            "create",
            "--business",
            id,
            "--name",
            "Ann",
            "--department",
            "Billing",
            "--capacity",
            "3",
        ],
    ));
    assert!(agent["token"].as_str().unwrap().starts_with("cra_"));
    let agent_id = agent["id"].as_str().unwrap();

    let rotated = json_out(&chat_router(&db, &["key", "rotate", "--business", id]));
    assert_ne!(rotated["webhookKey"], business["webhookKey"]);
    let token = json_out(&chat_router(&db, &["agent", "token", "--agent", agent_id]));
    assert_ne!(token["token"], agent["token"]);
    let revoked = json_out(&chat_router(&db, &["agent", "revoke", "--agent", agent_id]));
    assert_eq!(revoked["revoked"], true);

    // Errors: stderr, non-zero, nothing on stdout.
    let unknown_department = vec![
        "agent",
        "create",
        "--business",
        id,
        "--name",
        "Bo",
        "--department",
        "Nope",
    ];
    for args in [
        unknown_department.clone(),
        vec!["agent", "revoke", "--agent", "no-such-agent"],
        vec!["key", "rotate", "--business", "no-such-business"],
        vec!["business", "create", "--config", "/no/such/file.json"],
    ] {
        let output = chat_router(&db, &args);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(output.stdout.is_empty(), "{args:?} printed to stdout");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
    }
    let output = chat_router(&db, &unknown_department);
    assert!(String::from_utf8_lossy(&output.stderr).contains("department \"Nope\""));
}

struct Server {
    child: Child,
    ready: Value,
}

impl Server {
    fn start(db: &Path) -> Server {
        let (child, ready) = common::spawn_serve(BIN, db, &["--demo"]);
        Server { child, ready }
    }

    fn url(&self) -> String {
        format!("http://{}", self.ready["listening"].as_str().unwrap())
    }

    fn business(&self) -> (&str, &str) {
        (
            self.ready["demo"]["businessId"].as_str().unwrap(),
            self.ready["demo"]["webhookKey"].as_str().unwrap(),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Posts messages from several tasks until `stop` fires; returns the acknowledged
/// message ids.
async fn post_until(
    server_url: String,
    business: String,
    key: String,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<String> {
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let (client, url, business, key, stop) = (
            client.clone(),
            server_url.clone(),
            business.clone(),
            key.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0;
            while !*stop.borrow() {
                i += 1;
                let body = json!({"businessId": business, "message": format!("load {worker}-{i}")});
                let sent = client
                    .post(format!("{url}/webhook/message"))
                    .bearer_auth(&key)
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await;
                // Errors are expected once the server is gone.
                let Ok(response) = sent else { break };
                if response.status() == 202
                    && let Ok(body) = response.json::<Value>().await
                {
                    acked.push(body["messageId"].as_str().unwrap().to_owned());
                }
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(task.await.unwrap());
    }
    acked
}

fn stored_ids(db: &Path) -> std::collections::HashSet<String> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = chat_router::store::Store::open(chat_router::store::Location::Local(db.into()))
            .await
            .unwrap();
        let conn = store.reader().await.unwrap();
        let mut rows = conn
            .query(r#"SELECT "id" FROM "Message""#, ())
            .await
            .unwrap();
        let mut ids = std::collections::HashSet::new();
        while let Some(row) = rows.next().await.unwrap() {
            ids.insert(row.get::<String>(0).unwrap());
        }
        ids
    })
}

fn acknowledged_survive(kill: impl FnOnce(&mut Child)) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("serve.db");
    let mut server = Server::start(&db);
    let (business, key) = server.business();
    let (business, key) = (business.to_owned(), key.to_owned());

    let rt = tokio::runtime::Runtime::new().unwrap();
    let acked = rt.block_on(async {
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let load = tokio::spawn(post_until(server.url(), business, key, stop));
        tokio::time::sleep(Duration::from_millis(700)).await;
        kill(&mut server.child);
        let _ = server.child.wait();
        // The workers may all have stopped already.
        let _ = stop_tx.send(true);
        load.await.unwrap()
    });
    drop(rt);
    assert!(
        acked.len() > 20,
        "only {} messages were acknowledged",
        acked.len()
    );

    let stored = stored_ids(&db);
    let lost: Vec<_> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(lost.is_empty(), "{} acknowledged messages lost", lost.len());
    acked.len()
}

#[test]
fn acknowledged_messages_survive_sigterm_and_the_server_exits_cleanly() {
    acknowledged_survive(|child| {
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = child.wait().unwrap();
        assert!(exit.success(), "serve exited with {exit:?} on SIGTERM");
    });
}

#[test]
fn acknowledged_messages_survive_a_crash() {
    // SIGKILL: no shutdown code runs at all.
    acknowledged_survive(|child| child.kill().unwrap());
}

#[test]
fn serve_demo_creates_the_tenant_once_and_reissues_its_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("demo.db");
    let first = Server::start(&db);
    let (business, key) = first.business();
    let (business, key) = (business.to_owned(), key.to_owned());
    assert_eq!(first.ready["demo"]["agents"].as_array().unwrap().len(), 4);
    assert!(first.ready["curl"].as_str().unwrap().contains(&key));
    drop(first);

    let second = Server::start(&db);
    let (again, new_key) = second.business();
    assert_eq!(again, business);
    assert_ne!(new_key, key);

    // The printed curl command works as printed.
    let output = Command::new("sh")
        .arg("-c")
        .arg(format!("{} -s", second.ready["curl"].as_str().unwrap()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("202 Accepted"), "{text}");
    assert!(text.contains("\"status\":\"Received\""), "{text}");
}

#[test]
fn eval_prints_the_report_as_json() {
    let fixtures = format!("{}/../shared/tests/fixtures", env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(BIN)
        .args([
            "eval",
            "--data",
            &format!("{fixtures}/banking77-subset.csv"),
            "--departments",
            &format!("{fixtures}/banking77-departments.json"),
            "--folds",
            "3",
            "--seed",
            "7",
            "--json",
        ])
        .output()
        .unwrap();
    let report = json_out(&output);
    for field in [
        "intent_accuracy",
        "department_accuracy",
        "macro_f1",
        "train_ms",
        "latency_us_p50",
        "latency_us_p99",
        "n_train",
        "n_test",
    ] {
        assert!(report[field].is_number(), "{field} missing: {report}");
    }
    assert_eq!(report["n_test"], 1155);
    // 15 examples per intent: far from full data, but far above chance (1.3 %).
    assert!(
        report["intent_accuracy"].as_f64().unwrap() > 0.5,
        "{report}"
    );
    assert!(
        report["department_accuracy"].as_f64().unwrap() > 0.7,
        "{report}"
    );

    let output = Command::new(BIN)
        .args(["eval", "--data", "/no/such.csv"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).starts_with("error: "));
}

#[test]
fn callback_verify_accepts_a_signed_body_and_refuses_a_tampered_or_old_one() {
    use chat_router::callback::signature::sign;

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("unused.db");
    let secret = chat_router::callback::secret::generate();
    let body = br#"{"event":"message","deliveryId":"d-1","message":{"content":"Hi"}}"#;
    let body_file = dir.path().join("body.json");
    std::fs::write(&body_file, body).unwrap();
    let tampered_file = dir.path().join("tampered.json");
    std::fs::write(
        &tampered_file,
        br#"{"event":"message","deliveryId":"d-1","message":{"content":"Ha"}}"#,
    )
    .unwrap();
    let verify = |header: &str, body: &Path, extra: &[&str]| {
        let mut args = vec![
            "callback",
            "verify",
            "--secret",
            secret.expose(),
            "--signature",
            header,
            "--body",
            body.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        chat_router(&db, &args)
    };
    let refused = |output: Output, reason: &str| {
        assert!(!output.status.success(), "{reason}: accepted");
        assert!(output.stdout.is_empty(), "{reason}: printed to stdout");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.starts_with("error: "), "{stderr}");
        assert!(stderr.contains(reason), "wanted {reason:?}: {stderr}");
        assert!(!stderr.contains(secret.expose()), "the secret was printed");
    };

    let now = chrono::Utc::now().timestamp();
    let header = sign(secret.signing_key(), now, body);
    assert_eq!(
        json_out(&verify(&header, &body_file, &[])),
        json!({"valid": true, "timestamp": now})
    );

    refused(verify(&header, &tampered_file, &[]), "signature mismatch");
    let other = chat_router::callback::secret::generate();
    refused(
        verify(&sign(other.signing_key(), now, body), &body_file, &[]),
        "signature mismatch",
    );
    refused(
        verify("t=now,v1=abc", &body_file, &[]),
        "malformed signature header",
    );
    refused(
        verify(&header, &dir.path().join("missing.json"), &[]),
        "reading",
    );

    // Ten minutes old: outside the default five, inside a tolerance of an hour.
    let old = sign(secret.signing_key(), now - 600, body);
    refused(
        verify(&old, &body_file, &[]),
        "beyond the tolerance of 300 seconds",
    );
    assert_eq!(
        json_out(&verify(&old, &body_file, &["--tolerance", "3600"]))["valid"],
        true
    );

    // Checking a signature needs no database.
    assert!(!db.exists());
}

/// Runs `chat-router` with extra environment variables.
fn chat_router_env(db: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("DATABASE_URL", db)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .output()
        .expect("runs chat-router")
}

#[tokio::test(flavor = "multi_thread")]
async fn routing_commands_make_agents_available_transfer_close_and_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("routing.db");
    let business = json_out(&chat_router(
        &db,
        &["business", "create", "--config", &demo_file()],
    ));
    let business = business["id"].as_str().unwrap().to_owned();
    let agent = |name: &str, department: &str| {
        json_out(&chat_router(
            &db,
            &[
                "agent",
                "create",
                "--business",
                &business,
                "--name",
                name,
                "--department",
                department,
            ],
        ))["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (ann, bea) = (agent("Ann", "Support"), agent("Bea", "Billing"));

    // A message stored by the webhook whose hand-off to the queue never happened.
    let store = chat_router::store::Store::open(chat_router::store::Location::Local(db.clone()))
        .await
        .unwrap();
    let message = chat_router::ingest::NewMessage {
        business_id: business.clone(),
        content: "The app crashes when I log in".into(),
        customer_id: Some("ana".into()),
        customer_name: None,
        channel: None,
        idempotency: None,
    };
    let chat_router::ingest::Outcome::Stored { job, .. } =
        chat_router::ingest::ingest(&store, &message).await.unwrap()
    else {
        panic!("not stored")
    };
    drop(store);

    // With a routing queue configured, the sweep hands it to SQS (moto here).
    let moto = common::Moto::start().await;
    let sqs = moto.sqs();
    let url = sqs
        .create_queue()
        .queue_name("routing.fifo")
        .attributes(aws_sdk_sqs::types::QueueAttributeName::FifoQueue, "true")
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    let aws = [
        ("ROUTING_QUEUE_URL", url.as_str()),
        ("AWS_ENDPOINT_URL", moto.endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let swept = json_out(&chat_router_env(&db, &["sweep", "--older-than", "0"], &aws));
    assert_eq!(swept, json!({"requeued": 1, "failed": 0, "refused": 0}));
    let received = sqs
        .receive_message()
        .queue_url(&url)
        .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
        .wait_time_seconds(1)
        .send()
        .await
        .unwrap();
    let message = &received.messages()[0];
    let sent: chat_router::ingest::Job = serde_json::from_str(message.body().unwrap()).unwrap();
    assert_eq!(sent, job);
    assert_eq!(
        message.attributes().unwrap()
            [&aws_sdk_sqs::types::MessageSystemAttributeName::MessageGroupId],
        job.conversation_id
    );

    // Without one, the sweep handles the job in process: routed, nobody available.
    let swept = json_out(&chat_router(&db, &["sweep", "--older-than", "0"]));
    assert_eq!(swept["requeued"], 1);
    let conversation = job.conversation_id.as_str();

    // Ann becomes available and gets it; a transfer hands it to Billing's queue, and
    // Bea gets it when she becomes available; closing frees her.
    let available = json_out(&chat_router(
        &db,
        &["agent", "available", "--agent", &ann, "--seconds", "60"],
    ));
    assert_eq!(available["assigned"], json!([conversation]));
    let moved = json_out(&chat_router(
        &db,
        &[
            "conversation",
            "transfer",
            "--conversation",
            conversation,
            "--department",
            "Billing",
        ],
    ));
    assert_eq!(moved["department"], "Billing");
    assert_eq!(moved["status"], "open");
    let available = json_out(&chat_router(
        &db,
        &["agent", "available", "--agent", &bea, "--seconds", "60"],
    ));
    assert_eq!(available["assigned"], json!([conversation]));
    let closed = json_out(&chat_router(
        &db,
        &["conversation", "close", "--conversation", conversation],
    ));
    assert_eq!(closed["status"], "closed");

    for args in [
        vec![
            "conversation",
            "close",
            "--conversation",
            "no-such-conversation",
        ],
        vec![
            "conversation",
            "transfer",
            "--conversation",
            conversation,
            "--department",
            "Nope",
        ],
        vec![
            "agent",
            "available",
            "--agent",
            "no-such-agent",
            "--seconds",
            "60",
        ],
    ] {
        let output = chat_router(&db, &args);
        assert!(!output.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn business_callback_checks_the_url_without_connecting_and_shows_the_secret_once() {
    use base64::Engine;

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("callback.db");
    let business = json_out(&chat_router(
        &db,
        &["business", "create", "--config", &demo_file()],
    ));
    let business = business["id"].as_str().unwrap().to_owned();
    let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let env = [("CALLBACK_SECRET_KEY", key.as_str()), ("RUST_LOG", "debug")];
    let callback = |extra: &[&str]| {
        let mut args = vec!["business", "callback", "--business", business.as_str()];
        args.extend_from_slice(extra);
        chat_router_env(&db, &args, &env)
    };
    // A receiver that must never see a connection: configuring only checks.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let local_url = format!("http://127.0.0.1:{port}/hook");

    // Refused: private, loopback without the flag, link-local, multicast, unspecified,
    // plain http elsewhere. Literal addresses, so nothing is resolved either.
    for (url, flag) in [
        ("https://10.0.0.1/hook", false),
        ("https://192.168.0.10/hook", false),
        ("https://172.20.1.1/hook", false),
        (local_url.as_str(), false),
        ("https://127.0.0.1/hook", false),
        ("https://localhost/hook", false),
        ("https://169.254.169.254/latest/meta-data/", false),
        ("https://169.254.169.254/latest/meta-data/", true),
        ("https://[fe80::1]/hook", true),
        ("https://224.0.0.1/hook", true),
        ("https://0.0.0.0/hook", true),
        ("http://hooks.example.com/hook", true),
    ] {
        let mut args = vec!["--url", url];
        if flag {
            args.push("--allow-loopback");
        }
        let output = callback(&args);
        assert_eq!(output.status.code(), Some(1), "{url} was accepted");
        assert!(
            String::from_utf8_lossy(&output.stderr).starts_with("error: "),
            "{url}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.stdout.is_empty());
    }
    let store = chat_router::store::Store::open(chat_router::store::Location::Local(db.clone()))
        .await
        .unwrap();
    let stored = r#"SELECT count(*) FROM "CallbackEndpoint""#;
    assert_eq!(common::count(&store, stored).await, 0);

    // Without the key nothing can be stored.
    let output = chat_router(
        &db,
        &[
            "business",
            "callback",
            "--business",
            &business,
            "--url",
            &local_url,
            "--allow-loopback",
        ],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("CALLBACK_SECRET_KEY"));
    assert!(
        !callback(&[
            "--url",
            &local_url,
            "--allow-loopback",
            "--events",
            "opened"
        ])
        .status
        .success()
    );

    // Accepted: the secret is printed the first time only, and again when rotated.
    let first = callback(&[
        "--url",
        &local_url,
        "--allow-loopback",
        "--events",
        "closed",
    ]);
    let first_json = json_out(&first);
    let secret = first_json["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(first_json["events"], json!(["message", "closed"]));
    assert_eq!(first_json["allowLoopback"], true);
    assert!(!String::from_utf8_lossy(&first.stderr).contains(&secret));
    let again = json_out(&callback(&["--url", &local_url, "--allow-loopback"]));
    assert!(again.get("secret").is_none());
    assert_eq!(again["events"], json!(["message"]));
    let rotated = json_out(&callback(&[
        "--url",
        &local_url,
        "--allow-loopback",
        "--rotate-secret",
    ]));
    let new_secret = rotated["secret"].as_str().unwrap();
    assert_ne!(new_secret, secret);

    let ciphertext = common::column(&store, r#"SELECT "secret" FROM "CallbackEndpoint""#).await;
    assert_eq!(ciphertext.len(), 1);
    assert!(ciphertext[0].starts_with("v1:") && !ciphertext[0].contains(new_secret));
    assert!(
        matches!(listener.accept(), Err(err) if err.kind() == std::io::ErrorKind::WouldBlock),
        "the command connected to the URL"
    );
}
