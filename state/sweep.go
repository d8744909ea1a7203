package state

import (
	"encoding/binary"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// DefaultSweepBudget is a Sweep budget that keeps one call well under a
// millisecond: about 1,000 Pebble entries read.
const DefaultSweepBudget = 1000

// SweepResult says what one Sweep call did.
type SweepResult struct {
	// Visited is the number of committed entries read.
	Visited int
	// Expired is the number of entries whose TTL had passed and that are
	// now deletions waiting for the next checkpoint.
	Expired int
	// PassDone reports that the sweep reached the end of the state: Census
	// now reflects that pass, and the next call starts a new one.
	PassDone bool
}

// HandleCensus is one handle's committed state as counted by a sweep pass:
// every entry the pass read, less those it deleted. It is what Pebble holds
// once the pass's deletions are committed, so it grows if expiry does not
// work, and it includes entries whose TTL passed but whose key has a newer
// write waiting for the checkpoint.
type HandleCensus struct {
	// Operator and Name are the handle's Spec; both are empty, and ID is
	// set, for entries of a handle no operator registered (an older job).
	Operator, Name string
	ID             uint32
	// Entries counts the entries; Bytes their keys and stored values.
	Entries, Bytes int64
}

// sweeper is the state of the background TTL sweep and of the census.
type sweeper struct {
	// cursor is the next key to visit; nil starts a pass. spare is the
	// other buffer the cursor alternates with.
	cursor, spare []byte
	// pass counts the pass in progress, by handle id, in key order.
	pass []HandleCensus
	// last is the census of the last complete pass.
	last     []HandleCensus
	lastDone bool
	// expired counts the deletions of the pass in progress; a pass that
	// made some sets waitCommit, and the next pass starts only once a
	// checkpoint committed (or an abort dropped) them, so it never deletes
	// a key twice.
	expired    int
	waitCommit bool
}

// Sweep visits up to budget committed entries, continuing where the last
// call stopped, and deletes those whose TTL has passed as if the operator
// had deleted them: the deletions are dirty entries, so the next checkpoint
// writes them to Pebble and, as tombstones, to the changelog. An entry with
// an uncommitted write in the cache is left to that write. Sweep stops early
// when dirty entries fill the cache (NeedsFlush); a checkpoint makes room.
//
// A pass that deleted entries is followed by the next one only after a
// checkpoint committed those deletions (Sweep does nothing until then), so
// no entry is deleted twice; Abort drops them and restarts the pass.
//
// Sweep also counts the entries and bytes of every handle; when a pass over
// the whole state ends, Census returns its counts. Entries are visited in
// key order, so a pass costs one read of the state, spread over as many
// calls as the budget requires.
func (s *Store) Sweep(budget int) (SweepResult, error) {
	var res SweepResult
	if err := s.check(); err != nil {
		return res, err
	}
	if s.sweep.waitCommit {
		return res, nil
	}
	if budget <= 0 {
		budget = DefaultSweepBudget
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: s.sweep.cursor, UpperBound: metaPrefix})
	if err != nil {
		return res, fmt.Errorf("sweeping state: %w", err)
	}
	now := s.now()
	ok := it.First()
	for ; ok && res.Visited < budget && !s.NeedsFlush(); ok = it.Next() {
		k := it.Key()
		v, err := it.ValueAndErr()
		if err != nil {
			it.Close()
			return res, fmt.Errorf("sweeping state: %w", err)
		}
		res.Visited++
		if len(k) < 4 {
			continue
		}
		id := binary.BigEndian.Uint32(k)
		h := s.byIDh[id]
		if h != nil && h.base().spec.TTL > 0 {
			if exp, ok := storedExpiry(v); ok && exp > 0 && exp <= now && h.expire(k) {
				res.Expired++
				continue
			}
		}
		s.count(id, h, int64(len(k)+len(v)))
	}
	s.sweep.expired += res.Expired
	// The cursor is the iterator's lower bound, which must not change
	// until it is closed: the next one goes to the spare buffer.
	var next []byte
	if ok {
		next = append(s.sweep.spare[:0], it.Key()...)
	}
	if err := it.Close(); err != nil {
		return res, fmt.Errorf("sweeping state: %w", err)
	}
	if ok {
		s.sweep.cursor, s.sweep.spare = next, s.sweep.cursor
		return res, nil
	}
	s.sweep.cursor, s.sweep.spare = nil, s.sweep.cursor
	s.sweep.last, s.sweep.pass = s.sweep.pass, s.sweep.last[:0]
	s.sweep.lastDone = true
	s.sweep.waitCommit = s.sweep.expired > 0
	s.sweep.expired = 0
	res.PassDone = true
	return res, nil
}

// restart drops the pass in progress: its deletions were aborted.
func (sw *sweeper) restart() {
	sw.cursor, sw.spare = nil, sw.cursor
	sw.pass = sw.pass[:0]
	sw.expired, sw.waitCommit = 0, false
}

// count adds one entry of handle id to the pass in progress.
func (s *Store) count(id uint32, h handleImpl, bytes int64) {
	p := s.sweep.pass
	if n := len(p); n == 0 || p[n-1].ID != id {
		c := HandleCensus{ID: id}
		if h != nil {
			c.Operator, c.Name = h.base().spec.Operator, h.base().spec.Name
		}
		s.sweep.pass = append(p, c)
	}
	c := &s.sweep.pass[len(s.sweep.pass)-1]
	c.Entries++
	c.Bytes += bytes
}

// Census returns the entries and bytes of each handle counted by the last
// complete Sweep pass (see HandleCensus; handles without entries are
// absent), and false before a pass completed. It reflects committed state
// as the sweep saw it during that pass, spread over the pass's calls.
func (s *Store) Census() ([]HandleCensus, bool) {
	return append([]HandleCensus(nil), s.sweep.last...), s.sweep.lastDone
}

// LiveEntries is the total of Census's entries: the committed entries
// that survived the last complete sweep pass (0 before one completed).
func (s *Store) LiveEntries() int64 {
	var n int64
	for _, c := range s.sweep.last {
		n += c.Entries
	}
	return n
}

// storedExpiry reads the expiry time of a stored value without decoding it.
func storedExpiry(b []byte) (int64, bool) {
	if len(b) == 0 {
		return 0, false
	}
	switch b[0] {
	case hdrPlain:
		return 0, true
	case hdrExpiry:
		e, n := binary.Varint(b[1:])
		return e, n > 0
	}
	return 0, false
}

// addTomb queues a deletion of a committed entry that is not in the
// cache: the next Flush writes it (before the handle's cached entries, so
// a later write of the same key wins). It counts as a dirty cache entry.
func (h *handle) addTomb(pk []byte) {
	h.s.admit()
	h.s.dirty++
	h.tombs = append(h.tombs, append([]byte(nil), pk...))
}

// flushTombs writes the queued deletions into b and emit.
func (h *handle) flushTombs(b *pebble.Batch, emit func(Mutation) error) error {
	for _, pk := range h.tombs {
		if err := b.Delete(pk, nil); err != nil {
			return err
		}
		if h.spec.Log != "" {
			if err := emit(Mutation{Log: h.spec.Log, Key: pk, Value: nil}); err != nil {
				return err
			}
		}
	}
	h.s.cached -= len(h.tombs)
	clear(h.tombs)
	h.tombs = h.tombs[:0]
	return nil
}
