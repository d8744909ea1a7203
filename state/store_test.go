package state

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

type int64Codec struct{}

func (int64Codec) Encode(dst []byte, v int64) ([]byte, error) {
	return binary.AppendVarint(dst, v), nil
}
func (int64Codec) Decode(src []byte) (int64, error) {
	v, n := binary.Varint(src)
	if n <= 0 {
		return 0, errors.New("bad varint")
	}
	return v, nil
}

type strCodec struct{}

func (strCodec) Encode(dst []byte, v string) ([]byte, error) { return append(dst, v...), nil }
func (strCodec) Decode(src []byte) (string, error)           { return string(src), nil }

func openMem(t *testing.T, fs vfs.FS, opts ...func(*Options)) *Store {
	t.Helper()
	o := Options{Dir: "db", FS: fs}
	for _, f := range opts {
		f(&o)
	}
	s, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// checkpoint flushes and commits, returning the changelog mutations.
func checkpoint(t *testing.T, s *Store, offsets map[string]int64) []Mutation {
	t.Helper()
	var muts []Mutation
	if err := s.Flush(func(m Mutation) error { muts = append(muts, m); return nil }); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(offsets); err != nil {
		t.Fatal(err)
	}
	return muts
}

func TestValueStateCheckpointAndReopen(t *testing.T) {
	fs := vfs.NewMem()
	s := openMem(t, fs)
	vs, err := Value[int64](s, Spec{Operator: "count", Name: "n", Log: "job-count-changelog"}, int64Codec{})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		v, _, _ := vs.Get("a")
		if err := vs.Set("a", v+1); err != nil {
			t.Fatal(err)
		}
	}
	if err := vs.Set("b", 7); err != nil {
		t.Fatal(err)
	}
	if s.Dirty() != 2 {
		t.Fatalf("dirty = %d, want 2 (hot key written once per checkpoint)", s.Dirty())
	}
	muts := checkpoint(t, s, map[string]int64{"job-count-changelog": 42})
	if len(muts) != 2 {
		t.Fatalf("got %d changelog mutations, want 2", len(muts))
	}
	// An uncommitted change is lost on close: Pebble never runs ahead.
	_ = vs.Set("a", 1000)
	if err := s.Flush(func(Mutation) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if _, _, err := vs.Get("a"); !errors.Is(err, ErrFlushing) {
		t.Fatalf("Get during checkpoint: %v, want ErrFlushing", err)
	}
	s.Close()

	s = openMem(t, fs)
	defer s.Close()
	vs, _ = Value[int64](s, Spec{Operator: "count", Name: "n", Log: "job-count-changelog"}, int64Codec{})
	if v, ok, _ := vs.Get("a"); !ok || v != 10 {
		t.Fatalf("a = %d,%v after reopen, want 10", v, ok)
	}
	if off, _ := s.Offset("job-count-changelog"); off != 42 {
		t.Fatalf("offset = %d, want 42", off)
	}
}

func TestRestoreFromChangelog(t *testing.T) {
	src := openMem(t, vfs.NewMem())
	spec := Spec{Operator: "op", Name: "v", Log: "log"}
	vs, _ := Value[string](src, spec, strCodec{})
	_ = vs.Set("k1", "one")
	_ = vs.Set("k2", "two")
	log := checkpoint(t, src, nil)
	_ = vs.Delete("k1")
	log = append(log, checkpoint(t, src, nil)...)
	src.Close()

	dst := openMem(t, vfs.NewMem())
	defer dst.Close()
	if err := dst.Apply("log", log, int64(len(log))); err != nil {
		t.Fatal(err)
	}
	vs2, _ := Value[string](dst, spec, strCodec{})
	if _, ok, _ := vs2.Get("k1"); ok {
		t.Fatal("k1 should be deleted by the tombstone")
	}
	if v, _, _ := vs2.Get("k2"); v != "two" {
		t.Fatalf("k2 = %q", v)
	}
	if off, _ := dst.Offset("log"); off != 3 {
		t.Fatalf("offset = %d", off)
	}
}

func TestTTL(t *testing.T) {
	now := time.UnixMilli(1_000_000)
	s := openMem(t, vfs.NewMem(), func(o *Options) { o.Now = func() time.Time { return now } })
	defer s.Close()
	vs, _ := Value[int64](s, Spec{Operator: "op", Name: "ttl", Log: "log", TTL: time.Minute}, int64Codec{})
	_ = vs.Set("k", 1)
	now = now.Add(59 * time.Second)
	if _, ok, _ := vs.Get("k"); !ok {
		t.Fatal("expired too early")
	}
	now = now.Add(2 * time.Second)
	if _, ok, _ := vs.Get("k"); ok {
		t.Fatal("not expired after TTL")
	}
	muts := checkpoint(t, s, nil)
	if len(muts) != 1 || muts[0].Value != nil {
		t.Fatalf("expiry should write one tombstone, got %+v", muts)
	}
}

func TestListAndMapState(t *testing.T) {
	fs := vfs.NewMem()
	s := openMem(t, fs)
	ls, _ := List[string](s, Spec{Operator: "op", Name: "l", Log: "log"}, strCodec{})
	ms, _ := Map[int64](s, Spec{Operator: "op", Name: "m", Log: "log"}, int64Codec{})
	for i := 0; i < 3; i++ {
		_ = ls.Append("k", fmt.Sprint(i))
		_ = ms.Put("k", fmt.Sprint("u", i), int64(i))
	}
	_ = ms.Remove("k", "u1")
	checkpoint(t, s, nil)
	s.Close()

	s = openMem(t, fs)
	defer s.Close()
	ls, _ = List[string](s, Spec{Operator: "op", Name: "l", Log: "log"}, strCodec{})
	ms, _ = Map[int64](s, Spec{Operator: "op", Name: "m", Log: "log"}, int64Codec{})
	l, _ := ls.Get("k")
	if fmt.Sprint(l) != "[0 1 2]" {
		t.Fatalf("list = %v", l)
	}
	keys, vals, _ := ms.Entries("k")
	if fmt.Sprint(keys, vals) != "[u0 u2] [0 2]" {
		t.Fatalf("map = %v %v", keys, vals)
	}
}

func TestTimersPersist(t *testing.T) {
	fs := vfs.NewMem()
	s := openMem(t, fs)
	tm, err := NewTimers(s, Spec{Operator: "w", Name: "timers", Log: "log"})
	if err != nil {
		t.Fatal(err)
	}
	_ = tm.Register(300, "c")
	_ = tm.Register(-5, "neg")
	_ = tm.Register(100, "a")
	_ = tm.Register(100, "a")
	_ = tm.Register(200, "b")
	_ = tm.Delete(200, "b")
	checkpoint(t, s, nil)
	s.Close()

	s = openMem(t, fs)
	defer s.Close()
	tm, _ = NewTimers(s, Spec{Operator: "w", Name: "timers", Log: "log"})
	var got []string
	for {
		ts, k, ok, err := tm.Pop(250)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		got = append(got, fmt.Sprint(ts, k))
	}
	if fmt.Sprint(got) != "[-5neg 100a]" {
		t.Fatalf("fired %v", got)
	}
	if next, _ := tm.Next(); next != 300 || tm.Len() != 1 {
		t.Fatalf("next = %d len %d", next, tm.Len())
	}
}

func TestEvictionKeepsDirty(t *testing.T) {
	s := openMem(t, vfs.NewMem(), func(o *Options) { o.MaxCachedEntries = 100 })
	defer s.Close()
	vs, _ := Value[int64](s, Spec{Operator: "op", Name: "v", Log: "log"}, int64Codec{})
	for i := 0; i < 100; i++ {
		_ = vs.Set(fmt.Sprint(i), int64(i))
	}
	if !s.NeedsFlush() {
		t.Fatal("100 dirty entries in a 100-entry cache should ask for a checkpoint")
	}
	checkpoint(t, s, nil)
	for i := 100; i < 300; i++ {
		_, _, _ = vs.Get(fmt.Sprint(i)) // misses fill the cache with clean entries
	}
	if s.Cached() > 100 {
		t.Fatalf("cache holds %d entries, bound is 100", s.Cached())
	}
	for i := 0; i < 100; i++ {
		if v, ok, _ := vs.Get(fmt.Sprint(i)); !ok || v != int64(i) {
			t.Fatalf("key %d = %d,%v after eviction", i, v, ok)
		}
	}
}

func TestExportLogs(t *testing.T) {
	s := openMem(t, vfs.NewMem())
	defer s.Close()
	a, _ := Value[string](s, Spec{Operator: "a", Name: "v", Log: "job-a-changelog"}, strCodec{})
	b, _ := Value[string](s, Spec{Operator: "b", Name: "v", Log: "job-b-changelog"}, strCodec{})
	tbl, _ := Value[string](s, Spec{Operator: "join", Name: "versions"}, strCodec{})
	_ = a.Set("k1", "x")
	_ = b.Set("k2", "y")
	_ = tbl.Set("k3", "from-source")
	muts := checkpoint(t, s, map[string]int64{"job-a-changelog": 1})
	got := map[string]int{}
	err := s.ExportLogs(func(log string, key, value []byte) error {
		got[log]++
		for _, m := range muts {
			if m.Log == log && string(m.Key) == string(key) && string(m.Value) != string(value) {
				t.Errorf("%s %q: exported %q, changelog had %q", log, key, value, m.Value)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got["job-a-changelog"] != 1 || got["job-b-changelog"] != 1 || len(got) != 2 {
		t.Fatalf("exported %v; the source-backed handle must not be exported", got)
	}
}

// TestFullCacheKeepsEveryWrite writes through a tiny cache that is full of
// clean entries (reads of other keys), so every write finds it full: each
// Set, Delete and map Put must survive the checkpoint. The expected state is
// a plain Go map of what was written.
func TestFullCacheKeepsEveryWrite(t *testing.T) {
	fs := vfs.NewMem()
	s := openMem(t, fs, func(o *Options) { o.MaxCachedEntries = 100 })
	vs, err := Value[int64](s, Spec{Operator: "op", Name: "v", Log: "v-log"}, int64Codec{})
	if err != nil {
		t.Fatal(err)
	}
	ms, err := Map[int64](s, Spec{Operator: "op", Name: "m", Log: "m-log"}, int64Codec{})
	if err != nil {
		t.Fatal(err)
	}
	// Committed keys to delete later, and to read (clean cache entries).
	for i := 0; i < 500; i++ {
		if err := vs.Set(fmt.Sprintf("old-%d", i), int64(i)); err != nil {
			t.Fatal(err)
		}
	}
	checkpoint(t, s, nil)
	wantV := map[string]int64{}
	for i := 0; i < 500; i++ {
		wantV[fmt.Sprintf("old-%d", i)] = int64(i)
	}
	wantM := map[string]int64{}
	for i := 0; i < 2000; i++ {
		if _, _, err := vs.Get(fmt.Sprintf("old-%d", (i*7)%500)); err != nil { // a clean entry
			t.Fatal(err)
		}
		k := fmt.Sprintf("new-%d", i)
		if err := vs.Set(k, int64(i)); err != nil {
			t.Fatal(err)
		}
		wantV[k] = int64(i)
		if i%4 == 0 {
			d := fmt.Sprintf("old-%d", i/4)
			if err := vs.Delete(d); err != nil {
				t.Fatal(err)
			}
			delete(wantV, d)
		}
		mk := fmt.Sprintf("rk-%d", i)
		if err := ms.Put(mk, "u", int64(i)); err != nil {
			t.Fatal(err)
		}
		wantM[mk] = int64(i)
		if s.NeedsFlush() {
			checkpoint(t, s, nil)
		}
	}
	checkpoint(t, s, nil)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openMem(t, fs)
	vs, _ = Value[int64](s, Spec{Operator: "op", Name: "v", Log: "v-log"}, int64Codec{})
	ms, _ = Map[int64](s, Spec{Operator: "op", Name: "m", Log: "m-log"}, int64Codec{})
	gotV := map[string]int64{}
	if err := vs.Scan(func(k string, v int64) error { gotV[k] = v; return nil }); err != nil {
		t.Fatal(err)
	}
	lost := 0
	for k, v := range wantV {
		if g, ok := gotV[k]; !ok || g != v {
			lost++
		}
	}
	for k := range gotV {
		if _, ok := wantV[k]; !ok {
			lost++ // a delete that did not reach Pebble
		}
	}
	for k, v := range wantM {
		if g, ok, err := ms.Get(k, "u"); err != nil || !ok || g != v {
			lost++
		}
	}
	if lost > 0 {
		t.Fatalf("%d of %d writes lost through a full cache", lost, len(wantV)+len(wantM)+500)
	}
}

// TestMapUpdateMatchesModel: Update is a read-modify-write of one map
// entry; a plain Go map with the same TTL rule is the reference, under a
// cache small enough to evict on every call, across checkpoints and a
// reopen.
func TestMapUpdateMatchesModel(t *testing.T) {
	fs := vfs.NewMem()
	now := time.UnixMilli(1_000_000)
	clock := func(o *Options) { o.Now = func() time.Time { return now }; o.MaxCachedEntries = 16 }
	s := openMem(t, fs, clock)
	spec := Spec{Operator: "op", Name: "m", Log: "log", TTL: 10 * time.Second}
	ms, err := Map[int64](s, spec, int64Codec{})
	if err != nil {
		t.Fatal(err)
	}
	type mv struct{ v, expireAt int64 }
	model := map[string]mv{}
	key := func(i int) (string, string) { return fmt.Sprint("rk-", i%37), fmt.Sprint("u-", i%5) }
	for i := 0; i < 3000; i++ {
		rk, uk := key(i * 7)
		mk := rk + "/" + uk
		m, ok := model[mk]
		if ok && m.expireAt <= now.UnixMilli() {
			ok = false
		}
		wantOld := int64(0)
		if ok {
			wantOld = m.v
		}
		got, found, err := ms.Update(rk, uk, func(old int64, found bool) int64 {
			if found != ok || old != wantOld {
				t.Fatalf("step %d: fn saw (%d, %v), model (%d, %v)", i, old, found, wantOld, ok)
			}
			return old + int64(i%11) + 1
		})
		if err != nil {
			t.Fatal(err)
		}
		want := wantOld + int64(i%11) + 1
		if got != want || found != ok {
			t.Fatalf("step %d: Update = (%d, %v), model (%d, %v)", i, got, found, want, ok)
		}
		model[mk] = mv{want, now.UnixMilli() + spec.TTL.Milliseconds()}
		now = now.Add(time.Duration(i%3) * 100 * time.Millisecond)
		if s.NeedsFlush() || i%500 == 499 {
			checkpoint(t, s, nil)
		}
		if i == 1500 {
			checkpoint(t, s, nil)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s = openMem(t, fs, clock)
			if ms, err = Map[int64](s, spec, int64Codec{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	for mk, m := range model {
		var rk, uk string
		fmt.Sscanf(strings.Replace(mk, "/", " ", 1), "%s %s", &rk, &uk)
		v, ok, err := ms.Get(rk, uk)
		if err != nil {
			t.Fatal(err)
		}
		live := m.expireAt > now.UnixMilli()
		if ok != live || (ok && v != m.v) {
			t.Fatalf("%s: Get = (%d, %v), model (%d, %v)", mk, v, ok, m.v, live)
		}
	}
	s.Close()
}
