-- +goose Up
-- Which lenders may see which customers (issue 9). A lender reaches a
-- customer's credit data only through a relationship, and the basis of the
-- relationship bounds the FCRA permissible purposes it may read under:
--   customer     the lender onboarded the customer (POST /v1/customers)
--   application  the lender received an application naming the customer
--                whose applicant's SSN matched the customer's
--   loan         the lender booked a loan on the customer
-- Rows are only added; one row per (lender, customer, basis).
CREATE TABLE lender_customers (
    lender_id   text NOT NULL REFERENCES lenders (lender_id),
    customer_id text NOT NULL REFERENCES customers (customer_id),
    basis       text NOT NULL CHECK (basis IN ('customer', 'application', 'loan')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (lender_id, customer_id, basis)
);
CREATE INDEX lender_customers_customer ON lender_customers (customer_id);

-- Loans booked before relationships existed give their lender one.
INSERT INTO lender_customers (lender_id, customer_id, basis)
SELECT DISTINCT lender_id, customer_id, 'loan' FROM loans
ON CONFLICT DO NOTHING;

-- The currency of the credit limit and of current_balance (ISO 4217). A
-- loan in any other currency is refused: there is no exchange rate to
-- weigh it against the limit, and summing currencies is meaningless.
ALTER TABLE customers ADD COLUMN credit_currency char(3) NOT NULL DEFAULT 'USD';

-- Application ids are chosen by each lender's terminals: they are unique
-- per lender, not globally.
ALTER TABLE loans DROP CONSTRAINT loans_application_id_key;
ALTER TABLE loans ADD CONSTRAINT loans_lender_application_key UNIQUE (lender_id, application_id);

-- +goose Down
ALTER TABLE loans DROP CONSTRAINT loans_lender_application_key;
ALTER TABLE loans ADD CONSTRAINT loans_application_id_key UNIQUE (application_id);
ALTER TABLE customers DROP COLUMN credit_currency;
DROP TABLE lender_customers;
