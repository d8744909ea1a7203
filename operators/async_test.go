package operators_test

import (
	"context"
	"errors"
	"strconv"
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

// TestAsyncCapacityWaits: with capacity 2, further records wait in the
// operator (their calls start as calls end) instead of blocking the task:
// the task reports backpressure, a checkpoint goes through with records in
// flight and waiting, and after a restart from it every record is called
// and answered exactly once.
func TestAsyncCapacityWaits(t *testing.T) {
	const n, capacity = 7, 2
	release := make(chan struct{}, n)
	var maxInFlight, cur, started atomic.Int64
	b := pipeline.NewBuilder("capacity")
	src := pipeline.AddSource(b, "src", pipeline.SourceSpec[int64]{Decode: decodeInt})
	out := operators.Async(src, "call", operators.AsyncSpec[int64, int64]{
		Call: func(ctx context.Context, v int64) (int64, error) {
			started.Add(1)
			c := cur.Add(1)
			defer cur.Add(-1)
			for m := maxInFlight.Load(); c > m && !maxInFlight.CompareAndSwap(m, c); m = maxInFlight.Load() {
			}
			select {
			case <-release:
				return v, nil
			case <-ctx.Done():
				return 0, ctx.Err()
			}
		},
		Capacity: capacity,
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
	for i := int64(0); i < n; i++ { // returns: Feed does not wait for room
		if err := pipeline.Feed(l, "src", 0, i, i); err != nil {
			t.Fatal(err)
		}
	}
	if inFlight := l.Task().InFlight(); inFlight != capacity || !l.Task().Backpressured() {
		t.Fatalf("%d calls in flight (want %d), backpressured %v (want true)", inFlight, capacity, l.Task().Backpressured())
	}
	if err := l.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	if err := l.Restart(); err != nil { // the calls in flight are cancelled; all seven are issued again
		t.Fatal(err)
	}
	if !l.Task().Backpressured() {
		t.Fatal("after the restore: not backpressured with 7 records and capacity 2")
	}
	for range n {
		release <- struct{}{}
	}
	deadline := time.Now().Add(time.Minute)
	for len(got.Records()) < n && time.Now().Before(deadline) {
		if _, err := l.AwaitWork(100 * time.Millisecond); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[int64]int{}
	for _, r := range got.Records() {
		seen[r.Value]++
	}
	for i := int64(0); i < n; i++ {
		if seen[i] != 1 {
			t.Errorf("record %d answered %d times; results %v", i, seen[i], got.Records())
		}
	}
	if m := maxInFlight.Load(); m > capacity {
		t.Errorf("%d calls in flight with capacity %d", m, capacity)
	}
	if l.Task().Backpressured() {
		t.Error("still backpressured with every record answered")
	}
	if s := started.Load(); s < n+capacity {
		t.Errorf("%d calls started; want the %d cancelled by the restart and the %d after it", s, capacity, n)
	}
}

// TestAsyncFeedWaitsAtMaxWaiting: an in-process driver feeding an async
// operator at capacity faster than its calls complete (every call answers
// at once, but nothing else runs completions between two records) blocks
// once MaxWaitingRecords records wait, runs the completions, and goes on:
// the records waiting never exceed the bound, and every record is answered
// exactly once. Feed and FeedRaw both wait. Negative control: with the
// default bound (16,384) nothing runs completions between records, so all
// but Capacity of the 200 records wait (checked below), as in the async
// benchmark, which stalled at one round of calls per window.
func TestAsyncFeedWaitsAtMaxWaiting(t *testing.T) {
	const n, capacity, maxWaiting = 200, 2, 3
	job := func(got *pipeline.Collected[int64]) *pipeline.Builder {
		b := pipeline.NewBuilder("maxwaiting")
		src := pipeline.AddSource(b, "src", pipeline.SourceSpec[int64]{Decode: decodeInt})
		out := operators.Async(src, "call", operators.AsyncSpec[int64, int64]{
			Call:     func(_ context.Context, v int64) (int64, error) { return v, nil },
			Capacity: capacity,
			Timeout:  time.Minute,
			InCodec:  pipeline.JSONCodec[int64](),
		})
		pipeline.CollectTo(out, "collect", got)
		return b
	}
	feed := func(l *pipeline.Local, i int64) error {
		if i%2 == 0 {
			return pipeline.Feed(l, "src", 0, i, i)
		}
		return l.FeedRaw("src", pipeline.RawRecord{Offset: i, Value: []byte(strconv.FormatInt(i, 10)), Timestamp: i})
	}

	// Negative control: the default bound lets the records pile up.
	l, err := pipeline.NewLocal(job(&pipeline.Collected[int64]{}), pipeline.LocalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := int64(0); i < n; i++ {
		if err := feed(l, i); err != nil {
			t.Fatal(err)
		}
	}
	if w := l.Task().Waiting(); w != n-capacity {
		t.Fatalf("default bound: %d records waiting after %d fed, want %d (nothing runs completions between records)", w, n, n-capacity)
	}
	l.Close()

	var got pipeline.Collected[int64]
	l, err = pipeline.NewLocal(job(&got), pipeline.LocalOptions{MaxWaitingRecords: maxWaiting})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	maxSeen := 0
	for i := int64(0); i < n; i++ {
		if err := feed(l, i); err != nil {
			t.Fatal(err)
		}
		maxSeen = max(maxSeen, l.Task().Waiting())
		if f := l.Task().InFlight(); f > capacity {
			t.Fatalf("%d calls in flight with capacity %d", f, capacity)
		}
	}
	if maxSeen > maxWaiting {
		t.Fatalf("%d records waited at once; MaxWaitingRecords is %d", maxSeen, maxWaiting)
	}
	if maxSeen < maxWaiting {
		t.Fatalf("at most %d records waited, never the bound %d: the feeding did not outrun the calls, so the test shows nothing", maxSeen, maxWaiting)
	}
	for deadline := time.Now().Add(time.Minute); len(got.Records()) < n && time.Now().Before(deadline); {
		if _, err := l.AwaitWork(100 * time.Millisecond); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[int64]int{}
	for _, r := range got.Records() {
		seen[r.Value]++
	}
	for i := int64(0); i < n; i++ {
		if seen[i] != 1 {
			t.Errorf("record %d answered %d times", i, seen[i])
		}
	}
	if l.Task().Backpressured() {
		t.Error("still backpressured with every record answered")
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

// TestAsyncRestoreBeyondCapacity restores five in-flight inputs into an
// async operator whose capacity is now 2: Open does not wait for room (two
// calls start, three wait). The first call fails with a retryable error,
// which fails the task when its completion is drained (after it started
// the third record's call in its place); closing the task then cancels and
// waits for the two calls still running, rather than leaving them until
// their timeout, and the records still waiting are never called.
func TestAsyncRestoreBeyondCapacity(t *testing.T) {
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

	var calls atomic.Int64
	started, cancelled := make(chan int64, 5), make(chan int64, 5)
	l, err = pipeline.NewLocal(job(2, func(ctx context.Context, v int64) (int64, error) {
		calls.Add(1)
		if v == 0 {
			return 0, pipeline.Retryable(errors.New("bureau down"))
		}
		started <- v
		<-ctx.Done()
		cancelled <- v
		return 0, ctx.Err()
	}), pipeline.LocalOptions{FS: fs})
	if err != nil {
		t.Fatalf("reopening: %v", err)
	}
	if got := l.Task().InFlight(); got != 2 || !l.Task().Backpressured() {
		t.Fatalf("after the restore %d calls in flight (want 2), backpressured %v (want true)", got, l.Task().Backpressured())
	}
	for deadline := time.Now().Add(time.Minute); err == nil && time.Now().Before(deadline); {
		_, err = l.AwaitWork(100 * time.Millisecond)
	}
	if !errors.Is(err, pipeline.ErrRetryable) {
		t.Fatalf("draining = %v, want the retryable failure of the first call", err)
	}
	<-started // the second and third inputs' calls are running
	<-started
	closed := make(chan error, 1)
	go func() { closed <- l.Close() }()
	for range 2 {
		select {
		case <-cancelled:
		case <-time.After(5 * time.Second):
			t.Fatal("a running call was not cancelled 5s after Close: leaked until its 1m timeout")
		}
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if n := calls.Load(); n != 3 {
		t.Fatalf("%d calls made; want 3 (two records were still waiting for room)", n)
	}
}

// TestAsyncLimiterBoundsCalls: a limiter of 2 slots shared by two async
// operators of capacity 5 keeps at most 2 calls running at once (calls
// finish one at a time, so without it five would wait at once), and every
// record is answered.
func TestAsyncLimiterBoundsCalls(t *testing.T) {
	const n = 12
	var cur, maxCur atomic.Int64
	release := make(chan struct{}) // one call at a time gets to finish
	go func() {
		for range 2 * n {
			release <- struct{}{}
		}
	}()
	call := func(ctx context.Context, v int64) (int64, error) {
		c := cur.Add(1)
		defer cur.Add(-1)
		for m := maxCur.Load(); c > m && !maxCur.CompareAndSwap(m, c); m = maxCur.Load() {
		}
		select {
		case <-release:
			return v, nil
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	lim := operators.NewLimiter(2)
	spec := operators.AsyncSpec[int64, int64]{Call: call, Capacity: 5, Timeout: time.Minute, Limiter: lim, InCodec: pipeline.JSONCodec[int64]()}
	b := pipeline.NewBuilder("limiter")
	src := pipeline.AddSource(b, "src", pipeline.SourceSpec[int64]{Decode: decodeInt})
	second := operators.Async(operators.Async(src, "first", spec), "second", spec)
	var got pipeline.Collected[int64]
	pipeline.CollectTo(second, "collect", &got)
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
	for deadline := time.Now().Add(time.Minute); len(got.Records()) < n && time.Now().Before(deadline); {
		if _, err := l.AwaitWork(100 * time.Millisecond); err != nil {
			t.Fatal(err)
		}
	}
	if len(got.Records()) != n {
		t.Fatalf("%d results, want %d", len(got.Records()), n)
	}
	if m := maxCur.Load(); m > 2 {
		t.Fatalf("%d calls at once with a limiter of 2", m)
	}
}

// TestAsyncCheckpointWritesOnlyChanges: a checkpoint of an async operator
// writes one changelog record per input that arrived since the last one
// and deletes those emitted since: its records stay one input large
// however many calls are in flight (they were once one list of every
// input in flight: a backlog of unknown applicants made a record of
// megabytes, refused by the broker, and the task failed at every
// checkpoint). After a restart exactly the inputs not yet emitted are
// called again. The expectations are counts of the test's own inputs.
func TestAsyncCheckpointWritesOnlyChanges(t *testing.T) {
	const n, release = 3000, 1000
	fs := vfs.NewMem()
	var mu sync.Mutex
	gates := map[int64]chan struct{}{}
	gate := func(v int64) chan struct{} {
		mu.Lock()
		defer mu.Unlock()
		if gates[v] == nil {
			gates[v] = make(chan struct{})
		}
		return gates[v]
	}
	called := make(chan int64, 2*n)
	job := func() *pipeline.Builder {
		b := pipeline.NewBuilder("inflight")
		src := pipeline.AddSource(b, "src", pipeline.SourceSpec[int64]{Decode: decodeInt})
		pipeline.Discard(operators.Async(src, "call", operators.AsyncSpec[int64, int64]{
			Call: func(ctx context.Context, v int64) (int64, error) {
				called <- v
				select {
				case <-gate(v):
					return v, nil
				case <-ctx.Done():
					return 0, ctx.Err()
				}
			},
			Capacity: 2 * n, Timeout: time.Hour, Retry: operators.RetryPolicy{MaxAttempts: 1}, InCodec: pipeline.JSONCodec[int64](),
		}))
		return b
	}
	l, err := pipeline.NewLocal(job(), pipeline.LocalOptions{FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	log := pipeline.ChangelogTopic("inflight", "call")
	changes := func(from int) (sets, deletes, largest int) {
		for _, m := range l.Changelog(log)[from:] {
			if m.Value == nil {
				deletes++
				continue
			}
			sets++
			largest = max(largest, len(m.Value))
		}
		return
	}
	for i := int64(0); i < n; i++ {
		if err := pipeline.Feed(l, "src", 0, i, i); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	sets, deletes, largest := changes(0)
	if sets != n || deletes != 0 || largest > 64 {
		t.Fatalf("first checkpoint: %d records written (largest %d bytes), %d deleted; want %d of one input each, none deleted", sets, largest, deletes, n)
	}
	for range n {
		<-called
	}
	// The first 1,000 calls return; their outputs leave.
	for v := int64(0); v < release; v++ {
		close(gate(v))
	}
	for emitted := 0; emitted < release; {
		if _, err := l.AwaitWork(time.Second); err != nil {
			t.Fatal(err)
		}
		emitted = n - l.Task().InFlight()
	}
	mark := len(l.Changelog(log))
	for i := int64(n); i < n+10; i++ { // and ten more arrive
		if err := pipeline.Feed(l, "src", 0, i, i); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	if sets, deletes, _ := changes(mark); sets != 10 || deletes != release {
		t.Fatalf("second checkpoint: %d written, %d deleted; want the 10 new inputs written and the %d emitted deleted", sets, deletes, release)
	}
	for range 10 {
		<-called
	}
	// A crash: the inputs not yet emitted, and only those, are called
	// again.
	if err := l.Restart(); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	again := map[int64]bool{}
	for len(again) < n-release+10 {
		select {
		case v := <-called:
			if v < release || again[v] {
				t.Fatalf("input %d called again after the restart (emitted before the checkpoint, or twice)", v)
			}
			again[v] = true
		case <-time.After(time.Minute):
			t.Fatalf("%d inputs called again after the restart, want %d", len(again), n-release+10)
		}
	}
}
