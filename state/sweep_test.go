package state

import (
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestSweepExpiresUnreadKeys writes TTL'd keys that are never read again
// (the decisions job's dedupe of unique application ids), moves the clock
// past their TTL and runs the sweep with checkpoints, through a cache too
// small to hold all the deletions at once. The expected state is a plain
// map of key → last write time: the changelog must get one tombstone per
// expired key, Pebble must keep only the live keys, the census must count
// them, and a store restored from the changelog must hold nothing expired.
func TestSweepExpiresUnreadKeys(t *testing.T) {
	const ttl = 24 * time.Hour
	now := time.UnixMilli(1_000_000_000)
	fs := vfs.NewMem()
	clock := func(o *Options) { o.Now = func() time.Time { return now }; o.MaxCachedEntries = 1000 }
	s := openMem(t, fs, clock)
	seenSpec := Spec{Operator: "dedupe", Name: "seen", Log: "dedupe-log", TTL: ttl}
	plainSpec := Spec{Operator: "totals", Name: "sum", Log: "totals-log"}
	seen, _ := Value[bool](s, seenSpec, boolCodec{})
	plain, _ := Value[int64](s, plainSpec, int64Codec{})

	written := map[string]time.Time{} // the model: key → last write
	var log []Mutation
	set := func(k string) {
		if err := seen.Set(k, true); err != nil {
			t.Fatal(err)
		}
		written[k] = now
		if s.NeedsFlush() {
			log = append(log, checkpoint(t, s, nil)...)
		}
	}
	for i := 0; i < 3000; i++ {
		set(fmt.Sprintf("old-%d", i))
	}
	for i := 0; i < 50; i++ {
		_ = plain.Set(fmt.Sprint(i), int64(i))
	}
	log = append(log, checkpoint(t, s, nil)...)
	now = now.Add(12 * time.Hour)
	for i := 0; i < 1000; i++ {
		set(fmt.Sprintf("new-%d", i))
	}
	for i := 0; i < 200; i++ {
		set(fmt.Sprintf("old-%d", i)) // written again: TTL refreshed
	}
	log = append(log, checkpoint(t, s, nil)...)
	now = now.Add(12*time.Hour + time.Second)
	set("old-2999") // an expired key written again, not yet checkpointed

	live := map[string]bool{}
	var wantTombs []string
	for k, at := range written {
		if at.Add(ttl).After(now) {
			live[k] = true
		} else {
			wantTombs = append(wantTombs, k)
		}
	}
	sort.Strings(wantTombs)

	start := len(log)
	passes := 0
	for calls := 0; passes < 2; calls++ {
		if calls > 1000 {
			t.Fatal("the sweep does not finish its passes")
		}
		res, err := s.Sweep(500)
		if err != nil {
			t.Fatal(err)
		}
		if res.Visited > 500 {
			t.Fatalf("a sweep with budget 500 read %d entries", res.Visited)
		}
		if res.PassDone {
			passes++
		}
		if s.NeedsFlush() || res.PassDone {
			log = append(log, checkpoint(t, s, nil)...)
		}
	}
	var gotTombs []string
	for _, m := range log[start:] {
		if m.Log == "dedupe-log" && m.Value == nil {
			gotTombs = append(gotTombs, string(m.Key[4:]))
		}
	}
	sort.Strings(gotTombs)
	if fmt.Sprint(gotTombs) != fmt.Sprint(wantTombs) {
		t.Errorf("changelog got %d tombstones, want %d (one per expired key)", len(gotTombs), len(wantTombs))
	}

	census, ok := s.Census()
	if !ok {
		t.Fatal("no census after two passes")
	}
	got := map[string]int64{}
	for _, c := range census {
		got[c.Operator+"/"+c.Name] = c.Entries
	}
	if got["dedupe/seen"] != int64(len(live)) || got["totals/sum"] != 50 || s.LiveEntries() != int64(len(live)+50) {
		t.Errorf("census %v (total %d), want dedupe/seen %d and totals/sum 50", got, s.LiveEntries(), len(live))
	}
	stored := map[string]int{}
	if err := s.ExportLogs(func(l string, _, _ []byte) error { stored[l]++; return nil }); err != nil {
		t.Fatal(err)
	}
	if stored["dedupe-log"] != len(live) {
		t.Errorf("Pebble holds %d dedupe entries, want the %d live ones (of %d written)", stored["dedupe-log"], len(live), len(written))
	}
	s.Close()

	// Restoring from the changelog resurrects nothing: a sweep of the
	// restored state finds no expired entry.
	r := openMem(t, vfs.NewMem(), clock)
	defer r.Close()
	byLog := map[string][]Mutation{}
	for _, m := range log {
		byLog[m.Log] = append(byLog[m.Log], m)
	}
	for l, muts := range byLog {
		if err := r.Apply(l, muts, int64(len(muts))); err != nil {
			t.Fatal(err)
		}
	}
	rseen, err := Value[bool](r, seenSpec, boolCodec{})
	if err != nil {
		t.Fatal(err)
	}
	raw := 0
	if err := r.scan(rseen.Prefix(), func(_, _ []byte) error { raw++; return nil }); err != nil {
		t.Fatal(err)
	}
	if raw != len(live) {
		t.Fatalf("state restored from the changelog holds %d dedupe entries, want the %d live ones", raw, len(live))
	}
}

type boolCodec struct{}

func (boolCodec) Encode(dst []byte, v bool) ([]byte, error) {
	if v {
		return append(dst, 1), nil
	}
	return append(dst, 0), nil
}
func (boolCodec) Decode(src []byte) (bool, error) { return len(src) == 1 && src[0] == 1, nil }

// TestSweepMapState expires map entries of a record key whose map is
// cached (read since the last checkpoint) and of one that is not; a put
// made after the sweep, before the checkpoint, must survive it.
func TestSweepMapState(t *testing.T) {
	now := time.UnixMilli(1_000_000_000)
	s := openMem(t, vfs.NewMem(), func(o *Options) { o.Now = func() time.Time { return now } })
	defer s.Close()
	ms, _ := Map[int64](s, Spec{Operator: "op", Name: "m", Log: "m-log", TTL: time.Hour}, int64Codec{})
	for _, k := range []string{"cached", "cold"} {
		for u := 0; u < 3; u++ {
			_ = ms.Put(k, fmt.Sprint("u", u), int64(u))
		}
	}
	checkpoint(t, s, nil)
	s.Abort() // empty the cache: "cold" is not cached below
	now = now.Add(time.Hour)
	if _, _, err := ms.Entries("cached"); err != nil { // loads its map
		t.Fatal(err)
	}
	for res := (SweepResult{}); !res.PassDone; {
		var err error
		if res, err = s.Sweep(2); err != nil {
			t.Fatal(err)
		}
	}
	if err := ms.Put("cold", "u1", 42); err != nil { // after the sweep's deletion
		t.Fatal(err)
	}
	tombs := 0
	for _, m := range checkpoint(t, s, nil) {
		if m.Value == nil {
			tombs++
		}
	}
	if tombs != 6 {
		t.Errorf("%d tombstones, want 6 (every entry expired)", tombs)
	}
	stored := 0
	_ = s.ExportLogs(func(string, []byte, []byte) error { stored++; return nil })
	if v, ok, _ := ms.Get("cold", "u1"); !ok || v != 42 || stored != 1 {
		t.Fatalf("after the sweep Pebble holds %d entries and cold/u1 = %d,%v; want only cold/u1 = 42", stored, v, ok)
	}
}

// BenchmarkSweep measures one Sweep call of DefaultSweepBudget entries over
// 200,000 committed entries on disk, none expired: the cost the runtime
// adds per tick.
func BenchmarkSweep(b *testing.B) {
	s, err := Open(Options{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	vs, _ := Value[int64](s, Spec{Operator: "op", Name: "v", Log: "log", TTL: time.Hour}, int64Codec{})
	for i := 0; i < 200_000; i++ {
		_ = vs.Set(fmt.Sprintf("key-%08d", i), int64(i))
		if s.NeedsFlush() {
			_ = s.Flush(func(Mutation) error { return nil })
			_ = s.Commit(nil)
		}
	}
	_ = s.Flush(func(Mutation) error { return nil })
	_ = s.Commit(nil)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := s.Sweep(DefaultSweepBudget); err != nil {
			b.Fatal(err)
		}
	}
}

// TestSweepAfterAbort: a checkpoint that aborts drops the deletions a
// sweep pass had made so far; the pass starts over, so the first pass that
// completes afterwards deletes every expired key and counts none of them.
func TestSweepAfterAbort(t *testing.T) {
	now := time.UnixMilli(1_000_000_000)
	s := openMem(t, vfs.NewMem(), func(o *Options) { o.Now = func() time.Time { return now } })
	defer s.Close()
	vs, _ := Value[int64](s, Spec{Operator: "op", Name: "v", Log: "log", TTL: time.Minute}, int64Codec{})
	for i := 0; i < 10; i++ {
		_ = vs.Set(fmt.Sprint(i), int64(i))
	}
	checkpoint(t, s, nil)
	now = now.Add(time.Hour)
	if res, err := s.Sweep(5); err != nil || res.Expired != 5 {
		t.Fatalf("first half: %+v, %v", res, err)
	}
	if err := s.Flush(func(Mutation) error { return nil }); err != nil {
		t.Fatal(err)
	}
	s.Abort() // the transaction failed
	for res := (SweepResult{}); !res.PassDone; {
		var err error
		if res, err = s.Sweep(3); err != nil {
			t.Fatal(err)
		}
	}
	tombs := 0
	for _, m := range checkpoint(t, s, nil) {
		if m.Value == nil {
			tombs++
		}
	}
	if c, _ := s.Census(); tombs != 10 || len(c) != 0 {
		t.Fatalf("the pass after the abort wrote %d tombstones and counted %+v; want 10 and nothing", tombs, c)
	}
}
