package kafka

import (
	"errors"
	"strconv"

	"github.com/loanflow/loanflow/pipeline"
)

// HeaderHeartbeat marks a record that only advances event time on its
// partition (the CDC reader's heartbeats); its value is the time in ms as
// decimal ASCII.
const HeaderHeartbeat = "loanflow.heartbeat"

// SourceConfig configures Source.
type SourceConfig[T any] struct {
	Topic string
	// Codec decodes record values. Either Codec or Decode is required.
	Codec pipeline.Codec[T]
	// Decode decodes a whole record (key, headers, tombstones); it
	// overrides Codec.
	Decode func(raw *pipeline.RawRecord) (T, error)
	// Timestamp extracts the event time; default the record timestamp.
	Timestamp func(raw *pipeline.RawRecord, v T) int64
	// Watermarks is the source's watermark strategy.
	Watermarks pipeline.WatermarkStrategy
}

// Source reads a topic as a typed stream. Records carrying the heartbeat
// header advance the partition's watermark and are not emitted.
func Source[T any](b *pipeline.Builder, name string, cfg SourceConfig[T]) pipeline.Stream[T] {
	decode := cfg.Decode
	if decode == nil && cfg.Codec != nil {
		c := cfg.Codec
		decode = func(raw *pipeline.RawRecord) (T, error) {
			if raw.Value == nil {
				var zero T
				return zero, errors.New("tombstone (null value) on a stream source; use Decode to read tombstones")
			}
			return c.Decode(raw.Value)
		}
	}
	if cfg.Topic == "" {
		b.AddError(errors.New("kafka source " + name + ": Topic is required"))
	}
	return pipeline.AddSource(b, name, pipeline.SourceSpec[T]{
		What:       "kafka",
		Topic:      cfg.Topic,
		Decode:     decode,
		Timestamp:  cfg.Timestamp,
		Heartbeat:  Heartbeat,
		Watermarks: cfg.Watermarks,
	})
}

// Heartbeat recognises heartbeat records.
func Heartbeat(raw *pipeline.RawRecord) (int64, bool) {
	v, ok := raw.Header(HeaderHeartbeat)
	if !ok {
		return 0, false
	}
	ms, err := strconv.ParseInt(string(v), 10, 64)
	if err != nil {
		return raw.Timestamp, true
	}
	return ms, true
}

// SinkConfig configures Sink.
type SinkConfig[T any] struct {
	Topic string
	Codec pipeline.Codec[T]
	// Key returns the record key; default the stream's key, else none.
	Key func(r pipeline.Record[T]) []byte
	// Headers adds headers.
	Headers func(r pipeline.Record[T]) []pipeline.Header
}

// Sink writes a stream to a topic inside the checkpoint's transaction.
func Sink[T any](s pipeline.Stream[T], name string, cfg SinkConfig[T]) {
	pipeline.ToTopic(s, name, pipeline.TopicSinkSpec[T]{
		Topic: cfg.Topic, Codec: cfg.Codec, Key: cfg.Key, Headers: cfg.Headers, What: "kafka",
	})
}
