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
	// ErrUnsupportedType: a column type (or array of it) has no mapping.
	ErrUnsupportedType = errors.New("postgres: unsupported column type")
	// ErrValue: a column value could not be converted (e.g. numeric NaN into
	// an Avro decimal). The change goes to the dead-letter topic.
	ErrValue = errors.New("postgres: cannot convert value")
	// ErrUnchangedToast: an UPDATE left a TOASTed column unchanged and
	// the before-image does not carry it; set REPLICA IDENTITY FULL.
	ErrUnchangedToast = errors.New("postgres: unchanged TOAST value unavailable")
	// ErrReplicaIdentity: a table's REPLICA IDENTITY cannot give the
	// values the reader needs.
	ErrReplicaIdentity = errors.New("postgres: replica identity insufficient")
	// ErrSchema: registering or building an Avro schema failed (for
	// example the registry rejected an incompatible change with 409).
	ErrSchema = errors.New("postgres: schema")
	// ErrFenced: another reader with the same transactional id took over.
	ErrFenced = errors.New("postgres: fenced by a newer reader")
)
