package devstack

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestCommitIntervalsValidated: a commit interval for a job the stack does
// not run, or out of range, stops the stack before it starts anything.
func TestCommitIntervalsValidated(t *testing.T) {
	for _, tc := range []struct {
		intervals map[string]time.Duration
		want      string
	}{
		{map[string]time.Duration{"decision": time.Second}, `"decision": no such job`},
		{map[string]time.Duration{"decisions": -time.Second}, "choose one within"},
		{map[string]time.Duration{"portfolio": time.Hour}, "choose one within"},
	} {
		err := Run(context.Background(), Config{Dir: t.TempDir(), CommitIntervals: tc.intervals}, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want an error with %q", tc.intervals, err, tc.want)
		}
	}
	c := Config{CommitIntervals: map[string]time.Duration{"portfolio": time.Second}}
	c.setDefaults()
	if c.CommitIntervals["portfolio"] != time.Second || c.CommitIntervals["decisions"] != DefaultCommitIntervals["decisions"] {
		t.Errorf("defaults merged: %v", c.CommitIntervals)
	}
}
