package audit_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/loanflow/loanflow/api/audit"
)

// TestCommitDelayBatchesBackToBackEntries: entries that arrive within
// CommitDelay of the previous commit's end share one commit, however far
// apart the journal takes them; an entry after a quiet journal commits at
// once. CommitDelay is an hour, so only MaxBatch (10) can end the wait:
// each entry is sent only after the journal took the one before (its
// queue is empty) and 50ms later, so without the delay each would be a
// batch of its own (11 batches; checked by disabling the delay).
func TestCommitDelayBatchesBackToBackEntries(t *testing.T) {
	pool := newPool(t)
	j := audit.NewJournal(pool, newKeys(t), audit.JournalConfig{CommitDelay: time.Hour, MaxBatch: 10})
	defer j.Close()
	ctx := context.Background()
	entry := func(i int) audit.Entry {
		return audit.Entry{Actor: "c", Lender: "l", Action: "credit_profile.read", Resource: fmt.Sprintf("customer/%d", i),
			Purpose: "ACCOUNT_REVIEW", Result: audit.ResultOK}
	}
	// A quiet journal: committed at once, not an hour later.
	done := make(chan error, 1)
	go func() { done <- j.Append(ctx, entry(0)) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Minute):
		t.Fatal("an entry to a quiet journal waited for the commit delay")
	}
	var wg sync.WaitGroup
	errs := make(chan error, 10)
	for i := 1; i <= 10; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); errs <- j.Append(ctx, entry(i)) }()
		// Sent one at a time, apart: without the delay, the journal
		// would commit each before the next arrives.
		for deadline := time.Now().Add(time.Minute); j.Queued() > 0 && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
		time.Sleep(50 * time.Millisecond)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if b, r := j.Stats(); b != 2 || r != 11 {
		t.Fatalf("%d rows in %d commits, want 11 in 2 (one alone, then ten sharing a commit)", r, b)
	}
	if got := len(readRows(t, pool)); got != 11 {
		t.Fatalf("audit_log holds %d rows, want 11", got)
	}
}
