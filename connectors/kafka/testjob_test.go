package kafka_test

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/loanflow/loanflow/connectors/kafka"
	"github.com/loanflow/loanflow/operators"
	"github.com/loanflow/loanflow/pipeline"
	"github.com/loanflow/loanflow/state"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// The fault tests run the "enrich" job: keyed state (dedupe by id), a
// temporal join against an accounts table, an async scoring stage and a
// tumbling window, with two repartitions. Its output does not depend on
// the order records arrive in, so a run that crashed must produce exactly
// what an uninterrupted run produces.

type txn struct {
	ID      int64  `json:"id"`
	Account string `json:"account"`
	Amount  int64  `json:"amount"`
	TS      int64  `json:"ts"`
}

type account struct {
	Account string `json:"account"`
	Tier    int64  `json:"tier"`
	Limit   int64  `json:"limit"`
	TS      int64  `json:"ts"`
}

type enriched struct {
	ID        int64  `json:"id"`
	Account   string `json:"account"`
	Amount    int64  `json:"amount"`
	TS        int64  `json:"ts"`
	Tier      int64  `json:"tier"`
	Limit     int64  `json:"limit"`
	TableFrom int64  `json:"table_from"`
	Score     int64  `json:"score"`
}

type winAcc struct {
	N      int64 `json:"n"`
	Amount int64 `json:"amount"`
	Score  int64 `json:"score"`
}

type windowOut struct {
	Account string `json:"account"`
	Start   int64  `json:"start"`
	N       int64  `json:"n"`
	Amount  int64  `json:"amount"`
	Score   int64  `json:"score"`
}

// jobTopics names the topics of one run of the enrich job.
type jobTopics struct {
	Events, Accounts, Scored, Windows string
}

func score(id int64) int64 {
	h := fnv.New64a()
	fmt.Fprint(h, id)
	return int64(h.Sum64() % 1000)
}

// enrichJob builds the job. The async stage fails 10% of first attempts
// and sleeps up to 3ms, like a flaky bureau.
func enrichJob(name string, tp jobTopics) *pipeline.Builder {
	b := pipeline.NewBuilder(name)
	// No idleness: these tests compare a faulty run's output with a
	// reference run's, which needs watermarks that depend on the data
	// only. Idleness is processing time: a partition whose task stalls
	// longer than IdleTimeout (a paused or restoring worker, a loaded CI
	// machine) is left out of the minimum, and its records may then arrive
	// behind the watermark, as in Flink. Every partition here ends with a
	// sentinel that closes the windows, so nothing waits on an idle input.
	wm := pipeline.WatermarkStrategy{MaxOutOfOrderness: time.Second}
	events := kafka.Source(b, "events", kafka.SourceConfig[txn]{Topic: tp.Events, Codec: pipeline.JSONCodec[txn](),
		Timestamp: func(_ *pipeline.RawRecord, v txn) int64 { return v.TS }, Watermarks: wm})
	accounts := kafka.Source(b, "accounts", kafka.SourceConfig[account]{Topic: tp.Accounts, Codec: pipeline.JSONCodec[account](),
		Timestamp: func(_ *pipeline.RawRecord, v account) int64 { return v.TS }, Watermarks: wm})

	byID := pipeline.KeyBy(events, "by-id", func(t txn) int64 { return t.ID }, pipeline.ValueCodec(pipeline.JSONCodec[txn]()))
	deduped := operators.Process(byID, "dedupe", func() operators.ProcessFunc[int64, txn, txn] { return &dedupe{} })
	byAccount := pipeline.KeyBy(deduped, "by-account", func(t txn) string { return t.Account }, pipeline.ValueCodec(pipeline.JSONCodec[txn]()))
	table := pipeline.KeyBy(accounts, "account-key", func(a account) string { return a.Account }, pipeline.NoRepartition())
	joined := operators.TemporalJoin(byAccount, table, "enrich", operators.TemporalJoinSpec[txn, account, enriched]{
		Join: func(t txn, row *operators.Versioned[account]) (enriched, error) {
			e := enriched{ID: t.ID, Account: t.Account, Amount: t.Amount, TS: t.TS}
			if row != nil {
				e.Tier, e.Limit, e.TableFrom = row.Value.Tier, row.Value.Limit, row.ValidFrom
			}
			return e, nil
		},
		Retention:  24 * time.Hour,
		ProbeCodec: pipeline.JSONCodec[txn](),
		TableCodec: pipeline.JSONCodec[account](),
	})
	scored := operators.Async(joined, "score", operators.AsyncSpec[enriched, enriched]{
		Call: func(ctx context.Context, e enriched) (enriched, error) {
			select {
			case <-time.After(time.Duration(rand.Intn(3000)) * time.Microsecond):
			case <-ctx.Done():
				return e, ctx.Err()
			}
			if rand.Intn(10) == 0 {
				return e, fmt.Errorf("bureau hiccup")
			}
			e.Score = score(e.ID)
			return e, nil
		},
		Capacity: 1000,
		Timeout:  2 * time.Second,
		Retry:    operators.RetryPolicy{MaxAttempts: 10, InitialBackoff: time.Millisecond, MaxBackoff: 20 * time.Millisecond},
		InCodec:  pipeline.JSONCodec[enriched](),
	})
	kafka.Sink(scored, "scored-out", kafka.SinkConfig[enriched]{Topic: tp.Scored, Codec: pipeline.JSONCodec[enriched](),
		Key: func(r pipeline.Record[enriched]) []byte { return []byte(fmt.Sprint(r.Value.ID)) }})
	keyed := pipeline.KeyBy(scored, "scored-by-account", func(e enriched) string { return e.Account }, pipeline.NoRepartition())
	wins := operators.Aggregate(keyed, "windows", operators.WindowOptions[enriched]{Assigner: operators.Tumbling(10 * time.Second)},
		operators.AggregateFunc[enriched, winAcc, winAcc]{
			Init:   func() winAcc { return winAcc{} },
			Add:    func(a winAcc, e enriched) winAcc { return winAcc{a.N + 1, a.Amount + e.Amount, a.Score + e.Score} },
			Merge:  func(a, c winAcc) winAcc { return winAcc{a.N + c.N, a.Amount + c.Amount, a.Score + c.Score} },
			Result: func(a winAcc) winAcc { return a },
		}, pipeline.JSONCodec[winAcc]())
	out := operators.Map(wins, "window-out", func(w operators.Windowed[string, winAcc]) (windowOut, error) {
		return windowOut{Account: w.Key, Start: w.Window.Start, N: w.Value.N, Amount: w.Value.Amount, Score: w.Value.Score}, nil
	})
	kafka.Sink(out, "windows-out", kafka.SinkConfig[windowOut]{Topic: tp.Windows, Codec: pipeline.JSONCodec[windowOut]()})
	return b
}

// dedupe passes the first record of each id.
type dedupe struct{ seen *state.ValueState[bool] }

func (d *dedupe) Open(ctx *operators.ProcessContext[int64, txn]) error {
	var err error
	d.seen, err = state.Value[bool](ctx.Store(), ctx.StateSpec("seen", time.Hour), pipeline.JSONCodec[bool]())
	return err
}

func (d *dedupe) Process(ctx *operators.ProcessContext[int64, txn], _ int64, t txn) error {
	if _, ok, err := d.seen.Get(ctx.Key()); ok || err != nil {
		return err
	}
	if err := d.seen.Set(ctx.Key(), true); err != nil {
		return err
	}
	return ctx.Emit(t)
}

func (d *dedupe) OnTimer(*operators.ProcessContext[int64, txn], int64, pipeline.TimeDomain, int64) error {
	return nil
}

// dataset is the generated input and what the output must contain.
type dataset struct {
	events, accounts []*kgo.Record
	uniqueIDs        int
	windows          int
}

// t0 is recent: brokers apply retention to record timestamps, and event
// times become output timestamps.
var t0 = time.Now().Add(-2 * time.Hour).Truncate(time.Hour).UnixMilli()

// genData makes n events over 4 partitions with bounded disorder (300ms
// jitter, 1% duplicates shortly after their original) and account updates
// spread over the same time, plus one far-future record per partition of
// each topic that closes every window.
func genData(tp jobTopics, n int, parts int32, seed int64) dataset {
	rng := rand.New(rand.NewSource(seed))
	var d dataset
	wins := map[string]bool{}
	const accounts = 500
	for i := 0; i < n; i++ {
		p := int32(i) % parts
		t := txn{ID: int64(i), Account: fmt.Sprintf("acct-%d", rng.Intn(accounts)), Amount: int64(rng.Intn(10000)),
			TS: t0 + int64(i/int(parts))*10 + int64(rng.Intn(300))}
		d.events = append(d.events, eventRecord(tp.Events, p, t))
		wins[fmt.Sprintf("%s/%d", t.Account, (t.TS/10000)*10000)] = true
		if rng.Intn(100) == 0 {
			d.events = append(d.events, eventRecord(tp.Events, p, t))
		}
		if i%30 == 0 {
			a := account{Account: fmt.Sprintf("acct-%d", rng.Intn(accounts)), Tier: int64(rng.Intn(5)), Limit: int64(rng.Intn(100)) * 1000,
				TS: t0 + int64(i/int(parts))*10 + int64(rng.Intn(300))}
			d.accounts = append(d.accounts, accountRecord(tp.Accounts, parts, a))
		}
	}
	end := t0 + int64(n/int(parts))*10 + 3_600_000
	for p := int32(0); p < parts; p++ {
		t := txn{ID: int64(n) + int64(p), Account: fmt.Sprintf("sentinel-%d", p), TS: end}
		d.events = append(d.events, eventRecord(tp.Events, p, t))
		wins[fmt.Sprintf("%s/%d", t.Account, (t.TS/10000)*10000)] = true
	}
	for p := int32(0); p < parts; p++ {
		d.accounts = append(d.accounts, &kgo.Record{Topic: tp.Accounts, Partition: p, Key: []byte("close"), Value: mustJSON(account{Account: "close", TS: end + 60_000})})
	}
	d.uniqueIDs = n + int(parts)
	d.windows = len(wins) - int(parts) // the sentinels' windows never close
	return d
}

func eventRecord(topic string, p int32, t txn) *kgo.Record {
	return &kgo.Record{Topic: topic, Partition: p, Key: []byte(fmt.Sprint(t.ID)), Value: mustJSON(t)}
}

func accountRecord(topic string, parts int32, a account) *kgo.Record {
	return &kgo.Record{Topic: topic, Partition: pipeline.KeyPartition([]byte(a.Account), parts), Key: []byte(a.Account), Value: mustJSON(a)}
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// outputs reads both output topics (read_committed) and reduces them to
// comparable multisets.
type outputs struct {
	scored            map[int64][]string // id → values seen
	windows           map[string]int     // window value → count
	nScored, nWindows int
}

func readOutputs(t testing.TB, seeds []string, tp jobTopics) outputs {
	o := outputs{scored: map[int64][]string{}, windows: map[string]int{}}
	for _, r := range readAll(t, seeds, tp.Scored) {
		var e enriched
		if err := json.Unmarshal(r.Value, &e); err != nil {
			t.Fatalf("bad scored record %q: %v", r.Value, err)
		}
		o.scored[e.ID] = append(o.scored[e.ID], string(r.Value))
		o.nScored++
	}
	for _, r := range readAll(t, seeds, tp.Windows) {
		o.windows[string(r.Value)]++
		o.nWindows++
	}
	return o
}

// readAll reads a topic to its current end with read_committed isolation.
func readAll(t testing.TB, seeds []string, topic string) []*kgo.Record {
	t.Helper()
	adm := newAdmin(t, seeds)
	ends, err := adm.ListCommittedOffsets(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}
	want := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) {
		if o.Offset > 0 {
			want[o.Partition] = o.Offset
		}
	})
	if len(want) == 0 {
		return nil
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.ConsumeTopics(topic),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.KeepControlRecords())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var out []*kgo.Record
	deadline := time.Now().Add(60 * time.Second)
	for len(want) > 0 && time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		fs := cl.PollFetches(ctx)
		cancel()
		fs.EachRecord(func(r *kgo.Record) {
			if !r.Attrs.IsControl() {
				out = append(out, r)
			}
			if end, ok := want[r.Partition]; ok && r.Offset+1 >= end {
				delete(want, r.Partition)
			}
		})
	}
	if len(want) > 0 {
		t.Fatalf("could not read %s to its end: partitions %v left", topic, want)
	}
	return out
}

// compare reports lost and duplicated records of got against want.
func compare(want, got outputs) (lost, dup, wrong int, detail []string) {
	for id, vals := range want.scored {
		g := got.scored[id]
		switch {
		case len(g) == 0:
			lost++
			detail = append(detail, fmt.Sprintf("scored id %d lost", id))
		case len(g) > 1:
			dup += len(g) - 1
			detail = append(detail, fmt.Sprintf("scored id %d seen %d times", id, len(g)))
		}
		if len(g) > 0 && g[0] != vals[0] {
			wrong++
			detail = append(detail, fmt.Sprintf("scored id %d: got %s want %s", id, g[0], vals[0]))
		}
	}
	for id, g := range got.scored {
		if _, ok := want.scored[id]; !ok {
			dup += len(g)
			detail = append(detail, fmt.Sprintf("scored id %d unexpected", id))
		}
	}
	for v, n := range want.windows {
		if g := got.windows[v]; g < n {
			lost += n - g
			detail = append(detail, "window lost: "+v)
		}
	}
	for v, g := range got.windows {
		if n := want.windows[v]; g > n {
			dup += g - n
			detail = append(detail, "window duplicated or wrong: "+v)
		}
	}
	sort.Strings(detail)
	if len(detail) > 20 {
		detail = append(detail[:20], fmt.Sprintf("... %d more", len(detail)-20))
	}
	return lost, dup, wrong, detail
}

// helperEnv is how a test hands a worker process its job.
type helperEnv struct {
	Seeds         []string  `json:"seeds"`
	Job           string    `json:"job"`
	Topics        jobTopics `json:"topics"`
	StateDir      string    `json:"state_dir"`
	WorkerID      string    `json:"worker_id"`
	Delivery      string    `json:"delivery"`
	Savepoint     string    `json:"savepoint"`
	FromSavepoint string    `json:"from_savepoint"`
}

// TestHelperWorker is not a test: the fault tests run the test binary
// with LOANFLOW_HELPER_WORKER set to run one worker process of the enrich
// job, which they then kill or stop.
func TestHelperWorker(t *testing.T) {
	spec := os.Getenv("LOANFLOW_HELPER_WORKER")
	if spec == "" {
		t.Skip("helper process for the fault tests")
	}
	var env helperEnv
	if err := json.Unmarshal([]byte(spec), &env); err != nil {
		t.Fatal(err)
	}
	logger := slog.Default()
	var kopts []kgo.Opt
	if os.Getenv("LOANFLOW_TEST_DEBUG") != "" {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
		kopts = append(kopts, kgo.WithLogger(kgo.BasicLogger(os.Stderr, kgo.LogLevelInfo, nil)))
	}
	w, err := kafka.NewWorker(enrichJob(env.Job, env.Topics), kafka.Config{Logger: logger, ClientOpts: kopts,
		Brokers: env.Seeds, StateDir: env.StateDir, WorkerID: env.WorkerID, Delivery: kafka.Delivery(env.Delivery),
		TransactionTimeout: 5 * time.Second, SessionTimeout: 3 * time.Second, FromSavepoint: env.FromSavepoint,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if env.Savepoint != "" {
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGUSR1)
		go func() {
			<-sigs
			if err := w.StopWithSavepoint(context.Background(), env.Savepoint); err != nil {
				fmt.Fprintln(os.Stderr, "savepoint:", err)
				os.Exit(3)
			}
		}()
	}
	if err := w.Run(ctx); err != nil {
		t.Fatal(err)
	}
}

// workerProc is a worker process run by a test.
type workerProc struct {
	cmd  *exec.Cmd
	done chan struct{}
	log  string
}

func startWorker(t testing.TB, env helperEnv, logDir string, n int) *workerProc {
	t.Helper()
	spec, _ := json.Marshal(env)
	logPath := filepath.Join(logDir, fmt.Sprintf("%s-%d.log", env.WorkerID, n))
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperWorker$", "-test.timeout=10m")
	cmd.Env = append(os.Environ(), "LOANFLOW_HELPER_WORKER="+string(spec))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &workerProc{cmd: cmd, done: make(chan struct{}), log: logPath}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			const keep = 6000
			if len(b) > keep {
				b = b[len(b)-keep:]
			}
			t.Logf("log tail of worker %s (%s):\n%s", env.WorkerID, logPath, b)
		}
	})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	return p
}

func (p *workerProc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

func (p *workerProc) signal(s syscall.Signal) { _ = p.cmd.Process.Signal(s) }

func (p *workerProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *workerProc) tail() string {
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return strings.Join(lines, "\n")
}
