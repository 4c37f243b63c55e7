-- The distributed layout, when this database is a Citus coordinator; nothing on plain
-- PostgreSQL.
--
-- `calls_distribute_with_citus()` distributes every organization-scoped table by its
-- organization (`organization_id`; `idempotency_keys` by `scope`), all co-located with
-- `organizations`, so that an organization's rows of every table live on one node and each
-- transaction of a request runs there; `api_keys` becomes a reference table (a request's
-- key is found by its public part, before its organization is known); `schema_migrations`
-- stays on the coordinator, where the migrations alone read and write it. Why the keys
-- allow it: the header of 0001_initial.sql; what is checked without Citus (the keys, every
-- statement the store sends, and this function's calls): tests/store/test_distribution.py.
--
-- This migration calls it when the `citus` extension is installed. On a database that
-- becomes a coordinator later (the extension created after this version was applied), run
-- `SELECT calls_distribute_with_citus()` once; Citus moves rows already there into the
-- shards (then `truncate_local_data_after_distributing_table` frees their local copies).
-- A migration that adds a table adds it here too: the test above fails until it does.

CREATE FUNCTION calls_distribute_with_citus() RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    co_located text;
BEGIN
    -- Distributing in the migrations' transaction, after its DDL: one connection per
    -- node, as Citus asks of a transaction that created or altered tables first.
    PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);
    PERFORM create_reference_table('api_keys');
    PERFORM create_distributed_table('organizations', 'organization_id');
    FOREACH co_located IN ARRAY ARRAY[
        'organization_usage', 'calls', 'agents', 'phone_numbers', 'webhooks',
        'webhook_events', 'batches', 'batch_tasks'
    ] LOOP
        PERFORM create_distributed_table(
            co_located::regclass, 'organization_id', colocate_with => 'organizations'
        );
    END LOOP;
    PERFORM create_distributed_table(
        'idempotency_keys', 'scope', colocate_with => 'organizations'
    );
END;
$$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        PERFORM calls_distribute_with_citus();
    END IF;
END;
$$;
