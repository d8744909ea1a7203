package api

import (
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"testing"
)

// TestSecurityHeadersAndDashboardSession (issue 9, Medium 8): every
// answer carries HSTS, nosniff, a Referrer-Policy and a CSP forbidding
// framing; pages allow their own inline blocks by hash, never
// 'unsafe-inline'; the dashboard login needs the page's CSRF token and
// gives a Secure, HttpOnly, SameSite=Strict session holding portfolio:read
// only, although the client holds every lender scope.
func TestSecurityHeadersAndDashboardSession(t *testing.T) {
	e := newEnv(t)
	e.lender("bank-h") // client bank-h-client: every lender scope
	creds := e.do("POST", "/v1/admin/clients", e.admin, NewClient{ClientID: "bank-h-all", LenderID: "bank-h",
		Scopes: []string{"credit:read", "loans:write", "applications:write", "portfolio:read"}})
	var c ClientCredentials
	creds.json(t, &c)
	for _, path := range []string{"/v1/loans", "/healthz", "/dashboard", "/nope"} {
		r := e.do("GET", path, e.admin, nil)
		h := r.header
		if !strings.HasPrefix(h.Get("Strict-Transport-Security"), "max-age=") || h.Get("X-Content-Type-Options") != "nosniff" ||
			h.Get("Referrer-Policy") != "no-referrer" || !strings.Contains(h.Get("Content-Security-Policy"), "frame-ancestors 'none'") {
			t.Fatalf("%s: headers %v", path, h)
		}
	}
	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := browser.Get(e.url + "/dashboard")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	csp := resp.Header.Get("Content-Security-Policy")
	if strings.Contains(csp, "unsafe-inline") || !strings.Contains(csp, "script-src 'sha256-") || !strings.Contains(csp, "style-src 'sha256-") {
		t.Fatalf("login page CSP %q", csp)
	}
	var csrf *http.Cookie
	for _, ck := range resp.Cookies() {
		if ck.Name == csrfCookie {
			csrf = ck
		}
	}
	if csrf == nil || !csrf.Secure || csrf.SameSite != http.SameSiteStrictMode {
		t.Fatalf("csrf cookie %+v", csrf)
	}
	login := func(form url.Values) *http.Response {
		resp, err := browser.PostForm(e.url+"/dashboard/login", form)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	if r := login(url.Values{"client_id": {c.ClientID}, "client_secret": {c.ClientSecret}}); r.StatusCode != 403 {
		t.Fatalf("login without the CSRF token: %d", r.StatusCode)
	}
	if r := login(url.Values{"client_id": {c.ClientID}, "client_secret": {c.ClientSecret}, "csrf": {strings.Repeat("0", 32)}}); r.StatusCode != 403 {
		t.Fatalf("login with a wrong CSRF token: %d", r.StatusCode)
	}
	r := login(url.Values{"client_id": {c.ClientID}, "client_secret": {c.ClientSecret}, "csrf": {csrf.Value}})
	var session *http.Cookie
	for _, ck := range r.Cookies() {
		if ck.Name == dashboardCookie {
			session = ck
		}
	}
	if r.StatusCode != 303 || session == nil || !session.Secure || !session.HttpOnly || session.SameSite != http.SameSiteStrictMode {
		t.Fatalf("login: %d session %+v", r.StatusCode, session)
	}
	if got := e.do("GET", "/v1/portfolio", session.Value, nil); got.status != 200 {
		t.Fatalf("session token on the portfolio: %d", got.status)
	}
	for _, path := range []string{"/v1/loans", "/v1/credit-profiles/x?purpose=ACCOUNT_REVIEW"} {
		if got := e.do("GET", path, session.Value, nil); got.status != 403 {
			t.Fatalf("session token on %s: %d, want 403 (portfolio:read only)", path, got.status)
		}
	}
	// The operator page has its own CSP.
	op := e.do("GET", "/operator", e.admin, nil)
	if csp := op.header.Get("Content-Security-Policy"); op.status != 200 || strings.Contains(csp, "unsafe-inline") || !strings.Contains(csp, "style-src 'sha256-") {
		t.Fatalf("operator page: %d CSP %q", op.status, csp)
	}
}

// TestMetricsOffThePublicListener (issue 9, Medium 8): with an admin
// address, /metrics is served there only; with a metrics token, only to
// its bearer.
func TestMetricsOffThePublicListener(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.AdminAddr = "127.0.0.1:0" })
	if r := e.do("GET", "/metrics", "", nil); r.status != 404 {
		t.Fatalf("public /metrics with an admin listener: %d", r.status)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: e.srv.AdminHandler()}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	resp, err := http.Get("http://" + ln.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("admin /metrics: %d", resp.StatusCode)
	}

	e2 := newEnv(t, func(c *Config) { c.MetricsToken = "s3cret-metrics" })
	if r := e2.do("GET", "/metrics", "", nil); r.status != 401 {
		t.Fatalf("/metrics without the token: %d", r.status)
	}
	if r := e2.do("GET", "/metrics", "s3cret-metrics", nil); r.status != 200 || !strings.Contains(string(r.body), "loanflow_api_requests_total") {
		t.Fatalf("/metrics with the token: %d", r.status)
	}
}
