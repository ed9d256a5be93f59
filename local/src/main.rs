//! `chat-router`: the local server and the admin commands.
//!
//! Commands print JSON on stdout; errors go to stderr with a non-zero exit status.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use chat_router::callback::deliver::{Deliverer, Jobs};
use chat_router::callback::endpoint::{self, DeliveryEvent, EndpointError, EndpointRequest};
use chat_router::callback::secret::EncryptionKey;
use chat_router::callback::signature::{self, DEFAULT_TOLERANCE, SignatureHeader};
use chat_router::classify::{Chain, llm::LlmConfig};
use chat_router::config::{Config, DEFAULT_SWEEP_AFTER};
use chat_router::events::LocalNotifier;
use chat_router::ingest::Job;
use chat_router::queue::sqs::SqsQueue;
use chat_router::queue::{JobHandler, JobQueue, QueueError};
use chat_router::routing::Router;
use chat_router::store::Store;
use chat_router::tenants::{self, BusinessConfig, DEFAULT_CAPACITY};
use chat_router_local::app::{self, App};
use chat_router_local::{demo, gateway};
use clap::{Parser, Subcommand};
use serde_json::json;

/// mimalloc rather than the system allocator: requests, events and classification
/// allocate many small short-lived values across threads, where it is markedly
/// faster (routing throughput in `scripts/bench.sh route` rose by a fifth).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Multi-tenant customer-chat router: local server and admin commands.
///
/// The database comes from DATABASE_URL (a file path, or a libsql:// / https:// /
/// http:// URL with DATABASE_AUTH_TOKEN); unset means ./chat-router.db.
#[derive(Parser)]
#[command(name = "chat-router", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply pending schema migrations (safe to run repeatedly and concurrently).
    Migrate,
    /// Serve the webhook over HTTP, as API Gateway and Lambda would.
    Serve {
        /// Address to listen on (port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:3000")]
        addr: SocketAddr,
        /// Create the demo tenant (or issue it fresh credentials) and print them.
        #[arg(long)]
        demo: bool,
    },
    /// Manage businesses.
    Business {
        #[command(subcommand)]
        command: BusinessCommand,
    },
    /// Manage agents.
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// Manage webhook keys.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Work on conversations.
    Conversation {
        #[command(subcommand)]
        command: ConversationCommand,
    },
    /// Hand over routing jobs left pending, and mark failed those past the attempt
    /// limit. With ROUTING_QUEUE_URL they go to that SQS queue; without, they are
    /// handled here and now.
    Sweep {
        /// Only jobs pending at least this long (default: SWEEP_AFTER_SECONDS, else
        /// 960 with SQS and 10 without).
        #[arg(long, value_name = "SECONDS")]
        older_than: Option<u64>,
    },
    /// Evaluate the embedded classifier on a labelled `text,category` CSV.
    Eval(EvalArgs),
    /// Work with callbacks, the deliveries of agents' replies to businesses.
    Callback {
        #[command(subcommand)]
        command: CallbackCommand,
    },
}

#[derive(Subcommand)]
enum CallbackCommand {
    /// Check a delivery's signature as its receiver would; prints
    /// `{"valid": true, "timestamp": T}`, or fails with the reason.
    Verify(VerifyArgs),
}

#[derive(clap::Args)]
struct VerifyArgs {
    /// The business's signing secret (`whsec_...`). Prefer the environment variable:
    /// other users of the machine can read command lines.
    #[arg(long, env = "CALLBACK_SIGNING_SECRET", hide_env_values = true)]
    secret: String,
    /// The `X-Chat-Router-Signature` header's value, `t=...,v1=...`.
    #[arg(long)]
    signature: String,
    /// A file holding the body exactly as received; `-` reads standard input.
    #[arg(long)]
    body: PathBuf,
    /// How far the signed timestamp may be from now, either way.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_TOLERANCE.as_secs())]
    tolerance: u64,
}

#[derive(Subcommand)]
enum ConversationCommand {
    /// Move a conversation to another department of its business, where it is
    /// assigned again.
    Transfer {
        #[arg(long)]
        conversation: String,
        #[arg(long)]
        department: String,
    },
    /// Close a conversation; its agent gets their department's next waiting one.
    Close {
        #[arg(long)]
        conversation: String,
    },
}

#[derive(clap::Args)]
struct EvalArgs {
    /// Labelled data: a CSV with `text` and `category` columns.
    #[arg(long)]
    data: PathBuf,
    /// Maps categories (intents) to departments: `{"department": ["category", ...]}`.
    #[arg(long)]
    departments: Option<PathBuf>,
    /// Train on all of --data and test on this CSV instead of cross-validating.
    #[arg(long, conflicts_with = "folds")]
    test: Option<PathBuf>,
    /// Number of stratified held-out folds.
    #[arg(long, default_value_t = 5)]
    folds: usize,
    /// Train with only this many examples per category.
    #[arg(long)]
    shots: Option<usize>,
    /// Seed of the fold assignment and the shots sample.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum BusinessCommand {
    /// Create a business from a JSON tenant file; prints its id and webhook key.
    Create {
        /// `{"name", "departments": [{"name", "description", "examples"}], "fallbackDepartment", "confidenceThreshold"}`
        #[arg(long)]
        config: PathBuf,
    },
    /// Set where a business's deliveries go; prints the endpoint, with the signing
    /// secret when it was made now (the first time, or with --rotate-secret). Needs
    /// CALLBACK_SECRET_KEY. The URL is checked without connecting to it.
    Callback(CallbackArgs),
}

#[derive(clap::Args)]
struct CallbackArgs {
    #[arg(long)]
    business: String,
    /// An https URL whose host is, and resolves to, public addresses only.
    #[arg(long)]
    url: String,
    /// Make a new signing secret; the old one stops signing at once.
    #[arg(long)]
    rotate_secret: bool,
    /// What to deliver, comma separated: message (always), closed, transferred.
    #[arg(long, default_value = "message")]
    events: String,
    /// Allow an http or https URL on a loopback address (local runs only: deliveries
    /// on AWS never go to loopback).
    #[arg(long)]
    allow_loopback: bool,
}

#[derive(Subcommand)]
enum AgentCommand {
    /// Create an agent; prints its id and token.
    Create {
        #[arg(long)]
        business: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        department: String,
        /// Most active conversations at once.
        #[arg(long, default_value_t = DEFAULT_CAPACITY)]
        capacity: i64,
    },
    /// Revoke an agent's token.
    Revoke {
        #[arg(long)]
        agent: String,
    },
    /// Issue a new token for an agent (the old one stops working).
    Token {
        #[arg(long)]
        agent: String,
    },
    /// Make an agent available for assignment for a while, as a live, ready
    /// connection does; they get waiting conversations of their department at once.
    Available {
        #[arg(long)]
        agent: String,
        /// How long the availability lasts.
        #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
        seconds: u64,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Issue a new webhook key for a business (the old one stops working).
    Rotate {
        #[arg(long)]
        business: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    chat_router::telemetry::init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: starting the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    // Read on use: evaluation and signature checks need no configuration.
    let config = Config::from_env;
    match command {
        Command::Eval(args) => evaluate(args)?,
        Command::Callback {
            command: CallbackCommand::Verify(args),
        } => verify_callback(&args)?,
        Command::Migrate => {
            let store = Store::connect(config()?.database).await?;
            let version = store.migrate().await?;
            print(json!({ "schemaVersion": version }));
        }
        Command::Serve { addr, demo } => serve(config()?, addr, demo).await?,
        Command::Business {
            command: BusinessCommand::Create { config: path },
        } => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let business: BusinessConfig = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", path.display()))?;
            let store = Store::open(config()?.database).await?;
            print(json!(tenants::create_business(&store, &business).await?));
        }
        Command::Business {
            command: BusinessCommand::Callback(args),
        } => {
            // Everything that can be checked without the database comes first, so a
            // refused URL never opens (or creates) one.
            let key = EncryptionKey::from_env()?;
            let request = EndpointRequest {
                business_id: args.business,
                events: DeliveryEvent::parse_list(&args.events)?,
                url: endpoint::validate_url(&args.url, args.allow_loopback)
                    .await
                    .map_err(EndpointError::from)?
                    .to_string(),
                allow_loopback: args.allow_loopback,
                rotate_secret: args.rotate_secret,
            };
            let store = Store::open(config()?.database).await?;
            print(json!(endpoint::configure(&store, &key, &request).await?));
        }
        Command::Agent { command } => {
            let store = Store::open(config()?.database).await?;
            match command {
                AgentCommand::Create {
                    business,
                    name,
                    department,
                    capacity,
                } => {
                    let agent =
                        tenants::create_agent(&store, &business, &name, &department, capacity)
                            .await?;
                    print(json!(agent));
                }
                AgentCommand::Revoke { agent } => {
                    let business = tenants::revoke_agent(&store, &agent).await?;
                    let config = config()?;
                    // On AWS the agent's sockets close through the management API now;
                    // a local `serve` closes its own within a second.
                    let closed = if config.connections_table.is_some()
                        && config.websocket_endpoint.is_some()
                    {
                        let realtime =
                            chat_router::realtime::from_env(Arc::new(store), &config).await?;
                        Some(realtime.disconnect_agent(&business, &agent).await?)
                    } else {
                        None
                    };
                    print(json!({ "id": agent, "revoked": true, "socketsClosed": closed }));
                }
                AgentCommand::Token { agent } => {
                    let token = tenants::issue_agent_token(&store, &agent).await?;
                    print(json!({ "id": agent, "token": token }));
                }
                AgentCommand::Available { agent, seconds } => {
                    let router = router(Arc::new(store), &config()?)?;
                    let until = chrono::Utc::now()
                        + chrono::Duration::seconds(
                            i64::try_from(seconds)
                                .unwrap_or(i64::MAX / 1000)
                                .min(86_400 * 365),
                        );
                    let assigned = router
                        .agent_available(&agent, until.timestamp_millis())
                        .await?;
                    let conversations: Vec<&str> = assigned
                        .iter()
                        .map(|a| a.conversation.id.as_str())
                        .collect();
                    print(json!({
                        "id": agent,
                        "availableUntil": chat_router::timestamp::format(until),
                        "assigned": conversations,
                    }));
                }
            }
        }
        Command::Conversation { command } => {
            let config = config()?;
            let store = Arc::new(Store::open(config.database.clone()).await?);
            let router = router(store.clone(), &config)?;
            match command {
                ConversationCommand::Transfer {
                    conversation,
                    department,
                } => {
                    let business = conversation_business(&store, &conversation).await?;
                    print(json!(
                        router
                            .transfer(&business, &conversation, &department)
                            .await?
                    ));
                }
                ConversationCommand::Close { conversation } => {
                    let business = conversation_business(&store, &conversation).await?;
                    print(json!(router.close(&business, &conversation).await?));
                }
            }
        }
        Command::Sweep { older_than } => {
            let config = config()?;
            let store = Arc::new(Store::open(config.database.clone()).await?);
            let router = Arc::new(router(store, &config)?);
            let report = match &config.routing_queue_url {
                Some(url) => {
                    let older_than = older_than
                        .map(std::time::Duration::from_secs)
                        .or(config.sweep_after)
                        .unwrap_or(DEFAULT_SWEEP_AFTER);
                    let queue = SqsQueue::from_env(url).await;
                    router.sweep(&queue, older_than).await?
                }
                None => {
                    let older_than = older_than
                        .map(std::time::Duration::from_secs)
                        .or(config.sweep_after)
                        .unwrap_or(app::LOCAL_SWEEP_AFTER);
                    let queue = HandleNow(local_jobs(router.clone(), &config)?);
                    router.sweep(&queue, older_than).await?
                }
            };
            print(json!(report));
        }
        Command::Key {
            command: KeyCommand::Rotate { business },
        } => {
            let store = Store::open(config()?.database).await?;
            let key = tenants::rotate_webhook_key(&store, &business).await?;
            print(json!({ "businessId": business, "webhookKey": key }));
        }
    }
    Ok(())
}

fn evaluate(args: EvalArgs) -> anyhow::Result<()> {
    use chat_router::classify::eval;

    let data = eval::load_csv(&args.data)?;
    let departments = args
        .departments
        .as_deref()
        .map(eval::load_departments)
        .transpose()?;
    let split = match &args.test {
        Some(path) => eval::Split::Test(eval::load_csv(path)?),
        None => eval::Split::Folds(args.folds),
    };
    let options = eval::EvalOptions {
        split,
        shots: args.shots,
        seed: args.seed,
        ..eval::EvalOptions::default()
    };
    let report = eval::evaluate(&data, departments.as_ref(), &options)?;
    if args.json {
        print(json!(report));
    } else {
        println!("{}", eval::render_report(&report));
    }
    Ok(())
}

/// `chat-router callback verify`: one delivery checked as its receiver would; needs
/// no database.
fn verify_callback(args: &VerifyArgs) -> anyhow::Result<()> {
    // The signature covers the exact bytes, so the body is read as bytes.
    let body = if args.body.as_os_str() == "-" {
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut body)
            .context("reading the body from standard input")?;
        body
    } else {
        std::fs::read(&args.body).with_context(|| format!("reading {}", args.body.display()))?
    };
    let header = SignatureHeader::parse(&args.signature)?;
    signature::verify(
        args.secret.trim().as_bytes(),
        &args.signature,
        &body,
        chrono::Utc::now().timestamp(),
        Duration::from_secs(args.tolerance),
    )?;
    print(json!({ "valid": true, "timestamp": header.timestamp }));
    Ok(())
}

async fn serve(config: Config, addr: SocketAddr, with_demo: bool) -> anyhow::Result<()> {
    let store = Arc::new(Store::open(config.database.clone()).await?);
    let demo = if with_demo {
        demo::ensure(&store).await?
    } else {
        None
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr().context("reading the bound address")?;

    // The demo's deliveries go to the receiver on this gateway. Without a key of its
    // own the demo makes one for this run: its secret is made anew on every start.
    let callback_key = match EncryptionKey::from_env() {
        Ok(key) => Some(key),
        Err(_) if demo.is_some() => Some(EncryptionKey::generate()),
        Err(err) => {
            tracing::warn!(cause = %err, "deliveries wait until a restart with the key");
            None
        }
    };
    let demo_receiver = match (&demo, &callback_key) {
        (Some(demo), Some(key)) => {
            Some(demo::configure_callback(&store, key, &demo.business_id, local).await?)
        }
        _ => None,
    };

    let mut ready = json!({ "listening": local.to_string() });
    if let Some(demo) = &demo {
        let curl = format!(
            "curl -i http://{local}/webhook/message -H 'Authorization: Bearer {key}' \
             -H 'Content-Type: application/json' \
             -d '{{\"businessId\": \"{business}\", \"message\": \"I want to know the price\"}}'",
            key = demo.webhook_key,
            business = demo.business_id,
        );
        ready["demo"] = json!(demo);
        ready["curl"] = json!(curl);
        eprintln!(
            "\nDemo tenant ready. Post a customer message with:\n\n  {curl}\n\n\
             Agents' replies are delivered to http://{local}{path}, which checks each\n\
             signature and prints the delivery here.\n",
            path = demo::CALLBACK_PATH
        );
    } else if with_demo {
        eprintln!("The database holds other businesses; no demo tenant was created.");
    }
    print(ready);

    let settings = app::Settings {
        max_attempts: config.max_attempts,
        lease: config.agent_lease,
        sweep_after: config.sweep_after.unwrap_or(app::LOCAL_SWEEP_AFTER),
        delivery: local_delivery(&config),
        callback_key,
        ..app::Settings::default()
    };
    let app = App::start(store, Chain::standard(LlmConfig::from_env()?)?, &settings);
    let mut gateway = app.gateway();
    gateway.demo_receiver = demo_receiver;
    tracing::info!(addr = %local, "listening");
    gateway::serve(listener, gateway, shutdown_signal())
        .await
        .context("serving")?;
    // Jobs still queued stay pending in the database; the next start hands them over.
    app.stop();
    tracing::info!("stopped");
    Ok(())
}

/// A router for a one-off command. Its events have no audience in this process;
/// agents see the stored result when they next sync.
fn router(store: Arc<Store>, config: &Config) -> anyhow::Result<Router> {
    Ok(Router::new(
        store,
        Arc::new(Chain::standard(LlmConfig::from_env()?)?),
        Arc::new(LocalNotifier::default()),
        config.max_attempts,
    ))
}

/// The business a conversation belongs to.
async fn conversation_business(store: &Store, conversation: &str) -> anyhow::Result<String> {
    chat_router::conversations::business_of(store, conversation)
        .await?
        .with_context(|| format!("no conversation {conversation}"))
}

/// For `chat-router sweep` without a queue: handles each job as it is handed over.
struct HandleNow(Jobs);

#[async_trait]
impl JobQueue for HandleNow {
    async fn enqueue(&self, job: &Job) -> Result<(), QueueError> {
        self.0
            .handle(job)
            .await
            .map_err(|err| QueueError(err.to_string()))
    }
}

/// Routing and, with CALLBACK_SECRET_KEY, deliveries (loopback receivers allowed, as
/// in `serve`), handled in this process.
fn local_jobs(router: Arc<Router>, config: &Config) -> anyhow::Result<Jobs> {
    let deliverer = match EncryptionKey::from_env() {
        Ok(key) => Some(Arc::new(Deliverer::new(
            router.store().clone(),
            Arc::new(LocalNotifier::default()),
            key,
            local_delivery(config),
        )?)),
        Err(_) => None,
    };
    Ok(Jobs::new(router, deliverer))
}

/// The configured delivery settings, with loopback receivers allowed: a local run.
fn local_delivery(config: &Config) -> chat_router::callback::deliver::DeliverySettings {
    chat_router::callback::deliver::DeliverySettings {
        allow_loopback: true,
        ..config.delivery.clone()
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!(cause = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down: finishing requests in flight");
}

fn print(value: serde_json::Value) {
    println!("{value}");
}
