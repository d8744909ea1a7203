package operators_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/loanflow/loanflow/operators"
	"github.com/loanflow/loanflow/pipeline"
	"github.com/loanflow/loanflow/state"
)

func decodeString(raw *pipeline.RawRecord) (string, error) { return string(raw.Value), nil }

// checkDeadLetter checks that the only dead letter carries want as its
// value and no source record (the record being fed when it was written is
// an unrelated one).
func checkDeadLetter(t *testing.T, l *pipeline.Local, want []byte) {
	t.Helper()
	dls := l.DeadLetters()
	if len(dls) != 1 {
		t.Fatalf("%d dead letters, want 1: %+v", len(dls), dls)
	}
	d := dls[0]
	if d.Source != nil {
		t.Errorf("dead letter names source %s/%d@%d (value %q), a record that did not fail", d.Source.Topic, d.Source.Partition, d.Source.Offset, d.Source.Value)
	}
	if string(d.Value) != string(want) {
		t.Errorf("dead letter value %q, want the failed input %q", d.Value, want)
	}
}

// TestAsyncDeadLetterCarriesFailedInput: a call fails every attempt while
// another record waits for room behind it (capacity 1); its completion,
// which starts the waiting record's call, is handled after that record
// was fed. The dead letter must carry the failed input, encoded with
// InCodec, and not the last record fed.
func TestAsyncDeadLetterCarriesFailedInput(t *testing.T) {
	inCodec := pipeline.JSONCodec[string]()
	release := make(chan struct{})
	b := pipeline.NewBuilder("async-dlq")
	src := pipeline.AddSource(b, "apps", pipeline.SourceSpec[string]{Topic: "apps", Decode: decodeString})
	out := operators.Async(src, "bureau", operators.AsyncSpec[string, string]{
		Call: func(ctx context.Context, v string) (string, error) {
			if v == "bad" {
				<-release
				return "", errors.New("bureau unavailable")
			}
			return v, nil
		},
		Capacity: 1,
		Retry:    operators.RetryPolicy{MaxAttempts: 1},
		InCodec:  inCodec,
	})
	pipeline.Discard(out)
	l, err := pipeline.NewLocal(b, pipeline.LocalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.FeedRaw("apps", pipeline.RawRecord{Topic: "apps", Offset: 7, Value: []byte("bad")}); err != nil {
		t.Fatal(err)
	}
	close(release)
	if err := l.FeedRaw("apps", pipeline.RawRecord{Topic: "apps", Offset: 8, Value: []byte("good")}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); len(l.DeadLetters()) == 0 && time.Now().Before(deadline); {
		if _, err := l.AwaitWork(100 * time.Millisecond); err != nil {
			t.Fatal(err)
		}
	}
	want, _ := inCodec.Encode(nil, "bad")
	checkDeadLetter(t, l, want)
}

// TestWindowDeadLetterCarriesWindowContents: a window function fails when
// its window fires, which the watermark of a later record causes. The dead
// letter must carry the window's records (what the operator has), not the
// later record.
func TestWindowDeadLetterCarriesWindowContents(t *testing.T) {
	b := pipeline.NewBuilder("window-dlq")
	src := pipeline.AddSource(b, "events", pipeline.SourceSpec[string]{Topic: "events", Decode: decodeString})
	keyed := pipeline.KeyBy(src, "by-value", func(v string) string { return v })
	res := operators.ProcessWindow(keyed, "fail", operators.WindowOptions[string]{Assigner: operators.Tumbling(10 * time.Second)},
		func(key string, w operators.Window, in []string) (string, error) {
			if key == "bad" {
				return "", fmt.Errorf("cannot summarise %d records", len(in))
			}
			return key, nil
		}, pipeline.StringCodec())
	pipeline.Discard(res)
	l, err := pipeline.NewLocal(b, pipeline.LocalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.FeedRaw("events", pipeline.RawRecord{Topic: "events", Offset: 1, Value: []byte("bad"), Timestamp: 1000}); err != nil {
		t.Fatal(err)
	}
	if err := l.FeedRaw("events", pipeline.RawRecord{Topic: "events", Offset: 2, Value: []byte("later"), Timestamp: 30_000}); err != nil {
		t.Fatal(err)
	}
	want, _ := state.ListCodec[string](pipeline.StringCodec()).Encode(nil, []string{"bad"})
	checkDeadLetter(t, l, want)
}

// TestJoinDeadLetterCarriesHeldProbe: a probe waits for the table side;
// a table record moves the table watermark past it, and the join function
// fails for it. The dead letter must carry the probe, not the table record
// being fed.
func TestJoinDeadLetterCarriesHeldProbe(t *testing.T) {
	probeCodec := pipeline.JSONCodec[string]()
	b := pipeline.NewBuilder("join-dlq")
	probes := pipeline.KeyBy(pipeline.AddSource(b, "probes", pipeline.SourceSpec[string]{Topic: "probes", Decode: decodeString}),
		"probe-key", func(v string) string { return v[:1] }, pipeline.NoRepartition())
	table := pipeline.KeyBy(pipeline.AddSource(b, "table", pipeline.SourceSpec[string]{Topic: "table", Decode: decodeString}),
		"table-key", func(v string) string { return v[:1] }, pipeline.NoRepartition())
	joined := operators.TemporalJoin(probes, table, "join", operators.TemporalJoinSpec[string, string, string]{
		Join: func(p string, row *operators.Versioned[string]) (string, error) {
			if p == "a-bad" {
				return "", errors.New("cannot price")
			}
			return p, nil
		},
		ProbeCodec: probeCodec,
		TableCodec: pipeline.StringCodec(),
	})
	pipeline.Discard(joined)
	l, err := pipeline.NewLocal(b, pipeline.LocalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.FeedRaw("table", pipeline.RawRecord{Topic: "table", Offset: 0, Value: []byte("a-v1"), Timestamp: 500}); err != nil {
		t.Fatal(err)
	}
	if err := l.FeedRaw("probes", pipeline.RawRecord{Topic: "probes", Offset: 0, Value: []byte("a-bad"), Timestamp: 1000}); err != nil {
		t.Fatal(err)
	}
	if n := len(l.DeadLetters()); n != 0 {
		t.Fatalf("the probe was answered before the table passed it (%d dead letters)", n)
	}
	if err := l.FeedRaw("table", pipeline.RawRecord{Topic: "table", Offset: 1, Value: []byte("b-v1"), Timestamp: 5000}); err != nil {
		t.Fatal(err)
	}
	want, _ := probeCodec.Encode(nil, "a-bad")
	checkDeadLetter(t, l, want)
}
