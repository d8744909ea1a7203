package state

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// Stored values carry a one-byte header: 0 = no expiry, 1 = an expiry time
// (unix ms, varint) follows. The payload is the codec's encoding.
const (
	hdrPlain  = 0
	hdrExpiry = 1
)

func encodeStored[V any](dst []byte, c Codec[V], v V, expireAt int64) ([]byte, error) {
	if expireAt > 0 {
		dst = append(dst, hdrExpiry)
		dst = binary.AppendVarint(dst, expireAt)
	} else {
		dst = append(dst, hdrPlain)
	}
	return c.Encode(dst, v)
}

var errCorrupt = errors.New("state: corrupt stored value")

func decodeStored[V any](c Codec[V], b []byte) (V, int64, error) {
	var zero V
	if len(b) == 0 {
		return zero, 0, errCorrupt
	}
	var expireAt int64
	switch b[0] {
	case hdrPlain:
		b = b[1:]
	case hdrExpiry:
		e, n := binary.Varint(b[1:])
		if n <= 0 {
			return zero, 0, errCorrupt
		}
		expireAt, b = e, b[1+n:]
	default:
		return zero, 0, errCorrupt
	}
	v, err := c.Decode(b)
	if err != nil {
		return zero, 0, fmt.Errorf("decoding state value: %w", err)
	}
	return v, expireAt, nil
}

// ValueState holds one value per record key.
type ValueState[V any] struct {
	h     *handle
	codec Codec[V]
	cache map[string]*valueEntry[V]
	// dirty lists the keys of the dirty entries (in cache), so a checkpoint
	// visits those only: walking the whole cache for them took 7.5% of the
	// decisions job's CPU at 3,000 applications/s (a cache of every
	// application id seen, a checkpoint every 10-100ms).
	dirty []string
}

type valueEntry[V any] struct {
	v        V
	present  bool
	dirty    bool
	expireAt int64
	// swept entries were deleted by the TTL sweep: once flushed they leave
	// the cache, as nobody read them for a TTL.
	swept bool
}

// Value registers a value-state handle on s.
func Value[V any](s *Store, spec Spec, codec Codec[V]) (*ValueState[V], error) {
	h, err := s.register(spec)
	if err != nil {
		return nil, err
	}
	vs := &ValueState[V]{h: h, codec: codec, cache: make(map[string]*valueEntry[V])}
	s.add(vs)
	return vs, nil
}

func (vs *ValueState[V]) base() *handle { return vs.h }

func (vs *ValueState[V]) pebbleKey(key string) []byte {
	s := vs.h.s
	s.scratch = append(append(s.scratch[:0], vs.h.prefix...), key...)
	return s.scratch
}

// Prefix is the handle's key prefix in Pebble and its changelog.
func (vs *ValueState[V]) Prefix() []byte { return vs.h.prefix }

func (vs *ValueState[V]) load(key string) (*valueEntry[V], error) {
	if e, ok := vs.cache[key]; ok {
		return e, nil
	}
	raw, ok, err := vs.h.s.get(vs.pebbleKey(key))
	if err != nil {
		return nil, err
	}
	e := &valueEntry[V]{}
	if ok {
		if e.v, e.expireAt, err = decodeStored(vs.codec, raw); err != nil {
			return nil, fmt.Errorf("%s/%s key %q: %w", vs.h.spec.Operator, vs.h.spec.Name, key, err)
		}
		e.present = true
	}
	vs.h.s.admit()
	vs.cache[key] = e
	return e, nil
}

// Get returns the value for key and whether it exists (and has not expired).
func (vs *ValueState[V]) Get(key string) (V, bool, error) {
	var zero V
	if err := vs.h.s.check(); err != nil {
		return zero, false, err
	}
	e, err := vs.load(key)
	if err != nil || !e.present {
		return zero, false, err
	}
	if e.expireAt > 0 && e.expireAt <= vs.h.s.now() {
		vs.markDeleted(key, e)
		return zero, false, nil
	}
	return e.v, true, nil
}

// Set stores v for key, refreshing its TTL.
func (vs *ValueState[V]) Set(key string, v V) error {
	if err := vs.h.s.check(); err != nil {
		return err
	}
	e, ok := vs.cache[key]
	if !ok {
		e = &valueEntry[V]{}
		vs.h.s.admit()
		vs.cache[key] = e
	}
	e.v, e.present = v, true
	if ttl := vs.h.spec.TTL; ttl > 0 {
		e.expireAt = vs.h.s.now() + ttl.Milliseconds()
	}
	vs.markDirty(key, e)
	return nil
}

// Delete removes key.
func (vs *ValueState[V]) Delete(key string) error {
	if err := vs.h.s.check(); err != nil {
		return err
	}
	e, ok := vs.cache[key]
	if !ok {
		e = &valueEntry[V]{}
		vs.h.s.admit()
		vs.cache[key] = e
	}
	vs.markDeleted(key, e)
	return nil
}

func (vs *ValueState[V]) markDeleted(key string, e *valueEntry[V]) {
	var zero V
	e.v, e.present, e.expireAt = zero, false, 0
	vs.markDirty(key, e)
}

func (vs *ValueState[V]) markDirty(key string, e *valueEntry[V]) {
	if !e.dirty {
		e.dirty = true
		vs.h.s.dirty++
		vs.dirty = append(vs.dirty, key)
	}
}

func (vs *ValueState[V]) flush(b *pebble.Batch, emit func(Mutation) error) error {
	for _, key := range vs.dirty {
		e, ok := vs.cache[key]
		if !ok || !e.dirty {
			continue
		}
		pk := append(append([]byte(nil), vs.h.prefix...), key...)
		var val []byte
		if e.present {
			var err error
			if val, err = encodeStored(nil, vs.codec, e.v, e.expireAt); err != nil {
				return fmt.Errorf("encoding %s/%s key %q: %w", vs.h.spec.Operator, vs.h.spec.Name, key, err)
			}
			if err := b.Set(pk, val, nil); err != nil {
				return err
			}
		} else if err := b.Delete(pk, nil); err != nil {
			return err
		}
		if vs.h.spec.Log != "" {
			if err := emit(Mutation{Log: vs.h.spec.Log, Key: pk, Value: val}); err != nil {
				return err
			}
		}
		e.dirty = false
		if vs.h.spec.WriteOnly || (e.swept && !e.present) {
			delete(vs.cache, key)
			vs.h.s.cached--
		}
	}
	clear(vs.dirty)
	vs.dirty = vs.dirty[:0]
	return nil
}

func (vs *ValueState[V]) evict(n int) int {
	d := 0
	for k, e := range vs.cache {
		if d >= n {
			break
		}
		if !e.dirty {
			delete(vs.cache, k)
			d++
		}
	}
	return d
}

func (vs *ValueState[V]) reset() {
	clear(vs.cache)
	clear(vs.dirty)
	vs.dirty = vs.dirty[:0]
}

// Scan calls fn for every persisted (committed) entry of the handle, in key
// order, skipping expired ones. Only valid while nothing is cached dirty,
// i.e. right after opening or a commit; used to rebuild in-memory indexes.
func (vs *ValueState[V]) Scan(fn func(key string, v V) error) error {
	if err := vs.h.s.check(); err != nil {
		return err
	}
	now := vs.h.s.now()
	return vs.h.s.scan(vs.h.prefix, func(k, raw []byte) error {
		v, exp, err := decodeStored(vs.codec, raw)
		if err != nil {
			return err
		}
		if exp > 0 && exp <= now {
			return nil
		}
		return fn(string(k[len(vs.h.prefix):]), v)
	})
}

// ListState holds a list of values per record key, stored as one value.
type ListState[V any] struct{ vs *ValueState[[]V] }

// List registers a list-state handle on s.
func List[V any](s *Store, spec Spec, codec Codec[V]) (*ListState[V], error) {
	vs, err := Value[[]V](s, spec, listCodec[V]{codec})
	if err != nil {
		return nil, err
	}
	return &ListState[V]{vs: vs}, nil
}

// Get returns the list for key (nil when empty). The slice must not be
// modified.
func (l *ListState[V]) Get(key string) ([]V, error) {
	v, _, err := l.vs.Get(key)
	return v, err
}

// Append adds v to the end of key's list.
func (l *ListState[V]) Append(key string, v V) error {
	cur, _, err := l.vs.Get(key)
	if err != nil {
		return err
	}
	return l.vs.Set(key, append(cur, v))
}

// Set replaces key's list; an empty list deletes it.
func (l *ListState[V]) Set(key string, vs []V) error {
	if len(vs) == 0 {
		return l.vs.Delete(key)
	}
	return l.vs.Set(key, vs)
}

// Delete removes key's list.
func (l *ListState[V]) Delete(key string) error { return l.vs.Delete(key) }

// ListCodec encodes a slice element by element with c.
func ListCodec[V any](c Codec[V]) Codec[[]V] { return listCodec[V]{c} }

type listCodec[V any] struct{ c Codec[V] }

func (lc listCodec[V]) Encode(dst []byte, vs []V) ([]byte, error) {
	dst = binary.AppendUvarint(dst, uint64(len(vs)))
	var buf []byte
	for _, v := range vs {
		var err error
		if buf, err = lc.c.Encode(buf[:0], v); err != nil {
			return dst, err
		}
		dst = binary.AppendUvarint(dst, uint64(len(buf)))
		dst = append(dst, buf...)
	}
	return dst, nil
}

func (lc listCodec[V]) Decode(src []byte) ([]V, error) {
	n, k := binary.Uvarint(src)
	if k <= 0 || n > uint64(len(src)) {
		return nil, errCorrupt
	}
	src = src[k:]
	out := make([]V, 0, n)
	for i := uint64(0); i < n; i++ {
		l, k := binary.Uvarint(src)
		if k <= 0 || l > uint64(len(src)-k) {
			return nil, errCorrupt
		}
		v, err := lc.c.Decode(src[k : k+int(l)])
		if err != nil {
			return nil, err
		}
		out = append(out, v)
		src = src[k+int(l):]
	}
	return out, nil
}

// expire deletes an expired committed entry (see Sweep). A cached clean
// entry equals the committed one and is deleted in place; a dirty one is a
// newer write (or delete) that the checkpoint will store instead.
func (vs *ValueState[V]) expire(pk []byte) bool {
	e, ok := vs.cache[string(pk[len(vs.h.prefix):])]
	switch {
	case !ok:
		vs.h.addTomb(pk)
		return true
	case e.dirty || !e.present:
		return false
	}
	vs.markDeleted(string(pk[len(vs.h.prefix):]), e)
	e.swept = true
	return true
}
