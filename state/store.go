package state

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"sort"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

var (
	// ErrClosed is returned by a closed store.
	ErrClosed = errors.New("state: closed")
	// ErrFlushing is returned when the store is used between Flush and
	// Commit or Abort: a bug in the caller.
	ErrFlushing = errors.New("state: store used during a checkpoint")
)

// Codec encodes and decodes state values. It has the shape of the engine's
// pipeline.Codec, so any pipeline codec is a state codec.
type Codec[V any] interface {
	Encode(dst []byte, v V) ([]byte, error)
	Decode(src []byte) (V, error)
}

// Options configures a Store.
type Options struct {
	// Dir is the Pebble directory. Required unless FS is an in-memory FS.
	Dir string
	// FS overrides the filesystem; vfs.NewMem() in unit tests.
	FS vfs.FS
	// MaxCachedEntries bounds the write cache across all handles. Clean
	// entries beyond it are evicted; dirty ones stay until the next
	// checkpoint, and NeedsFlush reports when they alone exceed it.
	// Default 1048576.
	MaxCachedEntries int
	// Now is the processing-time clock for TTL. Default time.Now.
	Now func() time.Time
}

func (o *Options) withDefaults() Options {
	out := *o
	if out.MaxCachedEntries <= 0 {
		out.MaxCachedEntries = 1 << 20
	}
	if out.Now == nil {
		out.Now = time.Now
	}
	return out
}

// Validate reports a configuration error.
func (o *Options) Validate() error {
	if o.Dir == "" && o.FS == nil {
		return errors.New("state: Options.Dir is required")
	}
	return nil
}

// Mutation is one state change as written to a changelog: Value nil means
// the key was deleted (a tombstone).
type Mutation struct {
	Log   string
	Key   []byte
	Value []byte
}

// Store is one task's keyed state. See the package documentation.
type Store struct {
	db       *pebble.DB
	opts     Options
	handles  []handleImpl
	byID     map[uint32]string
	cached   int
	dirty    int
	flushing bool
	pending  *pebble.Batch
	closed   bool
	scratch  []byte
	byIDh    map[uint32]handleImpl
	sweep    sweeper
	// newLogs maps handle prefixes registered since the last commit to
	// their changelog; Commit persists the mapping (see ExportLogs).
	newLogs map[string]string
}

// handleImpl is what every state handle gives the store.
type handleImpl interface {
	base() *handle
	// flush encodes dirty entries into b and emit, and marks them clean.
	flush(b *pebble.Batch, emit func(Mutation) error) error
	// evict drops up to n clean entries and returns how many it dropped.
	evict(n int) int
	// reset drops every cached entry.
	reset()
	// expire deletes the committed entry stored under the Pebble key pk,
	// whose TTL has passed, unless the cache holds a newer write of it;
	// it reports whether it deleted it.
	expire(pk []byte) bool
}

// handle is the part common to all handle kinds.
type handle struct {
	s      *Store
	id     uint32
	prefix []byte
	spec   Spec
	// tombs are deletions of expired entries that were not cached (see
	// Sweep), written at the next Flush.
	tombs [][]byte
}

// Spec names a state handle and its behaviour.
type Spec struct {
	// Operator and Name identify the handle; together they are stable
	// across restarts of the same job.
	Operator, Name string
	// Log is the changelog topic this handle's mutations go to. Empty for
	// state that is a pure function of a source topic (restored from it).
	Log string
	// TTL expires entries this long after their last write (processing
	// time); 0 keeps them forever.
	TTL time.Duration
	// WriteOnly handles are read back only by Scan when the store opens
	// (timers): their entries leave the cache as soon as they are flushed.
	WriteOnly bool
}

var metaPrefix = []byte{0xff, 0xff, 0xff, 0xff, 'm', 'e', 't', 'a', '/'}

// Open opens (or creates) the store.
func Open(opts Options) (*Store, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	o := opts.withDefaults()
	popts := &pebble.Options{FS: o.FS, Logger: quietLogger{}}
	db, err := pebble.Open(o.Dir, popts)
	if err != nil {
		return nil, fmt.Errorf("opening state in %s: %w", o.Dir, err)
	}
	return &Store{db: db, opts: o, byID: make(map[uint32]string), byIDh: make(map[uint32]handleImpl)}, nil
}

type quietLogger struct{}

func (quietLogger) Infof(string, ...interface{})  {}
func (quietLogger) Errorf(string, ...interface{}) {}
func (quietLogger) Fatalf(format string, args ...interface{}) {
	panic(fmt.Sprintf("pebble: "+format, args...))
}

func (s *Store) register(spec Spec) (*handle, error) {
	if s.closed {
		return nil, ErrClosed
	}
	h := fnv.New32a()
	_, _ = io.WriteString(h, spec.Operator+"\x00"+spec.Name)
	id := h.Sum32()
	if id>>16 == 0xffff {
		id ^= 0x5a5a0000 // keep clear of the meta prefix
	}
	name := spec.Operator + "/" + spec.Name
	if other, ok := s.byID[id]; ok {
		return nil, fmt.Errorf("state: handle %q collides with %q (same id); rename one", name, other)
	}
	s.byID[id] = name
	p := make([]byte, 4)
	binary.BigEndian.PutUint32(p, id)
	if spec.Log != "" {
		if s.newLogs == nil {
			s.newLogs = make(map[string]string)
		}
		s.newLogs[string(p)] = spec.Log
	}
	return &handle{s: s, id: id, prefix: p, spec: spec}, nil
}

func (s *Store) add(h handleImpl) {
	s.handles = append(s.handles, h)
	s.byIDh[h.base().id] = h
}

// check guards every access.
func (s *Store) check() error {
	if s.closed {
		return ErrClosed
	}
	if s.flushing {
		return ErrFlushing
	}
	return nil
}

func (s *Store) now() int64 { return s.opts.Now().UnixMilli() }

// admit makes room for one new cache entry and accounts for it. It is
// called before the entry goes into its handle's cache, so the eviction it
// may run can never pick the new entry: a write that admits an entry and
// then marks it dirty cannot lose it. Over the bound it evicts clean
// entries down to 90% of it. Dirty entries cannot leave before the next
// checkpoint; when they are most of the cache a pass would find little to
// evict, so it waits for the checkpoint (see NeedsFlush).
func (s *Store) admit() {
	max := s.opts.MaxCachedEntries
	if s.cached+1 > max {
		if clean := s.cached - s.dirty; clean > max/10 {
			s.evict(min(clean, s.cached+1-max*9/10))
		}
	}
	s.cached++
}

func (s *Store) evict(n int) {
	for _, h := range s.handles {
		if n <= 0 {
			return
		}
		d := h.evict(n)
		s.cached -= d
		n -= d
	}
}

// NeedsFlush reports whether dirty entries fill the cache, so the engine
// should checkpoint early rather than grow memory.
func (s *Store) NeedsFlush() bool { return s.dirty >= s.opts.MaxCachedEntries }

// Dirty is the number of entries changed since the last checkpoint.
func (s *Store) Dirty() int { return s.dirty }

// Cached is the number of entries in the write cache.
func (s *Store) Cached() int { return s.cached }

// get reads a raw value from Pebble, copying it.
func (s *Store) get(key []byte) ([]byte, bool, error) {
	v, closer, err := s.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("reading state: %w", err)
	}
	out := append([]byte(nil), v...)
	closer.Close()
	return out, true, nil
}

// Flush stages every dirty entry for the checkpoint: each becomes a Pebble
// batch entry and, for handles with a changelog, a Mutation passed to emit.
// The store is frozen until Commit or Abort.
func (s *Store) Flush(emit func(Mutation) error) error {
	if err := s.check(); err != nil {
		return err
	}
	b := s.db.NewBatch()
	for _, h := range s.handles {
		// Swept deletions first: a later write of the same key, in the
		// cache, must win in Pebble and in the changelog.
		if err := h.base().flushTombs(b, emit); err != nil {
			b.Close()
			return err
		}
		if err := h.flush(b, emit); err != nil {
			b.Close()
			return err
		}
	}
	s.dirty = 0
	s.pending = b
	s.flushing = true
	return nil
}

// Commit applies the staged checkpoint together with the offsets of the
// logs (changelog or source topics) it reflects: log name → next offset to
// read on restore.
func (s *Store) Commit(offsets map[string]int64) error {
	if s.closed {
		return ErrClosed
	}
	if !s.flushing {
		return errors.New("state: Commit without Flush")
	}
	b := s.pending
	s.pending, s.flushing = nil, false
	for _, log := range sortedKeys(offsets) {
		if err := b.Set(metaKey(log), binary.AppendVarint(nil, offsets[log]), nil); err != nil {
			b.Close()
			return err
		}
	}
	for prefix, log := range s.newLogs {
		if err := b.Set(handleKey([]byte(prefix)), []byte(log), nil); err != nil {
			b.Close()
			return err
		}
	}
	s.newLogs = nil
	s.sweep.waitCommit = false
	if err := s.db.Apply(b, pebble.NoSync); err != nil {
		return fmt.Errorf("applying checkpoint to state: %w", err)
	}
	return b.Close()
}

// Abort drops the staged checkpoint and everything cached, returning the
// store to what Pebble holds: the last committed checkpoint.
func (s *Store) Abort() {
	if s.pending != nil {
		s.pending.Close()
		s.pending = nil
	}
	s.flushing = false
	s.sweep.restart()
	for _, h := range s.handles {
		h.reset()
		clear(h.base().tombs)
		h.base().tombs = h.base().tombs[:0]
	}
	s.cached, s.dirty = 0, 0
}

func metaKey(log string) []byte { return append(append([]byte(nil), metaPrefix...), log...) }

// identityKey records the identity (topic id) of a log whose offsets the
// store reflects.
func identityKey(log string) []byte {
	return append(append(append([]byte(nil), metaPrefix...), "id/"...), log...)
}

// Identity returns the identity recorded for log (its topic id), or nil.
// Offsets alone cannot tell a log from another of the same name: a
// changelog deleted and created again starts its offsets over, and state
// left by an earlier incarnation could pass for current.
func (s *Store) Identity(log string) ([]byte, error) {
	v, ok, err := s.get(identityKey(log))
	if err != nil || !ok {
		return nil, err
	}
	return v, nil
}

// SetIdentity records log's identity.
func (s *Store) SetIdentity(log string, id []byte) error {
	if err := s.check(); err != nil {
		return err
	}
	return s.db.Set(identityKey(log), id, pebble.NoSync)
}

// handleKey records which changelog a handle prefix belongs to.
func handleKey(prefix []byte) []byte {
	return append(append(append([]byte(nil), metaPrefix...), "handle/"...), prefix...)
}

// ExportLogs calls fn for every committed entry of a handle with a
// changelog, with that changelog's name: the state as changelog records,
// for rewriting changelogs from a savepoint.
func (s *Store) ExportLogs(fn func(log string, key, value []byte) error) error {
	if err := s.check(); err != nil {
		return err
	}
	logs := make(map[string]string)
	hp := handleKey(nil)
	err := s.scan(hp, func(k, v []byte) error {
		logs[string(k[len(hp):])] = string(v)
		return nil
	})
	if err != nil {
		return err
	}
	it, err := s.db.NewIter(&pebble.IterOptions{UpperBound: metaPrefix})
	if err != nil {
		return err
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		k := it.Key()
		if len(k) < 4 {
			continue
		}
		log, ok := logs[string(k[:4])]
		if !ok {
			continue
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return err
		}
		if err := fn(log, k, v); err != nil {
			return err
		}
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Offset returns the next offset of log that the store reflects, or -1
// when it has none.
func (s *Store) Offset(log string) (int64, error) {
	v, ok, err := s.get(metaKey(log))
	if err != nil || !ok {
		return -1, err
	}
	off, n := binary.Varint(v)
	if n <= 0 {
		return -1, fmt.Errorf("state: corrupt offset for %s", log)
	}
	return off, nil
}

// Apply writes restored changelog records straight to Pebble, with the
// offset of the log they reach. Only for restore, before handles are used.
func (s *Store) Apply(log string, muts []Mutation, nextOffset int64) error {
	if err := s.check(); err != nil {
		return err
	}
	b := s.db.NewBatch()
	defer b.Close()
	for _, m := range muts {
		var err error
		if m.Value == nil {
			err = b.Delete(m.Key, nil)
		} else {
			err = b.Set(m.Key, m.Value, nil)
		}
		if err != nil {
			return err
		}
	}
	if err := b.Set(metaKey(log), binary.AppendVarint(nil, nextOffset), nil); err != nil {
		return err
	}
	return s.db.Apply(b, pebble.NoSync)
}

// DropLog deletes every entry of the handles whose changelog is log and
// forgets its offset: used when the log no longer matches local state (it
// was recreated), before restoring from its start.
func (s *Store) DropLog(log string, handlePrefixes [][]byte) error {
	if err := s.check(); err != nil {
		return err
	}
	b := s.db.NewBatch()
	defer b.Close()
	for _, p := range handlePrefixes {
		if err := b.DeleteRange(p, prefixEnd(p), nil); err != nil {
			return err
		}
	}
	if err := b.Delete(metaKey(log), nil); err != nil {
		return err
	}
	return s.db.Apply(b, pebble.NoSync)
}

// Wipe deletes all state, for a task that must restore from scratch.
func (s *Store) Wipe() error {
	if err := s.check(); err != nil {
		return err
	}
	s.Abort()
	b := s.db.NewBatch()
	defer b.Close()
	if err := b.DeleteRange([]byte{0}, []byte{0xff, 0xff, 0xff, 0xff, 0xff}, nil); err != nil {
		return err
	}
	return s.db.Apply(b, pebble.NoSync)
}

// scan calls fn for every persisted key with the prefix, in key order.
// Values are only valid during the call.
func (s *Store) scan(prefix []byte, fn func(k, v []byte) error) error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return err
	}
	for ok := it.First(); ok; ok = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			it.Close()
			return err
		}
		if err := fn(it.Key(), v); err != nil {
			it.Close()
			return err
		}
	}
	return it.Close()
}

func prefixEnd(p []byte) []byte {
	end := append([]byte(nil), p...)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}

// DiskBytes is Pebble's on-disk size.
func (s *Store) DiskBytes() uint64 {
	if s.closed {
		return 0
	}
	return s.db.Metrics().DiskSpaceUsage()
}

// Checkpoint writes a consistent copy of the committed state to dir (for
// savepoints).
func (s *Store) Checkpoint(dir string) error {
	if err := s.check(); err != nil {
		return err
	}
	return s.db.Checkpoint(dir, pebble.WithFlushedWAL())
}

// Close releases the store; uncommitted changes are dropped.
func (s *Store) Close() error {
	if s.closed {
		return nil
	}
	s.Abort()
	s.closed = true
	return s.db.Close()
}
