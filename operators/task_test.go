package operators_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/loanflow/loanflow/pipeline"
	"github.com/loanflow/loanflow/state"
)

// dedupeOp remembers every id it sees for a TTL and never reads an id
// twice: the decisions job's dedupe of unique application ids.
type dedupeOp struct {
	ttl  time.Duration
	seen *state.ValueState[string]
	out  pipeline.Collector[string]
}

func (d *dedupeOp) Open(ctx *pipeline.Context, out pipeline.Collector[string]) error {
	d.out = out
	var err error
	d.seen, err = state.Value[string](ctx.Store(), ctx.StateSpec("seen", d.ttl), pipeline.StringCodec())
	return err
}

func (d *dedupeOp) Process(r pipeline.Record[string]) error {
	if err := d.seen.Set(r.Value, ""); err != nil {
		return err
	}
	return d.out.Collect(r)
}

func (d *dedupeOp) Close() error { return nil }

type nullOutput struct{}

func (nullOutput) Emit(pipeline.OutRecord) error        { return nil }
func (nullOutput) DeadLetter(pipeline.DeadLetter) error { return nil }

// TestExpireStateLevelsOff feeds 100 new ids per hour of processing time
// for four days into state with a 24h TTL, checkpointing and running
// ExpireState with a small budget every hour, as the Kafka runtime does on
// its ticks. The ids are never read again. The live-state gauge must
// follow a model (the ids written in the last 24h) and level off, and the
// changelog must get a tombstone for every expired id.
func TestExpireStateLevelsOff(t *testing.T) {
	const ttl, perHour = 24 * time.Hour, 100
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	b := pipeline.NewBuilder("dedupe")
	src := pipeline.AddSource(b, "ids", pipeline.SourceSpec[string]{Decode: decodeString})
	pipeline.Discard(pipeline.AddOperator(src, "dedupe", pipeline.OperatorSpec{What: "process", Stateful: true},
		func() pipeline.Operator[string, string] { return &dedupeOp{ttl: ttl} }))
	plan, err := b.Plan()
	if err != nil {
		t.Fatal(err)
	}
	st, err := state.Open(state.Options{FS: vfs.NewMem(), Dir: "s", Now: clock, MaxCachedEntries: 500})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	reg := prometheus.NewRegistry()
	task, err := pipeline.NewTask(pipeline.TaskConfig{Plan: plan, Subtopology: -1, Store: st, Output: nullOutput{}, Now: clock, Metrics: pipeline.NewMetrics(reg)})
	if err != nil {
		t.Fatal(err)
	}
	defer task.Close()
	in, err := pipeline.InputOf[string](task, "ids")
	if err != nil {
		t.Fatal(err)
	}
	log := pipeline.ChangelogTopic("dedupe", "dedupe")
	tombs, offset := 0, int64(0)
	checkpoint := func() {
		t.Helper()
		if err := task.Checkpoint(func(m state.Mutation) error {
			offset++
			if m.Log == log && m.Value == nil {
				tombs++
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if err := task.Commit(map[string]int64{log: offset}); err != nil {
			t.Fatal(err)
		}
	}
	written := map[string]time.Time{} // the model
	liveNow := func() int {
		n := 0
		for _, at := range written {
			if at.Add(ttl).After(now) {
				n++
			}
		}
		return n
	}
	var gauge, model []float64 // at the end of each day
	for hour := 0; hour < 96; hour++ {
		for i := 0; i < perHour; i++ {
			id := fmt.Sprintf("app-%d-%d", hour, i)
			if err := in.Push(0, id, now.UnixMilli()); err != nil {
				t.Fatal(err)
			}
			written[id] = now
		}
		checkpoint()
		now = now.Add(time.Hour)
		for tick := 0; tick < 20; tick++ { // 20 ticks of budget 200 per hour
			if _, err := task.ExpireState(200); err != nil {
				t.Fatal(err)
			}
			if task.NeedsCheckpoint() {
				checkpoint()
			}
		}
		checkpoint()
		if hour%24 == 23 {
			task.PublishMetrics()
			gauge = append(gauge, liveGauge(t, reg, "dedupe"))
			model = append(model, float64(liveNow()))
		}
	}
	// Two full passes: the first deletes what expired since the last
	// one, the second counts what the checkpoint left.
	for passes := 0; passes < 2; {
		res, err := task.ExpireState(0)
		if err != nil {
			t.Fatal(err)
		}
		if res.PassDone {
			passes++
			checkpoint()
		}
	}
	task.PublishMetrics()
	want := liveNow()
	if got := liveGauge(t, reg, "dedupe"); got != float64(want) {
		t.Errorf("state_live_entries = %v, want %d (ids written in the last %s)", got, want, ttl)
	}
	if expired := len(written) - want; tombs != expired {
		t.Errorf("changelog got %d tombstones, want one per expired id: %d", tombs, expired)
	}
	// Levelling off: every day ends with about a day of ids live (the
	// census lags by at most the hour of sweeping since the last pass).
	t.Logf("live entries at the end of each day: %v (model %v)", gauge, model)
	for i, g := range gauge {
		if g < model[i] || g > model[i]+perHour {
			t.Errorf("day %d ends with %v live entries, want %v (+%d): the state does not level off", i+1, g, model[i], perHour)
		}
	}
}

// liveGauge reads loanflow_engine_state_live_entries of an operator.
func liveGauge(t *testing.T, reg *prometheus.Registry, op string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "loanflow_engine_state_live_entries" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "operator" && l.GetValue() == op {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	return -1
}

// TestRestoringEmitsNothing replays a source-backed table's topic with
// SetRestoring(true): a CDC heartbeat whose Decode fails and a row. Replay
// must produce no dead letter and no output (the first run produced them).
func TestRestoringEmitsNothing(t *testing.T) {
	b := pipeline.NewBuilder("replay")
	src := pipeline.AddSource(b, "table", pipeline.SourceSpec[string]{
		Topic: "table",
		Decode: func(raw *pipeline.RawRecord) (string, error) {
			if raw.Value == nil {
				return "", errors.New("not a row")
			}
			return string(raw.Value), nil
		},
		Heartbeat: func(raw *pipeline.RawRecord) (int64, bool) {
			if _, ok := raw.Header("hb"); ok {
				return raw.Timestamp, true
			}
			return 0, false
		},
	})
	pipeline.ToTopic(src, "out", pipeline.TopicSinkSpec[string]{Topic: "out", Codec: pipeline.StringCodec()})
	l, err := pipeline.NewLocal(b, pipeline.LocalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	task := l.Task()
	row := pipeline.RawRecord{Topic: "table", Offset: 0, Value: []byte("row"), Timestamp: 1000}
	hb := pipeline.RawRecord{Topic: "table", Offset: 1, Timestamp: 2000, Headers: []pipeline.Header{{Key: "hb"}}}
	task.SetRestoring(true)
	for _, r := range []pipeline.RawRecord{row, hb} {
		if err := task.FeedRaw(&r); err != nil {
			t.Fatal(err)
		}
	}
	task.SetRestoring(false)
	if dls, outs := l.DeadLetters(), l.Emitted("out"); len(dls) != 0 || len(outs) != 0 {
		t.Fatalf("replay produced %d dead letters and %d records, want none", len(dls), len(outs))
	}
	// Not restoring, the heartbeat only moves time and a bad record is
	// dead-lettered with its source: the test sees dead letters.
	bad := pipeline.RawRecord{Topic: "table", Offset: 2, Timestamp: 3000}
	for _, r := range []pipeline.RawRecord{hb, bad} {
		if err := task.FeedRaw(&r); err != nil {
			t.Fatal(err)
		}
	}
	if dls := l.DeadLetters(); len(dls) != 1 || dls[0].Source == nil || dls[0].Source.Offset != 2 {
		t.Fatalf("dead letters after replay %+v, want one for offset 2", dls)
	}
}
