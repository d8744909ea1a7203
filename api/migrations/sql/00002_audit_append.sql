-- +goose Up
-- audit_append appends one row per array element to the hash chain, inside
-- the caller's transaction: it takes the chain lock (transaction-scoped
-- advisory lock, the same key as package audit), reads the head and inserts
-- the rows with hash = SHA-256(prev_hash || canonical(row)), exactly as
-- audit.ComputeHash computes it. Doing this in one statement keeps the
-- lock held only for the rest of the caller's transaction, not for several
-- client round trips. NULL fields are refused (the hash has no form for
-- them). Returns the seq of the last row appended.
-- +goose StatementBegin
CREATE FUNCTION audit_append(p_at timestamptz[], p_actor text[], p_lender text[], p_action text[], p_resource text[],
                             p_purpose text[], p_result text[], p_request_id text[]) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    n    int := coalesce(array_length(p_actor, 1), 0);
    s    bigint;
    prev bytea;
    h    bytea;
    first  bigint;
    prevs  bytea[] := '{}';
    hashes bytea[] := '{}';
BEGIN
    IF n = 0 THEN
        RETURN NULL;
    END IF;
    IF coalesce(array_length(p_at, 1), 0) <> n OR coalesce(array_length(p_lender, 1), 0) <> n
       OR coalesce(array_length(p_action, 1), 0) <> n OR coalesce(array_length(p_resource, 1), 0) <> n
       OR coalesce(array_length(p_purpose, 1), 0) <> n OR coalesce(array_length(p_result, 1), 0) <> n
       OR coalesce(array_length(p_request_id, 1), 0) <> n THEN
        RAISE EXCEPTION 'audit_append: arrays of different lengths';
    END IF;
    PERFORM pg_advisory_xact_lock(5496152229725950977);
    SELECT l.seq, l.hash INTO s, prev FROM audit_log l ORDER BY l.seq DESC LIMIT 1;
    IF NOT FOUND THEN
        s := 0;
        prev := ''::bytea;
    END IF;
    first := s + 1;
    FOR i IN 1..n LOOP
        s := s + 1;
        -- The canonical row: each field as its 4-byte big-endian byte
        -- length and its UTF-8 bytes, in one expression of built-in
        -- functions (a SQL helper function would be re-planned in every
        -- transaction).
        h := sha256(prev
            || int4send(octet_length(convert_to(s::text, 'UTF8'))) || convert_to(s::text, 'UTF8')
            || int4send(octet_length(convert_to(((extract(epoch FROM p_at[i]) * 1000000)::bigint)::text, 'UTF8'))) || convert_to(((extract(epoch FROM p_at[i]) * 1000000)::bigint)::text, 'UTF8')
            || int4send(octet_length(convert_to(p_actor[i], 'UTF8'))) || convert_to(p_actor[i], 'UTF8')
            || int4send(octet_length(convert_to(p_lender[i], 'UTF8'))) || convert_to(p_lender[i], 'UTF8')
            || int4send(octet_length(convert_to(p_action[i], 'UTF8'))) || convert_to(p_action[i], 'UTF8')
            || int4send(octet_length(convert_to(p_resource[i], 'UTF8'))) || convert_to(p_resource[i], 'UTF8')
            || int4send(octet_length(convert_to(p_purpose[i], 'UTF8'))) || convert_to(p_purpose[i], 'UTF8')
            || int4send(octet_length(convert_to(p_result[i], 'UTF8'))) || convert_to(p_result[i], 'UTF8')
            || int4send(octet_length(convert_to(p_request_id[i], 'UTF8'))) || convert_to(p_request_id[i], 'UTF8'));
        prevs[i] := prev;
        hashes[i] := h;
        prev := h;
    END LOOP;
    INSERT INTO audit_log (seq, at, actor, lender_id, action, resource, purpose, result, request_id, prev_hash, hash)
    SELECT first + o - 1, a, ac, l, act, r, pu, re, rq, ph, hh
    FROM unnest(p_at, p_actor, p_lender, p_action, p_resource, p_purpose, p_result, p_request_id, prevs, hashes)
        WITH ORDINALITY AS u(a, ac, l, act, r, pu, re, rq, ph, hh, o);
    RETURN s;
END $$;
-- +goose StatementEnd

-- TRUNCATE skips row triggers: refuse it too, so the chain cannot be
-- emptied (an empty chain would verify).
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

-- +goose Down
DROP TRIGGER audit_log_no_truncate ON audit_log;
DROP FUNCTION audit_append(timestamptz[], text[], text[], text[], text[], text[], text[], text[]);
