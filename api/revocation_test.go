package api

import (
	"context"
	"testing"
	"time"
)

// TestTokenRevocationAndLifetimeCap (issue 9, Medium 5): a disabled
// client's tokens stop working within RevocationStaleness, whether it was
// disabled through this instance's admin route or in the database (as by
// another instance); other clients' tokens keep working (the control);
// tokens living longer than MaxTokenLifetime are refused whoever signed
// them, and one just under the cap is accepted.
func TestTokenRevocationAndLifetimeCap(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.RevocationStaleness = time.Second })
	tok := e.lender("bank-r")
	other := e.clientToken("bank-r-other", "bank-r", "loans:write")
	viaDB := e.clientToken("bank-r-db", "bank-r", "loans:write")
	for _, k := range []string{tok, other, viaDB} {
		if r := e.do("GET", "/v1/loans", k, nil); r.status != 200 {
			t.Fatalf("before: %d %s", r.status, r.body)
		}
	}
	if r := e.do("POST", "/v1/admin/clients/bank-r-client/disable", e.admin, nil); r.status != 200 {
		t.Fatalf("disable: %d %s", r.status, r.body)
	}
	if r := e.do("GET", "/v1/loans", tok, nil); r.status != 401 {
		t.Fatalf("token of a client disabled on this instance: %d", r.status)
	}
	if _, err := e.srv.Pool().Exec(context.Background(), "UPDATE api_clients SET disabled = true WHERE client_id = 'bank-r-db'"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the token of a client disabled in the database refused", func() bool {
		return e.do("GET", "/v1/loans", viaDB, nil).status == 401
	})
	if r := e.do("GET", "/v1/loans", other, nil); r.status != 200 {
		t.Fatalf("another client's token after the revocations: %d", r.status)
	}
	if r := e.do("POST", "/v1/admin/clients/nobody/disable", e.admin, nil); r.status != 404 {
		t.Fatalf("disabling an unknown client: %d", r.status)
	}
	var audited int
	if err := e.srv.FlushAudit(context.Background()); err != nil { // admin writes queue their entries
		t.Fatal(err)
	}
	_ = e.srv.Pool().QueryRow(context.Background(), "SELECT count(*) FROM audit_log WHERE action = 'client.disable' AND resource = 'client/bank-r-client'").Scan(&audited)
	if audited != 1 {
		t.Fatalf("client.disable audit rows: %d", audited)
	}

	// Lifetime cap (default 1h).
	now := time.Now()
	claims := func(exp time.Time, iat bool) map[string]any {
		c := map[string]any{"iss": e.url, "sub": "bank-r-other", "aud": []string{"loanflow-api"}, "nbf": now.Unix(),
			"exp": exp.Unix(), "scope": "loans:write", "lender_id": "bank-r"}
		if iat {
			c["iat"] = now.Unix()
		}
		return c
	}
	for name, c := range map[string]map[string]any{
		"10 years, iat":    claims(now.Add(10*365*24*time.Hour), true),
		"10 years, no iat": claims(now.Add(10*365*24*time.Hour), false),
		"2 hours, iat":     claims(now.Add(2*time.Hour), true),
	} {
		signed, err := e.srv.Issuer().Sign(c, nil)
		if err != nil {
			t.Fatal(err)
		}
		if r := e.do("GET", "/v1/loans", signed, nil); r.status != 401 {
			t.Errorf("%s: %d, want 401", name, r.status)
		}
	}
	signed, _ := e.srv.Issuer().Sign(claims(now.Add(50*time.Minute), true), nil)
	if r := e.do("GET", "/v1/loans", signed, nil); r.status != 200 {
		t.Fatalf("50 minutes: %d %s", r.status, r.body)
	}
}
