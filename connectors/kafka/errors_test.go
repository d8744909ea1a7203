package kafka_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/loanflow/loanflow/connectors/kafka"
	"github.com/loanflow/loanflow/internal/localsvc"
	"github.com/loanflow/loanflow/internal/testenv"
	"github.com/loanflow/loanflow/operators"
	"github.com/loanflow/loanflow/pipeline"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
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

// TestAtLeastOnceProduceErrorLosesNothing: the broker refuses some output
// records (a non-retriable error). At-least-once must not commit the
// input offsets past them: the task restarts from its checkpoint and the
// records come out once the broker takes them. (The worker used to commit
// the offsets and only then look at produce errors: the refused records
// were lost.)
func TestAtLeastOnceProduceErrorLosesNothing(t *testing.T) {
	brk := testenv.NewBroker(t, localsvc.BrokerOptions{})
	seeds := brk.Addrs()
	adm := newAdmin(t, seeds)
	in, out := testenv.Name(t, "in"), testenv.Name(t, "out")
	createTopic(t, adm, in, 2, nil)
	createTopic(t, adm, out, 2, nil)
	fault := brk.Cluster.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: out, Err: kerr.InvalidRecord, Count: 2})
	defer fault.Remove()
	const n = 1000
	var recs []*kgo.Record
	for i := 0; i < n; i++ {
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
	seen := map[string]bool{}
	deadline := time.Now().Add(time.Minute)
	for len(seen) < n && time.Now().Before(deadline) {
		for _, r := range readAll(t, seeds, out) {
			seen[string(r.Value)] = true
		}
		time.Sleep(200 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if fault.Hits() == 0 {
		t.Fatal("the produce fault never hit")
	}
	if len(seen) != n {
		t.Fatalf("%d of %d inputs came out after %d refused produce requests", len(seen), n, fault.Hits())
	}
}

// TestCoPartitionGrowsAtRuntime: one of two co-partitioned inputs gains
// partitions while the job runs. The worker must stop with the
// co-partitioning error, as at start. (It used to log the mismatch and
// consume the new partitions' records with no task, committing their
// offsets: lost.)
func TestCoPartitionGrowsAtRuntime(t *testing.T) {
	seeds := testenv.Broker(t).Addrs()
	adm := newAdmin(t, seeds)
	probes, table := testenv.Name(t, "probes"), testenv.Name(t, "table")
	createTopic(t, adm, probes, 4, nil)
	createTopic(t, adm, table, 4, nil)
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
	w, err := kafka.NewWorker(b, kafka.Config{Brokers: seeds, StateDir: t.TempDir(), ClientOpts: []kgo.Opt{kgo.MetadataMaxAge(time.Second), kgo.MetadataMinAge(100 * time.Millisecond)}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- w.Run(context.Background()) }()
	select {
	case <-w.Ready():
	case err := <-done:
		t.Fatalf("Run: %v", err)
	}
	if _, err := adm.CreatePartitions(context.Background(), 6, probes); err != nil {
		t.Fatal(err)
	}
	produce(t, seeds, []*kgo.Record{{Topic: probes, Partition: 5, Value: []byte(`{"sensor":"x","value":1}`)}})
	select {
	case err = <-done:
	case <-time.After(2 * time.Minute):
		t.Fatal("the worker kept running with a partition no task can take")
	}
	if err == nil || !strings.Contains(err.Error(), "co-partitioned") {
		t.Fatalf("Run = %v, want a co-partitioning error", err)
	}
}
