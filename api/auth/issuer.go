package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"
)

// Claim names Loanflow reads beside the registered ones.
const (
	ClaimScope  = "scope"
	ClaimLender = "lender_id"
	TokenType   = "at+jwt"
)

// Scopes.
const (
	ScopeCreditRead        = "credit:read"
	ScopeLoansWrite        = "loans:write"
	ScopeApplicationsWrite = "applications:write"
	ScopePortfolioRead     = "portfolio:read"
	ScopePIIRead           = "pii:read"
	ScopeAdmin             = "admin"
)

// AllScopes lists every scope the API knows.
var AllScopes = []string{ScopeCreditRead, ScopeLoansWrite, ScopeApplicationsWrite, ScopePortfolioRead, ScopePIIRead, ScopeAdmin}

// IssuerConfig configures the dev issuer.
type IssuerConfig struct {
	// Issuer is the exact iss claim, e.g. http://127.0.0.1:8080.
	Issuer string
	// TokenTTL is the lifetime of an access token. Default 15m.
	TokenTTL time.Duration
	// RetainKeys is how many previous signing keys stay in the JWKS after a
	// rotation. Default 2.
	RetainKeys int
}

func (c *IssuerConfig) setDefaults() {
	if c.TokenTTL == 0 {
		c.TokenTTL = 15 * time.Minute
	}
	if c.RetainKeys == 0 {
		c.RetainKeys = 2
	}
}

// Validate reports a bad field.
func (c IssuerConfig) Validate() error {
	switch {
	case c.Issuer == "":
		return errors.New("auth: IssuerConfig.Issuer is required")
	case c.TokenTTL < time.Second:
		return errors.New("auth: IssuerConfig.TokenTTL must be at least 1s")
	case c.RetainKeys < 1:
		return errors.New("auth: IssuerConfig.RetainKeys must be at least 1")
	}
	return nil
}

// Grant is what a token says about its holder.
type Grant struct {
	Subject  string   // client id
	Lender   string   // empty for operator clients
	Scopes   []string // granted scopes
	Audience string
}

type signingKey struct {
	kid  string
	raw  *ecdsa.PrivateKey // signs; the header's kid is set explicitly
	priv jwk.Key
	pub  jwk.Key
}

// Issuer signs access tokens with rotating ES256 keys.
type Issuer struct {
	cfg IssuerConfig
	now func() time.Time
	mu  struct {
		sync.RWMutex
		keys []signingKey // newest last; the last one signs
	}
}

// NewIssuer creates an issuer with one fresh signing key.
func NewIssuer(cfg IssuerConfig) (*Issuer, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	is := &Issuer{cfg: cfg, now: time.Now}
	if _, err := is.Rotate(); err != nil {
		return nil, err
	}
	return is, nil
}

// IssuerURL is the iss claim of tokens from this issuer.
func (is *Issuer) IssuerURL() string { return is.cfg.Issuer }

// TokenTTL is the lifetime of issued tokens.
func (is *Issuer) TokenTTL() time.Duration { return is.cfg.TokenTTL }

// Rotate generates a new signing key, makes it current and drops keys
// beyond RetainKeys previous ones. It returns the new kid.
func (is *Issuer) Rotate() (string, error) {
	raw, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", fmt.Errorf("auth: generating signing key: %w", err)
	}
	kidb := make([]byte, 8)
	_, _ = rand.Read(kidb)
	kid := "dev-" + hex.EncodeToString(kidb)
	priv, err := jwk.Import(raw)
	if err != nil {
		return "", fmt.Errorf("auth: importing signing key: %w", err)
	}
	pub, err := jwk.PublicKeyOf(priv)
	if err != nil {
		return "", fmt.Errorf("auth: public key: %w", err)
	}
	for _, k := range []jwk.Key{priv, pub} {
		_ = k.Set(jwk.KeyIDKey, kid)
		_ = k.Set(jwk.AlgorithmKey, jwa.ES256())
		_ = k.Set(jwk.KeyUsageKey, "sig")
	}
	is.mu.Lock()
	defer is.mu.Unlock()
	is.mu.keys = append(is.mu.keys, signingKey{kid: kid, raw: raw, priv: priv, pub: pub})
	if n := len(is.mu.keys) - 1 - is.cfg.RetainKeys; n > 0 {
		is.mu.keys = append([]signingKey(nil), is.mu.keys[n:]...)
	}
	return kid, nil
}

// PublicSet returns the current JWKS.
func (is *Issuer) PublicSet() jwk.Set {
	is.mu.RLock()
	defer is.mu.RUnlock()
	set := jwk.NewSet()
	for _, k := range is.mu.keys {
		_ = set.AddKey(k.pub)
	}
	return set
}

// JWKS returns the current JWKS document.
func (is *Issuer) JWKS() ([]byte, error) { return json.Marshal(is.PublicSet()) }

// Issue signs an access token for g valid from now for TokenTTL.
func (is *Issuer) Issue(g Grant) (string, time.Time, error) {
	now := is.now()
	exp := now.Add(is.cfg.TokenTTL)
	claims := map[string]any{
		"iss":       is.cfg.Issuer,
		"sub":       g.Subject,
		"aud":       []string{g.Audience},
		"iat":       now.Unix(),
		"nbf":       now.Unix(),
		"exp":       exp.Unix(),
		"jti":       randomID(),
		"client_id": g.Subject,
		ClaimScope:  strings.Join(g.Scopes, " "),
	}
	if g.Lender != "" {
		claims[ClaimLender] = g.Lender
	}
	tok, err := is.Sign(claims, nil)
	return tok, exp, err
}

// Sign signs arbitrary claims with the current key and header extras
// (typ defaults to at+jwt). Tests use it to build bad tokens.
func (is *Issuer) Sign(claims map[string]any, extraHeaders map[string]any) (string, error) {
	is.mu.RLock()
	k := is.mu.keys[len(is.mu.keys)-1]
	is.mu.RUnlock()
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("auth: encoding claims: %w", err)
	}
	hdr := jws.NewHeaders()
	_ = hdr.Set(jws.KeyIDKey, k.kid)
	_ = hdr.Set(jws.TypeKey, TokenType)
	for name, v := range extraHeaders {
		if err := hdr.Set(name, v); err != nil {
			return "", fmt.Errorf("auth: header %s: %w", name, err)
		}
	}
	out, err := jws.Sign(payload, jws.WithKey(jwa.ES256(), k.raw, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		return "", fmt.Errorf("auth: signing: %w", err)
	}
	return string(out), nil
}

func randomID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
