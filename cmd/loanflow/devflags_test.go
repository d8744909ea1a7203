package main

import (
	"strings"
	"testing"
	"time"
)

func TestParseCommitIntervals(t *testing.T) {
	got, err := parseCommitIntervals("decisions=50ms, portfolio=1s")
	if err != nil || len(got) != 2 || got["decisions"] != 50*time.Millisecond || got["portfolio"] != time.Second {
		t.Errorf("pairs: %v, %v", got, err)
	}
	got, err = parseCommitIntervals("300ms")
	if err != nil || len(got) != 3 || got["cache-invalidation"] != 300*time.Millisecond {
		t.Errorf("one duration for every job: %v, %v", got, err)
	}
	for _, bad := range []string{"decisions", "decisions=fast", "decisions=1s,portfolio"} {
		if _, err := parseCommitIntervals(bad); err == nil || !strings.Contains(err.Error(), "JOB=DURATION") {
			t.Errorf("%q: %v, want an error naming the JOB=DURATION form", bad, err)
		}
	}
	// The default round-trips.
	if got, err := parseCommitIntervals(formatCommitIntervals(map[string]time.Duration{"decisions": 100 * time.Millisecond})); err != nil || got["decisions"] != 100*time.Millisecond {
		t.Errorf("round trip: %v, %v", got, err)
	}
}

func TestParseSteps(t *testing.T) {
	got, err := parseSteps("1000:1m,3000:5m")
	if err != nil || len(got) != 2 || got[1].Rate != 3000 || got[1].Duration != 5*time.Minute {
		t.Errorf("%v, %v", got, err)
	}
	for _, bad := range []string{"1000", "x:1m", "100:0s", "-5:1s"} {
		if _, err := parseSteps(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}
