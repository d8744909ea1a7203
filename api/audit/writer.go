package audit

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// WriterConfig configures a group-committing Writer.
type WriterConfig struct {
	// QueueLen bounds entries waiting to be written. Default 4096.
	QueueLen int
	// MaxBatch bounds entries per transaction. Default 256.
	MaxBatch int
	// CommitTimeout bounds one batch transaction. Default 5s.
	CommitTimeout time.Duration
	// Flushers is how many batches may be in flight at once (PostgreSQL
	// orders them on the chain lock). More than one saves a round trip of
	// waiting at light load but splits batches, which costs more per entry
	// under load (measured with BenchmarkWriterAppend). Default 1.
	Flushers int
}

func (c *WriterConfig) setDefaults() {
	if c.QueueLen <= 0 {
		c.QueueLen = 4096
	}
	if c.MaxBatch <= 0 {
		c.MaxBatch = 256
	}
	if c.CommitTimeout <= 0 {
		c.CommitTimeout = 5 * time.Second
	}
	if c.Flushers <= 0 {
		c.Flushers = 1
	}
}

type pending struct {
	e    Entry
	done chan error
}

// Writer appends read-audit entries with group commit.
type Writer struct {
	pool  *pgxpool.Pool
	cfg   WriterConfig
	queue chan pending
	stop  chan struct{}
	wg    sync.WaitGroup
	mu    struct {
		sync.RWMutex
		closed bool
	}
}

// NewWriter starts the flusher goroutines.
func NewWriter(pool *pgxpool.Pool, cfg WriterConfig) *Writer {
	cfg.setDefaults()
	w := &Writer{pool: pool, cfg: cfg, queue: make(chan pending, cfg.QueueLen), stop: make(chan struct{})}
	for i := 0; i < cfg.Flushers; i++ {
		w.wg.Add(1)
		go w.run()
	}
	return w
}

// Append queues e and waits until it is committed or ctx ends.
func (w *Writer) Append(ctx context.Context, e Entry) error {
	if e.At.IsZero() {
		e.At = time.Now()
	}
	p := pending{e: e, done: make(chan error, 1)}
	w.mu.RLock()
	if w.mu.closed {
		w.mu.RUnlock()
		return ErrClosed
	}
	select {
	case w.queue <- p:
	default:
		w.mu.RUnlock()
		return ErrBusy
	}
	w.mu.RUnlock()
	select {
	case err := <-p.done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("audit: waiting for commit: %w", ctx.Err())
	}
}

// Close stops accepting entries, writes what is queued and stops.
func (w *Writer) Close() {
	w.mu.Lock()
	if !w.mu.closed {
		w.mu.closed = true
		close(w.stop)
	}
	w.mu.Unlock()
	w.wg.Wait()
}

func (w *Writer) run() {
	defer w.wg.Done()
	batch := make([]pending, 0, w.cfg.MaxBatch)
	for {
		select {
		case p := <-w.queue:
			batch = w.fill(append(batch[:0], p))
			w.flush(batch)
		case <-w.stop:
			for {
				select {
				case p := <-w.queue:
					batch = w.fill(append(batch[:0], p))
					w.flush(batch)
				default:
					return
				}
			}
		}
	}
}

func (w *Writer) fill(batch []pending) []pending {
	for len(batch) < w.cfg.MaxBatch {
		select {
		case p := <-w.queue:
			batch = append(batch, p)
		default:
			return batch
		}
	}
	return batch
}

func (w *Writer) flush(batch []pending) {
	ctx, cancel := context.WithTimeout(context.Background(), w.cfg.CommitTimeout)
	defer cancel()
	entries := make([]Entry, len(batch))
	for i, p := range batch {
		entries[i] = p.e
	}
	// One statement in its own (implicit) transaction: committed when it
	// returns, one round trip per batch.
	err := appendTo(ctx, w.pool, entries)
	for _, p := range batch {
		p.done <- err
	}
}
