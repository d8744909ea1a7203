package batch

import (
	"context"
	"sync/atomic"
	"time"
)

// Batcher runs calls in batches, the way the audit journal group-commits:
// a few workers each take the first queued call and every call queued
// behind it (up to max) and run them in one round trip. Alone, a call runs
// at once; under load, the calls that queued while the workers were busy
// share a round trip (one PostgreSQL query for many cache misses, one
// Redis pipeline for many GETs or SETs). There is no waiting for a batch
// to fill.
type Batcher[Req, Resp any] struct {
	queue   chan *Call[Req, Resp]
	max     int
	timeout time.Duration
	exec    func(ctx context.Context, calls []*Call[Req, Resp])
	stop    chan struct{}
	batches atomic.Int64
	calls   atomic.Int64
}

// Call is one call of a batch: exec sets Resp or Err for each.
type Call[Req, Resp any] struct {
	Req  Req
	Resp Resp
	Err  error
	done chan struct{}
}

func New[Req, Resp any](workers, max int, timeout time.Duration, exec func(ctx context.Context, calls []*Call[Req, Resp])) *Batcher[Req, Resp] {
	b := &Batcher[Req, Resp]{
		queue: make(chan *Call[Req, Resp], 4*max), max: max, timeout: timeout,
		exec: exec, stop: make(chan struct{}),
	}
	for range workers {
		go b.work()
	}
	return b
}

func (b *Batcher[Req, Resp]) work() {
	batch := make([]*Call[Req, Resp], 0, b.max)
	for {
		select {
		case <-b.stop:
			return
		case c := <-b.queue:
			batch = append(batch[:0], c)
		}
	drain:
		for len(batch) < b.max {
			select {
			case c := <-b.queue:
				batch = append(batch, c)
			default:
				break drain
			}
		}
		b.batches.Add(1)
		b.calls.Add(int64(len(batch)))
		ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
		b.exec(ctx, batch)
		cancel()
		for _, c := range batch {
			close(c.done)
		}
		clear(batch)
	}
}

// Do queues req and waits for its batch. A caller whose context ends
// stops waiting; its call still runs with its batch.
func (b *Batcher[Req, Resp]) Do(ctx context.Context, req Req) (Resp, error) {
	c := &Call[Req, Resp]{Req: req, done: make(chan struct{})}
	var zero Resp
	select {
	case b.queue <- c:
	case <-ctx.Done():
		return zero, ctx.Err()
	case <-b.stop:
		return zero, context.Canceled
	}
	select {
	case <-c.done:
		return c.Resp, c.Err
	case <-ctx.Done():
		return zero, ctx.Err()
	}
}

// Close stops the workers; calls queued and not taken wait for their
// callers' contexts.
func (b *Batcher[Req, Resp]) Close() { close(b.stop) }

// Stats reports the batches run and the calls they carried.
func (b *Batcher[Req, Resp]) Stats() (batches, calls int64) { return b.batches.Load(), b.calls.Load() }

// Keys returns the calls' requests in order: the arguments of one query
// over the whole batch (`WHERE id = ANY($1)`, an `MGET`).
func Keys[Req, Resp any](calls []*Call[Req, Resp]) []Req {
	out := make([]Req, len(calls))
	for i, c := range calls {
		out[i] = c.Req
	}
	return out
}

// Answer sets each call's outcome from one round trip over the batch: err
// when the round trip failed, else found[Req], or missing when found has
// nothing for that request.
func Answer[Req comparable, Resp any](calls []*Call[Req, Resp], found map[Req]Resp, err, missing error) {
	for _, c := range calls {
		switch r, ok := found[c.Req]; {
		case err != nil:
			c.Err = err
		case !ok:
			c.Err = missing
		default:
			c.Resp = r
		}
	}
}
