package main

import (
	"errors"
	"math"
	"testing"
	"time"
)

// TestLoadTrackerCounts: a decision counts for its application whether it
// is read before or after the 202; a decision of a submission without a
// 202 is reported apart; missing and duplicated decisions fail the run.
func TestLoadTrackerCounts(t *testing.T) {
	tr := newLoadTracker()
	for _, id := range []string{"ok", "early", "missing", "twice", "refused", "lost-202"} {
		tr.sending(id, id != "refused")
	}
	tr.decided("early", "CUSTOMER_360", time.Time{}) // read before its 202 was handled
	tr.answered("early", true, "")
	tr.answered("ok", true, "")
	tr.decided("ok", "CREDIT_BUREAU", time.Time{})
	tr.answered("missing", true, "")
	tr.answered("twice", true, "")
	tr.decided("twice", "FALLBACK", time.Time{})
	tr.decided("twice", "FALLBACK", time.Time{})
	tr.answered("refused", false, "HTTP 429 rate-limited")
	tr.answered("lost-202", false, "no response: EOF")
	tr.decided("lost-202", "CUSTOMER_360", time.Time{})
	tr.decided("other-run", "CUSTOMER_360", time.Time{})
	if got := tr.pending(); got != 1 {
		t.Errorf("pending %d, want 1 (missing)", got)
	}
	s := tr.summary("api", "run")
	want := [7]int{6, 4, 2, 3, 1, 1, 1}
	got := [7]int{s.Submitted, s.Accepted, s.Rejected, s.Decided, s.Missing, s.Duplicated, s.Unconfirmed}
	if got != want { // submitted, accepted, rejected, decided, missing, duplicated, unconfirmed
		t.Errorf("summary %+v, want %+v", got, want)
	}
	if s.RejectedBy["HTTP 429 rate-limited"] != 1 || s.RejectedBy["no response: EOF"] != 1 {
		t.Errorf("rejected by %v", s.RejectedBy)
	}
	if s.LatencyMs["ALL"].Count != 4 || s.LatencyMs["FALLBACK"].Count != 1 {
		t.Errorf("latency counts %+v", s.LatencyMs)
	}
	if err := s.err(); err == nil {
		t.Error("a run with a missing and a duplicated decision reports no error")
	}
}

func TestPercentile(t *testing.T) {
	ds := []time.Duration{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 5}, {0.9, 9}, {0.99, 10}, {0, 1}, {1, 10}} {
		if got := percentile(ds, c.q); got != c.want {
			t.Errorf("percentile(%v) = %v, want %v", c.q, got, c.want)
		}
	}
}

func TestErrorKind(t *testing.T) {
	for in, want := range map[string]string{
		`Post "http://127.0.0.1:1/v1/loan-applications": dial tcp 127.0.0.1:1: connect: connection refused`: "connection refused",
		`Post "http://x/y": EOF`:                                "EOF",
		`Post "http://x/y": read tcp: connection reset by peer`: "connection reset",
		`Post "http://x/y": something else`:                     "something else",
	} {
		if got := errorKind(errors.New(in)); got != want {
			t.Errorf("errorKind(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestLoadStages: the stage split of a decided application is submission
// to its 202, submission to the decision's decided_at, and decided_at to
// the read; the last two add up to its latency. A decision without
// decided_at (zero) is left out of those two stages. The expected values
// are the times the test sets.
func TestLoadStages(t *testing.T) {
	tr := newLoadTracker()
	tr.sending("a", true)
	tr.sending("b", true)
	base := time.Now().Add(-100 * time.Millisecond)
	tr.mu.apps["a"].sent, tr.mu.apps["b"].sent = base, base
	tr.answered("a", true, "")
	tr.answered("b", true, "")
	tr.decided("a", "CUSTOMER_360", base.Add(40*time.Millisecond))
	tr.decided("b", "CUSTOMER_360", time.Time{})
	s := tr.summary("api", "run")
	if got := s.StagesMs["answered"].Count; got != 2 {
		t.Fatalf("answered stage counts %d applications, want 2", got)
	}
	if d := s.StagesMs["decided"]; d.Count != 1 || d.P50 != 40 {
		t.Fatalf("decided stage %+v, want one application at 40 ms", d)
	}
	v, all := s.StagesMs["visible"], s.LatencyMs["ALL"]
	if v.Count != 1 || v.P50 < 60 {
		t.Fatalf("visible stage %+v, want one application at 60 ms or more", v)
	}
	// a's latency is decided + visible (b's latency, read later, is at least a's).
	if lat := tr.mu.apps["a"].latency; math.Abs(float64(lat.Microseconds())/1000-(40+v.P50)) > 0.0015 || all.Count != 2 {
		t.Fatalf("latency %v is not decided 40 ms + visible %v ms (ALL %+v)", lat, v.P50, all)
	}
}
