package localsvc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// startTestKafka starts a cluster for one test, stopped when it ends. A
// missing java or mvn skips the test, except under CI=true, where it fails
// (testenv does the same; localsvc cannot import it).
func startTestKafka(t *testing.T, brokers int) *Kafka {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	k, err := StartKafka(ctx, KafkaOptions{Dir: t.TempDir(), Brokers: brokers})
	if err != nil {
		ci := strings.ToLower(os.Getenv("CI"))
		if errors.Is(err, ErrNotInstalled) && ci != "true" && ci != "1" {
			t.Skipf("skipping, Apache Kafka cannot run here: %v", err)
		}
		t.Fatalf("starting kafka: %v", err)
	}
	t.Logf("%d-node Apache Kafka %s ready in %v", brokers, KafkaVersion, time.Since(start).Round(time.Millisecond))
	t.Cleanup(k.Close)
	return k
}

func newTestClient(t *testing.T, k *Kafka, opts ...kgo.Opt) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(k.Addrs()...)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

func createTopic(ctx context.Context, t *testing.T, k *Kafka, topic string, partitions int32, rf int16) {
	t.Helper()
	adm := kadm.NewClient(newTestClient(t, k))
	resp, err := adm.CreateTopic(ctx, partitions, rf, nil, topic)
	if err == nil {
		err = resp.Err
	}
	if err != nil {
		t.Fatalf("creating topic %s: %v", topic, err)
	}
}

func produceValues(ctx context.Context, t *testing.T, cl *kgo.Client, topic string, values ...string) {
	t.Helper()
	recs := make([]*kgo.Record, len(values))
	for i, v := range values {
		recs[i] = &kgo.Record{Topic: topic, Value: []byte(v)}
	}
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatalf("producing to %s: %v", topic, err)
	}
}

func seq(prefix string, from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, fmt.Sprintf("%s-%d", prefix, i))
	}
	return out
}

// consumeUntil reads topic from the start with the given isolation level
// until it has seen the value last, and returns every value in order.
func consumeUntil(ctx context.Context, t *testing.T, k *Kafka, topic, last string, iso kgo.IsolationLevel) []string {
	t.Helper()
	cl := newTestClient(t, k,
		kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchIsolationLevel(iso),
	)
	var got []string
	for !slices.Contains(got, last) {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("reading %s: %v before %q arrived; got %v", topic, ctx.Err(), last, got)
		}
		fs.EachError(func(topic string, p int32, err error) { t.Logf("fetching %s/%d: %v", topic, p, err) })
		fs.EachRecord(func(r *kgo.Record) { got = append(got, string(r.Value)) })
	}
	return got
}

// TestKafkaTransactionSurvivesKill kills the broker while two transactions
// are open and restarts it on the same data: committed records survive, and
// the open ones, although in the log, never reach a read_committed
// consumer once their producers' transactional ids are initialised again
// (as restarted producers do); a transaction its producer abandons after
// the restart is aborted by its timeout.
//
// The transactions open at the kill have timeouts longer than the test:
// one that times out while a single node restarts after a SIGKILL can be
// completed without its markers. The restarted node's transaction
// coordinator runs from its replayed metadata before the node has
// registered again; the controller then fences the old incarnation, the
// partitions have no leader for a moment, and the coordinator's marker
// writer takes a partition without a leader for a deleted one ("Couldn't
// find leader endpoint ... likely deleted already"): it completes the
// abort without the marker, and the partition's last stable offset stays
// behind that transaction for good. With a 5s timeout here this test
// failed about 1 run in 3 under load (docs/design.md, "kfake and Apache
// Kafka: what differs").
func TestKafkaTransactionSurvivesKill(t *testing.T) {
	k := startTestKafka(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const topic = "txn"
	createTopic(ctx, t, k, topic, 1, 1)

	txnClient := func(id string, timeout time.Duration) *kgo.Client {
		return newTestClient(t, k, kgo.TransactionalID(id), kgo.TransactionTimeout(timeout))
	}
	// Longer than the test's deadline: only re-initialising aborts them.
	first, second := txnClient("first", 10*time.Minute), txnClient("second", 10*time.Minute)
	for _, cl := range []*kgo.Client{first, second} {
		if err := cl.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
	}
	produceValues(ctx, t, first, topic, seq("committed", 0, 10)...)
	if err := first.EndTransaction(ctx, kgo.TryCommit); err != nil {
		t.Fatalf("committing: %v", err)
	}
	if err := first.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	produceValues(ctx, t, first, topic, seq("open", 0, 10)...)
	produceValues(ctx, t, second, topic, seq("second", 0, 10)...)

	k.Kill(1)
	first.Close()
	second.Close()
	if err := k.Start(1); err != nil {
		t.Fatalf("restarting: %v", err)
	}

	// The same transactional ids fence the old producers: the coordinator
	// aborts their open transactions before the new ones begin.
	for _, id := range []string{"second", "first"} {
		if _, _, err := txnClient(id, 10*time.Minute).ProducerID(ctx); err != nil {
			t.Fatalf("initialising %s again: %v", id, err)
		}
	}
	// A producer that dies with its transaction open after the restart:
	// its timeout aborts it.
	abandoned := txnClient("abandoned", 3*time.Second)
	if err := abandoned.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	produceValues(ctx, t, abandoned, topic, seq("abandoned", 0, 10)...)
	abandoned.Close()
	again := txnClient("first", 10*time.Minute)
	if err := again.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	produceValues(ctx, t, again, topic, "after")
	if err := again.EndTransaction(ctx, kgo.TryCommit); err != nil {
		t.Fatalf("committing after restart: %v", err)
	}

	// "after" is readable committed only once every transaction open
	// before it has ended.
	got := consumeUntil(ctx, t, k, topic, "after", kgo.ReadCommitted())
	if want := append(seq("committed", 0, 10), "after"); !slices.Equal(got, want) {
		t.Fatalf("read_committed got %v, want %v", got, want)
	}
	all := consumeUntil(ctx, t, k, topic, "after", kgo.ReadUncommitted())
	for _, v := range slices.Concat(seq("open", 0, 10), seq("second", 0, 10), seq("abandoned", 0, 10)) {
		if !slices.Contains(all, v) {
			t.Fatalf("read_uncommitted lacks %q, so the kill lost it and the test proves nothing: %v", v, all)
		}
	}
}

// TestKafkaThreeNodesSurviveLeaderKill kills the leader of a partition
// replicated three times: producing with acks=all and consuming go on with
// the other two (min.insync.replicas=2), every record exactly once, and the
// restarted node returns to the ISR.
func TestKafkaThreeNodesSurviveLeaderKill(t *testing.T) {
	k := startTestKafka(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const topic = "replicated"
	createTopic(ctx, t, k, topic, 1, 3)

	prod := newTestClient(t, k, kgo.RequiredAcks(kgo.AllISRAcks()))
	produceValues(ctx, t, prod, topic, seq("v", 0, 100)...)
	adm := kadm.NewClient(newTestClient(t, k))
	p0 := partitionZero(ctx, t, adm, topic)
	if len(p0.ISR) != 3 {
		t.Fatalf("ISR %v, want 3 replicas", p0.ISR)
	}
	leader := int(p0.Leader)
	t.Logf("killing node %d, the leader of %s/0", leader, topic)
	k.Kill(leader)

	produceValues(ctx, t, prod, topic, seq("v", 100, 200)...)
	got := consumeUntil(ctx, t, k, topic, "v-199", kgo.ReadUncommitted())
	if want := seq("v", 0, 200); !slices.Equal(got, want) {
		t.Fatalf("after the kill read %d records, want v-0..v-199 once each in order: %v", len(got), got)
	}
	if p := partitionZero(ctx, t, adm, topic); int(p.Leader) == leader || len(p.ISR) != 2 {
		t.Fatalf("after killing node %d: leader %d, ISR %v", leader, p.Leader, p.ISR)
	}

	if err := k.Start(leader); err != nil {
		t.Fatalf("restarting node %d: %v", leader, err)
	}
	for {
		p := partitionZero(ctx, t, adm, topic)
		if slices.Contains(p.ISR, int32(leader)) {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("node %d not back in the ISR %v: %v", leader, p.ISR, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
	produceValues(ctx, t, prod, topic, "v-200")
	if got := consumeUntil(ctx, t, k, topic, "v-200", kgo.ReadUncommitted()); len(got) != 201 {
		t.Fatalf("after the restart read %d records, want 201", len(got))
	}
}

func partitionZero(ctx context.Context, t *testing.T, adm *kadm.Client, topic string) kadm.PartitionDetail {
	t.Helper()
	tds, err := adm.ListTopics(ctx, topic)
	if err == nil {
		err = tds.Error()
	}
	if err != nil {
		t.Fatalf("describing %s: %v", topic, err)
	}
	p, ok := tds[topic].Partitions[0]
	if !ok || p.Err != nil {
		t.Fatalf("describing %s/0: %v", topic, p.Err)
	}
	return p
}

// TestKafkaCompacts checks that the log cleaner settings make compaction
// visible within a test: superseded values of a key disappear from a
// compacted topic once its segment has rolled (max.compaction.lag.ms).
func TestKafkaCompacts(t *testing.T) {
	k := startTestKafka(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const topic = "compacted"
	adm := kadm.NewClient(newTestClient(t, k))
	resp, err := adm.CreateTopic(ctx, 1, 1, map[string]*string{"cleanup.policy": kadm.StringPtr("compact")}, topic)
	if err == nil {
		err = resp.Err
	}
	if err != nil {
		t.Fatalf("creating topic: %v", err)
	}
	cl := newTestClient(t, k, kgo.DefaultProduceTopic(topic))
	produce := func(key, value string) {
		if err := cl.ProduceSync(ctx, &kgo.Record{Key: []byte(key), Value: []byte(value)}).FirstErr(); err != nil {
			t.Fatalf("producing: %v", err)
		}
	}
	for _, v := range seq("k", 0, 100) {
		produce("k", v)
	}
	// Each tick is an append, at which the broker rolls the segment once
	// it is older than max.compaction.lag.ms; the cleaner then keeps only
	// k's last value.
	for tick := 0; ; tick++ {
		last := fmt.Sprintf("tick-%d", tick)
		produce("tick", last)
		var ks []string
		for _, v := range consumeUntil(ctx, t, k, topic, last, kgo.ReadUncommitted()) {
			if strings.HasPrefix(v, "k-") {
				ks = append(ks, v)
			}
		}
		if slices.Equal(ks, []string{"k-99"}) {
			return
		}
		if len(ks) == 0 || ks[len(ks)-1] != "k-99" {
			t.Fatalf("compaction lost k's last value: %v", ks)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("k still has %d values: %v", len(ks), ctx.Err())
		case <-time.After(time.Second):
		}
	}
}
