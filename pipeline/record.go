package pipeline

import (
	"math"
	"time"
)

// Record is one element of a stream: a value, its event time and, on keyed
// streams, its encoded key.
type Record[T any] struct {
	Value T
	// Time is the event time in milliseconds since the Unix epoch.
	Time int64
	// Key is the record's key encoded by the stream's KeyCodec; empty on
	// unkeyed streams.
	Key string
}

// Timestamp returns the event time as a time.Time.
func (r Record[T]) Timestamp() time.Time { return time.UnixMilli(r.Time) }

// Watermark says that no more records with event time <= Time are expected
// on a stream. An idle watermark says the stream is quiet: consumers leave it
// out of their minimum until it carries data again.
type Watermark struct {
	Time int64
	Idle bool
}

const (
	// MinTime is the watermark before any record was seen.
	MinTime int64 = math.MinInt64
	// MaxTime is the watermark of a finished stream.
	MaxTime int64 = math.MaxInt64
)

// Header is a Kafka record header.
type Header struct {
	Key   string
	Value []byte
}

// RawRecord is a record as a source connector read it, before decoding.
type RawRecord struct {
	Topic     string
	Partition int32
	Offset    int64
	Key       []byte
	Value     []byte
	Headers   []Header
	// Timestamp is the record's broker or producer timestamp (ms).
	Timestamp int64
}

// OutRecord is a record a sink hands to the runtime's output.
type OutRecord struct {
	Topic string
	// Partition is the target partition, or -1 to partition by Key.
	Partition int32
	Key       []byte
	Value     []byte
	Headers   []Header
	Timestamp int64
}

// Header returns the value of the first header named key.
func (r *RawRecord) Header(key string) ([]byte, bool) {
	for _, h := range r.Headers {
		if h.Key == key {
			return h.Value, true
		}
	}
	return nil, false
}
