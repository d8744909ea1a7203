package main

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/loanflow/loanflow/connectors/kafka"
	"github.com/loanflow/loanflow/internal/testenv"
	"github.com/loanflow/loanflow/jobs"
	"github.com/loanflow/loanflow/operators"
	"github.com/loanflow/loanflow/pipeline"
)

func TestMain(m *testing.M) { testenv.Main(m) }

type intCodec struct{}

func (intCodec) Encode(dst []byte, v int64) ([]byte, error) {
	return strconv.AppendInt(dst, v, 10), nil
}
func (intCodec) Decode(src []byte) (int64, error) { return strconv.ParseInt(string(src), 10, 64) }

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestJobLifecycle drives a job the way an operator does: run a worker,
// inspect it, stop it with a savepoint, restore from the savepoint.
func TestJobLifecycle(t *testing.T) {
	brokers := testenv.Broker(t).Addrs()
	in, out := testenv.Name(t, "in"), testenv.Name(t, "out")
	name := testenv.Name(t, "clijob")
	jobs.Register(jobs.Job{Name: name, Summary: "test job", Build: func(b *pipeline.Builder, env jobs.Env) error {
		src := kafka.Source(b, "numbers", kafka.SourceConfig[int64]{Topic: in, Codec: intCodec{}})
		kafka.Sink(operators.Map(src, "double", func(v int64) (int64, error) { return 2 * v, nil }), "out",
			kafka.SinkConfig[int64]{Topic: out, Codec: intCodec{}})
		return nil
	}})
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx := context.Background()
	if _, err := kadm.NewClient(cl).CreateTopic(ctx, 2, 1, nil, in); err != nil {
		t.Fatal(err)
	}
	produceN := func(from, n int) {
		var recs []*kgo.Record
		for i := from; i < from+n; i++ {
			recs = append(recs, &kgo.Record{Topic: in, Value: []byte(strconv.Itoa(i))})
		}
		if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	produceN(0, 500)

	flags := func(admin, stateDir string) runFlags {
		var f runFlags
		f.env.brokers = strings.Join(brokers, ",")
		f.stateDir, f.workerID, f.delivery, f.admin = stateDir, "cli-w1", string(kafka.ExactlyOnce), admin
		f.commitInterval, f.sessionTimeout, f.transactionTimeout, f.defaultPartitions = 100*time.Millisecond, 6*time.Second, 5*time.Second, 2
		return f
	}
	admin := freeAddr(t)
	done := make(chan error, 1)
	var logs bytes.Buffer
	go func() { done <- runJob(ctx, name, flags(admin, t.TempDir()), &logs) }()
	waitHTTP(t, "http://"+admin+"/readyz")

	var status bytes.Buffer
	cmd := newJobStatusCmd()
	cmd.SetOut(&status)
	cmd.SetArgs([]string{name, "--brokers", strings.Join(brokers, ","), "--admin", admin})
	if err := cmd.ExecuteContext(ctx); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(status.String(), "worker cli-w1") || !strings.Contains(status.String(), "1 workers") {
		t.Fatalf("status output:\n%s", status.String())
	}

	sp := filepath.Join(t.TempDir(), "sp")
	stop := newJobStopCmd()
	stop.SetOut(&status)
	stop.SetArgs([]string{"--admin", admin, "--savepoint", sp})
	if err := stop.ExecuteContext(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("worker: %v\n%s", err, logs.String())
	}
	if _, err := os.Stat(filepath.Join(sp, "job.json")); err != nil {
		t.Fatalf("no savepoint: %v", err)
	}

	produceN(500, 500)
	f := flags(freeAddr(t), t.TempDir())
	f.fromSavepoint = sp
	rctx, cancel := context.WithCancel(ctx)
	go func() { done <- runJob(rctx, name, f, &logs) }()
	got := countCommitted(t, brokers, out, 1000, 30*time.Second)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("restored worker: %v", err)
	}
	if got != 1000 {
		t.Fatalf("%d outputs after the restore, want 1000 (no gap, no duplicate)", got)
	}
}

func waitHTTP(t *testing.T, url string) {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s not ready after 30s", url)
}

func countCommitted(t *testing.T, brokers []string, topic string, want int, timeout time.Duration) int {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	seen := map[string]int{}
	n := 0
	deadline := time.Now().Add(timeout)
	for n < want && time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		fs := cl.PollFetches(ctx)
		cancel()
		fs.EachRecord(func(r *kgo.Record) { seen[string(r.Value)]++; n++ })
	}
	// Let a duplicate, if any, arrive.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) { seen[string(r.Value)]++; n++ })
	cancel()
	for v, c := range seen {
		if c > 1 {
			t.Errorf("output %s seen %d times", v, c)
		}
	}
	return n
}
