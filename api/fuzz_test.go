package api

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

// fuzzSetup starts a server for one fuzz target with a lender, a
// customer and a loan to aim at.
func fuzzSetup(f *testing.F) (*env, string, string) {
	e := newEnvFor(f)
	tok := e.lender("bank-fuzz")
	e.customer("c-fuzz", "Fuzz Person", "123-12-1234", "bank-fuzz")
	l, _ := e.createLoan(tok, "fuzz-seed", "c-fuzz", "100.00")
	return e, tok, l.LoanID
}

// fuzzRoute sends body to the handler in process and fails on a 5xx.
func fuzzRoute(f *testing.F, method string, path func(loan string) string, hdr map[string]string, seeds ...string) {
	e, fuzzTok, fuzzLoan := fuzzSetup(f)
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req := httptest.NewRequest(method, path(fuzzLoan), bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+fuzzTok)
		req.Header.Set("Content-Type", "application/json")
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		rec := httptest.NewRecorder()
		e.srv.Handler().ServeHTTP(rec, req)
		if rec.Code >= 500 && rec.Code != http.StatusServiceUnavailable {
			t.Fatalf("%s %s with %q: %d %s", method, req.URL.Path, body, rec.Code, rec.Body.String())
		}
	})
}

func FuzzCreateLoanBody(f *testing.F) {
	fuzzRoute(f, "POST", func(string) string { return "/v1/loans" }, map[string]string{"Idempotency-Key": "fuzz-key"},
		`{"customer_id":"c-fuzz","amount":"1500.00","currency":"USD","term_months":12}`,
		`{"customer_id":"c-fuzz","amount":"-1","currency":"usd","term_months":0}`,
		`{"customer_id":null,"amount":1e309}`, `[]`, `{"amount":"99999999999999999999.99"}`, "\x00", `{"a":`)
}

func FuzzPatchLoanBody(f *testing.F) {
	fuzzRoute(f, "PATCH", func(l string) string { return "/v1/loans/" + l }, map[string]string{"If-Match": `"1"`},
		`{"status":"PAID"}`, `{"balance":"1.00"}`, `{"status":"CHARGED_OFF","balance":"-0.01"}`, `{"balance":"1e5"}`, `{}`, `null`)
}

func FuzzApplicationBody(f *testing.F) {
	fuzzRoute(f, "POST", func(string) string { return "/v1/loan-applications" }, nil,
		`{"pos_terminal_id":"p1","amount":"10.00","currency":"USD","applicant":{"name":"A B","ssn":"123-45-6789"}}`,
		`{"application_id":"../../etc","pos_terminal_id":"p1","amount":"10.00","currency":"USD","applicant":{"name":"A","ssn":"1234567890"}}`,
		`{"event_time":"not-a-time"}`, `{"customer_id":""}`)
}

func FuzzCustomerBody(f *testing.F) {
	fuzzRoute(f, "POST", func(string) string { return "/v1/customers" }, nil,
		`{"customer_id":"c-x","name":"N","ssn":"111-11-1111","credit_limit":"5.00","risk_tier":"LOW","score":700}`,
		`{"customer_id":"c-y","name":"N","ssn":"111-11-1112","credit_limit":"5.00","risk_tier":"low","score":700}`,
		`{"customer_id":"c-x","score":9999}`)
}

// FuzzRouteIDs sends arbitrary ids and query values (escaped into the
// URL) to the lender routes: no panic, no 5xx.
func FuzzRouteIDs(f *testing.F) {
	e, tok, _ := fuzzSetup(f)
	for _, s := range []string{"c-fuzz", "\x00", "\xff", "a/b", "..", "%", "日本", "AA", strings.Repeat("x", 300)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		esc := url.PathEscape(id)
		qv := url.QueryEscape(id)
		for _, target := range []string{
			"GET /v1/credit-profiles/" + esc + "?purpose=ACCOUNT_REVIEW", "GET /v1/loans/" + esc, "PATCH /v1/loans/" + esc,
			"GET /v1/loans?lender=" + qv, "GET /v1/loans?cursor=" + qv, "GET /v1/loan-applications/" + esc + "/decision?timeout=0s",
			"GET /v1/portfolio?lender=" + qv, "GET /v1/credit-profiles/c-fuzz?purpose=" + qv,
		} {
			method, path, _ := strings.Cut(target, " ")
			req, err := http.NewRequest(method, "http://api"+path, strings.NewReader(`{"balance":"1.00"}`))
			if err != nil {
				continue // not a URL a client could send
			}
			req.Header.Set("Authorization", "Bearer "+tok)
			req.Header.Set("If-Match", `"1"`)
			rec := httptest.NewRecorder()
			e.srv.Handler().ServeHTTP(rec, req)
			if rec.Code >= 500 {
				t.Fatalf("%s %s: %d %s", method, path, rec.Code, rec.Body.String())
			}
		}
	})
}
