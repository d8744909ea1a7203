package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"

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

// run executes a command built by mk with args and returns its output.
func run(t *testing.T, mk func() *cobra.Command, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	cmd := mk()
	cmd.SilenceErrors, cmd.SilenceUsage = true, true
	cmd.SetOut(&out)
	cmd.SetErr(io.Discard)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(context.Background())
	return out.String(), err
}

// jobStatus runs job status --output json.
func jobStatus(t *testing.T, name string, brokers []string) (jobState, error) {
	t.Helper()
	out, err := run(t, newJobStatusCmd, name, "--brokers", strings.Join(brokers, ","), "--output", "json")
	var st jobState
	if jerr := json.Unmarshal([]byte(out), &st); jerr != nil && err == nil {
		t.Fatalf("status output is not JSON: %v\n%s", jerr, out)
	}
	return st, err
}

// TestJobLifecycle drives a job the way an operator does, by name only:
// run a worker, find it with job status (health, lag net of transaction
// markers against the records the test wrote), refuse to stop it under
// another job's name, savepoint it while it runs, stop it with a
// savepoint, preview and execute a reset, restore from the savepoint.
func TestJobLifecycle(t *testing.T) {
	brokers := testenv.Broker(t).Addrs()
	in, out := testenv.Name(t, "in"), testenv.Name(t, "out")
	name, other := testenv.Name(t, "clijob"), testenv.Name(t, "otherjob")
	build := func(b *pipeline.Builder, env jobs.Env) error {
		src := kafka.Source(b, "numbers", kafka.SourceConfig[int64]{Topic: in, Codec: intCodec{}})
		kafka.Sink(operators.Map(src, "double", func(v int64) (int64, error) { return 2 * v, nil }), "out",
			kafka.SinkConfig[int64]{Topic: out, Codec: intCodec{}})
		return nil
	}
	jobs.Register(jobs.Job{Name: name, Summary: "test job", Build: build})
	jobs.Register(jobs.Job{Name: other, Summary: "a job that never runs", Build: build})
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx := context.Background()
	adm := kadm.NewClient(cl)
	if _, err := adm.CreateTopic(ctx, 1, 1, nil, in); err != nil {
		t.Fatal(err)
	}
	// Inputs in transactions: each leaves a marker a naive lag counts.
	produced := testenv.ProduceTxns(t, brokers, in, 10, 50, 0)

	flags := func(admin, stateDir string) runFlags {
		var f runFlags
		f.env.brokers = strings.Join(brokers, ",")
		f.stateDir, f.workerID, f.delivery, f.admin = stateDir, "cli-w1", string(kafka.ExactlyOnce), admin
		f.commitInterval, f.sessionTimeout, f.transactionTimeout, f.defaultPartitions = 100*time.Millisecond, 6*time.Second, 5*time.Second, 2
		f.summary = 300 * time.Millisecond
		return f
	}
	admin := freeAddr(t)
	done := make(chan error, 1)
	var logs syncBuffer
	go func() { done <- runJob(ctx, name, flags(admin, t.TempDir()), &logs) }()
	waitHTTP(t, "http://"+admin+"/readyz")

	// Unknown and never-run jobs: clear errors.
	if _, err := jobStatus(t, "nosuchjob", brokers); err == nil || !strings.Contains(err.Error(), `unknown job "nosuchjob"`) {
		t.Fatalf("status of an unknown job: %v", err)
	}
	if _, err := jobStatus(t, other, brokers); !errors.Is(err, errNeverRan) {
		t.Fatalf("status of a job that never ran: %v", err)
	}

	// More input while the worker runs: its last fetch before a commit
	// marker commits the offset of the marker itself, which a naive lag
	// counts forever.
	produced += testenv.ProduceTxns(t, brokers, in, 5, 20, 0)

	// The worker is found through the group; once it read everything the
	// lag is 0.
	var st jobState
	deadline := time.Now().Add(time.Minute)
	for {
		st, err = jobStatus(t, name, brokers)
		if err == nil && st.TotalLag == 0 && len(st.Partitions) == 1 && st.Partitions[0].Committed >= int64(produced) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("job status never showed the worker caught up: %v %+v", err, st)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(st.Workers) != 1 || st.Workers[0].Worker != "cli-w1" || st.Workers[0].Admin != admin || st.Workers[0].Health != "ok" || !st.Healthy {
		t.Fatalf("workers: %+v", st.Workers)
	}
	t.Logf("caught up: committed %d, end %d (offset difference %d, net lag 0)", st.Partitions[0].Committed, st.Partitions[0].End,
		st.Partitions[0].End-st.Partitions[0].Committed)
	if table, err := run(t, newJobStatusCmd, name, "--brokers", strings.Join(brokers, ",")); err != nil ||
		!strings.Contains(table, "cli-w1") || !strings.Contains(table, "TOTAL") {
		t.Fatalf("status table (%v):\n%s", err, table)
	}

	// Metrics: failure counters at 0 from the start, checkpoint duration
	// per worker, no async_in_flight without an async operator, the build.
	metrics := getBody(t, "http://"+admin+"/metrics")
	for _, want := range []string{
		`loanflow_engine_checkpoint_failures_total{job="` + name + `",reason="commit"} 0`,
		`loanflow_engine_checkpoint_failures_total{job="` + name + `",reason="task-failed"} 0`,
		`loanflow_engine_dead_letters_total{job="` + name + `",operator="double"} 0`,
		`loanflow_engine_dropped_total{job="` + name + `",operator="double"} 0`,
		`loanflow_engine_checkpoint_duration_seconds_count{job="` + name + `",worker="cli-w1"}`,
		`loanflow_build_info{`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("worker metrics lack %s", want)
		}
	}
	if strings.Contains(metrics, "loanflow_engine_async_in_flight{") {
		t.Error("a job without async operators reports async_in_flight")
	}
	if body := getBody(t, "http://"+admin+"/debug/pprof/"); !strings.Contains(body, "goroutine") {
		t.Error("no /debug/pprof/ on the worker's admin listener")
	}

	checkLogs(t, &logs)

	// Another job's name never stops this worker.
	if out, err := run(t, newJobStopCmd, other, "--brokers", strings.Join(brokers, ","), "--admin", admin); err == nil ||
		!strings.Contains(err.Error(), "runs job "+name) {
		t.Fatalf("stop under another job's name: %v\n%s", err, out)
	}
	waitHTTP(t, "http://"+admin+"/readyz")

	// A savepoint while running, from a relative directory.
	t.Chdir(t.TempDir())
	if out, err := run(t, newJobSavepointCmd, name, "sp-live", "--brokers", strings.Join(brokers, ",")); err != nil ||
		!strings.Contains(out, "savepoint written") {
		t.Fatalf("savepoint: %v\n%s", err, out)
	}
	cwd, _ := os.Getwd()
	if _, err := os.Stat(filepath.Join(cwd, "sp-live", "job.json")); err != nil {
		t.Fatalf("no live savepoint: %v", err)
	}
	waitHTTP(t, "http://"+admin+"/readyz")

	stopOut, err := run(t, newJobStopCmd, name, "--brokers", strings.Join(brokers, ","), "--savepoint", "sp")
	if err != nil {
		t.Fatalf("stop: %v\n%s", err, stopOut)
	}
	sp := filepath.Join(cwd, "sp")
	if want := "resume with: loanflow job run " + name + " --from-savepoint " + sp; !strings.Contains(stopOut, want) ||
		!strings.Contains(stopOut, "worker cli-w1 at "+admin+": stopped") {
		t.Fatalf("stop output lacks %q:\n%s", want, stopOut)
	}
	if err := <-done; err != nil {
		t.Fatalf("worker: %v\n%s", err, logs.String())
	}
	if _, err := os.Stat(filepath.Join(sp, "job.json")); err != nil {
		t.Fatalf("no savepoint: %v", err)
	}

	// Stopped: no worker, and the lag is exactly what the test wrote since
	// (in transactions), not the offset difference.
	more := testenv.ProduceTxns(t, brokers, in, 5, 100, 3)
	st, err = jobStatus(t, name, brokers)
	if !errors.Is(err, errUnhealthy) || len(st.Workers) != 0 || st.TotalLag != int64(more) {
		t.Fatalf("status of the stopped job: %v, %d workers, lag %d, want %d: %+v", err, len(st.Workers), st.TotalLag, more, st)
	}
	committedBefore := st.Partitions[0].Committed

	// Reset: a preview changes nothing.
	preview, err := run(t, newJobResetCmd, name, "--brokers", strings.Join(brokers, ","), "--to-earliest", "--output", "json")
	if err != nil {
		t.Fatalf("reset preview: %v\n%s", err, preview)
	}
	var rp resetPlan
	if err := json.Unmarshal([]byte(preview), &rp); err != nil || rp.Executed || len(rp.Offsets) != 1 ||
		rp.Offsets[0].From != committedBefore || rp.Offsets[0].To != 0 {
		t.Fatalf("reset preview: %v %+v", err, rp)
	}
	if st, _ = jobStatus(t, name, brokers); st.Partitions[0].Committed != committedBefore {
		t.Fatalf("a dry run moved the offset from %d to %d", committedBefore, st.Partitions[0].Committed)
	}

	f := flags(freeAddr(t), t.TempDir())
	f.fromSavepoint = sp
	rctx, cancel := context.WithCancel(ctx)
	go func() { done <- runJob(rctx, name, f, &logs) }()
	got := countCommitted(t, brokers, out, produced+more, 30*time.Second)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("restored worker: %v", err)
	}
	if got != produced+more {
		t.Fatalf("%d outputs after the restore, want %d (no gap, no duplicate)", got, produced+more)
	}

	// Reset, executed: the group's offset is back at the start.
	if out, err := run(t, newJobResetCmd, name, "--brokers", strings.Join(brokers, ","), "--to-earliest", "--execute"); err != nil ||
		!strings.Contains(out, "done: start the job again") {
		t.Fatalf("reset: %v\n%s", err, out)
	}
	offs, err := adm.FetchOffsets(ctx, kafka.Group(name))
	if err != nil {
		t.Fatal(err)
	}
	if o, ok := offs.Lookup(in, 0); !ok || o.At != 0 {
		t.Fatalf("after the reset the committed offset of %s/0 is %+v, want 0", in, o)
	}
}

// checkLogs: task ids as strings (not {}), job once per line, durations
// as Go duration strings, and a periodic summary line.
func checkLogs(t *testing.T, logs *syncBuffer) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(logs.String(), `"msg":"job summary"`) {
		if time.Now().After(deadline) {
			t.Fatalf("no job summary line in a minute:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	sawTask := false
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		if strings.Count(line, `"job":`) > 1 {
			t.Errorf("job logged twice: %s", line)
		}
		if strings.Contains(line, `"task":{}`) {
			t.Errorf("a task id logged as {}: %s", line)
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("not a JSON log line: %s", line)
		}
		if m["msg"] == "task ready" {
			sawTask = true
			if task, _ := m["task"].(string); !strings.Contains(task, "_") {
				t.Errorf("task id %v, want <subtopology>_<partition>: %s", m["task"], line)
			}
			if took, _ := m["took"].(string); took == "" || !strings.ContainsAny(took[len(took)-1:], "smh") {
				t.Errorf("duration %v, want a Go duration string: %s", m["took"], line)
			}
		}
		if m["msg"] == "job summary" {
			if _, ok := m["checkpoint_age"].(string); !ok || m["lag"] == nil || m["records_in_per_sec"] == nil {
				t.Errorf("summary line lacks its fields: %s", line)
			}
		}
	}
	if !sawTask {
		t.Error("no task ready line")
	}
}

// syncBuffer is a bytes.Buffer safe for a worker's log and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func getBody(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
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
