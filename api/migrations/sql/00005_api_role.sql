-- +goose Up
-- The API runs as a member of loanflow_api (issue 9): it owns nothing, so
-- it cannot ALTER or DISABLE the triggers that keep audit_log append-only
-- (only a table's owner can), and it writes the audit tables only through
-- the SECURITY DEFINER functions below: it cannot insert a row with a
-- hash of its own, nor delete queued entries without chaining them.
-- Migrations, the jobs and the CDC reader keep the owner's connection.
-- The role is cluster-wide; creating it twice (another database of the
-- same cluster) is not an error.
-- +goose StatementBegin
DO $$
BEGIN
    CREATE ROLE loanflow_api NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END $$;
-- +goose StatementEnd

-- audit_chain_pending moves up to p_max queued entries into the chain,
-- oldest first, under the chain lock, through audit_append (the same
-- canonical SHA-256 as audit.ComputeHash). It replaces the chainer's
-- DELETE ... RETURNING plus INSERT: a caller can no longer take queued
-- entries without chaining them.
-- +goose StatementBegin
CREATE FUNCTION audit_chain_pending(p_max int) RETURNS int
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    a_at timestamptz[]; a_actor text[]; a_lender text[]; a_action text[];
    a_resource text[]; a_purpose text[]; a_result text[]; a_request text[];
BEGIN
    PERFORM pg_advisory_xact_lock(5496152229725950977);
    WITH taken AS (
        DELETE FROM audit_pending WHERE id IN (SELECT id FROM audit_pending ORDER BY id LIMIT p_max)
        RETURNING *
    )
    SELECT array_agg(at ORDER BY id), array_agg(actor ORDER BY id), array_agg(lender_id ORDER BY id), array_agg(action ORDER BY id),
           array_agg(resource ORDER BY id), array_agg(purpose ORDER BY id), array_agg(result ORDER BY id), array_agg(request_id ORDER BY id)
    INTO a_at, a_actor, a_lender, a_action, a_resource, a_purpose, a_result, a_request
    FROM taken;
    IF a_actor IS NULL THEN
        RETURN 0;
    END IF;
    PERFORM audit_append(a_at, a_actor, a_lender, a_action, a_resource, a_purpose, a_result, a_request);
    RETURN array_length(a_actor, 1);
END $$;
-- +goose StatementEnd

ALTER FUNCTION audit_append(timestamptz[], text[], text[], text[], text[], text[], text[], text[])
    SECURITY DEFINER SET search_path = public, pg_temp;
ALTER FUNCTION audit_pend(timestamptz[], text[], text[], text[], text[], text[], text[], text[])
    SECURITY DEFINER SET search_path = public, pg_temp;
REVOKE ALL ON FUNCTION audit_append(timestamptz[], text[], text[], text[], text[], text[], text[], text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION audit_pend(timestamptz[], text[], text[], text[], text[], text[], text[], text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION audit_chain_pending(int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_append(timestamptz[], text[], text[], text[], text[], text[], text[], text[]) TO loanflow_api;
GRANT EXECUTE ON FUNCTION audit_pend(timestamptz[], text[], text[], text[], text[], text[], text[], text[]) TO loanflow_api;
GRANT EXECUTE ON FUNCTION audit_chain_pending(int) TO loanflow_api;

GRANT USAGE ON SCHEMA public TO loanflow_api;
GRANT SELECT, INSERT, UPDATE ON lenders, api_clients, customers, credit_profiles, loans, lender_customers, portfolio_metrics TO loanflow_api;
GRANT SELECT, INSERT, UPDATE, DELETE ON idempotency_keys TO loanflow_api;
GRANT SELECT ON audit_log, audit_pending TO loanflow_api;

-- +goose Down
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM loanflow_api;
REVOKE USAGE ON SCHEMA public FROM loanflow_api;
ALTER FUNCTION audit_append(timestamptz[], text[], text[], text[], text[], text[], text[], text[]) SECURITY INVOKER;
ALTER FUNCTION audit_pend(timestamptz[], text[], text[], text[], text[], text[], text[], text[]) SECURITY INVOKER;
GRANT EXECUTE ON FUNCTION audit_append(timestamptz[], text[], text[], text[], text[], text[], text[], text[]) TO PUBLIC;
GRANT EXECUTE ON FUNCTION audit_pend(timestamptz[], text[], text[], text[], text[], text[], text[], text[]) TO PUBLIC;
DROP FUNCTION audit_chain_pending(int);
