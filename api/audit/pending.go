package audit

// PendSQL is AppendSQL for hot write paths: the expression queues entries
// in audit_pending (migration 00003) inside the caller's transaction,
// without the chain lock, and returns the first entry's queue id. The
// Journal links queued entries into the keyed chain shortly after they
// commit (call Journal.Kick after the commit to make that sooner).
func PendSQL(first int, entries ...Entry) (string, []any) {
	expr, args := AppendSQL(first, entries...)
	return "audit_pend" + expr[len("audit_append"):], args
}
