package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

// TestCallRetriesAsTold: a 503 with Retry-After (a stack still starting)
// is retried after it; a 503 without one is an error at once.
func TestCallRetriesAsTold(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		switch {
		case r.URL.Path == "/no-hint":
			w.WriteHeader(http.StatusServiceUnavailable)
		case n <= 2:
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusServiceUnavailable)
		default:
			_, _ = w.Write([]byte(`{"ok":true}`))
		}
	}))
	defer srv.Close()
	c := &apiClient{base: srv.URL, hc: &http.Client{Timeout: 10 * time.Second}, token: "t"}
	var out struct{ OK bool }
	if err := c.call(context.Background(), "POST", "/v1/x", map[string]string{}, &out); err != nil || !out.OK || calls.Load() != 3 {
		t.Fatalf("call: %v, %+v after %d calls, want ok after 3", err, out, calls.Load())
	}
	calls.Store(0)
	if err := c.call(context.Background(), "GET", "/no-hint", nil, nil); err == nil || calls.Load() != 1 {
		t.Fatalf("a 503 without Retry-After: %v after %d calls, want an error after 1", err, calls.Load())
	}
}
