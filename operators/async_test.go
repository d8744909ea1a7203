package operators_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

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

// TestAsyncQueueStaysBounded keeps one call in flight at all times for
// 10,000 records (call i answers once record i+1 was fed), so the queue of
// records and watermarks never drains completely while its head moves on.
// Its length and capacity must stay bounded by a multiple of Capacity, not
// grow with the number of records.
func TestAsyncQueueStaysBounded(t *testing.T) {
	const n, capacity = 10_000, 4
	var queueSize func() (int, int)
	defer operators.OnAsyncOpen(func(qs func() (int, int)) { queueSize = qs })()
	gates := make([]chan struct{}, n)
	for i := range gates {
		gates[i] = make(chan struct{})
	}
	b := pipeline.NewBuilder("queue")
	src := pipeline.AddSource(b, "src", pipeline.SourceSpec[int64]{Decode: decodeInt})
	out := operators.Async(src, "call", operators.AsyncSpec[int64, int64]{
		Call: func(ctx context.Context, v int64) (int64, error) {
			select {
			case <-gates[v]:
				return v, nil
			case <-ctx.Done():
				return 0, ctx.Err()
			}
		},
		Capacity: capacity,
		InCodec:  pipeline.JSONCodec[int64](),
	})
	var got pipeline.Collected[int64]
	pipeline.CollectTo(out, "collect", &got)
	l, err := pipeline.NewLocal(b, pipeline.LocalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	maxLen, maxCap := 0, 0
	for i := int64(0); i < n; i++ {
		if err := pipeline.Feed(l, "src", 0, i, i); err != nil {
			t.Fatal(err)
		}
		if i > 0 {
			close(gates[i-1])
			for l.Task().InFlight() > 1 {
				if _, err := l.AwaitWork(time.Second); err != nil {
					t.Fatal(err)
				}
			}
		}
		ln, cp := queueSize()
		maxLen, maxCap = max(maxLen, ln), max(maxCap, cp)
	}
	if len(got.Records()) != n-1 {
		t.Fatalf("%d results, want %d", len(got.Records()), n-1)
	}
	// At most Capacity records and a watermark behind each are live.
	if bound := 4 * (2*capacity + 1); maxLen > bound || maxCap > 2*bound {
		t.Fatalf("after %d records the queue reached len %d / cap %d; want at most %d / %d", n, maxLen, maxCap, bound, 2*bound)
	}
}

// TestAsyncOpenFailureStopsCalls restores five in-flight inputs into an
// async operator whose capacity is now 2. Re-issuing them, Open waits for a
// slot; the first call fails with a retryable error, so Open fails. The
// call it had already started for the second input must be cancelled and
// waited for, not left running until its timeout.
func TestAsyncOpenFailureStopsCalls(t *testing.T) {
	fs := vfs.NewMem()
	job := func(capacity int, call func(context.Context, int64) (int64, error)) *pipeline.Builder {
		b := pipeline.NewBuilder("reopen")
		src := pipeline.AddSource(b, "src", pipeline.SourceSpec[int64]{Decode: decodeInt})
		pipeline.Discard(operators.Async(src, "call", operators.AsyncSpec[int64, int64]{
			Call: call, Capacity: capacity, Timeout: time.Minute,
			Retry: operators.RetryPolicy{MaxAttempts: 1}, InCodec: pipeline.JSONCodec[int64](),
		}))
		return b
	}
	block := func(ctx context.Context, _ int64) (int64, error) { <-ctx.Done(); return 0, ctx.Err() }
	l, err := pipeline.NewLocal(job(5, block), pipeline.LocalOptions{FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	for i := int64(0); i < 5; i++ {
		if err := pipeline.Feed(l, "src", 0, i, i); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Checkpoint(); err != nil { // stores the five inputs in flight
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	started, cancelled := make(chan int64, 5), make(chan int64, 5)
	_, err = pipeline.NewLocal(job(2, func(ctx context.Context, v int64) (int64, error) {
		if v == 0 {
			return 0, pipeline.Retryable(errors.New("bureau down"))
		}
		started <- v
		<-ctx.Done()
		cancelled <- v
		return 0, ctx.Err()
	}), pipeline.LocalOptions{FS: fs})
	if err == nil || !errors.Is(err, pipeline.ErrRetryable) {
		t.Fatalf("reopening = %v, want the retryable failure of the first call", err)
	}
	if len(started) == 0 {
		t.Fatal("no call was re-issued before Open failed; the test proves nothing")
	}
	for n := len(started); n > 0; n-- {
		select {
		case <-cancelled:
		case <-time.After(5 * time.Second):
			t.Fatalf("%d re-issued call(s) still running 5s after Open failed: leaked until their 1m timeout", n)
		}
	}
}
