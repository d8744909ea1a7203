package kafka_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/loanflow/loanflow/connectors/kafka"
	"github.com/loanflow/loanflow/internal/testenv"
	"github.com/loanflow/loanflow/operators"
	"github.com/loanflow/loanflow/pipeline"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func newAdmin(t testing.TB, seeds []string) *kadm.Client {
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return kadm.NewClient(cl)
}

func createTopic(t testing.TB, adm *kadm.Client, topic string, parts int32, configs map[string]*string) {
	t.Helper()
	resp, err := adm.CreateTopic(context.Background(), parts, -1, configs, topic)
	if err == nil {
		err = resp.Err
	}
	if err != nil {
		t.Fatalf("creating %s: %v", topic, err)
	}
}

func produce(t testing.TB, seeds []string, recs []*kgo.Record) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.ProduceSync(context.Background(), recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

// readCommitted reads a topic from the start with read_committed isolation
// until want records arrived or the timeout passed.
func readCommitted(t testing.TB, seeds []string, topic string, want int, timeout time.Duration) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.ConsumeTopics(topic),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var out []*kgo.Record
	deadline := time.Now().Add(timeout)
	for len(out) < want && time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		fs := cl.PollFetches(ctx)
		cancel()
		fs.EachRecord(func(r *kgo.Record) { out = append(out, r) })
	}
	return out
}

type intCodec struct{}

func (intCodec) Encode(dst []byte, v int64) ([]byte, error) {
	return strconv.AppendInt(dst, v, 10), nil
}
func (intCodec) Decode(src []byte) (int64, error) { return strconv.ParseInt(string(src), 10, 64) }

func TestPassthroughExactlyOnce(t *testing.T) {
	seeds := testenv.Broker(t).Addrs()
	adm := newAdmin(t, seeds)
	in, out := testenv.Name(t, "in"), testenv.Name(t, "out")
	createTopic(t, adm, in, 3, nil)
	var recs []*kgo.Record
	for i := 0; i < 3000; i++ {
		recs = append(recs, &kgo.Record{Topic: in, Partition: int32(i % 3), Key: []byte(strconv.Itoa(i)), Value: []byte(strconv.Itoa(i))})
	}
	produce(t, seeds, recs)

	b := pipeline.NewBuilder(testenv.Name(t, "job"))
	src := kafka.Source(b, "numbers", kafka.SourceConfig[int64]{Topic: in, Codec: intCodec{}})
	doubled := operators.Map(src, "double", func(v int64) (int64, error) { return v * 2, nil })
	kafka.Sink(doubled, "out", kafka.SinkConfig[int64]{Topic: out, Codec: intCodec{}})
	w, err := kafka.NewWorker(b, kafka.Config{Brokers: seeds, StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	got := readCommitted(t, seeds, out, 3000, 30*time.Second)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	sum := int64(0)
	for _, r := range got {
		v, _ := strconv.ParseInt(string(r.Value), 10, 64)
		sum += v
	}
	if len(got) != 3000 || sum != 2*2999*3000/2 {
		t.Fatalf("got %d records summing to %d", len(got), sum)
	}
	fmt.Println("checkpoints:", w.Checkpoints())
}
