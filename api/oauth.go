package api

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"net/http"
	"strings"

	"github.com/loanflow/loanflow/api/auth"
)

// oauthError writes an RFC 6749 §5.2 error.
func oauthError(w http.ResponseWriter, status int, code, desc string) {
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Basic realm="loanflow"`)
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, status, map[string]string{"error": code, "error_description": desc})
}

var errBadClient = errors.New("api: invalid client credentials")

// authenticateClient checks client credentials and returns the grant.
func (s *Server) authenticateClient(ctx context.Context, id, secret string) (auth.Grant, error) {
	var hash []byte
	var lender *string
	var scopes []string
	var disabled bool
	err := s.pool.QueryRow(ctx, "SELECT secret_hash, lender_id, scopes, disabled FROM api_clients WHERE client_id = $1", id).
		Scan(&hash, &lender, &scopes, &disabled)
	sum := sha256.Sum256([]byte(secret))
	if err != nil || disabled || subtle.ConstantTimeCompare(hash, sum[:]) != 1 {
		return auth.Grant{}, errBadClient
	}
	g := auth.Grant{Subject: id, Scopes: scopes, Audience: s.cfg.Audience}
	if lender != nil {
		g.Lender = *lender
	}
	return g, nil
}

// narrowScopes keeps the requested scopes the client holds (all if none
// requested); ok is false when a requested scope is not granted.
func narrowScopes(granted []string, requested string) ([]string, bool) {
	if requested == "" {
		return granted, true
	}
	have := map[string]bool{}
	for _, s := range granted {
		have[s] = true
	}
	var out []string
	for _, s := range strings.Fields(requested) {
		if !have[s] {
			return nil, false
		}
		out = append(out, s)
	}
	return out, true
}

func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	if err := r.ParseForm(); err != nil {
		oauthError(w, http.StatusBadRequest, "invalid_request", "body must be application/x-www-form-urlencoded")
		return
	}
	if r.PostForm.Get("grant_type") != "client_credentials" {
		oauthError(w, http.StatusBadRequest, "unsupported_grant_type", "only client_credentials is supported")
		return
	}
	id, secret, ok := r.BasicAuth()
	if !ok {
		id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	}
	if !s.allowLogin(w, r, "oauth.token", id) {
		return
	}
	g, err := s.authenticateClient(r.Context(), id, secret)
	s.loginOutcome(r, "oauth.token", id, g.Lender, err)
	if err != nil {
		oauthError(w, http.StatusUnauthorized, "invalid_client", "unknown client or wrong secret")
		return
	}
	scopes, ok := narrowScopes(g.Scopes, r.PostForm.Get("scope"))
	if !ok {
		oauthError(w, http.StatusBadRequest, "invalid_scope", "a requested scope is not granted to this client")
		return
	}
	g.Scopes = scopes
	tok, _, err := s.issuer.Issue(g)
	if err != nil {
		oauthError(w, http.StatusInternalServerError, "server_error", "could not issue a token")
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token": tok, "token_type": "Bearer",
		"expires_in": int(s.issuer.TokenTTL().Seconds()), "scope": strings.Join(scopes, " "),
	})
}

func (s *Server) jwks(w http.ResponseWriter, r *http.Request) {
	b, err := s.issuer.JWKS()
	if err != nil {
		writeProblem(w, r, http.StatusInternalServerError, "internal", "could not encode the key set")
		return
	}
	w.Header().Set("Content-Type", "application/jwk-set+json")
	w.Header().Set("Cache-Control", "public, max-age=300")
	_, _ = w.Write(b)
}

// IssueToken authenticates a client and returns an access token, for the
// dev stack's CLI and tests.
func (s *Server) IssueToken(ctx context.Context, clientID, secret string) (string, error) {
	if s.issuer == nil {
		return "", errors.New("api: the dev issuer is disabled")
	}
	g, err := s.authenticateClient(ctx, clientID, secret)
	if err != nil {
		return "", err
	}
	tok, _, err := s.issuer.Issue(g)
	return tok, err
}
