-- +goose Up
-- Audit entries of hot write paths are queued here, inside the transaction
-- of the change they record (so a change is never committed without its
-- entry), without the chain lock; the API's chainer (audit.ChainPending)
-- moves them into the hash chain later, in batches, under the lock. The
-- chain lock is then held per batch by one chainer instead of by every
-- writer until its commit. A row lives here until it is chained (normally
-- milliseconds).
CREATE TABLE audit_pending (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         timestamptz NOT NULL,
    actor      text NOT NULL,
    lender_id  text NOT NULL,
    action     text NOT NULL,
    resource   text NOT NULL,
    purpose    text NOT NULL,
    result     text NOT NULL,
    request_id text NOT NULL
);

-- +goose StatementBegin
CREATE FUNCTION audit_pending_insert_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_pending rows are only inserted, then moved into audit_log by the chainer';
END $$;
-- +goose StatementEnd
CREATE TRIGGER audit_pending_no_update BEFORE UPDATE ON audit_pending
    FOR EACH ROW EXECUTE FUNCTION audit_pending_insert_only();
CREATE TRIGGER audit_pending_no_truncate BEFORE TRUNCATE ON audit_pending
    FOR EACH STATEMENT EXECUTE FUNCTION audit_pending_insert_only();

-- audit_pend queues one row per array element (arguments as audit_append's)
-- and returns the id of the first.
-- +goose StatementBegin
CREATE FUNCTION audit_pend(p_at timestamptz[], p_actor text[], p_lender text[], p_action text[], p_resource text[],
                           p_purpose text[], p_result text[], p_request_id text[]) RETURNS bigint
LANGUAGE sql VOLATILE AS $$
    INSERT INTO audit_pending (at, actor, lender_id, action, resource, purpose, result, request_id)
    SELECT * FROM unnest(p_at, p_actor, p_lender, p_action, p_resource, p_purpose, p_result, p_request_id)
    RETURNING id
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION audit_pend(timestamptz[], text[], text[], text[], text[], text[], text[], text[]);
DROP TABLE audit_pending;
DROP FUNCTION audit_pending_insert_only();
