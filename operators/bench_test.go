package operators_test

import (
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/loanflow/loanflow/operators"
	"github.com/loanflow/loanflow/pipeline"
)

// BenchmarkStatelessChain measures map → filter → keyBy → map in memory,
// one record per op, on one core.
func BenchmarkStatelessChain(b *testing.B) {
	bld := pipeline.NewBuilder("bench")
	src := pipeline.AddSource(bld, "src", pipeline.SourceSpec[int64]{Decode: decodeInt})
	m1 := operators.Map(src, "inc", func(v int64) (int64, error) { return v + 1, nil })
	f := operators.Filter(m1, "odd", func(v int64) bool { return v&1 == 1 || v&2 == 2 })
	k := pipeline.KeyBy(f, "key", func(v int64) int64 { return v & 1023 })
	m2 := operators.Map(k.Stream, "scale", func(v int64) (int64, error) { return v * 3, nil })
	pipeline.Discard(m2)
	l, err := pipeline.NewLocal(bld, pipeline.LocalOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	in, err := pipeline.InputOf[int64](l.Task(), "src")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := in.Push(0, int64(i), int64(i)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
}

type countAcc = int64

// BenchmarkWindowCount100kKeys: keyed tumbling-window count over 100k keys
// with Pebble state on disk, checkpointing every 1M records.
func BenchmarkWindowCount100kKeys(b *testing.B) {
	bld := pipeline.NewBuilder("bench")
	src := pipeline.AddSource(bld, "src", pipeline.SourceSpec[int64]{Decode: decodeInt})
	k := pipeline.KeyBy(src, "key", func(v int64) int64 { return v % 100_000 })
	res := operators.Aggregate(k, "count", operators.WindowOptions[int64]{Assigner: operators.Tumbling(10 * time.Second)},
		operators.AggregateFunc[int64, countAcc, countAcc]{
			Init:   func() countAcc { return 0 },
			Add:    func(a countAcc, _ int64) countAcc { return a + 1 },
			Merge:  func(a, c countAcc) countAcc { return a + c },
			Result: func(a countAcc) countAcc { return a },
		}, varint{})
	pipeline.Discard(res)
	l, err := pipeline.NewLocal(bld, pipeline.LocalOptions{FS: vfs.Default, Dir: b.TempDir(), DiscardChangelog: true})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	in, _ := pipeline.InputOf[int64](l.Task(), "src")
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := in.Push(0, int64(i), int64(i/100)); err != nil {
			b.Fatal(err)
		}
		if i%1_000_000 == 999_999 || l.Task().NeedsCheckpoint() {
			if err := l.Checkpoint(); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
}

type varint struct{}

func (varint) Encode(dst []byte, v int64) ([]byte, error) { return binary.AppendVarint(dst, v), nil }
func (varint) Decode(src []byte) (int64, error) {
	v, n := binary.Varint(src)
	if n <= 0 {
		return 0, fmt.Errorf("bad varint")
	}
	return v, nil
}
