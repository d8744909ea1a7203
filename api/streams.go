package api

import (
	"net/http"
	"sync"
	"time"
)

// lenderSlots counts one kind of long-lived request (SSE streams,
// long-polls) per lender against a per-lender cap, so one lender cannot
// hold every slot of the server-wide limit.
type lenderSlots struct {
	mu  sync.Mutex
	max int
	n   map[string]int
}

func (l *lenderSlots) acquire(lender string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n == nil {
		l.n = map[string]int{}
	}
	if l.n[lender] >= l.max {
		return false
	}
	l.n[lender]++
	return true
}

func (l *lenderSlots) release(lender string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n[lender]--; l.n[lender] <= 0 {
		delete(l.n, lender)
	}
}

func (l *lenderSlots) count(lender string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n[lender]
}

// extendDeadlines lifts the server's read and write timeouts for a
// long-lived response: until is the new deadline (zero: none, for SSE,
// which ends with the client, the server or a slow-subscriber drop).
func extendDeadlines(w http.ResponseWriter, until time.Time) {
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(until)
	_ = rc.SetWriteDeadline(until)
}
