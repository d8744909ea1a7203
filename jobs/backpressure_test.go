package jobs

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/loanflow/loanflow/connectors/kafka"
	"github.com/loanflow/loanflow/internal/bureau"
	"github.com/loanflow/loanflow/internal/testenv"
	"github.com/loanflow/loanflow/pipeline"
	"github.com/loanflow/loanflow/schemas"
)

// TestDecisionsSlowBureauTinyCapacity: unknown applicants reach a bureau
// answering in 250ms through a bureau stage of capacity 1, with a 1.5s
// transaction timeout: each task's applications wait far longer than the
// timeout for room (12 per task, 3s). A full async operator must not hold
// the transaction open meanwhile (it was fenced, PRODUCER_FENCED / the
// transaction timed out, and the job never got past the batch): every
// checkpoint commits, and every application is decided exactly once, as
// the bureau's report for it says (the model: checkBureauDecisions asks the
// simulator itself).
func TestDecisionsSlowBureauTinyCapacity(t *testing.T) {
	const apps = 36
	s := newStack(t)
	br := startBureau(t, bureau.Config{LatencyMin: 250 * time.Millisecond, LatencyMax: 250 * time.Millisecond,
		ErrorRate: -1, TimeoutRate: -1, NoFileRate: -1, Seed: 5})
	s.env.BureauURL = br.URL()
	s.addLender("L1")
	tp := s.env.Topics.WithDefaults()
	createTopic(t, s.env.Brokers, tp.Applications, 1, false) // one fetch batch, one task reading it
	createTopic(t, s.env.Brokers, tp.Decisions, 3, false)
	s.startCDC()

	cfg := testDecisionsConfig()
	cfg.BureauCapacity, cfg.BureauTimeout, cfg.BureauAttempts = 1, 10*time.Second, 1
	job := testenv.Name(t, "decisions")
	b := pipeline.NewBuilder(job)
	if err := BuildDecisions(b, s.env, cfg); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	w, err := kafka.NewWorker(b, kafka.Config{Brokers: s.env.Brokers, StateDir: t.TempDir(), Logger: quietLogger(), Registerer: reg,
		CommitInterval: 100 * time.Millisecond, TransactionTimeout: 1500 * time.Millisecond, SessionTimeout: 3 * time.Second, DefaultPartitions: 3})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	wk := &worker{w: w, stop: cancel, done: make(chan error, 1)}
	go func() { wk.done <- w.Run(ctx) }()
	t.Cleanup(func() { wk.halt(t) })
	<-w.Ready()

	var ids []string
	var batch []schemas.LoanApplication
	now := time.Now()
	for i := range apps {
		id := fmt.Sprintf("slow-%02d", i)
		ids = append(ids, id)
		batch = append(batch, app(id, "L1", nil, "500.00", now))
	}
	newAppProducer(t, s.env).send(batch...)
	dr := newDecisionReader(t, s.env)
	dr.await(2*time.Minute, ids...)
	checkpoints := w.Checkpoints()
	wk.halt(t) // a final checkpoint: nothing is in flight after it

	// Everything the job committed is read: a sentinel written to every
	// partition after the job stopped comes after it.
	sentinels := sentinelDecisions(t, s.env, tp.Decisions, 3)
	dr.await(time.Minute, sentinels...)
	for _, id := range ids {
		if n := len(dr.got[id]); n != 1 {
			t.Errorf("%s decided %d times", id, n)
		}
	}
	if dr.n != apps+len(sentinels) {
		t.Errorf("%d decisions read, want %d and %d sentinels", dr.n, apps, len(sentinels))
	}
	checkBureauDecisions(t, br.URL(), dr, ids...)
	var failures float64
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "loanflow_engine_checkpoint_failures_total" {
			for _, m := range mf.GetMetric() {
				failures += m.GetCounter().GetValue()
			}
		}
	}
	if failures != 0 || checkpoints == 0 {
		t.Errorf("%v checkpoints failed, %d committed before the last decision was read", failures, checkpoints)
	}
}

// sentinelDecisions writes one decision to each partition of topic and
// returns their application ids.
func sentinelDecisions(t *testing.T, env Env, topic string, parts int32) []string {
	t.Helper()
	sd := serde[schemas.LoanDecision](t, env, topic, schemas.LoanDecisionSchema)
	cl, err := kgo.NewClient(kgo.SeedBrokers(env.Brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var ids []string
	for p := range parts {
		id := fmt.Sprintf("sentinel-%d", p)
		v, err := sd.Encode(nil, schemas.LoanDecision{ApplicationID: id, LenderID: "L1", Decision: schemas.DecisionRefer, ReasonCodes: []string{},
			Amount: schemas.MustParseDecimal("1.00"), Currency: "USD", AvailableCredit: schemas.MustParseDecimal("0.00"), Basis: schemas.BasisFallback,
			EventTime: time.Now().UTC().Truncate(time.Millisecond), DecidedAt: time.Now().UTC().Truncate(time.Millisecond)})
		if err != nil {
			t.Fatal(err)
		}
		if err := cl.ProduceSync(context.Background(), &kgo.Record{Topic: topic, Partition: p, Key: []byte(AppKey("L1", id)), Value: v}).FirstErr(); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}
