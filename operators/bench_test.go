package operators_test

import (
	"testing"

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
