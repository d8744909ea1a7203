package state

import (
	"container/heap"
	"encoding/binary"
	"errors"
)

// Timers is a persistent queue of (time, key) timers. The queue is a heap
// in memory, mirrored entry for entry in a state handle, so it is part of
// every checkpoint and is rebuilt from Pebble when the store is reopened.
type Timers struct {
	vs   *ValueState[struct{}]
	h    timerHeap
	set  map[timerKey]struct{}
	kbuf []byte
}

type timerKey struct {
	ts  int64
	key string
}

// NewTimers registers a timer queue on s and loads its persisted timers.
func NewTimers(s *Store, spec Spec) (*Timers, error) {
	spec.WriteOnly = true
	vs, err := Value[struct{}](s, spec, emptyCodec{})
	if err != nil {
		return nil, err
	}
	t := &Timers{vs: vs, set: make(map[timerKey]struct{})}
	err = vs.Scan(func(k string, _ struct{}) error {
		tk, ok := decodeTimerKey(k)
		if !ok {
			return errCorrupt
		}
		t.push(tk)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return t, nil
}

func (t *Timers) push(tk timerKey) {
	t.set[tk] = struct{}{}
	heap.Push(&t.h, tk)
}

func (t *Timers) encode(tk timerKey) string {
	// Big-endian with the sign bit flipped so keys sort by time.
	t.kbuf = binary.BigEndian.AppendUint64(t.kbuf[:0], uint64(tk.ts)^(1<<63))
	t.kbuf = append(t.kbuf, tk.key...)
	return string(t.kbuf)
}

func decodeTimerKey(k string) (timerKey, bool) {
	if len(k) < 8 {
		return timerKey{}, false
	}
	ts := int64(binary.BigEndian.Uint64([]byte(k[:8])) ^ (1 << 63))
	return timerKey{ts: ts, key: k[8:]}, true
}

// Register adds a timer for key at ts; registering it twice is a no-op.
func (t *Timers) Register(ts int64, key string) error {
	tk := timerKey{ts, key}
	if _, ok := t.set[tk]; ok {
		return nil
	}
	if err := t.vs.Set(t.encode(tk), struct{}{}); err != nil {
		return err
	}
	t.push(tk)
	return nil
}

// Delete removes the timer for key at ts if present.
func (t *Timers) Delete(ts int64, key string) error {
	tk := timerKey{ts, key}
	if _, ok := t.set[tk]; !ok {
		return nil
	}
	delete(t.set, tk)
	// The heap entry stays and is skipped when popped.
	return t.vs.Delete(t.encode(tk))
}

// Next returns the earliest timer time, if any.
func (t *Timers) Next() (int64, bool) {
	for t.h.Len() > 0 {
		tk := t.h[0]
		if _, ok := t.set[tk]; ok {
			return tk.ts, true
		}
		heap.Pop(&t.h)
	}
	return 0, false
}

// Pop removes and returns the earliest timer if its time is <= upTo.
func (t *Timers) Pop(upTo int64) (ts int64, key string, ok bool, err error) {
	next, ok := t.Next()
	if !ok || next > upTo {
		return 0, "", false, nil
	}
	tk := heap.Pop(&t.h).(timerKey)
	delete(t.set, tk)
	if err := t.vs.Delete(t.encode(tk)); err != nil {
		return 0, "", false, err
	}
	return tk.ts, tk.key, true, nil
}

// Len is the number of pending timers.
func (t *Timers) Len() int { return len(t.set) }

type timerHeap []timerKey

func (h timerHeap) Len() int { return len(h) }
func (h timerHeap) Less(i, j int) bool {
	if h[i].ts != h[j].ts {
		return h[i].ts < h[j].ts
	}
	return h[i].key < h[j].key
}
func (h timerHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *timerHeap) Push(x any)   { *h = append(*h, x.(timerKey)) }
func (h *timerHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

type emptyCodec struct{}

func (emptyCodec) Encode(dst []byte, _ struct{}) ([]byte, error) { return dst, nil }
func (emptyCodec) Decode(src []byte) (struct{}, error) {
	if len(src) != 0 {
		return struct{}{}, errors.New("state: timer entry has a value")
	}
	return struct{}{}, nil
}
