package api

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"regexp"
	"strings"
)

// apiCSP is the policy of every response that is not a page: nothing may
// load, nothing may frame it.
const apiCSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

// securityHeaders are set on every response (instrument).
// The values are shared by every response (net/http never modifies a
// header's slice; Set replaces it, Add copies it, since each is full):
// setting them with Header.Set allocated a fifth of the API's garbage per
// credit lookup.
func securityHeaders(h http.Header) {
	for _, kv := range securityHeaderValues {
		h[kv.key] = kv.value
	}
}

var securityHeaderValues = func() []struct {
	key   string
	value []string
} {
	var out []struct {
		key   string
		value []string
	}
	for _, kv := range [][2]string{
		{"Strict-Transport-Security", "max-age=63072000; includeSubDomains"},
		{"X-Content-Type-Options", "nosniff"},
		{"Referrer-Policy", "no-referrer"},
		{"X-Frame-Options", "DENY"},
		{"Content-Security-Policy", apiCSP},
		{"Cross-Origin-Opener-Policy", "same-origin"},
		{"Cross-Origin-Resource-Policy", "same-origin"},
	} {
		v := make([]string, 1, 1) // full: an Add copies
		v[0] = kv[1]
		out = append(out, struct {
			key   string
			value []string
		}{http.CanonicalHeaderKey(kv[0]), v})
	}
	return out
}()

var inlineBlock = regexp.MustCompile(`(?s)<(script|style)>(.*?)</(?:script|style)>`)

// pageCSP is the policy of an HTML page: its own inline script and style
// blocks by hash (no 'unsafe-inline': an injected block or attribute does
// not run), same-origin connections (the event stream), no framing.
func pageCSP(page []byte) string {
	var scripts, styles []string
	for _, m := range inlineBlock.FindAllSubmatch(page, -1) {
		sum := sha256.Sum256(m[2])
		h := "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
		if string(m[1]) == "script" {
			scripts = append(scripts, h)
		} else {
			styles = append(styles, h)
		}
	}
	src := func(hashes []string) string {
		if len(hashes) == 0 {
			return "'none'"
		}
		return strings.Join(hashes, " ")
	}
	return "default-src 'none'; script-src " + src(scripts) + "; style-src " + src(styles) +
		"; connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
}

// The login form carries a CSRF token (double submit): the page sets it
// in a SameSite=Strict cookie, its script copies it into the form, and
// the login accepts the form only when both agree.
const csrfCookie = "loanflow_csrf"

func (s *Server) setCSRF(w http.ResponseWriter) {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	http.SetCookie(w, &http.Cookie{Name: csrfCookie, Value: hex.EncodeToString(b), Path: "/", Secure: true,
		SameSite: http.SameSiteStrictMode, MaxAge: 3600})
}

func csrfOK(r *http.Request) bool {
	c, err := r.Cookie(csrfCookie)
	form := r.PostForm.Get("csrf")
	return err == nil && len(c.Value) == 32 && subtle.ConstantTimeCompare([]byte(c.Value), []byte(form)) == 1
}
