package api

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// badIDs are path and query values a client can send that are not ids:
// NUL, invalid UTF-8, control characters, very long values.
var badIDs = []string{"%00", "%ff", "a%00b", "%c3%28", "AA", "_w", "%0a", "..%2f..", strings.Repeat("x", 500), "%e2%80%ae"}

// TestBadPathsAndParams: every lender route answers odd ids, query values
// and request ids with a 4xx problem, never a 5xx, and the audit chain
// stays writable (a request id or resource PostgreSQL cannot store must not
// turn data reads into 503s).
func TestBadPathsAndParams(t *testing.T) {
	e := newEnv(t)
	tok := e.lender("bank-bad")
	e.customer("c-bad", "Bad Input", "321-54-9876", "bank-bad")
	loan, _ := e.createLoan(tok, "bad-seed", "c-bad", "100.00")
	for _, id := range badIDs {
		for _, rt := range []struct{ method, path string }{
			{"GET", "/v1/credit-profiles/" + id + "?purpose=ACCOUNT_REVIEW"},
			{"GET", "/v1/loans/" + id},
			{"PATCH", "/v1/loans/" + id},
			{"GET", "/v1/loans?lender=" + id},
			{"GET", "/v1/loans?cursor=" + id},
			{"GET", "/v1/loan-applications/" + id + "/decision?timeout=0s"},
			{"GET", "/v1/decisions/stream?lender=" + id},
			{"GET", "/v1/portfolio?lender=" + id},
			{"GET", "/v1/credit-profiles/c-bad?purpose=" + id},
		} {
			var body any
			var hdr []string
			if rt.method == "PATCH" {
				body, hdr = map[string]string{"balance": "1.00"}, []string{"If-Match", `"1"`}
			}
			r, err := e.try(rt.method, rt.path, tok, body, hdr...)
			if err != nil {
				continue // the client refused to send it
			}
			if r.status >= 500 {
				t.Errorf("%s %s: %d %s", rt.method, rt.path, r.status, r.body)
			}
		}
	}
	// Request ids PostgreSQL cannot store (invalid UTF-8) or that are
	// unreasonable are replaced, not audited as sent.
	for _, rid := range []string{"\xff\xfe", "ok-\x80", strings.Repeat("r", 65), "a b"} {
		req := httptest.NewRequest("GET", "/v1/loans/"+loan.LoanID, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("X-Request-Id", rid)
		rec := httptest.NewRecorder()
		e.srv.Handler().ServeHTTP(rec, req)
		if rec.Code != http.StatusOK || rec.Header().Get("X-Request-Id") == rid {
			t.Errorf("X-Request-Id %q: %d, echoed %q", rid, rec.Code, rec.Header().Get("X-Request-Id"))
		}
	}
	if r := e.do("GET", "/v1/loans/"+loan.LoanID, tok, nil, "X-Request-Id", "client-req.42_A-b"); r.status != 200 || r.header.Get("X-Request-Id") != "client-req.42_A-b" {
		t.Errorf("a good request id is not kept: %d %q", r.status, r.header.Get("X-Request-Id"))
	}
}

func TestValidID(t *testing.T) {
	for _, ok := range []string{"a", "c-1", "ln_0123", "A.b:c-d_e", strings.Repeat("x", 64)} {
		if !validID(ok) {
			t.Errorf("validID(%q) = false", ok)
		}
	}
	for _, bad := range []string{"", " ", "a b", "a/b", "é", "\x00", "\xff", "a%", strings.Repeat("x", 65)} {
		if validID(bad) {
			t.Errorf("validID(%q) = true", bad)
		}
	}
}
