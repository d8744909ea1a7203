package auth

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jws"
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

// TestJWKSStalenessUseAndScheme (issue 9, Low): a JWKS that can no longer
// be fetched is trusted for MaxStale after the last good fetch, then
// dropped (the control: within MaxStale the key still verifies); a key
// whose "use" is "enc" never verifies; a JWKS URL must be https except on
// a loopback host.
func TestJWKSStalenessUseAndScheme(t *testing.T) {
	is, err := NewIssuer(IssuerConfig{Issuer: "http://issuer.test"})
	if err != nil {
		t.Fatal(err)
	}
	var down atomic.Bool
	var use atomic.Value
	use.Store("")
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		b, _ := is.JWKS()
		if u := use.Load().(string); u != "" {
			b = []byte(strings.Replace(string(b), `"use":"sig"`, `"use":"`+u+`"`, 1))
		}
		_, _ = w.Write(b)
	}))
	defer jwks.Close()
	var offset atomic.Int64
	clock := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	src := &HTTPKeySource{URL: jwks.URL, MinRefetchInterval: time.Millisecond, MaxAge: time.Minute, MaxStale: time.Hour, Now: clock}
	grant := Grant{Subject: "c", Lender: "l", Scopes: []string{ScopeLoansWrite}, Audience: "api"}
	tok, _, err := is.Issue(grant)
	if err != nil {
		t.Fatal(err)
	}
	kid := kidOf(t, tok)
	ctx := context.Background()
	if _, err := src.Key(ctx, kid); err != nil {
		t.Fatalf("first fetch: %v", err)
	}
	down.Store(true)
	offset.Store(int64(30 * time.Minute)) // refresh due, fails, within MaxStale
	if _, err := src.Key(ctx, kid); err != nil {
		t.Fatalf("within MaxStale: %v", err)
	}
	offset.Store(int64(2 * time.Hour)) // past MaxStale
	if _, err := src.Key(ctx, kid); err == nil {
		t.Fatal("a JWKS unreachable past MaxStale still verifies")
	}
	down.Store(false)
	offset.Store(int64(2*time.Hour + time.Second)) // past MinRefetchInterval
	if _, err := src.Key(ctx, kid); err != nil {
		t.Fatalf("after the issuer recovers: %v", err)
	}
	use.Store("enc")
	enc := &HTTPKeySource{URL: jwks.URL}
	if _, err := enc.Key(ctx, kid); err == nil {
		t.Fatal(`a key with "use":"enc" verifies`)
	}
	use.Store("sig")
	sig := &HTTPKeySource{URL: jwks.URL}
	if _, err := sig.Key(ctx, kid); err != nil {
		t.Fatalf(`"use":"sig": %v`, err)
	}
	for u, ok := range map[string]bool{"https://idp.example/jwks": true, "http://127.0.0.1:9/jwks": true, "http://localhost/jwks": true,
		"http://idp.example/jwks": false, "ftp://idp.example/jwks": false} {
		if err := ValidJWKSURL(u); (err == nil) != ok {
			t.Errorf("ValidJWKSURL(%q) = %v", u, err)
		}
	}
}

func kidOf(t *testing.T, tok string) string {
	t.Helper()
	msg, err := jws.Parse([]byte(tok))
	if err != nil {
		t.Fatal(err)
	}
	kid, _ := msg.Signatures()[0].ProtectedHeaders().KeyID()
	return kid
}
