package jobs

import (
	"strings"
	"testing"

	"github.com/twmb/avro"

	"github.com/loanflow/loanflow/connectors/kafka"
	"github.com/loanflow/loanflow/pipeline"
	"github.com/loanflow/loanflow/schemas"
)

// TestAvroStringKeys: the codec writes exactly the Confluent-framed Avro
// string an Avro library writes, and reads it back.
func TestAvroStringKeys(t *testing.T) {
	keys := AvroStringKeysWithID(42)
	str := avro.MustParse(`"string"`)
	for _, id := range []string{"", "c1", "customer-ü-" + strings.Repeat("x", 300)} {
		want, err := str.AppendEncode(schemas.AppendHeader(nil, 42), id)
		if err != nil {
			t.Fatal(err)
		}
		got := keys.EncodeKey(id)
		if got != string(want) {
			t.Fatalf("EncodeKey(%q) = %x, want %x", id, got, want)
		}
		back, err := keys.DecodeKey(got)
		if err != nil || back != id {
			t.Fatalf("DecodeKey = %q, %v", back, err)
		}
	}
	if keys.ID() != 42 {
		t.Fatalf("ID = %d", keys.ID())
	}
	for _, bad := range []string{"", "x", "\x00\x00\x00\x00\x2a", "\x00\x00\x00\x00\x2a\x06ab", "\x01\x00\x00\x00\x2a\x02a"} {
		if _, err := keys.DecodeKey(bad); err == nil {
			t.Errorf("DecodeKey(%x) accepted", bad)
		}
	}
}

// TestLaggedHeartbeats: a customer_360 heartbeat vouches for the previous
// heartbeat's time on its partition.
func TestLaggedHeartbeats(t *testing.T) {
	l := &laggedHeartbeats{prev: map[int32]int64{}}
	hb := func(p int32, ms string) (int64, bool) {
		return l.heartbeat(&pipeline.RawRecord{Partition: p, Headers: []pipeline.Header{{Key: kafka.HeaderHeartbeat, Value: []byte(ms)}}})
	}
	for _, tc := range []struct {
		p    int32
		ms   string
		want int64
	}{{0, "1000", 0}, {0, "2000", 1000}, {1, "1500", 0}, {0, "3000", 2000}, {1, "2500", 1500}} {
		if got, ok := hb(tc.p, tc.ms); !ok || got != tc.want {
			t.Fatalf("heartbeat %s on %d: %d, %v; want %d", tc.ms, tc.p, got, ok, tc.want)
		}
	}
	if _, ok := l.heartbeat(&pipeline.RawRecord{Partition: 0, Value: []byte("row")}); ok {
		t.Fatal("a row taken for a heartbeat")
	}
}
