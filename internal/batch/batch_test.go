package batch

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"
)

// TestBatcherGroupsQueuedCalls: with one worker busy on a first call, the
// calls queued meanwhile run together in its next round trip, each with
// its own answer; a call alone runs alone. The expected answers are the
// requests' own squares (a plain model), not the batcher's output.
func TestBatcherGroupsQueuedCalls(t *testing.T) {
	gate := make(chan struct{})
	var mu sync.Mutex
	var sizes []int
	b := New(1, 64, time.Minute, func(_ context.Context, calls []*Call[int, string]) {
		mu.Lock()
		sizes = append(sizes, len(calls))
		first := len(sizes) == 1
		mu.Unlock()
		if first {
			<-gate // the worker is busy until the test has queued the rest
		}
		for _, c := range calls {
			if c.Req < 0 {
				c.Err = fmt.Errorf("negative %d", c.Req)
				continue
			}
			c.Resp = strconv.Itoa(c.Req * c.Req)
		}
	})
	defer b.Close()
	ctx := context.Background()
	results := make([]string, 11)
	errs := make([]error, 11)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); results[0], errs[0] = b.Do(ctx, 0) }()
	for { // the first call is taken by the worker
		mu.Lock()
		n := len(sizes)
		mu.Unlock()
		if n == 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	for i := 1; i <= 10; i++ {
		wg.Add(1)
		req := i
		if i == 7 {
			req = -7
		}
		go func() { defer wg.Done(); results[i], errs[i] = b.Do(ctx, req) }()
	}
	for len(b.queue) < 10 { // all ten queued behind the busy worker
		time.Sleep(time.Millisecond)
	}
	close(gate)
	wg.Wait()
	if fmt.Sprint(sizes) != "[1 10]" {
		t.Fatalf("batch sizes %v, want [1 10]: the ten queued calls should share one round trip", sizes)
	}
	for i := 0; i <= 10; i++ {
		if i == 7 {
			if errs[i] == nil {
				t.Errorf("call -7: no error")
			}
			continue
		}
		if want := strconv.Itoa(i * i); results[i] != want || errs[i] != nil {
			t.Errorf("call %d: %q, %v; want %q", i, results[i], errs[i], want)
		}
	}
	if batches, calls := b.Stats(); batches != 2 || calls != 11 {
		t.Fatalf("stats: %d batches, %d calls; want 2, 11", batches, calls)
	}
	// Alone, a call is its own batch.
	if r, err := b.Do(ctx, 12); r != "144" || err != nil {
		t.Fatalf("a lone call: %q, %v", r, err)
	}
	if fmt.Sprint(sizes) != "[1 10 1]" {
		t.Fatalf("batch sizes %v, want [1 10 1]", sizes)
	}
}

// TestBatcherCallerGivesUp: a caller whose context ends stops waiting; the
// worker goes on with the next batch.
func TestBatcherCallerGivesUp(t *testing.T) {
	gate := make(chan struct{})
	b := New(1, 8, time.Minute, func(_ context.Context, calls []*Call[int, int]) {
		if calls[0].Req == 1 {
			<-gate
		}
		for _, c := range calls {
			c.Resp = c.Req
		}
	})
	defer b.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := b.Do(ctx, 1); done <- err }()
	time.Sleep(10 * time.Millisecond)
	cancel()
	if err := <-done; err != context.Canceled {
		t.Fatalf("the caller that gave up got %v, want context.Canceled", err)
	}
	close(gate)
	if r, err := b.Do(context.Background(), 2); r != 2 || err != nil {
		t.Fatalf("the next call: %d, %v", r, err)
	}
}

// TestAnswer: each call gets its own request's answer, the missing error
// when there is none, and the round trip's error when it failed; a
// request asked twice in one batch gets the answer twice.
func TestAnswer(t *testing.T) {
	mk := func(reqs ...string) []*Call[string, int] {
		var out []*Call[string, int]
		for _, r := range reqs {
			out = append(out, &Call[string, int]{Req: r})
		}
		return out
	}
	missing, failed := errors.New("missing"), errors.New("failed")
	calls := mk("a", "b", "a", "z")
	if got := Keys(calls); fmt.Sprint(got) != "[a b a z]" {
		t.Fatalf("Keys: %v", got)
	}
	Answer(calls, map[string]int{"a": 1, "b": 2}, nil, missing)
	for i, want := range []struct {
		resp int
		err  error
	}{{1, nil}, {2, nil}, {1, nil}, {0, missing}} {
		if calls[i].Resp != want.resp || calls[i].Err != want.err {
			t.Errorf("call %d (%s): %d, %v; want %d, %v", i, calls[i].Req, calls[i].Resp, calls[i].Err, want.resp, want.err)
		}
	}
	calls = mk("a", "z")
	Answer(calls, map[string]int{"a": 1}, failed, missing)
	for _, c := range calls {
		if c.Err != failed || c.Resp != 0 {
			t.Errorf("a failed round trip, call %s: %d, %v", c.Req, c.Resp, c.Err)
		}
	}
}
