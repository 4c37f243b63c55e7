-- The schema of storage/postgres/ (PostgresStore), applied once, in a transaction that
-- holds the migrations' advisory lock, and recorded in schema_migrations.
--
-- Every record is its JSON document (`doc`, JSONB, answered as stored) plus real columns
-- for what is looked up, filtered, sorted or summed without opening the document. `seq`
-- (an identity) is the order of insertion: "oldest first" listings, the last tie-breaker
-- of the calls' order and part of every call's cursor position.
--
-- Distributing with Citus: every organization-scoped table would be a distributed table
-- with `organization_id` as its distribution column, all of them co-located
-- (`create_distributed_table('calls', 'organization_id', colocate_with => 'organizations')`,
-- and the same for organizations, agents, phone_numbers, webhooks, webhook_events,
-- organization_usage, and batches and batch_tasks of 0005); idempotency_keys by `scope`,
-- which is the organization's id for an organization's keys (the admin API's scope is one
-- more value). That works because every primary key and unique index of those tables
-- begins with the distribution column (Citus enforces uniqueness only within a shard), and
-- because every request of an organization names it: each statement of a transaction
-- filters on one `organization_id`, so the whole transaction (a call, its usage row, its
-- outbox events, its organization's webhooks and agents) runs on the one node that holds
-- that organization. The only statements across organizations are sweeps (due scheduled
-- calls, active batches, calls of a stopped sandbox, pending webhook events, pruning), the
-- totals of /metrics and copy-to-postgres, which Citus runs on every shard in parallel. The keys are checked by
-- tests/store/test_distribution.py, every statement the store sends while the store suite
-- runs by tests/system/test_distribution_suite.py.
--
-- Reference tables (copied to every node): api_keys, since a request is authenticated by
-- its key before its organization is known, so the key must be found without the
-- distribution column (its UNIQUE (api_key) index is allowed on a reference table; keys are
-- few and rarely written); and schema_migrations (or keep it on the coordinator alone).
-- Identity columns (`seq`) are supported on distributed tables; `seq` only has to order
-- the rows of one organization, which live on one shard.

CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TABLE organizations (
    organization_id text PRIMARY KEY,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    doc jsonb NOT NULL
);

-- How many calls and JSON bytes each organization holds, kept by every write of a call in
-- its transaction: quotas are checked without counting rows (and the row lock serializes
-- an organization's concurrent adds against its quota).
CREATE TABLE organization_usage (
    organization_id text PRIMARY KEY,
    calls bigint NOT NULL DEFAULT 0,
    bytes bigint NOT NULL DEFAULT 0
);

CREATE TABLE api_keys (
    organization_id text NOT NULL,
    api_key_id text NOT NULL,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    api_key text NOT NULL,
    doc jsonb NOT NULL,
    PRIMARY KEY (organization_id, api_key_id)
);
-- Every authenticated request finds its key by the public part.
CREATE UNIQUE INDEX api_keys_api_key ON api_keys (api_key);
CREATE INDEX api_keys_oldest_first ON api_keys (organization_id, seq);

CREATE TABLE calls (
    organization_id text NOT NULL,
    call_id text NOT NULL,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    doc jsonb NOT NULL,
    size integer NOT NULL,  -- bytes of `doc` as JSON, for the byte quota
    call_status text NOT NULL,
    call_type text,
    direction text,
    agent_id text,
    created_at bigint NOT NULL,
    updated_at bigint,
    start_timestamp bigint,
    end_timestamp bigint,
    call_duration bigint,
    scheduled_timestamp bigint,
    -- `transcript` and the `content` of each `transcript_object` entry, lower-cased (by
    -- Python, as the listing's matching does): the parts one by one, to match exactly, and
    -- joined, for the trigram index to find candidates.
    search_parts text[] NOT NULL,
    search_text text NOT NULL,
    PRIMARY KEY (organization_id, call_id)
);

-- The default order (newest first), and created_at ranges.
CREATE INDEX calls_created ON calls (organization_id, created_at DESC, seq DESC);
-- Each sort field: its calls with a value in order (and its ranges) ...
CREATE INDEX calls_updated ON calls (organization_id, updated_at, created_at, seq);
CREATE INDEX calls_started ON calls (organization_id, start_timestamp, created_at, seq);
CREATE INDEX calls_ended ON calls (organization_id, end_timestamp, created_at, seq);
CREATE INDEX calls_duration ON calls (organization_id, call_duration, created_at, seq);
-- ... and those without one, which come last in either order, by creation.
CREATE INDEX calls_not_started ON calls (organization_id, created_at, seq)
    WHERE start_timestamp IS NULL;
CREATE INDEX calls_not_ended ON calls (organization_id, created_at, seq)
    WHERE end_timestamp IS NULL;
CREATE INDEX calls_no_duration ON calls (organization_id, created_at, seq)
    WHERE call_duration IS NULL;
-- Each equality filter, in the default order.
CREATE INDEX calls_by_status ON calls (organization_id, call_status, created_at DESC, seq DESC);
CREATE INDEX calls_by_type ON calls (organization_id, call_type, created_at DESC, seq DESC);
CREATE INDEX calls_by_direction ON calls (organization_id, direction, created_at DESC, seq DESC);
CREATE INDEX calls_by_agent ON calls (organization_id, agent_id, created_at DESC, seq DESC);
-- transcript_search: a substring (LIKE '%...%') found through trigrams, not by a scan.
CREATE INDEX calls_search ON calls USING gin (search_text gin_trgm_ops);
-- The scheduler's sweep of due calls, across organizations.
CREATE INDEX calls_scheduled ON calls (scheduled_timestamp)
    WHERE call_status = 'scheduled';

CREATE TABLE agents (
    organization_id text NOT NULL,
    agent_id text NOT NULL,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    doc jsonb NOT NULL,
    PRIMARY KEY (organization_id, agent_id)
);
CREATE INDEX agents_oldest_first ON agents (organization_id, seq);

CREATE TABLE phone_numbers (
    organization_id text NOT NULL,
    phone_number text NOT NULL,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    doc jsonb NOT NULL,
    PRIMARY KEY (organization_id, phone_number)
);
CREATE INDEX phone_numbers_oldest_first ON phone_numbers (organization_id, seq);

CREATE TABLE webhooks (
    organization_id text NOT NULL,
    webhook_id text NOT NULL,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    doc jsonb NOT NULL,
    PRIMARY KEY (organization_id, webhook_id)
);
CREATE INDEX webhooks_oldest_first ON webhooks (organization_id, seq);

-- The outbox: the events owed to webhooks, written in the transaction of the change of a
-- call that owes them.
CREATE TABLE webhook_events (
    organization_id text NOT NULL,
    webhook_id text NOT NULL,
    event_id text NOT NULL,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    status text NOT NULL,
    created_at bigint NOT NULL,
    settled_at bigint,  -- when delivered or given up (domain.webhooks.settled_at)
    doc jsonb NOT NULL,
    PRIMARY KEY (organization_id, webhook_id, event_id)
);
-- A webhook's events, newest first.
CREATE INDEX webhook_events_newest_first
    ON webhook_events (organization_id, webhook_id, seq DESC);
-- The delivery queue (pending events, in the order recorded) and the pruning of settled ones.
CREATE INDEX webhook_events_pending ON webhook_events (seq) WHERE status = 'pending';
CREATE INDEX webhook_events_settled ON webhook_events (settled_at)
    WHERE settled_at IS NOT NULL;

CREATE TABLE idempotency_keys (
    scope text NOT NULL,  -- an organization's id, or the admin API's scope
    key text NOT NULL,
    expires_at bigint NOT NULL,
    doc jsonb NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
