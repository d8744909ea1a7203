package schemas

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"sync"

	"github.com/loanflow/loanflow/pipeline"
	"github.com/twmb/avro"
)

// HeaderBytes is the size of the Confluent wire-format header: magic byte 0
// and a 4-byte big-endian schema id.
const HeaderBytes = 5

// DefaultMaxRecordBytes is the default decode (and encode) size limit, the
// Kafka default maximum message size.
const DefaultMaxRecordBytes = 1 << 20

type serdeOptions struct {
	readOnly       bool
	maxRecordBytes int
	maxWriters     int
}

// SerdeOption configures NewSerde.
type SerdeOption func(*serdeOptions)

// ReadOnly makes NewSerde look its schema up instead of registering it, for
// consumers that must not change a subject. Decoding works whether or not
// the schema is registered; encoding needs it registered (ErrNotRegistered).
func ReadOnly() SerdeOption { return func(o *serdeOptions) { o.readOnly = true } }

// MaxRecordBytes limits the size of a record, header included, that Decode
// accepts and Encode produces (default DefaultMaxRecordBytes). Decoding
// allocates at most in proportion to the record's size, so this bounds
// the memory a corrupt or hostile record can cost.
func MaxRecordBytes(n int) SerdeOption { return func(o *serdeOptions) { o.maxRecordBytes = n } }

// MaxWriterSchemas bounds how many writer schemas (by id) a serde keeps
// resolved against its reader schema (default 64).
func MaxWriterSchemas(n int) SerdeOption { return func(o *serdeOptions) { o.maxWriters = n } }

// Serde encodes and decodes values of T as Avro with the Confluent framing
// (magic byte 0, 4-byte big-endian schema id, Avro binary). It implements
// pipeline.Codec[T] and is safe for concurrent use.
//
// Its schema is both the writer schema of what it encodes and the reader
// schema of what it decodes: a record written with another schema id is
// decoded with that writer schema (fetched from the registry once, cached)
// resolved to the reader schema, so fields added with defaults, removed
// fields and promoted types read as Avro schema resolution says.
type Serde[T any] struct {
	cl         *Client
	subject    string
	id         int // -1 when ReadOnly and not registered
	reader     *avro.Schema
	schemaOpts []avro.SchemaOpt
	opts       serdeOptions
	mu         struct {
		sync.RWMutex
		writers map[int]writerEntry // guarded by mu; at most opts.maxWriters
	}
}

type writerEntry struct {
	schema *avro.Schema // writer resolved to reader
	err    *Error       // resolution failed (not retryable)
}

var _ pipeline.Codec[LoanApplication] = (*Serde[LoanApplication])(nil)

// NewSerde parses schema (an Avro schema text, e.g. LoanApplicationSchema),
// registers it under subject (TopicNameStrategy: ValueSubject(topic)) and
// returns a Serde for T.
//
// T is a struct whose fields carry `avro:"name"` tags (the records of this
// package), or map[string]any / any for the dynamic path: values are then
// maps keyed by field name, decimals are *big.Rat (Decimal is accepted on
// encode), timestamps time.Time. Registration errors say whether they are
// retryable (registry unreachable) or not (incompatible schema, 409).
func NewSerde[T any](ctx context.Context, cl *Client, subject, schema string, opts ...SerdeOption) (*Serde[T], error) {
	s, err := newSerde[T](cl, subject, opts)
	if err != nil {
		return nil, err
	}
	reader, err := avro.Parse(schema, s.schemaOpts...)
	if err != nil {
		return nil, newErr("parsing schema", ErrInvalidSchema, subject, -1, err)
	}
	s.reader = reader
	if err := s.register(ctx, schema); err != nil {
		return nil, err
	}
	return s, nil
}

// newSerde applies the options and the schema wiring for T.
func newSerde[T any](cl *Client, subject string, opts []SerdeOption) (*Serde[T], error) {
	s := &Serde[T]{cl: cl, subject: subject, id: -1}
	s.opts = serdeOptions{maxRecordBytes: DefaultMaxRecordBytes, maxWriters: 64}
	for _, o := range opts {
		o(&s.opts)
	}
	if s.opts.maxRecordBytes <= HeaderBytes || s.opts.maxWriters < 1 {
		return nil, fmt.Errorf("schemas: MaxRecordBytes must exceed %d and MaxWriterSchemas be at least 1", HeaderBytes)
	}
	s.schemaOpts = schemaOptsFor[T]()
	s.mu.writers = make(map[int]writerEntry)
	return s, nil
}

func (s *Serde[T]) register(ctx context.Context, schema string) error {
	if !s.opts.readOnly {
		id, err := s.cl.Register(ctx, s.subject, schema)
		s.id = id
		return err
	}
	id, err := s.cl.Lookup(ctx, s.subject, schema)
	if err != nil && !errors.Is(err, ErrNotRegistered) {
		return err
	}
	s.id = id
	return nil
}

// maxDynamicDecimalBytes bounds a decimal's unscaled value on the dynamic
// path (512 bytes is over 1200 digits; PostgreSQL numeric allows 1000), so
// a corrupt record cannot make the decoder build a huge rational.
const maxDynamicDecimalBytes = 512

// schemaOptsFor wires Decimal into typed records; the dynamic path decodes
// decimals as *big.Rat (any precision) and accepts Decimal on encode.
func schemaOptsFor[T any]() []avro.SchemaOpt {
	t := reflect.TypeFor[T]()
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() == reflect.Struct {
		return []avro.SchemaOpt{decimalCustomType}
	}
	dyn := decimalCustomType
	dyn.Decode = func(v any, n *avro.SchemaNode) (any, error) {
		b, ok := v.([]byte)
		if !ok {
			return nil, avro.ErrSkipCustomType
		}
		if len(b) > maxDynamicDecimalBytes {
			return nil, fmt.Errorf("%w: unscaled value of %d bytes, the limit is %d", ErrDecimal, len(b), maxDynamicDecimalBytes)
		}
		return avro.RatFromBytes(b, n.Scale), nil
	}
	return []avro.SchemaOpt{dyn}
}

// NewWriterSchemaDecoder returns a Serde that decodes every record with its
// own writer schema, fetched from the registry by id, without a reader
// schema: for consumers of topics whose schemas are built at run time (the
// CDC topics' keys and envelopes) that want whatever the record holds. T is
// normally map[string]any (or any); a struct T must have a field for every
// field of every writer schema. It cannot encode (ErrNotRegistered).
// subject only labels errors.
func NewWriterSchemaDecoder[T any](cl *Client, subject string, opts ...SerdeOption) (*Serde[T], error) {
	return newSerde[T](cl, subject, opts)
}

// ID returns the schema id the serde encodes with, or -1 if a ReadOnly
// serde's schema is not registered.
func (s *Serde[T]) ID() int { return s.id }

// Subject returns the registry subject.
func (s *Serde[T]) Subject() string { return s.subject }

// Schema returns the parsed reader/writer schema (nil for a writer-schema
// decoder).
func (s *Serde[T]) Schema() *avro.Schema { return s.reader }

// Encode appends the framed Avro encoding of v to dst.
func (s *Serde[T]) Encode(dst []byte, v T) ([]byte, error) {
	if s.id < 0 {
		return dst, newErr("encoding", ErrNotRegistered, s.subject, -1, errors.New("the serde is ReadOnly and its schema is not registered under the subject, or a writer-schema decoder"))
	}
	start := len(dst)
	dst = AppendHeader(dst, s.id)
	out, err := s.reader.AppendEncode(dst, &v)
	if err != nil {
		return dst[:start], newErr("encoding", ErrInvalidValue, s.subject, s.id, err)
	}
	if n := len(out) - start; n > s.opts.maxRecordBytes {
		return out[:start], newErr("encoding", ErrTooLarge, s.subject, s.id,
			fmt.Errorf("%d bytes, limit %d (MaxRecordBytes)", n, s.opts.maxRecordBytes))
	}
	return out, nil
}

// Decode parses one framed record. It never panics and never keeps src;
// errors are *Error values whose kind says what is wrong and whether a retry
// can help (IsRetryable).
func (s *Serde[T]) Decode(src []byte) (T, error) {
	var v T
	if len(src) > s.opts.maxRecordBytes {
		return v, newErr("decoding", ErrTooLarge, s.subject, -1,
			fmt.Errorf("%d bytes, limit %d (MaxRecordBytes)", len(src), s.opts.maxRecordBytes))
	}
	id, body, err := SplitHeader(src)
	if err != nil {
		err.(*Error).Subject = s.subject
		return v, err
	}
	schema := s.reader
	if id != s.id {
		if schema, err = s.writer(id); err != nil {
			return v, err
		}
	}
	return v, s.decodeBody(schema, id, body, &v)
}

func (s *Serde[T]) decodeBody(schema *avro.Schema, id int, body []byte, v *T) (err error) {
	defer func() {
		if r := recover(); r != nil {
			// The Avro decoder is fuzzed and documented not to panic; if a
			// bug makes it, the record is dead-lettered, not the worker.
			err = newErr("decoding", ErrCorrupt, s.subject, id, fmt.Errorf("decoder panic: %v", r))
		}
	}()
	rest, derr := schema.Decode(body, v)
	if derr != nil {
		var sb *avro.ShortBufferError
		if errors.As(derr, &sb) {
			return newErr("decoding", ErrTruncated, s.subject, id, derr)
		}
		return newErr("decoding", ErrCorrupt, s.subject, id, derr)
	}
	if len(rest) != 0 {
		return newErr("decoding", ErrCorrupt, s.subject, id, fmt.Errorf("%d trailing bytes after the value", len(rest)))
	}
	return nil
}

// writer returns the schema that reads records written with schema id as
// T: the writer schema resolved to the reader schema.
func (s *Serde[T]) writer(id int) (*avro.Schema, error) {
	s.mu.RLock()
	e, ok := s.mu.writers[id]
	s.mu.RUnlock()
	if !ok {
		var err error
		if e, err = s.resolve(id); err != nil {
			return nil, err // retryable or unknown id: not cached here
		}
		s.mu.Lock()
		if len(s.mu.writers) >= s.opts.maxWriters {
			clear(s.mu.writers)
		}
		s.mu.writers[id] = e
		s.mu.Unlock()
	}
	if e.err != nil {
		return nil, e.err
	}
	return e.schema, nil
}

func (s *Serde[T]) resolve(id int) (writerEntry, error) {
	text, err := s.cl.SchemaText(context.Background(), id)
	if err != nil {
		var e *Error
		if errors.As(err, &e) {
			c := *e
			c.Op, c.Subject = "decoding", s.subject
			return writerEntry{}, &c
		}
		return writerEntry{}, err
	}
	w, err := avro.Parse(text, s.schemaOpts...)
	if err != nil {
		return writerEntry{err: newErr("decoding", ErrInvalidSchema, s.subject, id, fmt.Errorf("parsing writer schema: %w", err))}, nil
	}
	if s.reader == nil {
		return writerEntry{schema: w}, nil // a writer-schema decoder
	}
	r, err := avro.Resolve(w, s.reader)
	if err != nil {
		return writerEntry{err: newErr("decoding", ErrIncompatible, s.subject, id, fmt.Errorf("resolving writer schema %d to the reader schema: %w", id, err))}, nil
	}
	return writerEntry{schema: r}, nil
}

// AppendHeader appends the Confluent header for schema id to dst.
func AppendHeader(dst []byte, id int) []byte {
	return binary.BigEndian.AppendUint32(append(dst, 0), uint32(id))
}

// SplitHeader reads the Confluent header of a record and returns the schema
// id and the Avro body (a subslice of src). Errors are of kind ErrTruncated
// or ErrBadMagic.
func SplitHeader(src []byte) (id int, body []byte, err error) {
	if len(src) < HeaderBytes {
		return -1, nil, newErr("decoding", ErrTruncated, "", -1,
			fmt.Errorf("%d bytes, the header alone is %d", len(src), HeaderBytes))
	}
	if src[0] != 0 {
		return -1, nil, newErr("decoding", ErrBadMagic, "", -1,
			fmt.Errorf("first byte is 0x%02x, want 0x00", src[0]))
	}
	return int(binary.BigEndian.Uint32(src[1:HeaderBytes])), src[HeaderBytes:], nil
}
