package audit

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// JournalConfig configures a Journal.
type JournalConfig struct {
	// QueueLen bounds entries waiting for a batch. Default 8192.
	QueueLen int
	// MaxBatch bounds the entries a batch takes from Append's queue, and
	// the queued write entries (audit_pending) it chains: a batch
	// transaction holds at most 2×MaxBatch rows (and the cut-over row
	// once). Default 1024.
	MaxBatch int
	// CommitTimeout bounds one batch's statement and commit. Default 5s.
	CommitTimeout time.Duration
	// PendingInterval is how often queued write entries (audit_pending)
	// are chained when nobody calls Kick. Default 100ms.
	PendingInterval time.Duration
	// PendingGap is the least time between two chainings of queued write
	// entries, however often Kick is called, so that under write load each
	// chains a batch. Default 5ms.
	PendingGap time.Duration
	// CommitDelay is the least time between the end of one batch's commit
	// and the start of the next while entries keep arriving (PostgreSQL's
	// commit_delay, Kafka's linger): an entry that arrives sooner waits
	// for the rest of it, so that under load every commit takes the
	// entries of CommitDelay rather than of one commit's round trip. An
	// entry arriving after a quiet CommitDelay is committed at once.
	// Default 200µs; negative: no delay.
	CommitDelay time.Duration
	// Actor names the journal in the cut-over row. Default "loanflow-api".
	Actor string
	// OnCommit, when set, is told of every batch of Append's entries the
	// journal's goroutine appended (with the queued write entries chained
	// along, if any): its rows and how long its statements and commit
	// took, which is what each of those Appends waited for after the
	// commit delay. Batches of queued write entries alone are not told.
	OnCommit func(rows int, took time.Duration)
	// OnError receives errors of batches that had no waiting caller (write
	// entries chained in the background; they are retried). Default: ignored.
	OnError func(error)
}

func (c *JournalConfig) setDefaults() {
	if c.QueueLen <= 0 {
		c.QueueLen = 8192
	}
	if c.MaxBatch <= 0 {
		c.MaxBatch = 1024
	}
	if c.CommitTimeout <= 0 {
		c.CommitTimeout = 5 * time.Second
	}
	if c.PendingInterval <= 0 {
		c.PendingInterval = 100 * time.Millisecond
	}
	if c.PendingGap <= 0 {
		c.PendingGap = 5 * time.Millisecond
	}
	if c.CommitDelay == 0 {
		c.CommitDelay = 200 * time.Microsecond
	}
	if c.Actor == "" {
		c.Actor = "loanflow-api"
	}
	if c.OnError == nil {
		c.OnError = func(error) {}
	}
}

// DB is what the Journal needs of PostgreSQL: a *pgxpool.Pool (or a
// *pgx.Conn used by one goroutine).
type DB interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

type waiter struct {
	e    Entry
	done chan error
}

// Journal is the only writer of the keyed chain: a durable group commit.
// Append (reads, and anything audited outside a write's transaction) queues
// an entry and returns only after the transaction holding its row in
// audit_log committed, or with an error when it did not: no response
// without a durable audit row. One goroutine takes every entry queued
// meanwhile, adds the write entries committed to audit_pending (Append,
// AppendSQL, PendSQL), computes each row's HMAC-SHA-256 under the primary
// index key from the chain's head, and appends the batch with one
// statement (audit_append_keyed, migration 00006) in its own transaction:
// one round trip and one commit (one WAL flush) for every request that
// arrived during the previous commit. The head is cached between batches;
// when another instance moved it, the statement appends nothing, returns
// the head, and the batch is recomputed from it.
type Journal struct {
	db    DB
	keys  Keys
	cfg   JournalConfig
	queue chan waiter
	kick  chan struct{}
	stop  chan struct{}
	done  chan struct{}
	mu    sync.RWMutex // guards close against sends on queue
	close bool

	batches, rows atomic.Int64 // appended by the journal's goroutine
}

// Queued is how many entries wait for the journal's goroutine to take
// them into a batch.
func (j *Journal) Queued() int { return len(j.queue) }

// Stats reports the batches (transactions) the journal's goroutine
// appended and the rows they held, since NewJournal.
func (j *Journal) Stats() (batches, rows int64) { return j.batches.Load(), j.rows.Load() }

// NewJournal starts the journal's goroutine; Close stops it.
func NewJournal(db DB, keys Keys, cfg JournalConfig) *Journal {
	cfg.setDefaults()
	j := &Journal{db: db, keys: keys, cfg: cfg, queue: make(chan waiter, cfg.QueueLen),
		kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	j.Kick() // chain what was queued before the start
	go j.run()
	return j
}

// Append queues e and waits until the row holding it is committed to the
// keyed chain, or the batch failed, or ctx ended (then the row may still be
// committed; the caller must treat the access as not audited).
func (j *Journal) Append(ctx context.Context, e Entry) error {
	w := waiter{e: stored(e, time.Now()), done: make(chan error, 1)}
	j.mu.RLock()
	if j.close {
		j.mu.RUnlock()
		return ErrClosed
	}
	select {
	case j.queue <- w:
	default:
		j.mu.RUnlock()
		return ErrBusy
	}
	j.mu.RUnlock()
	select {
	case err := <-w.done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("audit: waiting for the commit: %w", ctx.Err())
	}
}

// Kick asks for the entries queued in audit_pending to be chained soon (it
// never blocks; kicks coalesce).
func (j *Journal) Kick() {
	select {
	case j.kick <- struct{}{}:
	default:
	}
}

// Flush chains every entry committed to audit_pending before it was called.
// It runs on the caller's goroutine, serialized with the journal's batches
// by the chain's head check.
func (j *Journal) Flush(ctx context.Context) error {
	f := &flusher{j: j}
	for {
		n, err := f.batch(ctx, nil)
		if err != nil {
			return err
		}
		if n < j.cfg.MaxBatch {
			return nil
		}
	}
}

// Close stops accepting entries, commits what is queued (and what
// audit_pending holds, bounded by CommitTimeout per batch) and stops.
func (j *Journal) Close() {
	j.mu.Lock()
	if !j.close {
		j.close = true
		close(j.stop)
	}
	j.mu.Unlock()
	<-j.done
}

func (j *Journal) run() {
	defer close(j.done)
	f := &flusher{j: j}
	t := time.NewTicker(j.cfg.PendingInterval)
	defer t.Stop()
	ws := make([]waiter, 0, j.cfg.MaxBatch)
	// Queued write entries are chained at most once per PendingGap, so
	// that under write load each chaining takes a batch (a kick per write
	// would cost a commit per write); waiting reads never wait for the gap.
	var due bool
	var last time.Time
	var gap <-chan time.Time
	var ended time.Time // when the last commit ended
	delay := time.NewTimer(time.Hour)
	delay.Stop()
	for {
		ws = ws[:0]
		select {
		case w := <-j.queue:
			ws = append(ws, w)
		case <-j.kick:
			due = true
		case <-t.C:
			due = true
		case <-gap:
			gap = nil
		case <-j.stop:
			j.drain(f)
			return
		}
		ws = j.fill(ws)
		if len(ws) > 0 {
			// The commit delay: entries arriving back to back share a
			// commit per CommitDelay instead of one per round trip.
			if wait := j.cfg.CommitDelay - time.Since(ended); wait > 0 && len(ws) < j.cfg.MaxBatch {
				delay.Reset(wait)
				stopping := false
			linger:
				for len(ws) < j.cfg.MaxBatch {
					select {
					case w := <-j.queue:
						ws = append(ws, w)
					case <-delay.C:
						break linger
					case <-j.stop:
						stopping = true
						break linger
					}
				}
				delay.Stop()
				if stopping {
					j.commit(f, ws, false)
					j.drain(f)
					return
				}
			}
		}
		select { // a kick that arrived meanwhile rides along
		case <-j.kick:
			due = true
		default:
		}
		pending := false
		if due {
			if wait := j.cfg.PendingGap - time.Since(last); wait <= 0 {
				pending, due, last, gap = true, false, time.Now(), nil
			} else if gap == nil {
				gap = time.After(wait)
			}
		}
		if len(ws) > 0 || pending {
			j.commit(f, ws, pending)
			if len(ws) > 0 {
				ended = time.Now()
			}
		}
	}
}

// fill adds queued entries up to MaxBatch without waiting: the batch is
// whatever arrived while the previous one committed.
func (j *Journal) fill(ws []waiter) []waiter {
	for len(ws) < j.cfg.MaxBatch {
		select {
		case w := <-j.queue:
			ws = append(ws, w)
		default:
			return ws
		}
	}
	return ws
}

func (j *Journal) commit(f *flusher, ws []waiter, pending bool) {
	ctx, cancel := context.WithTimeout(context.Background(), j.cfg.CommitTimeout)
	defer cancel()
	var err error
	var n int // queued write entries chained along
	start := time.Now()
	if pending {
		n, err = f.batch(ctx, ws)
		if err == nil && n >= j.cfg.MaxBatch {
			j.Kick() // more queued than one batch holds
		}
	} else {
		_, err = f.appendBatch(ctx, nil, ws)
	}
	// Every batch a caller waits for is told, whether or not queued
	// write entries rode along (those batches are the larger, slower
	// ones: leaving them out would understate the tail).
	if err == nil && len(ws) > 0 && j.cfg.OnCommit != nil {
		j.cfg.OnCommit(n+len(ws), time.Since(start))
	}
	for _, w := range ws {
		w.done <- err
	}
	if err != nil && len(ws) == 0 {
		j.cfg.OnError(err)
	}
}

func (j *Journal) drain(f *flusher) {
	for {
		ws := j.fill(nil)
		if len(ws) == 0 {
			break
		}
		j.commit(f, ws, false)
	}
	ctx, cancel := context.WithTimeout(context.Background(), j.cfg.CommitTimeout)
	defer cancel()
	if _, err := f.batch(ctx, nil); err != nil {
		j.cfg.OnError(err)
	}
}

// flusher appends batches from one goroutine, with its cached head.
type flusher struct {
	j    *Journal
	head struct {
		known bool
		seq   int64
		hash  []byte
		keyed bool
	}
}

// queued is an audit_pending entry with its id.
type queued struct {
	id int64
	e  Entry
}

// batch chains up to MaxBatch queued write entries (oldest first) and ws
// in one transaction, and returns how many queued entries it chained.
func (f *flusher) batch(ctx context.Context, ws []waiter) (int, error) {
	q, err := f.readPending(ctx, f.j.cfg.MaxBatch)
	if err != nil {
		return 0, err
	}
	if len(q) == 0 && len(ws) == 0 {
		return 0, nil
	}
	n, err := f.appendBatch(ctx, q, ws)
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "LFA01" {
		// Another journal (instance, or a Flush) chained some of them
		// first: append ws alone, and chain what is queued next time.
		f.j.Kick()
		_, err = f.appendBatch(ctx, nil, ws)
		return 0, err
	}
	return n, err
}

func (f *flusher) readPending(ctx context.Context, limit int) ([]queued, error) {
	rows, err := f.j.db.Query(ctx, `SELECT id, at, actor, lender_id, action, resource, purpose, result, request_id
		FROM audit_pending ORDER BY id LIMIT $1`, limit)
	if err != nil {
		return nil, fmt.Errorf("audit: reading queued entries: %w", err)
	}
	defer rows.Close()
	var out []queued
	for rows.Next() {
		var q queued
		if err := rows.Scan(&q.id, &q.e.At, &q.e.Actor, &q.e.Lender, &q.e.Action, &q.e.Resource, &q.e.Purpose, &q.e.Result, &q.e.RequestID); err != nil {
			return nil, fmt.Errorf("audit: reading queued entries: %w", err)
		}
		q.e.At = q.e.At.UTC()
		out = append(out, q)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("audit: reading queued entries: %w", err)
	}
	return out, nil
}

func (f *flusher) readHead(ctx context.Context) error {
	var seq int64
	var hash []byte
	var kid *int64
	err := f.j.db.QueryRow(ctx, "SELECT seq, hash, key_id FROM audit_log ORDER BY seq DESC LIMIT 1").Scan(&seq, &hash, &kid)
	if errors.Is(err, pgx.ErrNoRows) {
		seq, hash, err = 0, []byte{}, nil
	}
	if err != nil {
		return fmt.Errorf("audit: reading the chain's head: %w", err)
	}
	f.head.known, f.head.seq, f.head.hash, f.head.keyed = true, seq, hash, kid != nil || seq == 0
	return nil
}

// appendBatch appends q's entries then ws's, keyed, in one statement, and
// returns len(q). It retries (bounded) when the head moved.
func (f *flusher) appendBatch(ctx context.Context, q []queued, ws []waiter) (int, error) {
	if len(q) == 0 && len(ws) == 0 {
		return 0, nil
	}
	for attempt := 0; attempt < 8; attempt++ {
		if !f.head.known {
			if err := f.readHead(ctx); err != nil {
				return 0, err
			}
		}
		entries := make([]Entry, 0, len(q)+len(ws)+1)
		pendingIDs := make([]*int64, 0, cap(entries))
		if !f.head.keyed {
			// The cut-over: the first keyed row names the last unkeyed
			// one, and its MAC covers that row's hash.
			entries = append(entries, stored(Entry{Actor: f.j.cfg.Actor, Action: "audit.chain_keyed",
				Resource: "audit_log/" + strconv.FormatInt(f.head.seq, 10), Result: ResultOK}, time.Now()))
			pendingIDs = append(pendingIDs, nil)
		}
		for i := range q {
			entries = append(entries, q[i].e)
			pendingIDs = append(pendingIDs, &q[i].id)
		}
		for _, w := range ws {
			entries = append(entries, w.e)
			pendingIDs = append(pendingIDs, nil)
		}
		args, last, err := f.keyed(entries, pendingIDs)
		if err != nil {
			return 0, err
		}
		var ok bool
		var hseq int64
		var hhash []byte
		err = f.j.db.QueryRow(ctx, `SELECT ok, head_seq, head_hash FROM audit_append_keyed($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)`, args...).
			Scan(&ok, &hseq, &hhash)
		if err != nil {
			f.head.known = false // the outcome is unknown: read the head next time
			return 0, fmt.Errorf("audit: appending %d rows: %w", len(entries), err)
		}
		if !ok {
			f.head.known = false
			continue
		}
		f.head.seq, f.head.hash, f.head.keyed = hseq, last, true
		f.j.batches.Add(1)
		f.j.rows.Add(int64(len(entries)))
		return len(q), nil
	}
	return 0, errors.New("audit: the chain's head kept moving (other writers); batch not appended")
}

// keyed computes the rows' MACs from the cached head and returns the
// arguments of audit_append_keyed and the last row's hash.
func (f *flusher) keyed(entries []Entry, pendingIDs []*int64) ([]any, []byte, error) {
	n := len(entries)
	at := make([]time.Time, n)
	cols := make([][]string, 7)
	for i := range cols {
		cols[i] = make([]string, n)
	}
	kids := make([]int64, n)
	hashes := make([][]byte, n)
	if f.head.hash == nil {
		f.head.hash = []byte{}
	}
	prev := f.head.hash
	first := f.head.seq + 1
	for i, e := range entries {
		h, kid, err := f.j.keys.MAC(ChainDomain, ChainMessage(prev, first+int64(i), e))
		if err != nil {
			return nil, nil, fmt.Errorf("audit: keying row: %w", err)
		}
		at[i], kids[i], hashes[i] = e.At, int64(kid), h
		for c, v := range []string{e.Actor, e.Lender, e.Action, e.Resource, e.Purpose, e.Result, e.RequestID} {
			cols[c][i] = v
		}
		prev = h
	}
	return []any{first, f.head.hash, pendingIDs, at, cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], cols[6], kids, hashes}, prev, nil
}
