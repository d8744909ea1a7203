-- +goose Up
-- The keyed audit chain (issue 9, High 4): from here on every row's hash is
-- HMAC-SHA-256(key, prev_hash || canonical(row)) under a key of the PII
-- index keyset (KMS-wrapped, never in PostgreSQL), computed by the API's
-- audit journal (audit.Journal), and key_id names the key. Rows written
-- before this migration keep key_id NULL and their SHA-256 hashes; the
-- first keyed row's MAC covers the last unkeyed row's hash, so the whole
-- unkeyed prefix is fixed by it (the cut-over). `audit verify` with the
-- keys refuses an unkeyed row after a keyed one and a chain without a
-- keyed row.
ALTER TABLE audit_log ADD COLUMN key_id bigint;

-- Nothing in PostgreSQL can hash a row any more: audit_append (the
-- in-transaction append of writes, and of binaries from before the cut-over)
-- queues its entries in audit_pending, in the caller's transaction; the
-- journal chains them with the key. It returns the first entry's queue id.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION audit_append(p_at timestamptz[], p_actor text[], p_lender text[], p_action text[], p_resource text[],
                                        p_purpose text[], p_result text[], p_request_id text[]) RETURNS bigint
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT audit_pend(p_at, p_actor, p_lender, p_action, p_resource, p_purpose, p_result, p_request_id)
$$;
-- +goose StatementEnd

-- The unkeyed chainer of migration 00005 is retired: the journal chains.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION audit_chain_pending(p_max int) RETURNS int
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'audit_chain_pending: the audit chain is keyed (migration 00006); the API''s audit journal chains queued entries';
END $$;
-- +goose StatementEnd

-- audit_append_keyed appends rows whose hashes the caller computed with the
-- key (the API holds it, PostgreSQL does not), in one statement: it takes
-- the chain lock and checks that the chain's head is (p_first - 1,
-- p_prev); if not (another instance appended, or the caller's cached head
-- is stale) it appends nothing and returns ok = false with the head, so
-- the caller recomputes and retries. Otherwise it removes the queued
-- entries the batch chains (p_pending: an audit_pending id per row, NULL
-- for rows that were never queued), refusing the batch unless each of them
-- is still queued with exactly the given contents (SQLSTATE LFA01), so a
-- caller cannot drop queued entries without chaining them as they are, and
-- inserts the rows linked by prev_hash. It cannot check the MACs (it has
-- no key): `audit verify` does.
-- +goose StatementBegin
CREATE FUNCTION audit_append_keyed(p_first bigint, p_prev bytea, p_pending bigint[], p_at timestamptz[], p_actor text[],
                                   p_lender text[], p_action text[], p_resource text[], p_purpose text[], p_result text[],
                                   p_request_id text[], p_key_id bigint[], p_hash bytea[])
RETURNS TABLE (ok boolean, head_seq bigint, head_hash bytea)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    n     int := coalesce(array_length(p_hash, 1), 0);
    s     bigint;
    h     bytea;
    want  int;
    taken int;
BEGIN
    IF n = 0 THEN
        RAISE EXCEPTION 'audit_append_keyed: no rows';
    END IF;
    IF coalesce(array_length(p_pending, 1), 0) <> n OR coalesce(array_length(p_at, 1), 0) <> n
       OR coalesce(array_length(p_actor, 1), 0) <> n OR coalesce(array_length(p_lender, 1), 0) <> n
       OR coalesce(array_length(p_action, 1), 0) <> n OR coalesce(array_length(p_resource, 1), 0) <> n
       OR coalesce(array_length(p_purpose, 1), 0) <> n OR coalesce(array_length(p_result, 1), 0) <> n
       OR coalesce(array_length(p_request_id, 1), 0) <> n OR coalesce(array_length(p_key_id, 1), 0) <> n THEN
        RAISE EXCEPTION 'audit_append_keyed: arrays of different lengths';
    END IF;
    IF array_position(p_hash, NULL) IS NOT NULL OR array_position(p_key_id, NULL) IS NOT NULL OR p_prev IS NULL THEN
        RAISE EXCEPTION 'audit_append_keyed: NULL hash, key id or prev';
    END IF;
    PERFORM pg_advisory_xact_lock(5496152229725950977);
    SELECT l.seq, l.hash INTO s, h FROM audit_log l ORDER BY l.seq DESC LIMIT 1;
    IF NOT FOUND THEN
        s := 0;
        h := ''::bytea;
    END IF;
    IF s + 1 <> p_first OR h <> p_prev THEN
        RETURN QUERY SELECT false, s, h;
        RETURN;
    END IF;
    SELECT count(*) INTO want FROM unnest(p_pending) x WHERE x IS NOT NULL;
    IF want > 0 THEN
        WITH d AS (
            DELETE FROM audit_pending q
            USING unnest(p_pending, p_at, p_actor, p_lender, p_action, p_resource, p_purpose, p_result, p_request_id)
                AS u(pid, at, actor, lender_id, action, resource, purpose, result, request_id)
            WHERE q.id = u.pid AND q.at = u.at AND q.actor = u.actor AND q.lender_id = u.lender_id AND q.action = u.action
              AND q.resource = u.resource AND q.purpose = u.purpose AND q.result = u.result AND q.request_id = u.request_id
            RETURNING 1)
        SELECT count(*) INTO taken FROM d;
        IF taken <> want THEN
            RAISE EXCEPTION 'audit_append_keyed: % of % queued entries are no longer queued as given', want - taken, want
                USING ERRCODE = 'LFA01';
        END IF;
    END IF;
    INSERT INTO audit_log (seq, at, actor, lender_id, action, resource, purpose, result, request_id, prev_hash, hash, key_id)
    SELECT p_first + o - 1, a, ac, l, act, r, pu, re, rq, CASE WHEN o = 1 THEN p_prev ELSE p_hash[o - 1] END, hh, k
    FROM unnest(p_at, p_actor, p_lender, p_action, p_resource, p_purpose, p_result, p_request_id, p_hash, p_key_id)
        WITH ORDINALITY AS u(a, ac, l, act, r, pu, re, rq, hh, k, o);
    RETURN QUERY SELECT true, p_first + n - 1, p_hash[n];
END $$;
-- +goose StatementEnd
REVOKE ALL ON FUNCTION audit_append_keyed(bigint, bytea, bigint[], timestamptz[], text[], text[], text[], text[], text[], text[], text[], bigint[], bytea[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_append_keyed(bigint, bytea, bigint[], timestamptz[], text[], text[], text[], text[], text[], text[], text[], bigint[], bytea[]) TO loanflow_api;

-- +goose Down
DROP FUNCTION audit_append_keyed(bigint, bytea, bigint[], timestamptz[], text[], text[], text[], text[], text[], text[], text[], bigint[], bytea[]);
ALTER TABLE audit_log DROP COLUMN key_id;
