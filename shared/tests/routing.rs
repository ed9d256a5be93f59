//! Routing and assignment against real databases: classification stored, capacity,
//! ties, queues, availability, close, transfer, duplicates, order, attempts, the
//! sweeper, and many jobs and agents at once.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chat_router::classify::{
    BusinessProfile, Chain, Classification, Classifier, ClassifierKind, ClassifyError,
    EmbeddedClassifier,
};
use chat_router::events::{Event, Frame, LocalNotifier, Notifier, NotifyError};
use chat_router::ingest::Job;
use chat_router::queue::local::LocalQueue;
use chat_router::queue::{JobQueue, OutboxOnly};
use chat_router::routing::{RouteError, Router};
use chat_router::store::Store;
use chat_router::tenants;
use common::{Backend, TestDb, column, count, customer_message, demo_business};

const SUPPORT: [&str; 6] = [
    "The app crashes when I log in",
    "I get an error 500 when I upload a file",
    "The page keeps loading forever",
    "My account is locked after too many attempts",
    "Notifications stopped working on my phone",
    "The sync between devices is broken",
];
const BILLING: &str = "I was charged twice this month";

/// The embedded classifier, counting how often it is asked.
#[derive(Default)]
struct Counting {
    inner: EmbeddedClassifier,
    calls: AtomicUsize,
}

#[async_trait::async_trait]
impl Classifier for Counting {
    fn kind(&self) -> ClassifierKind {
        ClassifierKind::Embedded
    }

    async fn classify(
        &self,
        business: &BusinessProfile,
        text: &str,
    ) -> Result<Classification, ClassifyError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.classify(business, text).await
    }
}

struct Setup {
    store: Arc<Store>,
    router: Arc<Router>,
    notifier: LocalNotifier,
    classifier: Arc<Counting>,
    business: String,
    _db: TestDb,
}

async fn setup(backend: Backend) -> Setup {
    setup_with(backend, None).await
}

async fn setup_with(backend: Backend, notifier: Option<Arc<dyn Notifier>>) -> Setup {
    let db = TestDb::new(backend).await;
    let store = Arc::new(db.store().await);
    let business = demo_business(&store).await;
    let classifier = Arc::new(Counting::default());
    let local = LocalNotifier::default();
    let notifier = notifier.unwrap_or_else(|| Arc::new(local.clone()));
    let router = Arc::new(Router::new(
        store.clone(),
        Arc::new(Chain::new(vec![classifier.clone()])),
        notifier,
        3,
    ));
    Setup {
        store,
        router,
        notifier: local,
        classifier,
        business,
        _db: db,
    }
}

impl Setup {
    async fn agent(&self, name: &str, department: &str, capacity: i64) -> String {
        tenants::create_agent(&self.store, &self.business, name, department, capacity)
            .await
            .expect("create agent")
            .id
    }

    /// Makes an agent available for an hour; returns the conversations they got.
    async fn available(&self, agent: &str) -> Vec<String> {
        // Distinct milliseconds keep "idle longest" well defined.
        tokio::time::sleep(Duration::from_millis(3)).await;
        let until = chat_router::timestamp::now_millis() + 3_600_000;
        self.router
            .agent_available(agent, until)
            .await
            .expect("available")
            .into_iter()
            .map(|a| a.conversation.id)
            .collect()
    }

    /// Stores a message and routes it.
    async fn route(&self, customer: &str, text: &str) -> Job {
        let job = customer_message(&self.store, &self.business, customer, text).await;
        self.router.process(&job).await.expect("process");
        job
    }

    async fn conversation(&self, id: &str) -> (String, String, String) {
        let rows = column(
            &self.store,
            &format!(
                r#"SELECT "department" || '|' || "status" || '|' || coalesce("assignedAgentId", '-')
                   FROM "Conversation" WHERE "id" = '{id}'"#
            ),
        )
        .await;
        let parts: Vec<&str> = rows[0].split('|').collect();
        (parts[0].into(), parts[1].into(), parts[2].into())
    }

    async fn job_status(&self, id: i64) -> (String, i64, String) {
        let rows = column(
            &self.store,
            &format!(
                r#"SELECT "status" || '|' || "attempts" || '|' || coalesce("lastError", '')
                   FROM "Job" WHERE "id" = {id}"#
            ),
        )
        .await;
        let parts: Vec<&str> = rows[0].splitn(3, '|').collect();
        (parts[0].into(), parts[1].parse().unwrap(), parts[2].into())
    }
}

fn drain_events(receiver: &mut tokio::sync::broadcast::Receiver<Arc<Event>>) -> Vec<Arc<Event>> {
    let mut out = Vec::new();
    while let Ok(event) = receiver.try_recv() {
        out.push(event);
    }
    out
}

both_backends!(a_new_conversation_is_classified_and_stored, |backend| {
    let s = setup(backend).await;
    let job = s.route("c1", SUPPORT[0]).await;
    let (department, status, agent) = s.conversation(&job.conversation_id).await;
    assert_eq!(
        (department.as_str(), status.as_str(), agent.as_str()),
        ("Support", "open", "-")
    );
    let stored = column(
        &s.store,
        &format!(
            r#"SELECT "classifier" || '|' || ("confidence" >= 0.5) || '|' || typeof("queuedAt")
               FROM "Conversation" WHERE "id" = '{}'"#,
            job.conversation_id
        ),
    )
    .await;
    assert_eq!(stored, ["embedded|1|integer"]);
    assert_eq!(s.job_status(job.id).await.0, "done");
});

both_backends!(
    the_least_loaded_agent_gets_it_and_ties_go_to_the_longest_idle,
    |backend| {
        let s = setup(backend).await;
        let a = s.agent("Ann", "Support", 2).await;
        let b = s.agent("Bob", "Support", 2).await;
        let billing = s.agent("Cid", "Billing", 5).await;
        s.available(&a).await;
        s.available(&b).await;
        s.available(&billing).await;

        let mut got = Vec::new();
        for (i, text) in SUPPORT.iter().take(5).enumerate() {
            let job = s.route(&format!("c{i}"), text).await;
            got.push(s.conversation(&job.conversation_id).await);
        }
        // Both idle: Ann became available first. Then Bob has fewer. Then both have one
        // and Ann's last assignment is older. Then Bob. Then both are full.
        let agents: Vec<&str> = got.iter().map(|(_, _, agent)| agent.as_str()).collect();
        assert_eq!(
            agents,
            [a.as_str(), b.as_str(), a.as_str(), b.as_str(), "-"]
        );
        assert_eq!(got[4].1, "open", "over capacity, it waits in the queue");
        assert!(got.iter().all(|(d, _, _)| d == "Support"));
    }
);

both_backends!(
    a_waiting_conversation_goes_to_an_agent_who_becomes_available,
    |backend| {
        let s = setup(backend).await;
        let first = s.route("c1", SUPPORT[0]).await;
        let second = s.route("c2", SUPPORT[1]).await;
        let agent = s.agent("Ann", "Support", 1).await;
        let mut events = s.notifier.subscribe();

        // Capacity one: the oldest waiting conversation goes first.
        assert_eq!(
            s.available(&agent).await,
            vec![first.conversation_id.clone()]
        );
        assert_eq!(s.conversation(&first.conversation_id).await.2, agent);
        assert_eq!(s.conversation(&second.conversation_id).await.1, "open");
        let assigned: Vec<_> = drain_events(&mut events)
            .into_iter()
            .filter_map(|e| match &e.frame {
                Frame::Assigned {
                    conversation,
                    agent_id,
                } => {
                    assert_eq!(e.audience.agents, vec![agent.clone()]);
                    assert_eq!(e.audience.departments, ["Support"]);
                    Some((conversation.id.clone(), agent_id.clone()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(assigned, [(first.conversation_id.clone(), agent.clone())]);

        // Closing it frees the agent for the next one.
        let closed = s
            .router
            .close(&s.business, &first.conversation_id)
            .await
            .unwrap();
        assert_eq!(closed.status, "closed");
        assert_eq!(s.conversation(&second.conversation_id).await.2, agent);
        assert!(matches!(
            s.router.close(&s.business, &first.conversation_id).await,
            Err(RouteError::Closed)
        ));
    }
);

both_backends!(an_expired_or_ended_lease_gets_nothing, |backend| {
    let s = setup(backend).await;
    let agent = s.agent("Ann", "Support", 5).await;
    let past = chat_router::timestamp::now_millis() - 1;
    assert!(
        s.router
            .agent_available(&agent, past)
            .await
            .unwrap()
            .is_empty()
    );
    let job = s.route("c1", SUPPORT[0]).await;
    assert_eq!(s.conversation(&job.conversation_id).await.1, "open");

    s.available(&agent).await;
    assert_eq!(s.conversation(&job.conversation_id).await.2, agent);
    s.router.agent_unavailable(&agent).await.unwrap();
    let later = s.route("c2", SUPPORT[1]).await;
    assert_eq!(s.conversation(&later.conversation_id).await.1, "open");

    // A revoked agent's availability ends too.
    s.available(&agent).await;
    assert_eq!(s.conversation(&later.conversation_id).await.2, agent);
    tenants::revoke_agent(&s.store, &agent).await.unwrap();
    let third = s.route("c3", SUPPORT[2]).await;
    assert_eq!(s.conversation(&third.conversation_id).await.1, "open");
});

both_backends!(a_transfer_assigns_again_in_the_new_department, |backend| {
    let s = setup(backend).await;
    let support = s.agent("Ann", "Support", 1).await;
    let billing = s.agent("Cid", "Billing", 5).await;
    s.available(&support).await;
    s.available(&billing).await;
    let moved = s.route("c1", SUPPORT[0]).await;
    let waiting = s.route("c2", SUPPORT[1]).await;
    assert_eq!(s.conversation(&moved.conversation_id).await.2, support);
    assert_eq!(s.conversation(&waiting.conversation_id).await.1, "open");

    let mut events = s.notifier.subscribe();
    let after = s
        .router
        .transfer(&s.business, &moved.conversation_id, "Billing")
        .await
        .unwrap();
    assert_eq!(after.department, "Billing");
    assert_eq!(after.assigned_agent_id.as_deref(), Some(billing.as_str()));
    // Ann's freed place goes to Support's waiting conversation.
    assert_eq!(s.conversation(&waiting.conversation_id).await.2, support);
    let kinds: Vec<&str> = drain_events(&mut events)
        .iter()
        .map(|e| e.frame.kind())
        .collect();
    assert_eq!(
        kinds,
        [
            "conversation.transferred",
            "conversation.assigned",
            "conversation.assigned"
        ]
    );

    let same = s
        .router
        .transfer(&s.business, &moved.conversation_id, "Billing")
        .await;
    assert!(
        matches!(same, Err(RouteError::SameDepartment(_))),
        "{same:?}"
    );
    let unknown = s
        .router
        .transfer(&s.business, &moved.conversation_id, "Nowhere")
        .await;
    assert!(
        matches!(unknown, Err(RouteError::UnknownDepartment(_))),
        "{unknown:?}"
    );
    // Another business cannot touch it, and learns nothing about it.
    let other = demo_business(&s.store).await;
    let foreign = s
        .router
        .transfer(&other, &moved.conversation_id, "Sales")
        .await;
    assert!(
        matches!(foreign, Err(RouteError::UnknownConversation)),
        "{foreign:?}"
    );
    assert!(matches!(
        s.router.close(&other, &moved.conversation_id).await,
        Err(RouteError::UnknownConversation)
    ));
    s.router
        .close(&s.business, &moved.conversation_id)
        .await
        .unwrap();
    let closed = s
        .router
        .transfer(&s.business, &moved.conversation_id, "Sales")
        .await;
    assert!(matches!(closed, Err(RouteError::Closed)), "{closed:?}");
    assert_loads_agree(&s.store).await;
});

both_backends!(
    the_database_refuses_over_capacity_and_cross_business_assignment,
    |backend| {
        let s = setup(backend).await;
        let agent = s.agent("Ann", "Support", 1).await;
        let one = s.route("c1", SUPPORT[0]).await;
        let two = s.route("c2", SUPPORT[1]).await;
        let conn = s.store.writer().await.unwrap();
        let assign = |id: &str| {
            format!(
                r#"UPDATE "Conversation" SET "status" = 'in_progress', "assignedAgentId" = '{agent}' WHERE "id" = '{id}'"#
            )
        };
        conn.execute(&assign(&one.conversation_id), ())
            .await
            .unwrap();
        let err = conn
            .execute(&assign(&two.conversation_id), ())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("agent_over_capacity"), "{err}");
        // The local store has one writer: give it back while the admin calls write.
        drop(conn);

        let other = demo_business(&s.store).await;
        let stranger = tenants::create_agent(&s.store, &other, "Eve", "Support", 5)
            .await
            .unwrap()
            .id;
        let conn = s.store.writer().await.unwrap();
        let err = conn
        .execute(
            &format!(
                r#"UPDATE "Conversation" SET "assignedAgentId" = '{stranger}' WHERE "id" = '{}'"#,
                two.conversation_id
            ),
            (),
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string().contains("agent_of_another_business"),
            "{err}"
        );
    }
);

both_backends!(
    a_job_delivered_twice_classifies_once_and_assigns_once,
    |backend| {
        let s = setup(backend).await;
        let agent = s.agent("Ann", "Support", 5).await;
        s.available(&agent).await;
        let mut events = s.notifier.subscribe();
        let job = s.route("c1", SUPPORT[0]).await;
        s.router.process(&job).await.expect("second delivery");
        assert_eq!(s.classifier.calls.load(Ordering::SeqCst), 1);
        let kinds: Vec<&str> = drain_events(&mut events)
            .iter()
            .map(|e| e.frame.kind())
            .collect();
        assert_eq!(
            kinds,
            [
                "conversation.routed",
                "conversation.assigned",
                "message.created"
            ]
        );
        let (status, attempts, _) = s.job_status(job.id).await;
        assert_eq!((status.as_str(), attempts), ("done", 1));
    }
);

both_backends!(
    a_follow_up_is_delivered_in_order_without_classifying,
    |backend| {
        let s = setup(backend).await;
        let agent = s.agent("Ann", "Support", 5).await;
        s.available(&agent).await;
        let mut events = s.notifier.subscribe();
        let first = customer_message(&s.store, &s.business, "c1", SUPPORT[0]).await;
        let second = customer_message(&s.store, &s.business, "c1", "and it still does").await;
        let third = customer_message(&s.store, &s.business, "c1", "any news?").await;
        assert_eq!(first.conversation_id, third.conversation_id);

        // The last job arrives first (its predecessors were lost): it runs them first.
        s.router.process(&third).await.unwrap();
        s.router.process(&second).await.unwrap();
        assert_eq!(s.classifier.calls.load(Ordering::SeqCst), 1);
        let delivered: Vec<(i64, Vec<String>)> = drain_events(&mut events)
            .iter()
            .filter_map(|e| match &e.frame {
                Frame::MessageCreated { message, .. } => {
                    Some((message.sequence, e.audience.agents.clone()))
                }
                _ => None,
            })
            .collect();
        let expected: Vec<(i64, Vec<String>)> = (1..=3).map(|n| (n, vec![agent.clone()])).collect();
        assert_eq!(delivered, expected);
        for job in [&first, &second, &third] {
            assert_eq!(s.job_status(job.id).await.0, "done");
        }
    }
);

/// A notifier that is down.
struct Down;

#[async_trait::async_trait]
impl Notifier for Down {
    async fn publish(&self, _event: &Event) -> Result<(), NotifyError> {
        Err(NotifyError("connection refused".into()))
    }
}

both_backends!(
    a_job_that_keeps_failing_is_marked_failed_and_never_requeued,
    |backend| {
        let s = setup_with(backend, Some(Arc::new(Down))).await;
        let job = customer_message(&s.store, &s.business, "c1", SUPPORT[0]).await;
        for attempt in 1..=2 {
            assert!(s.router.process(&job).await.is_err(), "attempt {attempt}");
            let (status, attempts, error) = s.job_status(job.id).await;
            assert_eq!((status.as_str(), attempts), ("pending", attempt));
            assert!(error.contains("connection refused"), "{error}");
        }
        // The limit is 3: the third failure gives the job up.
        s.router.process(&job).await.expect("given up");
        let (status, attempts, error) = s.job_status(job.id).await;
        assert_eq!((status.as_str(), attempts), ("failed", 3));
        assert!(error.contains("connection refused"), "{error}");
        // The message and its routing stay stored.
        assert_eq!(s.conversation(&job.conversation_id).await.0, "Support");
        let report = s.router.sweep(&OutboxOnly, Duration::ZERO).await.unwrap();
        assert_eq!((report.requeued, report.failed), (0, 0));
    }
);

both_backends!(
    a_dead_lettered_job_is_failed_by_the_sweeper_and_falls_back,
    |backend| {
        let s = setup(backend).await;
        let dead = customer_message(&s.store, &s.business, "c1", SUPPORT[0]).await;
        let crashed = customer_message(&s.store, &s.business, "c2", BILLING).await;
        let lost = customer_message(&s.store, &s.business, "c3", SUPPORT[1]).await;
        {
            // SQS received the first one up to its limit and moved it to the dead-letter
            // queue; every attempt at the second crashed before recording its end.
            let conn = s.store.writer().await.unwrap();
            for (id, attempts) in [(dead.id, 3), (crashed.id, 3)] {
                conn.execute(
                    &format!(r#"UPDATE "Job" SET "attempts" = {attempts} WHERE "id" = {id}"#),
                    (),
                )
                .await
                .unwrap();
            }
        }
        // A crash loop is cut off when the job comes back.
        s.router.process(&crashed).await.unwrap();
        let (status, _, error) = s.job_status(crashed.id).await;
        assert_eq!(status, "failed");
        assert!(error.contains("attempt limit"), "{error}");

        // Young jobs are left alone: they may be in flight.
        let queue = Recorder::default();
        let report = s
            .router
            .sweep(&queue, Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!((report.requeued, report.failed), (0, 0));

        let report = s.router.sweep(&queue, Duration::ZERO).await.unwrap();
        assert_eq!((report.requeued, report.failed), (1, 1));
        assert_eq!(queue.ids(), [lost.id]);
        assert_eq!(s.job_status(dead.id).await.0, "failed");
        for job in [&dead, &crashed] {
            let stored = column(
            &s.store,
            &format!(
                r#"SELECT "department" || '|' || "status" || '|' || "classifier" FROM "Conversation" WHERE "id" = '{}'"#,
                job.conversation_id
            ),
        )
        .await;
            assert_eq!(stored, ["General|open|fallback"], "never left unrouted");
        }
        assert_eq!(s.classifier.calls.load(Ordering::SeqCst), 0);
        // A job just handed over is not handed over again by the next sweep.
        let report = s
            .router
            .sweep(&queue, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(report.requeued, 0);
    }
);

/// A queue that records what it is given.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<Job>>);

impl Recorder {
    fn ids(&self) -> Vec<i64> {
        self.0.lock().unwrap().iter().map(|j| j.id).collect()
    }
}

#[async_trait::async_trait]
impl JobQueue for Recorder {
    async fn enqueue(&self, job: &Job) -> Result<(), chat_router::queue::QueueError> {
        self.0.lock().unwrap().push(job.clone());
        Ok(())
    }
}

both_backends!(
    a_crash_between_commit_and_enqueue_is_repaired_by_the_sweeper,
    |backend| {
        let s = setup(backend).await;
        // Stored, never handed to the queue (the process died right after the commit).
        let job = customer_message(&s.store, &s.business, "c1", SUPPORT[0]).await;
        let queue = LocalQueue::start(s.router.clone(), 4);
        let report = s.router.sweep(&queue, Duration::ZERO).await.unwrap();
        assert_eq!(report.requeued, 1);
        wait_for(|| queue.is_empty()).await;
        assert_eq!(s.job_status(job.id).await.0, "done");
        assert_eq!(s.conversation(&job.conversation_id).await.0, "Support");
        queue.shutdown();
    }
);

async fn wait_for(done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Many conversations, messages and agents at once: no agent past capacity, no
/// conversation with two agents, nobody waiting while an agent has room, and every
/// conversation's messages delivered in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_jobs_and_agents_at_once() {
    let s = setup(Backend::File).await;
    let mut agents = Vec::new();
    for i in 0..8 {
        agents.push(s.agent(&format!("Agent {i}"), "Support", 3).await);
    }
    let mut events = s.notifier.subscribe();
    let queue = LocalQueue::start(s.router.clone(), 16);

    let conversations = 40;
    let per_conversation = 4;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..conversations {
        let (store, business, queue) = (s.store.clone(), s.business.clone(), queue.clone());
        tasks.spawn(async move {
            for m in 0..per_conversation {
                let text = if m == 0 {
                    SUPPORT[c % SUPPORT.len()].to_owned()
                } else {
                    format!("follow-up {m}")
                };
                let job =
                    customer_message(&store, &business, &format!("customer-{c}"), &text).await;
                queue.enqueue(&job).await.unwrap();
            }
        });
    }
    for agent in agents.clone() {
        let router = s.router.clone();
        tasks.spawn(async move {
            let until = chat_router::timestamp::now_millis() + 3_600_000;
            router.agent_available(&agent, until).await.unwrap();
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap();
    }
    wait_for(|| queue.is_empty()).await;
    queue.shutdown();

    let loads = column(
        &s.store,
        r#"SELECT count(*) FROM "Conversation" WHERE "status" = 'in_progress' GROUP BY "assignedAgentId""#,
    )
    .await;
    assert_eq!(loads, vec!["3"; 8], "every agent full, none past capacity");
    assert_loads_agree(&s.store).await;
    assert_eq!(
        count(
            &s.store,
            r#"SELECT count(*) FROM "Conversation" WHERE "status" = 'open'"#
        )
        .await,
        (conversations - 24) as i64
    );
    assert_eq!(
        count(
            &s.store,
            r#"SELECT count(*) FROM "Job" WHERE "status" <> 'done'"#
        )
        .await,
        0
    );

    let mut sequences: HashMap<String, Vec<i64>> = HashMap::new();
    let mut assigned: HashMap<String, usize> = HashMap::new();
    for event in drain_events(&mut events) {
        match &event.frame {
            Frame::MessageCreated {
                conversation_id,
                message,
            } => sequences
                .entry(conversation_id.clone())
                .or_default()
                .push(message.sequence),
            Frame::Assigned { conversation, .. } => {
                *assigned.entry(conversation.id.clone()).or_default() += 1
            }
            _ => {}
        }
    }
    assert_eq!(sequences.len(), conversations);
    for (conversation, seen) in &sequences {
        assert_eq!(
            seen,
            &(1..=per_conversation as i64).collect::<Vec<_>>(),
            "{conversation}"
        );
    }
    assert_eq!(assigned.len(), 24);
    assert!(assigned.values().all(|n| *n == 1), "one assignment each");
    assert_eq!(s.classifier.calls.load(Ordering::SeqCst), conversations);

    // Closing everything in progress at once hands out the waiting ones; the loads
    // the triggers keep still match what is assigned.
    let working = column(
        &s.store,
        r#"SELECT "id" FROM "Conversation" WHERE "status" = 'in_progress'"#,
    )
    .await;
    let mut closes = tokio::task::JoinSet::new();
    for id in working {
        let (router, business) = (s.router.clone(), s.business.clone());
        closes.spawn(async move { router.close(&business, &id).await.unwrap() });
    }
    while let Some(result) = closes.join_next().await {
        result.unwrap();
    }
    assert_eq!(
        count(
            &s.store,
            r#"SELECT count(*) FROM "Conversation" WHERE "status" = 'in_progress'"#
        )
        .await,
        (conversations - 24) as i64
    );
    assert_loads_agree(&s.store).await;
}

/// The per-agent loads that triggers keep in `AgentLoad` equal a count of the
/// conversations each agent has in progress.
async fn assert_loads_agree(store: &Store) {
    let wrong = column(
        store,
        r#"SELECT a."name" || ': ' || coalesce(l."active", 0) FROM "Agent" a
           LEFT JOIN "AgentLoad" l ON l."agentId" = a."id"
           WHERE coalesce(l."active", 0) <> (SELECT count(*) FROM "Conversation" c
               WHERE c."assignedAgentId" = a."id" AND c."status" = 'in_progress')"#,
    )
    .await;
    assert!(wrong.is_empty(), "AgentLoad disagrees: {wrong:?}");
}
