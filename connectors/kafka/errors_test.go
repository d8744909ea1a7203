package kafka_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/loanflow/loanflow/connectors/kafka"
	"github.com/loanflow/loanflow/internal/testenv"
	"github.com/loanflow/loanflow/operators"
	"github.com/loanflow/loanflow/pipeline"
	"github.com/twmb/franz-go/pkg/kgo"
)

type reading struct {
	Sensor string `json:"sensor"`
	Value  int64  `json:"value"`
}

// TestDeadLetters sends undecodable records and records a user function
// rejects: each lands in dlq.<job> with the error, topic, partition and
// offset in headers, and the job goes on with the rest.
func TestDeadLetters(t *testing.T) {
	seeds := testenv.Broker(t).Addrs()
	adm := newAdmin(t, seeds)
	in, out := testenv.Name(t, "in"), testenv.Name(t, "out")
	createTopic(t, adm, in, 2, nil)
	produce(t, seeds, []*kgo.Record{
		{Topic: in, Partition: 0, Value: []byte(`{"sensor":"a","value":1}`)},
		{Topic: in, Partition: 0, Value: []byte(`{not json`)},
		{Topic: in, Partition: 1, Value: []byte(`{"sensor":"b","value":-5}`)},
		{Topic: in, Partition: 1, Value: []byte(`{"sensor":"c","value":3}`)},
	})
	job := testenv.Name(t, "dlq")
	b := pipeline.NewBuilder(job)
	src := kafka.Source(b, "readings", kafka.SourceConfig[reading]{Topic: in, Codec: pipeline.JSONCodec[reading]()})
	checked := operators.Map(src, "check", func(r reading) (reading, error) {
		if r.Value < 0 {
			return r, errNegative
		}
		return r, nil
	})
	kafka.Sink(checked, "out", kafka.SinkConfig[reading]{Topic: out, Codec: pipeline.JSONCodec[reading]()})
	w, err := kafka.NewWorker(b, kafka.Config{Brokers: seeds, StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	good := readCommitted(t, seeds, out, 2, 30*time.Second)
	dead := readCommitted(t, seeds, pipeline.DeadLetterTopic(job), 2, 30*time.Second)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(good) != 2 {
		t.Fatalf("%d good records went through, want 2", len(good))
	}
	if len(dead) != 2 {
		t.Fatalf("%d dead letters, want 2", len(dead))
	}
	byValue := map[string]map[string]string{}
	for _, r := range dead {
		h := map[string]string{}
		for _, kv := range r.Headers {
			h[kv.Key] = string(kv.Value)
		}
		byValue[string(r.Value)] = h
	}
	bad := byValue[`{not json`]
	if bad == nil || bad[kafka.HeaderTopic] != in || bad[kafka.HeaderPartition] != "0" || bad[kafka.HeaderOffset] != "1" ||
		bad[kafka.HeaderOperator] != "readings" || !strings.Contains(bad[kafka.HeaderError], "decoding") {
		t.Errorf("undecodable record's dead letter: %v", bad)
	}
	neg := byValue[`{"sensor":"b","value":-5}`]
	if neg == nil || neg[kafka.HeaderOperator] != "check" || neg[kafka.HeaderError] != errNegative.Error() || neg[kafka.HeaderOffset] != "0" {
		t.Errorf("rejected record's dead letter: %v", neg)
	}
}

var errNegative = errorString("readings must not be negative")

type errorString string

func (e errorString) Error() string { return string(e) }

// TestCoPartitionMismatch: a join over topics with different partition
// counts fails before consuming, naming both topics.
func TestCoPartitionMismatch(t *testing.T) {
	seeds := testenv.Broker(t).Addrs()
	adm := newAdmin(t, seeds)
	probes, table := testenv.Name(t, "probes"), testenv.Name(t, "table")
	createTopic(t, adm, probes, 4, nil)
	createTopic(t, adm, table, 6, nil)
	b := pipeline.NewBuilder(testenv.Name(t, "job"))
	p := pipeline.KeyBy(kafka.Source(b, "probes", kafka.SourceConfig[reading]{Topic: probes, Codec: pipeline.JSONCodec[reading]()}),
		"p-key", func(r reading) string { return r.Sensor }, pipeline.NoRepartition())
	tb := pipeline.KeyBy(kafka.Source(b, "table", kafka.SourceConfig[reading]{Topic: table, Codec: pipeline.JSONCodec[reading]()}),
		"t-key", func(r reading) string { return r.Sensor }, pipeline.NoRepartition())
	j := operators.TemporalJoin(p, tb, "join", operators.TemporalJoinSpec[reading, reading, reading]{
		Join:       func(r reading, _ *operators.Versioned[reading]) (reading, error) { return r, nil },
		ProbeCodec: pipeline.JSONCodec[reading](), TableCodec: pipeline.JSONCodec[reading](),
	})
	pipeline.Discard(j)
	w, err := kafka.NewWorker(b, kafka.Config{Brokers: seeds, StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	err = w.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), probes) || !strings.Contains(err.Error(), table) || !strings.Contains(err.Error(), "co-partitioned") {
		t.Fatalf("Run = %v, want a co-partitioning error naming both topics", err)
	}
}

// TestAtLeastOnce runs the passthrough without transactions.
func TestAtLeastOnce(t *testing.T) {
	seeds := testenv.Broker(t).Addrs()
	adm := newAdmin(t, seeds)
	in, out := testenv.Name(t, "in"), testenv.Name(t, "out")
	createTopic(t, adm, in, 2, nil)
	var recs []*kgo.Record
	for i := 0; i < 1000; i++ {
		recs = append(recs, &kgo.Record{Topic: in, Partition: int32(i % 2), Value: []byte(strconv.Itoa(i))})
	}
	produce(t, seeds, recs)
	b := pipeline.NewBuilder(testenv.Name(t, "job"))
	kafka.Sink(kafka.Source(b, "src", kafka.SourceConfig[int64]{Topic: in, Codec: intCodec{}}), "out", kafka.SinkConfig[int64]{Topic: out, Codec: intCodec{}})
	w, err := kafka.NewWorker(b, kafka.Config{Brokers: seeds, StateDir: t.TempDir(), Delivery: kafka.AtLeastOnce})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	got := readCommitted(t, seeds, out, 1000, 30*time.Second)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(got) != 1000 {
		t.Fatalf("got %d records, want 1000", len(got))
	}
}
