package api

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"

	"github.com/loanflow/loanflow/api/audit"
)

// TestCrossLenderAccess: lender B, holding every lender scope, touches
// lender A's loans, decisions and portfolio on every route. Nothing may
// succeed, and each denied access is audited.
func TestCrossLenderAccess(t *testing.T) {
	e := newEnv(t)
	a := e.lender("bank-a")
	b := e.lender("bank-b")
	e.customer("c-1", "Grace Hopper", "111-22-3333", "bank-a")
	loan, r := e.createLoan(a, "k1", "c-1", "500.00")
	if r.status != 201 {
		t.Fatal(r.status)
	}
	dec, met, _ := e.avro()
	e.produce(e.cfg.DecisionsTopic, decisionRecord(t, dec, "app-a-1", "bank-a", "APPROVED", 700))
	e.produce(e.cfg.MetricsTopic, metricRecord(t, met, "bank-a", time.Now().UTC().Truncate(time.Minute), 3, "1500.00"))
	waitFor(t, "decision consumed", func() bool {
		_, ok, ch := e.srv.hub.decision(AppKey("bank-a", "app-a-1"))
		e.srv.hub.cancelWait(AppKey("bank-a", "app-a-1"), ch)
		return ok
	})

	type attempt struct {
		method, path string
		body         any
		hdr          []string
	}
	attempts := []attempt{
		{"GET", "/v1/loans/" + loan.LoanID, nil, nil},
		{"PATCH", "/v1/loans/" + loan.LoanID, map[string]string{"balance": "1.00"}, []string{"If-Match", `"1"`}},
		{"PATCH", "/v1/loans/" + loan.LoanID, map[string]string{"status": "PAID"}, []string{"If-Match", `"1"`}},
		{"GET", "/v1/loans?lender=bank-a", nil, nil},
		{"GET", "/v1/decisions/stream?lender=bank-a", nil, nil},
		{"GET", "/v1/portfolio?lender=bank-a", nil, nil},
		{"POST", "/v1/customers", NewCustomer{CustomerID: "x"}, nil},
		{"POST", "/v1/admin/lenders", NewLender{LenderID: "bank-a", Name: "x"}, nil},
		{"POST", "/v1/admin/clients", NewClient{ClientID: "x", LenderID: "bank-a", Scopes: []string{"admin"}}, nil},
		{"GET", "/v1/admin/pipeline-health", nil, nil},
	}
	successes := 0
	for _, at := range attempts {
		r := e.do(at.method, at.path, b, at.body, at.hdr...)
		if r.status < 400 {
			successes++
			t.Errorf("%s %s by bank-b: %d %s", at.method, at.path, r.status, r.body)
		}
		if r.status != 404 && r.status != 403 {
			t.Errorf("%s %s by bank-b: status %d, want 404 (or 403 for admin routes)", at.method, at.path, r.status)
		}
	}
	if successes != 0 {
		t.Fatalf("%d cross-lender successes", successes)
	}
	// Application ids are per lender: B asking for app-a-1 asks for its
	// own application of that id, which does not exist: 404, no data.
	if r := e.do("GET", "/v1/loan-applications/app-a-1/decision?timeout=0s", b, nil); r.status != 404 || strings.Contains(string(r.body), "APPROVED") {
		t.Fatalf("bank-b long-polls bank-a's application id: %d %s", r.status, r.body)
	}
	// B's own view does not include A's data.
	var page loanPage
	e.do("GET", "/v1/loans", b, nil).json(t, &page)
	var pf Portfolio
	e.do("GET", "/v1/portfolio", b, nil).json(t, &pf)
	if len(page.Items) != 0 || pf.Current != nil {
		t.Fatalf("bank-b sees %d loans, portfolio %+v", len(page.Items), pf.Current)
	}
	// The loan is untouched and each lender-scoped denial is audited.
	var l Loan
	e.do("GET", "/v1/loans/"+loan.LoanID, a, nil).json(t, &l)
	if l.Version != 1 || l.Balance != "500.00" {
		t.Fatalf("loan changed: %+v", l)
	}
	var denied int
	if err := e.srv.Pool().QueryRow(context.Background(),
		"SELECT count(*) FROM audit_log WHERE lender_id = 'bank-b' AND result = $1", audit.ResultDenied).Scan(&denied); err != nil {
		t.Fatal(err)
	}
	if denied != 6 {
		t.Fatalf("denied audit rows = %d, want 6 (one per lender-scoped attempt)", denied)
	}
	// Idempotency keys are per lender: B sending A's key and body creates
	// B's own loan and never replays A's response.
	e.customer("c-2", "Alan Turing", "222-33-4444", "bank-b")
	bl, r := e.createLoan(b, "k1", "c-2", "500.00")
	if r.status != 201 || r.header.Get("Idempotent-Replayed") != "" || bl.LenderID != "bank-b" || bl.LoanID == loan.LoanID {
		t.Fatalf("bank-b with bank-a's idempotency key: %d %s", r.status, r.body)
	}
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func b64json(v any) string {
	j, _ := json.Marshal(v)
	return b64(j)
}

// TestBadTokens: every token of the corpus is refused with 401, while a
// good token is accepted.
func TestBadTokens(t *testing.T) {
	e := newEnv(t)
	good := e.lender("bank-t")
	if r := e.do("GET", "/v1/loans", good, nil); r.status != 200 {
		t.Fatalf("good token: %d %s", r.status, r.body)
	}
	is := e.srv.Issuer()
	now := time.Now()
	claims := func(mod func(map[string]any)) map[string]any {
		c := map[string]any{"iss": e.url, "sub": "bank-t-client", "aud": []string{"loanflow-api"}, "iat": now.Unix(),
			"nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(), "scope": "loans:write", "lender_id": "bank-t"}
		if mod != nil {
			mod(c)
		}
		return c
	}
	sign := func(c map[string]any, hdr map[string]any) string {
		tok, err := is.Sign(c, hdr)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	kid := strings.Split(mustHeader(t, good), "|")[0]
	pubDER := publicKeyDER(t, is.PublicSet())
	hsPub := func() string {
		h := b64json(map[string]any{"alg": "HS256", "typ": "at+jwt", "kid": kid})
		p := b64json(claims(nil))
		m := hmac.New(sha256.New, pubDER)
		m.Write([]byte(h + "." + p))
		return h + "." + p + "." + b64(m.Sum(nil))
	}()
	none := b64json(map[string]any{"alg": "none", "typ": "at+jwt", "kid": kid}) + "." + b64json(claims(nil)) + "."
	parts := strings.Split(good, ".")
	tampered := parts[0] + "." + b64json(claims(func(c map[string]any) { c["lender_id"] = "bank-other"; c["scope"] = "admin" })) + "." + parts[2]
	foreign := foreignToken(t, claims(nil), kid)
	corpus := map[string]string{
		"alg none":              none,
		"HS256 with public key": hsPub,
		"expired": sign(claims(func(c map[string]any) {
			c["exp"] = now.Add(-time.Hour).Unix()
			c["iat"] = now.Add(-2 * time.Hour).Unix()
		}), nil),
		"future nbf":             sign(claims(func(c map[string]any) { c["nbf"] = now.Add(time.Hour).Unix() }), nil),
		"no exp":                 sign(claims(func(c map[string]any) { delete(c, "exp") }), nil),
		"wrong iss":              sign(claims(func(c map[string]any) { c["iss"] = e.url + "/evil" }), nil),
		"wrong aud":              sign(claims(func(c map[string]any) { c["aud"] = []string{"other-api"} }), nil),
		"wrong typ":              sign(claims(nil), map[string]any{"typ": "JWT"}),
		"unknown kid":            sign(claims(nil), map[string]any{"kid": "no-such-kid"}),
		"tampered payload":       tampered,
		"foreign key, known kid": foreign,
		"garbage":                "not.a.token",
		"empty segments":         "..",
	}
	for name, tok := range corpus {
		if r := e.do("GET", "/v1/loans", tok, nil); r.status != 401 {
			t.Errorf("%s: status %d, want 401 (%s)", name, r.status, r.body)
		}
	}
	// A token of a rotated-in key validates after the JWKS refetch.
	if _, err := is.Rotate(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // past JWKSMinRefetchInterval
	fresh := sign(claims(nil), nil)
	if r := e.do("GET", "/v1/loans", fresh, nil); r.status != 200 {
		t.Fatalf("token of rotated key: %d %s", r.status, r.body)
	}
	if r := e.do("GET", "/v1/loans", good, nil); r.status != 200 {
		t.Fatalf("token of previous key after rotation: %d", r.status)
	}
}

func mustHeader(t *testing.T, tok string) string {
	msg, err := jws.Parse([]byte(tok))
	if err != nil {
		t.Fatal(err)
	}
	kid, _ := msg.Signatures()[0].ProtectedHeaders().KeyID()
	return kid + "|"
}

func publicKeyDER(t *testing.T, set jwk.Set) []byte {
	k, _ := set.Key(0)
	var raw ecdsa.PublicKey
	if err := jwk.Export(k, &raw); err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&raw)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// foreignToken signs with a key the issuer never had, claiming its kid.
func foreignToken(t *testing.T, c map[string]any, kid string) string {
	raw, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	k, _ := jwk.Import(raw)
	hdr := jws.NewHeaders()
	_ = hdr.Set(jws.KeyIDKey, kid)
	_ = hdr.Set(jws.TypeKey, "at+jwt")
	p, _ := json.Marshal(c)
	out, err := jws.Sign(p, jws.WithKey(jwa.ES256(), k, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}
