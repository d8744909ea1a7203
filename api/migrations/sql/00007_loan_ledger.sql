-- +goose Up
-- Every change of a loan's balance through the API is a ledger entry
-- (issue 9, Low): written in the statement that changes the balance, with
-- the loan's new version, the signed change, the balance after it and its
-- kind. A balance increase needs a kind that explains it (DISBURSEMENT,
-- FEE, INTEREST, ADJUSTMENT); decreases default to PAYMENT. Append-only.
CREATE TABLE loan_ledger (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    loan_id       text NOT NULL REFERENCES loans (loan_id),
    lender_id     text NOT NULL,
    loan_version  bigint NOT NULL,
    delta         numeric(18,2) NOT NULL CHECK (delta <> 0),
    balance_after numeric(18,2) NOT NULL CHECK (balance_after >= 0),
    kind          text NOT NULL CHECK (kind IN ('DISBURSEMENT', 'FEE', 'INTEREST', 'ADJUSTMENT', 'PAYMENT', 'WRITE_OFF')),
    reference     text NOT NULL DEFAULT '',
    at            timestamptz NOT NULL DEFAULT now(),
    CHECK (delta < 0 OR kind IN ('DISBURSEMENT', 'FEE', 'INTEREST', 'ADJUSTMENT')),
    UNIQUE (loan_id, loan_version)
);

-- +goose StatementBegin
CREATE FUNCTION loan_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'loan_ledger is append-only';
END $$;
-- +goose StatementEnd
CREATE TRIGGER loan_ledger_no_update BEFORE UPDATE OR DELETE ON loan_ledger
    FOR EACH ROW EXECUTE FUNCTION loan_ledger_append_only();
CREATE TRIGGER loan_ledger_no_truncate BEFORE TRUNCATE ON loan_ledger
    FOR EACH STATEMENT EXECUTE FUNCTION loan_ledger_append_only();
GRANT SELECT, INSERT ON loan_ledger TO loanflow_api;

-- +goose Down
DROP TABLE loan_ledger;
DROP FUNCTION loan_ledger_append_only();
