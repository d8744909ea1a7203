package state

import (
	"encoding/binary"
	"fmt"
	"sort"

	"github.com/cockroachdb/pebble/v2"
)

// MapState holds a map from string user keys to values per record key. A
// record key's whole map is loaded into the cache on first access (one
// prefix scan), so iteration needs no merge of cache and Pebble; keep the
// map per record key moderate (thousands of entries, not millions).
type MapState[V any] struct {
	h     *handle
	codec Codec[V]
	cache map[string]*mapEntry[V]
}

type mapEntry[V any] struct {
	m     map[string]*mapVal[V]
	dirty bool
}

type mapVal[V any] struct {
	v        V
	present  bool
	dirty    bool
	expireAt int64
}

// Map registers a map-state handle on s.
func Map[V any](s *Store, spec Spec, codec Codec[V]) (*MapState[V], error) {
	h, err := s.register(spec)
	if err != nil {
		return nil, err
	}
	ms := &MapState[V]{h: h, codec: codec, cache: make(map[string]*mapEntry[V])}
	s.add(ms)
	return ms, nil
}

func (ms *MapState[V]) base() *handle { return ms.h }

func (ms *MapState[V]) keyPrefix(key string) []byte {
	p := append([]byte(nil), ms.h.prefix...)
	p = binary.AppendUvarint(p, uint64(len(key)))
	return append(p, key...)
}

func (ms *MapState[V]) load(key string) (*mapEntry[V], error) {
	if e, ok := ms.cache[key]; ok {
		return e, nil
	}
	e := &mapEntry[V]{m: make(map[string]*mapVal[V])}
	p := ms.keyPrefix(key)
	err := ms.h.s.scan(p, func(k, raw []byte) error {
		v, exp, err := decodeStored(ms.codec, raw)
		if err != nil {
			return fmt.Errorf("%s/%s key %q: %w", ms.h.spec.Operator, ms.h.spec.Name, key, err)
		}
		e.m[string(k[len(p):])] = &mapVal[V]{v: v, present: true, expireAt: exp}
		return nil
	})
	if err != nil {
		return nil, err
	}
	ms.h.s.admit()
	ms.cache[key] = e
	return e, nil
}

// Get returns the value under userKey in key's map.
func (ms *MapState[V]) Get(key, userKey string) (V, bool, error) {
	var zero V
	if err := ms.h.s.check(); err != nil {
		return zero, false, err
	}
	e, err := ms.load(key)
	if err != nil {
		return zero, false, err
	}
	mv, ok := e.m[userKey]
	if !ok || !mv.present {
		return zero, false, nil
	}
	if mv.expireAt > 0 && mv.expireAt <= ms.h.s.now() {
		ms.remove(e, mv)
		return zero, false, nil
	}
	return mv.v, true, nil
}

// Put sets userKey to v in key's map.
func (ms *MapState[V]) Put(key, userKey string, v V) error {
	if err := ms.h.s.check(); err != nil {
		return err
	}
	e, err := ms.load(key)
	if err != nil {
		return err
	}
	mv, ok := e.m[userKey]
	if !ok {
		mv = &mapVal[V]{}
		e.m[userKey] = mv
	}
	mv.v, mv.present = v, true
	if ttl := ms.h.spec.TTL; ttl > 0 {
		mv.expireAt = ms.h.s.now() + ttl.Milliseconds()
	}
	ms.markDirty(e, mv)
	return nil
}

// Update sets userKey in key's map to fn(old, found), where found says
// whether a live value was there: a read-modify-write with one lookup of
// the map instead of a Get and a Put. It returns the value written and
// found.
func (ms *MapState[V]) Update(key, userKey string, fn func(old V, found bool) V) (V, bool, error) {
	var zero V
	if err := ms.h.s.check(); err != nil {
		return zero, false, err
	}
	e, err := ms.load(key)
	if err != nil {
		return zero, false, err
	}
	mv, ok := e.m[userKey]
	if !ok {
		mv = &mapVal[V]{}
		e.m[userKey] = mv
	}
	found := mv.present && (mv.expireAt == 0 || mv.expireAt > ms.h.s.now())
	old := mv.v
	if !found {
		old = zero
	}
	mv.v, mv.present = fn(old, found), true
	if ttl := ms.h.spec.TTL; ttl > 0 {
		mv.expireAt = ms.h.s.now() + ttl.Milliseconds()
	} else if !found {
		mv.expireAt = 0
	}
	ms.markDirty(e, mv)
	return mv.v, found, nil
}

// Remove deletes userKey from key's map.
func (ms *MapState[V]) Remove(key, userKey string) error {
	if err := ms.h.s.check(); err != nil {
		return err
	}
	e, err := ms.load(key)
	if err != nil {
		return err
	}
	if mv, ok := e.m[userKey]; ok {
		ms.remove(e, mv)
	}
	return nil
}

// Clear deletes key's whole map.
func (ms *MapState[V]) Clear(key string) error {
	if err := ms.h.s.check(); err != nil {
		return err
	}
	e, err := ms.load(key)
	if err != nil {
		return err
	}
	for _, mv := range e.m {
		ms.remove(e, mv)
	}
	return nil
}

func (ms *MapState[V]) remove(e *mapEntry[V], mv *mapVal[V]) {
	var zero V
	mv.v, mv.present, mv.expireAt = zero, false, 0
	ms.markDirty(e, mv)
}

func (ms *MapState[V]) markDirty(e *mapEntry[V], mv *mapVal[V]) {
	mv.dirty = true
	if !e.dirty {
		e.dirty = true
		ms.h.s.dirty++
	}
}

// Entries returns key's live entries sorted by user key.
func (ms *MapState[V]) Entries(key string) ([]string, []V, error) {
	if err := ms.h.s.check(); err != nil {
		return nil, nil, err
	}
	e, err := ms.load(key)
	if err != nil {
		return nil, nil, err
	}
	now := ms.h.s.now()
	keys := make([]string, 0, len(e.m))
	for uk, mv := range e.m {
		if mv.present && (mv.expireAt == 0 || mv.expireAt > now) {
			keys = append(keys, uk)
		}
	}
	sort.Strings(keys)
	vals := make([]V, len(keys))
	for i, uk := range keys {
		vals[i] = e.m[uk].v
	}
	return keys, vals, nil
}

func (ms *MapState[V]) flush(b *pebble.Batch, emit func(Mutation) error) error {
	for key, e := range ms.cache {
		if !e.dirty {
			continue
		}
		p := ms.keyPrefix(key)
		for uk, mv := range e.m {
			if !mv.dirty {
				continue
			}
			pk := append(append([]byte(nil), p...), uk...)
			var val []byte
			if mv.present {
				var err error
				if val, err = encodeStored(nil, ms.codec, mv.v, mv.expireAt); err != nil {
					return fmt.Errorf("encoding %s/%s key %q: %w", ms.h.spec.Operator, ms.h.spec.Name, key, err)
				}
				if err := b.Set(pk, val, nil); err != nil {
					return err
				}
			} else {
				if err := b.Delete(pk, nil); err != nil {
					return err
				}
				delete(e.m, uk)
			}
			if ms.h.spec.Log != "" {
				if err := emit(Mutation{Log: ms.h.spec.Log, Key: pk, Value: val}); err != nil {
					return err
				}
			}
			mv.dirty = false
		}
		e.dirty = false
	}
	return nil
}

func (ms *MapState[V]) evict(n int) int {
	d := 0
	for k, e := range ms.cache {
		if d >= n {
			break
		}
		if !e.dirty {
			delete(ms.cache, k)
			d++
		}
	}
	return d
}

func (ms *MapState[V]) reset() { clear(ms.cache) }

// expire deletes an expired committed entry (see Sweep). A record key
// whose map is cached holds every committed entry: a clean one is removed
// in place, a dirty one is a newer write the checkpoint stores instead. An
// uncached map is not loaded for it.
func (ms *MapState[V]) expire(pk []byte) bool {
	rest := pk[len(ms.h.prefix):]
	n, k := binary.Uvarint(rest)
	if k <= 0 || n > uint64(len(rest)-k) {
		return false // not written by this handle
	}
	e, ok := ms.cache[string(rest[k:k+int(n)])]
	if !ok {
		ms.h.addTomb(pk)
		return true
	}
	mv, ok := e.m[string(rest[k+int(n):])]
	if !ok {
		ms.h.addTomb(pk)
		return true
	}
	if mv.dirty || !mv.present {
		return false
	}
	ms.remove(e, mv)
	return true
}
