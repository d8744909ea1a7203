package schemas

import (
	"errors"
	"fmt"

	"github.com/loanflow/loanflow/pipeline"
)

// Error kinds. Every error a Serde or Client returns is an *Error whose Kind
// is one of these, so callers test with errors.Is(err, schemas.ErrTruncated)
// and decide retry versus dead-letter with IsRetryable.
var (
	// ErrBadMagic: the record does not start with the Confluent magic byte
	// 0 (not Avro-with-registry framing). Dead-letter.
	ErrBadMagic = errors.New("schemas: wrong magic byte")
	// ErrTruncated: the record ends inside the 5-byte header or inside an
	// Avro value. Dead-letter.
	ErrTruncated = errors.New("schemas: truncated record")
	// ErrTooLarge: the record exceeds the serde's MaxRecordBytes limit; it
	// is rejected before anything is allocated for it. Dead-letter.
	ErrTooLarge = errors.New("schemas: record too large")
	// ErrUnknownSchemaID: the registry has no schema with the record's id.
	// Dead-letter.
	ErrUnknownSchemaID = errors.New("schemas: unknown schema id")
	// ErrCorrupt: the Avro body does not decode with its writer schema
	// (bad length, bad union index, trailing bytes...). Dead-letter.
	ErrCorrupt = errors.New("schemas: corrupt Avro data")
	// ErrIncompatible: the record's writer schema cannot be read with the
	// serde's reader schema, or the registry refused to register a schema
	// under the subject's compatibility level (HTTP 409). Not retryable.
	ErrIncompatible = errors.New("schemas: incompatible schema")
	// ErrInvalidSchema: a schema text does not parse as Avro, or the
	// registry rejected it (HTTP 422). Not retryable.
	ErrInvalidSchema = errors.New("schemas: invalid schema")
	// ErrInvalidValue: a value does not fit the schema on encode (missing
	// field, amount with too many decimals...). Not retryable.
	ErrInvalidValue = errors.New("schemas: value does not match schema")
	// ErrNotRegistered: a ReadOnly serde was asked to encode, but its
	// schema is not registered under its subject. Not retryable.
	ErrNotRegistered = errors.New("schemas: schema not registered")
	// ErrRegistryUnavailable: the schema registry could not be reached or
	// answered with a server error. Retryable: the record is fine.
	ErrRegistryUnavailable = errors.New("schemas: schema registry unavailable")
)

// Error describes what went wrong with which subject and schema id.
type Error struct {
	// Op is what was being done: "encoding", "decoding", "registering",
	// "looking up schema".
	Op string
	// Kind is one of the Err* sentinels of this package.
	Kind error
	// Subject is the serde's subject, if any.
	Subject string
	// SchemaID is the schema id involved, or -1 if none was known.
	SchemaID int
	// Err is the underlying cause, if any.
	Err error
}

func (e *Error) Error() string {
	s := e.Kind.Error()
	if e.Op != "" {
		s = fmt.Sprintf("%s: %s", e.Op, s)
	}
	if e.Subject != "" {
		s += " (subject " + e.Subject
		if e.SchemaID >= 0 {
			s += fmt.Sprintf(", schema id %d", e.SchemaID)
		}
		s += ")"
	} else if e.SchemaID >= 0 {
		s += fmt.Sprintf(" (schema id %d)", e.SchemaID)
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns the kind and the cause, so errors.Is matches both.
func (e *Error) Unwrap() []error {
	if e.Err == nil {
		return []error{e.Kind}
	}
	return []error{e.Kind, e.Err}
}

// Retryable reports whether the same call may succeed later: only when the
// registry was unavailable. Every other error is a property of the record or
// schema, and the record belongs in the dead-letter topic.
func (e *Error) Retryable() bool { return e.Kind == ErrRegistryUnavailable }

// Is makes a retryable error match pipeline.ErrRetryable, so the engine
// fails the task (to retry from its checkpoint) instead of dead-lettering a
// good record while the registry is down.
func (e *Error) Is(target error) bool {
	return target == pipeline.ErrRetryable && e.Retryable()
}

// IsRetryable reports whether err (from this package) is retryable; it is
// errors.Is(err, pipeline.ErrRetryable) for this package's errors.
func IsRetryable(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Retryable()
}

func newErr(op string, kind error, subject string, id int, cause error) *Error {
	return &Error{Op: op, Kind: kind, Subject: subject, SchemaID: id, Err: cause}
}
