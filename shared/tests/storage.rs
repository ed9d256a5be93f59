//! Storage tests, each run on a local file and on a real sqld server.

mod common;

use std::sync::Arc;

use chat_router::conversations;
use chat_router::ingest::{self, Idempotency, NewMessage, Outcome};
use chat_router::store::{CURRENT_VERSION, Store, StoreError};
use chat_router::tenants::{self, BusinessConfig};
use common::{Backend, TestDb, column, count};

const REFERENCE_SQL: &str = include_str!("fixtures/prisma-documented-schema.sql");
const DOCUMENTED: [&str; 4] = ["Business", "Agent", "Conversation", "Message"];

fn tenant() -> BusinessConfig {
    serde_json::from_value(serde_json::json!({
        "name": "Acme",
        "fallbackDepartment": "General",
        "departments": [
            {"name": "Sales", "description": "prices", "examples": ["how much is it"]},
            {"name": "General"}
        ]
    }))
    .unwrap()
}

fn message(business_id: &str, customer: Option<&str>, text: &str) -> NewMessage {
    NewMessage {
        business_id: business_id.to_owned(),
        content: text.to_owned(),
        customer_id: customer.map(str::to_owned),
        customer_name: None,
        channel: None,
        idempotency: None,
    }
}

fn is_uuid_v4(id: &str) -> bool {
    uuid::Uuid::parse_str(id).is_ok_and(|u| u.get_version_num() == 4) && id == id.to_lowercase()
}

fn is_prisma_date(text: &str) -> bool {
    // YYYY-MM-DDTHH:MM:SS.sss+00:00
    let b = text.as_bytes();
    text.len() == 29
        && text.ends_with("+00:00")
        && b[10] == b'T'
        && b[19] == b'.'
        && chrono::DateTime::parse_from_rfc3339(text).is_ok()
}

/// `PRAGMA table_info` rows: (name, type, notnull, default, pk).
async fn table_info(store: &Store, table: &str) -> Vec<(String, String, i64, String, i64)> {
    let conn = store.reader().await.unwrap();
    let mut rows = conn
        .query(&format!("PRAGMA table_info(\"{table}\")"), ())
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(row) = rows.next().await.unwrap() {
        let default = match row.get_value(4).unwrap() {
            libsql::Value::Text(t) => t,
            libsql::Value::Null => "NULL".into(),
            other => format!("{other:?}"),
        };
        out.push((
            row.get(1).unwrap(),
            row.get(2).unwrap(),
            row.get(3).unwrap(),
            default,
            row.get(5).unwrap(),
        ));
    }
    out
}

async fn foreign_keys(store: &Store, table: &str) -> Vec<String> {
    column(
        store,
        &format!(
            "SELECT \"table\" || '.' || \"from\" || '->' || \"to\" || ' ' || on_update || ' ' || on_delete FROM pragma_foreign_key_list('{table}')"
        ),
    )
    .await
}

both_backends!(documented_tables_match_prismas_migration, |backend| {
    let ours = TestDb::new(backend).await;
    let ours = ours.store().await;

    // The reference: a database built from Prisma's own SQL.
    let reference_db = TestDb::new(Backend::File).await;
    let reference = Store::connect(reference_db.location.clone()).await.unwrap();
    {
        let conn = reference.writer().await.unwrap();
        conn.execute_batch(REFERENCE_SQL).await.unwrap();
    }

    for table in DOCUMENTED {
        let expected = table_info(&reference, table).await;
        let actual = table_info(&ours, table).await;
        assert_eq!(
            &actual[..expected.len()],
            &expected[..],
            "columns of {table}"
        );
        for (name, _, notnull, default, _) in &actual[expected.len()..] {
            assert!(
                notnull == &0 || default != "NULL",
                "added column {table}.{name} must be nullable or defaulted"
            );
        }
        assert_eq!(
            foreign_keys(&ours, table).await,
            foreign_keys(&reference, table).await,
            "foreign keys of {table}"
        );
    }
});

both_backends!(migrations_are_idempotent_and_safe_concurrently, |backend| {
    let db = TestDb::new(backend).await;
    let a = Arc::new(Store::connect(db.location.clone()).await.unwrap());
    let b = Arc::new(Store::connect(db.location.clone()).await.unwrap());
    let (x, y) = tokio::join!(a.migrate(), b.migrate());
    assert_eq!(x.unwrap(), CURRENT_VERSION);
    assert_eq!(y.unwrap(), CURRENT_VERSION);
    assert_eq!(a.migrate().await.unwrap(), CURRENT_VERSION);
    assert_eq!(
        count(&a, r#"SELECT count(*) FROM "SchemaMigration""#).await,
        CURRENT_VERSION
    );
    assert_eq!(a.check_schema().await.unwrap(), CURRENT_VERSION);
});

both_backends!(
    an_unmigrated_database_is_refused_with_a_clear_error,
    |backend| {
        let db = TestDb::new(backend).await;
        let store = Store::connect(db.location.clone()).await.unwrap();
        let err = store.check_schema().await.unwrap_err();
        assert!(
            matches!(err, StoreError::SchemaMismatch { found: 0, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chat-router migrate"));
        if backend_is_remote(&db) {
            // Opening a remote database checks and does not migrate.
            assert!(Store::open(db.location.clone()).await.is_err());
        } else {
            // A local file is migrated when opened.
            assert_eq!(
                Store::open(db.location.clone())
                    .await
                    .unwrap()
                    .check_schema()
                    .await
                    .unwrap(),
                CURRENT_VERSION
            );
        }
    }
);

fn backend_is_remote(db: &TestDb) -> bool {
    db.location.is_remote()
}

both_backends!(rows_are_written_in_prismas_format, |backend| {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let business = tenants::create_business(&store, &tenant()).await.unwrap();
    let agent = tenants::create_agent(&store, &business.id, "Ann", "Sales", 5)
        .await
        .unwrap();
    let Outcome::Stored { receipt, .. } = ingest::ingest(
        &store,
        &message(&business.id, None, "I want to know the price"),
    )
    .await
    .unwrap() else {
        panic!("expected a stored message");
    };

    for (table, id) in [
        ("Business", &business.id),
        ("Agent", &agent.id),
        ("Conversation", &receipt.conversation_id),
        ("Message", &receipt.message_id),
    ] {
        assert!(is_uuid_v4(id), "{table} id {id}");
        let dates = column(
            &store,
            &format!(r#"SELECT "createdAt" FROM "{table}" WHERE "id" = '{id}'"#),
        )
        .await;
        assert!(
            is_prisma_date(&dates[0]),
            "{table}.createdAt = {}",
            dates[0]
        );
        let kind = column(
            &store,
            &format!(r#"SELECT typeof("createdAt") FROM "{table}" WHERE "id" = '{id}'"#),
        )
        .await;
        assert_eq!(kind[0], "text");
    }
    let row = column(
        &store,
        &format!(r#"SELECT "sender" || '|' || "content" || '|' || "conversationId" FROM "Message" WHERE "id" = '{}'"#, receipt.message_id),
    )
    .await;
    assert_eq!(
        row[0],
        format!(
            "customer|I want to know the price|{}",
            receipt.conversation_id
        )
    );
    let conversation = column(
        &store,
        &format!(r#"SELECT "status" || '|' || "department" || '|' || "businessId" FROM "Conversation" WHERE "id" = '{}'"#, receipt.conversation_id),
    )
    .await;
    assert_eq!(conversation[0], format!("pending||{}", business.id));
});

both_backends!(rows_written_by_prisma_are_read, |backend| {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    {
        // What a Prisma client of the documented schema writes: only documented
        // columns; the older engine wrote integer milliseconds.
        let conn = store.writer().await.unwrap();
        conn.execute_batch(
            r#"INSERT INTO "Business" ("id", "name", "createdAt") VALUES ('b1', 'Old', 1769850900123);
               INSERT INTO "Agent" ("id", "name", "department", "businessId", "createdAt") VALUES ('a1', 'Al', 'Sales', 'b1', '2026-01-31T09:15:00.123+00:00');
               INSERT INTO "Conversation" ("id", "businessId", "department", "status", "createdAt") VALUES ('c1', 'b1', 'Sales', 'open', 1769850900123);
               INSERT INTO "Message" ("id", "conversationId", "sender", "content", "createdAt") VALUES ('m1', 'c1', 'customer', 'first', 1769850900123);
               INSERT INTO "Message" ("id", "conversationId", "sender", "content", "createdAt") VALUES ('m2', 'c1', 'agent', 'second', '2026-01-31T09:15:01.000+00:00');"#,
        )
        .await
        .unwrap();
    }
    let conversation = conversations::get(&store, "b1", "c1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conversation.status, "open");
    assert_eq!(conversation.created_at.timestamp_millis(), 1769850900123);
    assert_eq!(
        conversations::get(&store, "other", "c1").await.unwrap(),
        None
    );
    let messages = conversations::messages(&store, "c1").await.unwrap();
    let texts: Vec<_> = messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(texts, ["first", "second"]);
    assert_eq!(messages[0].created_at.timestamp_millis(), 1769850900123);
    assert_eq!(
        messages[1].created_at.to_rfc3339(),
        "2026-01-31T09:15:01+00:00"
    );
    assert_eq!(
        count(
            &store,
            r#"SELECT "capacity" FROM "Agent" WHERE "id" = 'a1'"#
        )
        .await,
        5
    );
});

both_backends!(
    messages_are_numbered_per_conversation_and_threaded_by_customer,
    |backend| {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        let business = tenants::create_business(&store, &tenant()).await.unwrap();
        let mut conversation = None;
        for text in ["one", "two", "three"] {
            let Outcome::Stored {
                receipt,
                new_conversation,
                ..
            } = ingest::ingest(&store, &message(&business.id, Some("cust-1"), text))
                .await
                .unwrap()
            else {
                panic!("expected a stored message");
            };
            assert_eq!(new_conversation, conversation.is_none());
            if let Some(previous) = &conversation {
                assert_eq!(&receipt.conversation_id, previous);
            }
            conversation = Some(receipt.conversation_id);
        }
        let conversation = conversation.unwrap();
        let messages = conversations::messages(&store, &conversation)
            .await
            .unwrap();
        let numbered: Vec<_> = messages
            .iter()
            .map(|m| (m.sequence, m.content.as_str()))
            .collect();
        assert_eq!(
            numbered,
            [(Some(1), "one"), (Some(2), "two"), (Some(3), "three")]
        );

        // Without a customer id, every message starts a conversation.
        let Outcome::Stored { receipt, .. } =
            ingest::ingest(&store, &message(&business.id, None, "anon"))
                .await
                .unwrap()
        else {
            panic!()
        };
        assert_ne!(receipt.conversation_id, conversation);

        // Once closed, the customer's next message starts a new conversation.
        store
            .writer()
            .await
            .unwrap()
            .execute(
                r#"UPDATE "Conversation" SET "status" = 'closed' WHERE "id" = ?1"#,
                [conversation.as_str()],
            )
            .await
            .unwrap();
        let Outcome::Stored {
            receipt,
            new_conversation: true,
            ..
        } = ingest::ingest(&store, &message(&business.id, Some("cust-1"), "again"))
            .await
            .unwrap()
        else {
            panic!("expected a new conversation")
        };
        assert_ne!(receipt.conversation_id, conversation);
        assert_eq!(
            count(
                &store,
                r#"SELECT count(*) FROM "Job" WHERE "status" = 'pending'"#
            )
            .await,
            5
        );
    }
);

both_backends!(
    the_database_allows_one_open_conversation_per_customer,
    |backend| {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        let business = tenants::create_business(&store, &tenant()).await.unwrap();
        let insert = r#"INSERT INTO "Conversation" ("id", "businessId", "department", "status", "createdAt", "customerId") VALUES (?1, ?2, '', ?3, '2026-01-01T00:00:00.000+00:00', 'c')"#;
        let conn = store.writer().await.unwrap();
        conn.execute(
            insert,
            libsql::params!["x1", business.id.as_str(), "closed"],
        )
        .await
        .unwrap();
        conn.execute(insert, libsql::params!["x2", business.id.as_str(), "open"])
            .await
            .unwrap();
        let err = conn
            .execute(
                insert,
                libsql::params!["x3", business.id.as_str(), "pending"],
            )
            .await
            .unwrap_err();
        assert!(err.to_string().to_lowercase().contains("unique"), "{err}");
    }
);

both_backends!(
    simultaneous_first_messages_of_one_customer_share_a_conversation,
    |backend| {
        let db = TestDb::new(backend).await;
        let first = db.store().await;
        let business = tenants::create_business(&first, &tenant()).await.unwrap();
        // Separate stores, like separate processes or Lambda instances.
        let mut stores = Vec::new();
        for _ in 0..4 {
            stores.push(Arc::new(Store::open(db.location.clone()).await.unwrap()));
        }
        let mut tasks = Vec::new();
        for (i, store) in stores.iter().cycle().take(16).enumerate() {
            let store = store.clone();
            let msg = message(&business.id, Some("same-customer"), &format!("hello {i}"));
            tasks.push(tokio::spawn(
                async move { ingest::ingest(&store, &msg).await },
            ));
        }
        let mut conversations = std::collections::HashSet::new();
        for task in tasks {
            match task.await.unwrap().unwrap() {
                Outcome::Stored { receipt, .. } => conversations.insert(receipt.conversation_id),
                other => panic!("unexpected {other:?}"),
            };
        }
        assert_eq!(conversations.len(), 1);
        let id = conversations.into_iter().next().unwrap();
        let sequences: Vec<_> = conversations::messages(&first, &id)
            .await
            .unwrap()
            .iter()
            .map(|m| m.sequence.unwrap())
            .collect();
        assert_eq!(sequences, (1..=16).collect::<Vec<_>>());
    }
);

both_backends!(
    one_idempotency_key_stores_once_even_when_simultaneous,
    |backend| {
        let db = TestDb::new(backend).await;
        let first = db.store().await;
        let business = tenants::create_business(&first, &tenant()).await.unwrap();
        let mut msg = message(&business.id, None, "pay me back");
        msg.idempotency = Some(Idempotency {
            key: "k-1".into(),
            request_hash: [7; 32],
        });

        let a = Arc::new(Store::open(db.location.clone()).await.unwrap());
        let b = Arc::new(Store::open(db.location.clone()).await.unwrap());
        let (x, y) = tokio::join!(ingest::ingest(&a, &msg), ingest::ingest(&b, &msg));
        let outcomes = [x.unwrap(), y.unwrap()];
        let stored: Vec<_> = outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Stored { receipt, .. } => Some(receipt.clone()),
                _ => None,
            })
            .collect();
        let replayed: Vec<_> = outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Replayed(receipt) => Some(receipt.clone()),
                _ => None,
            })
            .collect();
        assert_eq!((stored.len(), replayed.len()), (1, 1), "{outcomes:?}");
        assert_eq!(stored[0], replayed[0]);
        assert_eq!(count(&first, r#"SELECT count(*) FROM "Message""#).await, 1);

        // The same key with another request conflicts and stores nothing.
        msg.idempotency = Some(Idempotency {
            key: "k-1".into(),
            request_hash: [8; 32],
        });
        assert!(matches!(
            ingest::ingest(&first, &msg).await.unwrap(),
            Outcome::Conflict
        ));
        assert_eq!(count(&first, r#"SELECT count(*) FROM "Message""#).await, 1);
        assert_eq!(count(&first, r#"SELECT count(*) FROM "Job""#).await, 1);

        // Keys are scoped per business.
        let other = tenants::create_business(&first, &tenant()).await.unwrap();
        let mut theirs = message(&other.id, None, "pay me back");
        theirs.idempotency = Some(Idempotency {
            key: "k-1".into(),
            request_hash: [7; 32],
        });
        assert!(matches!(
            ingest::ingest(&first, &theirs).await.unwrap(),
            Outcome::Stored { .. }
        ));
    }
);

both_backends!(
    credentials_are_stored_hashed_and_rotate_and_revoke,
    |backend| {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        let business = tenants::create_business(&store, &tenant()).await.unwrap();
        let agent = tenants::create_agent(&store, &business.id, "Ann", "Sales", 3)
            .await
            .unwrap();

        // No secret text anywhere in the credentials table.
        let stored = column(
            &store,
            r#"SELECT hex("secretHash") || "kind" || "id" FROM "Credential""#,
        )
        .await;
        for row in &stored {
            assert!(!row.contains(&business.webhook_key) && !row.contains(&agent.token));
        }
        assert_eq!(
            count(
                &store,
                r#"SELECT min(length("secretHash")) FROM "Credential""#
            )
            .await,
            32
        );

        assert_eq!(
            tenants::authenticate_webhook(&store, &business.webhook_key)
                .await
                .unwrap(),
            Some(business.id.clone())
        );
        let identity = tenants::authenticate_agent(&store, &agent.token)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (identity.business_id.as_str(), identity.agent_id.as_str()),
            (business.id.as_str(), agent.id.as_str())
        );
        // A webhook key is no agent token and the other way round.
        assert_eq!(
            tenants::authenticate_agent(&store, &business.webhook_key)
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            tenants::authenticate_webhook(&store, &agent.token)
                .await
                .unwrap(),
            None
        );

        let new_key = tenants::rotate_webhook_key(&store, &business.id)
            .await
            .unwrap();
        assert_eq!(
            tenants::authenticate_webhook(&store, &business.webhook_key)
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            tenants::authenticate_webhook(&store, &new_key)
                .await
                .unwrap(),
            Some(business.id.clone())
        );

        tenants::revoke_agent(&store, &agent.id).await.unwrap();
        assert_eq!(
            tenants::authenticate_agent(&store, &agent.token)
                .await
                .unwrap(),
            None
        );
        let token = tenants::issue_agent_token(&store, &agent.id).await.unwrap();
        assert!(
            tenants::authenticate_agent(&store, &token)
                .await
                .unwrap()
                .is_some()
        );
        let newer = tenants::issue_agent_token(&store, &agent.id).await.unwrap();
        assert_eq!(
            tenants::authenticate_agent(&store, &token).await.unwrap(),
            None
        );
        assert!(
            tenants::authenticate_agent(&store, &newer)
                .await
                .unwrap()
                .is_some()
        );
    }
);

both_backends!(admin_errors_leave_nothing_behind, |backend| {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let business = tenants::create_business(&store, &tenant()).await.unwrap();
    let before = count(&store, r#"SELECT count(*) FROM "Agent""#).await;

    let err = tenants::create_agent(&store, &business.id, "Bo", "Nope", 5)
        .await
        .unwrap_err();
    assert!(matches!(err, tenants::AdminError::NotFound(_)), "{err}");
    let err = tenants::create_agent(&store, "no-such-business", "Bo", "Sales", 5)
        .await
        .unwrap_err();
    assert!(matches!(err, tenants::AdminError::NotFound(_)), "{err}");
    assert_eq!(
        count(&store, r#"SELECT count(*) FROM "Agent""#).await,
        before
    );

    let mut bad = tenant();
    bad.fallback_department = "Missing".into();
    assert!(matches!(
        tenants::create_business(&store, &bad).await,
        Err(tenants::AdminError::Invalid(_))
    ));
    let mut twice = tenant();
    twice.departments.push(twice.departments[0].clone());
    assert!(matches!(
        tenants::create_business(&store, &twice).await,
        Err(tenants::AdminError::Invalid(_))
    ));
    assert_eq!(count(&store, r#"SELECT count(*) FROM "Business""#).await, 1);
    assert_eq!(
        count(&store, r#"SELECT count(*) FROM "Department""#).await,
        2
    );

    let departments = tenants::departments(&store, &business.id).await.unwrap();
    let names: Vec<_> = departments
        .iter()
        .map(|d| (d.config.name.as_str(), d.is_fallback))
        .collect();
    assert_eq!(names, [("Sales", false), ("General", true)]);
    assert_eq!(departments[0].config.examples, ["how much is it"]);
});

both_backends!(
    one_failing_message_does_not_undo_others_committed_with_it,
    |backend| {
        let db = TestDb::new(backend).await;
        let store = Arc::new(db.store().await);
        let business = tenants::create_business(&store, &tenant()).await.unwrap();

        // Many at once, so that on a local file they share group commits; the messages
        // for a business that does not exist break a foreign key.
        let mut tasks = Vec::new();
        for i in 0..40 {
            let store = store.clone();
            let owner = if i % 10 == 3 {
                "no-such-business".to_owned()
            } else {
                business.id.clone()
            };
            let msg = message(&owner, Some(&format!("c{}", i % 5)), &format!("m{i}"));
            tasks.push(tokio::spawn(async move {
                (i, ingest::ingest(&store, &msg).await)
            }));
        }
        let (mut stored, mut failed) = (0, 0);
        for task in tasks {
            let (i, result) = task.await.unwrap();
            match result {
                Ok(Outcome::Stored { .. }) => stored += 1,
                Err(_) if i % 10 == 3 => failed += 1,
                other => panic!("message {i}: {other:?}"),
            }
        }
        assert_eq!((stored, failed), (36, 4));
        assert_eq!(count(&store, r#"SELECT count(*) FROM "Message""#).await, 36);
        assert_eq!(count(&store, r#"SELECT count(*) FROM "Job""#).await, 36);
        assert_eq!(
            count(&store, r#"SELECT count(*) FROM "Conversation""#).await,
            5
        );
        // Sequence numbers have no gaps.
        assert_eq!(
        count(&store, r#"SELECT count(*) FROM "Conversation" WHERE "lastSequence" <> (SELECT count(*) FROM "Message" m WHERE m."conversationId" = "Conversation"."id")"#).await,
        0
    );
    }
);

#[tokio::test]
async fn a_new_local_file_uses_wal_and_small_pages() {
    let db = TestDb::new(Backend::File).await;
    let store = db.store().await;
    assert_eq!(column(&store, "PRAGMA journal_mode").await, ["wal"]);
    assert_eq!(column(&store, "PRAGMA page_size").await, ["1024"]);
    assert_eq!(column(&store, "PRAGMA foreign_keys").await, ["1"]);
}

/// Migration 4 counts the conversations agents already have in progress, and the
/// capacity trigger it replaces keeps refusing an agent past capacity.
#[tokio::test]
async fn migration_4_counts_existing_loads() {
    use chat_router::store::{Location, migrations};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v3.db");
    {
        let db = libsql::Builder::new_local(&path).build().await.unwrap();
        let conn = db.connect().unwrap();
        conn.execute(migrations::VERSION_TABLE, ()).await.unwrap();
        for migration in &migrations::MIGRATIONS[..3] {
            for statement in migrations::statements(migration.sql) {
                conn.execute(statement, ()).await.unwrap();
            }
            conn.execute(
                r#"INSERT INTO "SchemaMigration" VALUES (?1, ?2, '2026-01-01T00:00:00.000+00:00')"#,
                libsql::params![migration.version, migration.name],
            )
            .await
            .unwrap();
        }
        for sql in [
            r#"INSERT INTO "Business" ("id", "name") VALUES ('b', 'B')"#,
            r#"INSERT INTO "Agent" ("id", "name", "department", "businessId", "capacity")
               VALUES ('a1', 'One', 'Support', 'b', 2), ('a2', 'Two', 'Support', 'b', 5)"#,
            r#"INSERT INTO "Conversation" ("id", "businessId", "department", "status", "assignedAgentId")
               VALUES ('c1', 'b', 'Support', 'in_progress', 'a1'), ('c2', 'b', 'Support', 'in_progress', 'a1'),
                      ('c3', 'b', 'Support', 'closed', 'a1'), ('c4', 'b', 'Support', 'in_progress', 'a2'),
                      ('c5', 'b', 'Support', 'open', NULL)"#,
        ] {
            conn.execute(sql, ()).await.unwrap();
        }
    }
    let store = Store::open(Location::Local(path)).await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), CURRENT_VERSION);
    assert_eq!(
        column(
            &store,
            r#"SELECT "agentId" || '=' || "active" FROM "AgentLoad" ORDER BY "agentId""#
        )
        .await,
        vec!["a1=2", "a2=1"]
    );
    let conn = store.writer().await.unwrap();
    let err = conn
        .execute(
            r#"UPDATE "Conversation" SET "status" = 'in_progress', "assignedAgentId" = 'a1' WHERE "id" = 'c5'"#,
            (),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("agent_over_capacity"), "{err}");
    conn.execute(
        r#"UPDATE "Conversation" SET "status" = 'in_progress', "assignedAgentId" = 'a2' WHERE "id" = 'c5'"#,
        (),
    )
    .await
    .unwrap();
    conn.execute(
        r#"UPDATE "Conversation" SET "status" = 'closed' WHERE "id" = 'c1'"#,
        (),
    )
    .await
    .unwrap();
    drop(conn);
    assert_eq!(
        column(
            &store,
            r#"SELECT "agentId" || '=' || "active" FROM "AgentLoad" ORDER BY "agentId""#
        )
        .await,
        vec!["a1=1", "a2=2"]
    );
}
