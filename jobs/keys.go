package jobs

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/loanflow/loanflow/schemas"
)

// AvroStringKeys is the pipeline.KeyCodec of topics keyed by an Avro
// string with the Confluent framing (magic byte, 4-byte schema id, Avro
// zig-zag length and bytes), as the CDC reader keys customer_360 (subject
// customer_360-key). A repartition topic keyed with it holds byte-for-byte
// the keys of the topic it joins, so Kafka's default partitioner (murmur2
// of the key) puts a customer in the same partition on both sides: the
// repartition is co-partitioned with the CDC topic.
type AvroStringKeys struct {
	header [schemas.HeaderBytes]byte
}

// NewAvroStringKeys registers the schema "string" under subject (as the
// CDC reader does; registering it again returns the same id) and returns
// the codec encoding with its id.
func NewAvroStringKeys(ctx context.Context, cl *schemas.Client, subject string) (AvroStringKeys, error) {
	id, err := cl.Register(ctx, subject, `"string"`)
	if err != nil {
		return AvroStringKeys{}, fmt.Errorf("registering the key schema of %s: %w", subject, err)
	}
	return AvroStringKeysWithID(id), nil
}

// AvroStringKeysWithID returns the codec for a known schema id.
func AvroStringKeysWithID(id int) AvroStringKeys {
	var k AvroStringKeys
	copy(k.header[:], schemas.AppendHeader(nil, id))
	return k
}

// ID is the schema id the codec writes.
func (k AvroStringKeys) ID() int { return int(binary.BigEndian.Uint32(k.header[1:])) }

// EncodeKey returns the framed Avro encoding of s.
func (k AvroStringKeys) EncodeKey(s string) string {
	b := make([]byte, 0, len(k.header)+binary.MaxVarintLen64+len(s))
	b = append(b, k.header[:]...)
	b = binary.AppendVarint(b, int64(len(s))) // Avro longs are zig-zag varints
	return string(append(b, s...))
}

var errBadKey = errors.New("jobs: key is not a framed Avro string")

// DecodeKey parses a framed Avro string written with any schema id.
func (k AvroStringKeys) DecodeKey(s string) (string, error) {
	_, body, err := schemas.SplitHeader([]byte(s))
	if err != nil {
		return "", fmt.Errorf("%w: %w", errBadKey, err)
	}
	n, w := binary.Varint(body)
	if w <= 0 || n < 0 || int64(len(body)-w) != n {
		return "", fmt.Errorf("%w: bad length in %q", errBadKey, s)
	}
	return string(body[w:]), nil
}
