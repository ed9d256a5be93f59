//! Versioned schema migrations.
//!
//! Version 1 creates the four documented tables exactly as Prisma's migration for the
//! documented schema does (`IF NOT EXISTS` lets us adopt a database Prisma created;
//! SQLite drops that clause from the stored definition), then adds what the product
//! needs as nullable or defaulted columns and new tables. Documented columns are never
//! changed. Each migration runs in one `BEGIN IMMEDIATE` transaction that first
//! re-reads the version, so two processes migrating at once apply it exactly once.

/// One schema step.
pub struct Migration {
    /// Strictly increasing, starting at 1.
    pub version: i64,
    /// A short name, stored with the version.
    pub name: &'static str,
    /// Statements separated by `;` at line ends; none may contain a `;` of its own.
    pub sql: &'static str,
}

/// Every migration, oldest first.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "documented schema and product tables",
        sql: V1,
    },
    Migration {
        version: 2,
        name: "routing: department queues, agent presence, job hand-off times",
        sql: V2,
    },
    Migration {
        version: 3,
        name: "agent replies: the agent who wrote a message and the client's message id",
        sql: V3,
    },
    Migration {
        version: 4,
        name: "routing: each agent's count of conversations in progress",
        sql: V4,
    },
    Migration {
        version: 5,
        name: "callbacks: businesses' callback endpoints and the deliveries to them",
        sql: V5,
    },
];

/// The schema version this build reads and writes.
pub const CURRENT_VERSION: i64 = 5;

const V1: &str = r#"
CREATE TABLE IF NOT EXISTS "Business" (
    "id" TEXT NOT NULL PRIMARY KEY,
    "name" TEXT NOT NULL,
    "createdAt" DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE IF NOT EXISTS "Agent" (
    "id" TEXT NOT NULL PRIMARY KEY,
    "name" TEXT NOT NULL,
    "department" TEXT NOT NULL,
    "businessId" TEXT NOT NULL,
    "createdAt" DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT "Agent_businessId_fkey" FOREIGN KEY ("businessId") REFERENCES "Business" ("id") ON DELETE RESTRICT ON UPDATE CASCADE
);

CREATE TABLE IF NOT EXISTS "Conversation" (
    "id" TEXT NOT NULL PRIMARY KEY,
    "businessId" TEXT NOT NULL,
    "department" TEXT NOT NULL,
    "status" TEXT NOT NULL,
    "createdAt" DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT "Conversation_businessId_fkey" FOREIGN KEY ("businessId") REFERENCES "Business" ("id") ON DELETE RESTRICT ON UPDATE CASCADE
);

CREATE TABLE IF NOT EXISTS "Message" (
    "id" TEXT NOT NULL PRIMARY KEY,
    "conversationId" TEXT NOT NULL,
    "sender" TEXT NOT NULL,
    "content" TEXT NOT NULL,
    "createdAt" DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT "Message_conversationId_fkey" FOREIGN KEY ("conversationId") REFERENCES "Conversation" ("id") ON DELETE RESTRICT ON UPDATE CASCADE
);

ALTER TABLE "Business" ADD COLUMN "confidenceThreshold" REAL NOT NULL DEFAULT 0.5;

ALTER TABLE "Agent" ADD COLUMN "capacity" INTEGER NOT NULL DEFAULT 5;

ALTER TABLE "Conversation" ADD COLUMN "customerId" TEXT;
ALTER TABLE "Conversation" ADD COLUMN "customerName" TEXT;
ALTER TABLE "Conversation" ADD COLUMN "channel" TEXT;
ALTER TABLE "Conversation" ADD COLUMN "assignedAgentId" TEXT;
ALTER TABLE "Conversation" ADD COLUMN "intent" TEXT;
ALTER TABLE "Conversation" ADD COLUMN "confidence" REAL;
ALTER TABLE "Conversation" ADD COLUMN "classifier" TEXT;
ALTER TABLE "Conversation" ADD COLUMN "updatedAt" DATETIME;
ALTER TABLE "Conversation" ADD COLUMN "closedAt" DATETIME;
ALTER TABLE "Conversation" ADD COLUMN "lastSequence" INTEGER NOT NULL DEFAULT 0;

ALTER TABLE "Message" ADD COLUMN "sequence" INTEGER;

CREATE UNIQUE INDEX "Conversation_open_customer_key" ON "Conversation" ("businessId", "customerId")
    WHERE "customerId" IS NOT NULL AND "status" <> 'closed';
CREATE UNIQUE INDEX "Message_conversationId_sequence_key" ON "Message" ("conversationId", "sequence");
CREATE INDEX "Agent_businessId_department_idx" ON "Agent" ("businessId", "department");

CREATE TABLE "Department" (
    "id" TEXT NOT NULL PRIMARY KEY,
    "businessId" TEXT NOT NULL,
    "name" TEXT NOT NULL,
    "description" TEXT NOT NULL DEFAULT '',
    "examples" TEXT NOT NULL DEFAULT '[]',
    "intents" TEXT NOT NULL DEFAULT '[]',
    "isFallback" BOOLEAN NOT NULL DEFAULT false,
    "position" INTEGER NOT NULL,
    "createdAt" DATETIME NOT NULL,
    CONSTRAINT "Department_businessId_fkey" FOREIGN KEY ("businessId") REFERENCES "Business" ("id") ON DELETE CASCADE ON UPDATE CASCADE
);
CREATE UNIQUE INDEX "Department_businessId_name_key" ON "Department" ("businessId", "name");
CREATE UNIQUE INDEX "Department_businessId_fallback_key" ON "Department" ("businessId") WHERE "isFallback";

CREATE TABLE "Credential" (
    "id" TEXT NOT NULL PRIMARY KEY,
    "kind" TEXT NOT NULL CHECK ("kind" IN ('webhook', 'agent')),
    "businessId" TEXT NOT NULL,
    "agentId" TEXT,
    "secretHash" BLOB NOT NULL,
    "createdAt" DATETIME NOT NULL,
    "revokedAt" DATETIME,
    CONSTRAINT "Credential_businessId_fkey" FOREIGN KEY ("businessId") REFERENCES "Business" ("id") ON DELETE CASCADE ON UPDATE CASCADE,
    CONSTRAINT "Credential_agentId_fkey" FOREIGN KEY ("agentId") REFERENCES "Agent" ("id") ON DELETE CASCADE ON UPDATE CASCADE
);
CREATE UNIQUE INDEX "Credential_secretHash_key" ON "Credential" ("secretHash");
CREATE UNIQUE INDEX "Credential_active_webhook_key" ON "Credential" ("businessId")
    WHERE "kind" = 'webhook' AND "revokedAt" IS NULL;
CREATE UNIQUE INDEX "Credential_active_agent_key" ON "Credential" ("agentId")
    WHERE "kind" = 'agent' AND "revokedAt" IS NULL;

CREATE TABLE "IdempotencyRecord" (
    "businessId" TEXT NOT NULL,
    "key" TEXT NOT NULL,
    "requestHash" BLOB NOT NULL,
    "conversationId" TEXT,
    "messageId" TEXT NOT NULL,
    "createdAt" DATETIME NOT NULL,
    PRIMARY KEY ("businessId", "key"),
    CONSTRAINT "IdempotencyRecord_businessId_fkey" FOREIGN KEY ("businessId") REFERENCES "Business" ("id") ON DELETE CASCADE ON UPDATE CASCADE
) WITHOUT ROWID;

CREATE TABLE "Job" (
    "id" INTEGER NOT NULL PRIMARY KEY,
    "kind" TEXT NOT NULL,
    "businessId" TEXT NOT NULL,
    "conversationId" TEXT NOT NULL,
    "messageId" TEXT NOT NULL,
    "status" TEXT NOT NULL DEFAULT 'pending',
    "attempts" INTEGER NOT NULL DEFAULT 0,
    "lastError" TEXT,
    "createdAt" DATETIME NOT NULL,
    "updatedAt" DATETIME NOT NULL,
    CONSTRAINT "Job_conversationId_fkey" FOREIGN KEY ("conversationId") REFERENCES "Conversation" ("id") ON DELETE CASCADE ON UPDATE CASCADE,
    CONSTRAINT "Job_messageId_fkey" FOREIGN KEY ("messageId") REFERENCES "Message" ("id") ON DELETE CASCADE ON UPDATE CASCADE
);
CREATE INDEX "Job_status_id_idx" ON "Job" ("status", "id")
"#;

/// Routing. A conversation's place in its department's queue and a job's last hand-off
/// are integer milliseconds since the Unix epoch, so they compare as numbers. Triggers
/// keep assignment within an agent's capacity and business whatever the caller does:
/// the routing code checks both first, so they only fire on a bug. (A trigger body
/// keeps its `;` mid-line, since statements split at line ends.)
const V2: &str = r#"
ALTER TABLE "Conversation" ADD COLUMN "queuedAt" INTEGER;
ALTER TABLE "Job" ADD COLUMN "enqueuedAt" INTEGER NOT NULL DEFAULT 0;

CREATE TABLE "AgentPresence" (
    "agentId" TEXT NOT NULL PRIMARY KEY,
    "businessId" TEXT NOT NULL,
    "expiresAt" INTEGER NOT NULL,
    "idleSince" INTEGER NOT NULL,
    CONSTRAINT "AgentPresence_agentId_fkey" FOREIGN KEY ("agentId") REFERENCES "Agent" ("id") ON DELETE CASCADE ON UPDATE CASCADE
);
CREATE INDEX "AgentPresence_businessId_idx" ON "AgentPresence" ("businessId");

CREATE INDEX "Conversation_waiting_idx" ON "Conversation" ("businessId", "department", "queuedAt")
    WHERE "status" = 'open';
CREATE INDEX "Conversation_assignedAgentId_idx" ON "Conversation" ("assignedAgentId")
    WHERE "status" = 'in_progress';
CREATE INDEX "Job_pending_conversation_idx" ON "Job" ("conversationId", "id")
    WHERE "status" = 'pending';

CREATE TRIGGER "Conversation_agent_capacity" BEFORE UPDATE OF "assignedAgentId", "status" ON "Conversation"
    WHEN NEW."status" = 'in_progress' AND NEW."assignedAgentId" IS NOT NULL
        AND (OLD."status" <> 'in_progress' OR OLD."assignedAgentId" IS NOT NEW."assignedAgentId")
        AND (SELECT count(*) FROM "Conversation" WHERE "assignedAgentId" = NEW."assignedAgentId" AND "status" = 'in_progress')
            >= (SELECT "capacity" FROM "Agent" WHERE "id" = NEW."assignedAgentId")
    BEGIN SELECT RAISE(ABORT, 'agent_over_capacity'); END;

CREATE TRIGGER "Conversation_agent_business" BEFORE UPDATE OF "assignedAgentId" ON "Conversation"
    WHEN NEW."assignedAgentId" IS NOT NULL
        AND (SELECT "businessId" FROM "Agent" WHERE "id" = NEW."assignedAgentId") IS NOT NEW."businessId"
    BEGIN SELECT RAISE(ABORT, 'agent_of_another_business'); END
"#;

/// Agent replies. A message an agent wrote names the agent; the client's own id for it
/// (`clientMessageId`) is unique per conversation, so a resent reply is stored once.
const V3: &str = r#"
ALTER TABLE "Message" ADD COLUMN "agentId" TEXT;
ALTER TABLE "Message" ADD COLUMN "clientMessageId" TEXT;
CREATE UNIQUE INDEX "Message_conversationId_clientMessageId_key" ON "Message" ("conversationId", "clientMessageId")
    WHERE "clientMessageId" IS NOT NULL
"#;

/// Agent load. Each agent's number of conversations `in_progress` is kept in
/// `AgentLoad` by triggers on `Conversation`, whoever writes it, so assignment reads
/// one row per agent instead of counting conversations; the capacity trigger reads it
/// too. Agents without a row have none. The first statement counts what exists.
const V4: &str = r#"
CREATE TABLE "AgentLoad" (
    "agentId" TEXT NOT NULL PRIMARY KEY,
    "active" INTEGER NOT NULL DEFAULT 0 CHECK ("active" >= 0),
    CONSTRAINT "AgentLoad_agentId_fkey" FOREIGN KEY ("agentId") REFERENCES "Agent" ("id") ON DELETE CASCADE ON UPDATE CASCADE
) WITHOUT ROWID;

INSERT INTO "AgentLoad" ("agentId", "active")
    SELECT "assignedAgentId", count(*) FROM "Conversation"
    WHERE "status" = 'in_progress' AND "assignedAgentId" IN (SELECT "id" FROM "Agent")
    GROUP BY "assignedAgentId";

CREATE TRIGGER "Conversation_load_leave" AFTER UPDATE OF "assignedAgentId", "status" ON "Conversation"
    WHEN OLD."status" = 'in_progress' AND OLD."assignedAgentId" IS NOT NULL
        AND (NEW."status" <> 'in_progress' OR NEW."assignedAgentId" IS NOT OLD."assignedAgentId")
    BEGIN UPDATE "AgentLoad" SET "active" = "active" - 1 WHERE "agentId" = OLD."assignedAgentId"; END;

CREATE TRIGGER "Conversation_load_join" AFTER UPDATE OF "assignedAgentId", "status" ON "Conversation"
    WHEN NEW."status" = 'in_progress' AND NEW."assignedAgentId" IS NOT NULL
        AND (OLD."status" <> 'in_progress' OR OLD."assignedAgentId" IS NOT NEW."assignedAgentId")
    BEGIN INSERT INTO "AgentLoad" ("agentId", "active") VALUES (NEW."assignedAgentId", 1)
        ON CONFLICT ("agentId") DO UPDATE SET "active" = "active" + 1; END;

CREATE TRIGGER "Conversation_load_insert" AFTER INSERT ON "Conversation"
    WHEN NEW."status" = 'in_progress' AND NEW."assignedAgentId" IS NOT NULL
    BEGIN INSERT INTO "AgentLoad" ("agentId", "active") VALUES (NEW."assignedAgentId", 1)
        ON CONFLICT ("agentId") DO UPDATE SET "active" = "active" + 1; END;

CREATE TRIGGER "Conversation_load_delete" AFTER DELETE ON "Conversation"
    WHEN OLD."status" = 'in_progress' AND OLD."assignedAgentId" IS NOT NULL
    BEGIN UPDATE "AgentLoad" SET "active" = "active" - 1 WHERE "agentId" = OLD."assignedAgentId"; END;

DROP TRIGGER "Conversation_agent_capacity";

CREATE TRIGGER "Conversation_agent_capacity" BEFORE UPDATE OF "assignedAgentId", "status" ON "Conversation"
    WHEN NEW."status" = 'in_progress' AND NEW."assignedAgentId" IS NOT NULL
        AND (OLD."status" <> 'in_progress' OR OLD."assignedAgentId" IS NOT NEW."assignedAgentId")
        AND coalesce((SELECT "active" FROM "AgentLoad" WHERE "agentId" = NEW."assignedAgentId"), 0)
            >= (SELECT "capacity" FROM "Agent" WHERE "id" = NEW."assignedAgentId")
    BEGIN SELECT RAISE(ABORT, 'agent_over_capacity'); END
"#;

/// Callbacks. A business's endpoint holds its URL, its signing secret encrypted under
/// `CALLBACK_SECRET_KEY` (see `callback::secret`), the events it opted into (a comma
/// separated list, `message` always among them) and whether loopback URLs are allowed
/// (local runs only). A delivery is a `Job` of kind `delivery`, so it shares the
/// outbox, the attempt count, the queue's deduplication by id and the sweeper with
/// routing; its `Delivery` row holds the body exactly as it is signed and sent, so
/// every retry sends the same bytes under the same delivery id. The new index finds a
/// conversation's pending jobs of one kind in order; it replaces migration 2's index
/// of pending jobs by conversation, which nothing reads any more and every job write
/// kept up.
const V5: &str = r#"
CREATE TABLE "CallbackEndpoint" (
    "businessId" TEXT NOT NULL PRIMARY KEY,
    "url" TEXT NOT NULL,
    "secret" TEXT NOT NULL,
    "events" TEXT NOT NULL DEFAULT 'message',
    "allowLoopback" BOOLEAN NOT NULL DEFAULT false,
    "createdAt" DATETIME NOT NULL,
    "updatedAt" DATETIME NOT NULL,
    CONSTRAINT "CallbackEndpoint_businessId_fkey" FOREIGN KEY ("businessId") REFERENCES "Business" ("id") ON DELETE CASCADE ON UPDATE CASCADE
);

CREATE TABLE "Delivery" (
    "jobId" INTEGER NOT NULL PRIMARY KEY,
    "deliveryId" TEXT NOT NULL,
    "event" TEXT NOT NULL,
    "payload" TEXT NOT NULL,
    "lastStatus" INTEGER,
    "deliveredAt" DATETIME,
    CONSTRAINT "Delivery_jobId_fkey" FOREIGN KEY ("jobId") REFERENCES "Job" ("id") ON DELETE CASCADE ON UPDATE CASCADE
);
CREATE UNIQUE INDEX "Delivery_deliveryId_key" ON "Delivery" ("deliveryId");

CREATE INDEX "Job_pending_kind_conversation_idx" ON "Job" ("conversationId", "kind", "id")
    WHERE "status" = 'pending';

DROP INDEX "Job_pending_conversation_idx"
"#;

/// The table that records applied versions; created before any migration runs.
pub const VERSION_TABLE: &str = r#"CREATE TABLE IF NOT EXISTS "SchemaMigration" (
    "version" INTEGER NOT NULL PRIMARY KEY,
    "name" TEXT NOT NULL,
    "appliedAt" DATETIME NOT NULL
)"#;

/// Splits a migration into statements.
pub fn statements(sql: &str) -> impl Iterator<Item = &str> {
    sql.split(";\n").map(str::trim).filter(|s| !s.is_empty())
}
