package operators_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"testing"
	"time"

	"github.com/loanflow/loanflow/operators"
	"github.com/loanflow/loanflow/pipeline"
)

const endKey = "__end" // records that only move the watermark

type windowRun struct {
	l    *pipeline.Local
	out  pipeline.Collected[operators.Windowed[string, sumAcc]]
	late pipeline.Collected[event]
}

// runWindow feeds recs (in order, with their times) through source →
// filter(endKey) → keyBy → sum window, then a record that moves the
// watermark past every window and its lateness, and checkpoints.
func runWindow(t *testing.T, a operators.Assigner, ooo, lateness time.Duration, recs []timed) *windowRun {
	t.Helper()
	b := pipeline.NewBuilder("windows")
	src := pipeline.AddSource(b, "events", pipeline.SourceSpec[event]{
		Decode:     func(*pipeline.RawRecord) (event, error) { return event{}, nil },
		Watermarks: pipeline.WatermarkStrategy{MaxOutOfOrderness: ooo},
	})
	data := operators.Filter(src, "data", func(e event) bool { return e.Key != endKey })
	keyed := pipeline.KeyBy(data, "by-key", func(e event) string { return e.Key })
	lateTag := pipeline.NewOutputTag[event]("late")
	res := operators.Aggregate(keyed, "sum", operators.WindowOptions[event]{Assigner: a, AllowedLateness: lateness, Late: &lateTag},
		operators.AggregateFunc[event, sumAcc, sumAcc]{
			Init:   func() sumAcc { return sumAcc{} },
			Add:    func(s sumAcc, e event) sumAcc { return sumAcc{s.Sum + e.V, s.N + 1} },
			Merge:  func(x, y sumAcc) sumAcc { return sumAcc{x.Sum + y.Sum, x.N + y.N} },
			Result: func(s sumAcc) sumAcc { return s },
		}, pipeline.JSONCodec[sumAcc]())
	r := &windowRun{}
	pipeline.CollectTo(res, "results", &r.out)
	pipeline.CollectTo(pipeline.Side(res, lateTag), "late", &r.late)
	l, err := pipeline.NewLocal(b, pipeline.LocalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	r.l = l
	last := int64(math.MinInt64)
	for _, rec := range recs {
		if err := pipeline.Feed(l, "events", 0, rec.e, rec.ts); err != nil {
			t.Fatal(err)
		}
		last = max(last, rec.ts)
	}
	end := last + (time.Hour + ooo + lateness).Milliseconds()
	if err := pipeline.Feed(l, "events", 0, event{Key: endKey}, end); err != nil {
		t.Fatal(err)
	}
	if err := l.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	return r
}

type timed struct {
	e  event
	ts int64
}

type winKey struct {
	key        string
	start, end int64
}

// finals is the last result emitted per window.
func (r *windowRun) finals() map[winKey]sumAcc {
	got := map[winKey]sumAcc{}
	for _, rec := range r.out.Records() {
		w := rec.Value
		got[winKey{w.Key, w.Window.Start, w.Window.End}] = w.Value
	}
	return got
}

// checkStateEmpty runs a full sweep pass and checks that the window
// operator keeps no state: every window was cleaned up.
func (r *windowRun) checkStateEmpty(t *testing.T) {
	t.Helper()
	for {
		res, err := r.l.Task().ExpireState(0)
		if err != nil {
			t.Fatal(err)
		}
		if res.PassDone {
			break
		}
	}
	census, _ := r.l.Task().Store().Census()
	for _, c := range census {
		if c.Operator == "sum" && c.Entries > 0 {
			t.Errorf("after the watermark passed every window and its lateness, state %s/%s keeps %d entries", c.Operator, c.Name, c.Entries)
		}
	}
}

func compareFinals(t *testing.T, got, want map[winKey]sumAcc) {
	t.Helper()
	bad := 0
	for k, w := range want {
		if g, ok := got[k]; !ok || g != w {
			if bad++; bad <= 5 {
				t.Errorf("window %v: last result %+v (emitted %v), model %+v", k, g, ok, w)
			}
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			if bad++; bad <= 5 {
				t.Errorf("window %v: emitted %+v, the model has no such window", k, g)
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d windows differ from the model", bad, len(want))
	}
}

// disordered is a deterministic stream over 20 keys, 10ms apart, with
// records delayed by up to 3s (20%) and up to 12s (3%).
func disordered(n int) []timed {
	rng := rand.New(rand.NewPCG(1, 2))
	recs := make([]timed, n)
	for i := range recs {
		ts := int64(100_000 + i*10)
		switch p := rng.IntN(100); {
		case p < 3:
			ts -= rng.Int64N(12_000)
		case p < 23:
			ts -= rng.Int64N(3_000)
		}
		recs[i] = timed{event{Key: fmt.Sprint("k", rng.IntN(20)), V: int64(1 + rng.IntN(9))}, ts}
	}
	return recs
}

// windowsOf is the model of tumbling and sliding windows.
func windowsOf(ts, size, slide int64) [][2]int64 {
	var out [][2]int64
	first := ts - ((ts%slide)+slide)%slide
	for start := first; start > ts-size; start -= slide {
		out = append(out, [2]int64{start, start + size})
	}
	return out
}

// TestLateCreatedWindowsAreCleanedUp runs tumbling and sliding windows with
// allowed lateness over a disordered stream. The model: a record joins
// each of its windows whose end-1+lateness is past the watermark before it
// (the largest earlier time minus the out-of-orderness, minus 1); a record
// that joins none is late. Every window's last result is the sum of what
// joined it, and once the watermark passed every window and its lateness
// the operator keeps no state, windows first created by a late record
// included.
func TestLateCreatedWindowsAreCleanedUp(t *testing.T) {
	const ooo, lateness = 500, 2000
	for _, tc := range []struct {
		name        string
		a           operators.Assigner
		size, slide int64
	}{
		{"tumbling", operators.Tumbling(time.Second), 1000, 1000},
		{"sliding", operators.Sliding(2*time.Second, 500*time.Millisecond), 2000, 500},
	} {
		t.Run(tc.name, func(t *testing.T) {
			recs := disordered(3000)
			want := map[winKey]sumAcc{}
			wantLate, lateCreated := 0, 0
			maxTs := int64(math.MinInt64)
			for _, r := range recs {
				wm := int64(math.MinInt64)
				if maxTs != math.MinInt64 {
					wm = maxTs - ooo - 1
				}
				joined := false
				for _, w := range windowsOf(r.ts, tc.size, tc.slide) {
					if w[1]-1+lateness <= wm {
						continue
					}
					joined = true
					k := winKey{r.e.Key, w[0], w[1]}
					s, seen := want[k]
					if !seen && w[1]-1 <= wm {
						lateCreated++
					}
					want[k] = sumAcc{s.Sum + r.e.V, s.N + 1}
				}
				if !joined {
					wantLate++
				}
				maxTs = max(maxTs, r.ts)
			}
			if lateCreated == 0 || wantLate == 0 {
				t.Fatalf("the input has %d windows created by late records and %d late records; the test needs both", lateCreated, wantLate)
			}
			run := runWindow(t, tc.a, ooo*time.Millisecond, lateness*time.Millisecond, recs)
			compareFinals(t, run.finals(), want)
			if got := len(run.late.Records()); got != wantLate {
				t.Errorf("%d records on the late output, model %d", got, wantLate)
			}
			t.Logf("%d windows (%d created by late records), %d late records", len(want), lateCreated, wantLate)
			run.checkStateEmpty(t)
		})
	}
}

// TestSessionLatenessAfterMerge: session windows (gap 1s, no allowed
// lateness) over five keys that each send a record every 100ms for 6s,
// sessions 60s apart. Every 7th record is delivered 70 records (1.4s)
// late: its own window [t, t+1s) is behind the watermark, but it falls
// inside its key's open session, which has not fired, so it must merge
// into it, as in Flink. Records of a key that has no open session and are
// behind the watermark are late. The model: one session per key and burst
// holding all its records; the stale records on the late output.
func TestSessionLatenessAfterMerge(t *testing.T) {
	const keys, perBurst, bursts = 5, 60, 4
	var inOrder []timed
	for b := 0; b < bursts; b++ {
		for j := 0; j < perBurst; j++ {
			for k := 0; k < keys; k++ {
				ts := int64(b*60_000 + j*100 + k*7)
				inOrder = append(inOrder, timed{event{Key: fmt.Sprint("k", k), V: int64(j + 1)}, ts})
			}
		}
	}
	// Deliver every 7th record 70 positions later, within its burst.
	var recs []timed
	delayed := map[int][]timed{}
	perB := keys * perBurst
	for i, r := range inOrder {
		if i%7 == 3 && i%perB < perB-100 {
			delayed[i+70] = append(delayed[i+70], r)
		} else {
			recs = append(recs, r)
		}
		recs = append(recs, delayed[i]...)
	}
	// Stale records of a key without an open session: late.
	stale := []timed{{event{Key: "stale", V: 1000}, 30_000}, {event{Key: "stale", V: 1000}, 150_000}}
	recs = append(recs[:len(recs)/2], append(stale[:1], recs[len(recs)/2:]...)...)
	recs = append(recs, stale[1])

	want := map[winKey]sumAcc{}
	for _, r := range inOrder {
		b := r.ts / 60_000
		lastTs := b*60_000 + (perBurst-1)*100 + int64(r.e.Key[1]-'0')*7
		k := winKey{r.e.Key, b*60_000 + int64(r.e.Key[1]-'0')*7, lastTs + 1000}
		s := want[k]
		want[k] = sumAcc{s.Sum + r.e.V, s.N + 1}
	}
	run := runWindow(t, operators.Session(time.Second), 100*time.Millisecond, 0, recs)
	compareFinals(t, run.finals(), want)
	var late []string
	for _, r := range run.late.Records() {
		late = append(late, fmt.Sprintf("%s@%d", r.Value.Key, r.Time))
	}
	sort.Strings(late)
	if fmt.Sprint(late) != "[stale@150000 stale@30000]" {
		t.Errorf("late output %d records %v, want only the two stale ones", len(late), late[:min(len(late), 6)])
	}
	run.checkStateEmpty(t)
}
