package operators_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/loanflow/loanflow/operators"
	"github.com/loanflow/loanflow/pipeline"
)

// TestAsyncTenThousandInFlight holds 10,000 calls open at once in one task
// (each waits until all have started), then lets them finish.
func TestAsyncTenThousandInFlight(t *testing.T) {
	const n = 10_000
	var started atomic.Int64
	allIn := make(chan struct{})
	var once sync.Once
	b := pipeline.NewBuilder("inflight")
	src := pipeline.AddSource(b, "src", pipeline.SourceSpec[int64]{Decode: decodeInt})
	out := operators.Async(src, "call", operators.AsyncSpec[int64, int64]{
		Call: func(ctx context.Context, v int64) (int64, error) {
			if started.Add(1) == n {
				once.Do(func() { close(allIn) })
			}
			select {
			case <-allIn:
				return v * 2, nil
			case <-ctx.Done():
				return 0, ctx.Err()
			}
		},
		Capacity: n,
		Timeout:  time.Minute,
		InCodec:  pipeline.JSONCodec[int64](),
	})
	var got pipeline.Collected[int64]
	pipeline.CollectTo(out, "collect", &got)
	l, err := pipeline.NewLocal(b, pipeline.LocalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for i := int64(0); i < n; i++ {
		if err := pipeline.Feed(l, "src", 0, i, i); err != nil {
			t.Fatal(err)
		}
	}
	if inFlight := l.Task().InFlight(); inFlight != n {
		t.Fatalf("%d calls in flight, want %d", inFlight, n)
	}
	deadline := time.Now().Add(time.Minute)
	for len(got.Records()) < n && time.Now().Before(deadline) {
		if _, err := l.AwaitWork(100 * time.Millisecond); err != nil {
			t.Fatal(err)
		}
	}
	if len(got.Records()) != n {
		t.Fatalf("%d results, want %d", len(got.Records()), n)
	}
}

// TestAsyncCapacityBlocks: with capacity 2, a third record waits for a
// slot (the task blocks, it does not buffer without bound).
func TestAsyncCapacityBlocks(t *testing.T) {
	release := make(chan struct{})
	var maxInFlight, cur atomic.Int64
	b := pipeline.NewBuilder("capacity")
	src := pipeline.AddSource(b, "src", pipeline.SourceSpec[int64]{Decode: decodeInt})
	out := operators.Async(src, "call", operators.AsyncSpec[int64, int64]{
		Call: func(ctx context.Context, v int64) (int64, error) {
			c := cur.Add(1)
			for m := maxInFlight.Load(); c > m && !maxInFlight.CompareAndSwap(m, c); m = maxInFlight.Load() {
			}
			<-release
			cur.Add(-1)
			return v, nil
		},
		Capacity: 2,
		InCodec:  pipeline.JSONCodec[int64](),
	})
	pipeline.Discard(out)
	l, err := pipeline.NewLocal(b, pipeline.LocalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fed := make(chan error, 1)
	go func() {
		for i := int64(0); i < 3; i++ {
			if err := pipeline.Feed(l, "src", 0, i, i); err != nil {
				fed <- err
				return
			}
		}
		fed <- nil
	}()
	select {
	case err := <-fed:
		t.Fatalf("the third record did not wait for capacity (err %v)", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	if err := <-fed; err != nil {
		t.Fatal(err)
	}
	if m := maxInFlight.Load(); m > 2 {
		t.Fatalf("%d calls in flight with capacity 2", m)
	}
}
