-- Batch calls (campaigns): a batch, and its tasks in their own rows, so that a task's
-- change rewrites one small row and its batch's counters, not the whole task list.
--
-- `active`: the dispatcher has work in the batch (domain.batches.active), found across
-- organizations by the partial index; `in_progress`: its calls under way, summed per
-- organization for the organization's concurrency cap.
CREATE TABLE batches (
    organization_id text NOT NULL,
    batch_call_id text NOT NULL,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    active boolean NOT NULL,
    in_progress integer NOT NULL,
    doc jsonb NOT NULL,
    PRIMARY KEY (organization_id, batch_call_id)
);
CREATE INDEX batches_oldest_first ON batches (organization_id, seq);
CREATE INDEX batches_active ON batches (organization_id) INCLUDE (in_progress) WHERE active;

CREATE TABLE batch_tasks (
    organization_id text NOT NULL,
    batch_call_id text NOT NULL,
    task_id text NOT NULL,
    position integer NOT NULL,
    status text NOT NULL,
    next_attempt_at bigint,
    doc jsonb NOT NULL,
    PRIMARY KEY (organization_id, batch_call_id, task_id),
    UNIQUE (organization_id, batch_call_id, position)
);
-- The dispatcher's look for due tasks: the pending ones of a batch by due time.
CREATE INDEX batch_tasks_due ON batch_tasks (organization_id, batch_call_id, next_attempt_at, position)
    WHERE status = 'pending';
