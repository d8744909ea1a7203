package operators_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/loanflow/loanflow/operators"
	"github.com/loanflow/loanflow/pipeline"
)

// TestJoinFiresInSlices: with FireSlice 1 the join answers the probes a
// table watermark passed one key per slice, the rest after a wake-up (in
// the Kafka runtime a checkpoint's barrier passes between slices, so one
// transaction need not hold a whole backlog's answers). New probes arrive
// while slices are pending, checkpoints and restarts fall between slices;
// every probe is answered exactly once with the table row valid at its
// time, computed by a plain model from the input.
func TestJoinFiresInSlices(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { joinSlices(t, seed) })
	}
}

func joinSlices(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 7))
	b := pipeline.NewBuilder("slices")
	src := func(name string) pipeline.KeyedStream[string, event] {
		s := pipeline.AddSource(b, name, pipeline.SourceSpec[event]{
			Partitions: 1,
			Decode:     func(raw *pipeline.RawRecord) (event, error) { return pipeline.JSONCodec[event]().Decode(raw.Value) },
		})
		return pipeline.KeyBy(s, name+"-key", func(e event) string { return e.Key }, pipeline.NoRepartition())
	}
	probes, table := src("probes"), src("table")
	joined := operators.TemporalJoin(probes, table, "join", operators.TemporalJoinSpec[event, event, string]{
		Join: func(p event, row *operators.Versioned[event]) (string, error) {
			if row == nil {
				return fmt.Sprintf("%s/%d none", p.Key, p.V), nil
			}
			return fmt.Sprintf("%s/%d %d", p.Key, p.V, row.Value.V), nil
		},
		Retention:  time.Hour,
		ProbeCodec: pipeline.JSONCodec[event](),
		TableCodec: pipeline.JSONCodec[event](),
	})
	var out pipeline.Collected[string]
	pipeline.CollectTo(joined, "out", &out)
	l, err := pipeline.NewLocal(b, pipeline.LocalOptions{Start: time.Unix(0, 0), FireSlice: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	type row struct{ t, v int64 }
	rows := map[string][]row{} // the model's table: every row fed, by key
	want := map[string]int{}
	var probesFed []struct {
		key  string
		t, v int64
	}
	keys := []string{"a", "b", "c", "d", "e", "f"}
	nextV := int64(0)
	feedProbe := func(tm int64) {
		k := keys[rng.IntN(len(keys))]
		nextV++
		probesFed = append(probesFed, struct {
			key  string
			t, v int64
		}{k, tm, nextV})
		if err := pipeline.Feed(l, "probes", 0, event{Key: k, V: nextV}, tm); err != nil {
			t.Fatal(err)
		}
	}
	// Probes ahead of the table: they wait.
	for range 40 {
		feedProbe(int64(rng.IntN(2000)))
	}
	// Table rows in time order; each moves the table watermark and releases
	// waiting probes in slices, among which the script feeds new probes,
	// runs a few slices, checkpoints, restarts.
	tm := int64(0)
	for range 60 {
		tm += int64(1 + rng.IntN(50))
		k := keys[rng.IntN(len(keys))]
		v := rng.Int64N(1000)
		rows[k] = append(rows[k], row{tm, v})
		if err := pipeline.Feed(l, "table", 0, event{Key: k, V: v}, tm); err != nil {
			t.Fatal(err)
		}
		for range rng.IntN(4) {
			switch rng.IntN(4) {
			case 0:
				feedProbe(max(tm-int64(rng.IntN(100)), 0)) // already passed
			case 1:
				feedProbe(tm + int64(rng.IntN(500))) // waits
			case 2:
				if err := l.Checkpoint(); err != nil {
					t.Fatal(err)
				}
				if rng.IntN(2) == 0 {
					if err := l.Restart(); err != nil {
						t.Fatal(err)
					}
				}
			default:
				if _, err := l.Continue(); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	// A row past every probe, then every slice to the end.
	if err := pipeline.Feed(l, "table", 0, event{Key: "zz", V: 0}, 1_000_000); err != nil {
		t.Fatal(err)
	}
	slicesRun := 0
	for {
		ran, err := l.Continue()
		if err != nil {
			t.Fatal(err)
		}
		if !ran {
			break
		}
		slicesRun++
	}
	if err := l.Checkpoint(); err != nil {
		t.Fatal(err)
	}

	// The model: each probe answered once, with its key's newest row at or
	// before its time.
	for _, p := range probesFed {
		ans := "none"
		for _, r := range rows[p.key] {
			if r.t <= p.t {
				ans = fmt.Sprint(r.v)
			}
		}
		want[fmt.Sprintf("%s/%d %s", p.key, p.v, ans)]++
	}
	got := map[string]int{}
	for _, r := range out.Records() {
		got[r.Value]++
	}
	var diff []string
	for k, n := range want {
		if got[k] != n {
			diff = append(diff, fmt.Sprintf("%s: got %d, want %d", k, got[k], n))
		}
	}
	for k, n := range got {
		if want[k] == 0 {
			diff = append(diff, fmt.Sprintf("%s: got %d, want 0", k, n))
		}
	}
	slices.Sort(diff)
	if len(diff) > 0 {
		t.Fatalf("%d probes, %d slices at the end; differences:\n%v", len(probesFed), slicesRun, diff)
	}
	if slicesRun == 0 {
		t.Fatal("the last watermark released everything at once: no slices")
	}
}
