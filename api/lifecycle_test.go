package api

import (
	"github.com/loanflow/loanflow/api/auth"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestRateLimitPerLender(t *testing.T) {
	e := newEnv(t)
	// bank-rl's row overrides the server default with 1/s, burst 3.
	if err := e.srv.CreateLender(t.Context(), principalAdmin(), NewLender{LenderID: "bank-rl", Name: "RL", RateLimitPerSec: ptrTo(1.0), RateBurst: ptrTo(3)}); err != nil {
		t.Fatal(err)
	}
	cr := e.do("POST", "/v1/admin/clients", e.admin, NewClient{ClientID: "rl-client", LenderID: "bank-rl", Scopes: []string{"loans:write"}})
	var creds ClientCredentials
	cr.json(t, &creds)
	a := e.token(creds.ClientID, creds.ClientSecret)
	b := e.lender("bank-rl2")
	limited := 0
	for i := 0; i < 6; i++ {
		r := e.do("GET", "/v1/loans", a, nil)
		if r.status == 429 {
			limited++
			if s, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || s < 1 {
				t.Fatalf("Retry-After %q", r.header.Get("Retry-After"))
			}
		}
	}
	if limited == 0 {
		t.Fatal("no 429 after exceeding the burst")
	}
	if r := e.do("GET", "/v1/loans", b, nil); r.status != 200 {
		t.Fatalf("another lender is limited too: %d", r.status)
	}
}

// TestGracefulShutdown: a request in flight when shutdown starts completes;
// a long-poll ends promptly with its pending answer; health endpoints work.
func TestGracefulShutdown(t *testing.T) {
	e := newEnv(t)
	a := e.lender("bank-gs")
	for _, p := range []string{"/healthz", "/readyz"} {
		if r := e.do("GET", p, "", nil); r.status != 200 {
			t.Fatalf("%s: %d %s", p, r.status, r.body)
		}
	}
	type result struct {
		r   response
		err error
		at  time.Time
	}
	poll := make(chan result, 1)
	go func() {
		r, err := e.try("GET", "/v1/loan-applications/app-never/decision?timeout=25s", a, nil)
		poll <- result{r, err, time.Now()}
	}()
	time.Sleep(300 * time.Millisecond)
	began := time.Now()
	e.stopOnce()
	res := <-poll
	if res.err != nil || res.r.status != http.StatusAccepted {
		t.Fatalf("long-poll during shutdown: %v %d", res.err, res.r.status)
	}
	if res.at.Sub(began) > 10*time.Second {
		t.Fatalf("long-poll held shutdown for %v", res.at.Sub(began))
	}
	if _, err := e.try("GET", "/healthz", "", nil); err == nil {
		t.Fatal("server still accepting after shutdown")
	}
}

func ptrTo[T any](v T) *T { return &v }

func principalAdmin() auth.Principal {
	return auth.Principal{Subject: "test", Scopes: map[string]bool{auth.ScopeAdmin: true}}
}

func TestPipelineHealth(t *testing.T) {
	e := newEnv(t)
	r := e.do("GET", "/v1/admin/pipeline-health", e.admin, nil)
	var h Health
	r.json(t, &h)
	if r.status != 200 || len(h.Topics) < 3 || len(h.Notes) == 0 {
		t.Fatalf("health: %d %s", r.status, r.body)
	}
	page := e.do("GET", "/operator", e.admin, nil)
	if page.status != 200 || !strings.Contains(string(page.body), `id="jobs"`) {
		t.Fatalf("operator page: %d", page.status)
	}
	// A lender gets a page that says why, not a problem document.
	lender := e.lender("bank-op")
	r = e.do("GET", "/operator", lender, nil)
	if body := string(r.body); r.status != 403 || !strings.HasPrefix(r.header.Get("Content-Type"), "text/html") ||
		!strings.Contains(body, `<b id="lender">bank-op</b>`) || !strings.Contains(body, `href="/dashboard"`) {
		t.Fatalf("operator page for a lender: %d %s\n%s", r.status, r.header.Get("Content-Type"), body)
	}
	if r := e.do("GET", "/operator/events", lender, nil); r.status != 403 {
		t.Fatalf("operator stream for a lender: %d", r.status)
	}
}
