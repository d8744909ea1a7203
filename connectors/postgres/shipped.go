package postgres

// CustomerColumns is the column allow-list of public.customers in the
// configs Loanflow ships (LoanflowTables, deploy/config/cdc.yaml): every
// column but the PII (the name, SSN, address and date-of-birth
// ciphertexts) and the SSN blind index with its key version. An allow-list
// rather than a deny-list, so a column added later is not sent until
// someone adds it here. The jobs read nothing else from
// cdc.public.customers: cache-invalidation needs customer_id, the
// decisions job joins customer_360 (its own query, no PII) and reads the
// blind index from PostgreSQL.
var CustomerColumns = []string{"customer_id", "credit_limit", "credit_currency", "current_balance", "risk_tier", "status", "version", "created_at", "updated_at"}

// LoanflowTables are the tables Loanflow's own stack captures (`loanflow
// dev`, deploy/config/cdc.yaml, checked equal by deploy/config_test.go):
// customers without PII columns, credit_profiles and loans (which hold
// none); TRUNCATE is written for customers and credit_profiles, whose
// consumer (the cache-invalidation job) drops every cached profile on it.
// Not audit_log (it stays in PostgreSQL; add it only if a consumer needs
// it), not the API's own tables.
func LoanflowTables() []TableConfig {
	return []TableConfig{
		{Table: "public.customers", Columns: append([]string{}, CustomerColumns...), Truncate: true},
		{Table: "public.credit_profiles", Truncate: true},
		{Table: "public.loans"},
	}
}
