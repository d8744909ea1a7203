package enginebench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/loanflow/loanflow/operators"
	"github.com/loanflow/loanflow/pipeline"
)

type varint struct{}

func (varint) Encode(dst []byte, v int64) ([]byte, error) { return binary.AppendVarint(dst, v), nil }
func (varint) Decode(src []byte) (int64, error) {
	v, n := binary.Varint(src)
	if n <= 0 {
		return 0, errors.New("bad varint")
	}
	return v, nil
}

func decodeInt(raw *pipeline.RawRecord) (int64, error) { return varint{}.Decode(raw.Value) }

func rate(n int, d time.Duration) float64 { return float64(n) / d.Seconds() }

// The stateless chain's functions, shared by engine and baseline.
func inc(v int64) (int64, error)   { return v + 1, nil }
func keep(v int64) bool            { return v&3 != 0 }
func key(v int64) int64            { return v & 1023 }
func scale(v int64) (int64, error) { return v * 3, nil }

// StatelessChain runs map → filter → keyBy → map in memory on one core,
// beside the same four functions called in a plain loop.
func StatelessChain(n int) (Result, error) {
	b := pipeline.NewBuilder("bench-chain")
	src := pipeline.AddSource(b, "src", pipeline.SourceSpec[int64]{Decode: decodeInt})
	k := pipeline.KeyBy(operators.Filter(operators.Map(src, "inc", inc), "keep", keep), "key", key)
	pipeline.Discard(operators.Map(k.Stream, "scale", scale))
	l, err := pipeline.NewLocal(b, pipeline.LocalOptions{})
	if err != nil {
		return Result{}, err
	}
	defer l.Close()
	in, err := pipeline.InputOf[int64](l.Task(), "src")
	if err != nil {
		return Result{}, err
	}
	start := time.Now()
	for i := 0; i < n; i++ {
		if err := in.Push(0, int64(i), int64(i)); err != nil {
			return Result{}, err
		}
	}
	engine := rate(n, time.Since(start))

	var sink int64
	start = time.Now()
	for i := 0; i < n; i++ {
		v, _ := inc(int64(i))
		if !keep(v) {
			continue
		}
		ks := strconv.FormatInt(key(v), 10)
		out, _ := scale(v)
		sink += out + int64(len(ks))
	}
	base := rate(n, time.Since(start))
	_ = sink
	return Result{Name: "stateless chain (map → filter → keyBy → map), in memory", Value: engine, Unit: "records/s",
		Baseline: base, BaselineName: "plain loop", Ratio: engine / base,
		Goal: "≥ 5M records/s per core", Met: engine >= 5e6}, nil
}

// WindowCount counts records per key in 10s tumbling windows over 100k
// keys with Pebble state on disk (checkpointing every 1M records), beside a
// Go map doing the same counting and firing.
func WindowCount(n int, dir string) (Result, error) {
	const keys = 100_000
	b := pipeline.NewBuilder("bench-window")
	src := pipeline.AddSource(b, "src", pipeline.SourceSpec[int64]{Decode: decodeInt})
	k := pipeline.KeyBy(src, "key", func(v int64) int64 { return v % keys })
	res := operators.Aggregate(k, "count", operators.WindowOptions[int64]{Assigner: operators.Tumbling(10 * time.Second)},
		operators.AggregateFunc[int64, int64, int64]{
			Init:   func() int64 { return 0 },
			Add:    func(a, _ int64) int64 { return a + 1 },
			Merge:  func(a, c int64) int64 { return a + c },
			Result: func(a int64) int64 { return a },
		}, varint{})
	var fired atomic.Int64
	pipeline.AddSink(res, "count-out", pipeline.SinkSpec{}, func() pipeline.Sink[operators.Windowed[int64, int64]] {
		return countSink[operators.Windowed[int64, int64]]{&fired}
	})
	l, err := pipeline.NewLocal(b, pipeline.LocalOptions{FS: vfs.Default, Dir: dir, DiscardChangelog: true})
	if err != nil {
		return Result{}, err
	}
	defer l.Close()
	in, err := pipeline.InputOf[int64](l.Task(), "src")
	if err != nil {
		return Result{}, err
	}
	start := time.Now()
	for i := 0; i < n; i++ {
		if err := in.Push(0, int64(i), int64(i/100)); err != nil {
			return Result{}, err
		}
		if i%1_000_000 == 999_999 || l.Task().NeedsCheckpoint() {
			if err := l.Checkpoint(); err != nil {
				return Result{}, err
			}
		}
	}
	engine := rate(n, time.Since(start))

	type wk struct{ key, win int64 }
	counts := make(map[wk]int64)
	var out int64
	nextFire := int64(10_000)
	start = time.Now()
	for i := 0; i < n; i++ {
		ts := int64(i / 100)
		counts[wk{int64(i) % keys, ts / 10_000}]++
		if ts-1 >= nextFire {
			for w, c := range counts {
				if (w.win+1)*10_000 <= nextFire {
					out += c
					delete(counts, w)
				}
			}
			nextFire += 10_000
		}
	}
	base := rate(n, time.Since(start))
	return Result{Name: "keyed tumbling-window count, 100k keys, Pebble state", Value: engine, Unit: "records/s",
		Baseline: base, BaselineName: "Go map", Ratio: engine / base, Goal: "≥ 1M records/s", Met: engine >= 1e6,
		Note: fmt.Sprintf("%d records, %d window results, checkpoints every 1M records or when the write cache fills", n, fired.Load())}, nil
}

type countSink[T any] struct{ n *atomic.Int64 }

func (s countSink[T]) Open(*pipeline.Context) error   { return nil }
func (s countSink[T]) Write(pipeline.Record[T]) error { s.n.Add(1); return nil }
func (s countSink[T]) Close() error                   { return nil }

type row struct {
	Key   string
	Limit int64
}

type rowCodec struct{}

func (rowCodec) Encode(dst []byte, r row) ([]byte, error) {
	dst = binary.AppendUvarint(dst, uint64(len(r.Key)))
	dst = append(dst, r.Key...)
	return binary.AppendVarint(dst, r.Limit), nil
}

func (rowCodec) Decode(src []byte) (row, error) {
	n, k := binary.Uvarint(src)
	if k <= 0 || n > uint64(len(src)-k) {
		return row{}, errors.New("bad row")
	}
	r := row{Key: string(src[k : k+int(n)])}
	v, m := binary.Varint(src[k+int(n):])
	if m <= 0 {
		return row{}, errors.New("bad row")
	}
	r.Limit = v
	return r, nil
}

func joinRow(p row, r *operators.Versioned[row]) (int64, error) {
	if r == nil {
		return 0, nil
	}
	return r.Value.Limit - p.Limit, nil
}

// TemporalJoin answers probes against a 1M-key versioned table (loaded
// first, not timed), beside a Go map lookup of each key's row.
func TemporalJoin(probes int, dir string) (Result, error) {
	const tableKeys = 1_000_000
	keys := make([]string, tableKeys)
	for i := range keys {
		keys[i] = "c" + strconv.Itoa(i)
	}
	b := pipeline.NewBuilder("bench-join")
	p := pipeline.KeyBy(pipeline.AddSource(b, "probes", pipeline.SourceSpec[row]{Decode: func(*pipeline.RawRecord) (row, error) { return row{}, nil }}),
		"probe-key", func(r row) string { return r.Key }, pipeline.NoRepartition())
	t := pipeline.KeyBy(pipeline.AddSource(b, "table", pipeline.SourceSpec[row]{Decode: func(*pipeline.RawRecord) (row, error) { return row{}, nil }}),
		"table-key", func(r row) string { return r.Key }, pipeline.NoRepartition())
	var answered atomic.Int64
	j := operators.TemporalJoin(p, t, "join", operators.TemporalJoinSpec[row, row, int64]{
		Join: joinRow, Retention: 365 * 24 * time.Hour, ProbeCodec: rowCodec{}, TableCodec: rowCodec{},
	})
	pipeline.AddSink(j, "join-out", pipeline.SinkSpec{}, func() pipeline.Sink[int64] { return countSink[int64]{&answered} })
	l, err := pipeline.NewLocal(b, pipeline.LocalOptions{FS: vfs.Default, Dir: dir, DiscardChangelog: true, MaxCachedEntries: 2 * tableKeys})
	if err != nil {
		return Result{}, err
	}
	defer l.Close()
	tin, _ := pipeline.InputOf[row](l.Task(), "table")
	pin, _ := pipeline.InputOf[row](l.Task(), "probes")
	for i, k := range keys {
		if err := tin.Push(0, row{Key: k, Limit: int64(i)}, 1000); err != nil {
			return Result{}, err
		}
	}
	// A far-future change puts the table watermark past every probe.
	if err := tin.Push(0, row{Key: "end", Limit: 0}, 1_000_000_000); err != nil {
		return Result{}, err
	}
	if err := l.Checkpoint(); err != nil {
		return Result{}, err
	}
	start := time.Now()
	for i := 0; i < probes; i++ {
		k := keys[(i*7919)%tableKeys]
		// Event times advance 1ms per 1,000 probes, as at 1M probes/s.
		if err := pin.Push(0, row{Key: k, Limit: 1}, 500_000_000+int64(i/1000)); err != nil {
			return Result{}, err
		}
	}
	engine := rate(probes, time.Since(start))
	if got := answered.Load(); got != int64(probes) {
		return Result{}, fmt.Errorf("join answered %d of %d probes", got, probes)
	}

	table := make(map[string]*operators.Versioned[row], tableKeys)
	for i, k := range keys {
		table[k] = &operators.Versioned[row]{Value: row{Key: k, Limit: int64(i)}, ValidFrom: 1000}
	}
	var sum int64
	start = time.Now()
	for i := 0; i < probes; i++ {
		k := keys[(i*7919)%tableKeys]
		v, _ := joinRow(row{Key: k, Limit: 1}, table[k])
		sum += v
	}
	base := rate(probes, time.Since(start))
	_ = sum
	return Result{Name: "temporal join against a 1M-key versioned table", Value: engine, Unit: "probes/s",
		Baseline: base, BaselineName: "Go map lookup", Ratio: engine / base, Goal: "≥ 1M probes/s", Met: engine >= 1e6}, nil
}

// AsyncEfficiency runs async I/O at 10,000 calls in flight against a 500ms
// simulated call and reports achieved throughput ÷ (capacity ÷ latency),
// beside a synchronous pool of 10 workers.
func AsyncEfficiency(window time.Duration) (Result, error) {
	const capacity, latency = 10_000, 500 * time.Millisecond
	b := pipeline.NewBuilder("bench-async")
	src := pipeline.AddSource(b, "src", pipeline.SourceSpec[int64]{Decode: decodeInt})
	out := operators.Async(src, "call", operators.AsyncSpec[int64, int64]{
		Call: func(ctx context.Context, v int64) (int64, error) {
			select {
			case <-time.After(latency):
				return v, nil
			case <-ctx.Done():
				return 0, ctx.Err()
			}
		},
		Capacity: capacity, Timeout: 10 * time.Second, InCodec: varint{},
	})
	var done atomic.Int64
	pipeline.AddSink(out, "out", pipeline.SinkSpec{}, func() pipeline.Sink[int64] { return countSink[int64]{&done} })
	l, err := pipeline.NewLocal(b, pipeline.LocalOptions{})
	if err != nil {
		return Result{}, err
	}
	defer l.Close()
	in, _ := pipeline.InputOf[int64](l.Task(), "src")
	warmup := latency * 2
	start := time.Now()
	var atStart int64
	measuring := false
	for i := int64(0); time.Since(start) < warmup+window; i++ {
		if err := in.Push(0, i, i); err != nil { // blocks on capacity, draining completions
			return Result{}, err
		}
		if !measuring && time.Since(start) >= warmup {
			if err := l.Drain(); err != nil {
				return Result{}, err
			}
			measuring, atStart = true, done.Load()
		}
	}
	if err := l.Drain(); err != nil {
		return Result{}, err
	}
	achieved := float64(done.Load()-atStart) / window.Seconds()
	ideal := float64(capacity) / latency.Seconds()

	// Baseline: 10 workers blocking on the same call.
	var syncDone atomic.Int64
	var wg sync.WaitGroup
	stop := time.Now().Add(3 * time.Second)
	for w := 0; w < 10; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				time.Sleep(latency)
				syncDone.Add(1)
			}
		}()
	}
	wg.Wait()
	syncRate := float64(syncDone.Load()) / 3
	eff := achieved / ideal
	return Result{Name: "async I/O, 500ms calls, 10,000 in flight", Value: achieved, Unit: "calls/s",
		Baseline: syncRate, BaselineName: "10 synchronous workers", Ratio: eff,
		Goal: "throughput ÷ (capacity ÷ latency) ≥ 0.9", Met: eff >= 0.9,
		Note: fmt.Sprintf("ideal %.0f calls/s; ratio column is efficiency (achieved ÷ ideal); %.0fx the synchronous pool", ideal, achieved/syncRate)}, nil
}
