package postgres

import "errors"

// Sentinel errors. Errors returned by the reader wrap one of these (match
// with errors.Is); the message says what happened and how to fix it.
var (
	// ErrConfig: the configuration is invalid. Not retryable.
	ErrConfig = errors.New("postgres: invalid config")
	// ErrProtocol: a pgoutput message could not be decoded. Not retryable:
	// the reader stops rather than skip WAL.
	ErrProtocol = errors.New("postgres: pgoutput protocol error")
	// ErrSlotGone: the replication slot disappeared while Kafka holds a
	// position for it; WAL since that position is lost. Not retryable.
	ErrSlotGone = errors.New("postgres: replication slot missing")
	// ErrSlotGap: the slot was recreated or advanced behind the reader's
	// back: its confirmed position is past the position committed in Kafka,
	// so changes in between would be skipped. Not retryable.
	ErrSlotGap = errors.New("postgres: replication slot is ahead of the committed position")
	// ErrSlotMismatch: the server or slot is not the one the committed
	// position was read from (another cluster, a restored backup, a forked
	// timeline, a slot recreated by someone else, or a slot behind the
	// position whose WAL does not replay the position's transaction).
	// Resuming would skip or invent changes. Not retryable.
	ErrSlotMismatch = errors.New("postgres: server or slot does not match the committed position")
	// ErrUnsupportedType: a column type (or array of it) has no mapping.
	ErrUnsupportedType = errors.New("postgres: unsupported column type")
	// ErrValue: a column value could not be converted (e.g. a key column
	// holding numeric NaN, a multi-dimensional array). The change goes to
	// the dead-letter topic.
	ErrValue = errors.New("postgres: cannot convert value")
	// ErrUnchangedToast: an UPDATE left a TOASTed column unchanged and
	// the before-image does not carry it (REPLICA IDENTITY was changed
	// while the reader ran); the change goes to the dead-letter topic.
	ErrUnchangedToast = errors.New("postgres: unchanged TOAST value unavailable")
	// ErrReplicaIdentity: a table's REPLICA IDENTITY cannot give the
	// values the reader needs.
	ErrReplicaIdentity = errors.New("postgres: replica identity insufficient")
	// ErrSchema: registering or building an Avro schema failed (for
	// example the registry rejected an incompatible change with 409). The
	// table's changes go to the dead-letter topic until a new relation
	// version (or a restart after fixing the subject) registers.
	ErrSchema = errors.New("postgres: schema")
	// ErrTooLarge: a change's record is larger than max_record_bytes (the
	// broker would reject it). The change goes to the dead-letter topic.
	ErrTooLarge = errors.New("postgres: record too large")
	// ErrSkipped: an operator skipped the change at this LSN (`loanflow cdc
	// skip`). The change goes to the dead-letter topic.
	ErrSkipped = errors.New("postgres: change skipped by an operator")
	// ErrFenced: another reader with the same transactional id took over.
	ErrFenced = errors.New("postgres: fenced by a newer reader")
)
