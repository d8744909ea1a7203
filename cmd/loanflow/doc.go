// Command loanflow is the operator's single entry point.
//
//	loanflow dev                 run the whole system locally
//	loanflow demo                applications through it, with their decisions
//	loanflow job run|list|...    launch, inspect, stop and restore jobs
//	loanflow cdc run             the PostgreSQL change-data-capture reader
//	loanflow api                 the HTTP API and dashboard
//	loanflow keys rotate         add a new primary PII key
//	loanflow audit verify        walk the audit hash chain
//	loanflow bench               the benchmark report
//
// Every verb prints its flags with --help; errors name the fix.
package main
