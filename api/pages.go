package api

import (
	"bytes"
	"errors"
	"html/template"
	"net/http"
	"sort"
	"time"

	"github.com/loanflow/loanflow/api/auth"
)

// The web pages (/dashboard for a lender, /operator for an operator) share
// one session: an HttpOnly cookie holding a token with the one scope the
// page needs (dashboardLogin). A page request without a session gets the
// sign-in page, one whose session expired or was revoked is sent to it
// with a note, and a session that cannot see the page gets a 403 page
// that says whose session it is and where to go instead: never a raw
// problem document.

// pageSession authenticates a page request by its session. It answers the
// request itself (sign-in page, redirect, problem) and returns false when
// the page is not to be served; next is "operator" or "dashboard".
func (s *Server) pageSession(w http.ResponseWriter, r *http.Request, next string) (auth.Principal, bool) {
	tok := bearer(r, true)
	if tok == "" {
		s.servePage(w, "login.html")
		return auth.Principal{}, false
	}
	p, err := s.authenticate(r.Context(), tok)
	switch {
	case errors.Is(err, auth.ErrUnauthorized) || errors.Is(err, errRevoked):
		clearSession(w)
		http.Redirect(w, r, "/"+next+"?error=expired", http.StatusSeeOther)
		return p, false
	case err != nil:
		s.log.Error("authenticating a page", "request_id", requestID(r.Context()), "err", err)
		w.Header().Set("Retry-After", "1")
		writeProblem(w, r, http.StatusServiceUnavailable, "auth-unavailable", "the session could not be checked; reload the page")
		return p, false
	}
	return p, true
}

func clearSession(w http.ResponseWriter) {
	http.SetCookie(w, &http.Cookie{Name: dashboardCookie, Value: "", Path: "/", HttpOnly: true, Secure: true,
		SameSite: http.SameSiteStrictMode, MaxAge: -1})
}

var forbiddenTmpl = template.Must(template.New("forbidden").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Loanflow: not for this sign-in</title>
<style>body{font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;color:#1b2430}
.box{border:1px solid #d0d7de;border-radius:8px;padding:1rem 1.2rem;background:#fff8c5}
a,button{font-size:1rem}button{padding:.4rem .9rem;margin-top:.8rem}</style></head>
<body><h1>403: this page is not for your sign-in</h1>
<div class="box" id="forbidden"><p id="why">{{.Why}}</p>
<p>You are signed in as <b id="who">{{.Subject}}</b>{{if .Lender}} for lender <b id="lender">{{.Lender}}</b>{{end}}.</p>
{{if .Lender}}<p><a id="own" href="/dashboard">Open your portfolio dashboard</a></p>{{end}}
{{if .Operator}}<p><a id="own" href="/operator">Open the operator page</a></p>{{end}}
<form method="post" action="/logout"><input type="hidden" name="next" value="{{.Next}}">
<button id="signout" type="submit">Sign out and sign in as someone else</button></form></div>
</body></html>`))

// forbiddenPage answers 403 with a page naming the session's holder.
func (s *Server) forbiddenPage(w http.ResponseWriter, r *http.Request, p auth.Principal, why string) {
	next := "dashboard"
	if r.URL.Path == "/operator" {
		next = "operator"
	}
	var page bytes.Buffer
	err := forbiddenTmpl.Execute(&page, map[string]any{"Why": why, "Subject": p.Subject, "Lender": p.Lender,
		"Operator": p.Has(auth.ScopeAdmin) && next != "operator", "Next": next})
	if err != nil {
		writeProblem(w, r, http.StatusInternalServerError, "internal", "could not render the page")
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Security-Policy", pageCSP(page.Bytes()))
	w.WriteHeader(http.StatusForbidden)
	_, _ = w.Write(page.Bytes())
}

// Session is the body of GET /session: who the session (cookie or bearer
// token) is. The pages ask it when their event stream fails, to tell an
// expired session (401) from a network error.
type Session struct {
	Subject   string    `json:"subject"`
	Lender    string    `json:"lender,omitempty"`
	Scopes    []string  `json:"scopes"`
	CheckedAt time.Time `json:"checked_at"`
}

func (s *Server) getSession(w http.ResponseWriter, r *http.Request) {
	p, _ := principalOf(r.Context())
	out := Session{Subject: p.Subject, Lender: p.Lender, Scopes: []string{}, CheckedAt: time.Now().UTC()}
	for sc, ok := range p.Scopes {
		if ok {
			out.Scopes = append(out.Scopes, sc)
		}
	}
	sort.Strings(out.Scopes)
	writeJSON(w, http.StatusOK, out)
}

// logout ends the page session (the cookie; the token itself expires
// with its TTL) and returns to the page's sign-in.
func (s *Server) logout(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	_ = r.ParseForm()
	next := "/dashboard?signedout=1"
	if r.PostForm.Get("next") == "operator" {
		next = "/operator?signedout=1"
	}
	clearSession(w)
	http.Redirect(w, r, next, http.StatusSeeOther)
}
