package pipeline

import (
	"encoding/json"
	"fmt"
)

// Codec turns values of T into record bytes and back. Sources decode with
// it and sinks encode with it; a codec per source and sink makes the wire
// format pluggable (JSON here, Avro with Confluent framing in schemas/).
//
// Decode must not panic on arbitrary input and must not keep src after it
// returns; a decode error sends the record to the job's dead-letter topic.
type Codec[T any] interface {
	// Encode appends the encoding of v to dst.
	Encode(dst []byte, v T) ([]byte, error)
	// Decode parses one value from src.
	Decode(src []byte) (T, error)
}

// JSONCodec encodes values as JSON with encoding/json.
func JSONCodec[T any]() Codec[T] { return jsonCodec[T]{} }

type jsonCodec[T any] struct{}

func (jsonCodec[T]) Encode(dst []byte, v T) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return dst, fmt.Errorf("encoding json: %w", err)
	}
	return append(dst, b...), nil
}

func (jsonCodec[T]) Decode(src []byte) (T, error) {
	var v T
	if err := json.Unmarshal(src, &v); err != nil {
		return v, fmt.Errorf("decoding json: %w", err)
	}
	return v, nil
}

// StringCodec passes strings through as their bytes.
func StringCodec() Codec[string] { return stringCodec{} }

type stringCodec struct{}

func (stringCodec) Encode(dst []byte, v string) ([]byte, error) { return append(dst, v...), nil }
func (stringCodec) Decode(src []byte) (string, error)           { return string(src), nil }

// BytesCodec passes bytes through, copying on decode.
func BytesCodec() Codec[[]byte] { return bytesCodec{} }

type bytesCodec struct{}

func (bytesCodec) Encode(dst []byte, v []byte) ([]byte, error) { return append(dst, v...), nil }
func (bytesCodec) Decode(src []byte) ([]byte, error)           { return append([]byte(nil), src...), nil }
