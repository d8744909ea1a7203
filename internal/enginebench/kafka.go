package enginebench

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/loanflow/loanflow/connectors/kafka"
	"github.com/loanflow/loanflow/operators"
	"github.com/loanflow/loanflow/pipeline"
	"github.com/loanflow/loanflow/state"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// KafkaConfig configures the scenarios that need a broker.
type KafkaConfig struct {
	Brokers []string
	// Records per passthrough run. Default 300,000.
	Records int
	// OverheadRecords feed the checkpoint-overhead runs, long enough for
	// several 1s checkpoints. Default 3,000,000.
	OverheadRecords int
	// Dir holds worker state.
	Dir string
	// Prefix names topics and jobs, so runs do not collide.
	Prefix string
}

func (c *KafkaConfig) defaults() {
	if c.Records == 0 {
		c.Records = 300_000
	}
	if c.OverheadRecords == 0 {
		c.OverheadRecords = 3_000_000
	}
	if c.Prefix == "" {
		c.Prefix = fmt.Sprintf("bench%d", time.Now().UnixNano()%1_000_000)
	}
}

func admin(brokers []string) (*kgo.Client, *kadm.Client, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return nil, nil, err
	}
	return cl, kadm.NewClient(cl), nil
}

func createTopics(ctx context.Context, adm *kadm.Client, parts int32, topics ...string) error {
	for _, t := range topics {
		resp, err := adm.CreateTopic(ctx, parts, -1, map[string]*string{"retention.ms": strp("-1")}, t)
		if err == nil {
			err = resp.Err
		}
		if err != nil {
			return fmt.Errorf("creating %s: %w", t, err)
		}
	}
	return nil
}

func strp(s string) *string { return &s }

// fill writes n records of about 100 bytes spread over parts partitions.
func fill(ctx context.Context, brokers []string, topic string, n int) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ProducerLinger(5*time.Millisecond))
	if err != nil {
		return err
	}
	defer cl.Close()
	val := []byte(strings.Repeat("x", 90))
	var perr atomic.Value
	for i := 0; i < n; i++ {
		cl.Produce(ctx, &kgo.Record{Topic: topic, Key: []byte(fmt.Sprint(i)), Value: val}, func(_ *kgo.Record, err error) {
			if err != nil {
				perr.Store(err)
			}
		})
	}
	if err := cl.Flush(ctx); err != nil {
		return err
	}
	if err, _ := perr.Load().(error); err != nil {
		return err
	}
	return nil
}

// waitCount waits until a read_committed reader has seen n records of
// topic and returns when the last arrived.
func waitCount(ctx context.Context, brokers []string, topic string, n int, timeout time.Duration) (time.Time, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		return time.Time{}, err
	}
	defer cl.Close()
	seen := 0
	deadline := time.Now().Add(timeout)
	for seen < n {
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("%s: %d of %d records after %s", topic, seen, n, timeout)
		}
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		fs := cl.PollFetches(pctx)
		cancel()
		seen += fs.NumRecords()
	}
	return time.Now(), nil
}

// rawPassthrough is the baseline: a franz-go consumer and producer copying
// records, no engine.
func rawPassthrough(ctx context.Context, brokers []string, in, out string, n int) (float64, error) {
	cons, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(in), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		return 0, err
	}
	defer cons.Close()
	prod, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return 0, err
	}
	defer prod.Close()
	start := time.Now()
	done := make(chan time.Time, 1)
	go func() {
		t, err := waitCount(ctx, brokers, out, n, 5*time.Minute)
		if err != nil {
			t = time.Time{}
		}
		done <- t
	}()
	for copied := 0; copied < n; {
		fs := cons.PollFetches(ctx)
		fs.EachRecord(func(r *kgo.Record) {
			prod.Produce(ctx, &kgo.Record{Topic: out, Key: r.Key, Value: r.Value}, nil)
			copied++
		})
	}
	if err := prod.Flush(ctx); err != nil {
		return 0, err
	}
	end := <-done
	if end.IsZero() {
		return 0, fmt.Errorf("raw passthrough output incomplete")
	}
	return rate(n, end.Sub(start)), nil
}

// enginePassthrough runs a source → sink job until its output is complete.
// It returns the end-to-end rate (until a read_committed reader saw every
// record) and the processing rate between 10% and 90% of the records
// through the sink (from the engine's own counters, so commit-interval
// latency does not count: checkpoint pauses do).
func enginePassthrough(ctx context.Context, cfg KafkaConfig, name, in, out string, delivery kafka.Delivery, interval time.Duration, stateful bool) (float64, float64, error) {
	b := pipeline.NewBuilder(name)
	src := kafka.Source(b, "in", kafka.SourceConfig[[]byte]{Topic: in, Codec: pipeline.BytesCodec()})
	s := src
	if stateful {
		keyed := pipeline.KeyBy(src, "by-value-len", func(v []byte) int64 { return int64(len(v)) % 64 }, pipeline.NoRepartition())
		s = operators.Process(keyed, "count", func() operators.ProcessFunc[int64, []byte, []byte] { return &counter{} })
	}
	kafka.Sink(s, "out", kafka.SinkConfig[[]byte]{Topic: out, Codec: pipeline.BytesCodec()})
	reg := prometheus.NewRegistry()
	w, err := kafka.NewWorker(b, kafka.Config{Brokers: cfg.Brokers, StateDir: cfg.Dir + "/" + name, Delivery: delivery,
		CommitInterval: interval, Logger: slog.New(slog.DiscardHandler), Registerer: reg, TickInterval: 20 * time.Millisecond})
	if err != nil {
		return 0, 0, err
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 1)
	start := time.Now()
	go func() { errc <- w.Run(rctx) }()
	procc := make(chan float64, 1)
	go func() { procc <- processingRate(rctx, reg, "out", cfg.Records) }()
	end, err := waitCount(ctx, cfg.Brokers, out, cfg.Records, 5*time.Minute)
	proc := <-procc
	cancel()
	if rerr := <-errc; rerr != nil && err == nil {
		err = rerr
	}
	if err != nil {
		return 0, 0, err
	}
	return rate(cfg.Records, end.Sub(start)), proc, nil
}

// processingRate samples an operator's records-in counter and returns its
// rate between 10% and 90% of n.
func processingRate(ctx context.Context, reg *prometheus.Registry, op string, n int) float64 {
	var t10, t90 time.Time
	var c10, c90 float64
	for ctx.Err() == nil {
		c := counterValue(reg, "loanflow_engine_records_in_total", op)
		now := time.Now()
		if t10.IsZero() && c >= 0.1*float64(n) {
			t10, c10 = now, c
		}
		if c >= 0.9*float64(n) {
			t90, c90 = now, c
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if t10.IsZero() || t90.IsZero() || !t90.After(t10) {
		return 0
	}
	return (c90 - c10) / t90.Sub(t10).Seconds()
}

func counterValue(reg *prometheus.Registry, name, op string) float64 {
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "operator" && l.GetValue() == op {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// counter keeps a count per key in state and passes records on.
type counter struct{ n *state.ValueState[int64] }

func (c *counter) Open(ctx *operators.ProcessContext[int64, []byte]) error {
	var err error
	c.n, err = state.Value[int64](ctx.Store(), ctx.StateSpec("n", 0), varint{})
	return err
}

func (c *counter) Process(ctx *operators.ProcessContext[int64, []byte], _ int64, v []byte) error {
	n, _, err := c.n.Get(ctx.Key())
	if err != nil {
		return err
	}
	if err := c.n.Set(ctx.Key(), n+1); err != nil {
		return err
	}
	return ctx.Emit(v)
}

func (c *counter) OnTimer(*operators.ProcessContext[int64, []byte], int64, pipeline.TimeDomain, int64) error {
	return nil
}

// Passthrough measures Kafka → engine → Kafka beside raw franz-go consume →
// produce on the same broker, exactly-once and at-least-once, and the
// checkpoint overhead of exactly-once at a 1s interval on a stateful job.
func Passthrough(ctx context.Context, cfg KafkaConfig) ([]Result, error) {
	cfg.defaults()
	cl, adm, err := admin(cfg.Brokers)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	in := cfg.Prefix + "-in"
	outs := []string{cfg.Prefix + "-raw", cfg.Prefix + "-eos", cfg.Prefix + "-alos", cfg.Prefix + "-eos1s", cfg.Prefix + "-alos1s"}
	if err := createTopics(ctx, adm, 4, append([]string{in}, outs...)...); err != nil {
		return nil, err
	}
	if err := fill(ctx, cfg.Brokers, in, cfg.Records); err != nil {
		return nil, err
	}
	raw, err := rawPassthrough(ctx, cfg.Brokers, in, outs[0], cfg.Records)
	if err != nil {
		return nil, err
	}
	eos, _, err := enginePassthrough(ctx, cfg, cfg.Prefix+"-eos", in, outs[1], kafka.ExactlyOnce, 0, false)
	if err != nil {
		return nil, err
	}
	alos, _, err := enginePassthrough(ctx, cfg, cfg.Prefix+"-alos", in, outs[2], kafka.AtLeastOnce, 0, false)
	if err != nil {
		return nil, err
	}
	big := cfg
	big.Records = cfg.OverheadRecords
	bigIn := cfg.Prefix + "-in-big"
	if err := createTopics(ctx, adm, 4, bigIn); err != nil {
		return nil, err
	}
	if err := fill(ctx, cfg.Brokers, bigIn, big.Records); err != nil {
		return nil, err
	}
	_, eos1, err := enginePassthrough(ctx, big, cfg.Prefix+"-eos1s", bigIn, outs[3], kafka.ExactlyOnce, time.Second, true)
	if err != nil {
		return nil, err
	}
	_, alos1, err := enginePassthrough(ctx, big, cfg.Prefix+"-alos1s", bigIn, outs[4], kafka.AtLeastOnce, time.Second, true)
	if err != nil {
		return nil, err
	}
	loss := 1 - eos1/alos1
	note := fmt.Sprintf("%d records of ~100 bytes over 4 partitions, read to the end by a read_committed consumer in every run", cfg.Records)
	return []Result{
		{Name: "Kafka → engine → Kafka, exactly-once (200ms commits)", Value: eos, Unit: "records/s", Baseline: raw, BaselineName: "raw franz-go consume → produce",
			Ratio: eos / raw, Goal: "≥ 0.5 of raw", Met: eos/raw >= 0.5, Note: note},
		{Name: "Kafka → engine → Kafka, at-least-once", Value: alos, Unit: "records/s", Baseline: raw, BaselineName: "raw franz-go consume → produce",
			Ratio: alos / raw, Goal: "≥ 0.7 of raw", Met: alos/raw >= 0.7},
		{Name: "checkpoint overhead, stateful job, exactly-once at 1s", Value: eos1, Unit: "records/s", Baseline: alos1, BaselineName: "at-least-once, 1s",
			Ratio: eos1 / alos1, Goal: "≤ 5% loss (ratio ≥ 0.95)", Met: loss <= 0.05,
			Note: fmt.Sprintf("processing throughput loss %.1f%% over %d records (engine counters between 10%% and 90%% of them, so the wait for the last commit is not counted; checkpoint pauses are)", loss*100, big.Records)},
	}, nil
}

// RecoverySpec is what a recovery-benchmark worker process runs.
type RecoverySpec struct {
	Brokers  []string `json:"brokers"`
	Job      string   `json:"job"`
	In       string   `json:"in"`
	Out      string   `json:"out"`
	StateDir string   `json:"state_dir"`
	WorkerID string   `json:"worker_id"`
}

func (s RecoverySpec) job() *pipeline.Builder {
	b := pipeline.NewBuilder(s.Job)
	src := kafka.Source(b, "in", kafka.SourceConfig[[]byte]{Topic: s.In, Codec: pipeline.BytesCodec()})
	keyed := pipeline.KeyBy(src, "key", func(v []byte) string { return string(v) }, pipeline.NoRepartition())
	counts := operators.Process(keyed, "count", func() operators.ProcessFunc[string, []byte, []byte] { return &keyCounter{} })
	kafka.Sink(counts, "out", kafka.SinkConfig[[]byte]{Topic: s.Out, Codec: pipeline.BytesCodec()})
	return b
}

// keyCounter counts records per key and reports only probe keys.
type keyCounter struct{ n *state.ValueState[int64] }

func (c *keyCounter) Open(ctx *operators.ProcessContext[string, []byte]) error {
	var err error
	c.n, err = state.Value[int64](ctx.Store(), ctx.StateSpec("n", 0), varint{})
	return err
}

func (c *keyCounter) Process(ctx *operators.ProcessContext[string, []byte], key string, v []byte) error {
	n, _, err := c.n.Get(ctx.Key())
	if err != nil {
		return err
	}
	if err := c.n.Set(ctx.Key(), n+1); err != nil {
		return err
	}
	if strings.HasPrefix(key, "probe") {
		return ctx.Emit([]byte(fmt.Sprintf("%s %d", key, n+1)))
	}
	return nil
}

func (c *keyCounter) OnTimer(*operators.ProcessContext[string, []byte], string, pipeline.TimeDomain, int64) error {
	return nil
}

// WorkerMain runs one recovery-benchmark worker until SIGTERM or SIGKILL.
func WorkerMain(ctx context.Context, spec string) error {
	var s RecoverySpec
	if err := json.Unmarshal([]byte(spec), &s); err != nil {
		return err
	}
	w, err := kafka.NewWorker(s.job(), kafka.Config{Brokers: s.Brokers, StateDir: s.StateDir, WorkerID: s.WorkerID,
		Logger: slog.New(slog.DiscardHandler), TransactionTimeout: 5 * time.Second, SessionTimeout: 3 * time.Second})
	if err != nil {
		return err
	}
	return w.Run(ctx)
}

// Recovery builds 1M keys of state in a worker process, kills it with
// SIGKILL, restarts it and measures the time from the restart to the output
// of a new record. spawn starts a process running WorkerMain(spec).
func Recovery(ctx context.Context, cfg KafkaConfig, keys int, spawn func(spec string) *exec.Cmd) (Result, error) {
	cfg.defaults()
	cl, adm, err := admin(cfg.Brokers)
	if err != nil {
		return Result{}, err
	}
	defer cl.Close()
	spec := RecoverySpec{Brokers: cfg.Brokers, Job: cfg.Prefix + "-recovery", In: cfg.Prefix + "-rec-in", Out: cfg.Prefix + "-rec-out",
		StateDir: cfg.Dir + "/recovery", WorkerID: "recovery"}
	if err := createTopics(ctx, adm, 2, spec.In, spec.Out); err != nil {
		return Result{}, err
	}
	prod, err := kgo.NewClient(kgo.SeedBrokers(cfg.Brokers...), kgo.ProducerLinger(5*time.Millisecond),
		kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		return Result{}, err
	}
	defer prod.Close()
	for i := 0; i < keys; i++ {
		k := []byte(fmt.Sprintf("k%07d", i))
		prod.Produce(ctx, &kgo.Record{Topic: spec.In, Partition: int32(i % 2), Key: k, Value: k}, nil)
	}
	// A probe per partition: its output says everything before it in the
	// partition is in state.
	probe := func(n int, p int32) error {
		k := []byte(fmt.Sprintf("probe%d-%d", n, p))
		return prod.ProduceSync(ctx, &kgo.Record{Topic: spec.In, Partition: p, Key: k, Value: k}).FirstErr()
	}
	for p := int32(0); p < 2; p++ {
		if err := probe(0, p); err != nil {
			return Result{}, err
		}
	}
	raw, _ := json.Marshal(spec)
	start := func() (*exec.Cmd, error) {
		cmd := spawn(string(raw))
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		return cmd, cmd.Start()
	}
	cmd, err := start()
	if err != nil {
		return Result{}, err
	}
	// The probes after a million keys come out once they are all in state.
	if _, err := waitCount(ctx, cfg.Brokers, spec.Out, 2, 10*time.Minute); err != nil {
		cmd.Process.Kill()
		return Result{}, fmt.Errorf("building state: %w", err)
	}
	time.Sleep(1500 * time.Millisecond) // let a few checkpoints pass
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()

	t0 := time.Now()
	if cmd, err = start(); err != nil {
		return Result{}, err
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()
	if err := probe(1, 0); err != nil {
		return Result{}, err
	}
	end, err := waitCount(ctx, cfg.Brokers, spec.Out, 3, 2*time.Minute)
	if err != nil {
		return Result{}, err
	}
	took := end.Sub(t0)
	return Result{Name: fmt.Sprintf("recovery after SIGKILL, %d keys of state", keys), Value: took.Seconds(), Unit: "s",
		Goal: "< 5 s", Met: took < 5*time.Second,
		Note: "from the restart of the killed worker process to the output of a record produced right after it (process start, group rejoin as the same static member, restore of the changelog tail into local Pebble, processing)"}, nil
}
