-- +goose Up
CREATE TABLE lenders (
    lender_id      text PRIMARY KEY,
    name           text NOT NULL,
    rate_limit_rps double precision CHECK (rate_limit_rps > 0), -- NULL: server default
    rate_burst     integer CHECK (rate_burst > 0),
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- OAuth2 clients of the dev issuer. secret_hash is SHA-256 of the secret;
-- lender_id is NULL for operator clients (scope admin).
CREATE TABLE api_clients (
    client_id   text PRIMARY KEY,
    secret_hash bytea NOT NULL,
    lender_id   text REFERENCES lenders (lender_id),
    scopes      text[] NOT NULL,
    disabled    boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- PII columns hold Tink AES-256-GCM ciphertext whose associated data binds
-- table, column and row; ssn_index is an HMAC-SHA256 PRF blind index.
CREATE TABLE customers (
    customer_id           text PRIMARY KEY,
    name_ct               bytea NOT NULL,
    ssn_ct                bytea NOT NULL,
    address_ct            bytea,
    dob_ct                bytea,
    ssn_index             bytea NOT NULL,
    ssn_index_key_version bigint NOT NULL, -- Tink PRF key id (uint32)
    credit_limit          numeric(18,2) NOT NULL CHECK (credit_limit >= 0),
    current_balance       numeric(18,2) NOT NULL DEFAULT 0 CHECK (current_balance >= 0),
    risk_tier             text NOT NULL,
    status                text NOT NULL DEFAULT 'ACTIVE',
    version               bigint NOT NULL DEFAULT 1,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX customers_ssn_index ON customers (ssn_index);

CREATE TABLE credit_profiles (
    customer_id   text PRIMARY KEY REFERENCES customers (customer_id),
    current_score integer NOT NULL CHECK (current_score BETWEEN 300 AND 850),
    score_history jsonb NOT NULL DEFAULT '[]',
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE loans (
    loan_id        text PRIMARY KEY,
    application_id text UNIQUE,
    customer_id    text NOT NULL REFERENCES customers (customer_id),
    lender_id      text NOT NULL REFERENCES lenders (lender_id),
    amount         numeric(18,2) NOT NULL CHECK (amount > 0),
    balance        numeric(18,2) NOT NULL CHECK (balance >= 0),
    currency       char(3) NOT NULL,
    term_months    integer NOT NULL CHECK (term_months > 0),
    status         text NOT NULL,
    days_past_due  integer NOT NULL DEFAULT 0 CHECK (days_past_due >= 0),
    version        bigint NOT NULL DEFAULT 1,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX loans_lender_page ON loans (lender_id, loan_id);
CREATE INDEX loans_customer ON loans (customer_id);

-- One row per (lender, key); written in the transaction of the request it
-- guards, so a concurrent request with the same key waits on the unique
-- index and then sees the committed response.
CREATE TABLE idempotency_keys (
    lender_id       text NOT NULL,
    idem_key        text NOT NULL,
    request_hash    bytea NOT NULL,
    response_status integer NOT NULL,
    response_body   bytea NOT NULL,
    response_etag   text NOT NULL DEFAULT '',
    resource_id     text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (lender_id, idem_key)
);

-- Append-only, hash-chained: hash = SHA-256(prev_hash || canonical row).
CREATE TABLE audit_log (
    seq        bigint PRIMARY KEY,
    at         timestamptz NOT NULL,
    actor      text NOT NULL,
    lender_id  text NOT NULL,
    action     text NOT NULL,
    resource   text NOT NULL,
    purpose    text NOT NULL,
    result     text NOT NULL,
    request_id text NOT NULL,
    prev_hash  bytea NOT NULL,
    hash       bytea NOT NULL
);

-- +goose StatementBegin
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END $$;
-- +goose StatementEnd
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

-- Analytics table of the portfolio job (one row per lender and window).
CREATE TABLE portfolio_metrics (
    lender_id           text NOT NULL,
    window_start        timestamptz NOT NULL,
    window_end          timestamptz NOT NULL,
    originations        bigint NOT NULL DEFAULT 0,
    originated_amount   numeric(18,2) NOT NULL DEFAULT 0,
    approvals           bigint NOT NULL DEFAULT 0,
    declines            bigint NOT NULL DEFAULT 0,
    refers              bigint NOT NULL DEFAULT 0,
    outstanding_balance numeric(18,2) NOT NULL DEFAULT 0,
    delinquency_rate    numeric(9,6) NOT NULL DEFAULT 0,
    default_rate        numeric(9,6) NOT NULL DEFAULT 0,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (lender_id, window_start)
);

-- +goose Down
DROP TABLE portfolio_metrics;
DROP TRIGGER audit_log_no_update ON audit_log;
DROP TABLE audit_log;
DROP FUNCTION audit_log_append_only();
DROP TABLE idempotency_keys;
DROP TABLE loans;
DROP TABLE credit_profiles;
DROP TABLE customers;
DROP TABLE api_clients;
DROP TABLE lenders;
