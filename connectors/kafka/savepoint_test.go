package kafka_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/loanflow/loanflow/connectors/kafka"
	"github.com/loanflow/loanflow/internal/testenv"
)

// The savepoint's files as the test reads them (docs/design.md,
// "Savepoints"): its own decoding, not the worker's.
type spRecord struct {
	Offset    int64       `json:"o"`
	Key       []byte      `json:"k,omitempty"`
	Value     []byte      `json:"v,omitempty"`
	Timestamp int64       `json:"t"`
	Headers   [][2][]byte `json:"h,omitempty"`
}

type spTask struct {
	Task     string                     `json:"task"`
	Worker   string                     `json:"worker"`
	Offsets  map[string]int64           `json:"offsets"`
	Writes   map[string]map[int32]int64 `json:"writes"`
	InFlight map[string]int64           `json:"in_flight"`
}

// marker is a watermark marker's header (uvarint writer task, varint
// watermark, one byte idle flag), encoded by the test.
func marker(writer uint64, wm int64, idle bool) []byte {
	b := binary.AppendUvarint(nil, writer)
	b = binary.AppendVarint(b, wm)
	if idle {
		return append(b, 1)
	}
	return append(b, 0)
}

// idleHeader reports whether a record's headers hold an idle marker.
func idleHeader(keys []string, values [][]byte) bool {
	for i, k := range keys {
		if k != "lf-wm" {
			continue
		}
		b := values[i]
		if _, n := binary.Uvarint(b); n > 0 {
			if _, m := binary.Varint(b[n:]); m > 0 && len(b) == n+m+1 {
				return b[n+m] == 1
			}
		}
	}
	return false
}

// TestSavepointRestoreDropsIdleMarkers plants an idle and a non-idle
// watermark marker at the end of every in-flight copy of a savepoint,
// restores it, and checks each recreated repartition partition starts with
// with exactly the saved records minus the idle markers, in order. An idle
// marker in flight is the previous run's: a reader that believes it leaves
// the restored writer out of its watermark and drops that writer's records
// as late once the other writers passed them (TestOlderSavepointRestores
// lost window records that way, ~1 run in 5 under load).
func TestSavepointRestoreDropsIdleMarkers(t *testing.T) {
	testenv.EachBroker(t, func(t *testing.T, _ string, seeds []string) {
		r := newRun(t, seeds, "spidle", 2000, 2)
		produce(t, seeds, r.d.events)
		run := func(cfg kafka.Config) (*kafka.Worker, chan error) {
			cfg.Brokers, cfg.StateDir = seeds, t.TempDir()
			w, err := kafka.NewWorker(enrichJob(r.job, r.tp), cfg)
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- w.Run(context.Background()) }()
			return w, done
		}
		stop := func(w *kafka.Worker, done chan error, dir string) {
			t.Helper()
			if err := w.StopWithSavepoint(context.Background(), dir); err != nil {
				t.Fatalf("stop: %v", err)
			}
			if err := <-done; err != nil {
				t.Fatalf("run: %v", err)
			}
		}
		w, done := run(kafka.Config{WorkerID: "first"})
		runUntil(t, 2*time.Minute, "some output", func() bool { return r.c.get(r.tp.Scored) >= 200 })
		sp := filepath.Join(t.TempDir(), "savepoint")
		stop(w, done, sp)

		// Plant the markers; what each partition must start with after the
		// restore is the copy without its idle markers.
		type part struct {
			topic string
			p     int32
		}
		want := map[part][]spRecord{}
		planted := 0
		tasks, err := filepath.Glob(filepath.Join(sp, "tasks", "*", "offsets.json"))
		if err != nil || len(tasks) == 0 {
			t.Fatalf("savepoint tasks: %v %v", tasks, err)
		}
		for _, path := range tasks {
			var st spTask
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(b, &st); err != nil {
				t.Fatal(err)
			}
			_, ps, _ := strings.Cut(st.Task, "_")
			pn, err := strconv.Atoi(ps)
			if err != nil {
				t.Fatalf("task %q: %v", st.Task, err)
			}
			p := int32(pn)
			for topic, end := range st.InFlight {
				file := filepath.Join(filepath.Dir(path), "inflight", topic)
				var recs []spRecord
				raw, err := os.ReadFile(file)
				if err != nil {
					t.Fatal(err)
				}
				dec := json.NewDecoder(bytes.NewReader(raw))
				for dec.More() {
					var sr spRecord
					if err := dec.Decode(&sr); err != nil {
						t.Fatal(err)
					}
					recs = append(recs, sr)
				}
				recs = append(recs,
					spRecord{Offset: end, Timestamp: t0, Headers: [][2][]byte{{[]byte("lf-wm"), marker(0, t0, true)}}},
					spRecord{Offset: end + 1, Timestamp: t0, Headers: [][2][]byte{{[]byte("lf-wm"), marker(0, t0, false)}}})
				planted++
				var out bytes.Buffer
				enc := json.NewEncoder(&out)
				var kept []spRecord
				for _, sr := range recs {
					if err := enc.Encode(sr); err != nil {
						t.Fatal(err)
					}
					var keys []string
					var vals [][]byte
					for _, h := range sr.Headers {
						keys, vals = append(keys, string(h[0])), append(vals, h[1])
					}
					if !idleHeader(keys, vals) {
						kept = append(kept, sr)
					}
				}
				if len(kept) != len(recs)-countIdle(recs) || countIdle(recs) == 0 {
					t.Fatalf("the test's marker decoding does not see the planted idle marker")
				}
				want[part{topic, p}] = kept
				if err := os.WriteFile(file, out.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
				st.InFlight[topic] = end + 2
			}
			b, _ = json.Marshal(st)
			if err := os.WriteFile(path, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if planted == 0 {
			t.Fatal("the savepoint has no in-flight copy to plant markers in")
		}

		// The restore alone: a running worker would consume the restored
		// records and purge them from the topic.
		w2, err := kafka.NewWorker(enrichJob(r.job, r.tp), kafka.Config{Brokers: seeds, StateDir: t.TempDir(), WorkerID: "second", FromSavepoint: sp})
		if err != nil {
			t.Fatal(err)
		}
		if err := kafka.RestoreOnly(context.Background(), w2); err != nil {
			t.Fatalf("restore: %v", err)
		}
		for pt, kept := range want {
			var got []spRecord
			for _, rec := range readAll(t, seeds, pt.topic) {
				if rec.Partition != pt.p || len(got) == len(kept) {
					continue
				}
				sr := spRecord{Key: rec.Key, Value: rec.Value, Timestamp: rec.Timestamp.UnixMilli()}
				for _, h := range rec.Headers {
					sr.Headers = append(sr.Headers, [2][]byte{[]byte(h.Key), h.Value})
				}
				got = append(got, sr)
			}
			if len(got) != len(kept) {
				t.Fatalf("%s/%d holds %d records after the restore, want the %d saved ones but idle markers", pt.topic, pt.p, len(got), len(kept))
			}
			for i := range kept {
				if !sameRecord(got[i], kept[i]) {
					t.Fatalf("%s/%d record %d after the restore: headers %q value %q, want headers %q value %q (an idle marker of the previous run restored?)",
						pt.topic, pt.p, i, got[i].Headers, got[i].Value, kept[i].Headers, kept[i].Value)
				}
			}
		}
		t.Logf("%d in-flight copies, each with a planted idle marker: none restored, every other record restored in order", planted)
	})
}

func countIdle(recs []spRecord) int {
	n := 0
	for _, sr := range recs {
		var keys []string
		var vals [][]byte
		for _, h := range sr.Headers {
			keys, vals = append(keys, string(h[0])), append(vals, h[1])
		}
		if idleHeader(keys, vals) {
			n++
		}
	}
	return n
}

func sameRecord(a, b spRecord) bool {
	if !bytes.Equal(a.Key, b.Key) || !bytes.Equal(a.Value, b.Value) || a.Timestamp != b.Timestamp || len(a.Headers) != len(b.Headers) {
		return false
	}
	for i := range a.Headers {
		if !bytes.Equal(a.Headers[i][0], b.Headers[i][0]) || !bytes.Equal(a.Headers[i][1], b.Headers[i][1]) {
			return false
		}
	}
	return true
}
