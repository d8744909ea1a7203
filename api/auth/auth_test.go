package auth

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

// TestWithdrawnKeyStopsVerifying: once the issuer drops a key from its
// JWKS, a token signed with it is refused after the cached set's MaxAge
// and the verified-token cache's CacheMaxAge, while tokens of the current
// key keep working.
func TestWithdrawnKeyStopsVerifying(t *testing.T) {
	is, err := NewIssuer(IssuerConfig{Issuer: "http://issuer.test", RetainKeys: 1})
	if err != nil {
		t.Fatal(err)
	}
	var fetches atomic.Int32
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fetches.Add(1)
		b, _ := is.JWKS()
		_, _ = w.Write(b)
	}))
	defer jwks.Close()
	var offset atomic.Int64 // the validator's clock runs ahead by this
	clock := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	v, err := NewValidator(ValidatorConfig{Issuer: "http://issuer.test", Audience: "api", Now: clock, CacheMaxAge: time.Minute,
		Keys: &HTTPKeySource{URL: jwks.URL, MinRefetchInterval: time.Hour, MaxAge: 50 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	grant := Grant{Subject: "c", Lender: "l", Scopes: []string{ScopeLoansWrite}, Audience: "api"}
	old, _, err := is.Issue(grant)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := v.Validate(ctx, old); err != nil {
		t.Fatalf("fresh token: %v", err)
	}
	for i := 0; i < 2; i++ { // RetainKeys 1: the first key leaves the set
		if _, err := is.Rotate(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := v.Validate(ctx, old); err != nil {
		t.Fatalf("cached token refused before CacheMaxAge: %v", err)
	}
	time.Sleep(60 * time.Millisecond)     // past the JWKS MaxAge
	offset.Store(int64(61 * time.Second)) // past CacheMaxAge
	if _, err := v.Validate(ctx, old); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("token of a withdrawn key: %v, want refused", err)
	}
	cur, _, err := is.Issue(grant)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Validate(ctx, cur); err != nil {
		t.Fatalf("token of the current key: %v", err)
	}
	if n := fetches.Load(); n != 2 {
		t.Fatalf("%d JWKS fetches, want 2 (first use, then after MaxAge)", n)
	}
}
