package kafka_test

import (
	"cmp"
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
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/loanflow/loanflow/connectors/kafka"
	"github.com/loanflow/loanflow/operators"
	"github.com/loanflow/loanflow/pipeline"
	"github.com/loanflow/loanflow/state"
	"github.com/twmb/franz-go/pkg/kgo"
)

// The fault tests run the "enrich" job. It exercises what exactly-once
// must survive: keyed state (dedupe by id, with a TTL), processing-time
// timers, a dead-letter path, two repartitions, a temporal join against an
// accounts table, an async scoring stage that fails often, and tumbling,
// sliding and session windows with allowed lateness over inputs that go
// idle. Its expected output is computed by a plain Go model of the job's
// semantics from the generated input (model_test.go), never by the engine.

type txn struct {
	ID      int64  `json:"id"`
	Account string `json:"account"`
	Amount  int64  `json:"amount"`
	TS      int64  `json:"ts"`
	// Late events are generated behind their partition's event time; the
	// session windows leave them out.
	Late bool `json:"late,omitempty"`
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
	Late      bool   `json:"late,omitempty"`
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

// windowOut is every window operator's output record.
type windowOut struct {
	Account string `json:"account"`
	Start   int64  `json:"start"`
	End     int64  `json:"end"`
	N       int64  `json:"n"`
	Amount  int64  `json:"amount"`
	Score   int64  `json:"score"`
	Update  int    `json:"update"`
}

// jobTopics names the topics of one run of the enrich job.
type jobTopics struct {
	Events, Accounts                                 string
	Scored, Windows, Sliding, Sessions, Timers, Dead string
}

// withOutputs names the output topics of a run after prefix.
func (tp jobTopics) withOutputs(name func(string) string, job string) jobTopics {
	tp.Scored, tp.Windows, tp.Sliding = name("scored"), name("windows"), name("sliding")
	tp.Sessions, tp.Timers = name("sessions"), name("timers")
	tp.Dead = pipeline.DeadLetterTopic(job)
	return tp
}

// The job's parameters, shared with the model.
const (
	outOfOrderness  = time.Second
	idleTimeout     = 2 * time.Second
	tumblingSize    = 10 * time.Second
	slidingSize     = 10 * time.Second
	slidingSlide    = 5 * time.Second
	sessionGap      = 2 * time.Second
	allowedLateness = time.Hour
	timerEvery      = 100 // ids with id%timerEvery == 0 get a processing-time timer
)

func score(id int64) int64 {
	h := fnv.New64a()
	fmt.Fprint(h, id)
	return int64(h.Sum64() % 1000)
}

var errPoison = fmt.Errorf("negative amount")

// enrichJob builds the job. The async stage fails 10% of attempts and
// sleeps up to 3ms, like a flaky bureau.
func enrichJob(name string, tp jobTopics) *pipeline.Builder {
	b := pipeline.NewBuilder(name)
	wm := pipeline.WatermarkStrategy{MaxOutOfOrderness: outOfOrderness, IdleTimeout: idleTimeout}
	events := kafka.Source(b, "events", kafka.SourceConfig[txn]{Topic: tp.Events, Codec: pipeline.JSONCodec[txn](),
		Timestamp: func(_ *pipeline.RawRecord, v txn) int64 { return v.TS }, Watermarks: wm})
	accounts := kafka.Source(b, "accounts", kafka.SourceConfig[account]{Topic: tp.Accounts, Codec: pipeline.JSONCodec[account](),
		Timestamp: func(_ *pipeline.RawRecord, v account) int64 { return v.TS }, Watermarks: wm})

	byID := pipeline.KeyBy(events, "by-id", func(t txn) int64 { return t.ID }, pipeline.ValueCodec(pipeline.JSONCodec[txn]()))
	deduped := operators.Process(byID, "dedupe", func() operators.ProcessFunc[int64, txn, txn] { return &dedupe{} })
	timers := operators.Process(pipeline.KeyBy(deduped, "by-id-again", func(t txn) int64 { return t.ID }, pipeline.NoRepartition()),
		"ticker", func() operators.ProcessFunc[int64, txn, string] { return &ticker{} })
	kafka.Sink(timers, "timers-out", kafka.SinkConfig[string]{Topic: tp.Timers, Codec: pipeline.StringCodec()})
	checked := operators.Map(deduped, "check", func(t txn) (txn, error) {
		if t.Amount < 0 {
			return t, errPoison
		}
		return t, nil
	})
	byAccount := pipeline.KeyBy(checked, "by-account", func(t txn) string { return t.Account }, pipeline.ValueCodec(pipeline.JSONCodec[txn]()))
	table := pipeline.KeyBy(accounts, "account-key", func(a account) string { return a.Account }, pipeline.NoRepartition())
	joined := operators.TemporalJoin(byAccount, table, "enrich", operators.TemporalJoinSpec[txn, account, enriched]{
		Join: func(t txn, row *operators.Versioned[account]) (enriched, error) {
			e := enriched{ID: t.ID, Account: t.Account, Amount: t.Amount, TS: t.TS, Late: t.Late}
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
		Retry:    operators.RetryPolicy{MaxAttempts: 20, InitialBackoff: time.Millisecond, MaxBackoff: 20 * time.Millisecond},
		InCodec:  pipeline.JSONCodec[enriched](),
	})
	kafka.Sink(scored, "scored-out", kafka.SinkConfig[enriched]{Topic: tp.Scored, Codec: pipeline.JSONCodec[enriched](),
		Key: func(r pipeline.Record[enriched]) []byte { return []byte(fmt.Sprint(r.Value.ID)) }})
	keyed := pipeline.KeyBy(scored, "scored-by-account", func(e enriched) string { return e.Account }, pipeline.NoRepartition())
	windows := func(name, topic string, opts operators.WindowOptions[enriched], in pipeline.KeyedStream[string, enriched]) {
		opts.AllowedLateness = allowedLateness
		agg := operators.Aggregate(in, name, opts, operators.AggregateFunc[enriched, winAcc, winAcc]{
			Init:   func() winAcc { return winAcc{} },
			Add:    func(a winAcc, e enriched) winAcc { return winAcc{a.N + 1, a.Amount + e.Amount, a.Score + e.Score} },
			Merge:  func(a, c winAcc) winAcc { return winAcc{a.N + c.N, a.Amount + c.Amount, a.Score + c.Score} },
			Result: func(a winAcc) winAcc { return a },
		}, pipeline.JSONCodec[winAcc]())
		out := operators.Map(agg, name+"-out", func(w operators.Windowed[string, winAcc]) (windowOut, error) {
			return windowOut{Account: w.Key, Start: w.Window.Start, End: w.Window.End, N: w.Value.N, Amount: w.Value.Amount,
				Score: w.Value.Score, Update: w.Update}, nil
		})
		kafka.Sink(out, name+"-sink", kafka.SinkConfig[windowOut]{Topic: topic, Codec: pipeline.JSONCodec[windowOut]()})
	}
	windows("windows", tp.Windows, operators.WindowOptions[enriched]{Assigner: operators.Tumbling(tumblingSize)}, keyed)
	windows("sliding", tp.Sliding, operators.WindowOptions[enriched]{Assigner: operators.Sliding(slidingSize, slidingSlide)}, keyed)
	onTime := pipeline.KeyBy(operators.Filter(scored, "on-time", func(e enriched) bool { return !e.Late }),
		"on-time-by-account", func(e enriched) string { return e.Account }, pipeline.NoRepartition())
	windows("sessions", tp.Sessions, operators.WindowOptions[enriched]{Assigner: operators.Session(sessionGap)}, onTime)
	return b
}

// dedupe passes the first record of each id, remembering ids for an hour.
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

// ticker sets a processing-time timer 50ms ahead for every timerEvery-th
// id and says so when it fires: exactly once per such id.
type ticker struct{}

func (*ticker) Open(*operators.ProcessContext[int64, string]) error { return nil }

func (*ticker) Process(ctx *operators.ProcessContext[int64, string], id int64, _ txn) error {
	if id%timerEvery != 0 {
		return nil
	}
	return ctx.RegisterProcessingTimer(ctx.Now().Add(50 * time.Millisecond).UnixMilli())
}

func (*ticker) OnTimer(ctx *operators.ProcessContext[int64, string], id int64, _ pipeline.TimeDomain, _ int64) error {
	return ctx.Emit(fmt.Sprintf("timer:%d", id))
}

// dataset is the generated input.
type dataset struct {
	events, accounts []*kgo.Record
	parts            int32
}

// t0 is recent: brokers apply retention to record timestamps, and event
// times become output timestamps.
var t0 = time.Now().Add(-2 * time.Hour).Truncate(time.Hour).UnixMilli()

// genData makes n events over parts partitions with bounded disorder
// (300ms jitter), 1% duplicates shortly after their original, one late
// event (5-7s behind) per 200, one poison event (negative amount) per 997,
// account updates spread over the same time, and one far-future record
// per partition of each topic that closes every window.
func genData(tp jobTopics, n int, parts int32, seed int64) dataset {
	rng := rand.New(rand.NewSource(seed))
	d := dataset{parts: parts}
	const accounts = 500
	late := int64(n) + int64(parts)
	for i := 0; i < n; i++ {
		p := int32(i) % parts
		t := txn{ID: int64(i), Account: fmt.Sprintf("acct-%d", rng.Intn(accounts)), Amount: int64(rng.Intn(10000)),
			TS: t0 + int64(i/int(parts))*10 + int64(rng.Intn(300))}
		if i%997 == 0 {
			t.Amount = -1
		}
		d.events = append(d.events, eventRecord(tp.Events, p, t))
		if rng.Intn(100) == 0 {
			d.events = append(d.events, eventRecord(tp.Events, p, t))
		}
		if i%200 == 199 {
			l := txn{ID: late, Account: fmt.Sprintf("acct-%d", rng.Intn(accounts)), Amount: int64(rng.Intn(10000)),
				TS: t.TS - 5000 - int64(rng.Intn(2000)), Late: true}
			late++
			d.events = append(d.events, eventRecord(tp.Events, p, l))
		}
		if i%30 == 0 {
			a := account{Account: fmt.Sprintf("acct-%d", rng.Intn(accounts)), Tier: int64(rng.Intn(5)), Limit: int64(rng.Intn(100)) * 1000,
				TS: t0 + int64(i/int(parts))*10 + int64(rng.Intn(300))}
			d.accounts = append(d.accounts, accountRecord(tp.Accounts, parts, a))
		}
	}
	end := t0 + int64(n/int(parts))*10 + 3_600_000
	for p := int32(0); p < parts; p++ {
		t := txn{ID: int64(n) + int64(p), Account: sentinel(p), TS: end}
		d.events = append(d.events, eventRecord(tp.Events, p, t))
	}
	for p := int32(0); p < parts; p++ {
		d.accounts = append(d.accounts, &kgo.Record{Topic: tp.Accounts, Partition: p, Key: []byte("close"), Value: mustJSON(account{Account: "close", TS: end + 60_000})})
	}
	return d
}

func sentinel(p int32) string { return fmt.Sprintf("sentinel-%d", p) }

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
	// CacheEntries bounds each task's state cache; small values make
	// every record evict.
	CacheEntries int `json:"cache_entries"`
	// TransactionTimeout is the worker's (10s when zero).
	TransactionTimeout time.Duration `json:"transaction_timeout"`
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
		TransactionTimeout: cmp.Or(env.TransactionTimeout, 10*time.Second), SessionTimeout: 3 * time.Second, FromSavepoint: env.FromSavepoint,
		MaxCachedEntries: env.CacheEntries,
		// A summary line every 10 s: a stalled incarnation's log tail
		// says what it was doing (lag, paused tasks, checkpoints).
		SummaryInterval: 10 * time.Second,
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
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperWorker$", "-test.timeout=20m")
	cmd.Env = append(os.Environ(), "LOANFLOW_HELPER_WORKER="+string(spec))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &workerProc{cmd: cmd, done: make(chan struct{}), log: logPath}
	liveWorkers.Store(p, true)
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("log tail of worker %s (%s):\n%s", env.WorkerID, logPath, logTail(b, os.Getenv("LOANFLOW_TEST_LOGS") != ""))
		}
	})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		liveWorkers.Delete(p)
		close(p.done)
	}()
	return p
}

// logTail is what a failed test shows of a worker's log: the last 6,000
// bytes of what it logged and, when it was made to dump its goroutines
// (dumpWorkers), the goroutines running Loanflow code, which say where a
// stalled worker waits (the whole dump is mostly the runtime's and the
// libraries' idle goroutines, and a plain tail cut it off: CI could not
// tell where TestScaleOut's survivors stalled). full: all of it (the log
// is kept on disk).
func logTail(b []byte, full bool) string {
	if full {
		return string(b)
	}
	const keep = 6000
	logPart, dump, dumped := strings.Cut(string(b), "SIGQUIT: quit")
	if len(logPart) > keep {
		logPart = logPart[len(logPart)-keep:]
	}
	if !dumped {
		return logPart
	}
	var ours []string
	for _, g := range strings.Split(dump, "\n\n") {
		if strings.Contains(g, "loanflow/loanflow/") {
			ours = append(ours, g)
		}
	}
	out := logPart + "\nSIGQUIT: the worker's goroutines in Loanflow code:\n" + strings.Join(ours, "\n\n")
	if len(out) > 60000 {
		out = out[:60000] + "\n… (cut)"
	}
	return out
}

// liveWorkers are the worker processes running now.
var liveWorkers sync.Map

// dumpWorkers makes every running worker print its goroutines into its
// log (SIGQUIT), for a test about to fail on a timeout.
func dumpWorkers() {
	liveWorkers.Range(func(k, _ any) bool {
		p := k.(*workerProc)
		_ = p.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
		}
		return true
	})
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

// tasksReady counts the tasks the worker has logged as restored and
// running.
func (p *workerProc) tasksReady() int {
	b, _ := os.ReadFile(p.log)
	return strings.Count(string(b), "task ready")
}

func (p *workerProc) tail() string {
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return strings.Join(lines, "\n")
}
