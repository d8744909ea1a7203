package operators_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"
	"github.com/loanflow/loanflow/operators"
	"github.com/loanflow/loanflow/pipeline"
)

// The semantics tests are scripts in testdata/semantics. A script starts a
// job (window, join or async) and then feeds records, moves processing
// time, checkpoints and restarts; after each command the test prints what
// the job emitted, one record per line, with its event time after '@'.
//
// Input lines are "<key> <value> @<event time>" (times as Go durations
// since the epoch, e.g. @1.5s); "p=<n>" selects a source partition.

type event struct {
	Key string
	V   int64
}

func TestSemantics(t *testing.T) {
	datadriven.Walk(t, "testdata/semantics", func(t *testing.T, path string) {
		var h *harness
		defer func() {
			if h != nil {
				h.l.Close()
			}
		}()
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			switch d.Cmd {
			case "window", "join", "async":
				if h != nil {
					h.l.Close()
				}
				h = newHarness(t, d)
				return h.flush()
			}
			if h == nil {
				t.Fatalf("%s: start a job first", d.Pos)
			}
			return h.run(t, d)
		})
	})
}

type harness struct {
	l       *pipeline.Local
	out     pipeline.Collected[string]
	printed int
	bureau  *bureau
}

func (h *harness) run(t *testing.T, d *datadriven.TestData) string {
	var err error
	switch d.Cmd {
	case "feed":
		source := "events"
		d.MaybeScanArgs(t, "source", &source)
		err = h.feed(source, d.Input)
	case "advance":
		var s string
		d.ScanArgs(t, "by", &s)
		err = h.l.Advance(mustDuration(t, s))
	case "checkpoint":
		err = h.l.Checkpoint()
	case "restart":
		err = h.l.Restart()
	case "complete", "fail":
		var key string
		d.ScanArgs(t, "key", &key)
		v := int64(0)
		d.MaybeScanArgs(t, "value", &v)
		var ferr error
		if d.Cmd == "fail" {
			ferr = errors.New("bureau unavailable")
		}
		before := h.l.Task().InFlight()
		h.bureau.release(key, v, ferr)
		err = h.awaitInFlight(t, before-1)
	case "flaky":
		var key string
		var fails int
		d.ScanArgs(t, "key", &key)
		d.ScanArgs(t, "fails", &fails)
		h.bureau.flaky(key, fails)
	case "await":
		n := 1
		d.MaybeScanArgs(t, "outputs", &n)
		err = h.await(t, n)
	case "watermark":
		w, ok := h.out.Watermark()
		switch {
		case !ok:
			return "no watermark\n"
		case w.Idle:
			return fmt.Sprintf("idle (at %s)\n", fmtMs(w.Time))
		}
		return fmtMs(w.Time) + "\n"
	case "dead-letters":
		var lines []string
		for _, dl := range h.l.DeadLetters() {
			lines = append(lines, fmt.Sprintf("%s: %v", dl.Operator, dl.Err))
		}
		return strings.Join(lines, "\n") + "\n"
	default:
		t.Fatalf("%s: unknown command %q", d.Pos, d.Cmd)
	}
	if err != nil {
		return "error: " + err.Error() + "\n"
	}
	return h.flush()
}

// await runs async completions until n more outputs appeared.
func (h *harness) await(t *testing.T, n int) error {
	want := h.printed + n
	deadline := time.Now().Add(10 * time.Second)
	for len(h.out.Records()) < want {
		if time.Now().After(deadline) {
			t.Fatalf("waited 10s for %d outputs, have %d", n, len(h.out.Records())-h.printed)
		}
		if _, err := h.l.AwaitWork(50 * time.Millisecond); err != nil {
			return err
		}
	}
	return nil
}

// awaitInFlight runs async completions until n calls are in flight.
func (h *harness) awaitInFlight(t *testing.T, n int) error {
	deadline := time.Now().Add(10 * time.Second)
	for h.l.Task().InFlight() > n {
		if time.Now().After(deadline) {
			t.Fatalf("waited 10s for the async call to complete")
		}
		if _, err := h.l.AwaitWork(50 * time.Millisecond); err != nil {
			return err
		}
	}
	return nil
}

func (h *harness) feed(source, input string) error {
	for _, line := range strings.Split(strings.TrimSpace(input), "\n") {
		f := strings.Fields(line)
		part := int32(0)
		if len(f) > 0 && strings.HasPrefix(f[0], "p=") {
			p, err := strconv.Atoi(f[0][2:])
			if err != nil {
				return err
			}
			part, f = int32(p), f[1:]
		}
		if len(f) != 3 || !strings.HasPrefix(f[2], "@") {
			return fmt.Errorf("bad input line %q: want [p=N] key value @time", line)
		}
		v, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			return err
		}
		ts, err := time.ParseDuration(f[2][1:])
		if err != nil {
			return err
		}
		if err := pipeline.Feed(h.l, source, part, event{Key: f[0], V: v}, ts.Milliseconds()); err != nil {
			return err
		}
	}
	return nil
}

func (h *harness) flush() string {
	recs := h.out.Records()
	var sb strings.Builder
	for _, r := range recs[h.printed:] {
		fmt.Fprintf(&sb, "%s @%s\n", r.Value, fmtMs(r.Time))
	}
	h.printed = len(recs)
	if sb.Len() == 0 {
		return "(nothing)\n"
	}
	return sb.String()
}

func fmtMs(ms int64) string { return (time.Duration(ms) * time.Millisecond).String() }

func mustDuration(t *testing.T, s string) time.Duration {
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func newHarness(t *testing.T, d *datadriven.TestData) *harness {
	h := &harness{}
	b := pipeline.NewBuilder("semantics")
	var outs []pipeline.Stream[string]
	switch d.Cmd {
	case "window":
		outs = windowJob(t, d, b)
	case "join":
		outs = joinJob(t, d, b)
	case "async":
		h.bureau = newBureau()
		outs = asyncJob(t, d, b, h.bureau)
	}
	all := outs[0]
	if len(outs) > 1 {
		all = pipeline.Union("all", outs[0], outs[1:]...)
	}
	pipeline.CollectTo(all, "collect", &h.out)
	l, err := pipeline.NewLocal(b, pipeline.LocalOptions{Start: time.Unix(0, 0)})
	if err != nil {
		t.Fatalf("%s: %v", d.Pos, err)
	}
	h.l = l
	return h
}

func durArg(t *testing.T, d *datadriven.TestData, key string) time.Duration {
	var s string
	if !d.MaybeScanArgs(t, key, &s) {
		return 0
	}
	return mustDuration(t, s)
}

func source(t *testing.T, d *datadriven.TestData, b *pipeline.Builder, name string) pipeline.Stream[event] {
	parts := 1
	d.MaybeScanArgs(t, "partitions", &parts)
	return pipeline.AddSource(b, name, pipeline.SourceSpec[event]{
		Partitions: int32(parts),
		Decode:     func(raw *pipeline.RawRecord) (event, error) { return pipeline.JSONCodec[event]().Decode(raw.Value) },
		Watermarks: pipeline.WatermarkStrategy{MaxOutOfOrderness: durArg(t, d, "ooo"), IdleTimeout: durArg(t, d, "idle")},
	})
}

type sumAcc struct{ Sum, N int64 }

func windowJob(t *testing.T, d *datadriven.TestData, b *pipeline.Builder) []pipeline.Stream[string] {
	src := source(t, d, b, "events")
	keyed := pipeline.KeyBy(src, "by-key", func(e event) string { return e.Key })
	var kind string
	d.ScanArgs(t, "kind", &kind)
	var assigner operators.Assigner
	switch kind {
	case "tumbling":
		assigner = operators.Tumbling(durArg(t, d, "size"))
	case "sliding":
		assigner = operators.Sliding(durArg(t, d, "size"), durArg(t, d, "slide"))
	case "session":
		assigner = operators.Session(durArg(t, d, "gap"))
	default:
		t.Fatalf("unknown window kind %q", kind)
	}
	lateTag := pipeline.NewOutputTag[event]("late")
	opts := operators.WindowOptions[event]{Assigner: assigner, AllowedLateness: durArg(t, d, "lateness")}
	if d.HasArg("late-side") {
		opts.Late = &lateTag
	}
	res := operators.Aggregate(keyed, "sum", opts, operators.AggregateFunc[event, sumAcc, sumAcc]{
		Init:   func() sumAcc { return sumAcc{} },
		Add:    func(a sumAcc, e event) sumAcc { return sumAcc{a.Sum + e.V, a.N + 1} },
		Merge:  func(a, c sumAcc) sumAcc { return sumAcc{a.Sum + c.Sum, a.N + c.N} },
		Result: func(a sumAcc) sumAcc { return a },
	}, pipeline.JSONCodec[sumAcc]())
	outs := []pipeline.Stream[string]{operators.Map(res, "fmt-window", func(w operators.Windowed[string, sumAcc]) (string, error) {
		upd := ""
		if w.Update > 0 {
			upd = fmt.Sprintf(" (update %d)", w.Update)
		}
		return fmt.Sprintf("window %s [%s,%s) sum=%d n=%d%s", w.Key, fmtMs(w.Window.Start), fmtMs(w.Window.End), w.Value.Sum, w.Value.N, upd), nil
	})}
	if opts.Late != nil {
		outs = append(outs, operators.Map(pipeline.Side(res, lateTag), "fmt-late", func(e event) (string, error) {
			return fmt.Sprintf("late %s %d", e.Key, e.V), nil
		}))
	}
	return outs
}

func joinJob(t *testing.T, d *datadriven.TestData, b *pipeline.Builder) []pipeline.Stream[string] {
	probes := pipeline.KeyBy(source(t, d, b, "probes"), "probe-key", func(e event) string { return e.Key }, pipeline.NoRepartition())
	table := pipeline.KeyBy(source(t, d, b, "table"), "table-key", func(e event) string { return e.Key }, pipeline.NoRepartition())
	rejected := pipeline.NewOutputTag[operators.Rejected[event]]("rejected")
	spec := operators.TemporalJoinSpec[event, event, string]{
		Join: func(p event, row *operators.Versioned[event]) (string, error) {
			if row == nil {
				return fmt.Sprintf("probe %s %d -> no row", p.Key, p.V), nil
			}
			return fmt.Sprintf("probe %s %d -> row %d (valid from %s)", p.Key, p.V, row.Value.V, fmtMs(row.ValidFrom)), nil
		},
		Deleted:    func(e event) bool { return e.V < 0 },
		Retention:  durArg(t, d, "retention"),
		ProbeCodec: pipeline.JSONCodec[event](),
		TableCodec: pipeline.JSONCodec[event](),
		Rejected:   &rejected,
		Lookup:     d.HasArg("lookup"),
	}
	joined := operators.TemporalJoin(probes, table, "join", spec)
	rej := operators.Map(pipeline.Side(joined, rejected), "fmt-rejected", func(r operators.Rejected[event]) (string, error) {
		return fmt.Sprintf("rejected %s %d: %s", r.Value.Key, r.Value.V, r.Reason), nil
	})
	return []pipeline.Stream[string]{joined, rej}
}

// bureau is a credit bureau whose answers the script releases by key.
type bureau struct {
	mu       sync.Mutex
	answers  map[string]chan answer
	failures map[string]int
	attempts map[string]int
}

type answer struct {
	v   int64
	err error
}

func newBureau() *bureau {
	return &bureau{answers: make(map[string]chan answer), failures: make(map[string]int), attempts: make(map[string]int)}
}

func (b *bureau) ch(key string) chan answer {
	b.mu.Lock()
	defer b.mu.Unlock()
	c, ok := b.answers[key]
	if !ok {
		c = make(chan answer, 1)
		b.answers[key] = c
	}
	return c
}

func (b *bureau) release(key string, v int64, err error) { b.ch(key) <- answer{v, err} }

func (b *bureau) flaky(key string, fails int) {
	b.mu.Lock()
	b.failures[key] = fails
	b.mu.Unlock()
}

func (b *bureau) call(ctx context.Context, e event) (int64, error) {
	b.mu.Lock()
	b.attempts[e.Key]++
	n := b.attempts[e.Key]
	fails, isFlaky := b.failures[e.Key]
	b.mu.Unlock()
	if isFlaky {
		if n <= fails {
			return 0, fmt.Errorf("flaky failure %d", n)
		}
		return int64(100 * n), nil
	}
	select {
	case a := <-b.ch(e.Key):
		return a.v, a.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

func asyncJob(t *testing.T, d *datadriven.TestData, b *pipeline.Builder, bu *bureau) []pipeline.Stream[string] {
	src := source(t, d, b, "events")
	var mode string
	d.ScanArgs(t, "mode", &mode)
	spec := operators.AsyncSpec[event, string]{
		Call: func(ctx context.Context, e event) (string, error) {
			v, err := bu.call(ctx, e)
			return fmt.Sprintf("scored %s %d score=%d", e.Key, e.V, v), err
		},
		Ordered: mode == "ordered",
		Timeout: durArg(t, d, "timeout"),
		InCodec: pipeline.JSONCodec[event](),
		Retry:   operators.RetryPolicy{InitialBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond},
	}
	d.MaybeScanArgs(t, "capacity", &spec.Capacity)
	d.MaybeScanArgs(t, "attempts", &spec.Retry.MaxAttempts)
	if d.HasArg("fallback") {
		spec.OnFailure = func(e event, err error) (string, bool) {
			return fmt.Sprintf("fallback %s %d: %v", e.Key, e.V, err), true
		}
	}
	return []pipeline.Stream[string]{operators.Async(src, "bureau", spec)}
}
